"""Latency claims decided by paired tests on the same test images.

"Soft reset reaches hard reset's best" becomes: the first T at which soft reset is not
significantly below hard reset at hard reset's best T (one-sided exact McNemar at alpha),
against the first T at which hard reset itself is not significantly below its own best (the
same test, so both sides are measured alike). Where both come at the same T nothing separates
them: "indistinguishable on N images".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rmp_cli.report.stats import CONFIDENCE, Paired, first_not_below, paired


def steps_saved(t_hard: int, t_soft: int) -> str:
    """What soft reset's latency is against hard reset's, said the way it went."""
    if t_soft == t_hard:
        return "same T"
    if t_soft < t_hard:
        return f"{t_hard / t_soft:.3g}x fewer time-steps"
    return f"{t_soft / t_hard:.3g}x more time-steps"


@dataclass(frozen=True)
class Verdict:
    images: int
    best_t: int  # hard reset's best T (the first with the most images right)
    best_accuracy: float
    t_hard: int  # first T hard reset is not significantly below its best
    t_soft: int | None  # first T soft reset is not significantly below hard's best; None: never
    at: Paired  # hard's best (A) against soft (B) at t_soft, or at the largest T if never
    at_t: int
    hard_at: float  # hard reset's accuracy at the T of `at`
    alpha: float
    confidence: float

    @property
    def relation(self) -> str:
        """earlier | same | later | never: soft reset's T against hard reset's."""
        if self.t_soft is None:
            return "never"
        if self.t_soft == self.t_hard:
            return "same"
        return "earlier" if self.t_soft < self.t_hard else "later"

    def difference(self) -> tuple[float, float, float]:
        """soft - hard's best at `at_t`, with its paired interval (Newcombe)."""
        low, high = self.at.interval(self.confidence)
        return 0.0 - self.at.difference, 0.0 - high, 0.0 - low  # 0.0 - x: never "-0.00"


def verdict(
    timesteps: Sequence[int],
    hard_right: np.ndarray,
    soft_right: np.ndarray,
    *,
    alpha: float,
    confidence: float = CONFIDENCE,
) -> Verdict:
    """hard_right, soft_right: [nT, N] booleans (image right at each T) on the same images."""
    hard_right, soft_right = np.asarray(hard_right, bool), np.asarray(soft_right, bool)
    counts = hard_right.sum(1)
    best = int(np.argmax(counts))  # the first T with the most images right
    reference = hard_right[best]
    i_hard = first_not_below(reference, hard_right, alpha)
    assert i_hard is not None  # the best T itself is never below itself
    i_soft = first_not_below(reference, soft_right, alpha)
    at = i_soft if i_soft is not None else len(timesteps) - 1
    n = int(hard_right.shape[1])
    return Verdict(
        images=n,
        best_t=int(timesteps[best]),
        best_accuracy=float(counts[best]) / n if n else float("nan"),
        t_hard=int(timesteps[i_hard]),
        t_soft=int(timesteps[i_soft]) if i_soft is not None else None,
        at=paired(reference, soft_right[at]),
        at_t=int(timesteps[at]),
        hard_at=float(hard_right[at].mean()) if n else float("nan"),
        alpha=alpha,
        confidence=confidence,
    )


def _figures(v: Verdict) -> str:
    diff, low, high = v.difference()
    return (
        f"soft {v.at.accuracy_b:.2%} vs hard's best {v.best_accuracy:.2%}: "
        f"{diff * 100:+.2f} pt, {v.confidence:.0%} CI [{low * 100:+.2f}, {high * 100:+.2f}], "
        f"p={v.at.p_b_worse():.3g}"
    )


def verdict_line(v: Verdict, where: str) -> str:
    best = f"hard reset's best ({v.best_accuracy:.2%} at T={v.best_t})"
    test = f"one-sided exact McNemar, alpha={v.alpha:g}, {v.images} images"
    if v.t_soft is None:
        return (
            f"soft reset stays significantly below {best} up to T={v.at_t} ({_figures(v)}); "
            f"hard reset is within noise of it from T={v.t_hard} [{where}; {test}]"
        )
    if v.t_soft == v.t_hard:
        return (
            f"soft and hard reset are indistinguishable on {v.images} images: both first not "
            f"significantly below {best} at T={v.t_soft} ({_figures(v)}; hard {v.hard_at:.2%}) "
            f"[{where}; {test}]"
        )
    return (
        f"soft reset is not significantly below {best} from T={v.t_soft} ({_figures(v)}), "
        f"hard reset itself from T={v.t_hard}: {steps_saved(v.t_hard, v.t_soft)} "
        f"[{where}; {test}]"
    )


def across_seeds_line(verdicts: dict[int, Verdict], where: str) -> str:
    """The claim holds only if every seed gives the same relation (earlier, same, later)."""
    seeds = sorted(verdicts)
    relations = {verdicts[s].relation for s in seeds}
    per_seed = "; ".join(
        f"seed {s}: soft T={verdicts[s].t_soft if verdicts[s].t_soft else 'never'}, "
        f"hard T={verdicts[s].t_hard}"
        for s in seeds
    )
    said = {
        "earlier": "soft reset is within noise of hard reset's best at fewer time-steps",
        "later": "soft reset is within noise of hard reset's best only at more time-steps",
        "same": "soft and hard reset are indistinguishable",
        "never": "soft reset stays significantly below hard reset's best",
    }
    if len(relations) == 1:
        return f"holds across {len(seeds)} seeds: {said[relations.pop()]} ({per_seed}) [{where}]"
    return f"does not hold across {len(seeds)} seeds ({per_seed}) [{where}]"

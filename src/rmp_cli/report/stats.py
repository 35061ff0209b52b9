"""Statistics on per-image predictions: intervals for accuracies and paired tests between
predictions on the same test images. scipy.stats does the arithmetic; this module only says
which test answers which question.

  wilson        score interval for k correct of n (no continuity correction)
  mcnemar       exact McNemar test: a binomial test on the discordant images only
  paired_diff   Newcombe's hybrid score interval (1998, method 10) for the difference of two
                accuracies measured on the same images, built from the two Wilson intervals
                (neither scipy nor statsmodels ships a paired-difference interval)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from rmp_cli.errors import RmpError

CONFIDENCE = 0.95
ALPHA = 0.05


def check_level(name: str, value: object) -> float:
    """report.confidence and report.alpha are probabilities strictly between 0 and 1."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise RmpError(f"{name} must be a number strictly between 0 and 1, got {value!r}")
    return float(value)


def wilson(correct: int, images: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The Wilson score interval for an accuracy of correct/images; (nan, nan) without images."""
    if images <= 0:
        return math.nan, math.nan
    ci = stats.binomtest(int(correct), int(images)).proportion_ci(
        confidence_level=confidence, method="wilson"
    )
    return float(ci.low), float(ci.high)


def mcnemar(only_a: int, only_b: int, alternative: str = "two-sided") -> float:
    """Exact McNemar p-value from the discordant counts: `only_a` images right for A only,
    `only_b` for B only. alternative="greater": H1 is that A is more accurate than B."""
    n = int(only_a) + int(only_b)
    if n == 0:
        return 1.0
    return float(stats.binomtest(int(only_a), n, 0.5, alternative=alternative).pvalue)


@dataclass(frozen=True)
class Paired:
    """Two sets of predictions on the same images, A against B."""

    images: int
    correct_a: int
    correct_b: int
    only_a: int  # right for A, wrong for B
    only_b: int

    @property
    def accuracy_a(self) -> float:
        return self.correct_a / self.images if self.images else math.nan

    @property
    def accuracy_b(self) -> float:
        return self.correct_b / self.images if self.images else math.nan

    @property
    def difference(self) -> float:
        """accuracy A - accuracy B."""
        return (self.only_a - self.only_b) / self.images if self.images else math.nan

    def p_two_sided(self) -> float:
        return mcnemar(self.only_a, self.only_b)

    def p_b_worse(self) -> float:
        """One-sided: the evidence that B is less accurate than A (small = B worse)."""
        return mcnemar(self.only_a, self.only_b, alternative="greater")

    def interval(self, confidence: float = CONFIDENCE) -> tuple[float, float]:
        return paired_diff(self, confidence)


def paired(right_a: np.ndarray, right_b: np.ndarray) -> Paired:
    """Counts from two boolean arrays (image i right for A, for B) over the same images."""
    right_a, right_b = np.asarray(right_a, bool), np.asarray(right_b, bool)
    if right_a.shape != right_b.shape:
        raise RmpError("paired predictions must cover the same images")
    return Paired(
        images=int(right_a.size),
        correct_a=int(right_a.sum()),
        correct_b=int(right_b.sum()),
        only_a=int((right_a & ~right_b).sum()),
        only_b=int((right_b & ~right_a).sum()),
    )


def paired_diff(p: Paired, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Newcombe's method 10: the two Wilson intervals combined with the correlation (phi) of
    the paired outcomes; stays inside [-1, 1] and does not collapse to a point at 0 discordant."""
    n = p.images
    if n == 0:
        return math.nan, math.nan
    both = p.correct_a - p.only_a
    neither = n - both - p.only_a - p.only_b
    p1, p2 = p.accuracy_a, p.accuracy_b
    l1, u1 = wilson(p.correct_a, n, confidence)
    l2, u2 = wilson(p.correct_b, n, confidence)
    margins = (both + p.only_a) * (p.only_b + neither) * (both + p.only_b) * (p.only_a + neither)
    phi = (both * neither - p.only_a * p.only_b) / math.sqrt(margins) if margins else 0.0
    below = (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2
    above = (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2
    d = p.difference
    return max(d - math.sqrt(max(below, 0.0)), -1.0), min(d + math.sqrt(max(above, 0.0)), 1.0)


def interval_columns(correct: int, images: int, confidence: float = CONFIDENCE) -> dict[str, float]:
    """results.csv's count and interval columns for one T."""
    low, high = wilson(correct, images, confidence)
    return {"correct": int(correct), "images": int(images), "ci_low": low, "ci_high": high}


def ann_columns(snn: np.ndarray, ann: np.ndarray | None, labels: np.ndarray) -> list[dict]:
    """Per T (snn [nT, N] predicted classes, ann [N], labels [N]): agreement (share of images
    the SNN classifies as the ANN does) and the two-sided exact McNemar p of SNN against ANN.
    NaN where the ANN's predictions are not at hand (torchrun ranks other than 0)."""
    if ann is None or labels.size == 0:
        return [{"agreement": math.nan, "p_vs_ann": math.nan} for _ in snn]
    ann_right = ann == labels
    return [
        {
            "agreement": float((preds == ann).mean()),
            "p_vs_ann": paired(preds == labels, ann_right).p_two_sided(),
        }
        for preds in snn
    ]


def first_not_below(reference: np.ndarray, curve: np.ndarray, alpha: float) -> int | None:
    """Index of the first row of curve [nT, N] (right/wrong per image) that a one-sided exact
    McNemar test at `alpha` does not find less accurate than `reference` [N]; None if none."""
    for i, right in enumerate(curve):
        if paired(reference, right).p_b_worse() >= alpha:
            return i
    return None

"""Tidy sweep results: the results.csv schema, per-grid-point summaries and the paper's headline."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from rmp_cli.errors import FileFault, RmpError
from rmp_cli.report.paired import Verdict, across_seeds_line, steps_saved, verdict, verdict_line
from rmp_cli.report.predictions import Predictions
from rmp_cli.report.seeds import seeds_markdown
from rmp_cli.report.stats import ALPHA, CONFIDENCE, first_not_below, wilson
from rmp_cli.runs.atomic import atomic_write_text

AXES = ("reset", "balance", "scale", "v_init", "encoding", "activation", "seed")
# Columns added after the first release, with the value older results.csv files implied
# (they come from one run at one seed; 0 is the default).
LATER_AXES = {"activation": "relu", "seed": 0}
# Per-image statistics (predictions.npz): counts, the Wilson interval (report.confidence),
# agreement with the ANN and the two-sided exact McNemar p of SNN against ANN.
STAT_COLUMNS = ("correct", "images", "ci_low", "ci_high", "agreement", "p_vs_ann")
COLUMNS = (
    "dataset",
    "model",
    *AXES,
    "timesteps",
    "accuracy",
    "top5",
    "ann_accuracy",
    "spikes_per_image",
    "synops_per_image",
    "analog_macs_per_image",
    "ann_macs_per_image",
    "energy_ratio",
    "seconds",
    *STAT_COLUMNS,
)
# Columns added after the first release: older tables read with them empty.
LATER_COLUMNS = ("analog_macs_per_image", "ann_macs_per_image", "energy_ratio", *STAT_COLUMNS)
WITHIN = 0.01  # "within 1 point of the ANN"


def read_results(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise RmpError(f"no results.csv in {path.parent}; is it a finished `rmp sweep` run dir?")
    try:
        df = pd.read_csv(path)
    except OSError as exc:
        raise FileFault("cannot read", path, exc) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise RmpError(
            f"{path} is not a readable results table ({str(exc).splitlines()[0]})"
        ) from None
    df = with_implied_axes(df)
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise RmpError(f"{path} lacks columns {', '.join(missing)}; not an rmp results table")
    return df


def with_implied_keys(df: pd.DataFrame) -> pd.DataFrame:
    """Add the axes that tables written before them lack, with the value they implied; rows
    from before an axis (a sweep resumed across versions) hold it empty: fill them too."""
    missing: dict[str, object] = {c: v for c, v in LATER_AXES.items() if c not in df.columns}
    missing |= {c: df[c].fillna(v) for c, v in LATER_AXES.items() if c in df and df[c].isna().any()}
    return df.assign(**missing) if missing else df


def with_implied_axes(df: pd.DataFrame) -> pd.DataFrame:
    """Add the axes and columns that tables written before them lack (axes with the value they
    implied, counts empty)."""
    df = with_implied_keys(df)
    missing = {c: math.nan for c in LATER_COLUMNS if c not in df.columns}
    return df.assign(**missing) if missing else df


def write_csv(path: Path, df: pd.DataFrame) -> None:
    atomic_write_text(path, df.to_csv(index=False, float_format="%.10g"))


def point_key(row: dict | pd.Series) -> str:
    """Stable identity of a grid point (used for resuming and for labels). Numbers are
    normalised so a value read back from CSV ('0', '1') names the same point as 0.0, 1.0."""

    def norm(axis: str) -> str:
        value = row[axis]
        if axis == "seed":
            return str(int(float(value)))
        return repr(float(value)) if axis in ("scale", "v_init") else str(value)

    return ",".join(f"{axis}={norm(axis)}" for axis in AXES)


def with_intervals(
    df: pd.DataFrame, confidence: float = CONFIDENCE, images: int | None = None
) -> pd.DataFrame:
    """Fill ci_low/ci_high where a table lacks them but its image count is known (the `images`
    column, or `images` given: tables written before the count was kept)."""
    df = with_implied_axes(df).copy()
    if images is not None:
        df["images"] = df["images"].fillna(images)
    todo = df["ci_low"].isna() & df["images"].notna() & df["accuracy"].notna()
    for i in df.index[todo]:
        n = int(df.at[i, "images"])
        k = df.at[i, "correct"]
        k = int(k) if pd.notna(k) else round(float(df.at[i, "accuracy"]) * n)
        df.at[i, "correct"] = k
        df.at[i, "ci_low"], df.at[i, "ci_high"] = wilson(k, n, confidence)
    return df


def summarize(
    df: pd.DataFrame, predictions: Predictions | None = None, alpha: float = ALPHA
) -> pd.DataFrame:
    """Per grid point: best accuracy (with its interval) and the first T reaching it, loss vs
    the ANN at the largest T, the first T within 1 point of the ANN and, with predictions, the
    first T not significantly below the ANN (one-sided exact McNemar at alpha)."""
    rows = []
    df = with_implied_axes(df)
    for _, group in df.groupby(list(AXES), sort=False):
        group = group.sort_values("timesteps")
        first = group.iloc[0]
        best = group["accuracy"].max()
        at_best = group[group["accuracy"] >= best].iloc[0]
        ann = float(first["ann_accuracy"])
        last = group.iloc[-1]
        within = group[group["accuracy"] >= ann - WITHIN - 1e-12]
        energy = within["energy_ratio"] if "energy_ratio" in group else pd.Series(dtype=float)
        rows.append(
            {
                **{c: first[c] for c in ("dataset", "model", *AXES)},
                "ann_accuracy": ann,
                "best_accuracy": best,
                "best_ci_low": float(at_best["ci_low"]),
                "best_ci_high": float(at_best["ci_high"]),
                "images": first["images"],
                "first_t_best": int(at_best["timesteps"]),
                "max_timesteps": int(last["timesteps"]),
                "accuracy_at_max_t": float(last["accuracy"]),
                "loss_at_max_t": ann - float(last["accuracy"]),
                "first_t_within_1pt": int(within["timesteps"].iloc[0]) if len(within) else None,
                "first_t_not_below_ann": _first_not_below_ann(group, predictions, alpha),
                "energy_ratio_within_1pt": float(energy.iloc[0]) if len(energy) else None,
                "energy_ratio_at_max_t": float(last.get("energy_ratio", math.nan)),
            }
        )
    return pd.DataFrame(rows)


def _curve(predictions: Predictions | None, group: pd.DataFrame) -> tuple[list[int], Any] | None:
    """(timesteps, [nT, N] right/wrong) of a grid point's SNN, at the table's T; None when the
    run kept no predictions for it."""
    if predictions is None:
        return None
    key = point_key(group.iloc[0])
    if key not in predictions.points:
        return None
    steps = [int(t) for t in group["timesteps"]]
    if any(t not in predictions.timesteps for t in steps):
        return None
    rows = [predictions.timesteps.index(t) for t in steps]
    return steps, predictions.right(key)[rows]


def _first_not_below_ann(
    group: pd.DataFrame, predictions: Predictions | None, alpha: float
) -> int | None:
    curve = _curve(predictions, group)
    if curve is None:
        return None
    steps, right = curve
    assert predictions is not None
    i = first_not_below(predictions.ann_right(point_key(group.iloc[0])), right, alpha)
    return steps[i] if i is not None else None


def _first_t(curve: pd.DataFrame, level: float) -> int | None:
    reached = curve[curve["accuracy"] >= level - 1e-12]
    return int(reached["timesteps"].iloc[0]) if len(reached) else None


def _compare(hard: pd.DataFrame, soft: pd.DataFrame, where: str) -> str:
    """The literal claim (first T at which soft reaches hard's best), then the same with a
    1-point tolerance, which small test sets need: their best values differ by a few images."""
    hard, soft = hard.sort_values("timesteps"), soft.sort_values("timesteps")
    best = hard["accuracy"].max()
    t_hard = _first_t(hard, best)
    t_soft = _first_t(soft, best)
    near_hard, near_soft = _first_t(hard, best - WITHIN), _first_t(soft, best - WITHIN)
    tolerant = (
        f"; within 1 pt of it: hard at T={near_hard}, soft at T={near_soft} "
        f"({steps_saved(near_hard, near_soft)})"
        if near_hard and near_soft
        else ""
    )
    if t_soft is None:
        return (
            f"soft reset does not reach hard reset's best ({best:.2%} at T={t_hard}) "
            f"within T<={int(soft['timesteps'].max())}{tolerant} [{where}]"
        )
    return (
        f"soft reset matches hard reset's best ({best:.2%} at T={t_hard}) at T={t_soft}: "
        f"{steps_saved(t_hard, t_soft)}{tolerant} [{where}]"
    )


def _pairs(df: pd.DataFrame) -> list[tuple[pd.DataFrame, pd.DataFrame, str, int]]:
    """(hard, soft, where, seed) to compare: like for like (all other axes equal), and the
    paper's own pairing: soft reset + rmp thresholds against hard reset + spike_norm at scale 1
    (Sengupta 2019), at equal v_init, encoding, activation and seed."""
    others = [a for a in AXES if a not in ("reset", "seed")]
    pairs = []
    for values, group in df.groupby([*others, "seed"], sort=False):
        hard, soft = group[group["reset"] == "hard"], group[group["reset"] == "soft"]
        if len(hard) and len(soft):
            where = ", ".join(f"{a}={v}" for a, v in zip(others, values, strict=False))
            pairs.append((hard, soft, where, int(values[-1])))
    pairing_axes = ["v_init", "encoding", "activation", "seed"]
    for (v_init, encoding, _act, seed), group in df.groupby(pairing_axes, sort=False):
        hard = group[
            (group["reset"] == "hard")
            & (group["balance"] == "spike_norm")
            & (group["scale"] == 1.0)
        ]
        for scale, soft in group[(group["reset"] == "soft") & (group["balance"] == "rmp")].groupby(
            "scale"
        ):
            if len(hard):
                where = (
                    f"paper pairing: soft+rmp scale={scale} vs hard+spike_norm "
                    f"scale=1.0, v_init={v_init}, encoding={encoding}"
                )
                pairs.append((hard, soft, where, int(seed)))
    return pairs


def _paired_verdict(
    hard: pd.DataFrame,
    soft: pd.DataFrame,
    predictions: Predictions | None,
    alpha: float,
    confidence: float,
) -> Verdict | None:
    hard, soft = hard.sort_values("timesteps"), soft.sort_values("timesteps")
    a, b = _curve(predictions, hard), _curve(predictions, soft)
    if a is None or b is None or a[0] != b[0]:
        return None
    return verdict(a[0], a[1], b[1], alpha=alpha, confidence=confidence)


def verdicts(
    df: pd.DataFrame,
    predictions: Predictions | None,
    alpha: float = ALPHA,
    confidence: float = CONFIDENCE,
) -> list[tuple[str, dict[int, Verdict | None], list[pd.DataFrame]]]:
    """Per comparison (where): the paired verdict of each seed (None: no predictions), and the
    hard and soft curves of the first seed (for the literal best-against-best figure)."""
    out: dict[str, tuple[dict[int, Verdict | None], list[pd.DataFrame]]] = {}
    for hard, soft, where, seed in _pairs(with_implied_axes(df)):
        by_seed, _ = out.setdefault(where, ({}, [hard, soft]))
        by_seed[seed] = _paired_verdict(hard, soft, predictions, alpha, confidence)
    return [(where, by_seed, curves) for where, (by_seed, curves) in out.items()]


def headline(
    df: pd.DataFrame,
    predictions: Predictions | None = None,
    alpha: float = ALPHA,
    confidence: float = CONFIDENCE,
) -> list[str]:
    """The paper's claim, computed. With per-image predictions: decided by paired tests (see
    report/paired.py), per seed, and across seeds when the run has several. Without (tables
    written before predictions were kept): the literal first T at which soft reset reaches hard
    reset's best accuracy, against the first T at which hard reset reached it."""
    lines = []
    for where, by_seed, (hard, soft) in verdicts(df, predictions, alpha, confidence):
        decided = {s: v for s, v in by_seed.items() if v is not None}
        if len(decided) != len(by_seed):  # no paired tests for this comparison
            lines.append(_compare(hard, soft, where))
        elif len(decided) == 1:
            lines.append(verdict_line(next(iter(decided.values())), where))
        else:
            lines.append(across_seeds_line(decided, where))
            lines += [f"seed {s}: {verdict_line(v, where)}" for s, v in sorted(decided.items())]
    return lines


def _pct(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x * 100:.2f}"


def _interval(low: float | None, high: float | None) -> str:
    if low is None or high is None or math.isnan(float(low)) or math.isnan(float(high)):
        return "-"
    return f"[{low * 100:.2f}, {high * 100:.2f}]"


def comparisons_markdown(
    df: pd.DataFrame,
    predictions: Predictions | None,
    alpha: float = ALPHA,
    confidence: float = CONFIDENCE,
) -> str:
    """The soft-vs-hard table: the literal best-against-best figure beside the paired one."""
    rows = [
        (where, v, curves)
        for where, by_seed, curves in verdicts(df, predictions, alpha, confidence)
        for v in [next(iter(by_seed.values()))]
        if len(by_seed) == 1
    ]
    if not rows:
        return ""
    level = f"{confidence:.0%}"
    out = io.StringIO()
    out.write(
        "\n| comparison | hard best % (T) | soft reaches it literally at T "
        "| hard not sig. below its best from T | soft not sig. below it from T "
        f"| soft - hard best (pt) [{level} CI] | p (one-sided) |\n|---|---|---|---|---|---|---|\n"
    )
    for where, v, (hard, soft) in rows:
        hard, soft = hard.sort_values("timesteps"), soft.sort_values("timesteps")
        best = hard["accuracy"].max()
        t_best, t_lit = _first_t(hard, best), _first_t(soft, best)
        lit = str(t_lit) if t_lit is not None else "never"
        if v is None:
            out.write(f"| {where} | {_pct(best)} ({t_best}) | {lit} | - | - | - | - |\n")
            continue
        diff, low, high = v.difference()
        soft_t = str(v.t_soft) if v.t_soft is not None else f"never (T<={v.at_t})"
        out.write(
            f"| {where} | {_pct(v.best_accuracy)} ({v.best_t}) | {lit} | {v.t_hard} | {soft_t} "
            f"| {diff * 100:+.2f} [{low * 100:+.2f}, {high * 100:+.2f}] "
            f"| {v.at.p_b_worse():.3g} |\n"
        )
    return out.getvalue()


def summary_markdown(
    summary: pd.DataFrame,
    lines: list[str],
    *,
    paired: bool = True,
    confidence: float = CONFIDENCE,
    alpha: float = ALPHA,
) -> str:
    def ratio(x: float | None) -> str:
        return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3g}"

    def t(x: float | None) -> str:
        return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else str(int(x))

    pct = _pct
    out = io.StringIO()
    several = len(summary) and summary["activation"].nunique() > 1
    seeds = len(summary) and "seed" in summary and summary["seed"].nunique() > 1
    if len(summary):
        first = summary.iloc[0]
        out.write(f"# Sweep summary: {first['dataset']} / {first['model']}\n\n")
        anns = summary.drop_duplicates(["activation", "seed"] if seeds else "activation")
        out.write(
            "ANN accuracy: "
            + ", ".join(
                f"{pct(r['ann_accuracy'])}%"
                + (f" ({r['activation']})" if several else "")
                + (f" (seed {r['seed']})" if seeds else "")
                for _, r in anns.iterrows()
            )
            + "\n\n"
        )
        images = summary["images"].dropna() if "images" in summary else pd.Series(dtype=float)
        level = f"{confidence:.0%}"
        if len(images):
            tests = f"; paired tests are exact McNemar tests at alpha={alpha:g}" if paired else ""
            out.write(
                f"On {int(images.iloc[0])} test images; intervals are {level} Wilson score "
                f"intervals{tests}.\n\n"
            )
        if not paired:
            out.write(
                "This run kept no per-image predictions (written before rmp kept them): "
                + ("intervals come from the counts; " if len(images) else "")
                + "no paired tests, so the soft-vs-hard lines compare point estimates.\n\n"
            )
    act_head, act_rule = ("activation | ", "---|") if several else ("", "")
    seed_head, seed_rule = ("seed | ", "---|") if seeds else ("", "")
    out.write(
        f"| {act_head}{seed_head}reset | balance | scale | v_init | encoding | best acc % "
        f"| {confidence:.0%} CI | first T at best "
        "| acc % at max T | loss vs ANN at max T (pt) | first T within 1 pt of ANN "
        "| SNN/ANN energy there | first T not sig. below ANN |\n"
    )
    out.write(f"|{act_rule}{seed_rule}---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    for _, r in summary.iterrows():
        act = f"{r['activation']} | " if several else ""
        seed = f"{r['seed']} | " if seeds else ""
        out.write(
            f"| {act}{seed}{r['reset']} | {r['balance']} | {r['scale']:g} | {r['v_init']:g} "
            f"| {r['encoding']} | {pct(r['best_accuracy'])} "
            f"| {_interval(r.get('best_ci_low'), r.get('best_ci_high'))} "
            f"| {t(r['first_t_best'])} "
            f"| {pct(r['accuracy_at_max_t'])} | {r['loss_at_max_t'] * 100:.2f} "
            f"| {t(r['first_t_within_1pt'])} | {ratio(r.get('energy_ratio_within_1pt'))} "
            f"| {t(r.get('first_t_not_below_ann'))} |\n"
        )
    if lines:
        out.write("\n## Soft vs hard reset\n\n")
        for line in lines:
            out.write(f"- {line}\n")
    return out.getvalue()


def write_summary(
    run_path: Path,
    df: pd.DataFrame,
    sections: Sequence[str] = (),
    *,
    predictions: Predictions | None = None,
    alpha: float = ALPHA,
    confidence: float = CONFIDENCE,
) -> list[str]:
    """summary.csv and summary.md; `sections`: more markdown appended (e.g. the layer report)."""
    df = with_intervals(df, confidence)
    summary = summarize(df, predictions, alpha)
    lines = headline(df, predictions, alpha, confidence)
    write_csv(run_path / "summary.csv", summary)
    text = (
        summary_markdown(
            summary, lines, paired=predictions is not None, confidence=confidence, alpha=alpha
        )
        + comparisons_markdown(df, predictions, alpha, confidence)
        + seeds_markdown(with_implied_axes(df), [a for a in AXES if a != "seed"])
        + "".join(sections)
    )
    atomic_write_text(run_path / "summary.md", text)
    return lines

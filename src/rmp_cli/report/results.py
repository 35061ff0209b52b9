"""Tidy sweep results: the results.csv schema, per-grid-point summaries and the paper's headline."""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from rmp_cli.errors import RmpError, parsing, read_bytes
from rmp_cli.report.paired import Verdict, across_seeds_line, steps_saved, verdict, verdict_line
from rmp_cli.report.predictions import Predictions
from rmp_cli.report.seeds import seeds_markdown
from rmp_cli.report.stats import ALPHA, CONFIDENCE, first_not_below, wilson
from rmp_cli.runs.atomic import atomic_write_text

AXES = (
    *("reset", "balance", "scale", "v_init", "encoding", "activation", "neuron", "presteps"),
    "seed",
)
# Columns added after the first release, with the value older results.csv files implied.
# neuron: the spike options (if, signed, burst2, ..., +cos/+srp); presteps: the K pre-steps run
# before the counted T (its `timesteps`), so the latency paid is presteps + timesteps; seed: older
# tables come from one run at one seed (0, the default).
LATER_AXES = {"activation": "relu", "neuron": "if", "presteps": 0, "seed": 0}
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


# Columns that name things; every other column of COLUMNS holds numbers (or is empty).
TEXT_COLUMNS = ("dataset", "model", "reset", "balance", "encoding", "activation", "neuron")
# Columns every row must fill: a row without them names no grid point.
KEY_COLUMNS = (*TEXT_COLUMNS, "scale", "v_init", "timesteps", "accuracy")


def read_text_file(path: Path) -> str:
    """A text file rmp wrote; the disk's refusal is `cannot read`, bytes that are no UTF-8 text
    say so."""
    raw = read_bytes(path)
    with parsing(path, "not UTF-8 text", "replace it"):
        return raw.decode("utf-8")


def split_cut_line(text: str) -> tuple[str, str]:
    """(complete lines, the cut last line or ""): rmp ends every line of its tables with a
    newline, so a table whose last line lacks it was cut there (by a crash outside rmp)."""
    if not text or text.endswith("\n"):
        return text, ""
    head, _, tail = text.rpartition("\n")
    return (head + "\n" if head else ""), tail


def check_table(
    df: pd.DataFrame, columns: Sequence[str], text: Sequence[str], keys: Sequence[str]
) -> pd.DataFrame:
    """Raise (inside a reader's `parsing` block) unless `df` has `columns`, numbers in every
    column not in `text`, and no empty cell under `keys`. Numbers pandas left as text become
    float."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"it lacks columns {', '.join(missing)}")
    for column in columns:
        if column in text:
            df[column] = df[column].astype(object)
            if not df[column].map(lambda v: isinstance(v, str) or _empty(v)).all():
                raise ValueError(f"column {column} holds no names")
            continue
        if pd.api.types.is_bool_dtype(df[column]):
            raise ValueError(f"column {column} holds true/false, not numbers")
        if pd.api.types.is_numeric_dtype(df[column]):
            continue
        values = pd.to_numeric(df[column], errors="coerce")
        bad = values.isna() & df[column].notna()
        if bad.any():
            row = int(bad.to_numpy().nonzero()[0][0]) + 2  # 1-based, after the header line
            raise ValueError(f"line {row}: {column} is {df[column][bad].iloc[0]!r}, not a number")
        df[column] = values.astype(float)
    empty = [c for c in keys if df[c].map(_empty).any()]
    if empty:
        raise ValueError(f"a row has no {', '.join(empty)}")
    if "timesteps" in df.columns and not (df["timesteps"] % 1 == 0).all():
        raise ValueError("timesteps holds a fraction")
    return df


def _empty(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def read_results(path: Path, *, cut: Callable[[str], None] | None = None) -> pd.DataFrame:
    """results.csv, checked: every column of COLUMNS of its type, every row naming its point.

    A last line cut by a crash (no newline after it) is an error, unless `cut` is given: then
    it is left out and `cut(the line)` is told (a resumed sweep recomputes that point)."""
    if not path.is_file():
        raise RmpError(f"no results.csv in {path.parent}; is it a finished `rmp sweep` run dir?")
    text, tail = split_cut_line(read_text_file(path))
    if tail and cut is None:
        raise RmpError(
            f"{path} ends in a cut line ({tail[:40]!r}...); resume its sweep (the same command "
            "with run_dir=) to repair it"
        )
    if not text and cut is not None:  # empty, or not even the header line whole: no rows
        cut(tail)
        return pd.DataFrame(columns=COLUMNS)
    with parsing(path, "not a readable results table"):
        df = with_implied_axes(
            pd.read_csv(io.StringIO(text), dtype=dict.fromkeys(TEXT_COLUMNS, str))
        )
        missing = [c for c in COLUMNS if c not in df.columns]
        if missing:
            raise RmpError(f"{path} lacks columns {', '.join(missing)}; not an rmp results table")
        df = check_table(df, COLUMNS, TEXT_COLUMNS, KEY_COLUMNS)
    if tail and cut is not None:
        cut(tail)
    return df


def with_implied_keys(df: pd.DataFrame) -> pd.DataFrame:
    """Add the axes that tables written before them lack, with the value they implied; rows
    from before an axis (a sweep resumed across versions) hold it empty: fill them too (groupby
    would drop them)."""
    missing: dict[str, object] = {c: v for c, v in LATER_AXES.items() if c not in df.columns}
    missing |= {
        c: df[c].fillna(v).astype(type(v))
        for c, v in LATER_AXES.items()
        if c in df.columns and df[c].isna().any()
    }
    return df.assign(**missing) if missing else df


def with_implied_axes(df: pd.DataFrame) -> pd.DataFrame:
    """Add the axes and columns that tables written before them lack (axes with the value they
    implied, counts empty)."""
    df = with_implied_keys(df)
    missing = {c: math.nan for c in LATER_COLUMNS if c not in df.columns}
    return df.assign(**missing) if missing else df


def with_latency(df: pd.DataFrame) -> pd.DataFrame:
    """`timesteps` as the latency paid, K pre-steps + T: what every summary and headline ranks
    by (the table itself keeps T and K apart)."""
    df = with_implied_axes(df)
    if not (df["presteps"] != 0).any():
        return df
    return df.assign(timesteps=df["timesteps"] + df["presteps"].astype(int))


def write_csv(path: Path, df: pd.DataFrame) -> None:
    atomic_write_text(path, df.to_csv(index=False, float_format="%.10g"))


def point_key(row: dict | pd.Series) -> str:
    """Stable identity of a grid point (used for resuming and for labels). Numbers are
    normalised so a value read back from CSV ('0', '1') names the same point as 0.0, 1.0."""

    def norm(axis: str) -> str:
        value = row.get(axis, math.nan)
        if axis in LATER_AXES and pd.isna(value):  # a row built before the axis existed
            value = LATER_AXES[axis]
        if axis in ("seed", "presteps"):
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
    df = with_latency(df)
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
    steps = [int(t) for t in group["timesteps"]]  # the latency K + T (with_latency)
    presteps = int(group["presteps"].iloc[0]) if "presteps" in group else 0
    counted = [t - presteps for t in steps]  # the predictions are kept by the counted T
    if any(t not in predictions.timesteps for t in counted):
        return None
    rows = [predictions.timesteps.index(t) for t in counted]
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
    pairing_axes = ["v_init", "encoding", "activation", "neuron", "presteps", "seed"]
    for (v_init, encoding, _act, neuron, k, seed), group in df.groupby(pairing_axes, sort=False):
        options = (f", neuron={neuron}" if neuron != "if" else "") + (f", K={k}" if k else "")
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
                    f"scale=1.0, v_init={v_init}, encoding={encoding}{options}"
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
    for hard, soft, where, seed in _pairs(with_latency(df)):
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
    # neuron options and pre-steps as columns where any point uses them
    options = bool(len(summary)) and bool(
        (summary["neuron"] != "if").any() or (summary["presteps"] != 0).any()
    )
    if options:
        act_head, act_rule = act_head + "neuron | K | ", act_rule + "---|---|"
        out.write("T counts the K pre-steps: the latency paid is K + T.\n\n")
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
        act += f"{r['neuron']} | {int(r['presteps'])} | " if options else ""
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

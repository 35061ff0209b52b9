"""Tidy sweep results: the results.csv schema, per-grid-point summaries and the paper's headline."""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from rmp_cli.errors import RmpError, parsing, read_bytes
from rmp_cli.runs.atomic import atomic_write_text

AXES = ("reset", "balance", "scale", "v_init", "encoding", "activation")
# Columns added after the first release, with the value older results.csv files implied.
LATER_AXES = {"activation": "relu"}
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
)
# Columns added after the first release: older tables read with them empty.
LATER_COLUMNS = ("analog_macs_per_image", "ann_macs_per_image", "energy_ratio")
WITHIN = 0.01  # "within 1 point of the ANN"


# Columns that name things; every other column of COLUMNS holds numbers (or is empty).
TEXT_COLUMNS = ("dataset", "model", "reset", "balance", "encoding", "activation")
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


def with_implied_axes(df: pd.DataFrame) -> pd.DataFrame:
    """Add the axes and columns that tables written before them lack (axes with the value they
    implied, counts empty)."""
    missing: dict[str, object] = {c: v for c, v in LATER_AXES.items() if c not in df.columns}
    missing |= {c: math.nan for c in LATER_COLUMNS if c not in df.columns}
    return df.assign(**missing) if missing else df


def write_csv(path: Path, df: pd.DataFrame) -> None:
    atomic_write_text(path, df.to_csv(index=False, float_format="%.10g"))


def point_key(row: dict | pd.Series) -> str:
    """Stable identity of a grid point (used for resuming and for labels). Numbers are
    normalised so a value read back from CSV ('0', '1') names the same point as 0.0, 1.0."""

    def norm(axis: str) -> str:
        value = row[axis]
        return repr(float(value)) if axis in ("scale", "v_init") else str(value)

    return ",".join(f"{axis}={norm(axis)}" for axis in AXES)


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Per grid point: best accuracy and the first T reaching it, loss vs the ANN at the largest T,
    and the first T within 1 point of the ANN."""
    rows = []
    df = with_implied_axes(df)
    for _, group in df.groupby(list(AXES), sort=False):
        group = group.sort_values("timesteps")
        first = group.iloc[0]
        best = group["accuracy"].max()
        ann = float(first["ann_accuracy"])
        last = group.iloc[-1]
        within = group[group["accuracy"] >= ann - WITHIN - 1e-12]
        energy = within["energy_ratio"] if "energy_ratio" in group else pd.Series(dtype=float)
        rows.append(
            {
                **{c: first[c] for c in ("dataset", "model", *AXES)},
                "ann_accuracy": ann,
                "best_accuracy": best,
                "first_t_best": int(group.loc[group["accuracy"] >= best, "timesteps"].iloc[0]),
                "max_timesteps": int(last["timesteps"]),
                "accuracy_at_max_t": float(last["accuracy"]),
                "loss_at_max_t": ann - float(last["accuracy"]),
                "first_t_within_1pt": int(within["timesteps"].iloc[0]) if len(within) else None,
                "energy_ratio_within_1pt": float(energy.iloc[0]) if len(energy) else None,
                "energy_ratio_at_max_t": float(last.get("energy_ratio", math.nan)),
            }
        )
    return pd.DataFrame(rows)


def _first_t(curve: pd.DataFrame, level: float) -> int | None:
    reached = curve[curve["accuracy"] >= level - 1e-12]
    return int(reached["timesteps"].iloc[0]) if len(reached) else None


def steps_saved(t_hard: int, t_soft: int) -> str:
    """What soft reset's latency is against hard reset's, said the way it went."""
    if t_soft == t_hard:
        return "same T"
    if t_soft < t_hard:
        return f"{t_hard / t_soft:.3g}x fewer time-steps"
    return f"{t_soft / t_hard:.3g}x more time-steps"


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


def headline(df: pd.DataFrame) -> list[str]:
    """The paper's claim, computed: the first T at which soft reset reaches hard reset's best
    accuracy, against the first T at which hard reset reached it. Like for like (all other axes
    equal), and the paper's own pairing: soft reset + rmp thresholds against hard reset +
    spike_norm at scale 1 (Sengupta 2019), at equal v_init and encoding."""
    others = [a for a in AXES if a != "reset"]
    df = with_implied_axes(df)
    lines = []
    for values, group in df.groupby(others, sort=False):
        hard, soft = group[group["reset"] == "hard"], group[group["reset"] == "soft"]
        if len(hard) and len(soft):
            lines.append(
                _compare(
                    hard, soft, ", ".join(f"{a}={v}" for a, v in zip(others, values, strict=True))
                )
            )
    pairing_axes = ["v_init", "encoding", "activation"]
    for (v_init, encoding, _act), group in df.groupby(pairing_axes, sort=False):
        hard = group[
            (group["reset"] == "hard")
            & (group["balance"] == "spike_norm")
            & (group["scale"] == 1.0)
        ]
        for scale, soft in group[(group["reset"] == "soft") & (group["balance"] == "rmp")].groupby(
            "scale"
        ):
            if len(hard):
                lines.append(
                    _compare(
                        hard,
                        soft,
                        f"paper pairing: soft+rmp scale={scale} vs hard+spike_norm "
                        f"scale=1.0, v_init={v_init}, encoding={encoding}",
                    )
                )
    return lines


def summary_markdown(summary: pd.DataFrame, lines: list[str]) -> str:
    def pct(x: float | None) -> str:
        return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x * 100:.2f}"

    def ratio(x: float | None) -> str:
        return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3g}"

    def t(x: float | None) -> str:
        return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else str(int(x))

    out = io.StringIO()
    several = len(summary) and summary["activation"].nunique() > 1
    if len(summary):
        first = summary.iloc[0]
        out.write(f"# Sweep summary: {first['dataset']} / {first['model']}\n\n")
        anns = summary.drop_duplicates("activation")
        out.write(
            "ANN accuracy: "
            + ", ".join(
                f"{pct(r['ann_accuracy'])}%" + (f" ({r['activation']})" if several else "")
                for _, r in anns.iterrows()
            )
            + "\n\n"
        )
    act_head, act_rule = ("activation | ", "---|") if several else ("", "")
    out.write(
        f"| {act_head}reset | balance | scale | v_init | encoding | best acc % | first T at best "
        "| acc % at max T | loss vs ANN at max T (pt) | first T within 1 pt of ANN "
        "| SNN/ANN energy there |\n"
    )
    out.write(f"|{act_rule}---|---|---|---|---|---|---|---|---|---|---|\n")
    for _, r in summary.iterrows():
        act = f"{r['activation']} | " if several else ""
        out.write(
            f"| {act}{r['reset']} | {r['balance']} | {r['scale']:g} | {r['v_init']:g} "
            f"| {r['encoding']} | {pct(r['best_accuracy'])} | {t(r['first_t_best'])} "
            f"| {pct(r['accuracy_at_max_t'])} | {r['loss_at_max_t'] * 100:.2f} "
            f"| {t(r['first_t_within_1pt'])} | {ratio(r.get('energy_ratio_within_1pt'))} |\n"
        )
    if lines:
        out.write("\n## Soft vs hard reset\n\n")
        for line in lines:
            out.write(f"- {line}\n")
    return out.getvalue()


def write_summary(run_path: Path, df: pd.DataFrame, sections: Sequence[str] = ()) -> list[str]:
    """summary.csv and summary.md; `sections`: more markdown appended (e.g. the layer report)."""
    summary = summarize(df)
    lines = headline(df)
    write_csv(run_path / "summary.csv", summary)
    text = summary_markdown(summary, lines) + "".join(sections)
    atomic_write_text(run_path / "summary.md", text)
    return lines

"""A results.csv as a markdown table of accuracies with their 95% Wilson intervals.

For tables written before rmp kept per-image counts, give the test image count (--images); the
correct count is then accuracy x images, exact for accuracies rmp wrote (k / n, six digits).
  python scripts/interval_table.py docs/RUN/results.csv --images 1000 --timesteps 8,64,512
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from rmp_cli.errors import RmpError
from rmp_cli.report.results import AXES, read_results, with_intervals
from rmp_cli.report.stats import wilson


def interval_table(
    df: pd.DataFrame, images: int | None, timesteps: list[int] | None, digits: int = 1
) -> str:
    def cell(accuracy: float, low: float, high: float) -> str:
        return f"{100 * accuracy:.{digits}f} ({100 * low:.{digits}f}-{100 * high:.{digits}f})"

    df = with_intervals(df, images=images)
    if df["ci_low"].isna().any():
        raise SystemExit("interval_table: the table has no image counts; give --images N")
    axes = [a for a in AXES if df[a].nunique() > 1] or ["reset"]
    steps = timesteps or sorted(df["timesteps"].unique())
    n = int(df["images"].iloc[0])

    def ann_cell(rows: pd.DataFrame) -> str:
        ann = float(rows["ann_accuracy"].iloc[0])
        return cell(ann, *wilson(round(ann * n), n))

    # One ANN for the whole table, or (variants that train their own) a column of them.
    per_row = df["ann_accuracy"].nunique() > 1
    head = [*axes, *(["ANN"] if per_row else []), *(f"T={t}" for t in steps)]
    lines = [
        ("On" if per_row else f"ANN {ann_cell(df)} on")
        + f" {n:,} test images; each cell: accuracy % (95% Wilson interval)",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for key, rows in df.groupby(axes, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        by_t = rows.set_index("timesteps")
        cells = [ann_cell(rows)] if per_row else []
        cells += [
            cell(*by_t.loc[t, ["accuracy", "ci_low", "ci_high"]]) if t in by_t.index else ""
            for t in steps
        ]
        lines.append("| " + " | ".join([*map(str, key), *cells]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--images", type=int, help="test images, for tables without counts")
    parser.add_argument("--timesteps", help="comma-separated T to show (default: all)")
    parser.add_argument("--digits", type=int, default=1, help="decimals of a percentage")
    args = parser.parse_args()
    steps = [int(t) for t in args.timesteps.split(",")] if args.timesteps else None
    try:
        df = read_results(args.results)
    except RmpError as exc:  # a missing or damaged table: one line, not a traceback
        raise SystemExit(f"interval_table: {exc}") from None
    print(interval_table(df, args.images, steps, args.digits))


if __name__ == "__main__":
    main()

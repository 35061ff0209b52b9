"""Seeds as an axis: per grid point and T, the spread of accuracy over seeds."""

from __future__ import annotations

import io
from collections.abc import Sequence

import pandas as pd


def over_seeds(df: pd.DataFrame, axes: Sequence[str]) -> pd.DataFrame:
    """Mean, standard deviation (n-1), min and max of accuracy over seeds, per grid point
    (`axes`, the seed excluded) and T. Empty when the table holds a single seed."""
    if "seed" not in df or df["seed"].nunique() < 2:
        return pd.DataFrame()
    keys = [*axes, "timesteps"]
    grouped = df.groupby(keys, sort=False)["accuracy"]
    table = grouped.agg(["mean", "std", "min", "max", "count"]).reset_index()
    return table.rename(columns={"count": "seeds"})


def seeds_markdown(df: pd.DataFrame, axes: Sequence[str]) -> str:
    table = over_seeds(df, axes)
    if table.empty:
        return ""
    varying = [a for a in axes if df[a].nunique() > 1] or ["reset"]
    out = io.StringIO()
    seeds = ", ".join(str(s) for s in sorted(df["seed"].unique()))
    out.write(f"\n## Over seeds ({seeds})\n\n")
    out.write(
        f"| {' | '.join(varying)} | T | mean acc % | std (pt) | range % | seeds |\n"
        f"|{'---|' * (len(varying) + 5)}\n"
    )
    for _, r in table.iterrows():
        point = " | ".join(str(r[a]) for a in varying)
        out.write(
            f"| {point} | {int(r['timesteps'])} | {r['mean'] * 100:.2f} "
            f"| {r['std'] * 100:.2f} | {r['min'] * 100:.2f}-{r['max'] * 100:.2f} "
            f"| {int(r['seeds'])} |\n"
        )
    return out.getvalue()

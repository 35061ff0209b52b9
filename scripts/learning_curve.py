"""Learning curves of one or more trainings, from their metrics.csv, as a plot and a table.

Each run is LABEL=METRICS_CSV[:IMAGES]; with IMAGES (the test set's size) the plot shades the
test accuracy's 95% Wilson band and the table gives the interval.
  python scripts/learning_curve.py lossless=RUN/metrics.csv:1000 jpeg=OLD/metrics.csv:10000 \
      --epochs 10,40,100,140 -o docs/RUN/learning_curve.png
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from rmp_cli.errors import RmpError
from rmp_cli.report.figures import save_figure
from rmp_cli.report.stats import wilson


@dataclass
class Curve:
    label: str
    metrics: pd.DataFrame
    images: int | None

    def cell(self, epoch: int) -> str:
        rows = self.metrics[self.metrics["epoch"] == epoch]
        if rows.empty:
            return ""
        accuracy = float(rows["test_acc"].iloc[-1])
        if self.images is None:
            return f"{100 * accuracy:.1f}"
        low, high = wilson(round(accuracy * self.images), self.images)
        return f"{100 * accuracy:.1f} ({100 * low:.1f}-{100 * high:.1f})"


def parse_run(spec: str) -> Curve:
    label, sep, rest = spec.partition("=")
    if not sep or not label:
        raise SystemExit(f"learning_curve: {spec!r} is not LABEL=METRICS_CSV[:IMAGES]")
    path, _, images = rest.partition(":")
    try:
        metrics = pd.read_csv(path)
        if not {"epoch", "test_acc"} <= set(metrics.columns):
            raise ValueError("no epoch and test_acc columns")
        count = int(images) if images else None
    except (OSError, ValueError, pd.errors.ParserError) as error:
        raise SystemExit(f"learning_curve: cannot read {spec!r}: {error}") from None
    return Curve(label, metrics, count)


def table(curves: list[Curve], epochs: list[int]) -> str:
    head = ["epoch", *(c.label + (f" ({c.images:,} images)" if c.images else "") for c in curves)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for epoch in epochs:
        lines.append("| " + " | ".join([str(epoch), *(c.cell(epoch) for c in curves)]) + " |")
    return "\n".join(lines)


def plot(curves: list[Curve], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for curve in curves:
        m = curve.metrics
        (line,) = ax.plot(m["epoch"], 100 * m["test_acc"], label=f"{curve.label} test")
        if "train_acc" in m:
            ax.plot(
                m["epoch"],
                100 * m["train_acc"],
                "--",
                color=line.get_color(),
                alpha=0.6,
                label=f"{curve.label} train",
            )
        if curve.images:
            bands = [wilson(round(a * curve.images), curve.images) for a in m["test_acc"]]
            ax.fill_between(
                m["epoch"],
                [100 * lo for lo, _ in bands],
                [100 * hi for _, hi in bands],
                color=line.get_color(),
                alpha=0.15,
            )
    ax.set_xlabel("epoch")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, out)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="LABEL=METRICS_CSV[:IMAGES]")
    parser.add_argument("--epochs", default="", help="comma-separated epochs for the table")
    parser.add_argument("-o", "--out", type=Path, help="write the plot here (.png)")
    args = parser.parse_args()
    curves = [parse_run(spec) for spec in args.runs]
    try:
        epochs = [int(e) for e in args.epochs.split(",") if e.strip()]
    except ValueError:
        raise SystemExit(
            f"learning_curve: --epochs {args.epochs!r} is not a list of integers"
        ) from None
    if not epochs:
        epochs = sorted(set().union(*(c.metrics["epoch"] for c in curves)))
    print(table(curves, epochs))
    if args.out:
        try:
            plot(curves, args.out)
        except RmpError as exc:  # e.g. a full disk: one line; the previous plot stays
            raise SystemExit(f"learning_curve: {exc}") from None


if __name__ == "__main__":
    main()

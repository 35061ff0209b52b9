"""`rmp compare RUN_A RUN_B`: a paired test between two finished runs on the same test images
(two checkpoints, two threshold methods, two presets), from their predictions.npz."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from rmp_cli.errors import RmpError
from rmp_cli.report.predictions import PREDICTIONS_FILE, Predictions, read_predictions
from rmp_cli.report.stats import CONFIDENCE, check_level, paired


def _load(run: Path) -> Predictions:
    if not run.is_dir():
        raise RmpError(f"run dir not found: {run}")
    if not (run / PREDICTIONS_FILE).is_file():
        raise RmpError(
            f"{run} holds no {PREDICTIONS_FILE} (a run written before rmp kept per-image "
            "predictions, or not a finished convert/sweep); a paired test needs them"
        )
    return read_predictions(run / PREDICTIONS_FILE)


def matching_points(a: Predictions, b: Predictions) -> list[tuple[str, str]]:
    """Grid points present in both runs; two single-point runs (two converts, two presets)
    are paired with each other whatever their settings."""
    common = [(k, k) for k in a.points if k in b.points]
    if common:
        return common
    if len(a.points) == 1 and len(b.points) == 1:
        return [(a.points[0], b.points[0])]
    raise RmpError("the two runs share no grid point; compare runs over the same grid")


def _label(key_a: str, key_b: str) -> str:
    if key_a == key_b:
        return key_a
    parts_a, parts_b = key_a.split(","), key_b.split(",")
    if len(parts_a) != len(parts_b):
        return f"{key_a} vs {key_b}"
    diff = [f"{x} vs {y}" for x, y in zip(parts_a, parts_b, strict=True) if x != y]
    return "; ".join(diff)


def compare_runs(run_a: Path, run_b: Path, confidence: float = CONFIDENCE) -> str:
    """A markdown table per matching grid point and T: both accuracies, A - B with Newcombe's
    paired interval, and the two-sided exact McNemar p."""
    confidence = check_level("--confidence", confidence)
    a, b = _load(run_a), _load(run_b)
    if a.index.shape != b.index.shape or not np.array_equal(a.index, b.index):
        shared = np.intersect1d(a.index, b.index).size
        raise RmpError(
            f"{run_a} and {run_b} were tested on different images ({a.index.size} and "
            f"{b.index.size} test images, {shared} in common); a paired test needs the same ones"
        )
    if not np.array_equal(a.label, b.label):
        raise RmpError(f"{run_a} and {run_b} give the same images different labels")
    steps = [t for t in a.timesteps if t in b.timesteps]
    if not steps:
        raise RmpError("the two runs share no time-step T; nothing to compare")
    pairs = matching_points(a, b)
    level = f"{confidence:.0%}"
    out = io.StringIO()
    out.write(
        f"# {run_a.name} (A) vs {run_b.name} (B): {a.index.size} test images, "
        f"{level} Newcombe intervals, two-sided exact McNemar p\n"
    )
    for key_a, key_b in pairs:
        right_a, right_b = a.right(key_a), b.right(key_b)
        out.write(
            f"\n## {_label(key_a, key_b)}\n\n"
            f"| T | A acc % | B acc % | A - B (pt) | {level} CI (pt) | p |\n|---|---|---|---|---|---|\n"
        )
        for t in steps:
            p = paired(right_a[a.timesteps.index(t)], right_b[b.timesteps.index(t)])
            low, high = p.interval(confidence)
            out.write(
                f"| {t} | {p.accuracy_a * 100:.2f} | {p.accuracy_b * 100:.2f} "
                f"| {p.difference * 100:+.2f} | [{low * 100:+.2f}, {high * 100:+.2f}] "
                f"| {p.p_two_sided():.3g} |\n"
            )
    return out.getvalue()

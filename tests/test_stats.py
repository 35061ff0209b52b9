"""Intervals, paired tests and the headlines they decide, on values worked by hand."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rmp_cli.errors import RmpError
from rmp_cli.report.compare import compare_runs
from rmp_cli.report.predictions import Predictions, write_predictions
from rmp_cli.report.results import (
    COLUMNS,
    headline,
    point_key,
    summarize,
    with_intervals,
    write_summary,
)
from rmp_cli.report.seeds import over_seeds
from rmp_cli.report.stats import (
    Paired,
    ann_columns,
    check_level,
    interval_columns,
    mcnemar,
    paired,
    wilson,
)


# --- Wilson score interval: z = 1.959964, centre (k + z^2/2)/(n + z^2),
# half-width z/(n + z^2) * sqrt(k(n-k)/n + z^2/4) -------------------------------------------
@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [
        (0, 10, 0.0, 0.27753),  # centre 1.92073/13.84146 = 0.13877, half 0.13877
        (1, 10, 0.01788, 0.40415),  # centre 0.21101, half 0.14160 * sqrt(1.86037) = 0.19314
        (5, 10, 0.23659, 0.76341),  # centre 0.5, half 0.14160 * sqrt(3.46037) = 0.26341
        (10, 10, 0.72247, 1.0),
        (1, 1, 0.20654, 1.0),  # centre 2.92073/4.84146 = 0.60327, half 0.40483 * 0.98 = 0.39673
    ],
)
def test_wilson_bounds_against_hand_worked_values(k: int, n: int, low: float, high: float) -> None:
    lo, hi = wilson(k, n)
    assert lo == pytest.approx(low, abs=1e-5) and hi == pytest.approx(high, abs=1e-5)


def test_wilson_level_and_no_images() -> None:
    wide, narrow = wilson(30, 100, 0.99), wilson(30, 100, 0.80)
    assert wide[0] < narrow[0] < 0.3 < narrow[1] < wide[1]
    assert all(math.isnan(v) for v in wilson(0, 0))


# --- exact McNemar: a binomial test on the discordant images ----------------------------------
def test_exact_mcnemar_for_constructed_discordant_counts() -> None:
    assert mcnemar(0, 1) == 1.0  # one discordant image: nothing can be told
    assert mcnemar(0, 0) == 1.0
    # 3 vs 10: P(X <= 3 | 13, 1/2) = (1 + 13 + 78 + 286) / 2^13 = 378/8192, doubled.
    assert mcnemar(3, 10) == pytest.approx(2 * 378 / 8192, rel=1e-12)
    assert mcnemar(10, 3) == pytest.approx(2 * 378 / 8192, rel=1e-12)
    # One-sided (H1: A more accurate): P(X >= 10) = 378/8192; the other way round almost 1.
    assert mcnemar(10, 3, alternative="greater") == pytest.approx(378 / 8192, rel=1e-12)
    assert mcnemar(3, 10, alternative="greater") == pytest.approx(1 - 92 / 8192, rel=1e-12)
    assert mcnemar(1, 0, alternative="greater") == pytest.approx(0.5)


def test_paired_counts_and_newcombe_interval() -> None:
    a = np.array([1, 1, 1, 1, 0, 0, 1, 0], bool)
    b = np.array([1, 0, 0, 1, 0, 1, 1, 0], bool)
    p = paired(a, b)
    assert (p.images, p.correct_a, p.correct_b, p.only_a, p.only_b) == (8, 5, 4, 2, 1)
    assert p.difference == pytest.approx(1 / 8)
    low, high = p.interval()
    assert -1 <= low < p.difference < high <= 1
    # Swapping A and B mirrors the interval; more images narrow it.
    swapped = Paired(8, 4, 5, 1, 2).interval()
    assert swapped == pytest.approx((-high, -low))
    big = Paired(800, 500, 400, 200, 100).interval()
    assert big[1] - big[0] < (high - low) / 5
    assert big[0] > 0  # 200 vs 100 discordant of 800: A is better
    with pytest.raises(RmpError, match="same images"):
        paired(a, b[:3])


def test_result_columns_from_counts_and_predictions() -> None:
    cols = interval_columns(9, 10)
    assert cols["correct"] == 9 and cols["images"] == 10
    assert (cols["ci_low"], cols["ci_high"]) == pytest.approx(wilson(9, 10))
    labels = np.array([0, 1, 2, 3])
    ann = np.array([0, 1, 2, 0])  # 3 of 4 right
    snn = np.array([[0, 1, 2, 0], [1, 1, 2, 3]])
    (same, other) = ann_columns(snn, ann, labels)
    assert same == {"agreement": 1.0, "p_vs_ann": 1.0}
    assert other["agreement"] == 0.5 and other["p_vs_ann"] == 1.0  # 1 vs 1 discordant
    assert all(math.isnan(v) for v in ann_columns(snn, None, labels)[0].values())


@pytest.mark.parametrize("bad", [0, 1, 2, -0.1, True, "x"])
def test_levels_must_lie_strictly_between_0_and_1(bad: object) -> None:
    with pytest.raises(RmpError, match=r"report\.alpha must be a number strictly between 0 and 1"):
        check_level("report.alpha", bad)


# --- headlines on constructed tables -----------------------------------------------------------
TS = [1, 2, 4, 8, 16]
N = 360


def _rows(reset: str, counts: list[int], seed: int = 0) -> list[dict]:
    return [
        {
            "dataset": "d",
            "model": "m",
            "reset": reset,
            "balance": "spike_norm",
            "scale": 1.0,
            "v_init": 0.0,
            "encoding": "direct",
            "activation": "relu",
            "seed": seed,
            "timesteps": t,
            "accuracy": k / N,
            "ann_accuracy": 0.98,
            "spikes_per_image": 1.0,
            "synops_per_image": 1.0,
            "seconds": 1.0,
            "correct": k,
            "images": N,
        }
        for t, k in zip(TS, counts, strict=True)
    ]


def _right(counts: list[int], offset: int = 0) -> np.ndarray:
    """[nT, N]: the first k images right at each T (shifted by `offset`, so sets differ)."""
    out = np.zeros((len(counts), N), bool)
    for i, k in enumerate(counts):
        out[i, np.roll(np.arange(N) < k, offset)] = True
    return out


def constructed(
    curves: dict[str, tuple[list[int], int]], seeds: tuple[int, ...] = (0,), ann_right: int = N
):
    rows = [r for s in seeds for reset, (c, _) in curves.items() for r in _rows(reset, c, s)]
    df = pd.DataFrame(rows, columns=COLUMNS)
    labels = np.zeros(N, np.int16)
    keys, snn = [], []
    for s in seeds:
        for reset, (counts, offset) in curves.items():
            keys.append(point_key(_rows(reset, counts, s)[0]))
            snn.append(np.where(_right(counts, offset), 0, 1))
    preds = Predictions(
        points=keys,
        timesteps=TS,
        index=np.arange(N),
        label=labels,
        snn=np.stack(snn).astype(np.int16),
        ann=np.tile(np.where(np.arange(N) < ann_right, 0, 1), (len(keys), 1)).astype(np.int16),
    )
    return df, preds


def test_one_image_difference_on_360_images_is_indistinguishable() -> None:
    hard = [36, 100, 300, 350, 353]
    soft = [36, 100, 299, 349, 352]  # one image fewer at every T
    df, preds = constructed({"hard": (hard, 0), "soft": (soft, 0)}, ann_right=352)
    (line,) = headline(df, preds)
    assert line.startswith("soft and hard reset are indistinguishable on 360 images")
    # Against the ANN (352 right): 350 at T=8 is 2 vs 0 discordant (p = 0.25), 300 is not.
    s = summarize(df, preds).set_index("reset")
    assert s.loc["hard", "first_t_not_below_ann"] == 8 and s.loc["hard", "first_t_within_1pt"] == 8
    assert "hard reset's best (98.06% at T=16)" in line and "at T=8" in line
    # Without predictions the literal claim is all there is (and it reads as a finding).
    (literal,) = headline(df)
    assert "does not reach hard reset's best" in literal


def test_a_large_difference_gives_the_t_at_which_soft_stops_being_worse() -> None:
    hard = [0, 10, 50, 300, 350]
    soft = [50, 200, 345, 350, 350]  # 345 of hard's 350 at T=4: 5 vs 0 discordant, p=1/32
    df, preds = constructed({"hard": (hard, 0), "soft": (soft, 0)})
    (line,) = headline(df, preds, alpha=0.05)
    assert line.startswith("soft reset is not significantly below hard reset's best")
    assert "from T=8" in line and "hard reset itself from T=16: 2x fewer time-steps" in line
    assert "+0.00 pt" in line and "p=1)" in line  # soft's right images are hard's at T=8
    # A looser alpha is a weaker test: 5 vs 0 (p = 0.031) no longer separates them at 0.01.
    (loose,) = headline(df, preds, alpha=0.01)
    assert "from T=4" in loose and "4x fewer time-steps" in loose
    s = summarize(df, preds).set_index("reset")
    assert s["first_t_not_below_ann"].isna().all()  # 350 vs the ANN's 360: 10 vs 0, p < 0.001


def test_soft_that_stays_worse_is_said_so() -> None:
    df, preds = constructed({"hard": ([0, 10, 50, 300, 350], 0), "soft": ([0, 0, 0, 0, 200], 0)})
    (line,) = headline(df, preds)
    assert line.startswith("soft reset stays significantly below hard reset's best")


def test_headline_holds_only_if_it_holds_across_seeds(tmp_path: Path) -> None:
    curves = {"hard": ([0, 10, 50, 300, 350], 0), "soft": ([50, 200, 345, 350, 350], 0)}
    df, preds = constructed(curves, seeds=(0, 1))
    lines = headline(df, preds)
    assert lines[0].startswith("holds across 2 seeds: soft reset is within noise")
    assert [line[:7] for line in lines[1:]] == ["seed 0:", "seed 1:"]
    # Seed 1 where soft and hard are alike: the claim no longer holds.
    other, other_preds = constructed({"hard": curves["hard"], "soft": curves["hard"]}, seeds=(1,))
    mixed = pd.concat([df[df["seed"] == 0], other], ignore_index=True)
    mixed_preds = Predictions(
        points=[*preds.points[:2], *other_preds.points],
        timesteps=TS,
        index=preds.index,
        label=preds.label,
        snn=np.concatenate([preds.snn[:2], other_preds.snn]),
        ann=np.concatenate([preds.ann[:2], other_preds.ann]),
    )
    assert headline(mixed, mixed_preds)[0].startswith("does not hold across 2 seeds")
    spread = over_seeds(mixed, ["reset", "balance", "scale", "v_init", "encoding", "activation"])
    soft_t4 = spread[(spread["reset"] == "soft") & (spread["timesteps"] == 4)].iloc[0]
    assert soft_t4["mean"] == pytest.approx((345 + 50) / 2 / N)
    assert soft_t4["min"] == pytest.approx(50 / N) and soft_t4["max"] == pytest.approx(345 / N)
    assert soft_t4["std"] == pytest.approx(np.std([345 / N, 50 / N], ddof=1))
    write_summary(tmp_path, mixed, predictions=mixed_preds)
    text = (tmp_path / "summary.md").read_text()
    assert "## Over seeds (0, 1)" in text and "| soft | 4 | 54.86 |" in text


def test_tables_written_before_predictions_still_summarise(tmp_path: Path) -> None:
    df, _ = constructed({"hard": ([0, 10, 50, 300, 350], 0), "soft": ([50, 200, 345, 350, 350], 0)})
    old = df.drop(columns=["seed", "correct", "images", "ci_low", "ci_high"])
    lines = write_summary(tmp_path, old)
    assert "matches hard reset's best" in lines[0]  # the literal claim, as before
    text = (tmp_path / "summary.md").read_text()
    assert text.count("kept no per-image predictions") == 1 and "no paired tests" in text
    # An image count known from elsewhere (the run's dataset.subset) gives the intervals back.
    filled = with_intervals(old, images=N)
    assert filled["ci_low"].notna().all() and with_intervals(old)["ci_low"].isna().all()
    assert filled["ci_low"].iloc[-1] == pytest.approx(wilson(350, N)[0])


# --- rmp compare --------------------------------------------------------------------------------
def _run(tmp_path: Path, name: str, index: np.ndarray, right: np.ndarray) -> Path:
    run = tmp_path / name
    run.mkdir()
    write_predictions(
        run / "predictions.npz",
        Predictions(
            points=["reset=soft,seed=0"],
            timesteps=[4, 8],
            index=index,
            label=np.zeros(index.size, np.int16),
            snn=np.where(right, 0, 3)[None].astype(np.int16),
            ann=np.zeros((1, index.size), np.int16),
        ),
    )
    return run


def test_compare_two_runs_on_the_same_images(tmp_path: Path) -> None:
    index = np.arange(100) * 3
    a = _run(tmp_path, "a", index, np.stack([np.arange(100) < 90, np.arange(100) < 95]))
    b = _run(tmp_path, "b", index, np.stack([np.arange(100) < 77, np.arange(100) < 95]))
    table = compare_runs(a, b)
    assert "| 4 | 90.00 | 77.00 | +13.00 |" in table and table.count("\n| 8 | 95.00 | 95.00 |") == 1
    assert f"| {mcnemar(13, 0):.3g} |" in table


def test_compare_refuses_runs_it_cannot_pair(tmp_path: Path) -> None:
    right = np.ones((2, 10), bool)
    a = _run(tmp_path, "a", np.arange(10), right)
    b = _run(tmp_path, "b", np.arange(10) + 5, right)
    with pytest.raises(RmpError, match=r"tested on different images .* 5 in common"):
        compare_runs(a, b)
    (tmp_path / "old").mkdir()
    with pytest.raises(RmpError, match=r"holds no predictions\.npz"):
        compare_runs(a, tmp_path / "old")
    with pytest.raises(RmpError, match="run dir not found"):
        compare_runs(a, tmp_path / "missing")


def test_old_runs_plot_with_intervals_from_their_recorded_subset(tmp_path: Path) -> None:
    from rmp_cli.report.plot import plot_runs, recorded_images

    df, _ = constructed({"hard": ([0, 10, 50, 300, 350], 0), "soft": ([50, 200, 345, 350, 350], 0)})
    old = df.drop(columns=["seed", "correct", "images", "ci_low", "ci_high", "agreement"])
    run = tmp_path / "old"
    (run / ".hydra").mkdir(parents=True)
    old.drop(columns=["p_vs_ann"]).to_csv(run / "results.csv", index=False)
    assert recorded_images(run, old) is None  # no record of the image count: no bands
    (run / ".hydra" / "config.yaml").write_text("dataset:\n  subset: 360\n")
    assert recorded_images(run, old) == 360
    paths = plot_runs([run, run], tmp_path / "overlay")
    assert [p.name for p in paths] == ["overlay.png", "overlay.pdf"]

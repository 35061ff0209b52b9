from __future__ import annotations

import pandas as pd
import pytest

from rmp_cli.report.results import (
    COLUMNS,
    headline,
    read_results,
    steps_saved,
    summarize,
    summary_markdown,
)


def table(curves: dict[str, list[float]], ts: list[int], ann: float = 0.9) -> pd.DataFrame:
    rows = []
    for reset, accs in curves.items():
        for t, acc in zip(ts, accs, strict=True):
            rows.append(
                {
                    "dataset": "d",
                    "model": "m",
                    "reset": reset,
                    "balance": "spike_norm",
                    "scale": 1.0,
                    "v_init": 0.0,
                    "encoding": "direct",
                    "activation": "relu",
                    "timesteps": t,
                    "accuracy": acc,
                    "top5": None,
                    "ann_accuracy": ann,
                    "spikes_per_image": t * 10.0,
                    "synops_per_image": t * 100.0,
                    "seconds": 1.0,
                }
            )
    return pd.DataFrame(rows, columns=COLUMNS)


TS = [1, 2, 4, 8, 16, 32]


def test_summary_per_point() -> None:
    df = table(
        {"hard": [0.1, 0.2, 0.5, 0.7, 0.8, 0.8], "soft": [0.2, 0.6, 0.8, 0.89, 0.9, 0.9]}, TS
    )
    s = summarize(df).set_index("reset")
    assert s.loc["hard", "best_accuracy"] == 0.8 and s.loc["hard", "first_t_best"] == 16
    assert s.loc["soft", "first_t_best"] == 16
    assert s.loc["soft", "first_t_within_1pt"] == 8  # 0.89 >= 0.9 - 0.01
    assert pd.isna(s.loc["hard", "first_t_within_1pt"])
    assert s.loc["hard", "loss_at_max_t"] == pytest.approx(0.1)


def test_headline_ratio() -> None:
    df = table(
        {"hard": [0.1, 0.2, 0.5, 0.7, 0.8, 0.8], "soft": [0.2, 0.6, 0.8, 0.89, 0.9, 0.9]}, TS
    )
    (line,) = headline(df)
    assert "at T=4" in line and "T=16" in line and "4x fewer time-steps" in line


def test_headline_when_soft_never_reaches() -> None:
    df = table({"hard": [0.1, 0.2, 0.5, 0.7, 0.8, 0.85], "soft": [0.1] * 6}, TS)
    (line,) = headline(df)
    assert "does not reach" in line


def test_headline_paper_pairing() -> None:
    hard = table({"hard": [0.1, 0.2, 0.5, 0.7, 0.8, 0.8]}, TS)
    soft = table({"soft": [0.2, 0.8, 0.8, 0.8, 0.9, 0.9]}, TS)
    soft["balance"], soft["scale"] = "rmp", 0.8
    lines = headline(pd.concat([hard, soft]))
    assert len(lines) == 1  # no like-for-like pair, one paper pairing
    assert "paper pairing" in lines[0] and "at T=2" in lines[0] and "8x fewer" in lines[0]


def test_tables_written_before_the_activation_axis_read_as_relu(tmp_path) -> None:
    old = table({"hard": [0.1] * 6, "soft": [0.2] * 6}, TS).drop(columns="activation")
    old.to_csv(tmp_path / "results.csv", index=False)
    df = read_results(tmp_path / "results.csv")
    assert set(df["activation"]) == {"relu"}
    assert len(summarize(old)) == 2


def test_summary_names_each_activation_and_its_ann() -> None:
    relu = table({"soft": [0.5] * 6}, TS, ann=0.9)
    qcfs = table({"soft": [0.7] * 6}, TS, ann=0.8).assign(activation="qcfs", balance="trained")
    summary = summarize(pd.concat([relu, qcfs]))
    text = summary_markdown(summary, [])
    assert "ANN accuracy: 90.00% (relu), 80.00% (qcfs)" in text
    assert "| qcfs | soft | trained |" in text
    assert list(summary["loss_at_max_t"].round(6)) == [0.4, 0.1]


def test_headline_adds_a_one_point_tolerance() -> None:
    # hard's best (0.80) first at T=32; soft never reaches it exactly (0.795) but is within one
    # point from T=4, where hard first comes within one point at T=16.
    df = table(
        {"hard": [0.1, 0.2, 0.5, 0.7, 0.795, 0.8], "soft": [0.2, 0.6, 0.79, 0.795] + [0.795] * 2},
        TS,
    )
    (line,) = headline(df)
    assert "does not reach hard reset's best (80.00% at T=32)" in line
    assert "within 1 pt of it: hard at T=16, soft at T=4 (4x fewer time-steps)" in line


@pytest.mark.parametrize(
    ("soft", "said", "never"),
    [
        ([0.1, 0.2, 0.5, 0.7, 0.8, 0.8], "at T=16: same T", "fewer"),  # tie
        ([0.1, 0.1, 0.2, 0.5, 0.7, 0.8], "at T=32: 2x more time-steps", "fewer"),  # slower
        ([0.1, 0.8, 0.8, 0.8, 0.8, 0.8], "at T=2: 8x fewer time-steps", "more"),  # faster
    ],
)
def test_headline_says_what_happened(soft: list[float], said: str, never: str) -> None:
    df = table({"hard": [0.1, 0.2, 0.5, 0.7, 0.8, 0.8], "soft": soft}, TS)
    (line,) = headline(df)
    assert said in line and never not in line and "0.5x" not in line


def test_steps_saved_wording() -> None:
    assert steps_saved(64, 64) == "same T"
    assert steps_saved(256, 64) == "4x fewer time-steps"
    assert steps_saved(64, 128) == "2x more time-steps"


def test_older_tables_read_with_empty_energy_columns(tmp_path) -> None:
    old = table({"soft": [0.5] * 6}, TS).drop(columns=["energy_ratio", "ann_macs_per_image"])
    old.to_csv(tmp_path / "results.csv", index=False)
    df = read_results(tmp_path / "results.csv")
    assert df["energy_ratio"].isna().all()
    assert summarize(df)["energy_ratio_within_1pt"].isna().all()


def test_summary_reports_the_energy_ratio_where_within_one_point() -> None:
    df = table({"soft": [0.2, 0.6, 0.8, 0.89, 0.9, 0.9]}, TS)
    df["energy_ratio"] = df["timesteps"] / 100
    summary = summarize(df)
    assert summary.loc[0, "energy_ratio_within_1pt"] == pytest.approx(0.08)  # T=8
    assert "| 8 | 0.08 |" in summary_markdown(summary, [])

"""End-to-end: `rmp sweep` and `rmp convert` write layers.csv / layers.png on the digits data."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from rmp_cli.report.layer_report import COLUMNS
from tests.conftest import assert_clean_error, last_line

pytestmark = pytest.mark.slow

QUICK = ["threads=1", "balance.num_images=64", "balance.timesteps=64", "dataset.subset=120"]
FRACTIONS = [
    "silent_fraction",
    "saturated_fraction",
    "clipped_fraction",
    "uneven_fraction",
    "firing_rate",
]


def test_sweep_writes_layers_csv_plot_and_names_the_bottleneck(
    rmp, tmp_path: Path, ckpt: Path
) -> None:
    timesteps = [1, 4, 16, 64]
    run = tmp_path / last_line(
        rmp(
            "sweep",
            "--timesteps",
            ",".join(map(str, timesteps)),
            f"ckpt={ckpt}",
            "snn.reset=hard,soft",
            "balance=spike_norm",
            "report.layers=true",
            *QUICK,
        )
    )
    layers = pd.read_csv(run / "layers.csv")
    assert list(layers.columns) == list(COLUMNS)
    names = list(layers.loc[layers["reset"] == "soft", "layer"].unique())
    assert len(names) == 3  # digits_cnn: three neuron layers
    assert len(layers) == 2 * len(timesteps) * len(names)
    assert sorted(layers["timesteps"].unique()) == timesteps
    assert layers[FRACTIONS].apply(lambda c: c.between(0, 1)).all().all()
    hard, soft = layers[layers["reset"] == "hard"], layers[layers["reset"] == "soft"]
    assert (soft["discarded_charge"] == 0).all() and (hard["discarded_charge"] >= 0).all()
    assert hard.loc[hard["timesteps"] == 64, "discarded_charge"].gt(0).all()
    # The columns are tied by the charge balance.
    balance = (
        layers["input_current"]
        - (layers["residual_charge"] - layers["v_init"]) / layers["timesteps"]
        - layers["discarded_charge"]
    )
    assert (balance - layers["firing_rate"]).abs().max() < 1e-5
    # The spike totals agree with results.csv's spikes per image.
    results = pd.read_csv(run / "results.csv")
    spikes = (
        layers.assign(s=layers["firing_rate"] * layers["neurons"] * layers["timesteps"])
        .groupby(["reset", "timesteps"])["s"]
        .sum()
    )
    for _, row in results.iterrows():
        expected = row["spikes_per_image"]
        assert spikes[(row["reset"], row["timesteps"])] == pytest.approx(expected, rel=1e-6)
    summary = (run / "summary.md").read_text()
    assert "## Where the information is lost" in summary
    assert "reset=hard" in summary and "reset=soft" in summary
    for name in ("layers.png", "layers.pdf"):
        assert (run / name).stat().st_size > 0
    (run / "layers.png").unlink()
    replot = rmp("plot", str(run))
    assert (run / "layers.png").is_file() and "layers.png" in replot.stdout


def test_convert_writes_layers_csv_and_plot(rmp, tmp_path: Path, ckpt: Path) -> None:
    run = tmp_path / last_line(
        rmp("convert", f"ckpt={ckpt}", "snn.timesteps=32", "report.layers=true", *QUICK)
    )
    layers = pd.read_csv(run / "layers.csv")
    assert list(layers.columns) == list(COLUMNS)
    assert set(layers["timesteps"]) == {32} and list(layers["depth"]) == [1, 2, 3]
    assert layers["rate_error"].notna().all() and (layers["rate_error"] >= 0).all()
    assert (run / "layers.png").stat().st_size > 0


def test_layers_can_be_turned_off_and_bad_values_are_refused(
    rmp, tmp_path: Path, ckpt: Path
) -> None:
    run = tmp_path / last_line(
        rmp("convert", f"ckpt={ckpt}", "snn.timesteps=8", "report.layers=false", *QUICK)
    )
    assert not (run / "layers.csv").exists() and not (run / "layers.png").exists()
    bad = rmp("sweep", f"ckpt={ckpt}", "report.layers=maybe", "run_dir=bad", check=False)
    assert_clean_error(bad, "report.layers")
    assert not (tmp_path / "bad").exists()

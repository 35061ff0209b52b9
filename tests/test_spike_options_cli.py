"""The spike options from the command line: refusals in one line, the study's preset, and an
end-to-end sweep (and torchrun shards) whose tables carry neuron and presteps."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner, Result

from rmp_cli.cli import main
from rmp_cli.commands.grid import config_variants, neuron_label
from rmp_cli.commands.pipeline import validate_snn_config
from rmp_cli.config import compose_config
from rmp_cli.report.predictions import read_predictions
from rmp_cli.report.results import point_key
from tests.conftest import last_line

PRESET = "cifar10_lowlatency_lossless"
QUICK = ["threads=1", "balance.num_images=64", "balance.timesteps=32", "dataset.subset=100"]


def rmp_here(*args: str) -> Result:
    return CliRunner(env={"CI": "true"}).invoke(main, list(args))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (["snn.max_spikes=0"], "snn.max_spikes must be an integer in 1..16, got 0"),
        (["snn.presteps=-1"], "snn.presteps must be a non-negative integer, got -1"),
        (
            ["snn.offset=cos"],
            "snn.offset=cos calibrates on pre-steps; set snn.presteps to 1 or more",
        ),
        (["snn.presteps=4"], "snn.presteps=4 needs snn.offset=cos or snn.offset=srp"),
        (
            ["snn.presteps=4", "snn.offset=bias"],
            "unknown snn.offset 'bias'; choose one of: cos, srp (or null)",
        ),
        (
            ["snn.signed=true", "snn.reset=hard"],
            "snn.signed=true needs snn.reset=soft: a negative spike gives theta back, which a "
            "hard reset (membrane to zero) would not",
        ),
        (["snn.signed=maybe"], "snn.signed must be true or false, got 'maybe'"),
    ],
)
@pytest.mark.parametrize("command", ["convert", "sweep"])
def test_bad_spike_options_are_one_line_before_any_work(
    command: str, override: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = rmp_here(command, "ckpt=missing.pt", *override)
    assert result.exit_code == 2, (result.stderr, result.exception)
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("rmp: error:")]
    assert errors == [f"rmp: error: {message}"], result.stderr
    assert not (tmp_path / "outputs").exists()  # refused before any run dir


def test_the_lowlatency_lossless_preset_composes_with_its_six_variants(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = rmp_here("sweep", f"experiment={PRESET}", "--cfg")
    assert result.exit_code == 0, result.stderr
    assert "activation: qcfs" in result.stdout and "cifar10-lossless" in result.stdout
    cfg = compose_config([f"experiment={PRESET}"])
    assert (cfg.model.name, cfg.model.activation, cfg.model.act_levels) == ("resnet20", "qcfs", 4)
    assert (cfg.dataset.root, cfg.dataset.format, cfg.dataset.subset) == (
        "data/cifar10-lossless",
        "pickle",
        None,
    )
    assert cfg.balance.method == "trained" and cfg.snn.reset == "soft"
    assert list(cfg.sweep.timesteps) == [1, 2, 4, 8, 16, 32, 64]
    labels = []
    for variant in config_variants(cfg.sweep.variants):
        point = compose_config([f"experiment={PRESET}", *variant])
        validate_snn_config(point)
        labels.append((neuron_label(point.snn), int(point.snn.presteps), point.balance.scale))
    assert labels == [
        ("if", 0, 1.0),
        ("signed", 0, 1.0),
        ("burst2", 0, 1.0),
        ("burst2", 0, 0.5),
        ("if+cos", 4, 1.0),
        ("if+srp", 4, 1.0),
    ]


@pytest.mark.slow
def test_a_checkpoint_of_another_activation_than_the_preset_names_its_points_by_its_own(
    rmp, tmp_path: Path, ckpt: Path
) -> None:
    # The preset composes a QCFS net; the ReLU checkpoint decides: rows and predictions agree.
    run = tmp_path / last_line(
        rmp(
            "sweep",
            f"experiment={PRESET}",
            f"ckpt={ckpt}",
            "balance=max_act",
            *QUICK,
            "--timesteps",
            "2,4",
            "sweep.variants=[['snn.max_spikes=1'],['snn.max_spikes=2']]",
        )
    )
    rows = pd.read_csv(run / "results.csv")
    assert set(rows["activation"]) == {"relu"}
    assert read_predictions(run / "predictions.npz").points == list(
        dict.fromkeys(point_key(r) for _, r in rows.iterrows())
    )


# --- end to end on digits ------------------------------------------------------------------------
VARIANTS = (
    "sweep.variants=[['snn.max_spikes=1'],['snn.signed=true'],['snn.max_spikes=2'],"
    "['snn.presteps=2','snn.offset=cos'],['snn.presteps=2','snn.offset=srp']]"
)


@pytest.mark.slow
def test_a_sweep_over_the_options_writes_neuron_and_presteps(
    rmp, tmp_path: Path, ckpt: Path
) -> None:
    run = tmp_path / last_line(
        rmp(
            "sweep",
            f"ckpt={ckpt}",
            *QUICK,
            "--timesteps",
            "1,2,8",
            VARIANTS,
            "sweep.grid=[]",
            "snn.v_init=0.5",
        )
    )
    df = pd.read_csv(run / "results.csv")
    assert sorted(set(zip(df["neuron"], df["presteps"], strict=True))) == [
        ("burst2", 0),
        ("if", 0),
        ("if+cos", 2),
        ("if+srp", 2),
        ("signed", 0),
    ]
    assert len(df) == 15 and df["accuracy"].between(0, 1).all()
    summary = pd.read_csv(run / "summary.csv")
    cos = summary[summary["neuron"] == "if+cos"].iloc[0]
    assert cos["max_timesteps"] == 10  # the latency paid: 2 pre-steps + T = 8
    plain = df[df["neuron"] == "if"].set_index("timesteps")
    srp = df[df["neuron"] == "if+srp"].set_index("timesteps")
    assert (srp["synops_per_image"] > 0).all() and plain.loc[1, "synops_per_image"] >= 0
    assert (run / "accuracy_vs_timesteps.png").is_file()
    report = run / "summary.md"
    assert report.is_file()


@pytest.mark.slow
def test_torchrun_shards_equal_one_process_with_the_options(
    rmp, tmp_path: Path, ckpt: Path
) -> None:
    args = [
        "sweep",
        f"ckpt={ckpt}",
        *QUICK,
        "--timesteps",
        "1,4",
        VARIANTS,
        "sweep.grid=[]",
        "snn.v_init=0.5",
    ]
    single = tmp_path / last_line(rmp(*args, "run_dir=single"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.run(
        [*cmd, "-m", "rmp_cli", *args, "run_dir=sharded"],
        cwd=tmp_path,
        env={**__import__("os").environ, "CI": "true", "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    counted = [
        "neuron",
        "presteps",
        "timesteps",
        "accuracy",
        "spikes_per_image",
        "synops_per_image",
    ]
    a = pd.read_csv(single / "results.csv")[counted]
    b = pd.read_csv(tmp_path / "sharded" / "results.csv")[counted]
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    convert = ["convert", f"ckpt={ckpt}", *QUICK, "snn.timesteps=4", "snn.presteps=2"]
    one = tmp_path / last_line(rmp(*convert, "snn.offset=cos", "run_dir=c1"))
    report = json.loads((one / "convert.json").read_text())
    assert (report["neuron"], report["presteps"]) == ("if+cos", 2)

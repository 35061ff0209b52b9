"""Bad files given to real commands (in process, through the click entry point): the issue's
two cases (a CSV given as ckpt= or weights=, a sweep resumed over a damaged results.csv) and the
worst case each reader's fuzzing found. Each: one `rmp: error:` line, exit 2, no traceback,
nothing written; a results.csv cut by a crash is repaired by the resume, every row kept."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner, Result

from rmp_cli.cli import main
from tests.test_data import CIFAR10_CLASSES, write_fake_cifar, write_fake_idx, write_jpeg_folders

pytestmark = pytest.mark.slow

QUICK = ["threads=1", "balance.num_images=32", "balance.timesteps=16", "dataset.subset=60"]


def rmp(*args: str) -> Result:
    return CliRunner(env={"CI": "true"}).invoke(main, list(args))


def assert_one_line(result: Result, *fragments: str) -> str:
    """Exit 2, exactly one `rmp: error:` line holding every fragment, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.stderr[-2000:], result.exception)
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.startswith("rmp: error:")]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no cache outside the test
    return tmp_path


@pytest.mark.parametrize("key", ["ckpt", "weights"])
def test_a_runs_metrics_csv_given_as_the_network(ckpt: Path, cwd: Path, key: str) -> None:
    """The slip of the tab key: RUN/metrics.csv for RUN/model.pt."""
    metrics = ckpt.parent / "metrics.csv"
    result = rmp("convert", f"{key}={metrics}", *QUICK)
    what = "checkpoint" if key == "ckpt" else "weights file"
    assert_one_line(result, f"{what} {metrics} is corrupt or not a torch file")
    assert not (cwd / "outputs").exists()


@pytest.fixture(scope="module")
def finished_sweep(ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("sweep") / "run"
    result = rmp(*_sweep(ckpt, run))
    assert result.exit_code == 0, result.stderr[-2000:]
    return run


def _sweep(ckpt: Path, run: Path) -> list[str]:
    grid = ["-t", "1,4,16", "snn.reset=hard,soft", "balance=spike_norm"]
    return ["sweep", *grid, f"ckpt={ckpt}", f"run_dir={run}", *QUICK]


def _copy(run: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(run, to)
    return to


def _shift_a_row(text: str) -> str:
    """The issue's damage: a row lost two fields, so 'direct' sits under scale."""
    lines = text.splitlines(keepends=True)
    lines[3] = lines[3].replace("spike_norm,1,0,", "spike_norm,")
    return "".join(lines)


@pytest.mark.parametrize(
    ("name", "damage", "fragments"),
    [
        ("results.csv", _shift_a_row, ["line 4: scale is 'direct', not a number", "move it away"]),
        ("sweep.json", lambda t: t[: len(t) // 2], ["sweep.json is not valid JSON", "restore it"]),
        ("ann.json", lambda t: t.replace("0.", "O."), ["ann.json is not valid JSON"]),
    ],
)
def test_a_sweep_resumed_over_a_damaged_file_changes_nothing(
    finished_sweep: Path, ckpt: Path, cwd: Path, name: str, damage, fragments: list[str]
) -> None:
    run = _copy(finished_sweep, cwd / "run")
    (run / name).write_text(damage((run / name).read_text()))
    before = snapshot(run)
    line = assert_one_line(rmp(*_sweep(ckpt, run)), str(run / name), *fragments)
    assert f"nothing in {run} was changed" in line
    assert snapshot(run) == before


def test_a_results_csv_cut_by_a_crash_is_repaired_keeping_every_row(
    finished_sweep: Path, ckpt: Path, cwd: Path
) -> None:
    run = _copy(finished_sweep, cwd / "run")
    whole = (run / "results.csv").read_bytes()
    (run / "results.csv").write_bytes(whole[:-25])  # the last row (soft, T=16) half written
    result = rmp(*_sweep(ckpt, run))
    assert result.exit_code == 0, result.stderr[-2000:]
    assert "kept all 5 complete rows; computing the missing T of reset=soft" in result.stderr
    keys = ["reset", "balance", "timesteps", "accuracy", "spikes_per_image"]
    now = pd.read_csv(run / "results.csv")[keys]
    pd.testing.assert_frame_equal(now, pd.read_csv(io.BytesIO(whole))[keys])


# --- the worst case of each reader's fuzzing, at the command line -----------------------------
def test_a_checkpoint_whose_class_count_was_damaged(ckpt: Path, cwd: Path) -> None:
    """Fuzzing found: num_classes=2**40 built a classifier of 2**40 outputs, eating memory."""
    data = torch.load(ckpt, weights_only=True)
    torch.save({**data, "num_classes": 2**40}, cwd / "model.pt")
    result = rmp("convert", f"ckpt={cwd / 'model.pt'}", *QUICK)
    assert_one_line(result, "is a damaged rmp checkpoint: no weight has a dimension of")
    assert not (cwd / "outputs").exists()


def test_a_last_pt_whose_optimizer_state_does_not_fit(ckpt: Path, cwd: Path) -> None:
    """Fuzzing found: a momentum buffer of another shape loads, then fails the first step."""
    state = torch.load(ckpt.parent / "last.pt", weights_only=True)
    state["optimizer"]["state"][0]["momentum_buffer"] = torch.zeros(3)
    (cwd / "run").mkdir()
    torch.save(state, cwd / "run" / "last.pt")
    result = rmp("train", f"resume={cwd / 'run' / 'last.pt'}", "threads=1")
    assert_one_line(result, "is a damaged last.pt: its optimizer state does not fit the model")


def test_a_config_file_that_lost_a_group(cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fuzzing found: a config.yaml whose defaults list lost `model` composes, then fails."""
    import shutil

    from rmp_cli.config import config_dir

    conf = shutil.copytree(config_dir(), cwd / "conf")
    text = (conf / "config.yaml").read_text()
    lines = text.splitlines(keepends=True)
    (conf / "config.yaml").write_text("".join(x for x in lines if "- model:" not in x))
    monkeypatch.setenv("RMP_CONFIG_DIR", str(conf))
    assert_one_line(rmp("train", "threads=1"), "has no model group")
    (conf / "config.yaml").write_text(text.replace("seed: 0", "seed: [0"))
    assert_one_line(rmp("train", "threads=1"), f"config file {conf / 'config.yaml'} is not valid")


def _archive(split: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:xz") as tar:
        info = tarfile.TarInfo(f"{split}/cat/0.txt")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"1234"))
    return buffer.getvalue()


def test_a_damaged_archive_whose_checksum_matches(cwd: Path) -> None:
    """Damaged before SHA256SUMS was made: it passes the check and must fail while unpacking."""
    archives = cwd / "archives"
    archives.mkdir()
    train = _archive("train")
    damaged = {"train": train[: len(train) // 2], "test": _archive("test")}
    for split, raw in damaged.items():
        (archives / f"{split}.tar.xz").write_bytes(raw)
    (archives / "SHA256SUMS").write_text(
        "".join(f"{hashlib.sha256(r).hexdigest()}  {s}.tar.xz\n" for s, r in damaged.items())
    )
    result = rmp("unpack-cifar10", str(archives), str(cwd / "dest"))
    assert_one_line(result, f"cannot unpack {archives / 'train.tar.xz'}")
    assert not (cwd / "dest" / "train").exists() and not (cwd / "dest" / "test").exists()


def test_damaged_dataset_files(cwd: Path) -> None:
    """idx (a flipped byte in a gzip stream: zlib.error, which the old list of OSError and
    EOFError missed), a CIFAR batch cut short, and an image folder holding a damaged image."""
    write_fake_idx(cwd / "mnist")
    labels = cwd / "mnist" / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(labels.read_bytes())
    raw[10] ^= 0xFF  # the first byte of the deflate stream, after gzip's 10-byte header
    labels.write_bytes(bytes(raw))
    result = rmp("train", "dataset=mnist", f"dataset.root={cwd / 'mnist'}", "threads=1")
    assert_one_line(result, f"{labels} is not an intact idx file (gzip)")

    write_fake_cifar(cwd / "cifar")
    batch = cwd / "cifar" / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(batch.read_bytes()[:-40])
    result = rmp("train", "dataset=cifar10", f"dataset.root={cwd / 'cifar'}", "threads=1")
    assert_one_line(result, f"cannot read CIFAR batch {batch}")

    write_jpeg_folders(cwd / "jpg", CIFAR10_CLASSES, per_class=1)
    image = cwd / "jpg" / "test" / "airplane" / "0000.jpg"
    image.write_bytes(image.read_bytes()[:40])
    args = ["dataset=cifar10", f"dataset.root={cwd / 'jpg'}", "dataset.format=folder"]
    result = rmp("train", *args, f"dataset.cache_dir={cwd / 'cache'}", "threads=1")
    assert_one_line(result, f"cannot decode {image}")


def test_a_convert_record_that_cannot_be_read(ckpt: Path, cwd: Path) -> None:
    run = cwd / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("snn: {reset: [hard\n")
    before = snapshot(run)
    result = rmp("convert", f"ckpt={ckpt}", f"run_dir={run}", *QUICK)
    line = assert_one_line(result, f"{run / '.hydra' / 'config.yaml'} is not the record of a run")
    assert f"nothing in {run} was changed" in line and snapshot(run) == before


def test_plot_of_a_cut_results_csv(finished_sweep: Path, cwd: Path) -> None:
    run = _copy(finished_sweep, cwd / "run")
    (run / "results.csv").write_bytes((run / "results.csv").read_bytes()[:-7])
    assert_one_line(rmp("plot", str(run)), "ends in a cut line", "resume its sweep")

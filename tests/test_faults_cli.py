"""OS faults met by real commands (in process, through the click entry point): a full disk, no
permission, a read-only filesystem or an I/O error while writing results.csv, the summary, the
plot, a checkpoint or the dataset cache. Each: one `rmp: error:` line, exit 2, no traceback, the
previous complete files byte-identical, no temporary file left, and the printed resume command
finishes the run once the fault is gone."""

from __future__ import annotations

import errno
import os
import shlex
import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner, Result
from matplotlib.figure import Figure

from rmp_cli.cli import main
from rmp_cli.runs import atomic, rundir
from tests.test_data import CIFAR10_CLASSES, write_jpeg_folders

pytestmark = pytest.mark.slow

QUICK = ["threads=1", "balance.num_images=32", "balance.timesteps=16", "dataset.subset=60"]
SWEEP = ["sweep", "--timesteps", "1,4,16", "snn.reset=hard,soft", "balance=spike_norm", *QUICK]


def rmp(*args: str) -> Result:
    """`rmp ARGS` in this process (CI=true: no progress bars)."""
    return CliRunner(env={"CI": "true"}).invoke(main, list(args))


def error_lines(result: Result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("rmp: error:")]


def assert_fault(result: Result, message: str) -> str | None:
    """Exit 2, exactly one error line equal to `message`, no traceback; returns the resume
    command of the 'complete in' line, if there is one."""
    assert result.exit_code == 2, (result.exit_code, result.stderr[-2000:], result.exception)
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    assert error_lines(result) == [f"rmp: error: {message}"], result.stderr
    complete = [line for line in result.stderr.splitlines() if line.startswith("rmp: complete")]
    assert len(complete) <= 1
    return complete[0].split("; resume with: ", 1)[1] if complete else None


def run_printed(command: str) -> Result:
    args = shlex.split(command)
    assert args[0] == "rmp"
    return rmp(*args[1:])


def temp_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.tmp"))


def _paths(args: tuple[object, ...]) -> list[Path]:
    """The file paths among a writer's arguments (a path, or an open file's name)."""
    names = [a if isinstance(a, (str, Path)) else getattr(a, "name", None) for a in args]
    return [Path(n) for n in names if isinstance(n, (str, Path))]


def fail_nth(
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    n: int,
    code: int,
    snapshot: dict[str, bytes],
    target: tuple[object, str] = (atomic.os, "replace"),
) -> None:
    """Make the n-th write of the file called `name` fail with errno `code` in the writer
    `target` (os.replace, torch.save, Figure.savefig, ...), which gets the file's path or its
    temporary path; the bytes of the complete file at that moment go into `snapshot`."""
    owner, attr = target
    real: Callable[..., object] = getattr(owner, attr)
    calls = {"n": 0}

    def writer(*args: object, **kw: object) -> object:
        for path in _paths(args):
            if path.name == name or path.name.startswith(f".{name}."):
                calls["n"] += 1
                if calls["n"] == n:
                    if (path.parent / name).exists():
                        snapshot[name] = (path.parent / name).read_bytes()
                    raise OSError(code, os.strerror(code))
                break
        return real(*args, **kw)

    monkeypatch.setattr(owner, attr, writer)


# --- rmp train: checkpoints -------------------------------------------------------------------


def test_checkpoint_save_fault_keeps_the_last_epoch_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    saved: dict[str, bytes] = {}
    fail_nth(monkeypatch, "last.pt", 2, errno.EROFS, saved, target=(atomic.torch, "save"))
    result = rmp("train", "train.epochs=3", "threads=1", f"run_dir={run}")
    resume = assert_fault(result, f"cannot write {run}/last.pt: Read-only file system")
    assert (run / "last.pt").read_bytes() == saved["last.pt"]  # epoch 1's, untouched
    assert len(pd.read_csv(run / "metrics.csv")) == 1
    assert temp_files(run) == [] and not (run / "model.pt").exists()
    assert resume == f"rmp train resume={run}/last.pt threads=1"
    assert f"complete in {run}: last.pt, metrics.csv;" in result.stderr

    monkeypatch.undo()
    assert run_printed(resume).exit_code == 0
    assert list(pd.read_csv(run / "metrics.csv")["epoch"]) == [1, 2, 3]
    assert (run / "model.pt").is_file()


def test_model_pt_fault_at_the_end_is_finished_by_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped between the last epoch's last.pt and model.pt: resume writes model.pt only."""
    run = tmp_path / "run"
    fail_nth(monkeypatch, "model.pt", 1, errno.ENOSPC, {}, target=(atomic.torch, "save"))
    result = rmp("train", "train.epochs=2", "threads=1", f"run_dir={run}")
    resume = assert_fault(result, f"cannot write {run}/model.pt: No space left on device")
    assert resume is not None and not (run / "model.pt").exists() and temp_files(run) == []
    monkeypatch.undo()
    metrics = (run / "metrics.csv").read_bytes()
    assert run_printed(resume).exit_code == 0
    model = torch.load(run / "model.pt", weights_only=True)
    last = torch.load(run / "last.pt", weights_only=True)
    assert model["kind"] == "model" and model["epoch"] == 2 and "optimizer" not in model
    assert all(torch.equal(model["state_dict"][k], v) for k, v in last["state_dict"].items())
    assert (run / "metrics.csv").read_bytes() == metrics  # no epoch was trained again
    again = run_printed(resume)
    assert again.exit_code == 2 and "nothing to resume" in again.stderr


def test_a_run_dir_that_cannot_be_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = Path.mkdir

    def mkdir(self: Path, *args: object, **kw: object) -> None:
        if self.name == "denied":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        real(self, *args, **kw)

    monkeypatch.setattr(rundir.Path, "mkdir", mkdir)
    result = rmp("train", "train.epochs=1", f"run_dir={tmp_path / 'denied'}")
    assert assert_fault(result, f"cannot create {tmp_path}/denied: Permission denied") is None


# --- rmp sweep: results, summary, plot ----------------------------------------------------------


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("ann") / "train"
    result = rmp("train", "train.epochs=3", "threads=1", f"run_dir={run}")
    assert result.exit_code == 0, result.stderr
    return run / "model.pt"


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory: pytest.TempPathFactory, ckpt: Path) -> Path:
    run = tmp_path_factory.mktemp("sweep") / "done"
    result = rmp(*SWEEP, f"ckpt={ckpt}", f"run_dir={run}")
    assert result.exit_code == 0, result.stderr
    return run


def test_results_csv_append_fault_keeps_the_finished_points(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ckpt: Path, finished_sweep: Path
) -> None:
    run = tmp_path / "cut"
    saved: dict[str, bytes] = {}
    fail_nth(monkeypatch, "results.csv", 2, errno.ENOSPC, saved)
    result = rmp(*SWEEP, f"ckpt={ckpt}", f"run_dir={run}")
    resume = assert_fault(result, f"cannot write {run}/results.csv: No space left on device")
    assert (run / "results.csv").read_bytes() == saved["results.csv"]
    assert pd.read_csv(run / "results.csv")["reset"].tolist() == ["hard"] * 3
    assert not (run / "summary.csv").exists() and temp_files(run) == []
    assert f"complete in {run}: ann.json, predictions.npz, results.csv;" in result.stderr
    assert resume is not None and resume.endswith(f"run_dir={run}")

    monkeypatch.undo()
    assert run_printed(resume).exit_code == 0
    a = pd.read_csv(finished_sweep / "results.csv").drop(columns="seconds")
    b = pd.read_csv(run / "results.csv").drop(columns="seconds")
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.parametrize(
    ("name", "code", "inject"),
    [
        ("summary.csv", errno.EIO, "fsync"),
        ("summary.md", errno.EACCES, "replace"),
        ("accuracy_vs_timesteps.png", errno.ENOSPC, "savefig"),
        ("accuracy_vs_timesteps.pdf", errno.EROFS, "savefig"),
    ],
)
def test_summary_and_plot_faults_keep_the_previous_files(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    ckpt: Path,
    finished_sweep: Path,
    name: str,
    code: int,
    inject: str,
) -> None:
    """Rerunning a finished sweep rewrites its summary and plot: a fault leaves the old ones."""
    run = tmp_path / "again"
    shutil.copytree(finished_sweep, run)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    if inject == "savefig":
        fail_nth(monkeypatch, name, 1, code, {}, target=(Figure, "savefig"))
    elif inject == "fsync":
        fail_nth(monkeypatch, name, 1, code, {}, target=(atomic, "_sync"))
    else:
        fail_nth(monkeypatch, name, 1, code, {})
    result = rmp(*SWEEP, f"ckpt={ckpt}", f"run_dir={run}")
    resume = assert_fault(result, f"cannot write {run}/{name}: {os.strerror(code)}")
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert after[name] == before[name]  # the previous complete file, not half a new one
    assert after["results.csv"] == before["results.csv"]
    assert temp_files(run) == [] and resume is not None
    monkeypatch.undo()
    assert run_printed(resume).exit_code == 0


def test_the_issue_case_a_full_disk_at_the_plot_of_a_new_sweep(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ckpt: Path
) -> None:
    run = tmp_path / "small-disk"
    fail_nth(monkeypatch, "accuracy_vs_timesteps.png", 1, errno.ENOSPC, {}, (Figure, "savefig"))
    result = rmp(*SWEEP, f"ckpt={ckpt}", f"run_dir={run}")
    assert_fault(result, f"cannot write {run}/accuracy_vs_timesteps.png: No space left on device")
    complete = (
        f"complete in {run}: ann.json, predictions.npz, results.csv, summary.csv, summary.md;"
    )
    assert complete in result.stderr
    assert temp_files(run) == [] and not list(run.glob("accuracy_vs_timesteps.*"))


# --- the dataset cache ------------------------------------------------------------------------


def test_dataset_cache_fault_keeps_the_old_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, cache = tmp_path / "cifar", tmp_path / "cache"
    write_jpeg_folders(root, CIFAR10_CLASSES, per_class=1)
    data = [
        "dataset=cifar10",
        "dataset.format=folder",
        f"dataset.root={root}",
        f"dataset.cache_dir={cache}",
        "dataset.calib_size=4",
    ]
    first = rmp(
        "train",
        *data,
        "train.epochs=1",
        "model=vgg11",
        "model.width=0.125",
        f"run_dir={tmp_path / 'first'}",
    )
    assert first.exit_code == 0, first.stderr
    old = {p: p.read_bytes() for p in cache.iterdir()}
    assert len(old) == 2
    write_jpeg_folders(root, CIFAR10_CLASSES, per_class=2)  # new images: a new cache is due

    monkeypatch.setattr(atomic.torch, "save", _refuse_cache_writes(atomic.torch.save))
    result = rmp("train", *data, "train.epochs=1", f"run_dir={tmp_path / 'run'}")
    assert result.exit_code == 2 and len(error_lines(result)) == 1, result.stderr
    line = error_lines(result)[0]
    assert line.startswith(f"rmp: error: cannot write the image cache {cache}/cifar10-train-")
    assert line.endswith(
        ": Permission denied; set dataset.cache_dir to a writable folder with room"
    )
    assert {p: p.read_bytes() for p in cache.iterdir()} == old
    assert not (tmp_path / "run").exists()  # nothing was produced: no empty run dir is left


def _refuse_cache_writes(real: Callable[..., object]) -> Callable[..., object]:
    def save(obj: object, f: object, *args: object, **kw: object) -> object:
        if "cifar10-" in Path(str(getattr(f, "name", f))).name:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        return real(obj, f, *args, **kw)

    return save


# --- permissions ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mask", [0o027, 0o002])
def test_every_file_of_a_sweep_has_the_umasks_mode(tmp_path: Path, mask: int) -> None:
    """What colleagues on a shared server can read: the umask decides, as for `open(..., "w")`.
    The sweep trains its ANN, so checkpoints, metrics, results, summary and plots are all here."""
    run = tmp_path / "run"
    old = os.umask(mask)
    try:
        result = rmp("sweep", "--timesteps", "1,4", "train.epochs=1", *QUICK, f"run_dir={run}")
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.stderr
    files = [p for p in run.rglob("*") if p.is_file()]
    folders = [run, *(p for p in run.rglob("*") if p.is_dir())]
    names = {p.relative_to(run).as_posix() for p in files}
    assert {"ann/last.pt", "ann/model.pt", "results.csv", "accuracy_vs_timesteps.png"} <= names
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {oct(0o666 & ~mask)}, names
    assert {oct(p.stat().st_mode & 0o777) for p in folders} == {oct(0o777 & ~mask)}

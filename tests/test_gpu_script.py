"""scripts/gpu_reproduce_cifar10.sh at toy size on CPU: one call, a resumed call, a call cut short.

The archives are a tiny CIFAR-10-shaped JPEG copy made here (10 classes, 12 + 4 images each), so
the test needs no data and checks what the GPU call depends on: unpacking and verifying, training,
the float16 checkpoint sent back in parts, what $OUT holds (at most 8 files, 2 folder levels,
plain names), resuming from those files alone, and stopping in time when the budget runs out.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from rmp_cli.training.checkpoint import load_checkpoint, load_model

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_reproduce_cifar10.sh"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TOY = [
    "model.width=0.0625",
    "train.warmup_epochs=0.2",
    "dataset.calib_size=64",
    "balance.num_images=32",
    "device=cpu",
    "threads=1",
]
NAME = re.compile(r"^[A-Za-z0-9._-]+$")
POINT = ["reset", "balance", "scale", "v_init", "encoding", "activation"]


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("archives")
    rng = np.random.default_rng(0)
    sums = []
    for split, per_class in (("train", 12), ("test", 4)):
        with tarfile.open(folder / f"{split}.tar.xz", "w:xz") as tar:
            for label, name in enumerate(CLASSES):
                for i in range(per_class):
                    pixels = (rng.random((32, 32, 3)) * 60 + 19 * label).astype(np.uint8)
                    buf = io.BytesIO()
                    Image.fromarray(pixels).save(buf, format="JPEG")
                    info = tarfile.TarInfo(f"{split}/{name}/{i:04d}.jpg")
                    info.size = buf.tell()
                    buf.seek(0)
                    tar.addfile(info, buf)
        digest = hashlib.sha256((folder / f"{split}.tar.xz").read_bytes()).hexdigest()
        sums.append(f"{digest}  {split}.tar.xz")
    (folder / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    return folder


def call(
    tmp: Path, archives: Path, out: str, *, resume: Path | None = None, **env: str
) -> subprocess.CompletedProcess:
    settings = {
        "PYTHON": sys.executable,
        "CIFAR10_ARCHIVES": str(archives),
        "CIFAR10_DIR": str(tmp / "data"),
        "RUN_DIR": str(tmp / "run"),
        "OUT": str(tmp / out),
        "EPOCHS": "1",
        "PRECISION": "fp32",
        "TIMESTEPS": "32,64",
        "CALIB_STEPS": "16",
        "COMMIT": "test",
        "BUDGET_S": "7200",  # a toy run has all the time it needs, however busy the machine
        "CI": "true",
        **({"RESUME": str(resume)} if resume else {}),
        **env,
    }
    return subprocess.run(
        ["bash", str(SCRIPT), *TOY],
        env={**os.environ, **settings},
        capture_output=True,
        text=True,
        timeout=1200,
    )


def returned_files(out: Path) -> list[Path]:
    files = [p for p in out.rglob("*") if p.is_file()]
    assert 0 < len(files) <= 8, files
    for path in files:
        relative = path.relative_to(out)
        assert len(relative.parts) <= 3, relative  # $OUT/a/b/file at the deepest
        assert all(NAME.match(part) for part in relative.parts), relative
        assert path.stat().st_size <= 16 * 2**20
    return files


def unpack(out: Path, into: Path) -> Path:
    into.mkdir()
    with tarfile.open(out / "run.tar.gz") as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(into, filter="data")
        else:  # pragma: no cover - Python before 3.10.12 / 3.11.4
            tar.extractall(into)
    return into


def points(results: Path) -> set[tuple]:
    df = pd.read_csv(results)
    return set(df[POINT].itertuples(index=False, name=None))


def test_one_call_then_resumed_calls(archives: Path, tmp_path: Path) -> None:
    first = call(tmp_path, archives, "out1")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    out1 = tmp_path / "out1"
    names = {p.name for p in returned_files(out1)}
    assert names == {"log.txt", "run.tar.gz", "ann16.pt.00"}
    log = (out1 / "log.txt").read_text()
    for stage in ("unpacked and verified", "trained:", "float16 ANN saved", "done: 2 grid points"):
        assert stage in log, log

    # The returned files alone hold the run: the tarball (no checkpoints) and the float16 ANN.
    run = unpack(out1, tmp_path / "returned")
    assert not list(run.rglob("*.pt"))
    for name in ("train/metrics.csv", "sweep/results.csv", "sweep/ann.json", "sweep/summary.md"):
        assert (run / name).is_file(), name
    results = pd.read_csv(run / "sweep" / "results.csv")
    assert sorted(results["timesteps"].unique()) == [32, 64] and len(results) == 4
    assert points(run / "sweep" / "results.csv") == {
        ("soft", "rmp", 0.8, 0.0, "direct", "relu"),
        ("hard", "spike_norm", 1.0, 0.0, "direct", "relu"),
    }
    ann16 = tmp_path / "ann16.pt"
    ann16.write_bytes(b"".join(p.read_bytes() for p in sorted(out1.glob("ann16.pt.*"))))
    digest = hashlib.sha256(ann16.read_bytes()).hexdigest()
    assert (run / "ann16.pt.sha256").read_text().split()[0] == digest
    ckpt = load_checkpoint(ann16)
    assert ckpt["weights_dtype"] == "float16" and ckpt["config"].model.batch_norm is True
    load_model(ckpt)

    # A second call from the returned files, with one grid point missing, computes just that
    # point, and gets what the first call got (fp32 on CPU: exactly).
    resume = tmp_path / "resume"
    resume.mkdir()
    for part in out1.glob("ann16.pt.*"):
        shutil.copy(part, resume)
    cut = pd.read_csv(run / "sweep" / "results.csv")
    cut[cut["reset"] == "soft"].to_csv(run / "sweep" / "results.csv", index=False)
    with tarfile.open(resume / "run.tar.gz", "w:gz") as tar:
        tar.add(run, arcname=".")
    shutil.move(tmp_path / "run", tmp_path / "run_first")  # a fresh machine has no run
    second = call(tmp_path, archives, "out2", resume=resume)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    log2 = (tmp_path / "out2" / "log.txt").read_text()
    assert "resumed from" in log2 and "trained:" not in log2 and "already done" in log2
    a = pd.read_csv(tmp_path / "run_first" / "sweep" / "results.csv").drop(columns="seconds")
    b = pd.read_csv(tmp_path / "run" / "sweep" / "results.csv").drop(columns="seconds")
    pd.testing.assert_frame_equal(a, b)
    returned_files(tmp_path / "out2")

    # A call whose budget ends mid-sweep stops the sweep itself, returns the checkpoint and
    # the run so far, and says how to continue (exit 3).
    shutil.rmtree(tmp_path / "run")
    (resume / "run.tar.gz").unlink()
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "ann16.pt.sha256").write_text((run / "ann16.pt.sha256").read_text())
    shutil.copytree(run / "train", bare / "train")
    with tarfile.open(resume / "run.tar.gz", "w:gz") as tar:
        tar.add(bare, arcname=".")
    third = call(tmp_path, archives, "out3", resume=resume, TIMESTEPS="32,131072", BUDGET_S="120")
    assert third.returncode == 3, third.stdout[-3000:] + third.stderr[-3000:]
    out3 = tmp_path / "out3"
    log3 = (out3 / "log.txt").read_text()
    assert "time budget reached" in log3 and "RESUME=" in log3
    assert {p.name for p in returned_files(out3)} == {"log.txt", "run.tar.gz", "ann16.pt.00"}
    assert (out3 / "ann16.pt.00").read_bytes() == (out1 / "ann16.pt.00").read_bytes()


def test_bad_resume_folder_is_one_line(archives: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = call(tmp_path, archives, "out", resume=empty)
    assert proc.returncode == 2
    assert "holds no run.tar.gz" in (tmp_path / "out" / "log.txt").read_text()

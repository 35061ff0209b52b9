"""Lossless CIFAR-10 in the official pickle layout as it ships offline: string keys, pickle
protocol 4, no `filenames`, a test split shorter than the official 10,000 (said by every run),
and `make cifar10-lossless-data`, which checks the archive's SHA256SUMS before unpacking."""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from rmp_cli.data import build_data
from rmp_cli.data.bundle import short_test_note
from rmp_cli.errors import RmpError
from tests.conftest import FAST_TRAIN, last_line

REPO = Path(__file__).resolve().parents[1]


def write_lossless_batches(folder: Path, per_batch: int = 4, n_test: int = 6) -> None:
    """data_batch_1..5, test_batch and batches.meta as the lossless copy holds them."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for name, n in [*((f"data_batch_{i}", per_batch) for i in range(1, 6)), ("test_batch", n_test)]:
        batch = {
            "batch_label": name,
            "labels": [int(v) for v in rng.integers(0, 10, n)],
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=4))
    meta = {"label_names": [f"class{i}" for i in range(10)], "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=4))


def dataset_cfg(root: Path, **extra: object):
    return OmegaConf.create(
        {
            "name": "cifar10",
            "root": str(root),
            "format": "pickle",
            "download": False,
            "augment": False,
            "calib_size": 4,
            "subset": None,
            **extra,
        }
    )


def test_short_test_split_is_accepted_and_said(tmp_path: Path) -> None:
    write_lossless_batches(tmp_path / "cifar-10-batches-py")
    bundle = build_data(dataset_cfg(tmp_path), seed=0)
    assert (len(bundle.train), len(bundle.test)) == (20, 6)
    assert bundle.test_note == "test set: 6 of 10,000 official images"
    subset = build_data(dataset_cfg(tmp_path, subset=3), seed=0)
    assert subset.test_note == "test set: 6 of 10,000 official images (dataset.subset=3 of them)"


def test_full_or_unofficial_splits_say_nothing() -> None:
    assert short_test_note("cifar10", 10_000, None) is None
    assert short_test_note("cifar10", 10_000, 1_000) is None  # a subset of the whole set
    assert short_test_note("digits", 360, None) is None  # digits has no official split
    assert short_test_note("cifar10", 1_000, None) == "test set: 1,000 of 10,000 official images"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"data": np.zeros((6, 3000), np.uint8)}, r"expected uint8 \(N, 3072\)"),
        ({"data": np.zeros((6, 3072), np.float32)}, r"expected uint8 \(N, 3072\)"),
        ({"labels": [0, 1]}, r"expected uint8 \(N, 3072\) and N integer labels"),
        ({"labels": [0, 1, 2, 3, 4, 10]}, r"labels outside 0..9"),
    ],
)
def test_wrong_shaped_batch_is_one_line(tmp_path: Path, change: dict, expected: str) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_lossless_batches(folder)
    batch = pickle.loads((folder / "test_batch").read_bytes())
    (folder / "test_batch").write_bytes(pickle.dumps({**batch, **change}, protocol=4))
    with pytest.raises(RmpError, match=expected) as info:
        build_data(dataset_cfg(tmp_path), seed=0)
    assert "test_batch" in str(info.value) and "\n" not in str(info.value)


# --- make cifar10-lossless-data --------------------------------------------------------------
def make_archive(folder: Path, tmp_path: Path) -> Path:
    """A cifar-10-python.tar.xz of `folder` and its SHA256SUMS, as the offline copy ships."""
    archive_dir = tmp_path / "archive"
    archive_dir.mkdir()
    archive = archive_dir / "cifar-10-python.tar.xz"
    with tarfile.open(archive, "w:xz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    (archive_dir / "SHA256SUMS").write_text(f"{digest}  cifar-10-python.tar.xz\n")
    return archive_dir


def make_data(archive_dir: Path, dest: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            "make",
            "-s",
            "-C",
            str(REPO),
            "cifar10-lossless-data",
            f"CIFAR10_LOSSLESS_ARCHIVE={archive_dir}",
            f"CIFAR10_LOSSLESS_DIR={dest}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


needs_tools = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("make", "sha256sum", "tar", "xz")),
    reason="needs make, sha256sum, tar and xz",
)


@needs_tools
def test_make_target_checks_then_unpacks(tmp_path: Path) -> None:
    write_lossless_batches(tmp_path / "src" / "cifar-10-batches-py")
    archive_dir = make_archive(tmp_path / "src" / "cifar-10-batches-py", tmp_path)
    dest = tmp_path / "data" / "cifar10-lossless"
    proc = make_data(archive_dir, dest)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in dest.iterdir()) == ["cifar-10-batches-py"]
    assert len(build_data(dataset_cfg(dest), seed=0).test) == 6
    assert make_data(archive_dir, dest).returncode == 0  # unpacked already: nothing to do


@needs_tools
def test_make_target_refuses_a_checksum_mismatch(tmp_path: Path) -> None:
    write_lossless_batches(tmp_path / "src" / "cifar-10-batches-py")
    archive_dir = make_archive(tmp_path / "src" / "cifar-10-batches-py", tmp_path)
    archive = archive_dir / "cifar-10-python.tar.xz"
    damaged = bytearray(archive.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    archive.write_bytes(bytes(damaged))
    dest = tmp_path / "data" / "cifar10-lossless"
    proc = make_data(archive_dir, dest)
    assert proc.returncode != 0
    assert "does not match its SHA256SUMS; nothing unpacked" in proc.stderr
    assert not dest.exists() or not any(dest.iterdir())


@needs_tools
def test_make_target_names_a_missing_archive(tmp_path: Path) -> None:
    proc = make_data(tmp_path / "nowhere", tmp_path / "dest")
    assert proc.returncode != 0
    assert "no SHA256SUMS" in proc.stderr and str(tmp_path / "nowhere") in proc.stderr


# --- every run says how many test images it scored -------------------------------------------
@pytest.mark.slow
def test_runs_announce_the_short_test_split(tmp_path: Path, rmp) -> None:
    write_lossless_batches(tmp_path / "cifar10" / "cifar-10-batches-py", per_batch=8, n_test=6)
    proc = rmp(
        "sweep",
        "dataset=cifar10",
        f"dataset.root={tmp_path / 'cifar10'}",
        "model.width=0.25",
        "dataset.calib_size=8",
        "balance.num_images=8",
        "sweep.timesteps=[2,4]",
        *FAST_TRAIN,
        "train.epochs=1",
    )
    run = tmp_path / last_line(proc)
    note = "test set: 6 of 10,000 official images"
    assert (run / "run.log").read_text().count(note) == 2  # training, then the simulation
    assert json.loads((run / "ann.json").read_text())["test_set"] == note
    assert "Test set: 6 of 10,000 official images." in (run / "summary.md").read_text()

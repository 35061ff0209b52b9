"""Verify and unpack the offline CIFAR-10 JPEG archives (train.tar.xz, test.tar.xz + SHA256SUMS)."""

from __future__ import annotations

import hashlib
import logging
import shutil
import tarfile
import tempfile
from pathlib import Path

from rmp_cli.errors import FileFault, RmpError, parsing, read_bytes

log = logging.getLogger(__name__)

SPLITS = ("train", "test")


def read_checksums(path: Path) -> dict[str, str]:
    """`sha256sum` output: '<hex>  <name>' (or '<hex> *<name>' in binary mode) per line."""
    if not path.is_file():
        raise RmpError(f"{path} is missing; the archives cannot be verified without it")
    raw = read_bytes(path)
    with parsing(path, "not sha256sum output (UTF-8 text)", "copy it again"):
        text = raw.decode("utf-8")
    sums = {}
    for line in text.splitlines():
        parts = line.strip().split(maxsplit=1)
        if len(parts) == 2 and len(parts[0]) == 64:
            sums[parts[1].lstrip("*")] = parts[0].lower()
    return sums


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def verify_archives(archive_dir: Path, names: list[str]) -> None:
    sums = read_checksums(archive_dir / "SHA256SUMS")
    for name in names:
        path = archive_dir / name
        if not path.is_file():
            raise RmpError(f"{path} is missing; expected {', '.join(names)} in {archive_dir}")
        if name not in sums:
            raise RmpError(f"{archive_dir / 'SHA256SUMS'} has no line for {name}; cannot verify it")
        if sha256_of(path) != sums[name]:
            raise RmpError(
                f"checksum mismatch for {path}: the archive is corrupt or not the "
                f"expected one; copy it again"
            )


def _safe_extract(tar: tarfile.TarFile, target: Path) -> None:
    """Extract plain files and folders only, never outside `target` (no absolute paths, no links)."""
    if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4
        tar.extractall(target, filter="data")
        return
    for member in tar.getmembers():
        parts = Path(member.name).parts
        if member.name.startswith("/") or ".." in parts or not (member.isfile() or member.isdir()):
            raise RmpError(f"refusing unsafe archive entry {member.name!r}")
    tar.extractall(target)


def unpack_cifar10_archives(archive_dir: Path, dest: Path) -> Path:
    """Check SHA256SUMS, then unpack train.tar.xz and test.tar.xz into dest/train and dest/test.

    Unpacks into a temporary folder beside dest first, so an interrupted run leaves no half
    folder that would later pass for a complete dataset. Returns dest (usable as dataset.root
    with dataset.format=folder).
    """
    archive_dir, dest = Path(archive_dir).expanduser(), Path(dest).expanduser()
    archives = [f"{split}.tar.xz" for split in SPLITS]
    verify_archives(archive_dir, archives)
    existing = [str(dest / s) for s in SPLITS if (dest / s).exists()]
    if existing:
        raise RmpError(
            f"{' and '.join(existing)} already exist; remove them or choose another destination"
        )
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".unpack-") as tmp:
        for split, name in zip(SPLITS, archives, strict=True):
            log.info("unpacking %s", archive_dir / name)
            with parsing(archive_dir / name, "", template="cannot unpack {path} ({reason})"):
                try:
                    with tarfile.open(archive_dir / name, "r:xz") as tar:
                        _safe_extract(tar, Path(tmp))
                except OSError as exc:  # unpacking writes too: a full disk is no bad archive
                    if exc.errno is None:
                        raise
                    raise FileFault("cannot unpack", archive_dir / name, exc) from None
            if not (Path(tmp) / split).is_dir():
                raise RmpError(f"{archive_dir / name} does not contain a top-level {split}/ folder")
        for split in SPLITS:
            shutil.move(str(Path(tmp) / split), dest / split)
    return dest

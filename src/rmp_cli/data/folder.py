"""Image folders (<split>/<class>/*.jpg) decoded once into a uint8 tensor cache, then served from memory."""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rmp_cli.data.locations import cache_home
from rmp_cli.errors import FileFault, RmpError, parsing, read_bytes, reason_of
from rmp_cli.runs.atomic import atomic_torch_save

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
_CHUNK = 512  # images per decoding task: amortizes the thread-pool overhead


@dataclass(frozen=True)
class FolderImages:
    classes: list[str]  # sorted folder names; label i = classes[i]
    images: torch.Tensor  # uint8 (N, 3, H, W)
    labels: torch.Tensor  # int64 (N,)


def class_names(split_dir: Path) -> list[str]:
    """Class folders in sorted order: ImageFolder's convention (and CIFAR-10's label order)."""
    if not split_dir.is_dir():
        raise RmpError(
            f"image folder {split_dir} does not exist; expected {split_dir}/<class>/*.jpg"
        )
    classes = sorted(
        d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith(".")
    )
    if not classes:
        raise RmpError(f"{split_dir} has no class folders; expected {split_dir}/<class>/*.jpg")
    return classes


def list_image_folder(split_dir: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """Sorted class names and (file, label) pairs."""
    classes = class_names(split_dir)
    files: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        found = sorted(
            p
            for p in (split_dir / name).iterdir()
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )
        if not found:
            raise RmpError(
                f"class folder {split_dir / name} holds no images (.jpg/.jpeg/.png/.bmp)"
            )
        files.extend((p, label) for p in found)
    return classes, files


def folder_key(split_dir: Path, files: list[tuple[Path, int]], size: tuple[int, int]) -> str:
    """Hash of the file list and sizes: adding, removing, renaming or resizing a file changes it."""
    digest = hashlib.sha256(f"rmp-folder-cache {CACHE_FORMAT} {size}\n".encode())
    for path, _ in files:
        digest.update(f"{path.relative_to(split_dir).as_posix()}\t{path.stat().st_size}\n".encode())
    return digest.hexdigest()


def decode_image(path: Path, size: tuple[int, int]) -> np.ndarray:
    """One image as uint8 (H, W, 3); its size must already be `size` (H, W): no silent resizing."""
    from PIL import Image

    raw = read_bytes(path)
    with (
        parsing(path, "", "replace or delete the file", template="cannot decode {path} ({reason})"),
        Image.open(io.BytesIO(raw)) as img,
    ):
        if img.size != (size[1], size[0]):
            raise RmpError(
                f"{path} is {img.size[0]}x{img.size[1]} pixels, expected "
                f"{size[1]}x{size[0]}; this folder is not in the expected format"
            )
        return np.asarray(img.convert("RGB"))


def _decode_all(paths: list[Path], size: tuple[int, int]) -> torch.Tensor:
    out = np.empty((len(paths), size[0], size[1], 3), dtype=np.uint8)

    def decode_chunk(start: int) -> None:
        for i in range(start, min(start + _CHUNK, len(paths))):
            out[i] = decode_image(paths[i], size)

    # Pillow releases the GIL while decoding, so threads give real parallelism without pickling.
    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for future in [pool.submit(decode_chunk, s) for s in range(0, len(paths), _CHUNK)]:
            future.result()
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def _cache_dirs(split_dir: Path, cache_dir: Path | None) -> list[Path]:
    if cache_dir is not None:
        return [cache_dir]
    return [split_dir.parent / ".rmp_cache", cache_home()]


def _cache_name(tag: str, key: str) -> str:
    return f"{tag}-{key[:16]}.pt"


def _read_cache(path: Path, key: str, count: int, size: tuple[int, int]) -> FolderImages | None:
    """The cache at `path` if it is the one for this folder, whole; None (rebuild it) if not.
    Every check is here, inside the boundary: a damaged cache must never reach training."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        images, labels, classes = blob["images"], blob["labels"], list(blob["classes"])
        ok = (
            blob.get("format") == CACHE_FORMAT
            and blob.get("key") == key
            and isinstance(images, torch.Tensor)
            and isinstance(labels, torch.Tensor)
            and images.dtype == torch.uint8
            and images.ndim == 4
            and tuple(images.shape[1:]) == (3, *size)
            and labels.dtype == torch.int64
            and labels.shape == (count,)
            and images.shape[0] == count
            and all(isinstance(c, str) for c in classes)
            and bool(count == 0 or (labels.min() >= 0 and labels.max() < len(classes)))
        )
    except Exception as exc:  # the boundary: any unreadable cache is just rebuilt
        log.warning("ignoring unreadable cache %s (%s)", path, reason_of(exc))
        return None
    return FolderImages(classes, images, labels) if ok else None


def _write_cache(dirs: list[Path], tag: str, key: str, data: FolderImages, explicit: bool) -> None:
    blob = {
        "format": CACHE_FORMAT,
        "key": key,
        "classes": data.classes,
        "images": data.images,
        "labels": data.labels,
    }
    for folder in dirs:
        path = folder / _cache_name(tag, key)
        try:
            atomic_torch_save(path, blob)
        except (FileFault, OSError) as exc:
            fault = exc if isinstance(exc, FileFault) else FileFault("cannot write", path, exc)
            if explicit:
                raise FileFault(
                    "cannot write the image cache",
                    path,
                    fault.os_error,
                    advice="set dataset.cache_dir to a writable folder with room",
                ) from None
            log.info(
                "cannot write cache in %s (%s); trying the next location", folder, fault.reason
            )
            continue
        log.info("cached decoded images at %s", path)
        _remove_stale(folder, tag, keep=path)
        return
    log.warning(
        "no writable cache location (%s); images will be decoded again next time",
        ", ".join(map(str, dirs)),
    )


def _remove_stale(folder: Path, tag: str, keep: Path) -> None:
    """Older caches of the same folder (a changed file list) are dead weight: drop them."""
    pattern = re.compile(rf"{re.escape(tag)}-[0-9a-f]{{16}}\.pt")
    with contextlib.suppress(OSError):  # only a clean-up: the new cache is in place
        for old in folder.iterdir():
            if old != keep and pattern.fullmatch(old.name):
                old.unlink(missing_ok=True)


def load_image_folder(
    split_dir: Path, *, size: tuple[int, int], tag: str, cache_dir: Path | None = None
) -> FolderImages:
    """All images of `split_dir` as uint8, from the cache when the folder is unchanged.

    The cache lives in `cache_dir`, else <split_dir>/../.rmp_cache, else ~/.cache/rmp when the
    dataset folder is read-only. `tag` names the cache file (e.g. "cifar10-train").
    """
    classes, files = list_image_folder(split_dir)
    key = folder_key(split_dir, files, size)
    dirs = _cache_dirs(split_dir, cache_dir)
    for folder in dirs:
        path = folder / _cache_name(tag, key)
        if path.is_file() and (cached := _read_cache(path, key, len(files), size)) is not None:
            log.info("loaded %d images of %s from cache %s", len(files), split_dir, path)
            return cached
    log.info("decoding %d images of %s (once; later runs read the cache)", len(files), split_dir)
    images = _decode_all([p for p, _ in files], size)
    labels = torch.tensor([label for _, label in files], dtype=torch.long)
    data = FolderImages(classes, images, labels)
    _write_cache(dirs, tag, key, data, explicit=cache_dir is not None)
    return data

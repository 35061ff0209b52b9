"""predictions.npz: every test image's predicted class, per grid point and T, and the ANN's.

One uncompressed NumPy archive per run dir (numpy.load reads it; no pickles):
  points     [P]         grid point keys (results.csv's point_key), in the order computed
  timesteps  [nT] int32  the requested T, ascending
  index      [N] int32   each test image's index in the dataset (dataset.subset keeps the real
                         indices): two runs on the same images pair up on it
  label      [N] int16   the true class
  snn        [P, nT, N] int16  the SNN's predicted class at each T
  ann        [P, N] int16      the ANN's predicted class (the network each point converts)
Size: 6 N + 2 P N (nT + 1) bytes plus ~0.3 KB of headers per array, e.g. 10,000 images x 11 T
x 4 grid points: 60,000 + 960,000 bytes = about 1.0 MB.
Rewritten atomically per grid point, before results.csv marks the point done.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rmp_cli.errors import RmpError, parsing, read_bytes
from rmp_cli.runs.atomic import atomic_write

PREDICTIONS_FILE = "predictions.npz"
FIELDS = ("points", "timesteps", "index", "label", "snn", "ann")


@dataclass
class Predictions:
    points: list[str]
    timesteps: list[int]
    index: np.ndarray
    label: np.ndarray
    snn: np.ndarray
    ann: np.ndarray

    def snn_at(self, key: str) -> np.ndarray:
        return self.snn[self.points.index(key)]

    def ann_at(self, key: str) -> np.ndarray:
        return self.ann[self.points.index(key)]

    def right(self, key: str) -> np.ndarray:
        """[nT, N] booleans: image right for the SNN of grid point `key` at each T."""
        return self.snn_at(key) == self.label

    def ann_right(self, key: str) -> np.ndarray:
        return self.ann_at(key) == self.label


def class_array(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values)
    if values.size and (values.min() < 0 or values.max() > np.iinfo(np.int16).max):
        raise RmpError("class indices beyond int16 cannot be kept in predictions.npz")
    return values.astype(np.int16)


def read_predictions(path: Path) -> Predictions:
    if not path.is_file():
        raise RmpError(f"no {path.name} in {path.parent}")
    raw = read_bytes(path)
    with parsing(path, "not a predictions file of `rmp sweep` or `rmp convert`"):
        with np.load(io.BytesIO(raw), allow_pickle=False) as archive:
            missing = [name for name in FIELDS if name not in archive.files]
            if missing:
                raise RmpError(f"{path} lacks {', '.join(missing)}; not an rmp predictions file")
            arrays = {name: archive[name] for name in FIELDS}
        p = len(arrays["points"])
        n, steps = arrays["index"].shape[0], arrays["timesteps"].shape[0]
        if (
            arrays["label"].shape != (n,)
            or arrays["snn"].shape != (p, steps, n)
            or arrays["ann"].shape != (p, n)
            or arrays["points"].ndim != 1
            or any(a.dtype.kind not in "iu" for k, a in arrays.items() if k != "points")
        ):
            raise RmpError(
                f"{path} has arrays of inconsistent shapes or types; not an rmp predictions file"
            )
        return Predictions(
            points=[str(k) for k in arrays["points"]],
            timesteps=[int(t) for t in arrays["timesteps"]],
            index=arrays["index"],
            label=arrays["label"],
            snn=arrays["snn"],
            ann=arrays["ann"],
        )


def write_predictions(path: Path, p: Predictions) -> None:
    def save(tmp: Path) -> None:
        with tmp.open("wb") as f:  # a file object: np.savez would append .npz to a name
            np.savez(
                f,
                points=np.array(p.points, dtype=str),
                timesteps=np.asarray(p.timesteps, dtype=np.int32),
                index=np.asarray(p.index, dtype=np.int32),
                label=class_array(p.label),
                snn=class_array(p.snn).reshape(len(p.points), len(p.timesteps), len(p.index)),
                ann=class_array(p.ann).reshape(len(p.points), len(p.index)),
            )

    atomic_write(path, save)


def upsert_point(
    path: Path,
    key: str,
    timesteps: list[int],
    index: np.ndarray,
    label: np.ndarray,
    snn: np.ndarray,
    ann: np.ndarray,
) -> Predictions:
    """Add (or replace) one grid point's predictions; every point of a run shares its images
    and time-steps."""
    index, label = np.asarray(index), np.asarray(label)
    snn, ann = np.asarray(snn)[None], np.asarray(ann)[None]
    if path.is_file():
        old = read_predictions(path)
        if old.timesteps != list(timesteps) or not np.array_equal(old.index, index):
            raise RmpError(f"{path} holds predictions on other images or time-steps")
        keep = [i for i, k in enumerate(old.points) if k != key]
        new = Predictions(
            points=[old.points[i] for i in keep] + [key],
            timesteps=list(timesteps),
            index=index,
            label=label,
            snn=np.concatenate([old.snn[keep], snn.astype(old.snn.dtype)]),
            ann=np.concatenate([old.ann[keep], ann.astype(old.ann.dtype)]),
        )
    else:
        new = Predictions([key], list(timesteps), index, label, snn, ann)
    write_predictions(path, new)
    return new


def keep_points(path: Path, keys: set[str]) -> None:
    """Drop grid points not in `keys` (interrupted between this file and results.csv)."""
    if not path.is_file():
        return
    p = read_predictions(path)
    keep = [i for i, k in enumerate(p.points) if k in keys]
    if len(keep) != len(p.points):
        write_predictions(
            path,
            Predictions(
                [p.points[i] for i in keep], p.timesteps, p.index, p.label, p.snn[keep], p.ann[keep]
            ),
        )


def load_if_present(run: Path) -> Predictions | None:
    path = run / PREDICTIONS_FILE
    return read_predictions(path) if path.is_file() else None

"""Dataset layer: every loader on tiny files written here in the real formats."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from rmp_cli.data import DATASETS, build_data, make_loader, unpack_cifar10_archives
from rmp_cli.data import bundle as bundle_module
from rmp_cli.data import digits as digits_module
from rmp_cli.data import folder as folder_module
from rmp_cli.data import idx as idx_module
from rmp_cli.data.folder import load_image_folder
from rmp_cli.data.memory import InMemoryImages, RandomShiftFlip
from rmp_cli.errors import RmpError

CONF_DATASET = Path(__file__).resolve().parents[1] / "conf" / "dataset"
CIFAR10_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Default locations (~/.cache/rmp, the Debian folder) point into tmp_path, never the machine's."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(idx_module, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian-package")
    return home


def cfg(name: str, **overrides: object) -> dict:
    return {"name": name, "calib_size": 8, **overrides}


def all_items(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
    return torch.stack(xs), torch.tensor(ys)


# --- writers for the real file formats ------------------------------------------------------


def write_idx(path: Path, array: np.ndarray) -> None:
    """idx: 0x00 0x00, type 0x08 (ubyte), ndim, big-endian dims, then the bytes (2051/2049)."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + array.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


def write_fake_idx(folder: Path, n_train: int = 20, n_test: int = 10, gz: bool = True) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(n_train, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test, dtype=np.uint8) * 3) % 10,
    }
    for stem, array in arrays.items():
        write_idx(folder / (stem + (".gz" if gz else "")), array)
    return arrays


def write_fake_cifar(
    root: Path, name: str = "cifar10", per_batch: int = 6, n_test: int = 5
) -> dict:
    """The official layout: python dicts with bytes keys, b'data' uint8 (N, 3072) row-major CHW."""
    rng = np.random.default_rng(1)
    num_classes, label_key = (10, b"labels") if name == "cifar10" else (100, b"fine_labels")
    if name == "cifar10":
        folder = root / "cifar-10-batches-py"
        train_files, test_files, meta = (
            [f"data_batch_{i}" for i in range(1, 6)],
            ["test_batch"],
            "batches.meta",
        )
    else:
        folder = root / "cifar-100-python"
        train_files, test_files, meta = ["train"], ["test"], "meta"
    folder.mkdir(parents=True)
    written: dict[str, list] = {"train": [], "test": []}
    for split, files, n in (("train", train_files, per_batch), ("test", test_files, n_test)):
        for file in files:
            data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
            labels = [int(v) for v in rng.integers(0, num_classes, n)]
            (folder / file).write_bytes(
                pickle.dumps({b"data": data, label_key: labels, b"batch_label": b"x"})
            )
            written[split].append((data, labels))
    (folder / meta).write_bytes(
        pickle.dumps({b"label_names": [b"c%d" % i for i in range(num_classes)]})
    )
    return written


def write_jpeg(path: Path, color: tuple[int, int, int], size: int = 32) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), color).save(path, quality=95)


def class_color(label: int) -> tuple[int, int, int]:
    return (20 * label + 10, 255 - 20 * label, 128)


def write_jpeg_folders(root: Path, classes: list[str], per_class: int = 2, size: int = 32) -> None:
    for split in ("train", "test"):
        for label, name in enumerate(sorted(classes)):
            for i in range(per_class):
                write_jpeg(root / split / name / f"{i:04d}.jpg", class_color(label), size)


# --- registry and options -------------------------------------------------------------------


def test_registry_lists_every_dataset_and_a_yaml_for_each() -> None:
    assert set(DATASETS) == {"digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "imagenet"}
    keys = None
    for name in DATASETS:
        conf = OmegaConf.load(CONF_DATASET / f"{name}.yaml")
        assert conf.name == name
        keys = keys or list(conf.keys())
        assert list(conf.keys()) == keys, f"{name}.yaml keys differ"
    assert "cache_dir" in keys and "calib_size" in keys


def test_yaml_config_builds_digits() -> None:
    bundle = build_data(OmegaConf.load(CONF_DATASET / "digits.yaml"), seed=0)
    assert bundle.name == "digits" and len(bundle.calib) == 256


def test_unknown_name_lists_choices() -> None:
    with pytest.raises(RmpError, match=r"unknown dataset 'svhn'.*digits.*cifar10.*imagenet"):
        build_data({"name": "svhn"}, seed=0)


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        ({"format": "pickle"}, r"format=pickle is not valid for digits"),
        ({"batch_size": 0}, r"batch_size must be a positive integer"),
        ({"subset": True}, r"subset must be a positive integer"),
        ({"augment": "yes"}, r"augment must be true or false"),
        ({"calib_size": 5000}, r"calib_size=5000 exceeds the 1437 training images"),
        ({"subset": 361}, r"subset=361 exceeds the 360 test images"),
    ],
)
def test_bad_options_are_one_line_errors(overrides: dict, pattern: str) -> None:
    with pytest.raises(RmpError, match=pattern) as info:
        build_data(cfg("digits", **overrides), seed=0)
    assert "\n" not in str(info.value)


# --- digits -----------------------------------------------------------------------------------


def test_digits_shapes_classes_and_normalization() -> None:
    bundle = build_data(cfg("digits", augment=False), seed=0)
    assert (bundle.num_classes, bundle.input_shape) == (10, (1, 8, 8))
    assert (len(bundle.train), len(bundle.test), len(bundle.calib)) == (1437, 360, 8)
    x, y = bundle.train[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and isinstance(y, int)
    train_x, train_y = all_items(bundle.train)
    assert set(train_y.tolist()) == set(range(10))
    assert abs(train_x.mean().item()) < 1e-3 and abs(train_x.std().item() - 1) < 1e-3
    # Pixel 0 (value 0) maps to -mean/std; 16 maps to (1-mean)/std.
    lo, hi = (
        -digits_module.MEAN[0] / digits_module.STD[0],
        (1 - digits_module.MEAN[0]) / digits_module.STD[0],
    )
    assert train_x.min().item() == pytest.approx(lo, abs=1e-5)
    assert train_x.max().item() == pytest.approx(hi, abs=1e-5)


def test_digits_stats_match_the_training_split() -> None:
    train_x, *_ = digits_module.load_digits_split()
    scaled = train_x.double() / 16
    assert scaled.mean().item() == pytest.approx(digits_module.MEAN[0], abs=1e-4)
    assert scaled.std().item() == pytest.approx(digits_module.STD[0], abs=1e-4)


def test_digits_split_is_fixed_disjoint_and_stratified() -> None:
    from sklearn.datasets import load_digits

    a, b = build_data(cfg("digits"), seed=0), build_data(cfg("digits"), seed=123)
    test_a, labels_a = all_items(a.test)
    test_b, labels_b = all_items(b.test)
    assert torch.equal(test_a, test_b) and torch.equal(
        labels_a, labels_b
    )  # run seed never moves it
    train_x, train_y, test_x, test_y = digits_module.load_digits_split()
    # train + test is exactly the full dataset (as a multiset), so the split is a partition.
    union = torch.cat([train_x, test_x]).flatten(1).numpy()
    full = load_digits().images.reshape(len(union), -1).astype(np.uint8)
    assert np.array_equal(
        np.unique(union, axis=0, return_counts=True)[1],
        np.unique(full, axis=0, return_counts=True)[1],
    )
    assert len(train_y) + len(test_y) == len(full)
    counts = torch.bincount(test_y, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37


def test_calib_and_subset_are_seeded() -> None:
    a = build_data(cfg("digits", calib_size=16, subset=50), seed=0)
    again = build_data(cfg("digits", calib_size=16, subset=50), seed=0)
    other = build_data(cfg("digits", calib_size=16, subset=50), seed=1)
    assert a.calib.indices == again.calib.indices and a.test.indices == again.test.indices
    assert a.calib.indices != other.calib.indices and a.test.indices != other.test.indices
    assert len(set(a.calib.indices)) == 16 and len(a.test) == 50
    # Random order, not sorted: a prefix of the calibration set must still be a random sample.
    assert a.calib.indices != sorted(a.calib.indices)
    # The subset stream is independent of calib_size.
    bigger = build_data(cfg("digits", calib_size=32, subset=50), seed=0)
    assert bigger.test.indices == a.test.indices


def test_calib_uses_eval_transforms() -> None:
    bundle = build_data(cfg("digits", augment=True, calib_size=32), seed=0)
    train_x, *_ = digits_module.load_digits_split()
    torch.manual_seed(0)
    for pos, index in enumerate(bundle.calib.indices):
        x, _ = bundle.calib[pos]
        expected = (train_x[index].float() / 16 - digits_module.MEAN[0]) / digits_module.STD[0]
        assert torch.allclose(x, expected, atol=1e-5)


# --- augmentation -----------------------------------------------------------------------------


def test_shift_flip_keeps_shape_and_is_a_shifted_window() -> None:
    torch.manual_seed(0)
    images = torch.randint(1, 256, (64, 3, 6, 5), dtype=torch.uint8)
    out = RandomShiftFlip(pad=2, flip=True)(images)
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    shifted = 0
    for i in range(len(images)):
        windows = [padded[i, :, dy : dy + 6, dx : dx + 5] for dy in range(5) for dx in range(5)]
        candidates = windows + [w.flip(-1) for w in windows]
        assert any(torch.equal(out[i], w) for w in candidates)
        shifted += not (torch.equal(out[i], images[i]) or torch.equal(out[i], images[i].flip(-1)))
    assert shifted > 32  # 24 of 25 offsets move the image


def test_flip_only_mirrors_about_half() -> None:
    torch.manual_seed(0)
    images = torch.randint(0, 256, (400, 1, 4, 4), dtype=torch.uint8)
    out = RandomShiftFlip(pad=0, flip=False)(images)
    assert torch.equal(out, images)
    out = RandomShiftFlip(pad=0, flip=True)(images)
    mirrored = sum(
        torch.equal(o, i.flip(-1)) and not torch.equal(o, i)
        for o, i in zip(out, images, strict=True)
    )
    assert 150 < mirrored < 250


def test_eval_is_deterministic_and_train_augments() -> None:
    images = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    labels = torch.arange(16)
    ds = InMemoryImages(images, labels, max_value=255.0, mean=(0.5,) * 3, std=(0.25,) * 3)
    assert torch.equal(ds[3][0], ds[3][0])
    assert torch.allclose(ds[3][0], (images[3].float() / 255 - 0.5) / 0.25, atol=1e-5)
    batch = ds.__getitems__([3, 5])
    assert torch.equal(batch[0][0], ds[3][0]) and batch[1][1] == 5
    train = ds.with_augment(RandomShiftFlip(pad=4, flip=True))
    torch.manual_seed(0)
    views = [train[3][0] for _ in range(8)]
    assert all(v.shape == (3, 8, 8) for v in views)
    assert any(not torch.equal(v, views[0]) for v in views)
    assert train.images is ds.images  # no copy of the data


# --- loaders ----------------------------------------------------------------------------------


def test_make_loader_shuffles_reproducibly() -> None:
    ds = torch.utils.data.TensorDataset(torch.arange(100))

    def order(seed: int) -> list[int]:
        return torch.cat([b[0] for b in make_loader(ds, 10, shuffle=True, seed=seed)]).tolist()

    assert order(3) == order(3) and order(3) != order(4) and sorted(order(3)) == list(range(100))
    unshuffled = make_loader(ds, 10, shuffle=False, seed=0)
    assert torch.cat([b[0] for b in unshuffled]).tolist() == list(range(100))
    assert unshuffled.pin_memory == torch.cuda.is_available()
    with pytest.raises(ValueError, match="sampler"):
        make_loader(ds, 10, shuffle=True, seed=0, sampler=torch.utils.data.SequentialSampler(ds))


def test_loader_batches_in_memory_data_with_augmentation() -> None:
    bundle = build_data(cfg("digits", augment=True), seed=0)
    batches = list(make_loader(bundle.train, 64, shuffle=True, seed=0))
    assert batches[0][0].shape == (64, 1, 8, 8) and batches[0][1].dtype == torch.int64
    assert sum(len(y) for _, y in batches) == 1437
    torch.manual_seed(5)
    first = next(iter(make_loader(bundle.train, 64, shuffle=True, seed=0)))[0]
    torch.manual_seed(5)
    again = next(iter(make_loader(bundle.train, 64, shuffle=True, seed=0)))[0]
    assert torch.equal(first, again)


# --- MNIST / Fashion-MNIST idx files ----------------------------------------------------------


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_idx_loader_reads_gz_files(tmp_path: Path, name: str) -> None:
    arrays = write_fake_idx(tmp_path / "idx")
    bundle = build_data(cfg(name, root=str(tmp_path / "idx"), augment=False), seed=0)
    assert (len(bundle.train), len(bundle.test), bundle.input_shape) == (20, 10, (1, 28, 28))
    mean, std = bundle_module.IDX_STATS[name]
    assert (bundle.mean, bundle.std) == (mean, std)
    x, y = bundle.test[4]
    assert y == int(arrays["t10k-labels-idx1-ubyte"][4])
    expected = (
        torch.from_numpy(arrays["t10k-images-idx3-ubyte"][4]).float() / 255 - mean[0]
    ) / std[0]
    assert torch.allclose(x[0], expected, atol=1e-5)


def test_idx_torchvision_layout_and_uncompressed(tmp_path: Path) -> None:
    write_fake_idx(tmp_path / "root" / "FashionMNIST" / "raw", gz=False)
    bundle = build_data(cfg("fashion_mnist", root=str(tmp_path / "root")), seed=0)
    assert len(bundle.train) == 20


def test_fashion_mnist_found_in_the_debian_location(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_fake_idx(tmp_path / "debian")
    monkeypatch.setattr(idx_module, "DEBIAN_FASHION_MNIST", tmp_path / "debian")
    assert len(build_data(cfg("fashion_mnist"), seed=0).test) == 10


def test_mnist_default_root_is_the_user_cache(isolated_home: Path) -> None:
    write_fake_idx(isolated_home / ".cache" / "rmp" / "data" / "MNIST" / "raw")
    assert len(build_data(cfg("mnist"), seed=0).train) == 20


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").is_file(),
    reason="Debian's dataset-fashion-mnist is not installed",
)
def test_real_debian_fashion_mnist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        idx_module, "DEBIAN_FASHION_MNIST", Path("/usr/share/datasets/fashion-mnist")
    )
    bundle = build_data(cfg("fashion_mnist", subset=500), seed=0)
    assert (len(bundle.train), bundle.num_classes) == (60000, 10)
    x, _ = all_items(bundle.test)
    assert abs(x.mean().item()) < 0.1 and abs(x.std().item() - 1) < 0.1


def test_missing_idx_files_say_how_to_get_them(tmp_path: Path) -> None:
    with pytest.raises(
        RmpError, match=r"mnist not found.*train-images-idx3-ubyte\.gz.*download=true"
    ):
        build_data(cfg("mnist", root=str(tmp_path / "empty")), seed=0)
    with pytest.raises(RmpError, match=r"apt-get install dataset-fashion-mnist"):
        build_data(cfg("fashion_mnist"), seed=0)


def test_corrupt_idx_files_are_rejected(tmp_path: Path) -> None:
    folder = tmp_path / "idx"
    write_fake_idx(folder)
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(b"\x00\x00\x09\x01" + bytes(8))
    )
    with pytest.raises(RmpError, match="bad magic number"):
        build_data(cfg("mnist", root=str(folder)), seed=0)
    write_fake_idx(folder)
    raw = gzip.decompress((folder / "t10k-images-idx3-ubyte.gz").read_bytes())
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw[:-7]))
    with pytest.raises(RmpError, match="truncated or corrupt"):
        build_data(cfg("mnist", root=str(folder)), seed=0)


# --- CIFAR pickled batches --------------------------------------------------------------------


def test_cifar10_pickles_load_with_labels_and_pixels(tmp_path: Path) -> None:
    written = write_fake_cifar(tmp_path)  # random bytes: torchvision's md5 check would refuse them
    bundle = build_data(cfg("cifar10", root=str(tmp_path), augment=False), seed=0)
    assert (len(bundle.train), len(bundle.test), bundle.num_classes) == (30, 5, 10)
    assert bundle.input_shape == (3, 32, 32)
    data, labels = written["train"][2]  # data_batch_3 -> training images 12..17
    x, y = bundle.train[12 + 4]
    assert y == labels[4]
    mean, std = torch.tensor(bundle.mean).view(3, 1, 1), torch.tensor(bundle.std).view(3, 1, 1)
    expected = (torch.from_numpy(data[4].reshape(3, 32, 32)).float() / 255 - mean) / std
    assert torch.allclose(x, expected, atol=1e-5)
    _, test_labels = all_items(bundle.test)
    assert test_labels.tolist() == written["test"][0][1]


def test_cifar100_uses_fine_labels(tmp_path: Path) -> None:
    written = write_fake_cifar(tmp_path, "cifar100", per_batch=12, n_test=4)
    bundle = build_data(cfg("cifar100", root=str(tmp_path), format="pickle"), seed=0)
    assert (len(bundle.train), bundle.num_classes) == (12, 100)
    assert all_items(bundle.test)[1].tolist() == written["test"][0][1]
    assert bundle.mean == bundle_module.CIFAR_STATS["cifar100"][0]


def test_cifar_pickle_cannot_run_code(tmp_path: Path) -> None:
    write_fake_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(
        pickle.dumps({b"data": os.system})
    )
    with pytest.raises(RmpError, match=r"cannot read CIFAR batch .*test_batch"):
        build_data(cfg("cifar10", root=str(tmp_path)), seed=0)


def test_cifar_missing_says_both_forms_and_download(tmp_path: Path) -> None:
    with pytest.raises(RmpError) as info:
        build_data(cfg("cifar10", root=str(tmp_path)), seed=0)
    message = str(info.value)
    assert "cifar-10-batches-py" in message and "train/<class>" in message
    assert "dataset.download=true" in message and "\n" not in message
    with pytest.raises(RmpError) as info:
        build_data(cfg("cifar10", root=str(tmp_path), format="folder"), seed=0)
    assert "train/<class>" in str(info.value) and "download" not in str(info.value)


# --- image folders and their cache ------------------------------------------------------------


def test_image_folder_labels_follow_sorted_class_names(tmp_path: Path) -> None:
    split = tmp_path / "set" / "train"
    for label, name in enumerate(["apple", "mango", "zebra"]):
        for i in range(label + 1):
            write_jpeg(split / name / f"{i}.jpg", class_color(label))
    data = load_image_folder(split, size=(32, 32), tag="demo-train")
    assert data.classes == ["apple", "mango", "zebra"]
    assert data.labels.tolist() == [0, 1, 1, 2, 2, 2]
    assert data.images.shape == (6, 3, 32, 32) and data.images.dtype == torch.uint8
    for image, label in zip(data.images, data.labels, strict=True):
        color = torch.tensor(class_color(int(label)), dtype=torch.float32).view(3, 1, 1)
        assert (image.float() - color).abs().max() <= 4  # JPEG is lossy, solid colours nearly exact


def test_folder_cache_is_reused_then_invalidated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "cifar"
    write_jpeg_folders(root, CIFAR10_CLASSES)
    first = build_data(cfg("cifar10", root=str(root), augment=False), seed=0)
    caches = sorted((root / ".rmp_cache").glob("*.pt"))
    assert [p.name.rsplit("-", 1)[0] for p in caches] == ["cifar10-test", "cifar10-train"]

    def fail(path: Path, size: tuple[int, int]) -> np.ndarray:
        raise AssertionError("decoded although the cache is valid")

    monkeypatch.setattr(folder_module, "decode_image", fail)
    second = build_data(cfg("cifar10", root=str(root), augment=False), seed=0)
    assert torch.equal(all_items(first.train)[0], all_items(second.train)[0])

    write_jpeg(root / "train" / "cat" / "9999.jpg", (1, 2, 3))  # the folder changed
    with pytest.raises(AssertionError, match="decoded although"):
        build_data(cfg("cifar10", root=str(root)), seed=0)
    monkeypatch.undo()
    third = build_data(cfg("cifar10", root=str(root), augment=False), seed=0)
    assert len(third.train) == 21
    assert len(list((root / ".rmp_cache").glob("cifar10-train-*.pt"))) == 1  # stale cache removed


def test_folder_form_labels_match_cifar10_order(tmp_path: Path) -> None:
    write_jpeg_folders(
        tmp_path / "cifar10-jpg", CIFAR10_CLASSES, per_class=1
    )  # under <root>/cifar10-jpg
    bundle = build_data(cfg("cifar10", root=str(tmp_path), augment=True), seed=0)
    x, y = all_items(bundle.test)
    assert y.tolist() == list(range(10))
    mean, std = torch.tensor(bundle.mean).view(3, 1, 1), torch.tensor(bundle.std).view(3, 1, 1)
    raw = x * std + mean
    for label in range(10):
        color = torch.tensor(class_color(label)).float().view(3, 1, 1) / 255
        assert (raw[label] - color).abs().max() < 0.02
    assert bundle.train[0][0].shape == (3, 32, 32)


def test_folder_cache_falls_back_to_user_cache_when_root_is_read_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_home: Path
) -> None:
    root = tmp_path / "readonly"
    write_jpeg_folders(root, CIFAR10_CLASSES, per_class=1)
    real_save = folder_module.atomic_torch_save

    def save(path: Path, obj: object) -> Path:
        if Path(path).is_relative_to(root):
            raise PermissionError(13, "Read-only file system", str(path))
        return real_save(path, obj)

    monkeypatch.setattr(folder_module, "atomic_torch_save", save)
    build_data(cfg("cifar10", root=str(root), format="folder"), seed=0)
    assert len(list((isolated_home / ".cache" / "rmp").glob("cifar10-*.pt"))) == 2
    with pytest.raises(RmpError, match=r"set dataset\.cache_dir to a writable folder"):
        build_data(cfg("cifar10", root=str(root), cache_dir=str(root / "c")), seed=0)


def test_folder_form_needs_the_right_classes_and_sizes(tmp_path: Path) -> None:
    write_jpeg_folders(tmp_path / "three", ["a", "b", "c"])
    with pytest.raises(RmpError, match="has 3 class folders, cifar10 needs 10"):
        build_data(cfg("cifar10", root=str(tmp_path / "three"), calib_size=1), seed=0)
    write_jpeg_folders(tmp_path / "big", CIFAR10_CLASSES, per_class=1, size=40)
    with pytest.raises(RmpError, match="is 40x40 pixels, expected 32x32"):
        build_data(cfg("cifar10", root=str(tmp_path / "big"), calib_size=1), seed=0)


# --- the offline CIFAR-10 archives ------------------------------------------------------------


def make_archives(folder: Path) -> None:
    folder.mkdir()
    lines = []
    for split in ("train", "test"):
        buf = io.BytesIO()
        Image.new("RGB", (32, 32), (9, 9, 9)).save(buf, format="JPEG")
        with tarfile.open(folder / f"{split}.tar.xz", "w:xz") as tar:
            info = tarfile.TarInfo(f"{split}/cat/0000.jpg")
            info.size = len(buf.getvalue())
            tar.addfile(info, io.BytesIO(buf.getvalue()))
        digest = hashlib.sha256((folder / f"{split}.tar.xz").read_bytes()).hexdigest()
        lines.append(f"{digest}  {split}.tar.xz")
    (folder / "SHA256SUMS").write_text("\n".join(lines) + "\n")


def test_unpack_archives_verifies_then_unpacks(tmp_path: Path) -> None:
    make_archives(tmp_path / "archives")
    dest = unpack_cifar10_archives(tmp_path / "archives", tmp_path / "out")
    assert dest == tmp_path / "out"
    assert (dest / "train" / "cat" / "0000.jpg").is_file() and (
        dest / "test" / "cat" / "0000.jpg"
    ).is_file()
    assert sorted(p.name for p in dest.iterdir()) == ["test", "train"]  # no temporary leftovers
    with pytest.raises(RmpError, match="already exist"):
        unpack_cifar10_archives(tmp_path / "archives", dest)


def test_unpack_archives_refuses_a_wrong_checksum(tmp_path: Path) -> None:
    archives = tmp_path / "archives"
    make_archives(archives)
    sums = (archives / "SHA256SUMS").read_text().replace("  test.tar.xz", "x  test.tar.xz")
    (archives / "SHA256SUMS").write_text("0" * 64 + "  test.tar.xz\n" + sums.splitlines()[0] + "\n")
    with pytest.raises(RmpError, match=r"checksum mismatch for .*test\.tar\.xz"):
        unpack_cifar10_archives(archives, tmp_path / "out")
    assert not (tmp_path / "out" / "train").exists()
    (archives / "SHA256SUMS").unlink()
    with pytest.raises(RmpError, match="SHA256SUMS is missing"):
        unpack_cifar10_archives(archives, tmp_path / "out")


def test_unpack_command_prints_the_dataset_root_and_errors_cleanly(rmp, tmp_path: Path) -> None:
    from tests.conftest import assert_clean_error, last_line

    make_archives(tmp_path / "archives")
    assert last_line(rmp("unpack-cifar10", "archives", "cifar")) == str(Path("cifar"))
    assert (tmp_path / "cifar" / "test" / "cat" / "0000.jpg").is_file()
    assert_clean_error(rmp("unpack-cifar10", "archives", "cifar", check=False), "already exist")
    assert_clean_error(rmp("unpack-cifar10", "nowhere", "x", check=False), "SHA256SUMS is missing")


# --- ImageNet folders -------------------------------------------------------------------------


def test_imagenet_folders_and_transforms(tmp_path: Path) -> None:
    for split in ("train", "val"):
        for label, wnid in enumerate(["n01", "n02"]):
            for i in range(3):
                write_jpeg(tmp_path / split / wnid / f"{i}.JPEG", class_color(label), size=40)
    bundle = build_data(cfg("imagenet", root=str(tmp_path), calib_size=4), seed=0)
    assert (bundle.num_classes, bundle.input_shape, len(bundle.train)) == (2, (3, 224, 224), 6)
    x, y = bundle.test[4]
    assert x.shape == (3, 224, 224) and y == 1
    assert torch.equal(bundle.calib[0][0], bundle.calib[0][0])  # eval transforms
    assert bundle.train[0][0].shape == (3, 224, 224)


def test_imagenet_without_folders_explains_the_layout(tmp_path: Path) -> None:
    with pytest.raises(RmpError, match=r"set dataset.root=DIR.*train/<wnid>"):
        build_data(cfg("imagenet"), seed=0)
    with pytest.raises(RmpError, match=r"val not found.*val/<wnid>"):
        (tmp_path / "train").mkdir()
        build_data(cfg("imagenet", root=str(tmp_path)), seed=0)

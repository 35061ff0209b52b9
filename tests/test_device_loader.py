"""Batches made on the device (dataset.on_device) against the host DataLoader, with device=cpu.

The contract: the same seed gives the same batches, bit for bit, whichever path makes them, and
a whole training run gives the same metrics and weights.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from torch.utils.data import DistributedSampler, Subset, TensorDataset

from rmp_cli.data import build_data, make_loader
from rmp_cli.data.device_loader import BatchSource, DeviceImages, DeviceLoader, wants_device_data
from rmp_cli.data.memory import InMemoryImages, RandomShiftFlip
from rmp_cli.errors import RmpError
from tests.conftest import last_line

CPU = torch.device("cpu")


def _images(n: int = 70, augment: RandomShiftFlip | None = None) -> InMemoryImages:
    gen = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 10, (n,), generator=gen)
    data = InMemoryImages(images, labels, max_value=255.0, mean=(0.4, 0.5, 0.6), std=(0.2,) * 3)
    return data.with_augment(augment)


def _batches(loader, rng_seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(rng_seed)  # the augmentation draws come from the global CPU generator
    return [(x.clone(), y.clone()) for x, y in loader]


def _assert_same(host: list, device: list) -> None:
    assert len(host) == len(device) > 1
    for (hx, hy), (dx, dy) in zip(host, device, strict=True):
        assert hx.dtype == dx.dtype == torch.float32 and hy.dtype == dy.dtype == torch.int64
        assert torch.equal(hx, dx) and torch.equal(hy, dy)


def test_draw_then_apply_is_the_same_augmentation() -> None:
    images = torch.randint(0, 256, (32, 3, 6, 6), dtype=torch.uint8)
    augment = RandomShiftFlip(pad=2, flip=True)
    torch.manual_seed(3)
    direct = augment(images)
    torch.manual_seed(3)
    draws = augment.draw(32)
    assert draws.shape == (3, 32) and draws.dtype == torch.int64
    assert draws[:2].min() >= 0 and draws[:2].max() <= 4 and set(draws[2].tolist()) == {0, 1}
    assert torch.equal(augment.apply(images, draws), direct)
    # an offset of `pad` in both directions is no shift; a flip of 1 mirrors
    still = torch.tensor([[2], [2], [0]]).expand(3, 32)
    assert torch.equal(augment.apply(images, still), images)
    assert torch.equal(
        augment.apply(images, torch.tensor([[2], [2], [1]]).expand(3, 32)), images.flip(-1)
    )


@pytest.mark.parametrize("augment", [None, RandomShiftFlip(pad=2, flip=True)])
@pytest.mark.parametrize("shuffle", [True, False])
def test_device_batches_equal_host_batches(augment, shuffle: bool) -> None:
    data = _images(augment=augment)
    host = _batches(make_loader(data, 16, shuffle=shuffle, seed=11), rng_seed=5)
    device = _batches(DeviceLoader(DeviceImages(data, CPU), None, 16, shuffle=shuffle, seed=11), 5)
    _assert_same(host, device)
    assert len(device[-1][1]) == 70 % 16  # the last, smaller batch is kept, as on the host


def test_iter_is_eager_like_a_dataloader() -> None:
    # tqdm.auto calls iter() on what it wraps and then iterates it again: each iter() of a
    # DataLoader draws a base seed from its generator, so the order depends on how often it
    # was called; the device loader must count the same way.
    data = _images(augment=RandomShiftFlip(pad=2, flip=True))

    def after_two_iters(loader) -> list:
        torch.manual_seed(5)
        iter(loader)
        return [(x.clone(), y.clone()) for x, y in loader]

    host = after_two_iters(make_loader(data, 16, shuffle=True, seed=11))
    device = after_two_iters(DeviceLoader(DeviceImages(data, CPU), None, 16, shuffle=True, seed=11))
    _assert_same(host, device)
    once = _batches(make_loader(data, 16, shuffle=True, seed=11), 5)
    assert not torch.equal(once[0][1], host[0][1])  # the second iter() did change the order


def test_other_seeds_give_other_batches() -> None:
    data = _images(augment=RandomShiftFlip(pad=2, flip=True))
    images = DeviceImages(data, CPU)
    a = _batches(DeviceLoader(images, None, 16, shuffle=True, seed=11), 5)
    b = _batches(DeviceLoader(images, None, 16, shuffle=True, seed=12), 5)
    c = _batches(DeviceLoader(images, None, 16, shuffle=True, seed=11), 6)
    assert not torch.equal(a[0][1], b[0][1])  # another order
    assert torch.equal(a[0][1], c[0][1]) and not torch.equal(a[0][0], c[0][0])  # other crops


def test_subset_and_distributed_sampler_follow_the_host_order() -> None:
    data = _images(augment=RandomShiftFlip(pad=1, flip=True))
    subset = Subset(data, [5, 3, 60, 9, 12, 40, 41, 7, 2, 33, 30])
    source = BatchSource(True, CPU, num_workers=0)
    _assert_same(
        _batches(make_loader(subset, 4, shuffle=False, seed=0), 2),
        _batches(source.loader(subset, 4, shuffle=False, seed=0), 2),
    )
    for rank in (0, 1):
        sampler = DistributedSampler(data, num_replicas=2, rank=rank, shuffle=True, seed=3)
        sampler.set_epoch(4)
        host = _batches(make_loader(data, 8, shuffle=False, seed=9, sampler=sampler), 1)
        device = _batches(source.loader(data, 8, shuffle=False, seed=9, sampler=sampler), 1)
        _assert_same(host, device)


def test_the_device_copy_is_made_once_per_dataset() -> None:
    data = build_data({"name": "digits", "augment": True, "calib_size": 8}, seed=0)
    source = BatchSource(True, CPU, num_workers=0)
    first = source.loader(data.train, 64, shuffle=True, seed=1)
    second = source.loader(data.train, 64, shuffle=True, seed=2)
    test = source.loader(data.test, 64, shuffle=False, seed=0)
    assert first.images is second.images and test.images is not first.images


def test_setting_decides_the_path() -> None:
    data = _images()
    cuda = torch.device("cuda")  # only compared, never used
    assert wants_device_data("auto", cuda, data) and not wants_device_data("auto", CPU, data)
    assert wants_device_data(True, CPU, data) and not wants_device_data(False, cuda, data)
    from_files = TensorDataset(torch.zeros(4, 3, 8, 8), torch.zeros(4))
    assert not wants_device_data("auto", cuda, from_files)
    with pytest.raises(RmpError, match="needs an in-memory dataset"):
        wants_device_data(True, CPU, from_files)
    with pytest.raises(RmpError, match="must be auto, true or false"):
        wants_device_data("gpu", CPU, data)
    with pytest.raises(RmpError, match="must be auto, true or false"):
        wants_device_data(1, CPU, data)
    host = BatchSource(False, CPU, num_workers=0).loader(data, 8, shuffle=True, seed=0)
    assert isinstance(host, torch.utils.data.DataLoader)


@pytest.mark.slow
def test_training_on_device_equals_training_on_the_host(rmp, tmp_path: Path) -> None:
    # digits with augmentation and dropout: the augmentation draws and dropout's share the CPU
    # generator, so this also checks that both paths interleave them in the same order.
    args = ["train.epochs=2", "threads=1", "dataset.augment=true", "model.dropout=0.1"]
    host = tmp_path / last_line(rmp("train", *args, "dataset.on_device=false", "run_dir=host"))
    device = tmp_path / last_line(rmp("train", *args, "dataset.on_device=true", "run_dir=dev"))
    a = pd.read_csv(host / "metrics.csv").drop(columns="seconds")
    b = pd.read_csv(device / "metrics.csv").drop(columns="seconds")
    pd.testing.assert_frame_equal(a, b)
    wa = torch.load(host / "model.pt", weights_only=True)["state_dict"]
    wb = torch.load(device / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert "made on cpu" in (device / "run.log").read_text()
    assert "made on" not in (host / "run.log").read_text()


@pytest.mark.slow
def test_an_interrupted_on_device_run_resumes_to_the_same_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rmp_cli.config import compose_config
    from rmp_cli.runs.rundir import RunDir
    from rmp_cli.training import loop as train_module
    from rmp_cli.training.checkpoint import load_checkpoint

    cfg = compose_config(
        ["train.epochs=2", "dataset.augment=true", "dataset.on_device=true", "model.dropout=0.1"]
    )
    full, cut = tmp_path / "full", tmp_path / "cut"
    for run in (full, cut):
        run.mkdir()
    torch.manual_seed(0)
    train_module.train(cfg, RunDir(full, created=True), device=CPU)

    save = train_module.save_checkpoint

    def stop_after_epoch_one(path, payload):
        save(path, payload)
        if payload["kind"] == "last" and payload["epoch"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "save_checkpoint", stop_after_epoch_one)
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        train_module.train(cfg, RunDir(cut, created=True), device=CPU)
    monkeypatch.setattr(train_module, "save_checkpoint", save)
    state = load_checkpoint(cut / "last.pt", kind="last")
    train_module.train(cfg, RunDir(cut, created=False), resume_state=state, device=CPU)

    a = pd.read_csv(full / "metrics.csv").drop(columns="seconds")
    b = pd.read_csv(cut / "metrics.csv").drop(columns="seconds")
    pd.testing.assert_frame_equal(a, b)
    wa = torch.load(full / "model.pt", weights_only=True)["state_dict"]
    wb = torch.load(cut / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.allclose(wa[k], wb[k], rtol=1e-4, atol=1e-6) for k in wa)


@pytest.mark.slow
def test_bad_on_device_values_are_one_line_errors(rmp) -> None:
    from tests.conftest import assert_clean_error

    assert_clean_error(rmp("train", "dataset.on_device=maybe", check=False), "dataset.on_device")

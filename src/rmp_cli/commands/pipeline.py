"""The steps shared by `rmp convert` and `rmp sweep`: checkpoint -> SNN -> thresholds -> simulation."""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import Dataset, Subset

from rmp_cli.config import from_container, to_container
from rmp_cli.convert import balance_thresholds, to_spiking
from rmp_cli.convert.maxpool import MAXPOOL_MODES, find_max_pools, replace_max_pools
from rmp_cli.data import DataBundle, build_data, make_loader
from rmp_cli.data.bundle import redraw_calibration
from rmp_cli.errors import RmpError
from rmp_cli.models.sources import describe
from rmp_cli.report import stats
from rmp_cli.report.energy import EnergyCosts
from rmp_cli.runs import distributed as dist
from rmp_cli.runs.rundir import log
from rmp_cli.runs.runtime import progress, resolve_device
from rmp_cli.snn import SimResult, SpikingNet, simulate
from rmp_cli.snn.neurons import MAX_BURST, OFFSETS
from rmp_cli.snn.simulator import PRECISIONS
from rmp_cli.training.checkpoint import (
    build_model,
    check_same_model,
    load_checkpoint,
    load_model,
    load_weights,
    read_state_dict,
)
from rmp_cli.training.loop import evaluate

RESETS = ("hard", "soft")
ENCODINGS = ("direct", "poisson")
READOUTS = ("potential", "spikes")


@dataclass
class Prepared:
    cfg: DictConfig
    data: DataBundle
    ann: nn.Module
    device: torch.device
    checkpoint: dict[str, Any]
    # snn.maxpool=avg: the trained ANN as it was, before its max-pools became average pools
    # (`ann` is then the changed ANN, the one the SNN approximates and balancing reads).
    ann_before: nn.Module | None = None


def adopt_checkpoint_config(
    cfg: DictConfig, ckpt_cfg: DictConfig, overrides: Sequence[str]
) -> None:
    """The checkpoint decides the model and which dataset. When the composed config names the
    same dataset (a preset or dataset=...), its evaluation settings (root, subset, batch sizes)
    are used as composed; otherwise the checkpoint's dataset config, with the user's dataset.*
    overrides on top."""
    cfg.model = ckpt_cfg.model
    if cfg.dataset.name == ckpt_cfg.dataset.name:
        return
    dataset = OmegaConf.merge(ckpt_cfg.dataset, {})
    user = [o.lstrip("+") for o in overrides if o.lstrip("+").startswith("dataset.")]
    if user:
        dataset = OmegaConf.merge(
            dataset, OmegaConf.from_dotlist([o[len("dataset.") :] for o in user])
        )
    cfg.dataset = dataset


def validate_snn_config(cfg: DictConfig) -> None:
    snn = cfg.snn
    if snn.reset not in RESETS:
        raise RmpError(f"unknown snn.reset '{snn.reset}'; choose one of: {', '.join(RESETS)}")
    if snn.encoding not in ENCODINGS:
        raise RmpError(
            f"unknown snn.encoding '{snn.encoding}'; choose one of: {', '.join(ENCODINGS)}"
        )
    if snn.get("precision", "fp32") not in PRECISIONS:
        raise RmpError(
            f"unknown snn.precision '{snn.precision}'; choose one of: {', '.join(PRECISIONS)}"
        )
    if snn.readout not in READOUTS:
        raise RmpError(f"unknown snn.readout '{snn.readout}'; choose one of: {', '.join(READOUTS)}")
    if snn.get("maxpool", "gate") not in MAXPOOL_MODES:
        raise RmpError(
            f"unknown snn.maxpool '{snn.maxpool}'; choose one of: {', '.join(MAXPOOL_MODES)}"
        )
    if not 0.0 <= float(snn.v_init) < 1.0:
        raise RmpError(f"snn.v_init is a fraction of the threshold in [0, 1), got {snn.v_init}")
    validate_spike_options(snn)
    if not isinstance(snn.batch_size, int) or snn.batch_size < 1:
        raise RmpError(f"snn.batch_size must be a positive integer, got {snn.batch_size}")
    if snn.chunk != "auto" and (not isinstance(snn.chunk, int) or snn.chunk < 1):
        raise RmpError(f"snn.chunk must be a positive integer or auto, got {snn.chunk}")
    EnergyCosts.from_config(cfg.get("energy"))
    layers = OmegaConf.select(cfg, "report.layers", default=False)
    if not isinstance(layers, bool):
        raise RmpError(f"report.layers must be true or false, got {layers!r}")
    report_levels(cfg)
    b = cfg.balance
    if float(b.scale) <= 0:
        raise RmpError(f"balance.scale must be positive, got {b.scale}")
    if b.method == "percentile" and not 0.0 < float(b.percentile) <= 100.0:
        raise RmpError(f"balance.percentile must be in (0, 100], got {b.percentile}")
    if not isinstance(b.num_images, int) or b.num_images < 1:
        raise RmpError(f"balance.num_images must be a positive integer, got {b.num_images}")
    steps = b.get("timesteps")
    if b.method in ("spike_norm", "rmp", "mse") and (not isinstance(steps, int) or steps < 1):
        raise RmpError(f"balance.timesteps must be a positive integer for {b.method}, got {steps}")


def report_levels(cfg: DictConfig) -> tuple[float, float]:
    """(report.confidence, report.alpha): the intervals' level and the paired tests' level."""
    confidence = OmegaConf.select(cfg, "report.confidence", default=stats.CONFIDENCE)
    alpha = OmegaConf.select(cfg, "report.alpha", default=stats.ALPHA)
    return stats.check_level("report.confidence", confidence), stats.check_level(
        "report.alpha", alpha
    )


def spike_options(snn: DictConfig) -> tuple[bool, int, int, str | None]:
    """(signed, max_spikes, presteps, offset) with their defaults (configs written before them)."""
    offset = snn.get("offset")
    return (
        snn.get("signed", False),
        snn.get("max_spikes", 1),
        snn.get("presteps", 0),
        None if offset is None else str(offset),
    )


def validate_spike_options(snn: DictConfig) -> None:
    signed, max_spikes, presteps, offset = spike_options(snn)
    if not isinstance(signed, bool):
        raise RmpError(f"snn.signed must be true or false, got {signed!r}")
    if signed and snn.reset == "hard":
        raise RmpError(
            "snn.signed=true needs snn.reset=soft: a negative spike gives theta back, which a "
            "hard reset (membrane to zero) would not"
        )
    if isinstance(max_spikes, bool) or not isinstance(max_spikes, int):
        raise RmpError(f"snn.max_spikes must be an integer in 1..{MAX_BURST}, got {max_spikes!r}")
    if not 1 <= max_spikes <= MAX_BURST:
        raise RmpError(f"snn.max_spikes must be an integer in 1..{MAX_BURST}, got {max_spikes}")
    if isinstance(presteps, bool) or not isinstance(presteps, int) or presteps < 0:
        raise RmpError(f"snn.presteps must be a non-negative integer, got {presteps!r}")
    if offset is not None and offset not in OFFSETS:
        raise RmpError(
            f"unknown snn.offset '{offset}'; choose one of: {', '.join(OFFSETS)} (or null)"
        )
    if offset is not None and presteps == 0:
        raise RmpError(
            f"snn.offset={offset} calibrates on pre-steps; set snn.presteps to 1 or more"
        )
    if offset is None and presteps > 0:
        raise RmpError(
            f"snn.presteps={presteps} needs snn.offset={' or snn.offset='.join(OFFSETS)}"
        )


def check_weight_source(cfg: DictConfig) -> None:
    """ckpt= or weights=, not both, naming a file: checked before any run dir is made."""
    if cfg.get("weights") and cfg.get("ckpt"):
        raise RmpError(
            "give either ckpt= (an rmp checkpoint: its config decides the model) or weights= "
            "(weights for the model the config describes), not both"
        )
    for key, what in (("ckpt", "checkpoint"), ("weights", "weights file")):
        path = cfg.get(key)
        if path and not Path(str(path)).is_file():
            raise RmpError(f"{what} not found: {path}")  # the wording of checkpoint._torch_load


def weights_checkpoint(cfg: DictConfig, data: DataBundle) -> dict[str, Any]:
    """weights=PATH for the model the config describes, in the shape of an rmp checkpoint."""
    model = build_model(cfg, data.num_classes, data.input_shape)
    load_weights(model, read_state_dict(cfg.weights), cfg.weights)
    return {
        "state_dict": model.state_dict(),
        "config": from_container(to_container(cfg)),
        "num_classes": data.num_classes,
        "input_shape": list(data.input_shape),
        "path": Path(str(cfg.weights)),
    }


def seed_given(overrides: Sequence[str]) -> bool:
    """seed= on the command line (a value or a sweep axis): it then redraws the calibration
    images of a given network too, not only its Poisson spikes."""
    return any(o.lstrip("+").partition("=")[0] == "seed" for o in overrides)


def prepare(
    cfg: DictConfig,
    overrides: Sequence[str],
    ckpt_path: str | None = None,
    *,
    test_seed: int | None = None,
) -> Prepared:
    """Load the checkpoint (validated), adopt its model/dataset config, build data and the ANN;
    or, with weights=, build the configured model and load the weights into it. The test subset
    is drawn by the checkpoint's seed (test_seed: by that one, so every seed of a sweep is
    tested on the same images); the calibration images by cfg.seed when seed= was given."""
    validate_snn_config(cfg)
    check_weight_source(cfg)
    if cfg.get("weights") and not ckpt_path:
        data = build_data(cfg.dataset, seed=int(cfg.seed) if test_seed is None else test_seed)
        ckpt = weights_checkpoint(cfg, data)
        device = resolve_device(cfg.device)
        ann = load_model(ckpt).to(device)
        log.info("loaded %s into %s", cfg.weights, describe(cfg.model))
    else:
        if not (ckpt_path or cfg.get("ckpt")):
            raise RmpError(
                "no network given; pass ckpt=PATH (a model.pt written by `rmp train`) or "
                "weights=PATH (weights for the model the config describes)"
            )
        ckpt = load_checkpoint(ckpt_path or cfg.get("ckpt"))
        check_same_model(ckpt["config"], cfg, list(overrides), ckpt["path"])
        adopt_checkpoint_config(cfg, ckpt["config"], overrides)
        device = resolve_device(cfg.device)
        ann = load_model(ckpt).to(device)
        data = build_data(
            cfg.dataset, seed=int(ckpt["config"].seed) if test_seed is None else test_seed
        )
        if data.num_classes != int(ckpt["num_classes"]):
            raise RmpError(
                f"checkpoint has {ckpt['num_classes']} classes but dataset "
                f"{cfg.dataset.name} has {data.num_classes}"
            )
    if seed_given(overrides):
        data = redraw_calibration(data, int(cfg.seed))
    if data.test_note:
        log.info(data.test_note)
    ann, before = apply_maxpool_mode(ann, str(cfg.snn.get("maxpool", "gate")))
    return Prepared(cfg=cfg, data=data, ann=ann, device=device, checkpoint=ckpt, ann_before=before)


def apply_maxpool_mode(ann: nn.Module, mode: str) -> tuple[nn.Module, nn.Module | None]:
    """(ANN to convert, original ANN or None). `avg` changes the ANN itself, so it is evaluated
    and balanced as changed; `refuse` (and an unconvertible pool) fails here, before any run dir."""
    if not find_max_pools(ann)[1]:  # also refuses pools that cannot be converted at all
        return ann, None
    if mode == "refuse":
        replace_max_pools(ann, "refuse")  # raises, naming the first max-pool
    if mode == "avg":
        return replace_max_pools(copy.deepcopy(ann), "avg").eval(), ann
    return ann, None


def ann_metrics(p: Prepared, *, before: bool = False) -> dict[str, float]:
    """Test metrics of the ANN that is converted (before=True: of the ANN as trained, when
    snn.maxpool=avg changed it)."""
    loader = make_loader(p.data.test, int(p.cfg.snn.batch_size), shuffle=False, seed=0)
    ann = p.ann_before if before and p.ann_before is not None else p.ann
    return evaluate(ann, loader, p.device)


def chunk_size(cfg: DictConfig) -> int | str:
    """ "auto" lets the simulator size chunks to the device and the layer sizes."""
    return "auto" if cfg.snn.chunk == "auto" else int(cfg.snn.chunk)


def calibration_images(p: Prepared) -> torch.Tensor:
    n = int(p.cfg.balance.num_images)
    if n > len(p.data.calib):
        raise RmpError(
            f"balance.num_images={n} exceeds the calibration subset ({len(p.data.calib)} "
            f"images); raise dataset.calib_size or lower balance.num_images"
        )
    loader = make_loader(p.data.calib, int(p.cfg.snn.batch_size), shuffle=False, seed=0)
    images, seen = [], 0
    for x, _ in loader:
        images.append(x)
        seen += x.shape[0]
        if seen >= n:
            break
    return torch.cat(images)[:n]


def poisson_scale(data: DataBundle) -> float:
    """Largest |normalised pixel|: Poisson spikes carry it, so the expected input equals the pixel."""
    return max(max((1.0 - m) / s, m / s) for m, s in zip(data.mean, data.std, strict=True))


def build_snn(p: Prepared) -> SpikingNet:
    snn = p.cfg.snn
    return to_spiking(
        p.ann,
        reset=str(snn.reset),
        v_init=float(snn.v_init),
        per_channel=bool(snn.per_channel),
        maxpool=str(snn.get("maxpool", "gate")),
    )


def balance(p: Prepared, net: SpikingNet, calib: torch.Tensor) -> list[torch.Tensor]:
    b = p.cfg.balance
    return balance_thresholds(
        net,
        p.ann,
        calib,
        method=str(b.method),
        scale=float(b.scale),
        percentile=float(b.get("percentile", 100.0)),
        timesteps=int(b.get("timesteps", 0) or 0),
        calib_reset=str(b.get("calib_reset", "soft")),
        per_channel=bool(p.cfg.snn.per_channel),
        device=str(p.device),
        chunk=chunk_size(p.cfg),
        shift=float(p.cfg.snn.v_init),  # mse: the approximation the SNN will actually make
    )


def layer_report_on(cfg: DictConfig) -> bool:
    """report.layers: per-layer diagnostics (layers.csv, layers.png) from the same simulation."""
    return OmegaConf.select(cfg, "report.layers", default=False) is True


def simulate_test(
    p: Prepared, net: SpikingNet, timesteps: Sequence[int], *, desc: str
) -> SimResult:
    """Simulate the test set; under torchrun each rank takes every world-th image and the exact
    integer counts are summed (with direct input the result equals one process's)."""
    snn = p.cfg.snn
    net.reset_mode = str(snn.reset)
    net.v_init = float(snn.v_init)
    signed, max_spikes, presteps, offset = spike_options(snn)
    net.signed, net.max_spikes = signed, max_spikes
    world, test = dist.world_size(), p.data.test
    if world > 1:
        test = Subset(test, range(dist.rank(), len(test), world))
    loader = make_loader(test, int(snn.batch_size), shuffle=False, seed=0)
    bar = progress(range(len(loader)), desc=desc)
    ticker = iter(bar)

    def tick(*_: Any) -> None:
        next(ticker, None)

    try:
        result = simulate(
            net,
            loader,
            list(timesteps),
            encoding=str(snn.encoding),
            poisson_scale=poisson_scale(p.data),
            chunk=chunk_size(p.cfg),
            device=str(p.device),
            seed=int(p.cfg.seed),
            readout=str(snn.readout),
            progress=tick,
            precision=str(snn.get("precision", "fp32")),
            layer_stats=layer_report_on(p.cfg),
            presteps=presteps,
            offset=offset,
        )
    finally:  # balancing (of the next grid point) simulates the plain neuron
        net.signed, net.max_spikes = False, 1
    if hasattr(bar, "close"):
        bar.close()
    if world > 1:
        parts = dist.all_gather_object(result)
        merged = functools.reduce(SimResult.merge, parts)
        merged.seconds = max(part.seconds for part in parts)  # wall time, not the ranks' sum
        merged.predictions = interleave([part.predictions for part in parts])
        return merged
    return result


def interleave(shards: Sequence[torch.Tensor | None]) -> torch.Tensor | None:
    """Rank r simulated test images r, r + world, ...: put each shard's predictions [nT, n_r]
    back in test-set order."""
    if any(s is None for s in shards):
        return None
    world = len(shards)
    total = sum(s.shape[1] for s in shards)  # type: ignore[union-attr]
    out = torch.empty(shards[0].shape[0], total, dtype=shards[0].dtype)  # type: ignore[union-attr]
    for r, shard in enumerate(shards):
        out[:, r::world] = shard
    return out


def dataset_indices(dataset: Dataset) -> list[int]:
    """Each item's index in the underlying dataset (through dataset.subset's Subset)."""
    if isinstance(dataset, Subset):
        parent = dataset_indices(dataset.dataset)
        return [parent[int(i)] for i in dataset.indices]
    return list(range(len(dataset)))  # type: ignore[arg-type]


@dataclass
class AnnPredictions:
    """The ANN on the test set: its metrics and every image's label and predicted class."""

    metrics: dict[str, float]
    index: torch.Tensor  # [N] index of each test image in the dataset
    label: torch.Tensor  # [N]
    predicted: torch.Tensor  # [N]


def ann_predictions(p: Prepared) -> AnnPredictions:
    """One ANN pass over the test set: ann_metrics' numbers and the per-image predictions."""
    loader = make_loader(p.data.test, int(p.cfg.snn.batch_size), shuffle=False, seed=0)
    kept: list[tuple[torch.Tensor, torch.Tensor]] = []
    metrics = evaluate(p.ann, loader, p.device, keep=kept)
    return AnnPredictions(
        metrics=metrics,
        index=torch.tensor(dataset_indices(p.data.test), dtype=torch.int64),
        label=torch.cat([y for y, _ in kept]),
        predicted=torch.cat([pred for _, pred in kept]),
    )

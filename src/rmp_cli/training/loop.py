"""`rmp train`: SGD training of the ANN with per-epoch metrics, atomic checkpoints and exact resume."""

from __future__ import annotations

import contextlib
import csv
import io
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from rmp_cli.data import build_data
from rmp_cli.data.device_loader import BatchSource, check_setting
from rmp_cli.errors import RmpError, reason_of
from rmp_cli.models.sources import describe
from rmp_cli.runs import distributed as dist
from rmp_cli.runs.atomic import atomic_write_text
from rmp_cli.runs.rundir import RunDir, log
from rmp_cli.runs.runtime import progress, resolve_device
from rmp_cli.training.checkpoint import (
    build_model,
    config_payload,
    load_weights,
    model_from_last,
    read_state_dict,
    save_checkpoint,
)

SCHEDULES = ("cosine", "step", "onecycle")
METRIC_COLUMNS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds")


def validate_train_config(cfg: DictConfig) -> None:
    t = cfg.train
    if not isinstance(t.epochs, int) or t.epochs < 1:
        raise RmpError(f"train.epochs must be a positive integer, got {t.epochs}")
    if float(t.lr) <= 0:
        raise RmpError(f"train.lr must be positive, got {t.lr}")
    if t.schedule not in SCHEDULES:
        raise RmpError(
            f"unknown train.schedule '{t.schedule}'; choose one of: {', '.join(SCHEDULES)}"
        )
    if t.schedule == "onecycle" and not 0 <= float(t.warmup_epochs or 0) < t.epochs:
        raise RmpError(
            f"train.schedule=onecycle rises for train.warmup_epochs and then falls: it needs "
            f"0 <= warmup_epochs < epochs, got {t.warmup_epochs} of {t.epochs}"
        )
    if any(not 0 < float(m) < 1 for m in t.milestones):
        raise RmpError(
            f"train.milestones must be fractions of the epochs in (0, 1), got {list(t.milestones)}"
        )
    check_amp(t.get("amp", "auto"))
    check_setting(cfg.dataset.get("on_device", "auto"))
    memory_format(torch.device("cpu"), t.get("channels_last", "auto"))


def lr_factor(progress_epochs: float, cfg: DictConfig) -> float:
    """LR multiplier at a fractional epoch: linear warm-up, then cosine, step or one-cycle decay.

    onecycle is the triangular one-cycle of fast CIFAR-10 training: the warm-up's linear rise
    to the peak, then a linear fall to zero at the end of the last epoch.
    """
    t = cfg.train
    if t.warmup_epochs and progress_epochs < t.warmup_epochs:
        return (progress_epochs + 1e-3) / t.warmup_epochs
    frac = progress_epochs / t.epochs
    if t.schedule == "onecycle":
        warmup = float(t.warmup_epochs or 0)
        return max(0.0, 1.0 - (progress_epochs - warmup) / (t.epochs - warmup))
    if t.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(frac, 1.0)))
    return float(t.gamma) ** sum(frac >= float(m) for m in t.milestones)


def cpu_has_bf16() -> bool:
    """Native bfloat16 arithmetic (avx512_bf16 or AMX); elsewhere autocast emulates it slowly."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def amp_enabled(device: torch.device, amp: bool | str) -> bool:
    """Whether bfloat16 autocast runs: `auto` on CUDA only; `true` also on CPUs with native
    bfloat16 (elsewhere float32, with a warning); `false` never."""
    if amp is False or amp in ("false", "off"):
        return False
    if device.type == "cuda":
        return True
    if amp is True or amp == "true":
        if cpu_has_bf16():
            return True
        log.warning("train.amp=true but this CPU has no native bfloat16; training in float32")
    return False


def check_amp(amp: object) -> None:
    if amp not in (True, False, "auto"):
        raise RmpError(f"train.amp must be auto, true or false, got {amp!r}")


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on `device` when enabled (decide with `amp_enabled`)."""
    if enabled and device.type in ("cuda", "cpu"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def memory_format(device: torch.device, channels_last: bool | str) -> torch.memory_format:
    """channels_last `auto`: on CPU (oneDNN's convolutions are faster in NHWC), not on CUDA."""
    if channels_last == "auto":
        channels_last = device.type == "cpu"
    if channels_last not in (True, False):
        raise RmpError(f"train.channels_last must be auto, true or false, got {channels_last!r}")
    return torch.channels_last if channels_last else torch.contiguous_format


def _to_device(x: torch.Tensor, device: torch.device, fmt: torch.memory_format) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=fmt) if x.dim() == 4 else x


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Any,
    device: torch.device,
    *,
    amp: bool = False,
    fmt: torch.memory_format = torch.contiguous_format,
    keep: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> dict[str, float]:
    """Loss, top-1 and top-5 accuracy (fractions) of the ANN over a loader; `keep` receives
    each batch's (labels, top-1 predicted classes) on the CPU."""
    model.eval()
    loss_sum, top1, top5, total = 0.0, 0, 0, 0
    for x, y in progress(loader, desc="eval"):
        x, y = _to_device(x, device, fmt), y.to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model(x)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        k = min(5, logits.shape[1])
        best = logits.topk(k, dim=1).indices
        top1 += (best[:, 0] == y).sum().item()
        top5 += (best == y[:, None]).any(dim=1).sum().item()
        if keep is not None:
            keep.append((y.cpu(), best[:, 0].cpu()))
        total += y.numel()
    if total == 0:
        raise RmpError("the test split is empty")
    return {"loss": loss_sum / total, "acc": top1 / total, "top5": top5 / total}


def write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def restore_optimizer(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """The optimizer state of a last.pt: the last of the file's values to meet the model, so
    the boundary of the last.pt reader ends here (a damaged state is refused by name)."""
    fresh = [dict(group) for group in optimizer.param_groups]
    try:
        optimizer.load_state_dict(state["optimizer"])
        for before, group in zip(fresh, optimizer.param_groups, strict=True):
            for key, value in before.items():  # lr, momentum, nesterov... of the same kinds
                if key != "params" and not _same_kind(value, group.get(key)):
                    raise ValueError(f"its {key} is {group.get(key)!r}")
            for param in group["params"]:
                for key, value in optimizer.state.get(param, {}).items():
                    if value is not None and (
                        not isinstance(value, torch.Tensor) or value.shape != param.shape
                    ):
                        raise ValueError(f"its {key} does not have the parameter's shape")
    except Exception as exc:
        raise RmpError(
            f"{state.get('path', 'last.pt')} is a damaged last.pt: its optimizer state does "
            f"not fit the model ({reason_of(exc)}); start a new run"
        ) from None


def _same_kind(fresh: Any, loaded: Any) -> bool:
    if fresh is None or isinstance(fresh, bool):
        return loaded is None or isinstance(loaded, bool)
    if isinstance(fresh, (int, float)):
        return isinstance(loaded, (int, float)) and not isinstance(loaded, bool)
    return type(loaded) is type(fresh)


def train(
    cfg: DictConfig,
    run: RunDir,
    resume_state: dict[str, Any] | None = None,
    device: torch.device | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train (or continue) the ANN described by cfg; returns the final metrics row.

    Under torchrun every rank calls this: DistributedSampler shards each epoch, gradients are
    averaged by DDP, and only rank 0 writes metrics and checkpoints. ``on_epoch`` gets each
    epoch's metrics row once it is in metrics.csv (rank 0; the command's tracker).
    """
    validate_train_config(cfg)
    device = device or resolve_device(cfg.device)
    world, main = dist.world_size(), dist.is_main()
    data = build_data(cfg.dataset, seed=int(cfg.seed))
    t = cfg.train
    amp = amp_enabled(device, t.get("amp", "auto"))
    fmt = memory_format(device, t.get("channels_last", "auto"))
    model = build_model(cfg, data.num_classes, data.input_shape).to(device)
    log.info("model %s on dataset %s", describe(cfg.model), cfg.dataset.name)
    if data.test_note:
        log.info(data.test_note)
    log.info(
        "training on %s: %s, %s",
        device,
        "bfloat16 autocast" if amp else "float32",
        "channels_last" if fmt == torch.channels_last else "contiguous",
    )
    rows: list[dict[str, Any]] = []
    start_epoch = 1
    if resume_state is not None:
        load_weights(model, resume_state["state_dict"], f"in {resume_state.get('path', 'last.pt')}")
    elif cfg.get("weights"):  # fine-tuning weights trained elsewhere (e.g. with model.pool=avg)
        load_weights(model, read_state_dict(cfg.weights), cfg.weights)
        log.info("initialised from %s", cfg.weights)
    model = model.to(memory_format=fmt)
    if world > 1:
        if cfg.model.get("batch_norm") and device.type == "cuda":  # SyncBN needs CUDA
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    # torch.compile wraps the same parameters: checkpoints and evaluation use `model` unchanged.
    step_model = torch.compile(model) if t.get("compile") else model
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=float(t.lr),
        momentum=float(t.momentum),
        weight_decay=float(t.weight_decay),
        nesterov=bool(t.nesterov),
    )
    batch_size = int(cfg.dataset.batch_size) // world  # the global batch stays dataset.batch_size
    if batch_size < 1:
        raise RmpError(
            f"dataset.batch_size={cfg.dataset.batch_size} is smaller than the {world} ranks"
        )
    if resume_state is not None:
        restore_optimizer(optimizer, resume_state)
        rows = list(resume_state["metrics"])
        start_epoch = int(resume_state["epoch"]) + 1
        log.info("resuming after epoch %d of %d", start_epoch - 1, t.epochs)
    batches = BatchSource(
        cfg.dataset.get("on_device", "auto"), device, int(cfg.dataset.num_workers)
    )
    if batches.on_device(data.train):
        log.info("training batches are made on %s (dataset.on_device)", device)
    test_loader = batches.loader(
        data.test, int(cfg.dataset.eval_batch_size), shuffle=False, seed=int(cfg.seed)
    )
    if start_epoch > int(t.epochs):  # every epoch is done; the run stopped before model.pt
        if main:
            save_checkpoint(run / "model.pt", model_from_last(resume_state))
        dist.barrier()
        return rows[-1]
    steps_per_epoch = None
    for epoch in range(start_epoch, int(t.epochs) + 1):
        # Reseeding per epoch makes a resumed run replay exactly what an uninterrupted one does.
        torch.manual_seed(int(cfg.seed) * 1000 + epoch)
        sampler = None
        if world > 1:
            sampler = torch.utils.data.DistributedSampler(
                data.train, num_replicas=world, rank=dist.rank(), shuffle=True, seed=int(cfg.seed)
            )
            sampler.set_epoch(epoch)
        train_loader = batches.loader(
            data.train,
            batch_size,
            shuffle=sampler is None,
            seed=int(cfg.seed) * 1000 + epoch,
            sampler=sampler,
        )
        steps_per_epoch = steps_per_epoch or len(train_loader)
        tic = time.perf_counter()
        model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        bar = progress(train_loader, desc=f"epoch {epoch}/{t.epochs}")
        for step, (x, y) in enumerate(bar):
            lr = float(t.lr) * lr_factor(epoch - 1 + step / steps_per_epoch, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = _to_device(x, device, fmt), y.to(device, non_blocking=True)
            with autocast(device, amp):
                logits = step_model(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=float(t.label_smoothing))
            if not torch.isfinite(loss):
                raise RmpError(
                    f"training diverged (loss {loss.item()}) at epoch {epoch}; lower train.lr"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if t.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), float(t.grad_clip))
            optimizer.step()
            loss_sum += loss.item() * y.numel()
            correct += (logits.argmax(1) == y).sum().item()
            seen += y.numel()
        loss_sum, correct, seen = dist.all_reduce_sum([loss_sum, correct, seen], device)
        plain = dist.unwrap(model)
        if not main:  # rank 0 evaluates and writes; the others wait for the next epoch
            dist.barrier()
            continue
        test = evaluate(plain, test_loader, device, amp=amp, fmt=fmt)
        row = {
            "epoch": epoch,
            "train_loss": round(loss_sum / seen, 6),
            "train_acc": round(correct / seen, 6),
            "test_loss": round(test["loss"], 6),
            "test_acc": round(test["acc"], 6),
            "lr": round(lr, 8),
            "seconds": round(time.perf_counter() - tic, 3),
        }
        rows.append(row)
        common = {
            "state_dict": {k: v.detach().cpu().contiguous() for k, v in plain.state_dict().items()},
            "config": config_payload(cfg),
            "num_classes": data.num_classes,
            "input_shape": list(data.input_shape),
            "test_acc": test["acc"],
            "test_top5": test["top5"],
            "epoch": epoch,
        }
        save_checkpoint(
            run / "last.pt",
            {**common, "kind": "last", "optimizer": optimizer.state_dict(), "metrics": rows},
        )
        # After last.pt: a run stopped between the two resumes from last.pt, which holds the rows.
        write_metrics(run / "metrics.csv", rows)
        if on_epoch is not None:
            on_epoch(dict(row))
        log.info(
            "epoch %d/%d  train_loss %.4f  train_acc %.4f  test_loss %.4f  test_acc %.4f  (%.1fs)",
            epoch,
            t.epochs,
            row["train_loss"],
            row["train_acc"],
            row["test_loss"],
            row["test_acc"],
            row["seconds"],
        )
        if epoch == int(t.epochs):
            save_checkpoint(run / "model.pt", {**common, "kind": "model"})
        dist.barrier()
    return rows[-1] if rows else {}

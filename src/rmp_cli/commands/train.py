"""`rmp train` wiring: fresh runs get a new run dir; resume=PATH continues in the checkpoint's dir.

Under torchrun, rank 0 makes the run dir and tells the other ranks where it is.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from rmp_cli.commands import stopping
from rmp_cli.commands.tracked import tracked, tracking_for
from rmp_cli.config import same_settings
from rmp_cli.errors import RmpError
from rmp_cli.runs.ranks import discard_if_failed, on_main, torchrun_session
from rmp_cli.runs.rundir import RunDir, create_run_dir, log
from rmp_cli.tracking import Tracking
from rmp_cli.training.checkpoint import load_checkpoint
from rmp_cli.training.loop import train, validate_train_config

# Keys that may differ between a resumed run and its checkpoint (they do not change the result).
RESUME_FREE_KEYS = {
    "resume",
    "run_dir",
    "device",
    "threads",
    "dataset.num_workers",
    "dataset.on_device",  # the same batches either way (data/device_loader.py)
    "logger",  # where the run is tracked (logger.* too)
}


def _resume_free(key: str) -> bool:
    return key in RESUME_FREE_KEYS or key.startswith("logger.")


def _resume_conflicts(cfg: DictConfig, ckpt_cfg: DictConfig, overrides: list[str]) -> list[str]:
    conflicts = []
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if _resume_free(key) or "=" not in override:
            continue
        want, have = OmegaConf.select(cfg, key), OmegaConf.select(ckpt_cfg, key)
        if want != have:
            conflicts.append(f"{key}={want} (checkpoint: {have})")
    return conflicts


def run_train(cfg: DictConfig, overrides: list[str]) -> Path:
    validate_train_config(cfg)
    tracking = tracking_for(cfg, "train", overrides)
    with torchrun_session([cfg]) as device:
        return _run_train(cfg, overrides, device, tracking)


def resume_args(run_path: Path, overrides: list[str]) -> list[str]:
    """`train resume=RUN/last.pt`, with the overrides a resume may repeat (device, threads,
    the logger, so the resumed run goes on in the same tracker run)."""
    kept = [
        o
        for o in overrides
        if _resume_free(key := o.split("=", 1)[0].lstrip("+~")) and key not in ("resume", "run_dir")
    ]
    return ["train", f"resume={run_path / 'last.pt'}", *kept]


def load_resumable(path: str | Path) -> dict:
    state = load_checkpoint(path, kind="last")
    if state.get("kind") != "last" or "optimizer" not in state:
        raise RmpError(f"{path} is not a resumable checkpoint; resume= takes the last.pt of a run")
    optimizer, metrics = state["optimizer"], state.get("metrics")
    groups = optimizer.get("param_groups") if isinstance(optimizer, dict) else None
    if (
        not isinstance(groups, list)
        or not isinstance(optimizer.get("state"), dict)
        or not all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups)
        or not isinstance(metrics, list)
        or not all(isinstance(row, dict) for row in metrics)
    ):
        raise RmpError(
            f"{path} is a damaged last.pt (its optimizer state or metrics are not what "
            "`rmp train` writes); start a new run, or resume from an intact copy"
        )
    return state


def _run_train(cfg: DictConfig, overrides: list[str], device, tracking: Tracking) -> Path:
    if not cfg.get("resume"):
        run = on_main(lambda: create_run_dir("train", cfg, overrides))
        stopping.run_opened(run.path, lambda path: resume_args(path, overrides))
        with discard_if_failed(run), tracked(tracking, run.path, cfg):
            train(cfg, run, device=device, on_epoch=tracking.epoch)
        return run.path

    state = load_resumable(cfg.resume)
    ckpt_cfg = state["config"]
    if conflicts := _resume_conflicts(cfg, ckpt_cfg, overrides):
        raise RmpError(
            f"resume would change the run's config: {', '.join(conflicts)}; "
            "resume with the original settings or start a new run"
        )
    run_path = Path(str(cfg.resume)).resolve().parent
    # A run whose epochs are all done but that stopped before writing model.pt still resumes.
    if int(state["epoch"]) >= int(ckpt_cfg.train.epochs) and (run_path / "model.pt").is_file():
        raise RmpError(
            f"nothing to resume: {cfg.resume} already finished all {ckpt_cfg.train.epochs} epochs"
        )
    ckpt_cfg.resume = str(cfg.resume)
    ckpt_cfg.device, ckpt_cfg.threads = cfg.device, cfg.get("threads")
    ckpt_cfg.run_dir = str(run_path)
    run = on_main(lambda: create_run_dir("train", ckpt_cfg, overrides, reuse=True))
    stopping.run_opened(run.path, lambda path: resume_args(path, overrides))
    log.info("continuing %s", run_path)
    with tracked(tracking, run.path, ckpt_cfg):  # the tracker run of run_path, continued
        train(ckpt_cfg, run, resume_state=state, device=device, on_epoch=tracking.epoch)
    return run.path


def requeued_state(run: RunDir, cfg: DictConfig) -> dict | None:
    """A job started again in its own run dir (a Slurm requeue, a rerun of the same Hydra job):
    the state of its last.pt to continue from, None to start afresh. A last.pt made with other
    settings is refused rather than continued or overwritten."""
    last = run / "last.pt"
    if not last.is_file():
        return None
    state = load_resumable(last)
    if not same_settings(cfg, state["config"]):
        raise RmpError(
            f"{run.path} holds a training with other settings; choose another run dir "
            "(nothing was overwritten)"
        )
    return state

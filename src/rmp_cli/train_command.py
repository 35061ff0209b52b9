"""`rmp train` wiring: fresh runs get a new run dir; resume=PATH continues in the checkpoint's dir.

Under torchrun, rank 0 makes the run dir and tells the other ranks where it is.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from rmp_cli.checkpoint import load_checkpoint
from rmp_cli.errors import RmpError
from rmp_cli.ranks import discard_if_failed, on_main, torchrun_session
from rmp_cli.rundir import create_run_dir, log
from rmp_cli.train import train, validate_train_config

# Keys that may differ between a resumed run and its checkpoint (they do not change the result).
RESUME_FREE_KEYS = {
    "resume",
    "run_dir",
    "device",
    "threads",
    "dataset.num_workers",
    "dataset.on_device",  # the same batches either way (data/device_loader.py)
}


def _resume_conflicts(cfg: DictConfig, ckpt_cfg: DictConfig, overrides: list[str]) -> list[str]:
    conflicts = []
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key in RESUME_FREE_KEYS or "=" not in override:
            continue
        want, have = OmegaConf.select(cfg, key), OmegaConf.select(ckpt_cfg, key)
        if want != have:
            conflicts.append(f"{key}={want} (checkpoint: {have})")
    return conflicts


def run_train(cfg: DictConfig, overrides: list[str]) -> Path:
    validate_train_config(cfg)
    with torchrun_session([cfg]) as device:
        return _run_train(cfg, overrides, device)


def _run_train(cfg: DictConfig, overrides: list[str], device) -> Path:
    if not cfg.get("resume"):
        run = on_main(lambda: create_run_dir("train", cfg, overrides))
        with discard_if_failed(run):
            train(cfg, run, device=device)
        return run.path

    state = load_checkpoint(cfg.resume, kind="last")
    if state.get("kind") != "last" or "optimizer" not in state:
        raise RmpError(
            f"{cfg.resume} is not a resumable checkpoint; resume= takes the last.pt of a run"
        )
    ckpt_cfg = state["config"]
    if conflicts := _resume_conflicts(cfg, ckpt_cfg, overrides):
        raise RmpError(
            f"resume would change the run's config: {', '.join(conflicts)}; "
            "resume with the original settings or start a new run"
        )
    if int(state["epoch"]) >= int(ckpt_cfg.train.epochs):
        raise RmpError(
            f"nothing to resume: {cfg.resume} already finished all {ckpt_cfg.train.epochs} epochs"
        )
    run_path = Path(str(cfg.resume)).resolve().parent
    ckpt_cfg.resume = str(cfg.resume)
    ckpt_cfg.device, ckpt_cfg.threads = cfg.device, cfg.get("threads")
    ckpt_cfg.run_dir = str(run_path)
    run = on_main(lambda: create_run_dir("train", ckpt_cfg, overrides, reuse=True))
    log.info("continuing %s", run_path)
    train(ckpt_cfg, run, resume_state=state, device=device)
    return run.path

"""A `@hydra.main` entry point, so Hydra's launchers (joblib locally, submitit on Slurm) run grids.

    python -m rmp_cli.app -m +task=sweep ckpt=model.pt snn.reset=hard,soft hydra/launcher=joblib

Each job is one grid point in its own ordinary run dir (Hydra's job dir); `rmp plot` overlays them.
`+task=` picks the command: sweep (default), convert or train. The `sweep.grid` of the config is
not expanded here: the launcher's comma lists are the grid.

A job started again in its job dir continues there: submitit's requeue after a Slurm time limit
or preemption calls the task function again with the same config, and so does rerunning the same
command with the same hydra.run.dir / hydra.sweep.dir. A sweep computes only its missing points,
a training resumes from its last.pt, a finished job is left as it is. A job stopped by SIGTERM /
SIGINT outside submitit prints the command that continues it alone.
"""

from __future__ import annotations

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from rmp_cli.commands import stopping
from rmp_cli.config import config_dir, resolve_auto_model
from rmp_cli.errors import RmpError
from rmp_cli.runs.rundir import create_run_dir, log
from rmp_cli.runs.runtime import seed_everything, set_quiet, set_threads

TASKS = ("sweep", "convert", "train")
PROGRAM = ("python", "-m", "rmp_cli.app")


def rerun_args(hc: DictConfig) -> list[str]:
    """The command that continues this job by itself: its overrides, run in its job dir."""
    return [*hc.overrides.task, f"hydra.run.dir={hc.runtime.output_dir}"]


def run_job(cfg: DictConfig) -> str:
    hc = HydraConfig.get()
    overrides = [o for o in hc.overrides.task if not o.startswith(("task=", "hydra"))]
    task = str(cfg.get("task", "sweep"))
    if task not in TASKS:
        raise RmpError(f"unknown task '{task}'; choose one of: {', '.join(TASKS)}")
    with open_dict(cfg):
        cfg.pop("task", None)
        cfg.run_dir = hc.runtime.output_dir
        resolve_auto_model(cfg, overrides)
    set_quiet(True)
    set_threads(cfg.get("threads"))
    seed_everything(int(cfg.seed))
    from rmp_cli.commands.tracked import tracked, tracking_for

    # Each job its own tracker run, all in one experiment (the preset's, or logger.experiment).
    tracking = tracking_for(cfg, task, overrides)
    again = rerun_args(hc)
    stopping.command_typed(again, program=PROGRAM)
    if task == "train":
        from rmp_cli.commands.train import requeued_state
        from rmp_cli.training.loop import train

        run = create_run_dir("train", cfg, overrides, reuse=True)
        stopping.run_opened(run.path, lambda _: again)
        state = requeued_state(run, cfg)  # refuses a job dir trained with other settings
        if (run / "model.pt").is_file():
            log.info("%s already holds a finished training", run.path)
        else:
            with tracked(tracking, run.path, cfg):
                train(cfg, run, resume_state=state, on_epoch=tracking.epoch)
    elif task == "convert":
        from rmp_cli.commands.convert import REPORT, _convert
        from rmp_cli.commands.pipeline import prepare

        prepared = prepare(cfg, overrides)
        run = create_run_dir("convert", cfg, overrides, reuse=True)
        stopping.run_opened(run.path, lambda _: again)
        if (run / REPORT).is_file():
            log.info("%s already holds a finished convert", run.path)
        else:
            with tracked(tracking, run.path, prepared.cfg):
                _convert(prepared, run.path, int(cfg.snn.timesteps), tracking)
    else:
        from rmp_cli.commands.grid import axis_values, validate_timesteps
        from rmp_cli.commands.pipeline import validate_snn_config
        from rmp_cli.commands.run_state import RunLock
        from rmp_cli.commands.sweep import sweep_points
        from rmp_cli.report.results import point_key

        steps = validate_timesteps(list(OmegaConf.to_container(cfg.sweep.timesteps)))
        validate_snn_config(cfg)
        run = create_run_dir("sweep", cfg, overrides, reuse=True)
        stopping.run_opened(run.path, lambda _: again)
        # The points already in results.csv are not computed again.
        with RunLock(run.path), tracked(tracking, run.path, cfg):
            key = point_key(axis_values(cfg))
            sweep_points(cfg, [cfg], [key], steps, overrides, run, tracking)
    return str(cfg.run_dir)


@hydra.main(config_path=str(config_dir()), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> str:
    # Under submitit, SIGTERM and its timeout signal stay submitit's (checkpoint and requeue).
    return stopping.guarded(lambda: run_job(cfg))


if __name__ == "__main__":
    main()

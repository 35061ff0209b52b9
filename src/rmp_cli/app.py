"""A `@hydra.main` entry point, so Hydra's launchers (joblib locally, submitit on Slurm) run grids.

    python -m rmp_cli.app -m +task=sweep ckpt=model.pt snn.reset=hard,soft hydra/launcher=joblib

Each job is one grid point in its own ordinary run dir (Hydra's job dir); `rmp plot` overlays them.
`+task=` picks the command: sweep (default), convert or train. The `sweep.grid` of the config is
not expanded here: the launcher's comma lists are the grid.
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from rmp_cli.config import config_dir
from rmp_cli.errors import RmpError
from rmp_cli.rundir import RunDir, create_run_dir
from rmp_cli.runtime import seed_everything, set_quiet, set_threads

TASKS = ("sweep", "convert", "train")


def run_job(cfg: DictConfig) -> str:
    hc = HydraConfig.get()
    overrides = [o for o in hc.overrides.task if not o.startswith(("task=", "hydra"))]
    task = str(cfg.get("task", "sweep"))
    if task not in TASKS:
        raise RmpError(f"unknown task '{task}'; choose one of: {', '.join(TASKS)}")
    with open_dict(cfg):
        cfg.pop("task", None)
        cfg.run_dir = hc.runtime.output_dir
    set_quiet(True)
    set_threads(cfg.get("threads"))
    seed_everything(int(cfg.seed))
    if task == "train":
        from rmp_cli.train import train

        train(cfg, create_run_dir("train", cfg, overrides, reuse=True))
    elif task == "convert":
        from rmp_cli.convert_command import _convert
        from rmp_cli.pipeline import prepare

        prepared = prepare(cfg, overrides)
        run = create_run_dir("convert", cfg, overrides, reuse=True)
        _convert(prepared, run.path, int(cfg.snn.timesteps))
    else:
        from rmp_cli.pipeline import validate_snn_config
        from rmp_cli.results import point_key
        from rmp_cli.sweep import RunLock, axis_values, sweep_points, validate_timesteps

        steps = validate_timesteps(list(OmegaConf.to_container(cfg.sweep.timesteps)))
        validate_snn_config(cfg)
        run: RunDir = create_run_dir("sweep", cfg, overrides, reuse=True)
        with RunLock(run.path):
            sweep_points(cfg, [cfg], [point_key(axis_values(cfg))], steps, overrides, run)
    return str(cfg.run_dir)


@hydra.main(config_path=str(config_dir()), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> str:
    try:
        return run_job(cfg)
    except RmpError as exc:
        print(f"rmp: error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

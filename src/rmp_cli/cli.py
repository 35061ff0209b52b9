"""The `rmp` command line: parse, compose the config, create the run dir, hand off. Nothing more."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from rmp_cli.errors import RmpError

OVERRIDES_HELP = "OVERRIDES are Hydra overrides such as dataset=fashion_mnist train.epochs=10."


def _groups_epilog() -> str:
    from rmp_cli.config import GROUPS, group_choices

    try:
        lines = [f"  {g}: {', '.join(group_choices(g)) or '-'}" for g in GROUPS]
    except RmpError:
        return ""
    return "\b\nConfig groups and their choices:\n" + "\n".join(lines)


def friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Bad input and OS faults become one line on stderr and exit code 2; SIGTERM / SIGINT say
    how to resume and exit 143 / 130 (under torchrun on every rank; rank 0 says it)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from rmp_cli.commands import stopping

        stopping.command_typed(_as_typed(click.get_current_context()))
        return stopping.guarded(lambda: fn(*args, **kwargs))

    return wrapper


def _as_typed(ctx: click.Context) -> list[str]:
    """The command line after `rmp` (options and arguments as parsed), to repeat it."""
    args = [str(ctx.info_name)]
    for param in ctx.command.params:
        value = ctx.params.get(param.name or "")
        if isinstance(param, click.Option):
            if param.is_flag:
                args += [param.opts[0]] if value else []
            elif value is not None:
                args += [param.opts[0], str(value)]
        elif isinstance(value, (tuple, list)):
            args += [str(v) for v in value]
        elif value is not None:
            args.append(str(value))
    return args


def prepare(
    command: str,
    overrides: Sequence[str],
    *,
    show_cfg: bool,
    quiet: bool,
    extra: Sequence[str] = (),
) -> Any:
    """Compose the config (printing it for --cfg) and set process-wide knobs. None means --cfg."""
    from rmp_cli.config import compose_config, to_yaml
    from rmp_cli.runs.rundir import quiet_mode
    from rmp_cli.runs.runtime import seed_everything, set_quiet, set_threads

    cfg = compose_config([*overrides, *extra])
    if show_cfg:
        click.echo(to_yaml(cfg), nl=False)
        return None
    set_quiet(quiet_mode(quiet))
    set_threads(cfg.get("threads"))
    seed_everything(int(cfg.seed))
    return cfg


def finish(run_dir: Path) -> None:
    """The run dir is the last line on stdout, so scripts can pick it up (rank 0 only)."""
    import os

    from rmp_cli.runs.rundir import close_logging

    close_logging()
    if int(os.environ.get("RANK", "0")) == 0:
        click.echo(str(run_dir))


cfg_option = click.option(
    "--cfg", "show_cfg", is_flag=True, help="Print the composed config and exit."
)
quiet_option = click.option(
    "--quiet", "-q", is_flag=True, help="No progress bars (also under CI=true)."
)
overrides_argument = click.argument("overrides", nargs=-1)


@click.group(epilog=_groups_epilog(), context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="rmp-cli")
def main() -> None:
    """rmp: convert ReLU networks to spiking networks and measure accuracy against latency.

    \b
    rmp train   dataset=digits model=digits_cnn
    rmp convert ckpt=outputs/train/.../model.pt snn.reset=soft balance=spike_norm
    rmp sweep   --timesteps 1,2,4,...,512 snn.reset=hard,soft
    rmp plot    outputs/sweep/RUN [RUN ...]
    rmp compare outputs/sweep/RUN_A outputs/sweep/RUN_B
    """


@main.command(epilog=OVERRIDES_HELP)
@cfg_option
@quiet_option
@overrides_argument
@friendly_errors
def train(show_cfg: bool, quiet: bool, overrides: tuple[str, ...]) -> None:
    """Train the ANN; writes metrics.csv, last.pt each epoch and model.pt at the end.

    `rmp train resume=RUN/last.pt` continues an interrupted run in its own run dir.
    """
    from rmp_cli.commands.train import run_train

    cfg = prepare("train", overrides, show_cfg=show_cfg, quiet=quiet)
    if cfg is not None:
        finish(run_train(cfg, list(overrides)))


@main.command(epilog=OVERRIDES_HELP)
@cfg_option
@quiet_option
@overrides_argument
@friendly_errors
def convert(show_cfg: bool, quiet: bool, overrides: tuple[str, ...]) -> None:
    """Convert a checkpoint to an SNN, balance thresholds, evaluate at snn.timesteps.

    Writes snn.pt, thresholds.csv and convert.json and prints an ANN-vs-SNN table.
    """
    from rmp_cli.commands.convert import run_convert

    cfg = prepare("convert", overrides, show_cfg=show_cfg, quiet=quiet)
    if cfg is not None:
        finish(run_convert(cfg, list(overrides)))


@main.command(epilog=OVERRIDES_HELP)
@click.option(
    "--timesteps",
    "-t",
    default=None,
    help="Comma list (32,64,128) or power-of-two range (2^5..2^11); default sweep.timesteps.",
)
@cfg_option
@quiet_option
@overrides_argument
@friendly_errors
def sweep(timesteps: str | None, show_cfg: bool, quiet: bool, overrides: tuple[str, ...]) -> None:
    """Accuracy vs time-steps for a grid of reset / balance / scale / v_init / encoding.

    Comma lists on grid axes make a grid: snn.reset=hard,soft balance=spike_norm,rmp
    balance.scale=1.0,0.8 snn.v_init=0,0.5 snn.encoding=direct,poisson seed=0,1,2 (without
    ckpt= each seed trains its own ANN; with it a seed redraws the calibration images and
    Poisson spikes). sweep.variants adds
    override sets crossed with the grid (e.g. model.activation=qcfs with balance=trained, which
    trains its own ANN). Without ckpt= the ANN is trained first. Rerunning with the same run_dir=
    resumes an interrupted sweep. Under torchrun the test set is sharded across ranks.
    """
    from rmp_cli.commands.sweep import run_sweep_command

    finish_dir = run_sweep_command(
        list(overrides), timesteps=timesteps, show_cfg=show_cfg, quiet=quiet, prepare=prepare
    )
    if finish_dir is not None:
        finish(finish_dir)


@main.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--out",
    "-o",
    type=click.Path(path_type=Path),
    default=None,
    help="Output file stem (default: RUN_DIR/accuracy_vs_timesteps, or ./overlay for several).",
)
@friendly_errors
def plot(run_dirs: tuple[Path, ...], out: Path | None) -> None:
    """Re-draw one finished sweep, or overlay several, from their results.csv."""
    from rmp_cli.report.plot import plot_runs

    for path in plot_runs(list(run_dirs), out):
        click.echo(str(path))


@main.command()
@click.argument("run_a", type=click.Path(path_type=Path))
@click.argument("run_b", type=click.Path(path_type=Path))
@click.option(
    "--confidence",
    type=float,
    default=0.95,
    show_default=True,
    help="Level of the intervals of the differences.",
)
@friendly_errors
def compare(run_a: Path, run_b: Path, confidence: float) -> None:
    """Paired test of two finished runs on the same test images (from their predictions.npz):
    per matching grid point and T, both accuracies, A - B with its interval, and p."""
    from rmp_cli.report.compare import compare_runs

    click.echo(compare_runs(run_a, run_b, confidence), nl=False)


@main.command("unpack-cifar10")
@click.argument("archive_dir", type=click.Path(path_type=Path))
@click.argument("dest", type=click.Path(path_type=Path))
@friendly_errors
def unpack_cifar10(archive_dir: Path, dest: Path) -> None:
    """Verify ARCHIVE_DIR/{train,test}.tar.xz against its SHA256SUMS and unpack them into
    DEST/train and DEST/test (the image-folder form: dataset=cifar10 dataset.root=DEST)."""
    from rmp_cli.data import unpack_cifar10_archives

    click.echo(str(unpack_cifar10_archives(archive_dir, dest)))


if __name__ == "__main__":  # pragma: no cover
    main()

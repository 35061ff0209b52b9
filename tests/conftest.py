"""Shared fixtures: run the real `rmp` CLI in a subprocess inside a temporary working directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# Fuzzing (tests/test_fuzz_readers.py): the default profile is bounded and reproducible (the
# same examples on every run), so the fuzz suite stays within the test budget on 2 cores; the
# `slow`-marked deep tests use "deep". HYPOTHESIS_PROFILE=deep makes every fuzz test deep,
# HYPOTHESIS_PROFILE=random draws new examples on each run (for hunting, not for CI).
_FUZZ = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}
settings.register_profile("ci", max_examples=30, derandomize=True, database=None, **_FUZZ)
settings.register_profile("deep", max_examples=300, derandomize=True, database=None, **_FUZZ)
settings.register_profile("random", max_examples=300, **_FUZZ)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Small, fast settings for end-to-end runs on the bundled digits data.
FAST_TRAIN = ["train.epochs=3", "threads=1"]


def run_rmp(
    cwd: Path, *args: str, check: bool = True, timeout: float = 600
) -> subprocess.CompletedProcess:
    """Run `rmp ARGS` with CI=true (quiet) in cwd; check=True turns a failure into its stderr."""
    env = {**os.environ, "CI": "true", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "rmp_cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"rmp {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
        )
    return proc


@pytest.fixture(autouse=True, scope="session")
def _sigint_delivered() -> None:
    """A suite started in the background by a non-interactive shell inherits SIGINT ignored
    (POSIX job control), and so would every rmp it starts, which then rightly ignores Ctrl-C;
    the Ctrl-C tests need the signal delivered, as in a terminal."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def rmp(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess]:
    """rmp(*args) -> CompletedProcess, run in tmp_path."""
    return lambda *args, **kw: run_rmp(tmp_path, *args, **kw)


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A digits ANN checkpoint (8 epochs), trained once and shared by the CLI test modules;
    they only read it."""
    cwd = tmp_path_factory.mktemp("ann")
    run = cwd / last_line(run_rmp(cwd, "train", *FAST_TRAIN, "train.epochs=8"))
    return run / "model.pt"


def last_line(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout.strip().splitlines()[-1]


def assert_clean_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    """Bad input: non-zero exit, one 'rmp: error:' line, no traceback."""
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("rmp: error:")]
    assert len(errors) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]

"""Experiment tracking: the `logger` config group's trackers behind one small interface.

base.py is the interface (Tracker) a logger of your own subclasses; mlflow_tracker.py,
tensorboard_tracker.py and multi.py are rmp's own; build.py instantiates the configured one;
session.py is what a run logs through them and the guard that keeps their faults out of the
run. Imports errors, config and runs only; the commands call it.
"""

from rmp_cli.tracking.base import RunInfo, Tracker
from rmp_cli.tracking.build import build_tracking
from rmp_cli.tracking.session import Tracking

__all__ = ["RunInfo", "Tracker", "Tracking", "build_tracking"]

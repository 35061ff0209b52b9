"""Run infrastructure: run directories and logging (rundir.py), atomic writes (atomic.py),
signals (signals.py), torchrun ranks (ranks.py, distributed.py) and runtime knobs (runtime.py:
threads, seeds, device, progress bars).

Imports nothing of rmp but errors and the version: every other package may lean on it.
"""

"""What `rmp train|convert|sweep` do, step by step: the one layer that joins the others.

train.py, convert.py and sweep.py are the commands; pipeline.py what convert and sweep share
(checkpoint -> conversion -> simulation of the test set); grid.py the sweep's grid and
time-steps; run_state.py its manifest and lock; resume.py what a resume reads before it
writes; stopping.py how a stopped or failed command
ends; tracked.py what a run gives its trackers (logger=...). Imports runs/, training/,
convert/, snn/, report/, data/, models/ and tracking/; nothing imports it but the faces (cli.py,
app.py).
"""

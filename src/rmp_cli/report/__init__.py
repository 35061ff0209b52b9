"""What a run tells: results tables and headlines (results.py), figures (plot.py, layer_plot.py,
written through figures.py), per-layer tables (layer_report.py), energy prices (energy.py), and
uncertainty: per-image predictions (predictions.py), intervals and paired tests (stats.py), the
headlines they decide (paired.py), spread over seeds (seeds.py) and `rmp compare` (compare.py).

Reads tables, counts and predictions only: imports runs/ for atomic writes, nothing of snn/ or
convert/.
"""

"""What a run tells: results tables and headlines (results.py), figures (plot.py, layer_plot.py,
written through figures.py), per-layer tables (layer_report.py) and energy prices (energy.py).

Reads tables and counts only: imports runs/ for atomic writes, nothing of snn/ or convert/.
"""

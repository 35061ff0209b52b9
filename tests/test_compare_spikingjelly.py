"""The SpikingJelly comparison script: with one calibration batch its converter must pick the same
thresholds as rmp's max_act / percentile balancing, and score the same images correct."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from rmp_cli.convert import balance_thresholds, to_spiking
from rmp_cli.snn import simulate
from tests import snn_nets

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "compare_spikingjelly.py"


def load_script():
    spec = importlib.util.spec_from_file_location("compare_spikingjelly", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("mode", "method", "pct", "rel"),
    # torch.quantile interpolates between ranks, rmp takes the exact nearest rank: close, not equal.
    [("Max", "max_act", 100.0, 1e-6), ("99.9%", "percentile", 99.9, 2e-2)],
)
def test_same_thresholds_and_scores_as_rmp(mode: str, method: str, pct: float, rel: float) -> None:
    pytest.importorskip("spikingjelly")
    compare = load_script()
    ann = snn_nets.kaiming(snn_nets.make("vgg"), seed=0)  # predictions vary with the input
    calib = snn_nets.images(32, seed=3)
    sj = compare.sj_convert(ann, calib, mode, calib_batch=len(calib))
    net = to_spiking(ann, reset="soft")
    balance_thresholds(net, ann, calib, method=method, percentile=pct)
    ours = [float(t) for t in net.thresholds]
    assert compare.sj_thresholds(sj) == pytest.approx(ours, rel=rel)

    x = snn_nets.images(24, seed=5)
    with torch.no_grad():
        y = ann(x).argmax(1)  # "correct" = agrees with the ANN: climbs with T (0 -> 24 here)
    steps = [4, 16, 48]
    sj_correct = compare.sj_correct(sj, [(x, y)], steps)
    ours_correct = simulate(net, [(x, y)], steps, topk=(1,)).correct[1]
    # Same thresholds, folded BN computed in a different order: at most one image may flip.
    assert all(abs(a - b) <= 1 for a, b in zip(sj_correct, ours_correct, strict=True))
    if mode == "Max":
        assert sj_correct == ours_correct

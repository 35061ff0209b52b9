"""The spiking engine: IF neurons, encodings, the converted network and the simulator.

Takes tensors, modules and plain arguments only (no config, CLI or data loading), so it can be
tested, benchmarked and used from a notebook on its own.
"""

from rmp_cli.snn.encoding import ENCODINGS, poisson_spikes
from rmp_cli.snn.network import SpikingNet
from rmp_cli.snn.neurons import RESETS, IFNeuron, hard_reset, soft_reset
from rmp_cli.snn.probes import LayerProbe, LayerStats
from rmp_cli.snn.simulator import (
    READOUTS,
    BatchTrace,
    ChunkedRun,
    SimResult,
    StopForward,
    run_batch,
    simulate,
)

__all__ = [
    "ENCODINGS",
    "READOUTS",
    "RESETS",
    "BatchTrace",
    "ChunkedRun",
    "IFNeuron",
    "LayerProbe",
    "LayerStats",
    "SimResult",
    "SpikingNet",
    "StopForward",
    "hard_reset",
    "poisson_spikes",
    "run_batch",
    "simulate",
    "soft_reset",
]

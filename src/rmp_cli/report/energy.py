"""Energy estimates from the operation counts a simulation produces (the field's convention).

    E_ANN = E_MAC x (multiply-accumulates of every conv/linear layer)
    E_SNN = E_MAC x (multiply-accumulates of the analog layers, run once per image under direct
            input) + E_AC x (synaptic operations: spikes x true fan-out, each an accumulate;
            a burst of k spikes is k of them, a negative spike one; pre-steps included)
Per-operation costs come from the config (`energy.ac_pj`, `energy.mac_pj`; defaults: 32-bit
float, 45 nm, Horowitz ISSCC 2014). Neuron updates (one add per neuron and step) are not counted,
as in the papers these numbers are compared with.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rmp_cli.errors import RmpError


@dataclass(frozen=True)
class EnergyCosts:
    ac_pj: float = 0.9  # 32-bit float add, 45 nm
    mac_pj: float = 4.6  # 32-bit float multiply-add, 45 nm

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> EnergyCosts:
        cfg = cfg or {}
        values = {}
        for key, default in (("ac_pj", 0.9), ("mac_pj", 4.6)):
            value = cfg.get(key, default)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise RmpError(f"energy.{key} must be a positive number (pJ), got {value!r}")
            if not (math.isfinite(value) and value > 0):
                raise RmpError(f"energy.{key} must be a positive number (pJ), got {value!r}")
            values[key] = float(value)
        return cls(**values)

    def snn_pj(self, synops: float, analog_macs: float) -> float:
        return self.ac_pj * synops + self.mac_pj * analog_macs

    def ann_pj(self, ann_macs: float) -> float:
        return self.mac_pj * ann_macs

    def ratio(self, synops: float, analog_macs: float, ann_macs: float) -> float:
        """SNN energy / ANN energy per image (NaN when the ANN count is unknown)."""
        if not ann_macs or not math.isfinite(ann_macs):
            return math.nan
        return self.snn_pj(synops, analog_macs) / self.ann_pj(ann_macs)

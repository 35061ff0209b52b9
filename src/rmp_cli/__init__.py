"""rmp: ANN-to-SNN conversion experiments (soft/RMP vs hard reset) from one CLI."""

__version__ = "0.1.0"

"""ANN -> SNN conversion: BatchNorm folding, neuron replacement and threshold balancing."""

from rmp_cli.convert.balance import BALANCE_METHODS, balance_thresholds
from rmp_cli.convert.bn_fold import fold_batchnorm
from rmp_cli.convert.converter import to_spiking

__all__ = ["BALANCE_METHODS", "balance_thresholds", "fold_batchnorm", "to_spiking"]

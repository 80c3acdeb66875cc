"""Losses of the three SCAN stages."""

from losses.losses import (
    ConfidenceBasedCE,
    NoConfidentSamplesError,
    PerClusterConfidenceCE,
    SCANLoss,
    SimCLRLoss,
    entropy,
    pseudo_labels,
)

__all__ = [
    "ConfidenceBasedCE",
    "NoConfidentSamplesError",
    "PerClusterConfidenceCE",
    "SCANLoss",
    "SimCLRLoss",
    "entropy",
    "pseudo_labels",
]

"""Losses of the three SCAN stages."""

from losses.losses import (
    CRITERIA,
    ConfidenceBasedCE,
    NoConfidentSamplesError,
    SCANLoss,
    SimCLRLoss,
    entropy,
    make_criterion,
    pseudo_labels,
)

__all__ = [
    "CRITERIA",
    "ConfidenceBasedCE",
    "NoConfidentSamplesError",
    "SCANLoss",
    "SimCLRLoss",
    "entropy",
    "make_criterion",
    "pseudo_labels",
]

"""Losses of the three SCAN stages."""

from losses.losses import ConfidenceBasedCE, NoConfidentSamplesError, SCANLoss, SimCLRLoss, entropy

__all__ = ["ConfidenceBasedCE", "NoConfidentSamplesError", "SCANLoss", "SimCLRLoss", "entropy"]

"""Losses of the three SCAN stages (losses/losses.py)."""

from losses.losses import *  # noqa: F403

"""Optimizer, learning-rate schedule and parameter EMA, configured as in the original."""

from __future__ import annotations

import math

import torch


def build_optimizer(cfg: dict, model: torch.nn.Module) -> torch.optim.Optimizer:
    """SGD or Adam over all parameters, or over the cluster heads only when the backbone is frozen. Build it after the
    model is on its device: parameters on CUDA get the fused implementation."""
    if cfg.get("update_cluster_head_only", False):
        params = [p for name, p in model.named_parameters() if "cluster_head" in name]
        for name, p in model.named_parameters():
            p.requires_grad = "cluster_head" in name
    else:
        params = list(model.parameters())
    kwargs = dict(cfg.get("optimizer_kwargs") or {})
    if params and all(p.is_cuda for p in params):
        # On CUDA one fused kernel updates every parameter (the same update, far fewer launches); elsewhere
        # PyTorch's default (the multi-tensor foreach implementation where supported).
        kwargs.setdefault("fused", True)
    return (torch.optim.SGD if cfg["optimizer"] == "sgd" else torch.optim.Adam)(params, **kwargs)


def learning_rate(cfg: dict, epoch: int) -> float:
    """The epoch's learning rate: cosine to lr·decay³ (optionally ramped up linearly over its first `warmup_epochs`,
    which keeps a large SimCLR learning rate from collapsing a fresh network onto one point), step decay, or
    constant."""
    lr = cfg["optimizer_kwargs"]["lr"]
    scheduler, kwargs = cfg["scheduler"], cfg.get("scheduler_kwargs") or {}
    if scheduler == "cosine":
        eta_min = lr * kwargs["lr_decay_rate"] ** 3
        ramp = min(1.0, (epoch + 1) / max(1, kwargs.get("warmup_epochs", 0)))
        return ramp * (eta_min + (lr - eta_min) * (1 + math.cos(math.pi * epoch / cfg["epochs"])) / 2)
    if scheduler == "step":
        steps = sum(epoch > milestone for milestone in kwargs["lr_decay_epochs"])
        return lr * kwargs["lr_decay_rate"] ** steps
    return lr  # constant


def adjust_learning_rate(cfg: dict, optimizer: torch.optim.Optimizer, epoch: int) -> float:
    """Set the epoch's learning rate on every parameter group (called at the start of each epoch)."""
    lr = learning_rate(cfg, epoch)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


class EMA:
    """Exponential moving average of the parameters, written back into the model after each step. The model itself
    carries the averaged weights (as in SCAN's ImageNet self-labeling), so evaluation and checkpoints need nothing
    extra."""

    def __init__(self, model: torch.nn.Module, alpha: float = 0.999) -> None:
        self.alpha = alpha
        self.shadow = {name: p.detach().clone() for name, p in model.named_parameters()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for name, p in model.named_parameters():
            self.shadow[name].mul_(self.alpha).add_(p.detach(), alpha=1 - self.alpha)
            p.copy_(self.shadow[name])

"""utils/optim.py: the learning-rate schedules and the EMA of self-labeling."""

from __future__ import annotations

import math

import pytest
import torch

from utils.optim import EMA, learning_rate


def test_cosine_schedule_matches_the_formula():
    cfg = {
        "optimizer_kwargs": {"lr": 0.4},
        "scheduler": "cosine",
        "scheduler_kwargs": {"lr_decay_rate": 0.1},
        "epochs": 500,
    }
    eta_min = 0.4 * 0.1**3
    assert learning_rate(cfg, 0) == pytest.approx(0.4)
    assert learning_rate(cfg, 250) == pytest.approx(eta_min + (0.4 - eta_min) / 2)
    assert learning_rate(cfg, 499) == pytest.approx(eta_min + (0.4 - eta_min) * (1 + math.cos(math.pi * 499 / 500)) / 2)
    assert learning_rate({**cfg, "scheduler": "constant"}, 300) == 0.4


def test_a_cosine_warmup_ramps_the_first_epochs_linearly_and_leaves_the_rest_alone():
    cfg = {
        "optimizer_kwargs": {"lr": 0.4},
        "scheduler": "cosine",
        "scheduler_kwargs": {"lr_decay_rate": 0.1, "warmup_epochs": 4},
        "epochs": 100,
    }
    plain = {**cfg, "scheduler_kwargs": {"lr_decay_rate": 0.1}}
    cosine_at_1 = 0.4e-3 + (0.4 - 0.4e-3) * (1 + math.cos(math.pi / 100)) / 2
    assert learning_rate(cfg, 0) == pytest.approx(0.4 / 4)  # a quarter of the way up in the first of 4 epochs
    assert learning_rate(cfg, 1) == pytest.approx(cosine_at_1 * 2 / 4)
    assert [learning_rate(cfg, e) for e in (3, 50, 99)] == [learning_rate(plain, e) for e in (3, 50, 99)]


def test_ema_moves_weights_toward_the_new_value():
    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.constant_(model.weight, 1.0)
    ema = EMA(model, alpha=0.9)
    with torch.no_grad():
        model.weight.fill_(2.0)  # as if an optimizer step moved it
    ema.update(model)
    assert model.weight.item() == pytest.approx(0.9 * 1.0 + 0.1 * 2.0)


class TinyNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(2, 2)
        self.bn = torch.nn.BatchNorm1d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.linear(x))


def test_ema_averages_parameters_writes_them_back_every_step_and_leaves_batchnorm_buffers_alone():
    torch.manual_seed(0)
    model = TinyNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ema = EMA(model, alpha=0.9)
    shadow = {name: p.detach().clone() for name, p in model.named_parameters()}
    for step in range(3):
        x = torch.randn(8, 2) + step
        optimizer.zero_grad()
        model(x).pow(2).sum().backward()
        optimizer.step()
        stepped = {name: p.detach().clone() for name, p in model.named_parameters()}
        running_mean = model.bn.running_mean.clone()
        ema.update(model)
        for name, p in model.named_parameters():
            shadow[name] = 0.9 * shadow[name] + 0.1 * stepped[name]
            torch.testing.assert_close(p.detach(), shadow[name])  # written back into the model, every step
        # BatchNorm running statistics keep what the training step gave them: not averaged, not reset.
        assert torch.equal(model.bn.running_mean, running_mean)
        assert model.bn.num_batches_tracked.item() == step + 1

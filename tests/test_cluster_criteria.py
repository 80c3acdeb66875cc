"""engine/cluster_criteria.py: scan_evaluate, the label-free score that selects the SCAN head."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from engine.cluster_criteria import scan_evaluate


def test_scan_evaluate_picks_confident_consistent_head():
    neighbors = torch.tensor([[0, 1], [1, 0], [2, 3], [3, 2]])
    uniform = torch.full((4, 2), 0.5)
    confident = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    collapsed = torch.tensor([[1.0, 0.0]] * 4)
    heads = [{"probabilities": p, "neighbors": neighbors} for p in (uniform, confident, collapsed)]
    result = scan_evaluate(heads)
    uniform_s, confident_s, collapsed_s = result["scan"]

    assert uniform_s["entropy"] == pytest.approx(math.log(2))
    assert uniform_s["consistency"] == pytest.approx(math.log(2))  # −log 0.5
    assert uniform_s["total_loss"] == pytest.approx(0.0, abs=1e-6)
    assert confident_s["entropy"] == pytest.approx(math.log(2))
    assert confident_s["consistency"] == pytest.approx(0.0)
    assert confident_s["total_loss"] == pytest.approx(-math.log(2))
    collapsed_entropy = -1e-8 * math.log(1e-8)  # p̄ = [1, 0] clamped to [1, 1e-8]
    assert collapsed_s["entropy"] == pytest.approx(collapsed_entropy, rel=1e-3)
    assert collapsed_s["consistency"] == pytest.approx(0.0)
    assert result["lowest_loss_head"] == 1
    assert type(result["lowest_loss_head"]) is int
    assert result["lowest_loss"] == pytest.approx(-math.log(2))


def test_scan_evaluate_clamps_log_at_minus_100_and_uses_all_columns():
    # Column 0 (self) has similarity 1, column 1 an orthogonal neighbour (similarity 0 → BCE 100).
    probs = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    neighbors = torch.tensor([[0, 1], [1, 0]])
    result = scan_evaluate([{"probabilities": probs, "neighbors": neighbors}])
    assert result["scan"][0]["consistency"] == pytest.approx(50.0)
    assert result["scan"][0]["total_loss"] == pytest.approx(50.0 - math.log(2))


def test_scan_evaluate_matches_dense_computation():
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(50, 7) * 3, dim=1)
    neighbors = torch.cat([torch.arange(50)[:, None], torch.randint(0, 50, (50, 4))], dim=1)
    result = scan_evaluate([{"probabilities": probs, "neighbors": neighbors}])
    dense = (probs @ probs.T)[torch.arange(50)[:, None].expand_as(neighbors).reshape(-1), neighbors.reshape(-1)]
    expected = F.binary_cross_entropy(dense, torch.ones_like(dense)).item()
    assert result["scan"][0]["consistency"] == pytest.approx(expected, rel=1e-5)
    p_bar = probs.mean(0)
    assert result["scan"][0]["entropy"] == pytest.approx(-(p_bar * p_bar.log()).sum().item(), rel=1e-6)

"""Unequal clusters: the SCAN loss with a target prior on the cluster sizes, and the digits with a class thinned out."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from data.digits import Digits
from losses import SCANLoss


def logits_pair(seed: int = 0, n: int = 16, k: int = 4):
    torch.manual_seed(seed)
    return torch.randn(n, k, requires_grad=True), torch.randn(n, k)


def test_without_a_prior_the_loss_is_the_papers():
    anchors, neighbors = logits_pair()
    total, consistency, entropy_term = SCANLoss(5.0, target_prior=None)(anchors, neighbors)
    p = torch.softmax(anchors, 1)
    expected_consistency = -torch.log((p * torch.softmax(neighbors, 1)).sum(1)).mean()
    mean = p.mean(0)
    expected_entropy = -(mean * mean.log()).sum()
    assert consistency.item() == pytest.approx(expected_consistency.item(), rel=1e-6)
    assert entropy_term.item() == pytest.approx(expected_entropy.item(), rel=1e-6)
    assert total.item() == pytest.approx((expected_consistency - 5.0 * expected_entropy).item(), rel=1e-6)


def test_a_uniform_prior_shifts_the_loss_by_a_constant_and_keeps_the_gradients():
    k, weight = 4, 5.0
    gradients = []
    totals = []
    for prior in (None, [1.0] * k):
        anchors, neighbors = logits_pair()
        total = SCANLoss(weight, target_prior=prior)(anchors, neighbors)[0]
        total.backward()
        totals.append(total.item())
        gradients.append(anchors.grad)
    # KL(p̄ ‖ uniform) = log K − H(p̄): the prior's loss is the paper's plus weight × log K.
    assert totals[1] == pytest.approx(totals[0] + weight * math.log(k), rel=1e-5)
    torch.testing.assert_close(gradients[0], gradients[1], rtol=1e-4, atol=1e-6)


def test_the_prior_matches_cluster_sizes_whatever_cluster_is_which():
    # Mean predictions (0.7, 0.1, 0.2) against the prior sizes (1, 2, 7): sorted, both are (0.7, 0.2, 0.1).
    one_hot_rows = torch.log(torch.tensor([[1e-9, 1e-9, 1.0]] * 2 + [[1e-9, 1.0, 1e-9]] + [[1.0, 1e-9, 1e-9]] * 7))
    loss = SCANLoss(1.0, target_prior=[1, 2, 7])
    _, _, prior_term = loss(one_hot_rows, one_hot_rows)
    assert prior_term.item() == pytest.approx(0.0, abs=1e-6)  # the sizes match the prior: no divergence
    # Equal sizes (1/3 each) against the sorted prior (0.7, 0.2, 0.1): −KL computed by hand.
    balanced = torch.log(torch.eye(3).repeat(4, 1) + 1e-9)
    expected = sum(1 / 3 * math.log((1 / 3) / q) for q in (0.7, 0.2, 0.1))
    assert loss(balanced, balanced)[2].item() == pytest.approx(-expected, rel=1e-5)


def test_a_prior_of_the_wrong_length_or_sign_is_refused():
    with pytest.raises(ValueError, match="lists 3 cluster sizes but the model has 4"):
        SCANLoss(5.0, target_prior=[1, 1, 1])(*logits_pair())
    with pytest.raises(ValueError, match="one positive size per cluster"):
        SCANLoss(5.0, target_prior=[1, 0, 1, 1])


def test_digits_class_fraction_thins_out_one_class_in_both_splits():
    full_train, full_test = Digits(split="train"), Digits(split="test")
    train, test = Digits(split="train", class_fraction={3: 0.2}), Digits(split="test", class_fraction={3: 0.2})
    for full, thinned in ((full_train, train), (full_test, test)):
        full_counts, counts = np.bincount(full.targets), np.bincount(thinned.targets)
        assert counts[3] == round(0.2 * full_counts[3])
        assert np.array_equal(np.delete(counts, 3), np.delete(full_counts, 3))
        assert set(thinned.indices) <= set(full.indices)  # a subset of the same split
    assert Digits(split="train", class_fraction={3: 0.2}).indices == train.indices  # seeded: the same images
    with pytest.raises(ValueError, match="fraction in \\(0, 1\\]"):
        Digits(split="train", class_fraction={3: 0.0})

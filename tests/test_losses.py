"""Losses against hand-computed values and against a literal transcription of REFERENCE §2."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from losses import (
    ConfidenceBasedCE,
    NoConfidentSamplesError,
    SCANLoss,
    SimCLRLoss,
    make_criterion,
    pseudo_labels,
)
from utils.config import ConfigError


def test_simclr_loss_hand_computed():
    # Anchors (view 0) and positives (view 1); temperature 0.5.
    a0, a1, p0, p1 = [1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.8, 0.6]
    features = torch.tensor([[a0, p0], [a1, p1]])
    # Anchor 0: contrast dots (a0, a1, p0, p1) = (self, 0, 0.6, 0.8) / 0.5 → positive logit 1.2.
    # Anchor 1: (0, self, 0.8, 0.6) / 0.5 → positive logit 1.2. Both rows: logsumexp over {0, 1.2, 1.6}.
    expected = -(1.2 - math.log(math.exp(0) + math.exp(1.2) + math.exp(1.6)))
    assert SimCLRLoss(0.5)(features).item() == pytest.approx(expected, rel=1e-6)


def simclr_reference(features: torch.Tensor, temperature: float) -> torch.Tensor:
    """REFERENCE §2 written out literally with masks (b anchors from view 1, self excluded)."""
    b = features.shape[0]
    contrast = torch.cat([features[:, 0], features[:, 1]], dim=0).double()
    anchors = features[:, 0].double()
    losses = []
    for i in range(b):
        logits = anchors[i] @ contrast.T / temperature
        keep = [j for j in range(2 * b) if j != i]
        log_denominator = torch.logsumexp(logits[keep], dim=0)
        losses.append(-(logits[b + i] - log_denominator))
    return torch.stack(losses).mean()


def test_simclr_loss_matches_literal_definition_and_is_not_symmetric_ntxent():
    torch.manual_seed(0)
    features = F.normalize(torch.randn(16, 2, 32), dim=2)
    loss = SimCLRLoss(0.1)(features)
    assert loss.item() == pytest.approx(simclr_reference(features, 0.1).item(), rel=1e-5)
    swapped = SimCLRLoss(0.1)(features.flip(1))  # anchors from view 1 instead: a different number
    assert abs(swapped.item() - loss.item()) > 1e-4


def test_simclr_loss_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r"\[b, 2, d\]"):
        SimCLRLoss(0.1)(torch.randn(4, 3, 8))


def test_scan_loss_hand_computed():
    ln3 = math.log(3)
    anchors = torch.tensor([[0.0, 0.0], [ln3, 0.0]])  # softmax: [.5, .5], [.75, .25]
    neighbors = torch.tensor([[0.0, ln3], [ln3, 0.0]])  # softmax: [.25, .75], [.75, .25]
    total, consistency, entropy = SCANLoss(entropy_weight=5.0)(anchors, neighbors)
    expected_consistency = -(math.log(0.5) + math.log(0.75**2 + 0.25**2)) / 2
    expected_entropy = -(0.625 * math.log(0.625) + 0.375 * math.log(0.375))  # of the mean [.625, .375]
    assert consistency.item() == pytest.approx(expected_consistency, rel=1e-6)
    assert entropy.item() == pytest.approx(expected_entropy, rel=1e-6)
    assert total.item() == pytest.approx(expected_consistency - 5.0 * expected_entropy, rel=1e-6)


def test_scan_loss_matches_bce_definition_on_random_input():
    torch.manual_seed(1)
    anchors, neighbors = torch.randn(64, 10) * 3, torch.randn(64, 10) * 3
    total, consistency, entropy = SCANLoss(2.0)(anchors, neighbors)
    pa, pn = anchors.softmax(1), neighbors.softmax(1)
    similarity = torch.bmm(pa.view(64, 1, 10), pn.view(64, 10, 1)).squeeze()
    bce = F.binary_cross_entropy(similarity.clamp(max=1.0), torch.ones_like(similarity))
    mean = pa.mean(0).clamp(min=1e-8)
    assert consistency.item() == pytest.approx(bce.item(), rel=1e-5)
    assert entropy.item() == pytest.approx(-(mean * mean.log()).sum().item(), rel=1e-6)
    assert total.item() == pytest.approx(bce.item() - 2.0 * entropy.item(), rel=1e-5)


def test_scan_loss_empty_cluster_gives_finite_entropy():
    anchors = torch.tensor([[50.0, 0.0, -50.0]] * 4)  # third cluster never used
    total, _, entropy = SCANLoss()(anchors, anchors)
    assert torch.isfinite(total) and entropy.item() == pytest.approx(0.0, abs=1e-5)


def test_confidence_ce_with_class_balancing_hand_computed():
    big = 10.0  # softmax of [10, 0, 0] has max prob 0.99991 > 0.99
    weak = torch.tensor([[big, 0, 0], [big, 0, 0], [0, big, 0], [0, 0, 0.5]])  # last one not confident
    strong = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 2.0], [3.0, 0, 0]])
    loss = ConfidenceBasedCE(threshold=0.99, apply_class_balancing=True)(weak, strong)

    def nll(logits, target):
        return -(logits[target] - math.log(sum(math.exp(v) for v in logits)))

    # Confident targets [0, 0, 1], n = 3 → weights: class 0: 3/2, class 1: 3/1, class 2 (absent): 1.
    w = {0: 1.5, 1: 3.0}
    terms = [(w[0], nll([1.0, 0, 0], 0)), (w[0], nll([0, 1.0, 0], 0)), (w[1], nll([0, 0, 2.0], 1))]
    expected = sum(wi * li for wi, li in terms) / sum(wi for wi, _ in terms)
    assert loss.item() == pytest.approx(expected, rel=1e-6)

    unbalanced = ConfidenceBasedCE(threshold=0.99, apply_class_balancing=False)(weak, strong)
    assert unbalanced.item() == pytest.approx(sum(li for _, li in terms) / 3, rel=1e-6)


def test_confidence_threshold_is_strict_and_no_gradient_flows_to_weak_view():
    weak = torch.tensor([[math.log(99.0), 0.0]])
    max_prob = weak.softmax(1).max().item()  # 0.99 up to float rounding
    with pytest.raises(NoConfidentSamplesError, match="confidence_threshold"):
        ConfidenceBasedCE(max_prob, True)(weak, torch.zeros(1, 2))  # equal is not above
    weak = torch.tensor([[8.0, 0.0]], requires_grad=True)
    strong = torch.tensor([[0.0, 1.0]], requires_grad=True)
    ConfidenceBasedCE(0.99, True)(weak, strong).backward()
    assert weak.grad is None and strong.grad is not None


# ---------------------------------------------------------------- mixed precision


def _bf16_inputs(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    features = torch.nn.functional.normalize(torch.randn(16, 2, 32, generator=generator), dim=2).bfloat16()
    logits = (3 * torch.randn(16, 10, generator=generator)).bfloat16()
    neighbors = (3 * torch.randn(16, 10, generator=generator)).bfloat16()
    return features, logits, neighbors


def _all_losses(features, logits, neighbors) -> list[torch.Tensor]:
    return [
        SimCLRLoss(0.1)(features),
        *SCANLoss(5.0)(logits, neighbors),
        ConfidenceBasedCE(0.3, apply_class_balancing=True)(logits, neighbors),
        ConfidenceBasedCE(0.9, apply_class_balancing=True, fraction=0.5)(logits, neighbors),
    ]


def test_losses_on_bfloat16_inputs_equal_the_float32_computation_on_the_same_values():
    """The amp claim of docs/scaling.md: the network may run in bf16, the losses never do."""
    features, logits, neighbors = _bf16_inputs()
    from_bf16 = _all_losses(features, logits, neighbors)
    from_fp32 = _all_losses(features.float(), logits.float(), neighbors.float())
    for low, full in zip(from_bf16, from_fp32):
        assert low.dtype == torch.float32
        assert torch.equal(low, full)


def test_losses_inside_an_autocast_region_still_compute_in_float32():
    """A loss called inside `torch.autocast` must not have its matmuls and softmaxes downcast."""
    features, logits, neighbors = (x.float() for x in _bf16_inputs(1))
    outside = _all_losses(features, logits, neighbors)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        inside = _all_losses(features, logits, neighbors)
    for a, b in zip(inside, outside):
        assert a.dtype == torch.float32
        assert torch.equal(a, b)


def test_entropy_of_a_vector_with_an_exact_zero_is_finite():
    from losses.losses import entropy

    assert entropy(torch.tensor([0.5, 0.5, 0.0])).item() == pytest.approx(math.log(2), abs=1e-6)
    assert entropy(torch.tensor([0.25] * 4)).item() == pytest.approx(math.log(4), rel=1e-6)


def test_scan_loss_default_entropy_weight_is_the_papers():
    assert SCANLoss().entropy_weight == 5.0  # REFERENCE §5: w = 5.0 in every SCAN config


def test_scan_consistency_clamps_the_log_at_minus_100_like_bce():
    # Anchor certain of cluster 0, neighbour certain of cluster 1: the similarity underflows to 0 in float32.
    anchors = torch.tensor([[200.0, -200.0], [-200.0, 200.0]])
    neighbors = torch.tensor([[-200.0, 200.0], [-200.0, 200.0]])
    total, consistency, entropy_loss = SCANLoss(entropy_weight=0.0)(anchors, neighbors)
    # Row 0: -log(0) clamped to 100; row 1: -log(1) = 0. Mean 50, as torch's BCE gives.
    assert consistency.item() == pytest.approx(50.0)
    bce = F.binary_cross_entropy(torch.tensor([0.0, 1.0]), torch.ones(2))
    assert consistency.item() == pytest.approx(bce.item()) and total.item() == pytest.approx(50.0)


def test_confidence_mask_and_targets_come_from_the_float32_softmax():
    """Many rows sit near the 0.99 threshold, where a bf16 softmax would flip which of them pass."""
    generator = torch.Generator().manual_seed(3)
    # bf16 logits are coarse (steps of 1/32 near 5), so every column varies: thousands of distinct max probabilities.
    weak = 0.3 * torch.randn(2000, 4, generator=generator)
    weak[:, 0] += 5.6  # max prob spans about 0.98 to 0.996
    weak = weak.bfloat16()
    strong = torch.randn(2000, 4, generator=generator).bfloat16()
    max_prob = weak.float().softmax(dim=1).max(dim=1).values
    assert 100 < (max_prob > 0.99).sum() < 1900  # the case really straddles the threshold
    for balancing in (False, True):
        criterion = ConfidenceBasedCE(0.99, apply_class_balancing=balancing)
        expected = F.cross_entropy(
            strong.float()[max_prob > 0.99], torch.zeros(int((max_prob > 0.99).sum()), dtype=torch.long)
        )
        loss = criterion(weak, strong)
        assert loss.dtype == torch.float32
        assert torch.equal(loss, criterion(weak.float(), strong.float()))
        assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


# Seven samples, three clusters (argmax). Cluster 0: confidences 0.995, 0.9, 0.8; cluster 1: 0.7, 0.6;
# cluster 2: 0.5, 0.5 (a tie).
SEVEN = torch.tensor(
    [
        [0.995, 0.004, 0.001],
        [0.9, 0.05, 0.05],
        [0.8, 0.1, 0.1],
        [0.2, 0.7, 0.1],
        [0.3, 0.6, 0.1],
        [0.25, 0.25, 0.5],
        [0.3, 0.2, 0.5],
    ]
)


def test_threshold_pseudo_labels_are_the_strictly_confident_argmax():
    target, mask = pseudo_labels(SEVEN, threshold=0.9)
    assert target.tolist() == [0, 0, 0, 1, 1, 2, 2]
    assert mask.tolist() == [True, False, False, False, False, False, False]  # 0.9 is not above 0.9


def test_per_cluster_pseudo_labels_give_every_cluster_its_most_confident_share():
    # fraction 0.5 → shares ceil(1.5) = 2, ceil(1.0) = 1, ceil(1.0) = 1: cluster 0 keeps 0.995 and 0.9,
    # cluster 1 keeps 0.7, cluster 2's share of one is a tie at 0.5, so both are kept.
    _, mask = pseudo_labels(SEVEN, threshold=0.99, per_cluster_fraction=0.5)
    assert mask.tolist() == [True, True, False, True, False, True, True]
    # A small share never drops a sample above the threshold: cluster 0's share is ceil(0.3) = 1 sample,
    # and both samples above 0.85 stay.
    _, mask = pseudo_labels(SEVEN, threshold=0.85, per_cluster_fraction=0.1)
    assert mask.tolist() == [True, True, False, True, False, True, True]
    _, mask = pseudo_labels(SEVEN, threshold=0.99, per_cluster_fraction=1.0)
    assert mask.all()


def test_per_cluster_confidence_ce_hand_computed():
    # Weak view: cluster 0 has two members (softmax maxima 0.99991 and 0.731), cluster 1 one (0.576);
    # nobody in cluster 1 is above 0.99, so the threshold rule would give it no target.
    weak = torch.tensor([[10.0, 0.0], [1.0, 0.0], [0.0, 0.3]])
    strong = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])

    def nll(logits, target):
        return -(logits[target] - math.log(sum(math.exp(v) for v in logits)))

    # fraction 0.5: shares ceil(1.0) = 1 (cluster 0: the 0.99991 sample) and ceil(0.5) = 1 (cluster 1: its one).
    # Targets [0, 1], n = 2 → class weights 2/1 each, so the weighted mean is the plain mean.
    loss = ConfidenceBasedCE(0.99, apply_class_balancing=True, fraction=0.5)(weak, strong)
    assert loss.item() == pytest.approx((nll([1.0, 0.0], 0) + nll([3.0, 0.0], 1)) / 2, rel=1e-6)
    # fraction 1: all three, targets [0, 0, 1] → weights 3/2, 3/2, 3/1.
    loss = ConfidenceBasedCE(0.99, apply_class_balancing=True, fraction=1.0)(weak, strong)
    terms = [(1.5, nll([1.0, 0.0], 0)), (1.5, nll([0.0, 2.0], 0)), (3.0, nll([3.0, 0.0], 1))]
    assert loss.item() == pytest.approx(sum(w * v for w, v in terms) / sum(w for w, _ in terms), rel=1e-6)
    unbalanced = ConfidenceBasedCE(0.99, apply_class_balancing=False, fraction=1.0)(weak, strong)
    assert unbalanced.item() == pytest.approx(sum(v for _, v in terms) / 3, rel=1e-6)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        ConfidenceBasedCE(0.99, True, fraction=0.0)


def test_per_cluster_ce_agrees_with_confidence_ce_when_every_cluster_is_confident():
    # Each cluster's share (fraction 0.5) lies above the threshold: both rules select the same targets.
    torch.manual_seed(0)
    weak = torch.tensor([[9.0, 0, 0], [8.0, 0, 0], [0, 9.0, 0], [0, 0, 9.0], [1.0, 0, 0]])
    strong = torch.randn(5, 3)
    expected = ConfidenceBasedCE(0.99, True)(weak, strong)
    assert ConfidenceBasedCE(0.99, True, fraction=0.5)(weak, strong).item() == pytest.approx(expected.item(), rel=1e-6)
    assert pseudo_labels(weak.softmax(1), 0.99)[1].tolist() == [True, True, True, True, False]


def test_criterion_builds_its_loss_and_refuses_what_the_stage_cannot_train():
    """`criterion:` goes through one registry: the class it names, its kwargs checked against that class."""
    cfg = {"criterion": "scan", "criterion_kwargs": {"entropy_weight": 2.0}}
    loss = make_criterion(cfg, "scan")
    assert type(loss) is SCANLoss and loss.entropy_weight == 2.0
    with pytest.raises(
        ConfigError, match="criterion: simclr cannot train this stage, which trains with criterion: scan"
    ):
        make_criterion({**cfg, "criterion": "simclr"}, "scan")
    with pytest.raises(
        ConfigError, match=r"builds SimCLRLoss\(temperature\); .*missing a required argument: 'temperature'"
    ):
        make_criterion({"criterion": "simclr", "criterion_kwargs": {}}, "simclr")
    with pytest.raises(ConfigError, match="unexpected keyword argument 'temprature'"):
        make_criterion({"criterion": "simclr", "criterion_kwargs": {"temperature": 0.1, "temprature": 0.1}}, "simclr")
    selflabel_cfg = {"criterion": "confidence-cross-entropy", "criterion_kwargs": {"apply_class_balancing": False}}
    loss = make_criterion(selflabel_cfg, "confidence-cross-entropy", threshold=0.9, fraction=0.5)
    assert (type(loss), loss.threshold, loss.fraction, loss.apply_class_balancing) == (
        ConfidenceBasedCE,
        0.9,
        0.5,
        False,
    )


def test_the_per_cluster_fraction_may_be_one_but_not_more_nor_zero():
    ConfidenceBasedCE(0.99, False, fraction=1.0)  # every member of every cluster: allowed
    ConfidenceBasedCE(0.99, False, fraction=0.01)  # one in a hundred: allowed too
    for fraction in (1.2, 0.0, -0.5):
        with pytest.raises(ValueError, match=r"\(0, 1\]"):
            ConfidenceBasedCE(0.99, False, fraction=fraction)


def test_a_target_prior_needs_two_sizes_and_two_are_enough():
    loss = SCANLoss(target_prior=[3.0, 1.0])
    assert torch.allclose(loss.target_prior, torch.tensor([0.75, 0.25]))
    for bad in ([1.0], [2.0, 0.0], [[1.0, 1.0]]):
        with pytest.raises(ValueError, match="one positive size per cluster"):
            SCANLoss(target_prior=bad)

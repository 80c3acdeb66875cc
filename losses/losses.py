"""The three SCAN losses (REFERENCE §2), computed in float32 (inputs cast, autocast off inside) so that bf16
activations or an enclosing autocast region cannot change them."""

from __future__ import annotations

import inspect

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.config import ConfigError

EPS = 1e-8


def full_precision(tensor: torch.Tensor):
    """A region where autocast does not downcast matmuls and softmaxes on `tensor`'s device."""
    return torch.autocast(device_type=tensor.device.type, enabled=False)


def entropy(probabilities: torch.Tensor) -> torch.Tensor:
    """Shannon entropy −Σ p log p of a probability vector; clamped at 1e-8 so empty clusters add 0, not NaN."""
    p = probabilities.clamp(min=EPS)
    return -(p * p.log()).sum()


class SimCLRLoss(nn.Module):
    """Contrastive loss with the first view as anchors and both views as the contrast set. features: [b, 2, d],
    L2-normalised. Anchor i (view 0) scores all 2b features but itself / temperature; its positive is view 1 of the same
    image. SCAN's variant (b anchors), not the symmetric 2b-anchor NT-Xent."""

    def __init__(self, temperature: float) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        b, n_views, _ = features.shape
        if n_views != 2:
            raise ValueError(f"SimCLRLoss expects features of shape [b, 2, d], got {tuple(features.shape)}.")
        with full_precision(features):
            features = features.float()
            anchors = features[:, 0]
            contrast = torch.cat([features[:, 0], features[:, 1]], dim=0)
            logits = anchors @ contrast.T / self.temperature
            index = torch.arange(b, device=features.device)
            logits[index, index] = float("-inf")
            return F.cross_entropy(logits, index + b)


class SCANLoss(nn.Module):
    """Consistency with a mined neighbour minus weighted entropy of the mean prediction: (total, consistency,
    entropy) scalars.

    The entropy pulls the clusters toward equal sizes. A `target_prior` (relative sizes, e.g. [5, 5, 5, 1])
    replaces it by −KL(sort(p̄) ‖ sort(prior)): sorted, so the prior says how large the clusters are, not which is
    which. A uniform prior gives the entropy minus log K (same gradients); no prior, the paper's loss.
    """

    def __init__(self, entropy_weight: float = 5.0, target_prior: list[float] | None = None) -> None:
        super().__init__()
        self.entropy_weight = entropy_weight
        self.target_prior = None
        if target_prior is not None:
            prior = torch.as_tensor(target_prior, dtype=torch.float32)
            if prior.ndim != 1 or prior.numel() < 2 or not (prior > 0).all():
                raise ValueError(f"target_prior must list one positive size per cluster, got {target_prior}.")
            self.target_prior = (prior / prior.sum()).sort(descending=True).values

    def forward(self, anchors: torch.Tensor, neighbors: torch.Tensor):
        with full_precision(anchors):
            return self._float32_forward(anchors, neighbors)

    def _float32_forward(self, anchors: torch.Tensor, neighbors: torch.Tensor):
        anchors_prob = F.softmax(anchors.float(), dim=1)
        neighbors_prob = F.softmax(neighbors.float(), dim=1)
        similarity = (anchors_prob * neighbors_prob).sum(dim=1)
        # Binary cross-entropy against 1, with BCE's clamp of the log at -100.
        consistency_loss = -similarity.log().clamp(min=-100).mean()
        if self.target_prior is None:
            entropy_loss = entropy(anchors_prob.mean(dim=0))
        else:
            entropy_loss = -prior_divergence(anchors_prob.mean(dim=0), self.target_prior.to(anchors.device))
        total_loss = consistency_loss - self.entropy_weight * entropy_loss
        return total_loss, consistency_loss, entropy_loss


def prior_divergence(mean_prob: torch.Tensor, sorted_prior: torch.Tensor) -> torch.Tensor:
    """KL(sort(p̄) ‖ prior) with both sorted by size: how far the cluster sizes are from the prior's, whatever
    cluster plays which part. Empty clusters contribute 0, as in entropy()."""
    if mean_prob.numel() != sorted_prior.numel():
        raise ValueError(
            f"target_prior lists {sorted_prior.numel()} cluster sizes but the model has {mean_prob.numel()} "
            "clusters: give one size per cluster (num_classes)."
        )
    p = mean_prob.sort(descending=True).values.clamp(min=EPS)
    return (p * (p.log() - sorted_prior.log())).sum()


class NoConfidentSamplesError(ValueError):
    """Raised when no sample of a batch passes the confidence threshold."""


def targets_cross_entropy(
    anchors_strong: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, apply_class_balancing: bool
) -> torch.Tensor:
    """Mean cross-entropy of the strong view's logits toward `target` on the `mask`ed samples. Class balancing weights
    class c (n_c of the n targets) by n / n_c (absent classes 1) in a mean-reduced CE: a rare cluster's targets count as
    much as a common one's."""
    target_masked = target[mask]
    weight = None
    if apply_class_balancing:
        classes, counts = torch.unique(target_masked, return_counts=True)
        weight = torch.ones(anchors_strong.shape[1], device=anchors_strong.device)
        weight[classes] = target_masked.numel() / counts.float()
    return F.cross_entropy(anchors_strong.float()[mask], target_masked, weight=weight, reduction="mean")


class ConfidenceBasedCE(nn.Module):
    """Self-labeling loss: cross-entropy on the strong view toward the weak view's pseudo-labels (`pseudo_labels`).
    Without `fraction` (the paper's `pseudo_labels: threshold`), at a high threshold a few confident clusters can supply
    all targets and absorb the others' samples until some clusters empty; with it (`per_cluster`) every predicted
    cluster gets its share."""

    def __init__(self, threshold: float, apply_class_balancing: bool, fraction: float | None = None) -> None:
        if fraction is not None and not 0.0 < fraction <= 1.0:
            raise ValueError(f"The per-cluster pseudo-label fraction must be in (0, 1], got {fraction}.")
        super().__init__()
        self.threshold, self.apply_class_balancing, self.fraction = threshold, apply_class_balancing, fraction

    def forward(self, anchors_weak: torch.Tensor, anchors_strong: torch.Tensor) -> torch.Tensor:
        with full_precision(anchors_weak):
            weak_prob = F.softmax(anchors_weak.detach().float(), dim=1)
            target, mask = pseudo_labels(weak_prob, self.threshold, self.fraction)
            if mask.any():
                return targets_cross_entropy(anchors_strong, target, mask, self.apply_class_balancing)
        if self.fraction is not None:  # only an empty batch selects nothing
            raise NoConfidentSamplesError("The batch is empty: no pseudo-labels to train on.")
        raise NoConfidentSamplesError(
            f"No sample in this batch has a max probability above the threshold {self.threshold}. "
            "Lower `confidence_threshold` in the self-label config or train the SCAN model longer."
        )


def pseudo_labels(
    probabilities: torch.Tensor, threshold: float, per_cluster_fraction: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(argmax cluster of every sample of `probabilities` [B, C], mask of the self-labeling targets). Targets: a max
    probability strictly above `threshold` (the paper). With `per_cluster_fraction`, each cluster c also gets its most
    confident ceil(fraction · n_c) of its n_c batch members, ties at the cut included: a per-cluster threshold
    min(threshold, q_c), so an unsure cluster still gets its share instead of none."""
    max_prob, target = probabilities.max(dim=1)
    mask = max_prob > threshold
    if per_cluster_fraction is None or max_prob.numel() == 0:
        return target, mask
    num_clusters = probabilities.shape[1]
    # Rank of every sample among its cluster's members, most confident first.
    order = torch.argsort(max_prob, descending=True, stable=True)
    members = F.one_hot(target[order], num_clusters)  # [B, C], sorted by confidence
    rank = (members.cumsum(dim=0) * members).sum(dim=1) - 1
    share = torch.ceil(per_cluster_fraction * members.sum(dim=0).double()).long()  # targets per cluster
    within_share = rank < share[target[order]]
    # q_c: the lowest confidence within cluster c's share (+inf for clusters without members).
    cut = torch.full((num_clusters,), float("inf"), dtype=max_prob.dtype, device=max_prob.device)
    cut.scatter_reduce_(0, target[order][within_share], max_prob[order][within_share], reduce="amin")
    return target, mask | (max_prob >= cut[target])


# A config's `criterion:` → the loss class it builds. Each stage trains with one of them (its training loop
# calls the loss its own way) and names it to make_criterion, so a config naming another is refused, not ignored.
CRITERIA: dict[str, type[nn.Module]] = {
    "simclr": SimCLRLoss,
    "scan": SCANLoss,
    "confidence-cross-entropy": ConfidenceBasedCE,
}


def make_criterion(cfg: dict, stage_criterion: str, **arguments) -> nn.Module:
    """The loss `cfg['criterion']` names, from `criterion_kwargs` plus the stage's own `arguments` (taken from
    other config keys), both checked against the class's parameters."""
    name = cfg["criterion"]
    if name != stage_criterion:
        raise ConfigError(
            f"criterion: {name} cannot train this stage, which trains with criterion: {stage_criterion} "
            f"({CRITERIA[stage_criterion].__name__}). Set criterion: {stage_criterion}."
        )
    loss_class, kwargs = CRITERIA[name], {**cfg["criterion_kwargs"], **arguments}
    try:
        inspect.signature(loss_class).bind(**kwargs)
    except TypeError as error:
        raise ConfigError(
            f"criterion: {name} builds {loss_class.__name__}({', '.join(inspect.signature(loss_class).parameters)}); "
            f"criterion_kwargs {cfg['criterion_kwargs']} do not fit it: {error}."
        ) from None
    return loss_class(**kwargs)

"""Label-free scores of a clustering against its mined neighbours, for head selection (scan.py, estimate_k.py),
the self-label watch (engine/cluster_watch.py) and the choice of K (engine/cluster_number.py)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from losses.losses import entropy

ArrayLike = torch.Tensor | np.ndarray


def _neighbor_similarities(probabilities: torch.Tensor, neighbors: torch.Tensor) -> torch.Tensor:
    """⟨P[i], P[neighbors[i, j]]⟩ as an [N, k] matrix, one column at a time: O(N·C) memory, unlike P·Pᵀ."""
    columns = [(probabilities * probabilities[neighbors[:, j]]).sum(dim=1) for j in range(neighbors.shape[1])]
    return torch.stack(columns, dim=1)


@torch.no_grad()
def scan_evaluate(head_outputs: list[dict]) -> dict:
    """SCAN loss of every head over the val neighbours (entropy weight 1), and the lowest: the clustering stage's
    head selection. Consistency: mean BCE against 1 over all N·k pairs, self included, anchor-major as the
    original; similarities clamped to [0, 1] (two one-hot rows can round a hair above 1, which BCE rejects)."""
    scores = []
    for head in head_outputs:
        probabilities = head["probabilities"].float()
        neighbors = head["neighbors"].long()
        entropy_loss = entropy(probabilities.mean(dim=0)).item()
        similarity = _neighbor_similarities(probabilities, neighbors).reshape(-1).clamp(0.0, 1.0)
        consistency_loss = F.binary_cross_entropy(similarity, torch.ones_like(similarity)).item()
        scores.append(
            {"entropy": entropy_loss, "consistency": consistency_loss, "total_loss": consistency_loss - entropy_loss}
        )
    totals = [score["total_loss"] for score in scores]
    best = int(np.argmin(totals))
    return {"scan": scores, "lowest_loss_head": best, "lowest_loss": float(totals[best])}


def neighbour_agreement(assignment: ArrayLike, neighbors: ArrayLike) -> float:
    """Share of (image, mined neighbour) pairs assigned to the same cluster; an image paired with itself (normally
    column 0) does not count. Counted exactly: agreeing pairs / pairs."""
    assignment, neighbors = torch.as_tensor(assignment), torch.as_tensor(neighbors).long()
    pairs = neighbors != torch.arange(neighbors.shape[0]).unsqueeze(1)
    agreeing = (assignment[neighbors] == assignment.unsqueeze(1)) & pairs
    return int(agreeing.sum()) / max(int(pairs.sum()), 1)


def chance_agreement(assignment: ArrayLike, num_clusters: int) -> float:
    """Probability that two random images share a cluster, given the cluster sizes: Σ s_c²."""
    assignment = np.asarray(assignment)
    shares = np.bincount(assignment, minlength=num_clusters) / len(assignment)
    return float((shares**2).sum())


def kappa(assignment: ArrayLike, neighbors: ArrayLike, num_clusters: int) -> float:
    """Neighbour agreement corrected for chance (Cohen's kappa form); 1 = every neighbour pair agrees."""
    observed, chance = neighbour_agreement(assignment, neighbors), chance_agreement(assignment, num_clusters)
    return (observed - chance) / (1 - chance) if chance < 1 else 0.0


def assignment_scan_loss(assignment: torch.Tensor, neighbors: torch.Tensor, num_clusters: int) -> dict:
    """The self-label selection criterion (lower is better) and its two parts, from hard assignments (why not
    from the probabilities: engine/cluster_watch.py)."""
    agreement = neighbour_agreement(assignment, neighbors)
    size_entropy = float(entropy(torch.bincount(assignment.long(), minlength=num_clusters) / assignment.numel()))
    return {
        "score": -math.log(max(agreement, 1e-8)) - size_entropy,
        "neighbour_agreement": agreement,
        "size_entropy": size_entropy,
    }

"""Clustering metrics, computed exactly as the published SCAN numbers were (predictions: engine/inference.py).

Every detail that can move a number is pinned (REFERENCE §1.4): the K×K count matrix (K: the dataset's classes,
which the original's distinct targets equal where every class has a test image), scipy's `linear_sum_assignment`
on (N − counts) with rows = clusters (tie-breaking included), NMI/ARI/AMI on the raw cluster ids, and ACC / ACC
Top-5 as integer counts divided by N.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score, normalized_mutual_info_score

ArrayLike = torch.Tensor | np.ndarray


def _to_numpy(x: ArrayLike) -> np.ndarray:
    """Metrics run in numpy/scipy/sklearn; callers may hand us CPU tensors or arrays."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def count_matrix(preds: ArrayLike, targets: ArrayLike, num_preds: int, num_targets: int) -> np.ndarray:
    """[num_preds, num_targets] int64 co-occurrence counts in one bincount; ids outside the range are dropped, as
    the original's K×K loop did."""
    preds = _to_numpy(preds).astype(np.int64).reshape(-1)
    targets = _to_numpy(targets).astype(np.int64).reshape(-1)
    keep = (preds >= 0) & (preds < num_preds) & (targets >= 0) & (targets < num_targets)
    flat = preds[keep] * num_targets + targets[keep]
    counts = np.bincount(flat, minlength=num_preds * num_targets)
    return counts.astype(np.int64).reshape(num_preds, num_targets)


def hungarian_match(preds: ArrayLike, targets: ArrayLike, num_preds: int, num_targets: int) -> list[tuple[int, int]]:
    """One-to-one (cluster, class) pairs maximising matched counts. The cost is exactly N − counts, rows = clusters,
    so that among equally good matchings scipy picks the original's: ACC is the same for all, ACC Top-5 is not."""
    num_samples = len(_to_numpy(targets).reshape(-1))
    counts = count_matrix(preds, targets, num_preds, num_targets)
    rows, cols = linear_sum_assignment(num_samples - counts)
    return [(int(r), int(c)) for r, c in zip(rows, cols)]


def majority_match(preds: ArrayLike, targets: ArrayLike, num_clusters: int, num_classes: int) -> list[tuple[int, int]]:
    """Many-to-one (cluster, class) pairs for over-clustering: each cluster → its most frequent class (ties: the
    lowest class id; empty clusters: class 0)."""
    counts = count_matrix(preds, targets, num_clusters, num_classes)
    return [(cluster, int(cls)) for cluster, cls in enumerate(counts.argmax(axis=1))]


def _apply_matching(cluster_ids: np.ndarray, matching: list[tuple[int, int]]) -> np.ndarray:
    """Map cluster ids to classes through `matching`; ids it does not cover become class 0."""
    size = max([int(cluster_ids.max(initial=-1)) + 1] + [cluster + 1 for cluster, _ in matching])
    lookup = np.zeros(size, dtype=np.int64)
    for cluster, cls in matching:
        lookup[cluster] = cls
    return lookup[cluster_ids]


def cluster_metrics(
    predictions: ArrayLike,
    probabilities: ArrayLike,
    targets: ArrayLike,
    num_clusters: int | None = None,
    num_classes: int | None = None,
) -> dict:
    """ACC, NMI, ARI, AMI and ACC Top-5 of a clustering against ground truth (REFERENCE §1.4). K: `num_classes` (the
    dataset's: a class without test images keeps its id), else the distinct targets. With num_clusters ≤ K the match is
    Hungarian on the K×K counts, as the original; with more clusters, majority. num_clusters=K forces the Hungarian
    match on an over-clustered model (extras count as 0)."""
    preds = _to_numpy(predictions).astype(np.int64).reshape(-1)
    gts = _to_numpy(targets).astype(np.int64).reshape(-1)
    probs = torch.as_tensor(_to_numpy(probabilities))
    num_samples = gts.shape[0]
    num_classes = num_classes or int(np.unique(gts).size)
    if num_clusters is None:
        num_clusters = int(probs.shape[1])

    if num_clusters <= num_classes:
        matching = hungarian_match(preds, gts, num_classes, num_classes)
        method = "hungarian"
    else:
        matching = majority_match(preds, gts, num_clusters, num_classes)
        method = "majority"

    reordered = _apply_matching(preds, matching)
    top = probs.topk(min(5, probs.shape[1]), dim=1).indices.numpy()
    top_classes = _apply_matching(top, matching)

    return {
        "ACC": int((reordered == gts).sum()) / float(num_samples),
        "NMI": float(normalized_mutual_info_score(gts, preds)),
        "ARI": float(adjusted_rand_score(gts, preds)),
        "AMI": float(adjusted_mutual_info_score(gts, preds)),
        "ACC Top-5": int((top_classes == gts[:, None]).any(axis=1).sum()) / float(num_samples),
        "hungarian_match": [[cluster, cls] for cluster, cls in matching],
        "matching": method,
        "reordered_predictions": torch.from_numpy(reordered),
    }


@torch.no_grad()
def get_prototype_indices(probabilities: torch.Tensor, features: torch.Tensor, topk: int = 10) -> list[int | None]:
    """Per cluster, of its `topk` most confident members the one nearest (L2) to their mean feature (None when
    empty); unlike the original, a cluster with fewer members is not padded with non-members."""
    max_probs, assigned = probabilities.max(dim=1)
    prototypes: list[int | None] = []
    for cluster in range(probabilities.shape[1]):
        members = torch.nonzero(assigned == cluster).reshape(-1)
        if members.numel() == 0:
            prototypes.append(None)
            continue
        confident = members[max_probs[members].topk(min(topk, members.numel())).indices]
        candidates = features[confident].float()
        distances = (candidates - candidates.mean(dim=0, keepdim=True)).norm(dim=1)
        prototypes.append(int(confident[distances.argmin()]))
    return prototypes

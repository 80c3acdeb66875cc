"""Label-free criteria for choosing the number of clusters K from SCAN runs on cached features
(docs/number-of-clusters.md).

For each candidate K, SCAN heads are trained with several seeds. The criterion that chooses K (`recommend`) is
stability, the mean ARI between the assignments of every pair of seeds: at the right K every seed finds the same
clusters, while too many or too few clusters must split or merge natural groups, differently per seed (Ben-Hur et
al., 2002; Lange et al., 2004); ARI is corrected for chance, so it favours no K by itself. Neighbour agreement and
kappa (engine/cluster_criteria.py), size balance and the normalised SCAN loss are reported, not maximised.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from sklearn.metrics import adjusted_rand_score


def stability(assignments: list[np.ndarray]) -> tuple[float, float, list[float]]:
    """Mean and standard deviation of the ARI between every pair of runs, and the pairwise values."""
    if len(assignments) < 2:
        raise ValueError("Stability needs at least two runs (seeds) per K.")
    pairwise = [float(adjusted_rand_score(a, b)) for a, b in itertools.combinations(assignments, 2)]
    return float(np.mean(pairwise)), float(np.std(pairwise)), pairwise


def size_balance(assignment: np.ndarray, num_clusters: int) -> float:
    """Entropy of the cluster sizes divided by log K: 1 for equal sizes, 0 when one cluster holds everything."""
    shares = np.bincount(assignment, minlength=num_clusters) / len(assignment)
    shares = shares[shares > 0]
    return float(-(shares * np.log(shares)).sum() / math.log(num_clusters)) if num_clusters > 1 else 1.0


def used_clusters(assignment: np.ndarray, num_clusters: int, min_share: float = 0.2) -> int:
    """Clusters holding at least `min_share` of an equal share (1/K) of the images: empty ones mean K is too large."""
    sizes = np.bincount(assignment, minlength=num_clusters)
    return int((sizes >= min_share * len(assignment) / num_clusters).sum())


def stability_gap(best: dict, other: dict) -> float:
    """How many standard errors (std of the pairwise ARIs / √pairs) `best`'s stability lies above `other`'s: rough,
    as one K's pairs share runs, and floored at 0.01 so that two perfectly stable K's count as tied."""
    se_best = best["stability_std"] / math.sqrt(len(best["pairwise_ari"]))
    se_other = other["stability_std"] / math.sqrt(len(other["pairwise_ari"]))
    return (best["stability"] - other["stability"]) / max(math.hypot(se_best, se_other), 0.01)


def recommend(rows: list[dict]) -> dict:
    """The most stable K; confidence high when every other K is over 3 standard errors less stable
    (stability_gap), medium over 1.5, else low (the closest K is named, so the user can look at both)."""
    best = max(rows, key=lambda row: row["stability"])
    others = [row for row in rows if row is not best]
    if not others:
        return {"k": best["k"], "confidence": "low", "gap": None, "reason": "Only one K was tried."}
    closest = min(others, key=lambda row: stability_gap(best, row))
    gap = stability_gap(best, closest)
    confidence = "high" if gap > 3 else "medium" if gap > 1.5 else "low"
    reason = (
        f"K={best['k']} gives the most stable clusters (ARI between seeds {best['stability']:.3f}). The closest "
        f"is K={closest['k']} ({closest['stability']:.3f}), {gap:.1f} standard errors lower"
        + (": look at both." if confidence == "low" else ".")
    )
    return {"k": best["k"], "confidence": confidence, "gap": gap, "closest_k": closest["k"], "reason": reason}

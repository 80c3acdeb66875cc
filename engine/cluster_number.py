"""Label-free criteria for choosing the number of clusters K, computed from SCAN runs on cached features.

For each candidate K, SCAN heads are trained with several seeds; each run gives a hard assignment of the
training images. The criteria below say how well a K fits the data without looking at any label:

- stability: mean adjusted Rand index between the assignments of every pair of seeds. The criterion that
  chooses K (`recommend`):
  at the right K the clusters are properties of the data and every seed finds the same ones; with too many
  clusters SCAN's balance term must split natural groups somewhere, and each seed splits them differently;
  with too few it must merge groups, and which ones merge varies too (Ben-Hur et al., 2002; Lange et al., 2004).
  ARI is corrected for chance, so it does not favour large or small K by itself.
- neighbour agreement (engine/cluster_criteria.py, like kappa): the fraction of mined (image, neighbour) pairs put
  in the same cluster: what SCAN's consistency term optimises. It falls as K grows, so it is reported, not maximised.
- kappa: neighbour agreement corrected for the agreement of random assignments with the same cluster sizes,
  (agreement − Σ s_c²) / (1 − Σ s_c²): a split through a natural group lowers it, a merge barely moves it.
- balance: entropy of the cluster sizes over log K (1 = equal sizes), and `used`: the clusters holding at least
  a fifth of an equal share. SCAN's entropy term keeps both high; empty clusters would say K is too large.
- normalised SCAN loss: (consistency − entropy of the mean prediction) / log K, comparable across K.
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
    """How many standard errors `best`'s stability lies above `other`'s (each: std of its pairwise ARIs / √pairs).

    The pairwise ARIs of one K share runs, so this is a rough yardstick, floored at 0.01 so that two perfectly
    stable K's count as tied rather than infinitely apart.
    """
    se_best = best["stability_std"] / math.sqrt(len(best["pairwise_ari"]))
    se_other = other["stability_std"] / math.sqrt(len(other["pairwise_ari"]))
    return (best["stability"] - other["stability"]) / max(math.hypot(se_best, se_other), 0.01)


def recommend(rows: list[dict]) -> dict:
    """The most stable K; confidence from its gap to the closest other K, in standard errors (stability_gap).

    high: every other K is more than 3 standard errors less stable; medium: more than 1.5; low: some other K is
    about as stable (it is named, so the user can look at both).
    """
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

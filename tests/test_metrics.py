"""engine/metrics.py: metrics and prototypes checked by hand counts, brute force and sklearn."""

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score, normalized_mutual_info_score

from engine.metrics import (
    cluster_metrics,
    count_matrix,
    get_prototype_indices,
    hungarian_match,
    majority_match,
)
from engine.result_files import clustering_report


def one_hot_probs(preds, num_clusters):
    return F.one_hot(torch.as_tensor(preds), num_clusters).float()


def ranked_probs(orders, num_clusters):
    """Probabilities whose descending order over clusters is given per row (first = argmax)."""
    weights = torch.arange(num_clusters, 0, -1, dtype=torch.float32)
    weights = weights / weights.sum()
    probs = torch.zeros(len(orders), num_clusters)
    for row, order in enumerate(orders):
        probs[row, torch.tensor(order)] = weights
    return probs


# ---------------------------------------------------------------- count_matrix


def test_count_matrix_matches_double_loop():
    rng = np.random.default_rng(0)
    preds = rng.integers(-1, 7, size=300)  # includes out-of-range ids on both sides
    targets = rng.integers(0, 6, size=300)
    counts = count_matrix(preds, targets, 5, 4)
    naive = np.zeros((5, 4), dtype=np.int64)
    for c in range(5):
        for t in range(4):
            naive[c, t] = int(((preds == c) & (targets == t)).sum())
    assert counts.dtype == np.int64
    assert counts.shape == (5, 4)
    np.testing.assert_array_equal(counts, naive)


def test_count_matrix_accepts_tensors():
    counts = count_matrix(torch.tensor([0, 1, 1]), torch.tensor([1, 1, 0]), 2, 2)
    np.testing.assert_array_equal(counts, [[0, 1], [1, 1]])


# ---------------------------------------------------------------- hungarian_match


def brute_force(counts):
    k = counts.shape[0]
    scores = {perm: sum(counts[i, perm[i]] for i in range(k)) for perm in itertools.permutations(range(k))}
    best = max(scores.values())
    return best, [perm for perm, score in scores.items() if score == best]


@pytest.mark.parametrize("seed", range(40))
def test_hungarian_match_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 6))
    n = int(rng.integers(k, 40))
    targets = np.concatenate([np.arange(k), rng.integers(0, k, size=n - k)])
    preds = rng.integers(0, k, size=n)
    match = hungarian_match(preds, targets, k, k)
    counts = count_matrix(preds, targets, k, k)
    best, optimal = brute_force(counts)

    assert sorted(c for c, _ in match) == list(range(k))
    assert sorted(t for _, t in match) == list(range(k))
    assert sum(counts[c, t] for c, t in match) == best
    mapping = dict(match)
    acc = cluster_metrics(preds, one_hot_probs(preds, k), targets)["ACC"]
    assert acc == best / n
    assert acc == np.mean([mapping[p] == t for p, t in zip(preds, targets)])
    if len(optimal) == 1:
        assert match == list(enumerate(optimal[0]))


def test_hungarian_match_breaks_ties_like_scipy():
    # Two matchings are optimal here (identity and the cyclic shift); the choice must be scipy's on N − counts.
    preds = np.array([0, 0, 1, 1, 2, 2])
    targets = np.array([0, 1, 1, 2, 2, 0])
    counts = count_matrix(preds, targets, 3, 3)
    rows, cols = linear_sum_assignment(len(targets) - counts)
    assert hungarian_match(preds, targets, 3, 3) == list(zip(rows.tolist(), cols.tolist()))


# ---------------------------------------------------------------- majority_match


def test_majority_match_ties_and_empty_clusters():
    preds = np.array([0, 0, 0, 1, 1, 1, 1, 3])
    targets = np.array([2, 2, 1, 1, 2, 2, 1, 2])
    # cluster 0 → 2 (2 vs 1); cluster 1 tie 2/2 → lowest class 1; cluster 2 empty → 0; cluster 3 → 2
    assert majority_match(preds, targets, 4, 3) == [(0, 2), (1, 1), (2, 0), (3, 2)]


# ---------------------------------------------------------------- cluster_metrics


def test_cluster_metrics_hand_counted():
    targets = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    preds = torch.tensor([1, 1, 0, 2, 2, 2, 0, 0, 0, 1])
    # counts[cluster, class]: c0 → {0:1, 2:3}, c1 → {0:2, 2:1}, c2 → {1:3}; best = c0→2, c1→0, c2→1 (8 of 10)
    result = cluster_metrics(preds, one_hot_probs(preds, 3), targets)
    assert result["matching"] == "hungarian"
    assert sorted(map(tuple, result["hungarian_match"])) == [(0, 2), (1, 0), (2, 1)]
    assert result["ACC"] == 8 / 10
    assert result["reordered_predictions"].tolist() == [0, 0, 2, 1, 1, 1, 2, 2, 2, 0]
    assert result["reordered_predictions"].dtype == torch.int64
    # with 3 clusters, top-5 = top-3 = every cluster → every class
    assert result["ACC Top-5"] == 1.0
    for key in ("ACC", "NMI", "ARI", "AMI", "ACC Top-5"):
        assert type(result[key]) is float
    assert all(type(v) is int for pair in result["hungarian_match"] for v in pair)


def test_nmi_ari_ami_are_sklearn_on_raw_ids():
    rng = np.random.default_rng(3)
    targets = rng.integers(0, 5, size=200)
    preds = rng.integers(0, 5, size=200)
    result = cluster_metrics(torch.from_numpy(preds), one_hot_probs(preds, 5), torch.from_numpy(targets))
    assert result["NMI"] == normalized_mutual_info_score(targets, preds)
    assert result["ARI"] == adjusted_rand_score(targets, preds)
    assert result["AMI"] == adjusted_mutual_info_score(targets, preds)


def test_permuted_cluster_ids_are_perfect():
    targets = np.repeat(np.arange(4), 5)
    perm = np.array([2, 0, 3, 1])
    preds = perm[targets]
    result = cluster_metrics(preds, one_hot_probs(preds, 4), targets)
    assert result["ACC"] == 1.0
    assert result["NMI"] == pytest.approx(1.0)
    assert result["ARI"] == pytest.approx(1.0)
    assert result["AMI"] == pytest.approx(1.0)
    assert sorted(map(tuple, result["hungarian_match"])) == [(int(perm[t]), t) for t in np.argsort(perm)]
    assert result["reordered_predictions"].tolist() == targets.tolist()


def test_a_class_without_test_images_keeps_its_id_when_k_is_the_class_count():
    # 4 classes, class 1 has no test image; clusters 3, 0, 1 hold classes 0, 2, 3 perfectly (2 + 3 + 2 images).
    targets = torch.tensor([0, 0, 2, 2, 2, 3, 3])
    preds = torch.tensor([3, 3, 0, 0, 0, 1, 1])
    result = cluster_metrics(preds, one_hot_probs(preds, 4), targets, num_classes=4)
    assert result["ACC"] == 1.0 and result["ACC Top-5"] == 1.0
    assert result["reordered_predictions"].tolist() == targets.tolist()
    assert sorted(map(tuple, result["hungarian_match"])) == [(0, 2), (1, 3), (2, 1), (3, 0)]  # empty cluster 2 → 1
    # K counted from the distinct targets (3, the original's rule, kept when num_classes is not given): class 3
    # falls outside the counts, its 2 images are lost and its cluster 1 is named class 0.
    seen = cluster_metrics(preds, one_hot_probs(preds, 4), targets)
    assert seen["ACC"] == 5 / 7 and [1, 0] in seen["hungarian_match"]


def test_the_report_names_clusters_among_all_classes_of_the_dataset(tmp_path):
    """clustering_report (eval.py's scores) takes K from the class names: the clusters of classes a, c and d of a
    four-class folder whose b has no test image are named a, c and d, as eval.py writes them to predictions.csv."""
    targets = torch.tensor([0, 0, 2, 2, 2, 3, 3])
    preds = torch.tensor([3, 3, 0, 0, 0, 1, 1])
    output = {"predictions": preds, "probabilities": one_hot_probs(preds, 4), "targets": targets}
    metrics = clustering_report(output, ["a", "b", "c", "d"], tmp_path)
    assert metrics["ACC"] == 1.0
    names = {cluster: "abcd"[cls] for cluster, cls in metrics["hungarian_match"]}
    assert [names[int(p)] for p in preds] == ["a", "a", "c", "c", "c", "d", "d"]


def _unmatched_cluster_case():
    """6 classes, 7 clusters; cluster 6 lies outside the 6×6 count matrix, so it is never matched."""
    others = lambda c: [x for x in range(7) if x != c]  # noqa: E731
    orders, targets = [], []
    for c in range(6):
        for _ in range(3):
            orders.append([c] + others(c))  # correct argmax, target in the top-5
            targets.append(c)
    orders.append([1, 2, 3, 4, 6, 0, 5])  # S1: target 0 → ACC wrong; top-5 holds 6 (→ 0) → right
    targets.append(0)
    orders.append([6, 1, 2, 3, 4, 5, 0])  # S2: target 5 → argmax 6 → 0, wrong; top-5 lacks 5 → wrong
    targets.append(5)
    orders.append([6, 0, 1, 2, 3, 5, 4])  # S3: target 0 → argmax 6 → 0, right; top-5 right (once)
    targets.append(0)
    probs = ranked_probs(orders, 7)
    return probs.argmax(dim=1), probs, torch.tensor(targets)


def test_top5_counts_unmatched_clusters_as_class_0():
    preds, probs, targets = _unmatched_cluster_case()
    result = cluster_metrics(preds, probs, targets, num_clusters=6)
    assert result["matching"] == "hungarian"
    assert sorted(map(tuple, result["hungarian_match"])) == [(c, c) for c in range(6)]
    assert result["ACC"] == 19 / 21
    assert result["ACC Top-5"] == 20 / 21
    assert result["reordered_predictions"][-3:].tolist() == [1, 0, 0]
    # NMI is taken on the raw ids (cluster 6 kept apart), not on the matched ones (6 merged into 0).
    assert result["NMI"] == normalized_mutual_info_score(targets.numpy(), preds.numpy())
    assert result["NMI"] != normalized_mutual_info_score(targets.numpy(), result["reordered_predictions"].numpy())


def test_over_clustering_uses_majority():
    targets = np.repeat(np.arange(10), 10)
    within = np.tile(np.arange(10), 10)
    preds = 2 * targets + (within >= 5)
    noisy = within == 9
    preds[noisy] = (2 * targets[noisy] + 2) % 20  # one sample per class lands in the next class's cluster
    probs = ranked_probs([[p] + [c for c in range(20) if c != p] for p in preds], 20)
    result = cluster_metrics(preds, probs, targets)
    assert result["matching"] == "majority"
    assert result["hungarian_match"] == [[c, c // 2] for c in range(20)]
    assert result["ACC"] == 90 / 100
    # Top-5 = argmax + the 4 lowest other cluster ids. Of the 10 noisy samples only those of
    # class 0 (clusters 2,0,1,3,4 → classes 1,0,0,1,2) and class 1 (4,0,1,2,3 → 2,0,0,1,1) hit.
    assert result["ACC Top-5"] == 92 / 100
    assert result["NMI"] == normalized_mutual_info_score(targets, preds)


def test_more_clusters_than_classes_defaults_to_majority():
    preds, probs, targets = _unmatched_cluster_case()
    result = cluster_metrics(preds, probs, targets)
    assert result["matching"] == "majority"
    assert result["hungarian_match"][6] == [6, 0]  # cluster 6 holds one class-5 and one class-0 sample: tie → 0


# ---------------------------------------------------------------- get_prototype_indices


def test_get_prototype_indices_known_answer():
    # cluster 0: members 0-4; the 3 most confident are 0, 2, 3 with features 0, 3, 10 → mean 13/3 → sample 2.
    # Sample 1 (feature 4.3) is closer to the mean but not confident enough; sample 5 is in cluster 1.
    probs = torch.tensor(
        [[0.9, 0.1, 0.0], [0.6, 0.4, 0.0], [0.8, 0.2, 0.0], [0.7, 0.3, 0.0], [0.55, 0.45, 0.0], [0.2, 0.8, 0.0]]
    )
    features = torch.tensor([[0.0, 0.0], [4.3, 0.0], [3.0, 0.0], [10.0, 0.0], [4.4, 0.0], [5.0, 5.0]])
    # cluster 1 has a single member (fewer than topk); cluster 2 is empty.
    assert get_prototype_indices(probs, features, topk=3) == [2, 5, None]


def test_prototypes_average_the_ten_most_confident_members_by_default():
    # One cluster of 12 members whose confidence falls with the index (REFERENCE: the 10 most confident count).
    confidence = torch.linspace(0.99, 0.5, 12)
    probs = torch.stack([confidence, 1 - confidence], dim=1)
    values = [0.0, 1.0, 2.0, 3.0, 4.0, 13.0, 6.0, 7.0, 8.0, 100.0, -50.0, -50.0]
    features = torch.tensor([[v, 0.0] for v in values])
    # Top 10: mean of values[:10] = 144 / 10 = 14.4, nearest member 5 (13.0).
    assert get_prototype_indices(probs, features)[0] == 5
    # Top 11 would give mean 94 / 11 = 8.5, nearest member 8 (8.0).
    assert get_prototype_indices(probs, features, topk=11)[0] == 8


def test_cluster_metrics_accept_probabilities_that_carry_gradients():
    from engine.metrics import cluster_metrics

    logits = torch.tensor([[3.0, 0.0], [0.0, 3.0], [2.0, 0.0], [0.0, 1.0]], requires_grad=True)
    probabilities = torch.softmax(logits, dim=1)
    predictions, targets = torch.tensor([0, 1, 0, 1]), torch.tensor([1, 0, 1, 0])
    scores = cluster_metrics(predictions, probabilities, targets)
    assert scores["ACC"] == 1.0 and scores["matching"] == "hungarian"
    assert scores["reordered_predictions"].tolist() == [1, 0, 1, 0]

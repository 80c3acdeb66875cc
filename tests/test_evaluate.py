"""Tests of engine/evaluate.py: metrics checked by hand counts, brute force and sklearn."""

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score, normalized_mutual_info_score
from torch.utils.data import DataLoader, Dataset

from engine.cluster_criteria import scan_evaluate
from engine.evaluate import (
    cluster_metrics,
    count_matrix,
    get_prototype_indices,
    hungarian_match,
    majority_match,
)
from engine.inference import run_model
from engine.report import clustering_report


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


# ---------------------------------------------------------------- scan_evaluate


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


# ---------------------------------------------------------------- run_model on cluster heads


class TinyClusteringModel(nn.Module):
    """Same forward signature as ClusteringModel, on flat 4-d inputs, 2 heads of 3 clusters."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Flatten(), nn.Linear(4, 5), nn.Dropout(0.5))
        self.cluster_head = nn.ModuleList([nn.Linear(5, 3) for _ in range(2)])

    def forward(self, x, forward_pass="default"):
        features = self.backbone(x)
        outputs = [head(features) for head in self.cluster_head]
        if forward_pass == "return_all":
            return {"features": features, "output": outputs}
        return outputs


class DictDataset(Dataset):
    def __init__(self, images, targets, key, neighbors=None):
        self.images, self.targets, self.key, self.neighbors = images, targets, key, neighbors

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        item = {self.key: self.images[i], "target": self.targets[i]}
        if self.neighbors is not None:
            item["possible_neighbors"] = self.neighbors[i]
        return item


@pytest.mark.parametrize("key", ["image", "anchor"])
@pytest.mark.parametrize("return_features", [False, True])
def test_run_model_collects_every_head(key, return_features):
    torch.manual_seed(0)
    model = TinyClusteringModel()
    images = torch.randn(7, 2, 2)
    targets = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    neighbors = torch.randint(0, 7, (7, 3)) if key == "anchor" else None
    loader = DataLoader(DictDataset(images, targets, key, neighbors), batch_size=3, shuffle=False)

    outputs = run_model(model, loader, torch.device("cpu"), "return_all" if return_features else None)
    heads, features = outputs.heads(), outputs.features

    assert not model.training  # dropout off, so the results are deterministic
    with torch.no_grad():
        expected = model(images, forward_pass="return_all")
    assert len(heads) == 2
    for head, logits in zip(heads, expected["output"]):
        assert head["predictions"].dtype == torch.int64
        assert head["predictions"].tolist() == logits.argmax(1).tolist()
        assert head["probabilities"].dtype == torch.float32
        torch.testing.assert_close(head["probabilities"], torch.softmax(logits, 1))
        assert head["targets"].tolist() == targets.tolist()
        if key == "anchor":
            assert head["neighbors"].tolist() == neighbors.tolist()
        else:
            assert "neighbors" not in head
    if return_features:
        assert features.dtype == torch.float32 and features.shape == (7, 5)
        torch.testing.assert_close(features, expected["features"])
    else:
        assert features is None


def test_run_model_feeds_scan_evaluate():
    torch.manual_seed(1)
    images = torch.randn(6, 4)
    neighbors = torch.cat([torch.arange(6)[:, None], torch.randint(0, 6, (6, 2))], dim=1)
    loader = DataLoader(DictDataset(images, torch.zeros(6, dtype=torch.long), "anchor", neighbors), batch_size=4)
    heads = run_model(TinyClusteringModel(), loader, "cpu").heads()
    result = scan_evaluate(heads)
    assert len(result["scan"]) == 2
    assert result["lowest_loss_head"] in (0, 1)


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


class Bfloat16Model(nn.Module):
    """A model that runs in bf16, as under autocast: its logits and features come out in bfloat16."""

    def forward(self, x, forward_pass="default"):
        features = x.flatten(1).bfloat16()
        logits = [features[:, :3] * 7.3]
        return {"features": features, "output": logits} if forward_pass == "return_all" else logits


def test_predictions_of_a_bf16_model_are_float32_softmaxes_of_its_logits():
    images = torch.randn(6, 4)
    loader = DataLoader(DictDataset(images, list(range(6)), "image"), batch_size=4)
    outputs = run_model(Bfloat16Model(), loader, "cpu", "return_all")
    heads, features = outputs.heads(), outputs.features
    logits = (images.bfloat16()[:, :3] * 7.3).float()
    assert heads[0]["probabilities"].dtype == torch.float32 and features.dtype == torch.float32
    assert torch.equal(heads[0]["probabilities"], F.softmax(logits, dim=1))
    assert torch.equal(features, images.bfloat16().float())

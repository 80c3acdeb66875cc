"""engine/knn.py: exact neighbour mining (faiss or chunked torch top-k, float16 features), neighbour accuracy, the
weighted-kNN monitor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine import knn
from engine.knn import mine_nearest_neighbors, neighbor_accuracy, weighted_knn_accuracy
from engine.knn_index import MiningSettings
from tests.test_knn_index import exact_neighbors


def test_mining_equals_brute_force_inner_product():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(60, 8)).astype(np.float32)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    targets = np.arange(60) % 3
    indices, accuracy = mine_nearest_neighbors(features, targets, topk=5)
    assert indices.shape == (60, 6)
    brute = np.argsort(-(features @ features.T), axis=1, kind="stable")[:, :6]
    assert np.array_equal(indices, brute)
    assert (indices[:, 0] == np.arange(60)).all()
    assert accuracy == pytest.approx((targets[brute[:, 1:]] == targets[:, None]).mean())


def test_chunked_torch_mining_returns_faiss_neighbours(monkeypatch):
    """The torch top-k (GPU machines without faiss-gpu) against faiss's flat index on a fixed case without ties."""
    rng = np.random.default_rng(1)
    features = rng.normal(size=(300, 16)).astype(np.float32)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    targets = np.arange(300) % 4
    with_faiss, accuracy = mine_nearest_neighbors(features, targets, topk=20)
    monkeypatch.setattr(knn, "SCORES_PER_CHUNK", 300 * 7)  # chunks of 7 queries, the last one partial
    monkeypatch.setattr(knn, "_faiss", lambda: None)
    with_torch, torch_accuracy = mine_nearest_neighbors(features, targets, topk=20)
    assert np.array_equal(with_torch, with_faiss) and torch_accuracy == accuracy
    assert np.array_equal(knn.topk_inner_product(torch.from_numpy(features), 21).numpy(), with_faiss)


def test_neighbor_accuracy_counts_by_hand():
    targets = np.array([0, 0, 1, 1])
    indices = np.array([[0, 1, 2], [1, 0, 3], [2, 3, 0], [3, 0, 1]])
    # k=1: 0→1 ok, 1→0 ok, 2→3 ok, 3→0 wrong → 3/4. k=2 adds 0→2 no, 1→3 no, 2→0 no, 3→1 no → 3/8.
    assert neighbor_accuracy(indices, targets, 1) == 0.75
    assert neighbor_accuracy(indices, targets) == 0.375
    assert neighbor_accuracy(indices, np.full(4, -1)) is None


def test_weighted_knn_vote_by_hand():
    bank = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8]])
    bank_targets = torch.tensor([0, 1, 1])
    query = torch.tensor([[1.0, 0.0]])
    # Similarities 1.0 (class 0), 0.8 and 0.6 (class 1). With temperature 1: e^1 = 2.72 < e^.8 + e^.6 = 4.05 → 1.
    assert weighted_knn_accuracy(query, torch.tensor([1]), bank, bank_targets, 2, k=3, temperature=1.0) == 1.0
    # With temperature 0.1: e^10 dominates → class 0; with k=1 only the nearest votes.
    assert weighted_knn_accuracy(query, torch.tensor([0]), bank, bank_targets, 2, k=3, temperature=0.1) == 1.0
    assert weighted_knn_accuracy(query, torch.tensor([0]), bank, bank_targets, 2, k=1, temperature=1.0) == 1.0


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def star_features(n: int, dim_seed: int = 0) -> np.ndarray:
    """Rows whose neighbour scores are far apart: x_j ∝ c + 0.2·j·e_j, randomly rotated and permuted.

    x_i·x_j = 1 / (n_i n_j) with n_j = √(1 + 0.04 j²), so every row ranks the others by j and consecutive
    scores differ by much more than float16 rounding can move them (checked by the tests that use this).
    """
    rng = np.random.default_rng(dim_seed)
    basis = np.zeros((n, n + 1))
    basis[:, 0] = 1.0
    basis[np.arange(n), np.arange(1, n + 1)] = 0.2 * np.arange(1, n + 1)
    rotation = np.linalg.qr(rng.normal(size=(n + 1, n + 1)))[0]
    features = (basis @ rotation)[rng.permutation(n)]
    return (features / np.linalg.norm(features, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("device", DEVICES)
def test_float16_features_give_the_float32_neighbours(monkeypatch, device):
    features = star_features(64)
    k = 6
    scores = np.sort(features @ features.T, axis=1)[:, ::-1][:, : k + 1]
    # float16 moves a unit vector by at most 2^-11 of its norm, so a score by at most ~2^-10: gaps must be wider.
    assert np.diff(scores, axis=1).min() < -(2**-8)
    monkeypatch.setattr(knn, "ROWS_PER_COPY", 10)  # copies of 10 rows, the last one partial
    monkeypatch.setattr(knn, "FLOAT16_BLOCK_ROWS", 9)  # float32 blocks of 9 rows
    monkeypatch.setattr(knn, "SCORES_PER_CHUNK", 64 * 7)  # chunks of 7 queries
    in_float32, accuracy = mine_nearest_neighbors(features, np.arange(64) % 2, k, torch.device(device))
    in_float16, accuracy16 = mine_nearest_neighbors(
        features, np.arange(64) % 2, k, torch.device(device), MiningSettings(float16=True)
    )
    assert np.array_equal(in_float16, in_float32) and accuracy16 == accuracy
    assert np.array_equal(in_float32, exact_neighbors(features, k + 1))
    bank = knn.features_on_device(features, torch.device(device), torch.float16)
    assert bank.dtype == torch.float16 and torch.equal(bank.cpu(), torch.from_numpy(features).half())


def reference_knn_accuracy(query, query_targets, bank, bank_targets, num_classes, k, temperature):
    """The monitor written out on whole matrices in numpy (no chunks): the expectation for the chunked one."""
    similarity = query @ bank.T
    top = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    votes = np.zeros((len(query), num_classes))
    for row, columns in enumerate(top):
        np.add.at(votes[row], bank_targets[columns], np.exp(similarity[row, columns] / temperature))
    return float((votes.argmax(axis=1) == query_targets).mean())


def test_knn_monitor_in_chunks_matches_the_whole_matrix(monkeypatch):
    rng = np.random.default_rng(3)
    bank = rng.normal(size=(500, 12)).astype(np.float32)
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    query = rng.normal(size=(230, 12)).astype(np.float32)
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    bank_targets = (bank[:, 0] > 0).astype(np.int64) + (bank[:, 1] > 0)  # 3 classes the features partly tell
    query_targets = (query[:, 0] > 0).astype(np.int64) + (query[:, 1] > 0)
    expected = reference_knn_accuracy(query, query_targets, bank, bank_targets, 3, k=20, temperature=0.1)
    assert 0.3 < expected < 1.0
    monkeypatch.setattr(knn, "SCORES_PER_CHUNK", 500 * 9)  # score chunks of 9 queries
    monkeypatch.setattr(knn, "VOTE_ROWS", 16)  # vote chunks of 16
    tensors = [torch.from_numpy(a) for a in (query, query_targets, bank, bank_targets)]
    assert weighted_knn_accuracy(*tensors, 3, k=20, temperature=0.1) == expected
    tensors[2] = tensors[2].half()  # a float16 memory bank: same neighbours on these scores, so about the same votes
    assert abs(weighted_knn_accuracy(*tensors, 3, k=20, temperature=0.1) - expected) <= 2 / 230


def test_chunked_topk_returns_scores_of_its_indices():
    rng = np.random.default_rng(4)
    query, bank = (torch.from_numpy(rng.normal(size=shape).astype(np.float32)) for shape in ((7, 5), (40, 5)))
    scores, indices = knn.chunked_topk(query, bank, 4)
    full = query @ bank.T
    assert torch.equal(indices, full.topk(4, dim=1).indices)
    assert torch.allclose(scores, full.gather(1, indices)) and (scores[:, :-1] >= scores[:, 1:]).all()


def test_chunked_topk_of_no_query_rows_is_empty():
    """Under torchrun a process whose shard holds no query row (fewer query blocks than processes) gets none."""
    scores, indices = knn.chunked_topk(torch.empty(0, 4), torch.randn(10, 4), 3)
    assert scores.shape == (0, 3) and indices.shape == (0, 3) and indices.dtype == torch.long


@pytest.mark.parametrize("n", [4, 5, 6])
def test_mining_fewer_samples_than_neighbours_repeats_the_farthest_one(n):
    from engine.knn import mine_nearest_neighbors

    angles = torch.arange(n, dtype=torch.float32) * 0.3  # points on an arc: neighbours ordered by |i − j|
    features = torch.stack([angles.cos(), angles.sin()], dim=1).numpy()
    indices, _ = mine_nearest_neighbors(features, np.zeros(n, dtype=np.int64), topk=5)
    assert indices.shape == (n, 6)
    for i in range(n):
        by_distance = sorted(range(n), key=lambda j: (abs(i - j), j))
        real = indices[i, :n]
        assert real[0] == i and sorted(abs(i - j) for j in real) == [abs(i - j) for j in by_distance]
        assert (indices[i, n:] == indices[i, n - 1]).all()


def test_a_query_block_holds_up_to_512_mb_of_float32_scores():
    from engine.knn import query_block_rows

    budget = 512 * 2**20 // 4  # float32 scores
    for rows in (10, 50_000, 1_281_167):
        block = query_block_rows(rows)
        assert block * rows <= budget < (block + 1) * rows

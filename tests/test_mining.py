"""Mining at scale: the IVF index and its recall, float16 exact search, the chunked kNN monitor, the config keys."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from bench.mining_bench import clustered_features
from engine import knn
from engine.knn import mine_nearest_neighbors, weighted_knn_accuracy
from engine.knn_index import MiningSettings, ivf_search, number_of_lists, recall_at_k
from utils.config import ConfigError, load_config

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def exact_neighbors(features: np.ndarray, k: int) -> np.ndarray:
    """The reference: a full score matrix sorted row by row (stable, so ties keep index order)."""
    return np.argsort(-(features @ features.T), axis=1, kind="stable")[:, :k]


def test_recall_counts_by_hand():
    exact = np.array([[1, 2, 3], [0, 2, 3]])
    approx = np.array([[3, 1, 9], [7, 8, 9]])  # row 0 finds 1 and 3 (in another order): 2/3; row 1 finds none
    assert recall_at_k(approx, exact) == pytest.approx(2 / 6)
    assert recall_at_k(exact, exact) == 1.0
    with pytest.raises(ValueError, match="shapes"):
        recall_at_k(approx[:, :2], exact)


def test_number_of_lists():
    assert number_of_lists("auto", 1_000_000) == 1000  # √N
    assert number_of_lists("auto", 2000) == 45
    assert number_of_lists(100, 2000) == 51  # never fewer than 39 vectors a list
    assert number_of_lists("auto", 10) == 1


def test_ivf_probing_every_list_is_the_exact_search():
    features = clustered_features(1500, 16, seed=0, clusters=30)
    lists = number_of_lists("auto", 1500)
    indices = ivf_search(features, 11, MiningSettings(index="ivf", ivf_probe=lists))
    assert np.array_equal(indices, exact_neighbors(features, 11))


def test_ivf_recall_on_clustered_data_and_the_printed_check(capsys):
    features = clustered_features(3000, 16, seed=1, clusters=30)
    targets = np.zeros(3000, dtype=np.int64)
    settings = MiningSettings(index="ivf", ivf_probe=4)
    indices, accuracy = mine_nearest_neighbors(features, targets, topk=10, settings=settings)
    exact = exact_neighbors(features, 11)
    recall = recall_at_k(indices[:, 1:], exact[:, 1:])
    assert 0.9 <= recall < 1.0  # approximate, and close: 4 of 55 lists probed (0.93 measured)
    assert (indices[:, 0] == np.arange(3000)).all() and accuracy == 1.0  # self first, like the exact search
    printed = capsys.readouterr().out
    sampled = float(printed.split("IVF recall@10 vs exact: ")[1].split()[0])
    assert "on 1000 sampled queries" in printed and abs(sampled - recall) < 0.03


def test_ivf_rows_with_too_few_candidates_are_searched_exactly():
    # 5 far-apart clusters of 40 points and 5 lists: one probed list holds 40 (or 80, if k-means merges two
    # clusters) of the 100 neighbours asked for, so faiss pads every row with -1 and every row is searched again.
    rng = np.random.default_rng(2)
    centres = np.eye(16, dtype=np.float32)[:5] * 10
    features = (np.repeat(centres, 40, axis=0) + rng.normal(size=(200, 16))).astype(np.float32)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    indices = ivf_search(features, 100, MiningSettings(index="ivf", ivf_lists=5, ivf_probe=1))
    assert (indices >= 0).all()
    assert np.array_equal(indices, exact_neighbors(features, 100))


def test_ivf_without_faiss_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` now raises ImportError
    with pytest.raises(ImportError, match="pip install faiss-cpu"):
        ivf_search(np.eye(4, dtype=np.float32), 2, MiningSettings(index="ivf"))
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    config = tmp_path / "exp.yml"
    config.write_text(
        "setup: simclr\nbackbone: resnet18\nnum_classes: 10\ntrain_db_name: cifar-10\nval_db_name: cifar-10\n"
    )
    with pytest.raises(ConfigError, match="knn_index: ivf needs faiss.*pip install faiss-cpu"):
        load_config(None, config, ["knn_index=ivf"])
    assert load_config(None, config)["knn_index"] == "exact"


def test_mining_config_keys_are_validated(tmp_path):
    config = tmp_path / "exp.yml"
    config.write_text(
        "setup: simclr\nbackbone: resnet18\nnum_classes: 10\ntrain_db_name: cifar-10\nval_db_name: cifar-10\n"
    )
    cfg = load_config(None, config, ["knn_index=ivf", "knn_ivf_lists=200", "knn_ivf_probe=8", "knn_float16=true"])
    assert MiningSettings.from_config(cfg) == MiningSettings("ivf", 200, 8, True, 0)
    for override, message in (
        ("knn_index=hnsw", "must be one of exact, ivf"),
        ("knn_ivf_lists=some", "must be one of auto"),
        ("knn_ivf_lists=0", "1 or more"),
        ("knn_ivf_probe=0", "1 or more"),
    ):
        with pytest.raises(ConfigError, match=message):
            load_config(None, config, [override])


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

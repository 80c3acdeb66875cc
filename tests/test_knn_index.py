"""engine/knn_index.py: approximate IVF mining and its recall; the mining config keys."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from bench.mining_bench import clustered_features
from engine.knn import mine_nearest_neighbors
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

"""Neighbour mining, neighbour accuracy, the weighted-kNN monitor, the pair datasets, the LR schedule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from data.wrappers import AugmentedDataset, NeighborsDataset
from utils.knn import mine_nearest_neighbors, neighbor_accuracy, weighted_knn_accuracy
from utils.optim import EMA, learning_rate


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


class Numbers(torch.utils.data.Dataset):
    """Sample i is the number i; the transform (if any) is applied like a real reader does."""

    def __init__(self, n: int) -> None:
        self.n, self.transform = n, None

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict:
        image = float(index)
        return {"image": self.transform(image) if self.transform else image, "target": index % 2}


def test_neighbors_dataset_draws_only_from_first_k_plus_one():
    indices = np.array([[0, 5, 6, 7], [1, 8, 9, 2]] + [[i, 0, 0, 0] for i in range(2, 10)])
    dataset = NeighborsDataset(Numbers(10), indices, num_neighbors=2)
    drawn = {dataset[1]["neighbor"] for _ in range(200)}
    assert drawn == {1.0, 8.0, 9.0}  # column 3 (index 2) is beyond num_neighbors + 1
    sample = dataset[0]
    assert sample["anchor"] == 0.0 and sample["possible_neighbors"].tolist() == [0, 5, 6]


def test_neighbors_dataset_rejects_files_of_other_data():
    with pytest.raises(ValueError, match="shape \\(5, 4\\).*10 images.*simclr.py"):
        NeighborsDataset(Numbers(10), np.zeros((5, 4), dtype=int), 2)
    with pytest.raises(ValueError, match="num_neighbors=5 needs 6 columns"):
        NeighborsDataset(Numbers(10), np.zeros((10, 4), dtype=int), 5)


def test_augmented_dataset_applies_each_transform_to_the_raw_image():
    base = Numbers(3)
    base.transform = lambda x: x + 1000  # must be disabled: the wrapper applies its own transforms
    dataset = AugmentedDataset(base, lambda x: x * 2, lambda x: -x)
    assert dataset[2]["image"] == 4.0 and dataset[2]["image_augmented"] == -2.0


def test_cosine_schedule_matches_the_formula():
    cfg = {
        "optimizer_kwargs": {"lr": 0.4},
        "scheduler": "cosine",
        "scheduler_kwargs": {"lr_decay_rate": 0.1},
        "epochs": 500,
    }
    eta_min = 0.4 * 0.1**3
    assert learning_rate(cfg, 0) == pytest.approx(0.4)
    assert learning_rate(cfg, 250) == pytest.approx(eta_min + (0.4 - eta_min) / 2)
    assert learning_rate(cfg, 499) == pytest.approx(eta_min + (0.4 - eta_min) * (1 + math.cos(math.pi * 499 / 500)) / 2)
    assert learning_rate({**cfg, "scheduler": "constant"}, 300) == 0.4


def test_ema_moves_weights_toward_the_new_value():
    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.constant_(model.weight, 1.0)
    ema = EMA(model, alpha=0.9)
    with torch.no_grad():
        model.weight.fill_(2.0)  # as if an optimizer step moved it
    ema.update(model)
    assert model.weight.item() == pytest.approx(0.9 * 1.0 + 0.1 * 2.0)

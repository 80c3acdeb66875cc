"""Neighbour mining, neighbour accuracy, the weighted-kNN monitor, the pair datasets, the LR schedule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from data.pair_datasets import AugmentedDataset, NeighborsDataset
from engine import knn
from engine.knn import mine_nearest_neighbors, neighbor_accuracy, weighted_knn_accuracy
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


class Labeled:
    """Sample i is the number i with target 100 + i, so a pair that carries the wrong target is visible."""

    def __init__(self, n: int) -> None:
        self.n, self.transform = n, None

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict:
        return {"image": float(index), "target": 100 + index, "meta": {"index": index}}


def test_neighbors_dataset_carries_the_anchors_target_and_index_never_the_neighbours():
    # Every anchor's only candidates besides itself are other images, so most draws pick another image.
    indices = np.array([[i, (i + 1) % 6, (i + 2) % 6] for i in range(6)])
    dataset = NeighborsDataset(Labeled(6), indices, num_neighbors=2)
    for index in range(6):
        for _ in range(20):
            sample = dataset[index]
            assert sample["anchor"] == float(index)
            assert sample["target"] == 100 + index and sample["index"] == index
            assert sample["neighbor"] in {float(index), float((index + 1) % 6), float((index + 2) % 6)}


def test_neighbors_dataset_never_draws_beyond_num_neighbors_columns():
    # Columns 0..3 hold 0..3, the rest hold 9: with num_neighbors=3 the image 9 must never be drawn.
    indices = np.array([[0, 1, 2, 3, 9, 9, 9]] * 10)
    dataset = NeighborsDataset(Labeled(10), indices, num_neighbors=3)
    drawn = {dataset[0]["neighbor"] for _ in range(400)}
    assert drawn == {0.0, 1.0, 2.0, 3.0}
    assert dataset[5]["possible_neighbors"].tolist() == [0, 1, 2, 3]


def test_augmented_dataset_carries_the_images_target_and_index():
    dataset = AugmentedDataset(Labeled(5), lambda x: x, lambda x: x + 0.5)
    for index in range(5):
        sample = dataset[index]
        assert (sample["image"], sample["image_augmented"]) == (float(index), index + 0.5)
        assert sample["target"] == 100 + index and sample["index"] == index


class TinyNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(2, 2)
        self.bn = torch.nn.BatchNorm1d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.linear(x))


def test_ema_averages_parameters_writes_them_back_every_step_and_leaves_batchnorm_buffers_alone():
    torch.manual_seed(0)
    model = TinyNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ema = EMA(model, alpha=0.9)
    shadow = {name: p.detach().clone() for name, p in model.named_parameters()}
    for step in range(3):
        x = torch.randn(8, 2) + step
        optimizer.zero_grad()
        model(x).pow(2).sum().backward()
        optimizer.step()
        stepped = {name: p.detach().clone() for name, p in model.named_parameters()}
        running_mean = model.bn.running_mean.clone()
        ema.update(model)
        for name, p in model.named_parameters():
            shadow[name] = 0.9 * shadow[name] + 0.1 * stepped[name]
            torch.testing.assert_close(p.detach(), shadow[name])  # written back into the model, every step
        # BatchNorm running statistics keep what the training step gave them: not averaged, not reset.
        assert torch.equal(model.bn.running_mean, running_mean)
        assert model.bn.num_batches_tracked.item() == step + 1

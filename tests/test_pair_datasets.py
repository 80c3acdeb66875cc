"""data/pair_datasets.py: two augmented views of one image; an anchor with one of its mined neighbours."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data.neighbors import NeighborsFileError
from data.pair_datasets import AugmentedDataset, NeighborsDataset


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


class Images:
    """A dataset of `n` images (dicts with 'image' and 'target'), as the wrappers expect."""

    def __init__(self, n: int) -> None:
        self.n, self.transform = n, None

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict:
        return {"image": torch.full((1,), float(index)), "target": index % 2}


def test_a_neighbour_index_one_past_the_dataset_is_refused_the_last_one_accepted():
    dataset = Images(4)
    last = np.array([[0, 3], [1, 3], [2, 3], [3, 0]])
    assert NeighborsDataset(dataset, last)[3]["target"] == 1
    with pytest.raises(NeighborsFileError, match="mined on other data"):
        NeighborsDataset(dataset, np.array([[0, 4], [1, 0], [2, 0], [3, 0]]))
    with pytest.raises(NeighborsFileError, match="mined on other data"):
        NeighborsDataset(dataset, np.array([[0, -1], [1, 0], [2, 0], [3, 0]]))


def test_an_empty_dataset_takes_an_empty_neighbour_file():
    assert len(NeighborsDataset(Images(0), np.zeros((0, 5), dtype=np.int64))) == 0

"""Datasets that pair views of one image (pretext, self-label) or an image with a neighbour (SCAN)."""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from data.neighbors import check_neighbors


class AugmentedDataset(Dataset):
    """Returns {'image': image_transform(x), 'image_augmented': augment_transform(x), 'target'}: SimCLR's two
    draws of one random transform, or self-labeling's weak (val) and strong views."""

    def __init__(self, dataset, image_transform: Callable, augment_transform: Callable | None = None) -> None:
        self.dataset = dataset
        self.dataset.transform = None
        self.image_transform = image_transform
        self.augment_transform = augment_transform or image_transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        sample = self.dataset[index]
        image = sample["image"]
        return {
            "image": self.image_transform(image),
            "image_augmented": self.augment_transform(image),
            "target": sample["target"],
            "index": index,
        }


class NeighborsDataset(Dataset):
    """Returns an anchor with one neighbour drawn uniformly from its first `num_neighbors + 1` mined ones, column 0
    (normally the anchor itself) included, as in the original method."""

    def __init__(
        self, dataset, indices: np.ndarray | torch.Tensor, num_neighbors: int | None = None, source: str = ""
    ) -> None:
        self.dataset = dataset
        self.indices = check_neighbors(indices, len(dataset), num_neighbors, source)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        anchor = self.dataset[index]
        neighbor_index = random.choice(self.indices[index].tolist())
        neighbor = self.dataset[neighbor_index]
        return {
            "anchor": anchor["image"],
            "neighbor": neighbor["image"],
            "possible_neighbors": self.indices[index],
            "target": anchor["target"],
            "index": index,
        }

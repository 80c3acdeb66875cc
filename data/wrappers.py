"""Datasets that pair views of one image (pretext, self-label) or an image with a neighbour (SCAN)."""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset


class NeighborsFileError(ValueError):
    """A neighbour file that does not belong to the dataset it is used with."""


class AugmentedDataset(Dataset):
    """Returns {'image': image_transform(x), 'image_augmented': augment_transform(x), 'target'}.

    SimCLR uses the same random transform for both views; self-labeling uses the val
    transform for the weak view and the strong augmentation for the other.
    """

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
    """Returns an anchor with one neighbour drawn uniformly from its first `num_neighbors + 1` mined ones.

    Column 0 of the neighbour file is (normally) the anchor itself, so the anchor may be
    paired with itself, as in the original method.
    """

    def __init__(
        self, dataset, indices: np.ndarray, num_neighbors: int | None = None, source: str = "neighbour file"
    ) -> None:
        source = source if source.startswith("neighbour file") else f"neighbour file {source}"
        in_range = indices.size == 0 or (indices.min() >= 0 and indices.max() < len(dataset))
        if indices.ndim != 2 or indices.shape[0] != len(dataset) or not in_range:
            span = f" and indices {indices.min()}..{indices.max()}" if indices.size else ""
            raise NeighborsFileError(
                f"The {source} has shape {tuple(indices.shape)}{span}, but the dataset has {len(dataset)} images: "
                "it was mined on other data. Re-run the pretext stage (simclr.py or moco.py) on this dataset."
            )
        if num_neighbors is not None:
            if num_neighbors + 1 > indices.shape[1]:
                raise NeighborsFileError(
                    f"num_neighbors={num_neighbors} needs {num_neighbors + 1} columns but the {source} has "
                    f"{indices.shape[1]}. Lower num_neighbors or mine more neighbours (topk_neighbors_train)."
                )
            indices = indices[:, : num_neighbors + 1]
        self.dataset = dataset
        self.indices = torch.as_tensor(indices, dtype=torch.long)

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

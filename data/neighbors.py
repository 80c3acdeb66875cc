"""Neighbour files: the [N, k+1] indices the pretext stage mines, read, checked and sliced here and only here.

Every reader (SCAN's image pairs, its cached-feature pairs, self-labeling's test neighbours) goes through
`load_neighbors` or `check_neighbors`, so a truncated file or one mined on other data says the same thing
whichever stage or input path meets it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from utils.errors import UserError


class NeighborsFileError(UserError, ValueError):
    """A neighbour file that cannot be read, or that does not belong to the dataset it is used with."""


def read_neighbors(path: str | Path) -> np.ndarray:
    """A neighbour file written by engine.knn.mine_and_save_neighbors: an [N, k+1] integer array (nothing pickled)."""
    try:
        indices = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise NeighborsFileError(
            f"Could not read the neighbour file {path}: it is truncated or not a .npy array ({error}). "
            f"Re-run the pretext stage (simclr.py --fresh, or moco.py) to mine it again."
        ) from error
    if indices.ndim != 2 or not np.issubdtype(indices.dtype, np.integer):
        raise NeighborsFileError(
            f"The neighbour file {path} holds a {indices.dtype} array of shape {indices.shape}, not [images, k+1] "
            f"integer indices. Re-run the pretext stage to mine it again."
        )
    return indices


def check_neighbors(
    indices: np.ndarray | torch.Tensor, num_images: int, num_neighbors: int | None = None, source: str = ""
) -> torch.Tensor:
    """`indices` as a long tensor, after checking they index `num_images` images; with `num_neighbors`, its
    first `num_neighbors + 1` columns (column 0 is normally the image itself, as the original draws from)."""
    indices = torch.as_tensor(np.asarray(indices), dtype=torch.long)
    source = f"neighbour file {source}".strip()
    in_range = indices.numel() == 0 or (indices.min() >= 0 and indices.max() < num_images)
    if indices.ndim != 2 or indices.shape[0] != num_images or not in_range:
        span = f" and indices {indices.min()}..{indices.max()}" if indices.numel() else ""
        raise NeighborsFileError(
            f"The {source} has shape {tuple(indices.shape)}{span}, but the dataset has {num_images} images: "
            "it was mined on other data. Re-run the pretext stage (simclr.py or moco.py) on this dataset."
        )
    if num_neighbors is None:
        return indices
    if num_neighbors + 1 > indices.shape[1]:
        raise NeighborsFileError(
            f"num_neighbors={num_neighbors} needs {num_neighbors + 1} columns but the {source} has "
            f"{indices.shape[1]}. Lower num_neighbors or mine more neighbours (topk_neighbors_train)."
        )
    return indices[:, : num_neighbors + 1]


def load_neighbors(path: str | Path, num_images: int, num_neighbors: int | None = None) -> torch.Tensor:
    """Read the neighbour file at `path` and check it against `num_images` (and `num_neighbors`)."""
    return check_neighbors(read_neighbors(path), num_images, num_neighbors, source=str(path))

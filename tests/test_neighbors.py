"""data/neighbors.py: every reader of a neighbour file (SCAN's image pairs, its cached-feature pairs, self-labeling's
test neighbours) gives the same clear message for a truncated file and for one mined on other data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from data.cached_features import load_cached_split, save_split_features
from data.neighbors import NeighborsFileError, load_neighbors, read_neighbors
from data.pair_datasets import NeighborsDataset

NUM_IMAGES = 12


def image_pairs(cfg: dict) -> None:
    """What scan.py does with images: read the file, pair it with the dataset (train_batches → NeighborsDataset)."""
    path = cfg["topk_neighbors_train_path"]
    NeighborsDataset(list(range(NUM_IMAGES)), read_neighbors(path), 2, source=path)


def cached_pairs(cfg: dict) -> None:
    load_cached_split(cfg, "train", "python simclr.py", num_neighbors=2)


def selflabel_test_neighbours(cfg: dict) -> None:
    """selflabel.py's call: the test neighbours checked against the test split's size."""
    load_neighbors(cfg["topk_neighbors_train_path"], NUM_IMAGES)


READERS = [image_pairs, cached_pairs, selflabel_test_neighbours]


def setup_files(tmp_path: Path, neighbors: np.ndarray) -> dict:
    pretext = tmp_path / "pretext"
    pretext.mkdir()
    cfg = {
        "pretext_dir": str(pretext),
        "backbone": "resnet18",
        "backbone_kwargs": {},
        "topk_neighbors_train_path": str(pretext / "topk-train-neighbors.npy"),
        "topk_neighbors_val_path": str(pretext / "topk-val-neighbors.npy"),
    }
    features = np.random.default_rng(0).normal(size=(NUM_IMAGES, 4)).astype(np.float32)
    save_split_features(cfg, "train", features, np.arange(NUM_IMAGES) % 3, None)
    np.save(cfg["topk_neighbors_train_path"], neighbors)
    return cfg


@pytest.mark.parametrize("reader", READERS)
def test_truncated_file_gives_the_same_message_on_every_path(tmp_path, reader):
    cfg = setup_files(tmp_path, np.tile(np.arange(5), (NUM_IMAGES, 1)))
    path = Path(cfg["topk_neighbors_train_path"])
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(NeighborsFileError, match=r"Could not read the neighbour file .*: it is truncated"):
        reader(cfg)


@pytest.mark.parametrize("reader", READERS)
def test_file_of_other_data_gives_the_same_message_on_every_path(tmp_path, reader):
    cfg = setup_files(tmp_path, np.tile(np.arange(5), (NUM_IMAGES - 1, 1)))  # one row short
    pattern = r"neighbour file .*topk-train-neighbors.npy has shape \(11, 5\) and indices 0..4, but the dataset has 12"
    with pytest.raises(NeighborsFileError, match=pattern + " images: it was mined on other data"):
        reader(cfg)
    np.save(cfg["topk_neighbors_train_path"], np.full((NUM_IMAGES, 5), NUM_IMAGES))  # indices past the last image
    with pytest.raises(NeighborsFileError, match=r"indices 12..12, but the dataset has 12 images"):
        reader(cfg)


def test_columns_are_checked_and_sliced(tmp_path):
    neighbors = np.arange(NUM_IMAGES * 5).reshape(NUM_IMAGES, 5) % NUM_IMAGES
    cfg = setup_files(tmp_path, neighbors)
    path = cfg["topk_neighbors_train_path"]
    assert torch.equal(load_neighbors(path, NUM_IMAGES, 2), torch.from_numpy(neighbors[:, :3]))
    assert torch.equal(load_neighbors(path, NUM_IMAGES), torch.from_numpy(neighbors))
    with pytest.raises(NeighborsFileError, match=r"num_neighbors=5 needs 6 columns but the neighbour file .* has 5"):
        load_neighbors(path, NUM_IMAGES, 5)


def test_neighbour_files_of_other_data_are_named():
    with pytest.raises(
        NeighborsFileError, match=r"shape \(100, 6\) and indices 0..119, but the dataset has 100 images"
    ):
        NeighborsDataset(list(range(100)), np.arange(600).reshape(100, 6) % 120)
    with pytest.raises(NeighborsFileError, match=r"shape \(60, 6\).*mined on other data"):
        NeighborsDataset(list(range(100)), np.zeros((60, 6), dtype=np.int64))


def test_unreadable_neighbour_file(tmp_path):
    (tmp_path / "nn.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(NeighborsFileError, match="truncated or not a .npy array"):
        read_neighbors(tmp_path / "nn.npy")
    np.save(tmp_path / "float.npy", np.zeros((4, 3)))
    with pytest.raises(NeighborsFileError, match="float64 array"):
        read_neighbors(tmp_path / "float.npy")

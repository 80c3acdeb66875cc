"""Batches of augmented views on the device, the same for both augmentation backends.

A stage gets an iterable of dicts shaped like the PIL path's samples ('image' / 'image_augmented', or 'anchor' /
'neighbor' / 'possible_neighbors', 'target', 'index'), augmented, normalised and on the device, with ``len()`` and
``set_epoch()`` as on a DataLoader, so its loop does not change with ``augmentation_backend``: ``pil`` augments
per image in DataLoader workers (data/augment.py, data/pair_datasets.py); ``batched`` augments whole batches on the
device (data/batch_augment.py) from memory or decoding workers (data/uint8_images.py). Views are named by their
transform: 'train' (the config's augmentation strategy) or 'val'.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch

from data.augment import get_train_transformations, get_val_transformations
from data.batch_augment import get_batch_transformations
from data.dataloaders import eval_loader, set_epoch, train_loader
from data.pair_datasets import AugmentedDataset, NeighborsDataset
from data.uint8_images import DecodedImages, DeviceImages, IndexBatches, load_uint8_images, pad_collate
from utils.runtime import Runtime

VIEWS = ("train", "val")


class Batches:
    """An iterable of device batches with len() and set_epoch(), over ``source`` batches mapped by ``make_views``."""

    def __init__(self, source, make_views: Callable[[dict], dict], runtime: Runtime) -> None:
        self.source, self.make_views, self.runtime = source, make_views, runtime

    def __len__(self) -> int:
        return len(self.source)

    @property
    def batch_size(self) -> int:
        """Images per batch (capped on tiny data), as on a DataLoader: the training guard counts images with it."""
        return self.source.batch_size

    def set_epoch(self, epoch: int) -> None:
        set_epoch(self.source, epoch)

    def __iter__(self) -> Iterator[dict]:
        for batch in self.source:
            batch = {key: _to_device(value, self.runtime) for key, value in batch.items()}
            views = self.make_views(batch)
            if self.runtime.channels_last:
                views = {key: _channels_last(value) for key, value in views.items()}
            yield views


def _to_device(value, runtime: Runtime):
    return value.to(runtime.device, non_blocking=True) if torch.is_tensor(value) else value


def _channels_last(value):
    """Image batches (4-d float) in channels_last memory format, the layout tensor cores read fastest."""
    if torch.is_tensor(value) and value.ndim == 4 and value.is_floating_point():
        return value.contiguous(memory_format=torch.channels_last)
    return value


class _MemoryBatches:
    """Raw uint8 batches gathered by index from a dataset held in memory, keyed as the decoding path keys them:
    'image', or with neighbours 'anchor', 'neighbor' and 'possible_neighbors'; plus 'target' and 'index'."""

    def __init__(self, store: DeviceImages, indices: IndexBatches, neighbors: torch.Tensor | None) -> None:
        self.store, self.indices = store, indices
        self.neighbors = None if neighbors is None else neighbors.to(store.device)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def batch_size(self) -> int:
        return self.indices.batch_size

    def set_epoch(self, epoch: int) -> None:
        self.indices.set_epoch(epoch)

    def __iter__(self) -> Iterator[dict]:
        for index in self.indices:
            batch = {"target": self.store.targets[index.to(self.store.targets.device)], "index": index}
            if self.neighbors is None:
                batch["image"] = self.store.gather(index)
            else:
                candidates = self.neighbors[index]
                # As NeighborsDataset: one of the first num_neighbors + 1 columns, uniformly (the anchor included).
                pick = torch.randint(0, candidates.shape[1], (len(index), 1), device=candidates.device)
                batch["anchor"] = self.store.gather(index)
                batch["neighbor"] = self.store.gather(candidates.gather(1, pick)[:, 0])
                batch["possible_neighbors"] = candidates
            yield batch


def _pil_transform(cfg: dict, view: str) -> Callable:
    return get_train_transformations(cfg) if view == "train" else get_val_transformations(cfg)


def _raw_batches(cfg: dict, dataset, runtime: Runtime, train: bool, neighbors: torch.Tensor | None = None, crop=None):
    """uint8 batches for the batched backend: from memory when the images fit there, else from decoding workers;
    ``neighbors`` (training): the [N, k+1] indices to draw neighbours from; ``crop``: for decoded eval images."""
    images = load_uint8_images(dataset)
    if images is not None:
        store = DeviceImages(images, dataset.targets, runtime)
        return _MemoryBatches(store, IndexBatches(len(dataset), cfg["batch_size"], runtime, train), neighbors)
    decoded = DecodedImages(dataset, crop_size=crop)
    if neighbors is not None:
        decoded = NeighborsDataset(decoded, neighbors.numpy())
    make_loader = train_loader if train else eval_loader
    return make_loader(decoded, cfg["batch_size"], cfg["num_workers"], runtime, collate_fn=pad_collate)


def train_batches(
    cfg: dict,
    dataset,
    runtime: Runtime,
    views: tuple[str, str] = ("train", "train"),
    neighbors: np.ndarray | None = None,
    source: str = "",
) -> Batches:
    """Shuffled training batches: 'image' and 'image_augmented' by the transforms named in ``views`` (SimCLR:
    both 'train'; self-labeling: 'val', 'train'), or with the mined ``neighbors`` 'anchor' and 'neighbor' (a
    uniform pick among the first ``cfg['num_neighbors']`` + 1 columns), both 'train'."""
    if any(view not in VIEWS for view in views):
        raise ValueError(f"views must name transforms in {VIEWS}, got {views}")
    paired = None if neighbors is None else NeighborsDataset(dataset, neighbors, cfg["num_neighbors"], source)
    if cfg["augmentation_backend"] == "pil":
        if paired is not None:
            dataset.transform = get_train_transformations(cfg)
            wrapped = paired
        else:
            wrapped = AugmentedDataset(dataset, _pil_transform(cfg, views[0]), _pil_transform(cfg, views[1]))
        loader = train_loader(wrapped, cfg["batch_size"], cfg["num_workers"], runtime)
        return Batches(loader, lambda batch: batch, runtime)

    transforms = {view: get_batch_transformations(cfg, train=view == "train") for view in set(views)}

    def make_views(batch: dict) -> dict:
        if paired is not None:
            for key in ("anchor", "neighbor"):
                batch[key] = transforms["train"](batch[key], batch.pop(f"{key}_size", None))
        else:
            images, sizes = batch.pop("image"), batch.pop("image_size", None)
            batch["image"] = transforms[views[0]](images, sizes)
            batch["image_augmented"] = transforms[views[1]](images, sizes)
        return batch

    neighbor_indices = None if paired is None else paired.indices
    return Batches(_raw_batches(cfg, dataset, runtime, True, neighbor_indices), make_views, runtime)


def eval_batches(
    cfg: dict, dataset, runtime: Runtime, neighbors: np.ndarray | None = None, source: str = ""
) -> Batches:
    """Every image in order through the val transform: 'image' ('anchor' + 'possible_neighbors' with ``neighbors``)."""
    paired = None if neighbors is None else NeighborsDataset(dataset, neighbors, source=source)
    key = "image" if paired is None else "anchor"
    if cfg["augmentation_backend"] == "pil":
        dataset.transform = get_val_transformations(cfg)
        loader = eval_loader(paired if paired is not None else dataset, cfg["batch_size"], cfg["num_workers"], runtime)
        return Batches(loader, lambda batch: batch, runtime)

    transform = get_batch_transformations(cfg, train=False)
    neighbor_indices = None if paired is None else paired.indices.to(runtime.device)

    def make_views(batch: dict) -> dict:
        batch.pop("image_size", None)  # decoded images are centre-cropped to one size already
        batch[key] = transform(batch.pop("image"))
        if neighbor_indices is not None:
            batch["possible_neighbors"] = neighbor_indices[batch["index"]]
        return batch

    crop = cfg["transformation_kwargs"]["crop_size"]
    return Batches(_raw_batches(cfg, dataset, runtime, False, crop=crop), make_views, runtime)

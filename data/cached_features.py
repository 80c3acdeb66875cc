"""Backbone features cached by the pretext stage, served as SCAN's (anchor, neighbour) training pairs.

Head-only training (`update_cluster_head_only: true`) spends nearly all its time decoding, augmenting and running
the frozen backbone to train a linear layer. With `save_features: true` the pretext stage saves both splits'
features once (float16), and `head_input: cached_features` trains the heads on those rows. Pairs are drawn as
NeighborsDataset + the train loader draw them; what differs from the paper is the view: each image's one
unaugmented feature instead of a fresh strong augmentation per step.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from data.dataloaders import capped_batch_size
from data.neighbors import load_neighbors
from utils.config import ConfigError
from utils.distributed import shard_range
from utils.files import save_numpy, write_json
from utils.prerequisites import require_files

META_FILE = "features.json"
SPLITS = ("train", "val")


def feature_paths(pretext_dir: str | Path, split: str) -> dict[str, Path]:
    """Where the pretext stage saves one split's features and targets (split: 'train' or 'val' = the test split)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    pretext_dir = Path(pretext_dir)
    return {"features": pretext_dir / f"features-{split}.npy", "targets": pretext_dir / f"targets-{split}.npy"}


def save_split_features(
    cfg: dict, split: str, features: np.ndarray, targets: np.ndarray, classes: list[str] | None
) -> None:
    """Save one split's backbone features as float16 (float32 if float16 would overflow) and its targets, with
    `features.json` naming the backbone (checked by later stages) and the classes."""
    paths = feature_paths(cfg["pretext_dir"], split)
    largest = float(np.abs(features).max(initial=0.0))
    stored = features.astype(np.float16 if largest < float(np.finfo(np.float16).max) else np.float32)
    if stored.dtype == np.float32:
        warnings.warn(
            f"Some {split} features exceed float16's range (|x| up to {largest:.3g}); saved as float32.", stacklevel=2
        )
    save_numpy(stored, paths["features"])
    save_numpy(np.asarray(targets, dtype=np.int64), paths["targets"])
    meta_path = Path(cfg["pretext_dir"]) / META_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    meta.update(
        {
            "backbone": cfg["backbone"],
            "backbone_kwargs": cfg.get("backbone_kwargs") or {},
            "classes": list(classes) if classes is not None else None,
            split: {"num_samples": int(stored.shape[0]), "dim": int(stored.shape[1]), "dtype": str(stored.dtype)},
        }
    )
    write_json(meta, meta_path)
    print(f"Saved {split} backbone features {stored.shape} ({stored.dtype}) to {paths['features']}", flush=True)


@dataclass
class CachedSplit:
    """One split's cached features with its targets (−1 without labels) and mined neighbours."""

    features: torch.Tensor  # [N, D], as stored (float16 normally); cast to float32 batch by batch
    targets: torch.Tensor  # [N] int64
    neighbors: torch.Tensor  # [N, k + 1] int64, column 0 normally the sample itself
    classes: list[str]

    def batches(self, chunk: int = 4096) -> Iterator[dict]:
        """Every row in order as evaluation batches of `chunk` rows, keyed as image batches ('image' holds the
        features in float32) for engine.inference.run_model; under torchrun this process's run of chunks."""
        shard = shard_range(self.features.shape[0], chunk)
        for start in range(shard.start, shard.stop, chunk):
            rows = slice(start, min(start + chunk, shard.stop))
            yield {
                "image": self.features[rows].float(),
                "target": self.targets[rows],
                "index": torch.arange(rows.start, rows.stop),
                "possible_neighbors": self.neighbors[rows],
            }


def check_cached_mode(cfg: dict) -> None:
    """`head_input: cached_features` trains only the heads: the backbone must be frozen."""
    if cfg["head_input"] == "cached_features" and not cfg["update_cluster_head_only"]:
        raise ConfigError(
            "head_input: cached_features trains only the cluster heads on saved backbone features, so it needs "
            "update_cluster_head_only: true. Set it, or use head_input: images to train the whole network."
        )


def load_cached_split(cfg: dict, split: str, pretext_command: str, num_neighbors: int | None = None) -> CachedSplit:
    """Read one split's features, targets and neighbours; check they belong together and fit the config."""
    paths = feature_paths(cfg["pretext_dir"], split)
    neighbor_path = cfg["topk_neighbors_train_path"] if split == "train" else cfg["topk_neighbors_val_path"]
    meta_path = Path(cfg["pretext_dir"]) / META_FILE
    require_files(
        [str(paths["features"]), str(paths["targets"]), str(meta_path), neighbor_path],
        f"{pretext_command} --set save_features=true\n(a finished pretext run resumes at its last epoch and only "
        "extracts the features; head_input: images trains on the images instead)",
    )
    meta = json.loads(meta_path.read_text())
    made_by = (meta.get("backbone"), meta.get("backbone_kwargs") or {})
    # `backbone: null` marks features made elsewhere (any embedding): estimate_k.py can use them as they are.
    if made_by[0] is not None and made_by != (cfg["backbone"], cfg.get("backbone_kwargs") or {}):
        raise ConfigError(
            f"The cached features in {cfg['pretext_dir']} come from backbone {made_by[0]} {made_by[1]}, but this "
            f"config has {cfg['backbone']} {cfg.get('backbone_kwargs') or {}}: the heads would not fit the model "
            "saved with them. Use the pretext stage's backbone in this config."
        )
    features = torch.from_numpy(np.load(paths["features"]))
    targets = torch.from_numpy(np.load(paths["targets"])).long()
    if features.shape[0] != targets.shape[0]:
        raise ValueError(
            f"{paths['features']} has {features.shape[0]} rows but {paths['targets']} {targets.shape[0]}: they come "
            "from different runs. Re-run the pretext stage with save_features=true to write them again."
        )
    neighbors = load_neighbors(neighbor_path, features.shape[0], num_neighbors)
    classes = meta.get("classes") or [str(c) for c in range(int(targets.max().item()) + 1)]
    return CachedSplit(features, targets, neighbors, classes)


class CachedPairLoader:
    """Batches {'anchor', 'neighbor'} of backbone features, drawn with torch's global generator as NeighborsDataset +
    train_loader draw images; under torchrun as many steps per process as with a DistributedSampler."""

    def __init__(self, split: CachedSplit, batch_size: int, device: torch.device | str, world_size: int = 1) -> None:
        per_process = max(1, split.features.shape[0] // world_size)
        batch_size = capped_batch_size(split.features.shape[0], batch_size, world_size)
        self.batch_size, self.steps = batch_size, per_process // batch_size
        self.features = split.features.to(device)
        self.neighbors = split.neighbors.to(device)
        self.targets = split.targets.to(device)

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        n, columns = self.neighbors.shape
        order = torch.randperm(n).to(self.features.device)
        for step in range(self.steps):
            anchors = order[step * self.batch_size : (step + 1) * self.batch_size]
            column = torch.randint(columns, (anchors.numel(),)).to(self.features.device)
            neighbors = self.neighbors[anchors, column]
            yield {
                "anchor": self.features[anchors].float(),
                "neighbor": self.features[neighbors].float(),
                "target": self.targets[anchors],
                "index": anchors,
            }

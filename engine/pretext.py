"""The end of a pretext stage that imports its model instead of training it (moco.py, pretrained.py).

Neighbours (and, with `save_features: true`, the backbone features) of the train and test split are mined
from the L2-normalised backbone features, through the same engine/knn.py code as the SimCLR stage.
"""

from __future__ import annotations

from pathlib import Path

import torch

from data.augment import get_val_transformations
from data.registry import get_train_dataset, get_val_dataset
from data.stage_batches import eval_batches
from engine.knn import mine_and_save_neighbors
from models import ContrastiveModel
from utils.files import write_json
from utils.runtime import Runtime


def backbone_feature_model(model: ContrastiveModel) -> ContrastiveModel:
    """The contrastive model with its projection head removed: it returns normalised backbone features."""
    model.contrastive_head = torch.nn.Identity()
    return model


def mine_pretext_files(model: ContrastiveModel, cfg: dict, runtime: Runtime, extra: dict | None = None) -> dict:
    """Mine (and cache) on both splits through the val transform; write and return metrics.json (+ `extra`). Under
    torchrun every process extracts and mines its shard; the main process writes the files."""
    model = model.to(runtime.device)
    train_dataset, val_dataset = get_train_dataset(cfg), get_val_dataset(cfg)
    if runtime.is_main:
        shown = get_val_transformations(cfg) if cfg["augmentation_backend"] == "pil" else "val transform, batched"
        print(f"Preprocessing: {shown}", flush=True)
        print(f"Mining neighbours of {len(train_dataset)} train and {len(val_dataset)} val images", flush=True)
    metrics = mine_and_save_neighbors(
        model,
        eval_batches(cfg, train_dataset, runtime),
        eval_batches(cfg, val_dataset, runtime),
        cfg,
        runtime.device,
        classes=val_dataset.classes,
    )
    metrics.update(extra or {})
    if runtime.is_main:
        write_json(metrics, Path(cfg["pretext_dir"]) / "metrics.json")
    return metrics

"""Backbones and model wrappers; `build_model` turns a config into a model."""

from models.models import ClusteringModel, ContrastiveModel
from models.resnet import build_backbone

__all__ = ["ClusteringModel", "ContrastiveModel", "build_backbone", "build_model"]


def build_model(cfg: dict):
    """The model of a stage: ContrastiveModel for pretext setups, ClusteringModel otherwise. An imported pretrained
    backbone (setup `pretrained`) keeps no projection head: its own features are compared."""
    backbone = build_backbone(cfg["backbone"], **cfg.get("backbone_kwargs", {}))
    if cfg["setup"] == "pretrained":
        return ContrastiveModel(backbone, head="none")
    if cfg["setup"] in ("simclr", "moco"):
        return ContrastiveModel(backbone, **cfg.get("model_kwargs", {}))
    return ClusteringModel(backbone, cfg["num_classes"], cfg.get("num_heads", 1))

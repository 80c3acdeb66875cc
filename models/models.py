"""The two model wrappers of SCAN; attribute names are the checkpoint keys."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class ContrastiveModel(nn.Module):
    """Backbone + projection head whose output is L2-normalised (pretext stage). `head='mlp'` gives Linear(dim, dim) →
    ReLU → Linear(dim, features_dim) (keys `contrastive_head.0.*`, `contrastive_head.2.*`); `head='linear'` a single
    Linear; `head='none'` no projection, for imported backbones whose own features are compared (pretrained.py)."""

    def __init__(self, backbone: nn.Module, head: str = "mlp", features_dim: int = 128) -> None:
        super().__init__()
        self.backbone = backbone
        dim = backbone.out_dim
        if head == "mlp":
            self.contrastive_head = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, features_dim))
        elif head == "linear":
            self.contrastive_head = nn.Linear(dim, features_dim)
        elif head == "none":
            self.contrastive_head = nn.Identity()
        else:
            raise ValueError(f"Unknown contrastive head '{head}': use 'mlp', 'linear' or 'none'.")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.contrastive_head(self.backbone(x)), dim=1)


class ClusteringModel(nn.Module):
    """Backbone + `num_heads` linear clustering heads (keys `cluster_head.{i}.*`).

    forward_pass:
      'default'    images → list of logits, one tensor per head
      'backbone'   images → backbone features
      'head'       backbone features → list of logits
      'return_all' images → {'features': features, 'output': list of logits}
    """

    def __init__(self, backbone: nn.Module, num_classes: int, num_heads: int = 1) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_heads = num_heads
        self.cluster_head = nn.ModuleList([nn.Linear(backbone.out_dim, num_classes) for _ in range(num_heads)])

    def forward(self, x: torch.Tensor, forward_pass: str = "default"):
        if forward_pass == "default":
            features = self.backbone(x)
            return [head(features) for head in self.cluster_head]
        if forward_pass == "backbone":
            return self.backbone(x)
        if forward_pass == "head":
            return [head(x) for head in self.cluster_head]
        if forward_pass == "return_all":
            features = self.backbone(x)
            return {"features": features, "output": [head(features) for head in self.cluster_head]}
        raise ValueError(f"Unknown forward_pass '{forward_pass}'.")

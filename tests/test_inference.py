"""engine/inference.run_model: the one loop that replaced extract_features, get_predictions and head_predictions.
Its outputs are compared bit for bit with those three loops, transcribed here as they computed (per batch)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from data.cached_features import CachedSplit
from engine.inference import run_model
from models import ClusteringModel, ContrastiveModel, build_backbone

torch.manual_seed(0)
IMAGES, TARGETS = torch.randn(10, 3, 8, 8), torch.arange(10) % 3
NEIGHBORS = torch.randint(0, 10, (10, 4))


def batches(key: str = "image", size: int = 3) -> list[dict]:
    return [
        {key: IMAGES[i : i + size], "target": TARGETS[i : i + size], "possible_neighbors": NEIGHBORS[i : i + size]}
        for i in range(0, len(IMAGES), size)
    ]


def clustering_model() -> ClusteringModel:
    torch.manual_seed(1)
    return ClusteringModel(build_backbone("resnet18", base_width=2), num_classes=4, num_heads=3).eval()


@torch.no_grad()
def test_heads_on_images_equal_the_old_per_batch_predictions():
    model = clustering_model()
    outputs = run_model(model, batches("anchor"), "cpu", "return_all")
    # The old get_predictions: per batch, argmax of the logits and the float32 softmax; features kept.
    old = {"predictions": [[] for _ in range(3)], "probabilities": [[] for _ in range(3)], "features": []}
    for batch in batches("anchor"):
        out = model(batch["anchor"], forward_pass="return_all")
        old["features"].append(out["features"].float())
        for head, logits in enumerate(out["output"]):
            old["predictions"][head].append(logits.argmax(dim=1))
            old["probabilities"][head].append(F.softmax(logits.float(), dim=1))
    assert len(outputs.logits) == 3
    for head, got in enumerate(outputs.heads()):
        assert torch.equal(got["predictions"], torch.cat(old["predictions"][head]))
        assert torch.equal(got["probabilities"], torch.cat(old["probabilities"][head]))
        assert torch.equal(got["targets"], TARGETS) and torch.equal(got["neighbors"], NEIGHBORS)
    assert torch.equal(outputs.features, torch.cat(old["features"]))


@torch.no_grad()
def test_features_and_backbone_features_equal_the_old_extraction():
    torch.manual_seed(2)
    model = ContrastiveModel(build_backbone("resnet18", base_width=2), head="mlp", features_dim=16).eval()
    outputs = run_model(model, batches(), "cpu", backbone_features=True)
    # The old extract_features: the model's output per batch, and what model.backbone output in the same pass.
    assert torch.equal(outputs.features, torch.cat([model(batch["image"]).float() for batch in batches()]))
    assert torch.equal(outputs.backbone, torch.cat([model.backbone(batch["image"]).float() for batch in batches()]))
    assert outputs.logits == [] and torch.equal(outputs.targets, TARGETS) and outputs.neighbors is not None


@torch.no_grad()
def test_heads_on_cached_features_equal_the_old_chunked_predictions():
    model = clustering_model()
    features = model(IMAGES, forward_pass="backbone").half()  # stored as the pretext stage saves them
    split = CachedSplit(features, TARGETS, NEIGHBORS, [])
    outputs = run_model(model, split.batches(chunk=4), "cpu", "head")
    # The old head_predictions: float32 logits chunk by chunk, then argmax and softmax over all rows.
    logits = [torch.cat(per_head) for per_head in zip(*[model(features[i : i + 4].float(), forward_pass="head")
                                                         for i in range(0, 10, 4)])]  # fmt: skip
    for head, got in enumerate(outputs.heads()):
        assert torch.equal(got["predictions"], logits[head].argmax(dim=1))
        assert torch.equal(got["probabilities"], F.softmax(logits[head], dim=1))
        assert torch.equal(got["targets"], TARGETS) and torch.equal(got["neighbors"], NEIGHBORS)

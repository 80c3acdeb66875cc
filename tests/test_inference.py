"""engine/inference.run_model, the one evaluation loop: its outputs equal, bit for bit, those of plain per-batch
loops written out here (features, backbone features, each head's logits and probabilities), on images and cached
features."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from data.cached_features import CachedSplit
from engine.cluster_criteria import scan_evaluate
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
def test_heads_on_images_equal_a_plain_per_batch_loop():
    model = clustering_model()
    outputs = run_model(model, batches("anchor"), "cpu", "return_all")
    # Per batch, argmax of the logits and the float32 softmax; features kept.
    expected = {"predictions": [[] for _ in range(3)], "probabilities": [[] for _ in range(3)], "features": []}
    for batch in batches("anchor"):
        out = model(batch["anchor"], forward_pass="return_all")
        expected["features"].append(out["features"].float())
        for head, logits in enumerate(out["output"]):
            expected["predictions"][head].append(logits.argmax(dim=1))
            expected["probabilities"][head].append(F.softmax(logits.float(), dim=1))
    assert len(outputs.logits) == 3
    for head, got in enumerate(outputs.heads()):
        assert torch.equal(got["predictions"], torch.cat(expected["predictions"][head]))
        assert torch.equal(got["probabilities"], torch.cat(expected["probabilities"][head]))
        assert torch.equal(got["targets"], TARGETS) and torch.equal(got["neighbors"], NEIGHBORS)
    assert torch.equal(outputs.features, torch.cat(expected["features"]))


@torch.no_grad()
def test_features_and_backbone_features_equal_a_plain_extraction():
    torch.manual_seed(2)
    model = ContrastiveModel(build_backbone("resnet18", base_width=2), head="mlp", features_dim=16).eval()
    outputs = run_model(model, batches(), "cpu", backbone_features=True)
    # The model's output per batch, and what model.backbone output in the same pass.
    assert torch.equal(outputs.features, torch.cat([model(batch["image"]).float() for batch in batches()]))
    assert torch.equal(outputs.backbone, torch.cat([model.backbone(batch["image"]).float() for batch in batches()]))
    assert outputs.logits == [] and torch.equal(outputs.targets, TARGETS) and outputs.neighbors is not None


@torch.no_grad()
def test_heads_on_cached_features_equal_plain_chunked_predictions():
    model = clustering_model()
    features = model(IMAGES, forward_pass="backbone").half()  # stored as the pretext stage saves them
    split = CachedSplit(features, TARGETS, NEIGHBORS, [])
    outputs = run_model(model, split.batches(chunk=4), "cpu", "head")
    # Float32 logits chunk by chunk, then argmax and softmax over all rows.
    logits = [torch.cat(per_head) for per_head in zip(*[model(features[i : i + 4].float(), forward_pass="head")
                                                         for i in range(0, 10, 4)])]  # fmt: skip
    for head, got in enumerate(outputs.heads()):
        assert torch.equal(got["predictions"], logits[head].argmax(dim=1))
        assert torch.equal(got["probabilities"], F.softmax(logits[head], dim=1))
        assert torch.equal(got["targets"], TARGETS) and torch.equal(got["neighbors"], NEIGHBORS)


class TinyClusteringModel(nn.Module):
    """Same forward signature as ClusteringModel, on flat 4-d inputs, 2 heads of 3 clusters."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Flatten(), nn.Linear(4, 5), nn.Dropout(0.5))
        self.cluster_head = nn.ModuleList([nn.Linear(5, 3) for _ in range(2)])

    def forward(self, x, forward_pass="default"):
        features = self.backbone(x)
        outputs = [head(features) for head in self.cluster_head]
        if forward_pass == "return_all":
            return {"features": features, "output": outputs}
        return outputs


class DictDataset(Dataset):
    def __init__(self, images, targets, key, neighbors=None):
        self.images, self.targets, self.key, self.neighbors = images, targets, key, neighbors

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        item = {self.key: self.images[i], "target": self.targets[i]}
        if self.neighbors is not None:
            item["possible_neighbors"] = self.neighbors[i]
        return item


@pytest.mark.parametrize("key", ["image", "anchor"])
@pytest.mark.parametrize("return_features", [False, True])
def test_run_model_collects_every_head(key, return_features):
    torch.manual_seed(0)
    model = TinyClusteringModel()
    images = torch.randn(7, 2, 2)
    targets = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    neighbors = torch.randint(0, 7, (7, 3)) if key == "anchor" else None
    loader = DataLoader(DictDataset(images, targets, key, neighbors), batch_size=3, shuffle=False)

    outputs = run_model(model, loader, torch.device("cpu"), "return_all" if return_features else None)
    heads, features = outputs.heads(), outputs.features

    assert not model.training  # dropout off, so the results are deterministic
    with torch.no_grad():
        expected = model(images, forward_pass="return_all")
    assert len(heads) == 2
    for head, logits in zip(heads, expected["output"]):
        assert head["predictions"].dtype == torch.int64
        assert head["predictions"].tolist() == logits.argmax(1).tolist()
        assert head["probabilities"].dtype == torch.float32
        torch.testing.assert_close(head["probabilities"], torch.softmax(logits, 1))
        assert head["targets"].tolist() == targets.tolist()
        if key == "anchor":
            assert head["neighbors"].tolist() == neighbors.tolist()
        else:
            assert "neighbors" not in head
    if return_features:
        assert features.dtype == torch.float32 and features.shape == (7, 5)
        torch.testing.assert_close(features, expected["features"])
    else:
        assert features is None


def test_run_model_feeds_scan_evaluate():
    torch.manual_seed(1)
    images = torch.randn(6, 4)
    neighbors = torch.cat([torch.arange(6)[:, None], torch.randint(0, 6, (6, 2))], dim=1)
    loader = DataLoader(DictDataset(images, torch.zeros(6, dtype=torch.long), "anchor", neighbors), batch_size=4)
    heads = run_model(TinyClusteringModel(), loader, "cpu").heads()
    result = scan_evaluate(heads)
    assert len(result["scan"]) == 2
    assert result["lowest_loss_head"] in (0, 1)


class Bfloat16Model(nn.Module):
    """A model that runs in bf16, as under autocast: its logits and features come out in bfloat16."""

    def forward(self, x, forward_pass="default"):
        features = x.flatten(1).bfloat16()
        logits = [features[:, :3] * 7.3]
        return {"features": features, "output": logits} if forward_pass == "return_all" else logits


def test_predictions_of_a_bf16_model_are_float32_softmaxes_of_its_logits():
    images = torch.randn(6, 4)
    loader = DataLoader(DictDataset(images, list(range(6)), "image"), batch_size=4)
    outputs = run_model(Bfloat16Model(), loader, "cpu", "return_all")
    heads, features = outputs.heads(), outputs.features
    logits = (images.bfloat16()[:, :3] * 7.3).float()
    assert heads[0]["probabilities"].dtype == torch.float32 and features.dtype == torch.float32
    assert torch.equal(heads[0]["probabilities"], F.softmax(logits, dim=1))
    assert torch.equal(features, images.bfloat16().float())

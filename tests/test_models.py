"""State-dict keys and shapes: the model-zoo files only load if these match REFERENCE §3 exactly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models import ClusteringModel, ContrastiveModel, build_backbone, build_model
from models.resnet import ResNet18


def bn(prefix: str, channels: int) -> dict:
    return {
        f"{prefix}.weight": (channels,),
        f"{prefix}.bias": (channels,),
        f"{prefix}.running_mean": (channels,),
        f"{prefix}.running_var": (channels,),
        f"{prefix}.num_batches_tracked": (),
    }


def expected_resnet18_keys(prefix: str = "") -> dict:
    """Written from REFERENCE §3: stem conv1/bn1, layer1..4 of 2 BasicBlocks, shortcut.{0,1} on shape change."""
    keys = {f"{prefix}conv1.weight": (64, 3, 3, 3), **bn(f"{prefix}bn1", 64)}
    in_planes = 64
    for layer, (planes, stride) in enumerate([(64, 1), (128, 2), (256, 2), (512, 2)], start=1):
        for block in range(2):
            p = f"{prefix}layer{layer}.{block}"
            block_in = in_planes if block == 0 else planes
            keys[f"{p}.conv1.weight"] = (planes, block_in, 3, 3)
            keys.update(bn(f"{p}.bn1", planes))
            keys[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            keys.update(bn(f"{p}.bn2", planes))
            if block == 0 and (stride != 1 or block_in != planes):
                keys[f"{p}.shortcut.0.weight"] = (planes, block_in, 1, 1)
                keys.update(bn(f"{p}.shortcut.1", planes))
        in_planes = planes
    return keys


def shapes(module: torch.nn.Module) -> dict:
    return {key: tuple(value.shape) for key, value in module.state_dict().items()}


@pytest.mark.parametrize("stem", ["cifar", "stl"])
def test_resnet18_keys_and_shapes(stem):
    backbone = build_backbone("resnet18", stem=stem)
    assert shapes(backbone) == expected_resnet18_keys()
    assert sum(p.numel() for p in backbone.parameters()) == 11_168_832  # CIFAR ResNet-18 without its classifier


def test_resnet18_output_sizes():
    assert build_backbone("resnet18")(torch.randn(2, 3, 32, 32)).shape == (2, 512)
    stl = build_backbone("resnet18", stem="stl").eval()
    assert stl(torch.randn(2, 3, 96, 96)).shape == (2, 512)  # 96 → 49 after the pooled stem → 7×7 → AvgPool(7)


def test_contrastive_model_keys_and_normalised_output():
    model = ContrastiveModel(build_backbone("resnet18"), head="mlp", features_dim=128)
    expected = {
        **expected_resnet18_keys("backbone."),
        "contrastive_head.0.weight": (512, 512),
        "contrastive_head.0.bias": (512,),
        "contrastive_head.2.weight": (128, 512),
        "contrastive_head.2.bias": (128,),
    }
    assert shapes(model) == expected
    out = model.eval()(torch.randn(3, 3, 32, 32))
    assert out.shape == (3, 128) and torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-5)
    linear = ContrastiveModel(build_backbone("resnet18"), head="linear")
    assert shapes(linear)["contrastive_head.weight"] == (128, 512)


def test_clustering_model_keys_and_forward_modes():
    model = ClusteringModel(build_backbone("resnet18"), num_classes=10, num_heads=3).eval()
    expected = {**expected_resnet18_keys("backbone.")}
    for i in range(3):
        expected[f"cluster_head.{i}.weight"], expected[f"cluster_head.{i}.bias"] = (10, 512), (10,)
    assert shapes(model) == expected
    x = torch.randn(2, 3, 32, 32)
    default = model(x)
    features = model(x, forward_pass="backbone")
    assert len(default) == 3 and all(o.shape == (2, 10) for o in default) and features.shape == (2, 512)
    assert all(torch.allclose(a, b) for a, b in zip(model(features, forward_pass="head"), default))
    everything = model(x, forward_pass="return_all")
    assert torch.allclose(everything["features"], features) and len(everything["output"]) == 3
    with pytest.raises(ValueError, match="forward_pass"):
        model(x, forward_pass="nope")


def test_resnet50_backbone_keys_are_torchvisions():
    model = build_model({"setup": "scan", "backbone": "resnet50", "num_classes": 1000, "num_heads": 10})
    keys = shapes(model)
    assert keys["backbone.conv1.weight"] == (64, 3, 7, 7)
    assert keys["backbone.layer1.0.downsample.0.weight"] == (256, 64, 1, 1)
    assert not any(key.startswith("backbone.fc") for key in keys)
    assert keys["cluster_head.9.weight"] == (1000, 2048)
    assert sum(p.numel() for p in model.backbone.parameters()) == 23_508_032


def test_unknown_backbone_is_a_clear_error():
    from tests.conftest import ROOT
    from utils.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="'backbone' is 'vgg16': use resnet18, resnet50, torchvision:"):
        load_config(None, ROOT / "configs/scan/scan_cifar10.yml", ["backbone=vgg16"])


# ---------------------------------------------------------------- the forward pass itself


def _deterministic_weights(model: torch.nn.Module) -> None:
    """Fill every parameter and BatchNorm buffer from a fixed formula: no RNG, the same on any torch build."""
    with torch.no_grad():
        for offset, (name, tensor) in enumerate(sorted(model.state_dict().items())):
            if name.endswith("num_batches_tracked"):
                continue
            wave = torch.sin(torch.arange(tensor.numel(), dtype=torch.float64) * 0.7 + offset).reshape(tensor.shape)
            if name.endswith("running_var") or (name.endswith("weight") and tensor.dim() == 1):
                wave = 1.0 + 0.25 * wave  # BN scales and variances stay positive and near 1
            else:
                wave = wave * (2.0 / max(tensor[0].numel(), 1)) ** 0.5  # fan-in scaling keeps activations finite
            tensor.copy_(wave.to(tensor.dtype))


def _fixed_input(n: int = 2, size: int = 32) -> torch.Tensor:
    grid = torch.arange(n * 3 * size * size, dtype=torch.float64).reshape(n, 3, size, size)
    return torch.cos(grid * 0.013).float()


def _reference_resnet18(state: dict, x: torch.Tensor, stem: str) -> torch.Tensor:
    """ResNet-18 written out with functional ops from the state dict (eval-mode BatchNorm)."""

    def bn(t, prefix):
        return F.batch_norm(
            t,
            state[f"{prefix}.running_mean"],
            state[f"{prefix}.running_var"],
            state[f"{prefix}.weight"],
            state[f"{prefix}.bias"],
            training=False,
            eps=1e-5,
        )

    out = F.relu(bn(F.conv2d(x, state["conv1.weight"], padding=1), "bn1"))
    if stem == "stl":
        out = F.max_pool2d(out, kernel_size=2, stride=2, padding=1)
    for layer, first_stride in zip(range(1, 5), (1, 2, 2, 2)):
        for block in range(2):
            p = f"layer{layer}.{block}"
            stride = first_stride if block == 0 else 1
            residual = out
            if f"{p}.shortcut.0.weight" in state:
                residual = bn(F.conv2d(out, state[f"{p}.shortcut.0.weight"], stride=stride), f"{p}.shortcut.1")
            y = F.relu(bn(F.conv2d(out, state[f"{p}.conv1.weight"], stride=stride, padding=1), f"{p}.bn1"))
            y = bn(F.conv2d(y, state[f"{p}.conv2.weight"], padding=1), f"{p}.bn2")
            out = F.relu(y + residual)
    if stem == "stl":
        return F.avg_pool2d(out, 7, stride=1).flatten(1)
    return out.mean(dim=(2, 3))


@pytest.mark.parametrize("stem, size", [("cifar", 32), ("stl", 96)])
def test_resnet18_forward_equals_a_functional_transcription(stem, size):
    model = ResNet18(stem=stem, base_width=8).eval()
    _deterministic_weights(model)
    x = _fixed_input(2, size)
    with torch.no_grad():
        torch.testing.assert_close(model(x), _reference_resnet18(model.state_dict(), x, stem), rtol=1e-4, atol=1e-5)


# Computed once from this network (and checked against the functional transcription above).
PINNED_CIFAR_FEATURES = [[38274.26, 23719.69, 1258.473, 26392.68], [28142.80, 17876.66, 991.3734, 18559.89]]
PINNED_CIFAR_SUM = 3210074.25


def test_resnet18_forward_matches_pinned_values():
    """Values of this exact network on fixed weights and input; a missing residual, ReLU or pool changes them."""
    model = ResNet18(stem="cifar", base_width=8).eval()
    _deterministic_weights(model)
    with torch.no_grad():
        features = model(_fixed_input(2, 32))
    assert features.shape == (2, 64)
    torch.testing.assert_close(features[:, :4], torch.tensor(PINNED_CIFAR_FEATURES), rtol=1e-4, atol=1e-5)
    assert features.sum().item() == pytest.approx(PINNED_CIFAR_SUM, rel=1e-4)


def test_a_fresh_resnet_starts_its_batchnorms_at_weight_one_and_bias_zero():
    from models import build_backbone

    backbone = build_backbone("resnet18", base_width=2)
    norms = [m for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(bool((m.weight == 1).all()) and bool((m.bias == 0).all()) for m in norms)

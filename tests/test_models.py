"""State-dict keys and shapes: the model-zoo files only load if these match REFERENCE §3 exactly."""

from __future__ import annotations

import pytest
import torch

from models import ClusteringModel, ContrastiveModel, build_backbone, build_model


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
    with pytest.raises(ValueError, match="resnet18"):
        build_backbone("vgg16")

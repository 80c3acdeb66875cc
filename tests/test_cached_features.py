"""SCAN heads on cached backbone features: files written by the pretext stage, pairs drawn like the image path,
the same loss and gradients as the image path on the same features, and scan.py end to end on the digits."""

from __future__ import annotations

import copy
import json
import shutil
from collections import Counter

import numpy as np
import pytest
import torch
import yaml

import eval as eval_script
import scan
from data.cached_features import (
    CachedPairLoader,
    CachedSplit,
    check_cached_mode,
    load_cached_split,
    save_split_features,
)
from engine.inference import run_model
from losses import SCANLoss
from models import ClusteringModel, build_backbone
from tests.conftest import ROOT
from utils.config import ConfigError, load_config
from utils.prerequisites import MissingPrerequisiteError
from utils.runtime import Runtime

CPU = Runtime(device=torch.device("cpu"))


def tiny_model(heads: int = 2, classes: int = 3) -> ClusteringModel:
    torch.manual_seed(0)
    return ClusteringModel(build_backbone("resnet18", base_width=2), num_classes=classes, num_heads=heads)


def test_cached_features_give_the_image_paths_loss_and_gradients():
    """Head-only SCAN: images through the frozen backbone, or those images' features from the cache."""
    model = tiny_model()
    torch.manual_seed(1)
    anchors, neighbors = torch.randn(6, 3, 8, 8), torch.randn(6, 3, 8, 8)
    model.eval()
    with torch.no_grad():
        anchor_features = model(anchors, forward_pass="backbone")
        neighbor_features = model(neighbors, forward_pass="backbone")
    results = {}
    for head_input, batch in (
        ("images", {"anchor": anchors, "neighbor": neighbors}),
        ("cached_features", {"anchor": anchor_features, "neighbor": neighbor_features}),
    ):
        trained = copy.deepcopy(model)
        cfg = {"update_cluster_head_only": True, "amp": False, "head_input": head_input}
        optimizer = torch.optim.SGD([p for n, p in trained.named_parameters() if "cluster_head" in n], lr=0.1)
        losses = scan.train_one_epoch([batch], trained, SCANLoss(5.0), optimizer, CPU, cfg, epoch=0)
        results[head_input] = (losses, [head.weight.grad.clone() for head in trained.cluster_head], trained)
    (image_losses, image_grads, image_model), (cached_losses, cached_grads, cached_model) = results.values()
    assert image_losses == pytest.approx(cached_losses, rel=1e-6, abs=1e-7)
    for image_grad, cached_grad in zip(image_grads, cached_grads):
        assert image_grad.abs().sum() > 0
        torch.testing.assert_close(image_grad, cached_grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(image_model.cluster_head[1].bias, cached_model.cluster_head[1].bias)
    # The independent value: the SCAN loss of the heads on those features, summed over the heads.
    expected = sum(
        SCANLoss(5.0)(head(anchor_features), head(neighbor_features))[0].item() for head in model.cluster_head
    )
    assert cached_losses["total"] == pytest.approx(expected, rel=1e-5)


def split_of(n: int, dim: int = 4, columns: int = 4, seed: int = 0) -> CachedSplit:
    generator = torch.Generator().manual_seed(seed)
    features = torch.arange(n, dtype=torch.float32)[:, None].repeat(1, dim)  # row i is all i: easy to trace
    neighbors = torch.stack([torch.randperm(n, generator=generator)[:columns] for _ in range(n)])
    neighbors[:, 0] = torch.arange(n)
    return CachedSplit(features.half(), torch.arange(n) % 3, neighbors, ["a", "b", "c"])


def test_pairs_are_drawn_as_the_neighbors_dataset_and_train_loader_draw_them():
    split = split_of(50)
    torch.manual_seed(0)
    loader = CachedPairLoader(split, batch_size=8, device="cpu")
    assert len(loader) == 6  # 50 // 8: the last partial batch is dropped, as train_loader does
    columns = Counter()
    for _epoch in range(40):
        anchors = []
        for batch in loader:
            assert batch["anchor"].dtype == torch.float32 and batch["anchor"].shape == (8, 4)
            rows, partners = batch["anchor"][:, 0].long(), batch["neighbor"][:, 0].long()
            assert torch.equal(batch["index"], rows)
            for row, partner in zip(rows.tolist(), partners.tolist()):
                allowed = split.neighbors[row].tolist()
                assert partner in allowed
                columns[allowed.index(partner)] += 1
            anchors += rows.tolist()
        assert len(anchors) == len(set(anchors)) == 48  # every anchor at most once per epoch
    # The neighbour is uniform over the k + 1 columns (self included): 1,920 draws, 480 expected per column.
    assert set(columns) == {0, 1, 2, 3} and all(abs(count - 480) < 80 for count in columns.values())


def test_batch_larger_than_the_cache_is_capped():
    with pytest.warns(UserWarning, match="batch_size 64 is larger than the 10"):
        loader = CachedPairLoader(split_of(10), batch_size=64, device="cpu")
    assert len(loader) == 1 and next(iter(loader))["anchor"].shape[0] == 10


def test_heads_on_cached_features_equal_the_image_predictions():
    model = tiny_model(heads=2).eval()
    torch.manual_seed(2)
    images, targets = torch.randn(10, 3, 8, 8), torch.arange(10) % 3
    neighbors = torch.randint(0, 10, (10, 3))
    loader = [{"anchor": images, "target": targets, "possible_neighbors": neighbors}]
    expected = run_model(model, loader, "cpu").heads()
    with torch.no_grad():
        features = model(images, forward_pass="backbone")
    cached = run_model(model, CachedSplit(features, targets, neighbors, []).batches(chunk=4), "cpu", "head").heads()
    for head_expected, head_cached in zip(expected, cached):
        for key in ("predictions", "targets", "neighbors"):
            assert torch.equal(head_expected[key], head_cached[key])
        torch.testing.assert_close(head_expected["probabilities"], head_cached["probabilities"])


def pretext_cfg(tmp_path) -> dict:
    pretext = tmp_path / "pretext"
    pretext.mkdir()
    return {
        "pretext_dir": str(pretext),
        "backbone": "resnet18",
        "backbone_kwargs": {"base_width": 2},
        "topk_neighbors_train_path": str(pretext / "topk-train-neighbors.npy"),
        "topk_neighbors_val_path": str(pretext / "topk-val-neighbors.npy"),
    }


def test_features_saved_as_float16_and_read_back_with_their_neighbours(tmp_path):
    cfg = pretext_cfg(tmp_path)
    rng = np.random.default_rng(0)
    features = rng.normal(3, 2, size=(12, 16)).astype(np.float32)
    for split in ("train", "val"):
        save_split_features(cfg, split, features, np.arange(12) % 2, ["cat", "dog"])
        np.save(cfg[f"topk_neighbors_{split}_path"], np.tile(np.arange(5), (12, 1)))
    stored = np.load(tmp_path / "pretext/features-train.npy")
    assert stored.dtype == np.float16
    np.testing.assert_allclose(stored, features, rtol=1e-3)  # float16 keeps ~3 significant digits
    meta = json.loads((tmp_path / "pretext/features.json").read_text())
    assert meta["classes"] == ["cat", "dog"] and meta["val"] == {"num_samples": 12, "dim": 16, "dtype": "float16"}

    split = load_cached_split(cfg, "train", "python simclr.py ...", num_neighbors=2)
    assert split.neighbors.shape == (12, 3) and split.classes == ["cat", "dog"]
    assert torch.equal(split.targets, torch.arange(12) % 2)
    with pytest.raises(ValueError, match="num_neighbors=7 needs 8 columns"):
        load_cached_split(cfg, "train", "cmd", num_neighbors=7)
    with pytest.raises(ConfigError, match="come from backbone resnet18 .*this config has resnet50"):
        load_cached_split({**cfg, "backbone": "resnet50", "backbone_kwargs": {}}, "val", "cmd")
    np.save(cfg["topk_neighbors_val_path"], np.tile(np.arange(5), (11, 1)))
    with pytest.raises(ValueError, match=r"shape \(11, 5\).*dataset has 12 images"):
        load_cached_split(cfg, "val", "cmd")


def test_features_beyond_float16_range_are_kept_in_float32(tmp_path):
    cfg = pretext_cfg(tmp_path)
    with pytest.warns(UserWarning, match="float16's range"):
        save_split_features(cfg, "train", np.array([[1e6, 1.0]], dtype=np.float32), np.array([0]), None)
    assert np.load(tmp_path / "pretext/features-train.npy").dtype == np.float32


def test_missing_features_name_the_command_and_head_only_is_required(tmp_path):
    cfg = pretext_cfg(tmp_path)
    with pytest.raises(MissingPrerequisiteError, match=r"(?s)features-train.npy.*python simclr.py x --set save_"):
        load_cached_split(cfg, "train", "python simclr.py x")
    with pytest.raises(ConfigError, match="needs update_cluster_head_only: true"):
        check_cached_mode({"head_input": "cached_features", "update_cluster_head_only": False})
    check_cached_mode({"head_input": "images", "update_cluster_head_only": False})


@pytest.mark.slow
def test_scan_on_cached_digits_features_matches_eval_on_images(tmp_path, digits_pretext):
    env = tmp_path / "env.yml"
    env.write_text(yaml.safe_dump({"root_dir": str(tmp_path / "results"), "data_root": str(tmp_path)}))
    tiny = ["num_workers=0", "backbone_kwargs.base_width=4", "seed=0"]
    pretext = tmp_path / "results/digits/pretext"
    shutil.copytree(digits_pretext / "digits" / "pretext", pretext)
    assert np.load(pretext / "features-train.npy").shape == (1437, 32)
    scan_args = ["--config_env", str(env), "--config_exp", str(ROOT / "configs/scan/scan_digits_features.yml")]
    metrics = scan.main([*scan_args, "--set", *tiny, "epochs=3"])
    assert metrics["num_samples"] == 360 and 0.0 <= metrics["ACC"] <= 1.0

    # The saved SCAN model holds the pretext backbone: eval.py on the test images agrees with the cached run.
    evaluated = eval_script.main(
        [*scan_args, "--model", str(tmp_path / "results/digits/scan/model.pth.tar"), "--set", *tiny]
    )
    assert abs(evaluated["ACC"] - metrics["ACC"]) <= 2 / 360  # float16 features may flip a near tie
    cfg = load_config(env, ROOT / "configs/scan/scan_digits_features.yml", tiny)
    assert cfg["head_input"] == "cached_features"

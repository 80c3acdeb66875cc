"""Config loading: env + experiment + --set overrides, unknown keys, derived paths, shipped configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT
from utils.config import ConfigError, load_config, parse_overrides

CONFIGS = sorted((ROOT / "configs").glob("*/*.yml"))


@pytest.fixture
def env(tmp_path: Path) -> Path:
    path = tmp_path / "env.yml"
    path.write_text(yaml.safe_dump({"root_dir": str(tmp_path / "out"), "data_root": str(tmp_path / "data")}))
    return path


def test_overrides_parse_yaml_scalars():
    assert parse_overrides(["epochs=2", "optimizer_kwargs.lr=0.1", "use_ema=true", "x=[1, 2]", "name=abc"]) == {
        "epochs": 2,
        "optimizer_kwargs.lr": 0.1,
        "use_ema": True,
        "x": [1, 2],
        "name": "abc",
    }
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_overrides(["epochs"])


def test_set_overrides_nested_and_new_nested_keys(env):
    cfg = load_config(
        env,
        ROOT / "configs/pretext/simclr_cifar10.yml",
        ["epochs=2", "batch_size=64", "optimizer_kwargs.lr=0.1", "backbone_kwargs.base_width=8"],
    )
    assert cfg["epochs"] == 2 and cfg["batch_size"] == 64
    assert cfg["optimizer_kwargs"] == {"nesterov": False, "weight_decay": 0.0001, "momentum": 0.9, "lr": 0.1}
    assert cfg["backbone_kwargs"] == {"base_width": 8}


def test_unknown_key_in_file_and_in_set_is_an_error(env, tmp_path):
    with pytest.raises(ConfigError, match="Unknown config key 'epoch'.*Did you mean 'epochs'"):
        load_config(env, ROOT / "configs/pretext/simclr_cifar10.yml", ["epoch=2"])
    bad = tmp_path / "bad.yml"
    bad.write_text((ROOT / "configs/scan/scan_cifar10.yml").read_text() + "num_neighbours: 5\n")
    with pytest.raises(ConfigError, match="'num_neighbours'.*num_neighbors"):
        load_config(env, bad)


def test_missing_required_key_and_missing_file(env, tmp_path):
    partial = tmp_path / "partial.yml"
    partial.write_text("setup: scan\nbackbone: resnet18\n")
    with pytest.raises(ConfigError, match="train_db_name"):
        load_config(env, partial)
    with pytest.raises(ConfigError, match="not found"):
        load_config(env, tmp_path / "nope.yml")


def test_paths_follow_the_original_output_tree(env, tmp_path):
    cfg = load_config(env, ROOT / "configs/scan/scan_stl10.yml")
    out = tmp_path / "out" / "stl-10"
    assert cfg["pretext_model"] == str(out / "pretext" / "model.pth.tar")
    assert cfg["topk_neighbors_train_path"] == str(out / "pretext" / "topk-train-neighbors.npy")
    assert cfg["scan_model"] == str(out / "scan" / "model.pth.tar")
    assert cfg["selflabel_checkpoint"] == str(out / "selflabel" / "checkpoint.pth.tar")
    assert cfg["data_root"] == str(tmp_path / "data")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_config_loads(env, path):
    cfg = load_config(env, path)
    assert (
        cfg["setup"]
        == {
            "pretext": cfg["setup"] if cfg["setup"] in ("simclr", "moco") else None,
            "scan": "scan",
            "selflabel": "selflabel",
        }[path.parent.name]
    )


def test_shipped_configs_hold_the_published_hyper_parameters(env):
    def load(name):
        return load_config(env, ROOT / "configs" / name)

    simclr = load("pretext/simclr_cifar10.yml")
    assert (
        simclr["epochs"],
        simclr["batch_size"],
        simclr["optimizer"],
        simclr["optimizer_kwargs"]["lr"],
        simclr["scheduler"],
        simclr["criterion_kwargs"]["temperature"],
    ) == (500, 512, "sgd", 0.4, "cosine", 0.1)
    assert load("pretext/simclr_stl10.yml")["train_split"] == "train+unlabeled"
    assert load("pretext/moco_imagenet50.yml")["topk_neighbors_train"] == 50
    scan20 = load("scan/scan_cifar20.yml")
    assert (scan20["epochs"], scan20["batch_size"], scan20["criterion_kwargs"]["entropy_weight"]) == (100, 512, 5.0)
    assert load("scan/scan_stl10.yml")["augmentation_kwargs"]["cutout_kwargs"]["length"] == 32
    imagenet = load("scan/scan_imagenet_100.yml")
    assert (
        imagenet["num_heads"],
        imagenet["num_neighbors"],
        imagenet["update_cluster_head_only"],
        imagenet["optimizer_kwargs"]["lr"],
        imagenet["batch_size"],
    ) == (10, 50, True, 5.0, 1024)
    assert load("scan/imagenet_eval.yml")["num_classes"] == 1000
    selflabel = load("selflabel/selflabel_imagenet_50.yml")
    assert (
        selflabel["use_ema"],
        selflabel["criterion_kwargs"]["apply_class_balancing"],
        selflabel["augmentation_kwargs"]["cutout_kwargs"]["length"],
    ) == (True, False, 75)
    assert load("selflabel/selflabel_cifar10.yml")["confidence_threshold"] == 0.99


def test_repeated_set_flags_accumulate():
    import argparse

    from utils.config import add_config_arguments

    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    args = parser.parse_args(["--config_env", "e", "--config_exp", "x", "--set", "epochs=1", "--set", "seed=3"])
    assert args.overrides == ["epochs=1", "seed=3"]

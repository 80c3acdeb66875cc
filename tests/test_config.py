"""Config loading: env + experiment + --set overrides, unknown keys, derived paths, shipped configs."""

from __future__ import annotations

import re
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
            "pretext": cfg["setup"] if cfg["setup"] in ("simclr", "moco", "pretrained") else None,
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


def test_the_benches_take_set_as_the_entry_scripts_do():
    from bench import digits_demo, selflabel_study

    assert digits_demo.parse_args(["--set", "epochs=1", "--set", "seed=3"]).overrides == ["epochs=1", "seed=3"]
    study = selflabel_study.parse_args(["--pretext_root", "r", "--set", "a=1", "b=2", "--set", "c=3"])
    assert study.overrides == ["a=1", "b=2", "c=3"]


# ---------------------------------------------------------------- nested keys and value types

SIMCLR = ROOT / "configs/pretext/simclr_cifar10.yml"
SCAN = ROOT / "configs/scan/scan_cifar10.yml"
SELFLABEL = ROOT / "configs/selflabel/selflabel_cifar10.yml"
DIGITS_SCAN = ROOT / "configs/scan/scan_digits.yml"
CUSTOM_SCAN = ROOT / "configs/scan/scan_custom.yml"


@pytest.mark.parametrize(
    "config, override, typo, suggestion",
    [
        (SIMCLR, "augmentation_kwargs.horizontal_fip=true", "horizontal_fip", "horizontal_flip"),
        (SIMCLR, "augmentation_kwargs.color_jitter.brightnes=0.2", "brightnes", "brightness"),
        (SIMCLR, "augmentation_kwargs.random_resized_crop.sise=32", "sise", "size"),
        (SIMCLR, "optimizer_kwargs.lrr=0.1", "lrr", "lr"),
        (SIMCLR, "scheduler_kwargs.lr_decay=0.1", "lr_decay", "lr_decay_rate"),
        (SIMCLR, "criterion_kwargs.temprature=0.5", "temprature", "temperature"),
        (SIMCLR, "model_kwargs.feature_dim=64", "feature_dim", "features_dim"),
        (SIMCLR, "backbone_kwargs.base_widht=8", "base_widht", "base_width"),
        (SCAN, "augmentation_kwargs.cutout_kwargs.lenght=8", "lenght", "length"),
        (SCAN, "augmentation_kwargs.num_strong_aug=2", "num_strong_aug", "num_strong_augs"),
        (SCAN, "criterion_kwargs.entropy_weigth=2.0", "entropy_weigth", "entropy_weight"),
        (SCAN, "transformation_kwargs.crop_sise=32", "crop_sise", "crop_size"),
        (SELFLABEL, "criterion_kwargs.apply_class_balance=false", "apply_class_balance", "apply_class_balancing"),
        (SELFLABEL, "optimizer_kwargs.weight_decy=0.0", "weight_decy", "weight_decay"),
        (DIGITS_SCAN, "dataset_kwargs.image_sise=8", "image_sise", "image_size"),
        (CUSTOM_SCAN, "dataset_kwargs.test_fractoin=0.3", "test_fractoin", "test_fraction"),
    ],
)
def test_mistyped_nested_key_names_the_closest_valid_one(env, config, override, typo, suggestion):
    with pytest.raises(ConfigError, match=rf"Unknown config key '{typo}' in .*Did you mean '{suggestion}'\?"):
        load_config(env, config, [override])


def test_mistyped_nested_key_in_a_file_is_an_error(env, tmp_path):
    cfg = yaml.safe_load(SCAN.read_text())
    cfg["augmentation_kwargs"]["cutout_kwargs"]["holes"] = 2
    bad = tmp_path / "bad.yml"
    bad.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="'holes' in augmentation_kwargs.cutout_kwargs.*n_holes"):
        load_config(env, bad)


def test_kwargs_follow_the_chosen_optimizer_and_criterion(env):
    # momentum is an SGD setting: with Adam it would be silently meaningless, so it is refused.
    with pytest.raises(ConfigError, match="'momentum' in optimizer_kwargs"):
        load_config(env, SCAN, ["optimizer_kwargs.momentum=0.9"])
    assert load_config(env, SIMCLR, ["optimizer_kwargs.momentum=0.5"])["optimizer_kwargs"]["momentum"] == 0.5
    with pytest.raises(ConfigError, match="'temperature' in criterion_kwargs"):
        load_config(env, SCAN, ["criterion_kwargs.temperature=0.1"])
    with pytest.raises(ConfigError, match="'optimizer' is 'adamw', but it must be one of sgd, adam"):
        load_config(env, SCAN, ["optimizer=adamw"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("epochs=ten", r"'epochs' must be a whole number such as 10, got 'ten'"),
        ("epochs=2.5", r"'epochs' must be a whole number such as 10, got 2.5"),
        ("batch_size=0", r"'batch_size' is 0, but it must be 1 or more"),
        ("batch_size=-4", r"'batch_size' is -4, but it must be 1 or more"),
        ("num_classes=true", r"'num_classes' must be a whole number such as 10, got True"),
        ("amp=maybe", r"'amp' is 'maybe', but it must be one of auto, true, false"),
        ("augmentation_backend=gpu", r"'augmentation_backend' is 'gpu', but it must be one of pil, batched, auto"),
        ("optimizer_kwargs.lr=fast", r"'optimizer_kwargs.lr' must be a number such as 0.4 or 1e-4, got 'fast'"),
        ("augmentation_kwargs.horizontal_flip=0", r"'augmentation_kwargs.horizontal_flip' must be true or false"),
        ("augmentation_kwargs.normalize=0.5", r"'augmentation_kwargs.normalize' must be a mapping"),
        ("seed=abc", r"'seed' must be a whole number such as 10 or null"),
    ],
)
def test_wrong_value_types_are_named(env, override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(env, SCAN, [override])


def test_numbers_accept_ints_and_floats_where_a_number_is_meant(env):
    cfg = load_config(env, SCAN, ["optimizer_kwargs.lr=1", "criterion_kwargs.entropy_weight=5", "seed=null"])
    assert cfg["optimizer_kwargs"]["lr"] == 1 and cfg["seed"] is None


@pytest.mark.parametrize("name", ["cifar10", "cifar20", "stl10", "imagenet_50", "imagenet_100", "imagenet_200"])
def test_paper_selflabel_configs_keep_the_papers_rule_and_last_epoch(env, name):
    cfg = load_config(env, ROOT / "configs" / "selflabel" / f"selflabel_{name}.yml")
    assert (cfg["pseudo_labels"], cfg["selflabel_keep"], cfg["confidence_threshold"]) == ("threshold", "last", 0.99)


def test_config_comments_point_only_at_what_exists():
    """A config's comments send the user to doc sections, files and make targets: each one must exist."""
    docs = [(ROOT / "README.md").read_text(), *(page.read_text() for page in (ROOT / "docs").glob("*.md"))]
    headings = {line.lstrip("#").strip() for text in docs for line in text.splitlines() if line.startswith("#")}
    makefile = (ROOT / "Makefile").read_text()
    for path in CONFIGS:
        text = path.read_text()
        comments = "\n".join(line for line in text.splitlines() if "#" in line)
        assert "REFERENCE" not in comments, f"{path.name}: REFERENCE.md is not part of the repository"
        for section in re.findall(r'section "([^"]+)"', comments):
            assert section in headings, f"{path.name}: no doc has a section {section!r}"
        for named in re.findall(r"\b((?:configs|data|models|utils|docs)/[\w/-]+\.(?:yml|py|md))", comments):
            assert (ROOT / named).is_file(), f"{path.name}: {named} does not exist"
        for target in re.findall(r"`make ([\w-]+)", comments):
            assert re.search(rf"^{re.escape(target)}:", makefile, re.M), f"{path.name}: no make target {target}"


def test_exponent_numbers_are_floats_in_set_values_and_in_files(env, tmp_path):
    """PyTorch users write learning rates as 1e-4; YAML 1.1 alone reads that as a string."""
    cfg = load_config(env, SCAN, ["optimizer_kwargs.lr=1e-4", "criterion_kwargs.entropy_weight=5E0"])
    assert cfg["optimizer_kwargs"]["lr"] == pytest.approx(0.0001) and isinstance(cfg["optimizer_kwargs"]["lr"], float)
    assert cfg["criterion_kwargs"]["entropy_weight"] == 5.0
    config = tmp_path / "exp.yml"
    text = SCAN.read_text().replace("lr: 0.0001", "lr: 5E-4").replace("entropy_weight: 5.0", "entropy_weight: 1e1")
    config.write_text(text)
    assert "lr: 5E-4" in config.read_text() and "entropy_weight: 1e1" in config.read_text()
    cfg = load_config(env, config)
    assert cfg["optimizer_kwargs"]["lr"] == pytest.approx(0.0005) and cfg["criterion_kwargs"]["entropy_weight"] == 10.0
    parsed = parse_overrides(["a=-2.5e-3", "b=1e3", "c=abc1e3", "d=1"])
    assert parsed == {"a": -0.0025, "b": 1000.0, "c": "abc1e3", "d": 1}


def test_num_workers_is_auto_by_default_and_in_the_papers_configs(env, tmp_path):
    """A small machine runs the paper's configs as shipped; the paper's worker counts stay in a comment."""
    from utils.config import auto_num_workers

    minimal = tmp_path / "minimal.yml"
    minimal.write_text("setup: scan\nbackbone: resnet18\nnum_classes: 10\ntrain_db_name: x\nval_db_name: x\n")
    assert load_config(env, minimal)["num_workers"] == auto_num_workers()
    papers = [path for path in CONFIGS if "custom" not in path.name and "digits" not in path.name]
    assert len(papers) == 19
    for path in papers:
        (line,) = [line for line in path.read_text().splitlines() if line.startswith("num_workers:")]
        assert re.match(r"num_workers: auto +# the paper: (8|12|16);", line), f"{path.name}: {line}"
        assert load_config(env, path)["num_workers"] == auto_num_workers()


def test_each_stage_accepts_only_the_keys_it_reads(env, tmp_path):
    """One key set serves five stages: a key a stage would ignore is refused, naming the stage that reads it."""
    with pytest.raises(ConfigError, match=r"'confidence_threshold' \(--set confidence_threshold\) is read by "
                       r"selflabel\.py \(setup: selflabel\), not by this simclr stage"):  # fmt: skip
        load_config(env, SIMCLR, ["confidence_threshold=0.9"])
    with pytest.raises(ConfigError, match=r"'knn_every' .* is read by simclr\.py"):
        load_config(env, SCAN, ["knn_every=5"])
    with pytest.raises(ConfigError, match=r"'criterion_kwargs' \(--set criterion_kwargs.temperature\) is read by"):
        load_config(env, ROOT / "configs/pretext/moco_imagenet50.yml", ["criterion_kwargs.temperature=0.2"])
    with pytest.raises(ConfigError, match=r"'num_heads' \(--set num_heads\) is read by scan\.py .* / selflabel\.py"):
        load_config(env, SIMCLR, ["num_heads=2"])
    config = tmp_path / "moco.yml"
    config.write_text((ROOT / "configs/pretext/moco_imagenet50.yml").read_text() + "epochs: 10\n")
    with pytest.raises(ConfigError, match=rf"'epochs' \(in {re.escape(str(config))}\) is read by simclr\.py"):
        load_config(env, config)
    # The keys a stage does read still pass, whichever file or flag sets them.
    assert load_config(env, SCAN, ["num_neighbors=5", "num_heads=2", "root_dir=elsewhere"])["num_neighbors"] == 5


def test_each_stage_prints_only_its_own_settings(env):
    from utils.config import format_config

    simclr = yaml.safe_load(format_config(load_config(env, SIMCLR)))
    assert {"criterion_kwargs", "knn_every", "topk_neighbors_train", "pretext_model"} <= set(simclr)
    assert not {"confidence_threshold", "num_neighbors", "num_heads", "scan_dir", "selflabel_model"} & set(simclr)
    selflabel = yaml.safe_load(format_config(load_config(env, ROOT / "configs/selflabel/selflabel_cifar10.yml")))
    assert {"confidence_threshold", "scan_model", "selflabel_dir", "num_heads"} <= set(selflabel)
    assert not {"knn_every", "topk_neighbors_train", "num_neighbors", "pretext_model"} & set(selflabel)


def test_the_default_env_file_is_the_repositorys_configs_env_yml():
    import argparse
    from pathlib import Path

    from utils.config import add_config_arguments

    parser = argparse.ArgumentParser()
    add_config_arguments(parser, env_required=False)
    args = parser.parse_args(["--config_exp", "x.yml"])
    assert Path(args.config_env) == Path(__file__).resolve().parents[1] / "configs" / "env.yml"
    assert Path(args.config_env).is_file()

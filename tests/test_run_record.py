"""The rerun rule (engine/run_record.py): a stage compares what it is asked to do with the record of what produced
its files, and trains, resumes, continues, does nothing, starts over or stops accordingly (docs/reliability.md)."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import eval as eval_script
import scan
import selflabel
import simclr
from engine.model_files import read_model_file
from engine.run_record import (
    FREE_KEYS,
    MODEL_AND_DATA_KEYS,
    ChangedInputsError,
    config_record,
    covered,
    current_record,
    differences,
)
from tests.conftest import tiny_args, write_random_pretext_outputs
from utils.config import load_config
from utils.guard import TrainingStopped

SCAN = "scan/scan_cifar10.yml"
PRETEXT_OVERRIDES = ["backbone_kwargs.base_width=2", "num_workers=0", "batch_size=10"]


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def scan_inputs(tiny_env):
    """Random pretext outputs of the tiny CIFAR copy (20 train, 10 test images); returns the scan folder."""
    write_random_pretext_outputs(tiny_env, PRETEXT_OVERRIDES, (20, 21), (10, 6))
    return tiny_env.parent / "results/cifar-10/scan"


def run_scan(env, *overrides: str, flags: tuple[str, ...] = ()) -> dict:
    return scan.main([*tiny_args(env, SCAN, "epochs=1", *overrides), *flags])


def old_folders(stage_dir: Path) -> list[Path]:
    return sorted(stage_dir.parent.glob(stage_dir.name + ".old-*"))


def test_a_finished_run_with_the_same_inputs_is_up_to_date_and_trains_nothing(tiny_env, scan_inputs, capsys):
    first = run_scan(tiny_env)  # case a: no checkpoint, trains
    model_bytes = (scan_inputs / "model.pth.tar").read_bytes()
    capsys.readouterr()
    start = time.perf_counter()
    again = run_scan(tiny_env, "num_workers=0")  # num_workers is free: still the same inputs
    out = capsys.readouterr().out
    assert time.perf_counter() - start < 5
    assert "Up to date" in out and str(scan_inputs / "model.pth.tar") in out and "Epoch" not in out
    assert again == json.loads((scan_inputs / "metrics.json").read_text()) and again["ACC"] == first["ACC"]
    assert (scan_inputs / "model.pth.tar").read_bytes() == model_bytes and not old_folders(scan_inputs)


def test_a_changed_setting_starts_a_finished_run_over_and_keeps_the_old_one(tiny_env, scan_inputs, capsys):
    run_scan(tiny_env)
    old_model = (scan_inputs / "model.pth.tar").read_bytes()
    old_files = sorted(path.name for path in scan_inputs.iterdir())
    capsys.readouterr()
    run_scan(tiny_env, "criterion_kwargs.entropy_weight=2.0")  # case e
    out = capsys.readouterr().out
    [moved] = old_folders(scan_inputs)
    assert "Starting over" in out and "criterion_kwargs.entropy_weight: 5.0 → 2.0" in out and str(moved) in out
    assert sorted(path.name for path in moved.iterdir()) == old_files
    assert (moved / "model.pth.tar").read_bytes() == old_model
    record = read_model_file(scan_inputs / "model.pth.tar").record
    assert record["config"]["criterion_kwargs"]["entropy_weight"] == 2.0 and record["changes_on_resume"] == []
    assert torch.load(scan_inputs / "checkpoint.pth.tar", weights_only=True)["record"]["config"] == record["config"]


def test_a_new_neighbour_file_starts_scan_over_and_is_recorded(tiny_env, scan_inputs, capsys):
    run_scan(tiny_env)
    neighbours = tiny_env.parent / "results/cifar-10/pretext/topk-train-neighbors.npy"
    old_sha = sha(neighbours)
    np.save(neighbours, np.random.default_rng(1).integers(0, 20, size=(20, 21)))
    capsys.readouterr()
    run_scan(tiny_env)
    out = capsys.readouterr().out
    assert f"topk_neighbors_train_path: cifar-10/pretext/topk-train-neighbors.npy (sha256 {old_sha[:12]}) →" in out
    assert len(old_folders(scan_inputs)) == 1
    inputs = read_model_file(scan_inputs / "model.pth.tar").record["inputs"]
    assert inputs["topk_neighbors_train_path"] == {
        "path": "cifar-10/pretext/topk-train-neighbors.npy",
        "sha256": sha(neighbours),
    }


def test_more_epochs_continue_a_finished_run_and_say_so(tiny_env, scan_inputs, capsys):
    run_scan(tiny_env)
    capsys.readouterr()
    run_scan(tiny_env, "epochs=2")  # case d
    out = capsys.readouterr().out
    assert "continuing the finished run from epoch 1 to 2" in out and "Epoch 2/2" in out and "Epoch 1/2" not in out
    assert torch.load(scan_inputs / "checkpoint.pth.tar", weights_only=True)["epoch"] == 2
    record = json.loads((scan_inputs / "metrics.json").read_text())["record"]
    assert record["changes_on_resume"] == ["epochs: 1 → 2 (continued after finishing)"]
    assert not old_folders(scan_inputs)


def stop_after_first_epoch(monkeypatch, module) -> None:
    """SIGTERM during the first epoch, as a scheduler sends it: the stage saves a checkpoint at epoch 1 and stops."""
    original = module.train_one_epoch

    def train_then_stop(*args, **kwargs):
        result = original(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)
        return result

    monkeypatch.setattr(module, "train_one_epoch", train_then_stop)


def test_an_unfinished_run_resumes_exactly_and_refuses_changed_inputs(tiny_env, scan_inputs, monkeypatch, capsys):
    run_scan(tiny_env, "epochs=2", "seed=3")
    straight = torch.load(scan_inputs / "checkpoint.pth.tar", weights_only=True)["model"]
    with monkeypatch.context() as patch:
        stop_after_first_epoch(patch, scan)
        with pytest.raises(TrainingStopped):
            scan.main([*tiny_args(tiny_env, SCAN, "epochs=2", "seed=3"), "--fresh"])
    checkpoint_bytes = (scan_inputs / "checkpoint.pth.tar").read_bytes()
    moved_before = old_folders(scan_inputs)

    with pytest.raises(ChangedInputsError) as refused:  # case f: nothing is touched
        run_scan(tiny_env, "epochs=2", "seed=3", "criterion_kwargs.entropy_weight=2.0")
    message = str(refused.value)
    assert "criterion_kwargs.entropy_weight: 5.0 → 2.0" in message and "--fresh" in message
    assert "--resume_changed" in message
    with pytest.raises(ChangedInputsError, match="cannot continue it: num_heads"):
        run_scan(tiny_env, "epochs=2", "seed=3", "num_heads=2", flags=("--resume_changed",))
    assert (scan_inputs / "checkpoint.pth.tar").read_bytes() == checkpoint_bytes
    assert old_folders(scan_inputs) == moved_before

    capsys.readouterr()
    run_scan(tiny_env, "epochs=2", "seed=3")  # case b: the same inputs resume, bit for bit
    assert "Resuming from" in capsys.readouterr().out
    resumed = torch.load(scan_inputs / "checkpoint.pth.tar", weights_only=True)["model"]
    assert all(torch.equal(straight[key], resumed[key]) for key in straight)


def test_resume_changed_continues_under_the_new_settings_and_records_it(tiny_env, scan_inputs, monkeypatch):
    with monkeypatch.context() as patch:
        stop_after_first_epoch(patch, scan)
        with pytest.raises(TrainingStopped):
            run_scan(tiny_env, "epochs=2", "batch_size=10")
    run_scan(tiny_env, "epochs=2", "batch_size=5", flags=("--resume_changed",))
    checkpoint = torch.load(scan_inputs / "checkpoint.pth.tar", weights_only=True)
    assert checkpoint["epoch"] == 2 and checkpoint["record"]["changes_on_resume"] == ["batch_size: 10 → 5"]
    assert json.loads((scan_inputs / "metrics.json").read_text())["record"]["changes_on_resume"] == [
        "batch_size: 10 → 5"
    ]


def test_a_new_pretext_model_starts_scan_over_and_a_new_scan_model_starts_selflabel_over(tiny_env, capsys):
    pretext = ["epochs=1", "augmentation_kwargs.random_resized_crop.size=8", "topk_neighbors_train=5"]
    simclr.main(tiny_args(tiny_env, "pretext/simclr_cifar10.yml", *pretext))
    scan_args = ("augmentation_kwargs.crop_size=8", "num_neighbors=5")
    run_scan(tiny_env, *scan_args)
    selflabel_args = ["epochs=1", "augmentation_kwargs.crop_size=8", "confidence_threshold=0.3"]
    selflabel.main(tiny_args(tiny_env, "selflabel/selflabel_cifar10.yml", *selflabel_args))
    results = tiny_env.parent / "results/cifar-10"

    simclr.main([*tiny_args(tiny_env, "pretext/simclr_cifar10.yml", *pretext, "seed=1"), "--fresh"])
    capsys.readouterr()
    run_scan(tiny_env, *scan_args)
    out = capsys.readouterr().out
    assert "Starting over" in out and "pretext_model: cifar-10/pretext/model.pth.tar" in out
    scan_record = read_model_file(results / "scan/model.pth.tar").record
    assert scan_record["inputs"]["pretext_model"]["sha256"] == sha(results / "pretext/model.pth.tar")

    selflabel.main(tiny_args(tiny_env, "selflabel/selflabel_cifar10.yml", *selflabel_args))
    out = capsys.readouterr().out
    assert "Starting over" in out and "scan_model: cifar-10/scan/model.pth.tar" in out
    assert len(old_folders(results / "selflabel")) == 1
    record = read_model_file(results / "selflabel/model.pth.tar").record
    assert record["stage"] == "selflabel" and record["inputs"]["scan_model"]["sha256"] == sha(
        results / "scan/model.pth.tar"
    )

    eval_script.main(
        [
            "--config_exp",
            str(Path(__file__).parents[1] / "configs" / "selflabel/selflabel_cifar10.yml"),
            "--config_env",
            str(tiny_env),
            "--model",
            str(results / "selflabel/model.pth.tar"),
            "--set",
            *selflabel_args[1:2],
        ]
    )
    out = capsys.readouterr().out
    assert f"Model {results / 'selflabel/model.pth.tar'}: selflabel stage, written " in out
    assert f"scan_model cifar-10/scan/model.pth.tar ({sha(results / 'scan/model.pth.tar')[:12]})" in out


def test_a_model_without_record_is_described_as_of_unknown_inputs(tmp_path):
    from engine.model_files import describe_record

    assert "no record of what produced it" in describe_record(tmp_path / "zoo.pth.tar", None)


def test_every_experiment_key_outside_the_free_list_changes_the_comparison(tiny_env):
    cfg = load_config(tiny_env, Path(__file__).parents[1] / "configs" / SCAN)
    write_random_pretext_outputs(tiny_env, PRETEXT_OVERRIDES, (20, 21), (10, 6))
    record = current_record(cfg, argparse.Namespace())
    assert set(record["inputs"]) == {"pretext_model", "topk_neighbors_train_path", "topk_neighbors_val_path"}
    for key, new in [("optimizer_kwargs.lr", 0.5), ("augmentation_kwargs.num_strong_augs", 2), ("seed", 7)]:
        changed = load_config(tiny_env, Path(__file__).parents[1] / "configs" / SCAN, [f"{key}={new}"])
        assert [line.split(":")[0] for line in differences(record, current_record(changed, None), FREE_KEYS)] == [key]
    for key, new in [("num_workers", 0), ("amp", True), ("augmentation_backend", "pil"), ("tensorboard", True)]:
        changed = load_config(tiny_env, Path(__file__).parents[1] / "configs" / SCAN, [f"{key}={new}"])
        assert differences(record, current_record(changed, None), FREE_KEYS) == []
    assert not set(FREE_KEYS) & set(MODEL_AND_DATA_KEYS)


# What the run record's comparison covers ------------------------------------------------------------------------
def scan_config() -> dict:
    """A SCAN config as load_config returns it (experiment keys, plus paths and machine settings)."""
    return {
        "setup": "scan",
        "backbone": "resnet18",
        "backbone_kwargs": {"base_width": 64},
        "model_kwargs": {"head": "mlp", "features_dim": 128},
        "num_classes": 10,
        "num_heads": 1,
        "train_db_name": "cifar-10",
        "val_db_name": "cifar-10",
        "train_split": "train",
        "dataset_kwargs": {"image_size": 32},
        "criterion": "scan",
        "criterion_kwargs": {"entropy_weight": 5.0},
        "epochs": 50,
        "optimizer": "adam",
        "optimizer_kwargs": {"lr": 1e-4, "weight_decay": 1e-4},
        "scheduler": "constant",
        "batch_size": 128,
        "num_workers": 8,
        "augmentation_strategy": "ours",
        "augmentation_kwargs": {"crop_size": 32, "num_strong_augs": 4, "random_resized_crop": {"size": 32}},
        "transformation_kwargs": {"crop_size": 32},
        "seed": 0,
        "amp": "auto",
        "resume": True,
        "tensorboard": False,
        "topk_neighbors_train": 20,
        "topk_neighbors_val": 5,
        "knn_monitor_k": 100,
        "knn_every": 10,
        "num_neighbors": 20,
        "update_cluster_head_only": False,
        "head_input": "images",
        "save_features": False,
        "scan_dir": "/results/cifar-10/scan",  # a path: not part of the experiment
    }


def changed(cfg: dict, dotted: str, value) -> dict:
    """A deep copy of `cfg` with the (possibly nested, possibly new) key `dotted` set to `value`."""
    import copy

    cfg = copy.deepcopy(cfg)
    *parents, last = dotted.split(".")
    node = cfg
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return cfg


# Each decides which model is built, which images it sees, or which parameters the optimizer holds.
MODEL_OR_DATA_CHANGES = [
    ("backbone", "resnet50"),
    ("backbone_kwargs.base_width", 8),
    ("backbone_kwargs.stem", "stl"),
    ("num_classes", 20),
    ("num_heads", 5),
    ("train_db_name", "stl-10"),
    ("val_db_name", "stl-10"),
    ("dataset_kwargs.image_size", 16),
    ("augmentation_strategy", "simclr"),
    ("augmentation_kwargs.crop_size", 28),
    ("augmentation_kwargs.random_resized_crop.size", 28),
    ("transformation_kwargs.crop_size", 28),
    ("num_neighbors", 5),
    ("update_cluster_head_only", True),
    ("head_input", "cached_features"),
    ("optimizer", "sgd"),
]
# How fast, how often to log, where to write: the same result.
FREE_CHANGES = [
    ("knn_every", 1),
    ("knn_monitor_k", 20),
    ("resume", False),
    ("tensorboard", True),
    ("num_workers", 0),
    ("amp", True),
    ("scan_dir", "/elsewhere"),
]
# The same model on the same data, trained otherwise: another result, which an unfinished run may continue into.
RESULT_CHANGES = [
    ("batch_size", 64),
    ("seed", 1),
    ("optimizer_kwargs.lr", 0.5),
    ("augmentation_kwargs.num_strong_augs", 2),
    ("criterion_kwargs.entropy_weight", 2.0),
    ("scheduler", "cosine"),
]


def record_of(cfg: dict) -> dict:
    return {"config": config_record(cfg), "inputs": {}}


def changed_keys(key: str, value) -> list[str]:
    return [
        line.split(":")[0]
        for line in differences(record_of(scan_config()), record_of(changed(scan_config(), key, value)), FREE_KEYS)
    ]


@pytest.mark.parametrize("key, value", MODEL_OR_DATA_CHANGES)
def test_each_model_or_data_key_alone_is_a_change_that_cannot_be_continued(key, value):
    assert changed_keys(key, value) == [key] and covered(key, MODEL_AND_DATA_KEYS)


@pytest.mark.parametrize("key, value", RESULT_CHANGES)
def test_each_training_key_alone_is_a_change_that_may_be_continued(key, value):
    assert changed_keys(key, value) == [key] and not covered(key, MODEL_AND_DATA_KEYS)


@pytest.mark.parametrize("key, value", FREE_CHANGES)
def test_a_free_key_or_a_path_is_no_change(key, value):
    assert changed_keys(key, value) == []


@pytest.mark.parametrize("key, value", [("model_kwargs.features_dim", 64), ("train_split", "train+unlabeled")])
def test_the_pretext_keys_are_compared_where_a_pretext_stage_reads_them(key, value):
    pretext = {**scan_config(), "setup": "simclr"}
    lines = differences(record_of(pretext), record_of(changed(pretext, key, value)), FREE_KEYS)
    assert [line.split(":")[0] for line in lines] == [key] and changed_keys(key, value) == []  # SCAN: not read


def test_a_key_the_saved_record_lacks_is_no_change_at_its_default_and_a_change_otherwise():
    """A record written before `head_input` existed: the run that leaves it at its default (the behaviour of that
    time) is the same run; one that sets another value is not."""
    old = record_of(scan_config())
    del old["config"]["head_input"]
    assert differences(old, record_of(scan_config()), FREE_KEYS) == []
    assert differences(old, record_of(changed(scan_config(), "head_input", "cached_features")), FREE_KEYS) == [
        "head_input: 'images' → 'cached_features'"
    ]


def test_the_comparison_does_not_depend_on_the_order_of_keys():
    cfg = scan_config()
    reordered = dict(reversed(list(cfg.items())))
    cfg["backbone_kwargs"] = {"base_width": 64, "stem": "cifar"}
    reordered["backbone_kwargs"] = {"stem": "cifar", "base_width": 64}  # nested keys in the other order too
    assert differences(record_of(reordered), record_of(cfg), FREE_KEYS) == []

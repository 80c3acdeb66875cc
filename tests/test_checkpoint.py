"""utils/checkpoint.py: saves that refuse non-finite tensors, the published legacy format, `module.` prefixes, clear
key errors, what the config fingerprint covers, which config changes a resume refuses."""

from __future__ import annotations

import io
import os
import pickle

import numpy as np
import pytest
import torch

from models import ClusteringModel, build_backbone
from tests.conftest import ROOT
from utils.checkpoint import (
    CheckpointError,
    NonFiniteError,
    check_resumable,
    config_changes,
    config_fingerprint,
    load_checkpoint,
    load_state_dict_checked,
    non_finite_tensors,
    resume,
    save_atomic,
    training_checkpoint,
)
from utils.config import auto_num_workers, load_config


def legacy_cuda_file(obj: object) -> bytes:
    """Bytes as torch 1.4 + numpy 1 wrote them: legacy serialisation, tensors on cuda:0, numpy-1 scalar name."""
    buffer = io.BytesIO()
    torch.save(obj, buffer, _use_new_zipfile_serialization=False)
    raw = buffer.getvalue()
    numpy2_name, cpu_location = b"numpy._core.multiarray", b"X\x03\x00\x00\x00cpu"
    assert raw.count(cpu_location) >= 1
    raw = raw.replace(cpu_location, b"X\x06\x00\x00\x00cuda:0")  # pickled storage location string
    return raw.replace(numpy2_name, b"numpy.core.multiarray")


def test_published_scan_format_loads_with_numpy1_head(tmp_path):
    weight = torch.arange(6.0).view(2, 3)
    path = tmp_path / "scan_cifar-10.pth.tar"
    path.write_bytes(legacy_cuda_file({"model": {"cluster_head.0.weight": weight}, "head": np.int64(3)}))
    assert b"numpy.core.multiarray" in path.read_bytes() and b"cuda:0" in path.read_bytes()
    checkpoint = load_checkpoint(path)
    assert int(checkpoint["head"]) == 3
    assert torch.equal(checkpoint["model"]["cluster_head.0.weight"], weight)
    assert checkpoint["model"]["cluster_head.0.weight"].device.type == "cpu"


def test_arbitrary_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pth.tar"
    with open(path, "wb") as handle:
        pickle.dump({"model": {}, "head": Evil()}, handle)
    with pytest.raises(CheckpointError, match="Could not read"):
        load_checkpoint(path)


def test_missing_checkpoint_names_the_file_and_the_fix(tmp_path):
    with pytest.raises(CheckpointError, match="model.pth.tar.*Run simclr.py"):
        load_checkpoint(tmp_path / "model.pth.tar", "Run simclr.py first.")


def test_save_atomic_keeps_the_old_file_when_saving_fails(tmp_path):
    path = tmp_path / "model.pth.tar"
    save_atomic({"w": torch.ones(2)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        save_atomic({"w": Unpicklable()}, path)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["model.pth.tar"]  # no temporary file left behind


def tiny_model(heads: int = 1) -> ClusteringModel:
    return ClusteringModel(build_backbone("resnet18", base_width=2), num_classes=3, num_heads=heads)


def test_module_prefix_from_ddp_is_stripped():
    source, target = tiny_model(), tiny_model()
    prefixed = {"module." + key: value for key, value in source.state_dict().items()}
    load_state_dict_checked(target, prefixed)
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))


def test_wrong_keys_are_listed():
    state = tiny_model(heads=2).state_dict()
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as error:
        load_state_dict_checked(tiny_model(heads=1), state)
    message = str(error.value)
    assert "unexpected keys: cluster_head.1.weight, cluster_head.1.bias, extra.weight" in message
    assert "missing keys: none" in message


def test_shape_mismatch_is_listed():
    other = ClusteringModel(build_backbone("resnet18", base_width=2), num_classes=5)
    with pytest.raises(CheckpointError, match=r"cluster_head.0.weight: file \(5, 16\) vs model \(3, 16\)"):
        load_state_dict_checked(tiny_model(), other.state_dict())


def test_pretext_into_clustering_allows_only_contrastive_head_unused():
    from models import ContrastiveModel

    pretext = ContrastiveModel(build_backbone("resnet18", base_width=2), features_dim=8).state_dict()
    model = tiny_model()
    load_state_dict_checked(model, pretext, allowed_unused=("contrastive_head",), allowed_missing=("cluster_head",))
    assert torch.equal(model.state_dict()["backbone.conv1.weight"], pretext["backbone.conv1.weight"])
    with pytest.raises(CheckpointError, match="unexpected keys: contrastive_head"):
        load_state_dict_checked(tiny_model(), pretext, allowed_missing=("cluster_head",))


def test_save_atomic_creates_missing_parent_folders(tmp_path):
    path = tmp_path / "a" / "b" / "model.pth.tar"
    save_atomic({"x": torch.ones(2)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.ones(2))
    assert [p.name for p in path.parent.iterdir()] == ["model.pth.tar"]  # no temporary file left behind


# What the checkpoint fingerprint covers ------------------------------------------------------------------------
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
    ("setup", "selflabel"),
    ("backbone", "resnet50"),
    ("backbone_kwargs.base_width", 8),
    ("backbone_kwargs.stem", "stl"),
    ("model_kwargs.features_dim", 64),
    ("num_classes", 20),
    ("num_heads", 5),
    ("train_db_name", "stl-10"),
    ("val_db_name", "stl-10"),
    ("train_split", "train+unlabeled"),
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


# How long, how fast, how often to log, where to write: the same model on the same data.
FREE_CHANGES = [
    ("epochs", 100),
    ("knn_every", 1),
    ("knn_monitor_k", 20),
    ("resume", False),
    ("tensorboard", True),
    ("topk_neighbors_train", 50),
    ("save_features", True),
    ("batch_size", 64),
    ("num_workers", 0),
    ("seed", 1),
    ("amp", True),
    ("optimizer_kwargs.lr", 0.5),
    ("augmentation_kwargs.num_strong_augs", 2),
    ("criterion_kwargs.entropy_weight", 2.0),
    ("scan_dir", "/elsewhere"),
]


@pytest.mark.parametrize("key, value", MODEL_OR_DATA_CHANGES)
def test_each_model_or_data_key_alone_changes_the_fingerprint(key, value):
    assert config_fingerprint(changed(scan_config(), key, value)) != config_fingerprint(scan_config())


@pytest.mark.parametrize("key, value", FREE_CHANGES)
def test_a_key_outside_the_model_and_data_leaves_the_fingerprint(key, value):
    assert config_fingerprint(changed(scan_config(), key, value)) == config_fingerprint(scan_config())


def test_the_fingerprint_does_not_depend_on_the_order_of_keys():
    cfg = scan_config()
    reordered = dict(reversed(list(cfg.items())))
    cfg["backbone_kwargs"] = {"base_width": 64, "stem": "cifar"}
    reordered["backbone_kwargs"] = {"stem": "cifar", "base_width": 64}  # nested keys in the other order too
    assert config_fingerprint(reordered) == config_fingerprint(cfg)
    assert len(config_fingerprint(cfg)) == 16 and int(config_fingerprint(cfg), 16) >= 0  # 16 hex digits


# Non-finite weights never saved --------------------------------------------------------------------------------
def test_non_finite_tensors_are_found_anywhere_in_a_checkpoint_and_integers_are_ignored():
    checkpoint = {
        "model": {"w": torch.ones(2), "b": torch.tensor([0.0, float("inf")])},
        "optimizer": {"state": {0: {"exp_avg": torch.tensor([float("nan")])}}},
        "heads": [torch.zeros(1), torch.tensor([-float("inf")], dtype=torch.bfloat16)],
        "step": torch.tensor([3], dtype=torch.long),
        "epoch": 4,
    }
    assert non_finite_tensors(checkpoint) == ["model.b.", "optimizer.state.0.exp_avg.", "heads.1."]
    assert non_finite_tensors(torch.tensor(float("nan"))) == ["tensor"]
    assert non_finite_tensors({"model": {"w": torch.ones(2)}, "step": 3}) == []


def test_a_checkpoint_with_a_non_finite_optimizer_state_is_not_written(tmp_path):
    path = tmp_path / "checkpoint.pth.tar"
    with pytest.raises(NonFiniteError, match="exp_avg"):
        save_atomic({"model": {"w": torch.ones(2)}, "optimizer": {"exp_avg": torch.tensor([float("nan")])}}, path)
    assert list(tmp_path.iterdir()) == []


def test_non_finite_weights_never_replace_a_saved_file(tmp_path):
    path = tmp_path / "model.pth.tar"
    save_atomic({"w": torch.ones(3)}, path)
    before = path.read_bytes()
    with pytest.raises(NonFiniteError, match=r"(?s)model.pth.tar.*w.*unchanged"):
        save_atomic({"w": torch.tensor([1.0, float("nan"), 2.0])}, path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["model.pth.tar"]


# Config fingerprint and resume --------------------------------------------------------------------------
SCAN_CONFIG = ROOT / "configs/scan/scan_cifar10.yml"


def test_config_changes_are_sorted_into_refused_noted_and_free(tiny_cifar_env):
    saved = load_config(tiny_cifar_env, SCAN_CONFIG)
    record = training_checkpoint(saved, torch.nn.Linear(1, 1), torch.optim.SGD([torch.zeros(1)], lr=1))["config"]
    changed = load_config(
        tiny_cifar_env,
        SCAN_CONFIG,
        ["num_heads=3", "backbone_kwargs.base_width=8", "augmentation_kwargs.crop_size=28", "epochs=7"]
        + ["num_workers=0", "batch_size=64", "optimizer_kwargs.lr=0.5", "augmentation_kwargs.num_strong_augs=2"],
    )
    refused, noted = config_changes(record, changed)
    assert refused == [
        "augmentation_kwargs.crop_size: checkpoint 32, now 28",
        "backbone_kwargs.base_width: checkpoint (unset), now 8",
        "num_heads: checkpoint 1, now 3",
    ]
    assert noted == [
        "augmentation_kwargs.num_strong_augs: checkpoint 4, now 2",
        "batch_size: checkpoint 128, now 64",
        f"num_workers: checkpoint {auto_num_workers()}, now 0",  # the paper's config says auto
        "optimizer_kwargs.lr: checkpoint 0.0001, now 0.5",
    ]
    assert config_changes(record, load_config(tiny_cifar_env, SCAN_CONFIG, ["epochs=9"])) == ([], [])


def test_resuming_under_other_model_settings_is_refused_with_the_way_out(tiny_cifar_env, tmp_path):
    cfg = load_config(tiny_cifar_env, SCAN_CONFIG)
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    checkpoint = training_checkpoint(cfg, model, optimizer, epoch=1, step=0)
    other = load_config(tiny_cifar_env, SCAN_CONFIG, ["num_classes=20"])
    with pytest.raises(CheckpointError) as error:
        check_resumable(checkpoint, other, tmp_path / "scan" / "checkpoint.pth.tar")
    message = str(error.value)
    assert "num_classes: checkpoint 10, now 20" in message
    assert "--fresh" in message and "--set resume=false" in message and "nothing deleted" in message


def test_resume_false_ignores_the_checkpoint_and_odd_files_are_refused(tiny_cifar_env, tmp_path):
    model, path = torch.nn.Linear(2, 2), tmp_path / "checkpoint.pth.tar"
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    cfg = load_config(tiny_cifar_env, SCAN_CONFIG)
    save_atomic(training_checkpoint(cfg, model, optimizer, epoch=4, step=0), path)
    assert resume(path, model, optimizer, {**cfg, "resume": False}) == {"epoch": 0}
    assert resume(path, model, optimizer, cfg)["epoch"] == 4
    save_atomic({"model": model.state_dict(), "head": 0}, path)  # a SCAN model file, not a checkpoint
    with pytest.raises(CheckpointError, match="not a resumable checkpoint"):
        resume(path, model, optimizer, cfg)


def test_unreadable_checkpoints_are_explained(tmp_path):
    marker = tmp_path / "code_ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"model": {}, "head": Evil()}, tmp_path / "evil.pth.tar")
    with pytest.raises(CheckpointError, match=r"Refused to load .*evil.pth.tar.*could run code.*posix.system"):
        load_checkpoint(tmp_path / "evil.pth.tar")
    assert not marker.exists()
    (tmp_path / "random.pth.tar").write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_checkpoint(tmp_path / "random.pth.tar")
    save_atomic({"w": torch.ones(1000)}, tmp_path / "good.pth.tar")
    (tmp_path / "cut.pth.tar").write_bytes((tmp_path / "good.pth.tar").read_bytes()[:2000])
    with pytest.raises(CheckpointError, match="truncated or corrupt.*--fresh"):
        load_checkpoint(tmp_path / "cut.pth.tar")

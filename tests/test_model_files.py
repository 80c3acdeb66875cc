"""Model files that record their architecture: formats the original code still loads, records that decide."""

from __future__ import annotations

import json

import pytest
import torch

from engine.model_files import (
    architecture_differences,
    architecture_record,
    load_model_file,
    read_model_file,
    require_matching_architecture,
    save_scan_file,
    save_state_dict_file,
    sidecar_path,
)
from models import ClusteringModel, ContrastiveModel, build_backbone
from utils.checkpoint import CheckpointError

SCAN_CFG = {
    "setup": "scan",
    "backbone": "resnet18",
    "backbone_kwargs": {"base_width": 4},
    "num_classes": 3,
    "num_heads": 2,
}


def test_record_spells_out_the_backbone_defaults():
    record = architecture_record(SCAN_CFG)
    assert record == {
        "format": 1,
        "kind": "clustering",
        "backbone": "resnet18",
        "backbone_kwargs": {"stem": "cifar", "base_width": 4},
        "num_classes": 3,
        "num_heads": 2,
    }
    assert architecture_record(SCAN_CFG, num_heads=1)["num_heads"] == 1  # a self-label file keeps one head
    pretext = architecture_record(
        {"setup": "simclr", "backbone": "resnet18", "backbone_kwargs": {}, "model_kwargs": {"features_dim": 8}}
    )
    assert pretext["kind"] == "contrastive" and pretext["model_kwargs"] == {"features_dim": 8}
    assert pretext["backbone_kwargs"] == {"stem": "cifar", "base_width": 64}
    assert "num_classes" not in pretext


def test_plain_state_dict_file_still_loads_like_the_original_and_has_a_sidecar(tmp_path):
    model = ClusteringModel(build_backbone("resnet18", base_width=4), 3, 1)
    path = tmp_path / "model.pth.tar"
    record = architecture_record(SCAN_CFG, num_heads=1)
    save_state_dict_file(model.state_dict(), path, record)
    # The original code: model.load_state_dict(torch.load(path)), strict.
    ClusteringModel(build_backbone("resnet18", base_width=4), 3, 1).load_state_dict(torch.load(path))
    assert sidecar_path(path).name == "model.pth.tar.arch.json"
    assert json.loads(sidecar_path(path).read_text())["architecture"] == record
    assert read_model_file(path).architecture == record


def test_sidecar_of_a_replaced_file_is_ignored(tmp_path, capsys):
    path = tmp_path / "model.pth.tar"
    save_state_dict_file({"w": torch.zeros(2)}, path, architecture_record(SCAN_CFG))
    torch.save({"w": torch.ones(2)}, path)  # e.g. a model-zoo file copied over ours
    assert read_model_file(path).architecture is None
    assert "describes another version of model.pth.tar" in capsys.readouterr().out


def test_scan_file_keeps_model_and_head_for_the_original_loader(tmp_path):
    model = ClusteringModel(build_backbone("resnet18", base_width=4), 3, 2)
    path = tmp_path / "model.pth.tar"
    save_scan_file(model.state_dict(), 1, path, architecture_record(SCAN_CFG))
    state = torch.load(path, weights_only=True)
    ClusteringModel(build_backbone("resnet18", base_width=4), 3, 2).load_state_dict(state["model"])
    assert state["head"] == 1 and state["architecture"]["num_heads"] == 2
    model_file = read_model_file(path)
    assert model_file.head == 1 and model_file.architecture == architecture_record(SCAN_CFG)


def test_the_record_builds_the_model_whatever_the_config_says(tmp_path, capsys):
    torch.manual_seed(0)
    model = ClusteringModel(build_backbone("resnet18", base_width=4, stem="stl"), 3, 2)
    path = tmp_path / "model.pth.tar"
    record = architecture_record({**SCAN_CFG, "backbone_kwargs": {"base_width": 4, "stem": "stl"}})
    save_scan_file(model.state_dict(), 1, path, record)
    config = {**SCAN_CFG, "backbone_kwargs": {"base_width": 64}}  # the template, without the run's --set
    loaded, head = load_model_file(config, path)
    assert head == 1 and loaded.num_heads == 2 and loaded.backbone.out_dim == 32
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    out = capsys.readouterr().out
    assert "backbone_kwargs.base_width: file 4, config 64" in out and "backbone_kwargs.stem: file 'stl'" in out

    pretext_path = tmp_path / "pretext.pth.tar"
    pretext_cfg = {"setup": "simclr", "backbone": "resnet18", "backbone_kwargs": {"base_width": 4}}
    pretext = ContrastiveModel(build_backbone("resnet18", base_width=4), features_dim=8)
    save_state_dict_file(
        pretext.state_dict(), pretext_path, architecture_record({**pretext_cfg, "model_kwargs": {"features_dim": 8}})
    )
    loaded, head = load_model_file({**SCAN_CFG, "backbone_kwargs": {}}, pretext_path)
    assert head is None and isinstance(loaded, ContrastiveModel)


def test_a_config_that_disagrees_with_the_file_is_named_key_by_key():
    record = architecture_record({**SCAN_CFG, "backbone_kwargs": {"base_width": 16}, "num_classes": 10})
    assert architecture_differences(record, SCAN_CFG, ("backbone", "backbone_kwargs", "num_classes")) == [
        "backbone_kwargs.base_width: file 16, config 4",
        "num_classes: file 10, config 3",
    ]
    with pytest.raises(CheckpointError) as error:
        require_matching_architecture(record, SCAN_CFG, ("backbone", "backbone_kwargs"), source="pretext model p")
    message = str(error.value)
    assert "backbone_kwargs.base_width: file 16, config 4" in message and "num_classes" not in message
    assert "--set backbone_kwargs.base_width=16" in message and "shape" not in message
    require_matching_architecture(None, SCAN_CFG, ("backbone",), source="a model-zoo file")  # nothing to check


def test_a_model_of_another_dataset_is_named_as_such_before_anything_else(tmp_path, capsys):
    """A digits model with an STL-10 config: the dataset mix-up is the message, not widths or a missing STL-10."""
    digits = {
        **SCAN_CFG,
        "train_db_name": "digits",
        "num_classes": 10,
        "dataset_kwargs": {"image_size": 16},
        "backbone_kwargs": {"base_width": 4},
    }
    path = tmp_path / "model.pth.tar"
    model = ClusteringModel(build_backbone("resnet18", base_width=4), 10, 2)
    save_scan_file(model.state_dict(), 0, path, architecture_record(digits))
    assert torch.load(path, weights_only=True)["architecture"]["dataset"] == {
        "name": "digits",
        "num_classes": 10,
        "image_size": 16,
    }
    stl10 = {**digits, "train_db_name": "stl-10", "transformation_kwargs": {"crop_size": 96}, "backbone_kwargs": {}}
    with pytest.raises(CheckpointError) as error:
        load_model_file(stl10, path)
    assert str(error.value) == (
        f"{path} was trained on digits (10 classes, 16-pixel images), but the config is for stl-10 (10 classes, "
        "96-pixel images). Pass the config of digits (the one the model was trained with)."
    )
    assert "backbone_kwargs" not in capsys.readouterr().out  # named first: no width note before it
    loaded, head = load_model_file(digits, path)  # the right config loads it
    assert head == 0 and loaded.num_heads == 2


def test_a_one_head_model_file_without_a_stored_head_uses_head_zero(tmp_path):
    from engine.model_files import architecture_record, load_model_file, save_state_dict_file
    from models import ClusteringModel, build_backbone

    cfg = {"setup": "selflabel", "backbone": "resnet18", "backbone_kwargs": {"base_width": 4}, "num_classes": 3}
    model = ClusteringModel(build_backbone("resnet18", base_width=4), 3, 1)
    path = tmp_path / "self-label_model.pth.tar"
    save_state_dict_file(model.state_dict(), path, architecture_record({**cfg, "num_heads": 1}, num_heads=1))
    loaded, head = load_model_file({**cfg, "num_heads": 1}, path)
    assert head == 0 and loaded.num_heads == 1

"""utils/checkpoint.py: saves that refuse non-finite tensors, the published legacy format, `module.` prefixes, clear
key errors, resumable files."""

from __future__ import annotations

import io
import os
import pickle

import numpy as np
import pytest
import torch

from models import ClusteringModel, build_backbone
from utils.checkpoint import (
    CheckpointError,
    NonFiniteError,
    load_checkpoint,
    load_resumable,
    load_state_dict_checked,
    non_finite_tensors,
    resume,
    save_atomic,
    training_checkpoint,
)


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


def test_resume_refuses_a_file_that_is_not_a_checkpoint(tmp_path):
    model, path = torch.nn.Linear(2, 2), tmp_path / "checkpoint.pth.tar"
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    save_atomic(training_checkpoint(None, model, optimizer, epoch=4, step=0), path)
    assert resume(path, model, optimizer)["epoch"] == 4
    save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 4}, path)
    assert load_resumable(path)["epoch"] == 4  # the three keys it needs, and nothing else, are enough
    save_atomic({"model": model.state_dict(), "head": 0}, path)  # a SCAN model file, not a checkpoint
    with pytest.raises(CheckpointError, match="not a resumable checkpoint"):
        resume(path, model, optimizer)


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
    (tmp_path / "empty.pth.tar").write_bytes(b"")  # a save that died before its first byte
    with pytest.raises(CheckpointError, match=r"truncated or corrupt \(EOFError: unexpected end of file\)"):
        load_checkpoint(tmp_path / "empty.pth.tar")

"""The guard of a training loop, on a toy loop: exact resume, stop requests, non-finite losses, config checks,
crash-safe writes. Fast; the stage scripts themselves are covered by test_resume.py and test_bad_inputs.py."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from data.neighbors import NeighborsFileError, read_neighbors
from data.pair_datasets import NeighborsDataset
from engine.stage import check_cluster_count, move_aside, user_message
from tests.conftest import ROOT
from utils.checkpoint import (
    CheckpointError,
    NonFiniteError,
    check_resumable,
    config_changes,
    load_checkpoint,
    resume,
    save_atomic,
    training_checkpoint,
)
from utils.config import ConfigError, auto_num_workers, load_config
from utils.files import WriteError, save_numpy, write_json, write_summary
from utils.guard import NonFiniteLossError, TrainingGuard, TrainingStopped, finite_loss
from utils.runtime import Runtime

CPU = Runtime(device=torch.device("cpu"))


class NoisyDataset(Dataset):
    """Every sample draws from torch's, numpy's and python's generators, as augmentations do."""

    def __len__(self) -> int:
        return 24

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.full((4,), float(index)) + torch.randn(4) + float(np.random.rand()) + random.random()


def toy_run(
    path, epochs: int = 3, stop_at: tuple[int, int | None] | None = None, signum: int = signal.SIGTERM, repeat: int = 1
) -> dict:
    """A loop shaped like a stage's (6 steps per epoch); sends itself `signum` during step `stop_at`
    ((epoch, step), 0-based), or with step None after the epoch's batches, where a stage evaluates."""
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loader = DataLoader(NoisyDataset(), batch_size=4, shuffle=True, drop_last=True)
    cfg = {"epochs": epochs, "batch_size": 4}
    guard = TrainingGuard(cfg, CPU, str(path), model, optimizer)
    guard.resume()
    for epoch in guard.epochs():
        for step, batch in enumerate(guard.batches(loader)):
            loss = model(batch).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            finite_loss(loss, epoch, step + 1)
            if (epoch, step) == stop_at:
                for _ in range(repeat):
                    os.kill(os.getpid(), signum)
        if (epoch, None) == stop_at:
            os.kill(os.getpid(), signum)
        guard.save_checkpoint(epoch + 1)
    return {key: value.clone() for key, value in model.state_dict().items()}


def test_a_run_stopped_mid_epoch_resumes_to_identical_weights(tmp_path):
    expected = toy_run(tmp_path / "straight.pth.tar")
    path = tmp_path / "stopped.pth.tar"
    with pytest.raises(TrainingStopped, match=r"(?s)SIGTERM at epoch 2, step 3 of 6.*run the same command again"):
        toy_run(path, stop_at=(1, 2))
    checkpoint = torch.load(path, weights_only=True)
    assert (checkpoint["epoch"], checkpoint["step"]) == (1, 3) and "epoch_rng" in checkpoint
    resumed = toy_run(path)
    assert all(torch.equal(expected[key], resumed[key]) for key in expected)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the guard's handlers are gone after the loop


def test_sigint_stops_the_same_way_and_exits_with_130(tmp_path):
    before = signal.getsignal(signal.SIGINT)  # Python's handler, or SIG_IGN when started in the background
    with pytest.raises(TrainingStopped, match="SIGINT at epoch 1, step 1 of 6") as stopped:
        toy_run(tmp_path / "c.pth.tar", stop_at=(0, 0), signum=signal.SIGINT)
    assert stopped.value.exit_code == 130
    assert signal.getsignal(signal.SIGINT) is before  # the guard puts back whatever was there


def test_a_stop_during_the_evaluation_is_taken_after_the_epoch_checkpoint(tmp_path):
    path = tmp_path / "c.pth.tar"
    with pytest.raises(TrainingStopped, match="after epoch 1"):
        toy_run(path, stop_at=(0, None))
    assert (torch.load(path, weights_only=True)["epoch"], torch.load(path, weights_only=True)["step"]) == (1, 0)
    assert all(torch.equal(a, b) for a, b in zip(toy_run(path).values(), toy_run(tmp_path / "s.pth.tar").values()))


def test_a_stop_during_the_last_step_resumes_without_training_that_epoch_again(tmp_path):
    path = tmp_path / "c.pth.tar"
    with pytest.raises(TrainingStopped, match="at epoch 2, step 6 of 6"):
        toy_run(path, stop_at=(1, 5))
    assert all(torch.equal(a, b) for a, b in zip(toy_run(path).values(), toy_run(tmp_path / "s.pth.tar").values()))


def test_a_second_ctrl_c_stops_at_once_but_a_repeated_sigterm_still_saves(tmp_path):
    model = torch.nn.Linear(1, 1)
    cfg = {"epochs": 2, "batch_size": 1}
    guard = TrainingGuard(cfg, CPU, str(tmp_path / "c.pth.tar"), model, torch.optim.SGD(model.parameters(), lr=0.1))
    guard.resume()
    with pytest.raises(KeyboardInterrupt):
        for _ in guard.epochs():
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
    assert not (tmp_path / "c.pth.tar").exists()
    # A scheduler's SIGTERM to the job plus torchrun's forwarded copy: still one clean stop with a checkpoint.
    with pytest.raises(TrainingStopped, match="SIGTERM at epoch 1, step 3 of 6"):
        toy_run(tmp_path / "t.pth.tar", stop_at=(0, 2), signum=signal.SIGTERM, repeat=2)
    assert torch.load(tmp_path / "t.pth.tar", weights_only=True)["step"] == 3


def test_a_non_finite_loss_names_epoch_step_and_causes():
    assert finite_loss(torch.tensor(1.5), 0, 1) == 1.5
    for bad in (float("nan"), float("inf")):
        with pytest.raises(NonFiniteLossError, match=r"(?s)at epoch 2, step 3.*optimizer_kwargs.lr.*amp=false"):
            finite_loss(torch.tensor(bad), 1, 3)


def test_non_finite_weights_never_replace_a_saved_file(tmp_path):
    path = tmp_path / "model.pth.tar"
    save_atomic({"w": torch.ones(3)}, path)
    before = path.read_bytes()
    with pytest.raises(NonFiniteError, match=r"(?s)model.pth.tar.*w.*unchanged"):
        save_atomic({"w": torch.tensor([1.0, float("nan"), 2.0])}, path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["model.pth.tar"]


# Crash-safe writes -------------------------------------------------------------------------------------
def test_a_failing_write_keeps_the_previous_file_and_says_why(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pth.tar"
    save_atomic({"w": torch.ones(3)}, path)

    def disk_full(obj, file):
        file.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(
        WriteError, match=r"^Could not write .*No space left on device\. The previous checkpoint.pth.tar is unchanged\."
    ):
        save_atomic({"w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(3))
    assert os.listdir(tmp_path) == ["checkpoint.pth.tar"]


def test_json_and_numpy_files_are_replaced_whole_or_not_at_all(tmp_path):
    write_json({"a": 1}, tmp_path / "m.json")
    with pytest.raises(TypeError):
        write_json({"a": object()}, tmp_path / "m.json")
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": 1}
    save_numpy(np.arange(6).reshape(2, 3), tmp_path / "n.npy")
    assert np.array_equal(np.load(tmp_path / "n.npy"), np.arange(6).reshape(2, 3))
    assert sorted(os.listdir(tmp_path)) == ["m.json", "n.npy"]


def test_a_bench_summary_is_written_as_json_and_markdown_and_printed(tmp_path, capsys):
    write_summary({"ACC": [0.5, 0.75]}, "| ACC |\n|---|\n| 0.625 |\n", tmp_path)
    assert json.loads((tmp_path / "summary.json").read_text()) == {"ACC": [0.5, 0.75]}
    assert (tmp_path / "summary.md").read_text() == "| ACC |\n|---|\n| 0.625 |\n"
    assert "| 0.625 |" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == ["summary.json", "summary.md"]


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 256 KiB tmpfs: a real full disk (needs root and mount; skipped elsewhere)."""
    mount_point = tmp_path / "small_disk"
    mount_point.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)]).returncode
    ):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True)


def test_a_full_disk_gives_a_clear_error_and_keeps_the_previous_checkpoint(tiny_tmpfs):
    path = tiny_tmpfs / "checkpoint.pth.tar"
    save_atomic({"w": torch.ones(1000)}, path)  # 4 KB: fits
    with pytest.raises(WriteError, match=r"(?s)No space left on device.*unchanged.*Free disk space"):
        save_atomic({"w": torch.ones(200_000)}, path)  # 800 KB: does not
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(1000))
    assert os.listdir(tiny_tmpfs) == ["checkpoint.pth.tar"]


def test_temporary_files_of_killed_writers_are_removed_by_the_next_write(tmp_path):
    host = socket.gethostname()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".model.pth.tar.{host}-{dead.pid}.abc123.tmp"
    live = tmp_path / f".model.pth.tar.{host}-{os.getppid()}.abc123.tmp"  # a running process: left alone
    stale.write_bytes(b"half a checkpoint")
    live.write_bytes(b"being written")
    save_atomic({"w": torch.ones(1)}, tmp_path / "model.pth.tar")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["model.pth.tar", live.name])


WRITER = """
import sys, torch
sys.path.insert(0, {root!r})
from utils.checkpoint import save_atomic
save_atomic({{"w": torch.ones(10)}}, {path!r})
print("first saved", flush=True)
save_atomic({{"w": torch.randn(50_000_000)}}, {path!r})  # 200 MB: killed while this is written
"""


@pytest.mark.slow
def test_killing_the_process_during_a_large_write_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pth.tar"
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER.format(root=str(ROOT), path=str(path))],
        stdout=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert child.stdout.readline().strip() == b"first saved"
    deadline = time.time() + 120
    while not any(p.name.endswith(".tmp") and p.stat().st_size > 0 for p in tmp_path.iterdir()):
        assert child.poll() is None and time.time() < deadline, "the large write finished before it could be killed"
        time.sleep(0.001)
    child.kill()
    child.wait()
    assert child.returncode == -signal.SIGKILL
    temporaries = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(temporaries) == 1  # the interrupted write, never renamed over the checkpoint
    assert torch.equal(load_checkpoint(path)["w"], torch.ones(10))
    save_atomic({"w": torch.zeros(1)}, path)  # the next write clears what the killed one left
    assert os.listdir(tmp_path) == ["checkpoint.pth.tar"]


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


# Small pieces of the stage glue --------------------------------------------------------------------------
def test_fresh_moves_the_folder_aside_and_never_deletes(tmp_path):
    folder = tmp_path / "scan"
    assert move_aside(folder) is None
    folder.mkdir()
    assert move_aside(folder) is None  # empty: nothing worth keeping
    (folder / "checkpoint.pth.tar").write_bytes(b"old run")
    first = move_aside(folder)
    folder.mkdir()
    (folder / "checkpoint.pth.tar").write_bytes(b"second run")
    second = move_aside(folder)
    assert first != second and first.name.startswith("scan.old-") and not folder.exists()
    assert (first / "checkpoint.pth.tar").read_bytes() == b"old run"
    assert (second / "checkpoint.pth.tar").read_bytes() == b"second run"


def test_neighbour_files_of_other_data_are_named():
    with pytest.raises(
        NeighborsFileError, match=r"shape \(100, 6\) and indices 0..119, but the dataset has 100 images"
    ):
        NeighborsDataset(list(range(100)), np.arange(600).reshape(100, 6) % 120)
    with pytest.raises(NeighborsFileError, match=r"shape \(60, 6\).*mined on other data"):
        NeighborsDataset(list(range(100)), np.zeros((60, 6), dtype=np.int64))


def test_unreadable_neighbour_file(tmp_path):
    (tmp_path / "nn.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(NeighborsFileError, match="truncated or not a .npy array"):
        read_neighbors(tmp_path / "nn.npy")
    np.save(tmp_path / "float.npy", np.zeros((4, 3)))
    with pytest.raises(NeighborsFileError, match="float64 array"):
        read_neighbors(tmp_path / "float.npy")


def test_more_clusters_than_images_is_a_config_error():
    check_cluster_count(10, 10)
    with pytest.raises(ConfigError, match="num_classes is 11, but the training split has only 10 images"):
        check_cluster_count(11, 10)


class MissingImages(Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int):
        from data.base import DatasetNotFoundError

        raise DatasetNotFoundError("Folder dataset: 2 images are gone\nPut them back.")


@pytest.mark.slow
def test_errors_from_loader_workers_lose_the_worker_traceback():
    from data.base import DatasetNotFoundError

    with pytest.raises(DatasetNotFoundError) as raised:
        next(iter(DataLoader(MissingImages(), num_workers=1)))
    assert "Original Traceback" in str(raised.value)
    assert user_message(raised.value) == "Folder dataset: 2 images are gone\nPut them back."
    assert user_message(ValueError("plain")) == "plain"

"""utils/guard.py, the guard of a training loop, on a toy loop: exact resume, stop requests, non-finite losses. The
stage scripts themselves are covered by test_resume.py and test_bad_inputs.py."""

from __future__ import annotations

import os
import random
import signal

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

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

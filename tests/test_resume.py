"""Exact resume of all three stages: a run stopped in the middle of an epoch and resumed ends bit for bit
where the uninterrupted run ends (weights, optimizer state, schedule position, stage extras, RNG, files).

The stop is a real SIGTERM the process sends itself from inside the loss of a chosen step, so the guard's
signal handler, its mid-epoch checkpoint and the replay of the epoch's first batches all run for real.
"""

from __future__ import annotations

import json
import os
import signal
import warnings

import numpy as np
import pytest
import torch

import scan
import selflabel
import simclr
from losses import CRITERIA
from models import build_model
from tests.conftest import ROOT, write_random_pretext_outputs
from utils.checkpoint import save_atomic
from utils.config import load_config
from utils.guard import TrainingStopped

pytestmark = pytest.mark.slow

PRETEXT = ROOT / "configs/pretext/simclr_cifar10.yml"
SCAN = ROOT / "configs/scan/scan_cifar10.yml"
SELFLABEL = ROOT / "configs/selflabel/selflabel_cifar10.yml"
# 100 training images in batches of 20: 5 steps per epoch, so loss call 8 is epoch 2, step 3.
TINY = ["backbone_kwargs.base_width=4", "num_workers=0", "seed=0", "batch_size=20", "epochs=3"]
STOP_AT_CALL = 8


def stage_args(env, config, *overrides) -> list[str]:
    return ["--config_env", str(env), "--config_exp", str(config), "--set", *TINY, *overrides]


def write_pretext_outputs(env) -> None:
    write_random_pretext_outputs(env, TINY, (100, 21), (50, 6))


def write_scan_model(env) -> None:
    """A seeded random SCAN model file {'model', 'head'}: what selflabel.py needs."""
    cfg = load_config(env, SCAN, TINY)
    torch.manual_seed(0)
    save_atomic({"model": build_model(cfg).state_dict(), "head": 0}, cfg["scan_model"])


def signal_during_call(monkeypatch, criterion: str, call: int, signum: int = signal.SIGTERM) -> None:
    """Replace the stage's loss class (in the criterion registry) by one that sends `signum` to this process
    during its `call`-th call."""
    real = CRITERIA[criterion]
    calls = {"n": 0}

    class Interrupting(real):
        def forward(self, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] == call:
                os.kill(os.getpid(), signum)
            return super().forward(*args, **kwargs)

    monkeypatch.setitem(CRITERIA, criterion, Interrupting)


def assert_identical(a, b, where: str = "") -> None:
    """Equal structure and bit-identical tensors / arrays at every depth."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where}: keys {sorted(a)} vs {sorted(b)}"
        for key in a:
            assert_identical(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


def undated(content):
    """A file's content without the time its run record was written, the one thing two identical runs differ in."""
    if isinstance(content, dict) and isinstance(content.get("record"), dict):
        content["record"].pop("date", None)
    return content


def outputs(cfg: dict, stage_dir: str) -> dict:
    """Every file a stage wrote (checkpoint in full: weights, optimizer, position, RNG, extras), run dates left out."""
    files = {}
    for path in sorted(os.listdir(cfg[stage_dir])):
        full = os.path.join(cfg[stage_dir], path)
        if path.endswith(".pth.tar"):
            files[path] = undated(torch.load(full, weights_only=True))
        elif path.endswith(".npy"):
            files[path] = torch.from_numpy(np.load(full))
        elif path.endswith(".json"):
            with open(full) as handle:
                files[path] = undated(json.load(handle))
    return files


def run(main, args) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return main(args)


def interrupted_then_resumed(main, args, monkeypatch, criterion: str, cfg, checkpoint_key) -> dict:
    """Run until a SIGTERM arrives mid-epoch 2, check the stop, then resume to the end."""
    with monkeypatch.context() as patch:
        signal_during_call(patch, criterion, STOP_AT_CALL)
        with pytest.raises(TrainingStopped, match="Stopped by SIGTERM at epoch 2, step 3 of 5") as stopped:
            run(main, args)
    assert stopped.value.exit_code == 128 + signal.SIGTERM
    checkpoint = torch.load(cfg[checkpoint_key], weights_only=True)
    assert (checkpoint["epoch"], checkpoint["step"]) == (1, 3)  # mid-epoch: epoch index 1, 3 steps done
    return run(main, args)


@pytest.fixture
def scripted_scan_losses(monkeypatch):
    """Head-selection losses per evaluation: epoch 1 is the best, so later epochs must not replace its model."""
    real = scan.scan_evaluate
    losses = iter([0.3, 0.5, 0.4] * 3)

    def scripted(head_outputs):
        scores = real(head_outputs)
        scores["lowest_loss_head"], scores["lowest_loss"] = 0, next(losses)
        return scores

    monkeypatch.setattr(scan, "scan_evaluate", scripted)


def make_env(tmp_path, name: str):
    from tests.conftest import write_cifar10

    root = tmp_path / name
    write_cifar10(root / "datasets" / "cifar-10")
    env = root / "env.yml"
    env.write_text(f"root_dir: {root / 'results'}\ndata_root: {root / 'datasets'}\ndownload: false\n")
    return env


@pytest.mark.parametrize("backend", ["pil", "batched"])
def test_simclr_resumes_mid_epoch_exactly(tmp_path, monkeypatch, backend):
    straight, interrupted = make_env(tmp_path, "straight"), make_env(tmp_path, "interrupted")
    backend_arg = f"augmentation_backend={backend}"
    metrics = run(simclr.main, stage_args(straight, PRETEXT, backend_arg))
    cfg = load_config(interrupted, PRETEXT, TINY)
    resumed = interrupted_then_resumed(
        simclr.main,
        stage_args(interrupted, PRETEXT, backend_arg),
        monkeypatch,
        "simclr",
        cfg,
        "pretext_checkpoint",
    )
    assert resumed == metrics
    expected, got = outputs(load_config(straight, PRETEXT, TINY), "pretext_dir"), outputs(cfg, "pretext_dir")
    assert set(got) >= {"checkpoint.pth.tar", "model.pth.tar", "topk-train-neighbors.npy", "metrics.json"}
    assert got["checkpoint.pth.tar"]["optimizer"]["state"]  # SGD momentum buffers are part of the comparison
    assert_identical(expected, got)


@pytest.mark.parametrize("backend", ["pil", "batched"])
def test_scan_resumes_mid_epoch_exactly_with_its_best_loss_and_head(
    tmp_path, monkeypatch, scripted_scan_losses, backend
):
    straight, interrupted = make_env(tmp_path, "straight"), make_env(tmp_path, "interrupted")
    for env in (straight, interrupted):
        write_pretext_outputs(env)
    backend_arg = f"augmentation_backend={backend}"
    metrics = run(scan.main, stage_args(straight, SCAN, backend_arg))
    cfg = load_config(interrupted, SCAN, TINY)
    resumed = interrupted_then_resumed(
        scan.main, stage_args(interrupted, SCAN, backend_arg), monkeypatch, "scan", cfg, "scan_checkpoint"
    )
    assert resumed == metrics and metrics["best_loss"] == 0.3
    expected, got = outputs(load_config(straight, SCAN, TINY), "scan_dir"), outputs(cfg, "scan_dir")
    # The kept model is epoch 1's: a resume that forgot the best loss would have replaced it in epoch 2.
    assert not torch.equal(
        got["model.pth.tar"]["model"]["cluster_head.0.weight"],
        got["checkpoint.pth.tar"]["model"]["cluster_head.0.weight"],
    )
    assert got["checkpoint.pth.tar"]["optimizer"]["state"]  # Adam moments are part of the comparison
    assert_identical(expected, got)


def test_selflabel_resumes_mid_epoch_exactly_with_ema_and_the_epoch_average(tmp_path, monkeypatch):
    """Stopped in epoch 2 of 3, averaging all three: the average of epoch 1 must come back from the checkpoint."""
    straight, interrupted = make_env(tmp_path, "straight"), make_env(tmp_path, "interrupted")
    for env in (straight, interrupted):
        write_scan_model(env)
    extra = ("confidence_threshold=0.1", "use_ema=true", "ema_alpha=0.9", "average_epochs=3")
    metrics = run(selflabel.main, stage_args(straight, SELFLABEL, *extra))
    cfg = load_config(interrupted, SELFLABEL, TINY)
    resumed = interrupted_then_resumed(
        selflabel.main,
        stage_args(interrupted, SELFLABEL, *extra),
        monkeypatch,
        "confidence-cross-entropy",
        cfg,
        "selflabel_checkpoint",
    )
    assert resumed == metrics
    expected, got = outputs(load_config(straight, SELFLABEL, TINY), "selflabel_dir"), outputs(cfg, "selflabel_dir")
    assert int(got["checkpoint.pth.tar"]["averaged"]["n_averaged"]) == 3
    assert_identical(expected, got)


@pytest.mark.parametrize("sabotage", ["optimizer state", "random generators"])
def test_a_resume_missing_a_piece_of_state_is_caught(tmp_path, monkeypatch, sabotage):
    """Controls for the tests above: drop one piece of resumed state and the comparison fails."""
    straight, interrupted = make_env(tmp_path, "straight"), make_env(tmp_path, "interrupted")
    run(simclr.main, stage_args(straight, PRETEXT, "epochs=2"))
    cfg = load_config(interrupted, PRETEXT, TINY)
    with monkeypatch.context() as patch:
        signal_during_call(patch, "simclr", STOP_AT_CALL)
        with pytest.raises(TrainingStopped):
            run(simclr.main, stage_args(interrupted, PRETEXT, "epochs=2"))
    if sabotage == "optimizer state":
        monkeypatch.setattr(torch.optim.SGD, "load_state_dict", lambda self, state: None)
    else:
        monkeypatch.setattr("utils.guard.restore_rng_states", lambda states, runtime: None)
    run(simclr.main, stage_args(interrupted, PRETEXT, "epochs=2"))
    expected = torch.load(load_config(straight, PRETEXT, TINY)["pretext_model"], weights_only=True)
    got = torch.load(cfg["pretext_model"], weights_only=True)
    assert not all(torch.equal(expected[key], got[key]) for key in expected)

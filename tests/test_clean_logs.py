"""Clean logs: progress bars only on a terminal; `num_workers: auto` uses the cores there are."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import torch

from tests.conftest import ROOT
from utils.config import auto_num_workers, load_config
from utils.progress import PlainProgress, tqdm


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_is_drawn_on_a_terminal_only():
    to_file, to_terminal = io.StringIO(), Terminal()
    assert list(tqdm(range(3), desc="epoch 0", file=to_file)) == [0, 1, 2]  # still iterates
    list(tqdm(range(3), desc="epoch 0", file=to_terminal))
    assert to_file.getvalue() == "" and "epoch 0" in to_terminal.getvalue()
    quiet = Terminal()
    list(tqdm(range(3), file=quiet, disable=True))  # an explicit disable still wins
    assert quiet.getvalue() == ""


def test_num_workers_auto_is_the_available_cores_at_most_8(monkeypatch):
    cores = len(os.sched_getaffinity(0))
    cfg = load_config(None, ROOT / "configs/pretext/simclr_custom.yml")  # the template says auto
    assert cfg["num_workers"] == min(8, cores)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(32)))
    assert auto_num_workers() == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun: four processes share the node's 32 cores
    assert auto_num_workers() == 8
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5})
    assert auto_num_workers() == 1
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert load_config(None, ROOT / "configs/pretext/simclr_cifar10.yml", ["num_workers=auto"])["num_workers"] == 6
    # The paper's configs say auto too (their 8 in a comment).
    assert load_config(None, ROOT / "configs/pretext/simclr_cifar10.yml")["num_workers"] == 6


def test_without_a_terminal_a_plain_line_reports_progress_every_few_seconds(monkeypatch, capsys):
    monkeypatch.setenv("SCAN_PROGRESS_SECONDS", "0")  # a line after every batch
    batches = [{"image": torch.zeros(4, 3, 2, 2)}] * 3
    progress = tqdm(batches, desc="epoch 1", file=io.StringIO())
    for _ in progress:
        progress.set_postfix(loss="1.2345")
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[0].startswith("epoch 1: 1/3 batches, ")
    assert lines[2].endswith("images/s, loss 1.2345, ETA 0m00s") and "3/3 batches" in lines[2]
    monkeypatch.setenv("SCAN_PROGRESS_SECONDS", "3600")  # the default is a minute: a short loop stays silent
    assert list(tqdm(range(3), file=io.StringIO())) == [0, 1, 2] and capsys.readouterr().out == ""


def test_a_plain_line_counts_images_and_the_time_left(monkeypatch):
    clock = iter([0.0, 10.0])
    monkeypatch.setattr("utils.progress.time.monotonic", lambda: next(clock))
    progress = PlainProgress([{"anchor": torch.zeros(50, 1)}] * 4, "epoch 2", None, every=5.0)
    assert progress.line(step=1, images=50, elapsed=10.0) == "epoch 2: 1/4 batches, 5 images/s, ETA 0m30s"
    # Under an hour left: minutes and seconds; an hour or more: hours and minutes.
    assert progress.line(step=1, images=50, elapsed=1199.5).endswith("ETA 59m58s")
    assert progress.line(step=1, images=50, elapsed=1200.0).endswith("ETA 1h00m")


def test_the_bar_and_the_log_line_number_epochs_alike(monkeypatch, capsys):
    """The first epoch is `Epoch 1/N` in the log, so its progress line says epoch 1, not 0."""
    import scan
    import simclr
    from losses import SCANLoss, SimCLRLoss
    from models import ClusteringModel, ContrastiveModel, build_backbone
    from utils.runtime import Runtime

    monkeypatch.setenv("SCAN_PROGRESS_SECONDS", "0")
    cpu = Runtime(torch.device("cpu"))
    model = ClusteringModel(build_backbone("resnet18", base_width=2), num_classes=4, num_heads=1)
    pairs = {"anchor": torch.randn(4, 3, 8, 8), "neighbor": torch.randn(4, 3, 8, 8)}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    cfg = {"update_cluster_head_only": False, "amp": False}
    scan.train_one_epoch([pairs], model, SCANLoss(5.0), optimizer, cpu, cfg, epoch=0)
    assert capsys.readouterr().out.startswith("epoch 1: 1/1 batches, ")
    model = ContrastiveModel(build_backbone("resnet18", base_width=2), features_dim=8)
    views = {"image": torch.randn(4, 3, 8, 8), "image_augmented": torch.randn(4, 3, 8, 8)}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    simclr.train_one_epoch([views], model, SimCLRLoss(0.1), optimizer, cpu, False, epoch=2, gather_negatives=False)
    assert capsys.readouterr().out.startswith("epoch 3: 1/1 batches, ")


def test_warnings_print_as_one_clean_line():
    code = "import warnings; from engine.stage import run_cli; run_cli(lambda: warnings.warn('the data is small'))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stderr == "warning: the data is small\n"

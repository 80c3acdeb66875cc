"""Clean logs: progress bars only on a terminal; `num_workers: auto` uses the cores there are."""

from __future__ import annotations

import io
import os

from tests.conftest import ROOT
from utils.config import auto_num_workers, load_config
from utils.progress import tqdm


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
    assert load_config(None, ROOT / "configs/pretext/simclr_cifar10.yml")["num_workers"] == 8  # paper configs: 8

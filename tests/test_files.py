"""utils/files.py: crash-safe writes (whole or not at all, the previous file kept on failure, the umask's mode)
and a bench's summary files."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from tests.conftest import ROOT
from utils.checkpoint import load_checkpoint, save_atomic
from utils.files import WriteError, save_numpy, write_json, write_summary


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


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_get_the_permissions_of_an_ordinary_open(tmp_path, umask):
    """Models, metrics and reports are shared on servers: their mode follows the umask, as open(path, "w")."""
    from tools.html_report import write_atomic_text
    from utils.files import write_json
    from utils.history import History

    previous = os.umask(umask)
    try:
        with open(tmp_path / "plain.txt", "w") as handle:
            handle.write("x")
        save_atomic({"w": torch.zeros(2)}, tmp_path / "model.pth.tar")
        write_json({"ACC": 0.5}, tmp_path / "metrics.json")
        write_atomic_text("<html></html>", tmp_path / "report.html")
        History(tmp_path / "stage", 0, 1).log(1, loss=1.0)
    finally:
        os.umask(previous)
    expected = 0o666 & ~umask
    assert (os.stat(tmp_path / "plain.txt").st_mode & 0o777) == expected
    assert (os.stat(tmp_path / "model.pth.tar").st_mode & 0o777) == expected
    for name in ("metrics.json", "report.html", "stage/history.jsonl"):
        assert (os.stat(tmp_path / name).st_mode & 0o777) == expected, name

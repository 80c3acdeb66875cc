"""Real processes, real signals: simclr.py killed (SIGKILL) or stopped (SIGTERM, SIGINT to its whole process
group, loader workers included) during epoch 2, then run again, ends with the files of an uninterrupted run,
bit for bit."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from tests.conftest import ROOT, write_cifar10
from tests.test_resume import assert_identical

pytestmark = pytest.mark.slow

# 100 images in batches of 10: 10 steps an epoch; two loader workers, started anew each epoch.
ARGS = ["backbone_kwargs.base_width=4", "num_workers=2", "batch_size=10", "epochs=3", "seed=0"]


def make_run(root):
    write_cifar10(root / "datasets" / "cifar-10")
    env = root / "env.yml"
    env.write_text(f"root_dir: {root / 'results'}\ndata_root: {root / 'datasets'}\ndownload: false\n")
    command = [sys.executable, "simclr.py", "--config_env", str(env)]
    command += ["--config_exp", str(ROOT / "configs/pretext/simclr_cifar10.yml"), "--set", *ARGS]
    return command, root / "results/cifar-10/pretext"


def run_to_end(command) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def final_files(folder) -> dict:
    return {
        "checkpoint": torch.load(folder / "checkpoint.pth.tar", weights_only=True),
        "model": torch.load(folder / "model.pth.tar", weights_only=True),
        "neighbors": torch.from_numpy(np.load(folder / "topk-train-neighbors.npy")),
        "metrics": (folder / "metrics.json").read_text(),
    }


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    command, folder = make_run(tmp_path_factory.mktemp("uninterrupted"))
    run_to_end(command)
    return final_files(folder)


def interrupt_in_epoch_two(command, folder, signum: int) -> subprocess.CompletedProcess:
    """Start the run; once epoch 1's checkpoint appears (epoch 2 is starting), send `signum` to the process
    group, as a terminal's Ctrl-C or a batch scheduler does."""
    log = folder.parent.parent.parent / "log.txt"
    with open(log, "w") as output:
        process = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=output, stderr=output, start_new_session=True)
        deadline = time.time() + 600
        while not (folder / "checkpoint.pth.tar").exists():
            assert process.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.01)
        time.sleep(0.5)
        os.killpg(process.pid, signum)
        process.wait(timeout=600)
    return subprocess.CompletedProcess(command, process.returncode, log.read_text(), "")


def test_sigkill_during_epoch_two_then_rerun_matches_the_uninterrupted_run(tmp_path, uninterrupted):
    command, folder = make_run(tmp_path)
    killed = interrupt_in_epoch_two(command, folder, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    assert torch.load(folder / "checkpoint.pth.tar", weights_only=True)["epoch"] in (1, 2)  # intact, loadable
    resumed = run_to_end(command)
    assert "Resuming from" in resumed.stdout
    assert_identical(uninterrupted, final_files(folder))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_or_sigint_stops_cleanly_and_the_rerun_matches(tmp_path, uninterrupted, signum):
    command, folder = make_run(tmp_path)
    stopped = interrupt_in_epoch_two(command, folder, signum)
    name = signal.Signals(signum).name
    assert stopped.returncode == 128 + signum, stopped.stdout[-3000:]
    assert f"Stopped by {name}" in stopped.stdout and "run the same command again" in stopped.stdout
    assert "Traceback" not in stopped.stdout
    checkpoint = torch.load(folder / "checkpoint.pth.tar", weights_only=True)
    assert (checkpoint["epoch"], checkpoint["step"]) >= (1, 0)
    resumed = run_to_end(command)
    assert "Resuming from" in resumed.stdout
    assert_identical(uninterrupted, final_files(folder))


def test_the_hint_after_stopping_a_fresh_run_resumes_it(tmp_path):
    """A run started with --fresh and stopped must not advise rerunning --fresh (which starts over)."""
    command, folder = make_run(tmp_path)
    stopped = interrupt_in_epoch_two([*command, "--fresh"], folder, signal.SIGTERM)
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stdout[-3000:]
    lines = stopped.stdout.splitlines()
    hint = lines[lines.index("To resume, run the same command without --fresh (--fresh would start over):") + 1]
    assert "--fresh" not in hint
    epoch = torch.load(folder / "checkpoint.pth.tar", weights_only=True)["epoch"]
    resumed = run_to_end(shlex.split(hint))
    assert f"Resuming from {folder / 'checkpoint.pth.tar'}" in resumed.stdout and "--fresh: moved" not in resumed.stdout
    assert epoch >= 1 and f"Epoch {epoch + 1}/3" in resumed.stdout and "Epoch 1/3" not in resumed.stdout

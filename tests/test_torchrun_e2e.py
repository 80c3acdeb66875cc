"""The three stages and eval under `torchrun --nproc_per_node 2` (gloo, CPU; every process evaluates a shard), and
a two-process checkpoint resumed by one process: the same commands a multi-GPU or multi-node user runs, on tiny
CIFAR-10."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.conftest import ROOT, free_port

pytestmark = pytest.mark.slow

SETTINGS = ["num_workers=0", "backbone_kwargs.base_width=4", "seed=0", "batch_size=16"]


def run(script: str, env_file, config: str, *extra: str, processes: int = 2) -> subprocess.CompletedProcess:
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--nproc_per_node", str(processes)]
        launcher += ["--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    command = [*launcher, str(ROOT / script), "--config_env", str(env_file), "--config_exp", str(ROOT / config)]
    command += [*extra, "--set", *SETTINGS] if script != "eval.py" else [*extra]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=environment, timeout=600)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def test_three_stages_and_eval_under_torchrun_then_resume_with_one_process(tiny_cifar_env, tmp_path):
    results = tmp_path / "results" / "cifar-10"
    run("simclr.py", tiny_cifar_env, "configs/pretext/simclr_cifar10.yml", "--set", "epochs=1")
    pretext = torch.load(results / "pretext/checkpoint.pth.tar", weights_only=True)
    assert pretext["epoch"] == 1 and len(pretext["rng"]) == 2  # one generator state per process
    run("scan.py", tiny_cifar_env, "configs/scan/scan_cifar10.yml", "--set", "epochs=1")
    # average_epochs=1: the averaged copy is made of the DDP-wrapped model.
    run("selflabel.py", tiny_cifar_env, "configs/selflabel/selflabel_cifar10.yml", "--set", "epochs=1",
        "confidence_threshold=0.1", "average_epochs=1")  # fmt: skip
    scan_metrics = json.loads((results / "scan/metrics.json").read_text())
    selflabel_metrics = json.loads((results / "selflabel/metrics.json").read_text())
    assert sum(scan_metrics["cluster_sizes"]) == 50 and sum(selflabel_metrics["cluster_sizes"]) == 50

    # eval.py under torchrun too: each process predicts its shard, rank 0 writes what one process would.
    out = tmp_path / "eval"
    model = str(results / "selflabel/model.pth.tar")
    run("eval.py", tiny_cifar_env, "configs/selflabel/selflabel_cifar10.yml", "--model", model,
        "--output_dir", str(out), "--set", *SETTINGS)  # fmt: skip
    evaluated = json.loads((out / "metrics.json").read_text())
    shared = evaluated.keys() & selflabel_metrics.keys()  # the stage adds its own keys (kept epoch, warnings)
    assert {"ACC", "NMI", "ARI", "cluster_sizes", "hungarian_match"} <= shared
    assert {key: evaluated[key] for key in shared} == {key: selflabel_metrics[key] for key in shared}

    # Head-only SCAN (every ImageNet config): DDP must wrap the model after the backbone is frozen, or the second
    # step fails waiting for the backbone's gradients. Three steps per process here.
    run("scan.py", tiny_cifar_env, "configs/scan/scan_cifar10.yml", "--fresh", "--set", "epochs=1",
        "update_cluster_head_only=true")  # fmt: skip
    head_only = torch.load(results / "scan/checkpoint.pth.tar", weights_only=True)
    assert head_only["epoch"] == 1 and head_only["record"]["config"]["update_cluster_head_only"] is True
    # Rank 0 decides what a rerun does and every process follows: up to date, then a changed setting starts over.
    again = run("scan.py", tiny_cifar_env, "configs/scan/scan_cifar10.yml", "--set", "epochs=1",
                "update_cluster_head_only=true")  # fmt: skip
    assert again.stdout.count("Up to date") == 1 and "Epoch 1/1" not in again.stdout
    again = run("scan.py", tiny_cifar_env, "configs/scan/scan_cifar10.yml", "--set", "epochs=1",
                "update_cluster_head_only=true", "criterion_kwargs.entropy_weight=2.0")  # fmt: skip
    assert again.stdout.count("Starting over") == 1 and "Epoch 1/1" in again.stdout

    # The two-process pretext checkpoint resumes under one process: epoch 2 runs, with a note on the RNG streams.
    resumed = run("simclr.py", tiny_cifar_env, "configs/pretext/simclr_cifar10.yml", "--set", "epochs=2", processes=1)
    assert "written by 2 process(es), this run has 1" in resumed.stdout
    assert torch.load(results / "pretext/checkpoint.pth.tar", weights_only=True)["epoch"] == 2


def layout(value):
    """What a reader of a file depends on, without the numbers: mapping keys (nested), tensor shapes and dtypes,
    the types of other values."""
    if isinstance(value, dict):
        return {key: layout(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [layout(item) for item in value]
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), str(value.dtype))
    return type(value).__name__


def test_files_written_under_torchrun_have_the_single_process_layout(tiny_cifar_env, tmp_path):
    """Model files, checkpoints and neighbour files of a two-process run have the published layout, key for key,
    that one process writes: no `module.` prefix of DDP, the same tensors, shapes and dtypes."""
    single_env = tmp_path / "single.yml"
    single_env.write_text(tiny_cifar_env.read_text().replace(str(tmp_path / "results"), str(tmp_path / "single")))
    for env, processes in ((tiny_cifar_env, 2), (single_env, 1)):
        run("simclr.py", env, "configs/pretext/simclr_cifar10.yml", "--set", "epochs=1", processes=processes)
        run("scan.py", env, "configs/scan/scan_cifar10.yml", "--set", "epochs=1", processes=processes)
    distributed, single = tmp_path / "results" / "cifar-10", tmp_path / "single" / "cifar-10"
    for name in (
        "pretext/model.pth.tar",
        "pretext/checkpoint.pth.tar",
        "scan/model.pth.tar",
        "scan/checkpoint.pth.tar",
    ):
        written = [torch.load(root / name, weights_only=True) for root in (distributed, single)]
        models = [saved.get("model", saved) for saved in written]
        assert not [key for key in models[0] if key.startswith("module.")], name
        assert layout(models[0]) == layout(models[1]), name
        if "checkpoint" in name:  # one random generator state per process; everything else alike
            assert len(written[0].pop("rng")) == 2 and len(written[1].pop("rng")) == 1
        assert layout(written[0]) == layout(written[1]), name
    for name in ("pretext/topk-train-neighbors.npy", "pretext/topk-val-neighbors.npy"):
        arrays = [np.load(root / name) for root in (distributed, single)]
        assert (arrays[0].shape, arrays[0].dtype) == (arrays[1].shape, arrays[1].dtype), name

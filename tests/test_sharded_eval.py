"""Under torchrun every process evaluates a shard and all get the single-process results, bit for bit.

One process and two gloo processes (spawned, on a CPU) run the same evaluation work on a tiny CIFAR-10 in its
on-disk format, with odd split sizes so that the shards differ in size: features (both augmentation backends),
mined neighbours (faiss and the torch top-k), the weighted-kNN monitor, predictions of every head, the head the
SCAN loss selects, cached-feature head predictions, eval.py's metrics and predict.py's assignments. Every result
must be torch.equal to the single-process one, on both processes, and only rank 0 may write eval.py's and
predict.py's files.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from PIL import Image

from tests.conftest import ROOT, exit_skipping_teardown, free_port, write_cifar10

pytestmark = pytest.mark.slow  # three spawned processes: about a CPU-minute

TRAIN_PER_BATCH, TEST = 9, 21  # 45 train and 21 test images: odd, so two processes get unequal shards
SETTINGS = ["num_workers=0", "backbone_kwargs.base_width=4", "batch_size=8", "augmentation_backend=pil"]
NUM_HEADS = 3
NEW_IMAGES = 11  # predict.py's input: two batches of 8, one per process
MINING_ROWS = 10  # query rows per mining block (SCORES_PER_CHUNK lowered): the 45 train rows make 5 blocks


def write_inputs(root: Path) -> Path:
    """The dataset, an env file, and a SCAN and a pretext model file with non-trivial BatchNorm statistics."""
    from models import build_model
    from utils.config import load_config

    write_cifar10(root / "datasets" / "cifar-10", train_per_batch=TRAIN_PER_BATCH, test=TEST)
    rng = np.random.default_rng(0)
    (root / "new_images").mkdir()
    for i in range(NEW_IMAGES):  # for predict.py
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / f"new_images/{i:02d}.png")
    env = root / "env.yml"
    env.write_text(yaml.safe_dump({"root_dir": str(root / "results"), "data_root": str(root / "datasets")}))
    torch.manual_seed(0)
    for name, config, extra in (
        ("scan.pth.tar", "configs/scan/scan_cifar10.yml", [f"num_heads={NUM_HEADS}"]),
        ("pretext.pth.tar", "configs/pretext/simclr_cifar10.yml", []),
    ):
        model = build_model(load_config(env, ROOT / config, SETTINGS + extra))
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 1.5)
        state = model.state_dict()
        torch.save({"model": state, "head": 1} if name == "scan.pth.tar" else state, root / name)
    return env


def sharded_results(env: Path, root: Path, rank: int, world_size: int) -> dict:
    """Everything the stages evaluate, computed by this process (its shard) and gathered."""
    import engine.knn as knn
    from data.cached_features import CachedSplit
    from data.registry import get_train_dataset, get_val_dataset
    from data.stage_batches import eval_batches
    from engine.cluster_criteria import scan_evaluate
    from engine.inference import run_model
    from engine.metrics import cluster_metrics
    from models import build_model
    from utils.config import load_config
    from utils.runtime import Runtime, resolve_fast_path

    runtime = Runtime(torch.device("cpu"), rank, world_size)
    pretext_cfg = load_config(env, ROOT / "configs/pretext/simclr_cifar10.yml", SETTINGS)
    scan_cfg = load_config(env, ROOT / "configs/scan/scan_cifar10.yml", SETTINGS + [f"num_heads={NUM_HEADS}"])
    resolve_fast_path(pretext_cfg, runtime)
    resolve_fast_path(scan_cfg, runtime)
    pretext = build_model(pretext_cfg)
    pretext.load_state_dict(torch.load(root / "pretext.pth.tar", weights_only=True))
    clustering = build_model(scan_cfg)
    clustering.load_state_dict(torch.load(root / "scan.pth.tar", weights_only=True)["model"])
    if rank == 1:  # as after DDP training on a CPU: BatchNorm statistics of its own batches; rank 0's must win
        for model in (pretext, clustering):
            for module in model.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.running_mean.add_(1.0)

    out: dict = {}
    train_loader = eval_batches(pretext_cfg, get_train_dataset(pretext_cfg), runtime)
    val_loader = eval_batches(pretext_cfg, get_val_dataset(pretext_cfg), runtime)
    out["batches_here"] = torch.tensor([len(train_loader), len(val_loader)])
    train_outputs = run_model(pretext, train_loader, "cpu", backbone_features=True)
    train, train_targets = train_outputs.features.numpy(), train_outputs.targets.numpy()
    backbone = train_outputs.backbone.numpy()
    val_outputs = run_model(pretext, val_loader, "cpu")
    val, val_targets = val_outputs.features.numpy(), val_outputs.targets.numpy()
    out.update(train=torch.from_numpy(train), train_targets=torch.from_numpy(train_targets), val=torch.from_numpy(val))
    out["backbone"] = torch.from_numpy(backbone)
    batched_cfg = {**pretext_cfg, "augmentation_backend": "batched"}
    out["train_batched"] = run_model(
        pretext, eval_batches(batched_cfg, get_train_dataset(batched_cfg), runtime), "cpu"
    ).features

    knn.SCORES_PER_CHUNK = MINING_ROWS * len(train)
    neighbors, accuracy = knn.mine_nearest_neighbors(train, train_targets, 20)
    out["neighbors_faiss"], out["neighbor_acc"] = torch.from_numpy(neighbors), torch.tensor(accuracy)
    faiss = knn._faiss
    knn._faiss = lambda: None
    out["neighbors_torch"] = torch.from_numpy(knn.mine_nearest_neighbors(train, train_targets, 20)[0])
    knn._faiss = faiss
    val_neighbors = torch.from_numpy(knn.mine_nearest_neighbors(val, val_targets, 5)[0])
    out["knn_top1"] = torch.tensor(
        knn.weighted_knn_accuracy(
            torch.from_numpy(val), torch.from_numpy(val_targets), torch.from_numpy(train),
            torch.from_numpy(train_targets), 10, k=7,
        )
    )  # fmt: skip

    loader = eval_batches(scan_cfg, get_val_dataset(scan_cfg), runtime, neighbors=val_neighbors.numpy())
    predicted = run_model(clustering, loader, "cpu", "return_all")
    heads = predicted.heads()
    out["prediction_features"] = predicted.features
    for head, output in enumerate(heads):
        for key, value in output.items():
            out[f"head{head}_{key}"] = value
    selection = scan_evaluate(heads)
    out["selected_head"] = torch.tensor(selection["lowest_loss_head"])
    out["scan_losses"] = torch.tensor([[s["consistency"], s["entropy"], s["total_loss"]] for s in selection["scan"]])
    chosen = heads[selection["lowest_loss_head"]]
    metrics = cluster_metrics(chosen["predictions"], chosen["probabilities"], chosen["targets"])
    out["cluster_metrics"] = torch.tensor([metrics[key] for key in ("ACC", "NMI", "ARI", "AMI", "ACC Top-5")])

    cached = CachedSplit(torch.from_numpy(backbone), torch.from_numpy(train_targets), torch.from_numpy(neighbors), [])
    for head, output in enumerate(run_model(clustering, cached.batches(chunk=8), "cpu", "head").heads()):
        out[f"cached{head}_probabilities"] = output["probabilities"]
    return out


def worker(rank: int, world_size: int, port: int, root: str, run: str) -> None:
    """One process of a `world_size`-process run: the library-level results, then eval.py and predict.py."""
    torch.set_num_threads(1)
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    if world_size > 1:
        dist.init_process_group("gloo")
    try:
        root_dir, out_dir = Path(root), Path(root) / run
        env = root_dir / "env.yml"
        torch.save(sharded_results(env, root_dir, rank, world_size), out_dir / f"rank{rank}.pt")

        # What eval.py and predict.py print, per process: under torchrun the main process alone speaks.
        with open(out_dir / f"stdout-rank{rank}.txt", "w") as stdout, contextlib.redirect_stdout(stdout):
            run_scripts(env, root_dir, out_dir, rank)
        if dist.is_initialized():  # rank 1 is done long before rank 0 has written: tearing gloo down then may abort
            dist.barrier()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    exit_skipping_teardown()


def run_scripts(env: Path, root_dir: Path, out_dir: Path, rank: int) -> None:
    """eval.py on both model files, then predict.py on the new images."""
    import eval as evaluate_script
    import predict

    for name, config, heads in (
        ("scan", "configs/scan/scan_cifar10.yml", [f"num_heads={NUM_HEADS}"]),
        ("pretext", "configs/pretext/simclr_cifar10.yml", []),  # a pretext config has no heads
    ):
        model, output = root_dir / f"{name}.pth.tar", out_dir / f"eval-{name}-rank{rank}"
        evaluate_script.main(
            ["--config_env", str(env), "--config_exp", str(ROOT / config), "--model", str(model),
             "--output_dir", str(output), "--batch_size", "8", "--set", *SETTINGS, *heads]
        )  # fmt: skip
    predict.main(
        ["--config_env", str(env), "--config_exp", str(ROOT / "configs/scan/scan_cifar10.yml"),
         "--model", str(root_dir / "scan.pth.tar"), "--images", str(root_dir / "new_images"),
         "--output", str(out_dir / f"predict-rank{rank}.csv"), "--batch_size", "8",
         "--set", *SETTINGS, f"num_heads={NUM_HEADS}"]
    )  # fmt: skip


def test_two_processes_share_the_evaluation_and_get_the_single_process_results_exactly(tmp_path):
    write_inputs(tmp_path)
    for run, processes in (("one", 1), ("two", 2)):
        (tmp_path / run).mkdir()
        # Spawned, not forked: a fork of a process whose OpenMP thread pool is running can hang in the child.
        mp.start_processes(
            worker, args=(processes, free_port(), str(tmp_path), run), nprocs=processes, start_method="spawn"
        )

    expected = torch.load(tmp_path / "one/rank0.pt", weights_only=True)
    assert expected["train"].shape[0] == 5 * TRAIN_PER_BATCH and expected["val"].shape[0] == TEST
    assert expected["batches_here"].tolist() == [6, 3]  # 45 and 21 images in batches of 8
    shares = []
    for rank in (0, 1):
        got = torch.load(tmp_path / f"two/rank{rank}.pt", weights_only=True)
        shares.append(got.pop("batches_here"))
        assert got.keys() == expected.keys() - {"batches_here"}
        for key, value in got.items():
            assert torch.equal(value, expected[key]), f"rank {rank}: {key} differs from the single-process result"
    assert [share.tolist() for share in shares] == [[3, 1], [3, 2]]  # each its own run of whole batches

    # eval.py: the same files with the same metrics, written by rank 0 alone.
    for name in ("scan", "pretext"):
        single, main = tmp_path / f"one/eval-{name}-rank0", tmp_path / f"two/eval-{name}-rank0"
        assert sorted(path.name for path in main.iterdir()) == sorted(path.name for path in single.iterdir())
        assert json.loads((main / "metrics.json").read_text()) == json.loads((single / "metrics.json").read_text())
        assert not (tmp_path / f"two/eval-{name}-rank1").exists()
    scan = tmp_path / "two/eval-scan-rank0"
    assert (scan / "predictions.csv").read_bytes() == (tmp_path / "one/eval-scan-rank0/predictions.csv").read_bytes()
    assert json.loads((scan / "metrics.json").read_text())["head"] == 1

    # predict.py: the same CSV, by rank 0 alone.
    predicted = (tmp_path / "two/predict-rank0.csv").read_text()
    assert predicted == (tmp_path / "one/predict-rank0.csv").read_text() and len(predicted.splitlines()) == 12
    assert not (tmp_path / "two/predict-rank1.csv").exists()
    # What they print: rank 0 what one process prints (each model file described once), rank 1 nothing.
    printed = {run: (tmp_path / f"{run}/stdout-rank0.txt").read_text() for run in ("one", "two")}
    assert printed["two"].replace("/two/", "/one/") == printed["one"] and printed["one"].count("Model ") == 3
    assert (tmp_path / "two/stdout-rank1.txt").read_text() == ""

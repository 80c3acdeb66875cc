"""End-to-end: simclr.py → scan.py → selflabel.py → eval.py on a tiny CIFAR-10 copy, through the real configs.

Run once with each augmentation backend: PIL in workers (the faithful path) and batched on the device.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import eval as eval_script
import scan
import selflabel
import simclr
from engine.model_files import read_model_file
from tests.conftest import ROOT
from utils.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

FAST = ["num_workers=0", "backbone_kwargs.base_width=8", "seed=0"]


def run_pretext(env, fast):
    return simclr.main(
        [
            "--config_env",
            str(env),
            "--config_exp",
            str(ROOT / "configs/pretext/simclr_cifar10.yml"),
            "--set",
            "epochs=1",
            "batch_size=32",
            *fast,
        ]
    )


@pytest.mark.parametrize("backend", ["pil", "batched"])
def test_three_stages_and_eval(tiny_cifar_env, tmp_path, backend):
    fast = [*FAST, f"augmentation_backend={backend}"]
    results = tmp_path / "results" / "cifar-10"
    metrics = run_pretext(tiny_cifar_env, fast)
    pretext = results / "pretext"
    for name in (
        "checkpoint.pth.tar",
        "model.pth.tar",
        "topk-train-neighbors.npy",
        "topk-val-neighbors.npy",
        "metrics.json",
    ):
        assert (pretext / name).is_file(), name
    train_nn, val_nn = np.load(pretext / "topk-train-neighbors.npy"), np.load(pretext / "topk-val-neighbors.npy")
    assert train_nn.shape == (100, 21) and val_nn.shape == (50, 6)
    assert train_nn.min() >= 0 and train_nn.max() < 100 and val_nn.max() < 50
    saved = json.loads((pretext / "metrics.json").read_text())
    assert 0.0 <= saved["train_neighbor_acc"] <= 1.0 and saved == metrics
    checkpoint = torch.load(pretext / "checkpoint.pth.tar", weights_only=True)
    assert {"optimizer", "model", "epoch", "step", "rng", "record"} <= set(checkpoint)
    assert checkpoint["epoch"] == 1 and checkpoint["step"] == 0 and checkpoint["record"]["config"]["setup"] == "simclr"
    pretext_state = torch.load(pretext / "model.pth.tar", weights_only=True)
    assert "contrastive_head.0.weight" in pretext_state and "backbone.conv1.weight" in pretext_state
    assert read_model_file(pretext / "model.pth.tar").architecture["backbone_kwargs"]["base_width"] == 8

    scan_metrics = scan.main(
        [
            "--config_env",
            str(tiny_cifar_env),
            "--config_exp",
            str(ROOT / "configs/scan/scan_cifar10.yml"),
            "--set",
            "epochs=1",
            "batch_size=32",
            "num_heads=2",
            *fast,
        ]
    )
    scan_dir = results / "scan"
    for name in ("checkpoint.pth.tar", "model.pth.tar", "confusion_matrix.png", "metrics.json"):
        assert (scan_dir / name).is_file(), name
    scan_model = torch.load(scan_dir / "model.pth.tar", weights_only=True)
    assert set(scan_model) == {"model", "head", "architecture", "record"} and scan_model["head"] in (0, 1)
    assert scan_model["architecture"]["num_heads"] == 2
    assert "cluster_head.1.weight" in scan_model["model"]
    scan_checkpoint = torch.load(scan_dir / "checkpoint.pth.tar", weights_only=True)
    assert {"optimizer", "model", "epoch", "best_loss", "best_loss_head", "rng", "record"} <= set(scan_checkpoint)
    for key in ("ACC", "NMI", "ARI", "ACC Top-5"):
        assert 0.0 <= scan_metrics[key] <= 1.0
    Image.open(scan_dir / "confusion_matrix.png").verify()

    # A second run with more epochs resumes: it keeps the best loss so far and trains only epoch 2.
    scan.main(
        [
            "--config_env",
            str(tiny_cifar_env),
            "--config_exp",
            str(ROOT / "configs/scan/scan_cifar10.yml"),
            "--set",
            "epochs=2",
            "batch_size=32",
            "num_heads=2",
            *fast,
        ]
    )
    resumed = torch.load(scan_dir / "checkpoint.pth.tar", weights_only=True)
    assert resumed["epoch"] == 2 and resumed["best_loss"] <= scan_checkpoint["best_loss"]

    selflabel_metrics = selflabel.main(
        [
            "--config_env",
            str(tiny_cifar_env),
            "--config_exp",
            str(ROOT / "configs/selflabel/selflabel_cifar10.yml"),
            "--set",
            "epochs=1",
            "batch_size=32",
            "confidence_threshold=0.1",
            *fast,
        ]
    )
    selflabel_dir = results / "selflabel"
    for name in ("checkpoint.pth.tar", "model.pth.tar", "confusion_matrix.png", "metrics.json"):
        assert (selflabel_dir / name).is_file(), name
    state = torch.load(selflabel_dir / "model.pth.tar", weights_only=True)
    assert "cluster_head.0.weight" in state and "cluster_head.1.weight" not in state
    assert 0.0 <= selflabel_metrics["ACC"] <= 1.0
    # The paper's config keeps the last epoch; epoch 0 (the SCAN model) and epoch 1 are both watched.
    assert selflabel_metrics["selflabel_keep"] == "last" and selflabel_metrics["kept_epoch"] == 1
    assert [record["epoch"] for record in selflabel_metrics["epochs"]] == [0, 1]
    assert all(sum(record["cluster_sizes"]) == 50 for record in selflabel_metrics["epochs"])
    assert torch.equal(
        state["cluster_head.0.weight"],
        load_checkpoint(selflabel_dir / "checkpoint.pth.tar")["model"]["cluster_head.0.weight"],
    )

    out = tmp_path / "eval"
    eval_metrics = eval_script.main(
        [
            "--config_env",
            str(tiny_cifar_env),
            "--config_exp",
            str(ROOT / "configs/selflabel/selflabel_cifar10.yml"),
            "--model",
            str(selflabel_dir / "model.pth.tar"),
            "--output_dir",
            str(out),
            "--visualize_prototypes",
            "--set",
            *fast,
        ]
    )
    assert eval_metrics["ACC"] == pytest.approx(selflabel_metrics["ACC"])
    written = json.loads((out / "metrics.json").read_text())
    assert {"ACC", "NMI", "ARI", "AMI", "ACC Top-5", "head", "hungarian_match"} <= set(written)
    for name in ("confusion_matrix.png", "prototypes.png"):
        Image.open(out / name).verify()
    rows = (out / "predictions.csv").read_text().strip().splitlines()
    assert (
        len(rows) == 51 and rows[0] == "file,cluster,confidence,label,matched_class,runner_up,runner_up_confidence,name"
    )

    # The model file says it is a width-8 ResNet: eval.py builds it without the run's --set.
    plain = eval_script.main(
        [
            "--config_env",
            str(tiny_cifar_env),
            "--config_exp",
            str(ROOT / "configs/selflabel/selflabel_cifar10.yml"),
            "--model",
            str(selflabel_dir / "model.pth.tar"),
            "--output_dir",
            str(tmp_path / "eval_plain"),
            "--set",
            "num_workers=0",
        ]
    )
    assert plain["ACC"] == eval_metrics["ACC"]


def test_selflabel_keeps_the_best_epoch_across_a_resume(tiny_cifar_env, tmp_path):
    results = tmp_path / "results" / "cifar-10"
    run_pretext(tiny_cifar_env, FAST)
    scan.main(
        [
            "--config_env",
            str(tiny_cifar_env),
            "--config_exp",
            str(ROOT / "configs/scan/scan_cifar10.yml"),
            "--set",
            "epochs=1",
            "batch_size=32",
            *FAST,
        ]
    )

    def run_selflabel(epochs: int, keep: str = "best") -> dict:
        return selflabel.main(
            [
                "--config_env",
                str(tiny_cifar_env),
                "--config_exp",
                str(ROOT / "configs/selflabel/selflabel_cifar10.yml"),
                "--set",
                f"epochs={epochs}",
                "batch_size=32",
                f"selflabel_keep={keep}",
                "pseudo_labels=per_cluster",
                "optimizer_kwargs.lr=0.01",
                *FAST,
            ]
        )

    run_selflabel(1)
    metrics = run_selflabel(3)
    history = metrics["epochs"]
    assert [record["epoch"] for record in history] == [0, 1, 2, 3]  # epoch 0 and 1 come from the checkpoint
    logged = (results / "selflabel" / "history.jsonl").read_text().splitlines()
    agreement = [None] + [json.loads(line)["weak_strong_agreement"] for line in logged]  # epochs 1-3
    # Kept: the last epoch with intact clusters whose weak/strong agreement is at least epoch 1's.
    best = max(e for e, r in enumerate(history) if not r["warnings"] and (e == 0 or agreement[e] >= agreement[1]))
    assert metrics["kept_epoch"] == best and f"epoch {best}" in metrics["kept_reason"]
    # The written model is the kept epoch's: its test predictions give that epoch's cluster sizes.
    assert metrics["cluster_sizes"] == history[best]["cluster_sizes"]
    assert metrics["cluster_warnings"] == [
        {"epoch": record["epoch"], **warning} for record in history for warning in record["warnings"]
    ]
    checkpoint = load_checkpoint(results / "selflabel" / "checkpoint.pth.tar")
    assert checkpoint["watch"]["best_epoch"] == best and checkpoint["epoch"] == 3
    # model.pth.tar holds the best epoch: selflabel_keep: last is another result, so the finished run starts over.
    best_model = (results / "selflabel" / "model.pth.tar").read_bytes()
    last = run_selflabel(3, keep="last")
    assert last["kept_epoch"] == 3 and [record["epoch"] for record in last["epochs"]] == [0, 1, 2, 3]
    [moved] = (results).glob("selflabel.old-*")
    assert (moved / "model.pth.tar").read_bytes() == best_model

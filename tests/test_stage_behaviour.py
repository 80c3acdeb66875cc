"""What the stage loops do with their results: which SCAN head and file they keep, what eval.py agrees with,
and that labels never reach a training loss. Runs the real entry scripts on a tiny CIFAR-10 copy."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

import eval as eval_script
import scan
import selflabel
import simclr
from tests.conftest import ROOT, write_random_pretext_outputs
from utils.config import load_config

pytestmark = pytest.mark.slow

FAST = ["num_workers=0", "backbone_kwargs.base_width=8", "seed=0", "batch_size=32"]
SCAN_CONFIG = ROOT / "configs/scan/scan_cifar10.yml"


def stage_args(env, config, *overrides) -> list[str]:
    return ["--config_env", str(env), "--config_exp", str(config), "--set", *FAST, *overrides]


def write_pretext_outputs(env) -> dict:
    return write_random_pretext_outputs(env, FAST, (100, 21), (50, 6))


def test_scan_keeps_the_lowest_loss_head_and_replaces_the_model_only_on_improvement(tiny_cifar_env, monkeypatch):
    cfg = write_pretext_outputs(tiny_cifar_env)
    # Scripted head selection: epoch 1 head 1 (0.5), epoch 2 head 2 (0.7, worse), epoch 3 head 0 (0.3), epoch 4
    # head 2 (0.3, a tie is no improvement).
    scripted = iter([(1, 0.5), (2, 0.7), (0, 0.3), (2, 0.3)])
    real_evaluate = scan.scan_evaluate

    def scripted_evaluate(head_outputs):
        scores = real_evaluate(head_outputs)
        scores["lowest_loss_head"], scores["lowest_loss"] = next(scripted)
        return scores

    saved_models = []
    real_save = scan.save_scan_file

    def recording_save(state_dict, head, path, architecture):
        if str(path) == cfg["scan_model"]:
            saved_models.append({"head": head, "model": {k: v.clone() for k, v in state_dict.items()}})
        real_save(state_dict, head, path, architecture)

    monkeypatch.setattr(scan, "scan_evaluate", scripted_evaluate)
    monkeypatch.setattr(scan, "save_scan_file", recording_save)
    metrics = scan.main(stage_args(tiny_cifar_env, SCAN_CONFIG, "epochs=4", "num_heads=3"))

    assert [saved["head"] for saved in saved_models] == [1, 0]
    final = torch.load(cfg["scan_model"], weights_only=True)
    assert final["head"] == 0
    for key, value in saved_models[-1]["model"].items():
        assert torch.equal(final["model"][key], value), key
    checkpoint = torch.load(cfg["scan_checkpoint"], weights_only=True)
    assert checkpoint["best_loss"] == 0.3 and checkpoint["best_loss_head"] == 0
    # The final weights (epoch 4) differ from the kept ones (epoch 3): the kept file is not simply the last.
    assert not torch.equal(checkpoint["model"]["cluster_head.0.weight"], final["model"]["cluster_head.0.weight"])
    assert metrics["head"] == 0 and metrics["best_loss"] == 0.3


def test_scan_metrics_equal_eval_on_the_same_model_and_split(tiny_cifar_env, tmp_path):
    cfg = write_pretext_outputs(tiny_cifar_env)
    scan_metrics = scan.main(stage_args(tiny_cifar_env, SCAN_CONFIG, "epochs=2", "num_heads=2"))
    saved = json.loads((tmp_path / "results/cifar-10/scan/metrics.json").read_text())
    eval_metrics = eval_script.main(
        [
            "--config_env",
            str(tiny_cifar_env),
            "--config_exp",
            str(SCAN_CONFIG),
            "--model",
            cfg["scan_model"],
            "--output_dir",
            str(tmp_path / "eval"),
            "--set",
            *FAST,
            "num_heads=2",
        ]
    )
    written = json.loads((tmp_path / "eval/metrics.json").read_text())
    for key in ("ACC", "NMI", "ARI", "AMI", "ACC Top-5", "hungarian_match", "cluster_sizes", "head"):
        assert saved[key] == written[key], key
    assert scan_metrics["ACC"] == eval_metrics["ACC"]


def permute_cifar_labels(root, seed: int) -> None:
    """Rewrite every CIFAR-10 batch with its labels shuffled; the images stay byte for byte the same."""
    rng = np.random.default_rng(seed)
    for path in sorted((root / "datasets/cifar-10/cifar-10-batches-py").glob("*_batch*")):
        with open(path, "rb") as handle:
            batch = pickle.load(handle)
        batch["labels"] = rng.permutation(batch["labels"]).tolist()
        with open(path, "wb") as handle:
            pickle.dump(batch, handle, protocol=2)


def train_all_stages(env) -> dict[str, dict]:
    simclr.main(stage_args(env, ROOT / "configs/pretext/simclr_cifar10.yml", "epochs=2"))
    scan.main(stage_args(env, SCAN_CONFIG, "epochs=2", "num_heads=2"))
    selflabel.main(
        stage_args(env, ROOT / "configs/selflabel/selflabel_cifar10.yml", "epochs=2", "confidence_threshold=0.1")
    )
    cfg = load_config(env, SCAN_CONFIG, FAST)
    return {
        "pretext": torch.load(cfg["pretext_checkpoint"], weights_only=True)["model"],
        "scan": torch.load(cfg["scan_checkpoint"], weights_only=True)["model"],
        "selflabel": torch.load(cfg["selflabel_checkpoint"], weights_only=True)["model"],
        "neighbors": {"train": np.load(cfg["topk_neighbors_train_path"])},
    }


def test_labels_never_reach_a_training_loss(tmp_path_factory):
    """The same images with shuffled labels train to bit-identical weights and neighbours in all three stages."""
    from tests.conftest import write_cifar10

    runs = []
    for shuffled in (False, True):
        root = tmp_path_factory.mktemp("labels_shuffled" if shuffled else "labels_true")
        write_cifar10(root / "datasets" / "cifar-10")
        if shuffled:
            permute_cifar_labels(root, seed=1)
        env = root / "env.yml"
        env.write_text(f"root_dir: {root / 'results'}\ndata_root: {root / 'datasets'}\ndownload: false\n")
        runs.append(train_all_stages(env))
    true_labels, shuffled_labels = runs
    assert np.array_equal(true_labels["neighbors"]["train"], shuffled_labels["neighbors"]["train"])
    for stage in ("pretext", "scan", "selflabel"):
        for key, value in true_labels[stage].items():
            assert torch.equal(value, shuffled_labels[stage][key]), f"{stage}: {key}"


def test_zero_epochs_writes_the_untrained_heads_as_simclr_writes_its_model(tiny_cifar_env, tmp_path):
    """`--set epochs=0` is a baseline (SCAN heads untrained on the pretext backbone), not a missing file."""
    cfg = write_pretext_outputs(tiny_cifar_env)
    metrics = scan.main(stage_args(tiny_cifar_env, SCAN_CONFIG, "epochs=0", "num_heads=2"))
    saved = torch.load(cfg["scan_model"], weights_only=True)
    assert saved["head"] in (0, 1) and metrics["head"] == saved["head"] and np.isfinite(metrics["best_loss"])
    pretext = torch.load(cfg["pretext_model"], weights_only=True)
    assert torch.equal(saved["model"]["backbone.conv1.weight"], pretext["backbone.conv1.weight"])  # untrained
    config = ROOT / "configs/selflabel/selflabel_cifar10.yml"
    selflabel_metrics = selflabel.main(stage_args(tiny_cifar_env, config, "epochs=0"))
    kept = torch.load(tmp_path / "results/cifar-10/selflabel/model.pth.tar", weights_only=True)
    head = saved["head"]
    assert torch.equal(kept["cluster_head.0.weight"], saved["model"][f"cluster_head.{head}.weight"])
    assert selflabel_metrics["kept_epoch"] == 0

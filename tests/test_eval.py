"""eval.py on every checkpoint format (published SCAN files, self-label and pretext state dicts, bad files) and its
prediction rows."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

import eval as eval_script
from engine.model_files import architecture_record, save_scan_file
from models import ClusteringModel, ContrastiveModel, build_backbone
from tests.conftest import ROOT
from tests.test_checkpoint import legacy_cuda_file
from utils.checkpoint import CheckpointError

WIDTH = ["backbone_kwargs.base_width=8", "num_workers=0"]


def clustering_model(heads: int, clusters: int = 10, seed: int = 0) -> ClusteringModel:
    torch.manual_seed(seed)
    return ClusteringModel(build_backbone("resnet18", base_width=8), clusters, heads)


def run_eval(env, config, model_path, out, *extra):
    return eval_script.main(
        [
            "--config_env",
            str(env),
            "--config_exp",
            str(ROOT / config),
            "--model",
            str(model_path),
            "--output_dir",
            str(out),
            *extra,
            "--set",
            *WIDTH,
        ]
    )


def accuracy_from_csv(out) -> float:
    """ACC recomputed from predictions.csv and the saved matching, by counting rows."""
    rows = list(csv.DictReader((out / "predictions.csv").read_text().splitlines()))
    return sum(r["matched_class"] == r["label"] for r in rows) / len(rows)


@pytest.mark.slow
def test_published_scan_format_evaluates_the_stored_head(tiny_cifar_env, tmp_path):
    model = clustering_model(heads=3)
    torch.nn.init.normal_(model.cluster_head[1].weight, std=5.0)  # make head 1 differ clearly from head 0
    path = tmp_path / "scan_cifar-10.pth.tar"
    path.write_bytes(legacy_cuda_file({"model": model.state_dict(), "head": np.int64(1)}))
    metrics = run_eval(
        tiny_cifar_env, "configs/scan/scan_cifar10.yml", path, tmp_path / "out", "--visualize_prototypes"
    )
    out = tmp_path / "out"
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["head"] == 1 and saved["matching"] == "hungarian" and saved == {**metrics, "model": str(path)}
    for key in ("ACC", "NMI", "ARI", "AMI", "ACC Top-5"):
        assert 0.0 <= saved[key] <= 1.0
    assert sorted(c for c, _ in saved["hungarian_match"]) == list(range(10))
    assert saved["ACC"] == pytest.approx(accuracy_from_csv(out))
    for name in ("confusion_matrix.png", "prototypes.png"):
        with Image.open(out / name) as image:
            image.verify()
    assert (out / "report.html").read_text().count("<details class='cluster'") == 10

    # The same file naming head 0 must give other assignments: the stored head is the one used.
    path.write_bytes(legacy_cuda_file({"model": model.state_dict(), "head": np.int64(0)}))
    run_eval(tiny_cifar_env, "configs/scan/scan_cifar10.yml", path, tmp_path / "out0")
    clusters = [
        [r["cluster"] for r in csv.DictReader((d / "predictions.csv").read_text().splitlines())]
        for d in (out, tmp_path / "out0")
    ]
    assert clusters[0] != clusters[1]


@pytest.mark.slow
def test_selflabel_state_dict_with_ddp_prefix_and_default_output_dir(tiny_cifar_env, tmp_path):
    model = clustering_model(heads=1)
    path = tmp_path / "models" / "selflabel_cifar-10.pth.tar"
    path.parent.mkdir()
    torch.save({"module." + k: v for k, v in model.state_dict().items()}, path)
    metrics = eval_script.main(
        [
            "--config_env",
            str(tiny_cifar_env),
            "--config_exp",
            str(ROOT / "configs/selflabel/selflabel_cifar10.yml"),
            "--model",
            str(path),
            "--set",
            *WIDTH,
        ]
    )
    out = tmp_path / "models" / "selflabel_cifar-10_eval"
    assert (out / "metrics.json").is_file() and metrics["head"] == 0
    assert metrics["ACC"] == pytest.approx(accuracy_from_csv(out))


@pytest.mark.slow
def test_pretext_model_gives_neighbour_accuracy(tiny_cifar_env, tmp_path):
    torch.manual_seed(0)
    model = ContrastiveModel(build_backbone("resnet18", base_width=8))
    path = tmp_path / "simclr_cifar-10.pth.tar"
    torch.save(model.state_dict(), path)
    metrics = run_eval(tiny_cifar_env, "configs/pretext/simclr_cifar10.yml", path, tmp_path / "out")
    assert set(metrics["neighbor_acc"]) == {"1", "5", "20"}
    assert all(0.0 <= v <= 1.0 for v in metrics["neighbor_acc"].values())
    assert json.loads((tmp_path / "out/metrics.json").read_text())["neighbor_acc"] == metrics["neighbor_acc"]
    report = (tmp_path / "out/report.html").read_text()  # a pretext report: the metrics, no clusters
    assert "top-20 neighbour accuracy" in report and "class='cluster'" not in report


@pytest.mark.slow
def test_over_clustering_uses_majority_mapping(tiny_cifar_env, tmp_path):
    path = tmp_path / "overcluster.pth.tar"
    torch.save(clustering_model(heads=1, clusters=20).state_dict(), path)
    metrics = run_eval(tiny_cifar_env, "configs/scan/scan_cifar10.yml", path, tmp_path / "out")
    assert metrics["matching"] == "majority" and len(metrics["hungarian_match"]) == 20
    assert metrics["ACC"] == pytest.approx(accuracy_from_csv(tmp_path / "out"))


@pytest.mark.slow
def test_checkpoint_of_another_architecture_lists_the_bad_keys(tiny_cifar_env, tmp_path):
    path = tmp_path / "wide.pth.tar"
    torch.save(ClusteringModel(build_backbone("resnet18", base_width=16), 10, 1).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"(?s)does not fit.*shape mismatches: backbone.conv1.weight"):
        run_eval(tiny_cifar_env, "configs/scan/scan_cifar10.yml", path, tmp_path / "out")


@pytest.mark.slow
def test_recorded_architecture_wins_over_the_config(tiny_cifar_env, tmp_path, capsys):
    model = clustering_model(heads=2)
    path = tmp_path / "model.pth.tar"
    cfg = {"setup": "scan", "backbone": "resnet18", "backbone_kwargs": {"base_width": 8}, "num_classes": 10}
    save_scan_file(model.state_dict(), 1, path, architecture_record({**cfg, "num_heads": 2}))
    metrics = eval_script.main(
        [
            "--config_env",
            str(tiny_cifar_env),
            "--config_exp",
            str(ROOT / "configs/scan/scan_cifar10.yml"),
            "--model",
            str(path),
            "--output_dir",
            str(tmp_path / "out"),
            "--set",
            "num_workers=0",  # the config's width (64) is not the file's (8)
        ]
    )
    assert metrics["head"] == 1 and metrics["ACC"] == pytest.approx(accuracy_from_csv(tmp_path / "out"))
    assert "backbone_kwargs.base_width: file 8, config 64" in capsys.readouterr().out


@pytest.mark.slow
def test_evaluation_takes_its_own_batch_size_not_the_training_one(tiny_cifar_env, tmp_path, monkeypatch):
    """selflabel_cifar10.yml trains with batches of 1000; eval.py evaluates with 256 (or --batch_size)."""
    import data.dataloaders

    sizes = []

    class RecordingLoader(data.dataloaders.DataLoader):
        def __init__(self, *args, **kwargs):
            sizes.append(kwargs["batch_size"])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(data.dataloaders, "DataLoader", RecordingLoader)
    path = tmp_path / "selflabel.pth.tar"
    torch.save(clustering_model(heads=1).state_dict(), path)
    run_eval(tiny_cifar_env, "configs/selflabel/selflabel_cifar10.yml", path, tmp_path / "out")
    assert sizes and set(sizes) == {256}
    sizes.clear()
    run_eval(tiny_cifar_env, "configs/selflabel/selflabel_cifar10.yml", path, tmp_path / "out", "--batch_size", "7")
    assert sizes and set(sizes) == {7}


def test_predictions_csv_names_each_image_its_cluster_confidence_and_label(tmp_path):
    import csv

    from engine.result_files import write_predictions_csv

    output = {
        "probabilities": torch.tensor([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]]),
        "predictions": torch.tensor([0, 1, 0]),
        "targets": torch.tensor([1, 0, -1]),
    }
    files = ["pets[0]", "pets[1]", "pets[2]"]
    write_predictions_csv(tmp_path / "p.csv", files, output, ["cat", "dog"], {0: "dog"}, ["a", "b", "a"])
    rows = list(csv.DictReader((tmp_path / "p.csv").read_text().splitlines()))
    assert [(r["file"], r["cluster"], r["label"], r["matched_class"], r["name"]) for r in rows] == [
        ("pets[0]", "0", "dog", "dog", "a"),
        ("pets[1]", "1", "cat", "", "b"),
        ("pets[2]", "0", "", "dog", "a"),
    ]
    assert [float(r["confidence"]) for r in rows] == pytest.approx([0.9, 0.7, 0.6])
    assert [(r["runner_up"], float(r["runner_up_confidence"])) for r in rows] == [("1", 0.1), ("0", 0.3), ("1", 0.4)]

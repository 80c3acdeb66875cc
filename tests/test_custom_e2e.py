"""End-to-end on folders of your own images: simclr → scan → selflabel → eval → predict, through the templates.

One labeled folder (class sub-folders, PNG and JPEG) and one unlabeled folder (loose files, a corrupt one),
both driven by configs/*/..._custom.yml with only `--set` overrides, as docs/custom_data.md tells users to.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

import eval as eval_script
import predict
import scan
import selflabel
import simclr
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
FAST = [
    "epochs=1",
    "num_workers=0",
    "backbone_kwargs.base_width=8",
    "backbone_kwargs.stem=cifar",
    "seed=0",
    "batch_size=16",
    "num_classes=3",
    "transformation_kwargs.crop_size=16",
    "dataset_kwargs.image_size=16",
]
STAGE_SETTINGS = {
    "simclr": ["augmentation_kwargs.random_resized_crop.size=16"],
    "scan": ["augmentation_kwargs.crop_size=16", "augmentation_kwargs.cutout_kwargs.length=4"],
    "selflabel": [
        "augmentation_kwargs.crop_size=16",
        "augmentation_kwargs.cutout_kwargs.length=4",
        "confidence_threshold=0.1",
    ],
}
CONFIGS = {
    "simclr": "pretext/simclr_custom.yml",
    "scan": "scan/scan_custom.yml",
    "selflabel": "selflabel/selflabel_custom.yml",
}


def write_images(folder: Path, color: tuple[int, int, int], count: int, rng: np.random.Generator) -> None:
    """`count` noisy images of one colour, of varied sizes, alternating PNG and JPEG."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        height, width = rng.integers(16, 28, size=2)
        pixels = np.clip(np.array(color) + rng.normal(0, 25, (height, width, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:02d}.{'png' if i % 2 else 'jpg'}")


def run_pipeline(env: Path, name: str, root: Path, tmp_path: Path) -> tuple[dict, Path]:
    """All stages on the folder `root` under dataset name `name`; returns eval's metrics and the results folder."""
    common = [*FAST, f"train_db_name={name}", f"val_db_name={name}", f"dataset_kwargs.root={root}"]
    for stage, module in (("simclr", simclr), ("scan", scan), ("selflabel", selflabel)):
        module.main(
            [
                "--config_env",
                str(env),
                "--config_exp",
                str(ROOT / "configs" / CONFIGS[stage]),
                "--set",
                *common,
                *STAGE_SETTINGS[stage],
            ]
        )
    results = tmp_path / "results" / name
    model = results / "selflabel" / "model.pth.tar"
    metrics = eval_script.main(
        [
            "--config_env",
            str(env),
            "--config_exp",
            str(ROOT / "configs" / CONFIGS["selflabel"]),
            "--model",
            str(model),
            "--visualize_prototypes",
            "--set",
            *common,
        ]
    )
    return metrics, results


def predict_rows(
    env: Path, name: str, root: Path, model: Path, images: list[Path], output: Path, *extra: str
) -> list[dict]:
    predict.main(
        [
            "--config_env",
            str(env),
            "--config_exp",
            str(ROOT / "configs" / CONFIGS["selflabel"]),
            "--model",
            str(model),
            "--images",
            *map(str, images),
            "--output",
            str(output),
            *extra,
            "--set",
            *FAST,
            f"train_db_name={name}",
            f"val_db_name={name}",
            f"dataset_kwargs.root={root}",
        ]
    )
    with open(output, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def env(tmp_path: Path) -> Path:
    path = tmp_path / "env.yml"
    path.write_text(
        yaml.safe_dump(
            {"root_dir": str(tmp_path / "results"), "data_root": str(tmp_path / "datasets"), "download": False}
        )
    )
    return path


def test_labeled_folder(env, tmp_path, capsys):
    rng = np.random.default_rng(0)
    root = tmp_path / "datasets" / "colors"
    for name, color in COLORS.items():
        write_images(root / name, color, 12, rng)
    metrics, results = run_pipeline(env, "colors", Path("colors"), tmp_path)  # root relative to data_root

    split = json.loads((results / "split.json").read_text())
    assert split["labeled"] and split["classes"] == ["blue", "green", "red"]
    assert (len(split["train"]), len(split["test"])) == (30, 6)  # 2 of each 12 (0.2, rounded)
    assert {"ACC", "NMI", "ARI", "hungarian_match"} <= set(metrics)
    eval_dir = results / "selflabel" / "model_eval"
    for name in ("confusion_matrix.png", "prototypes.png"):
        Image.open(eval_dir / name).verify()
    expected_keys = {
        "pretext": {"loss", "lr", "knn_top1"},
        "scan": {"total", "consistency", "entropy", "lr", "val_loss", "ACC"},
        "selflabel": {"loss", "lr", "confident_fraction", "skipped_batches", "ACC"},
    }
    for stage, keys in expected_keys.items():
        (record,) = [json.loads(line) for line in (results / stage / "history.jsonl").read_text().splitlines()]
        assert keys | {"epoch", "time_s"} <= set(record) and record["epoch"] == 1, stage
        assert 0 <= record.get("ACC", record.get("knn_top1")) <= 1
        Image.open(results / stage / "curves.png").verify()
    report = (eval_dir / "report.html").read_text()
    assert all(f"<h3>{stage} (1 epoch)</h3>" in report for stage in expected_keys)
    assert "Confusion matrix" in report and report.count("<details class='cluster'") == 3
    with open(eval_dir / "predictions.csv", newline="") as handle:
        evaluated = list(csv.DictReader(handle))
    assert len(evaluated) == 6 and all(Path(row["file"]).parent.name == row["label"] for row in evaluated)

    new = tmp_path / "new"
    write_images(new / "batch", COLORS["red"], 3, rng)
    (new / "batch" / "broken.png").write_bytes(b"\x89PNG not really")
    capsys.readouterr()
    rows = predict_rows(
        env,
        "colors",
        Path("colors"),
        results / "selflabel" / "model.pth.tar",
        [new, root / "green" / "00.jpg"],
        tmp_path / "out" / "predictions.csv",
        "--sort_into",
        str(tmp_path / "sorted"),
    )
    assert "Skipped 1 file(s)" in capsys.readouterr().out
    assert [Path(row["file"]).name for row in rows] == ["00.jpg", "01.png", "02.jpg", "00.jpg"]
    # One format: predict.py's file has eval.py's columns (new images have no label).
    assert (
        list(rows[0])
        == list(evaluated[0])
        == [*("file", "cluster", "confidence", "label", "matched_class", "runner_up", "runner_up_confidence", "name")]
    )
    assert all(row["label"] == "" for row in rows)
    matched = {int(cluster): class_index for cluster, class_index in metrics["hungarian_match"]}
    for row in rows:
        assert 0 <= int(row["cluster"]) < 3 and 0 < float(row["confidence"]) <= 1
        assert row["matched_class"] == row["name"] == split["classes"][matched[int(row["cluster"])]]
    # --sort_into: every readable image copied into the folder of its cluster's name, by default its matched class.
    sorted_files = {
        folder.name: sorted(path.read_bytes() for path in folder.iterdir())
        for folder in (tmp_path / "sorted").iterdir()
    }
    expected: dict[str, list[bytes]] = {}
    for row in rows:
        expected.setdefault(row["matched_class"], []).append(Path(row["file"]).read_bytes())
    assert sorted_files == {folder: sorted(files) for folder, files in expected.items()}


def test_unlabeled_folder(env, tmp_path, capsys):
    rng = np.random.default_rng(1)
    root = tmp_path / "datasets" / "snapshots"
    for name, color in COLORS.items():
        write_images(root / "day1" / name, color, 6, rng)
    write_images(root, COLORS["red"], 6, rng)  # loose files: the folder is unlabeled
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8 cut")
    with pytest.warns(UserWarning, match="(?s)skipping 1 unreadable.*corrupt.jpg"):
        metrics, results = run_pipeline(env, "snapshots", root, tmp_path)
    out = capsys.readouterr().out
    assert "no labels" in out and "ACC" not in metrics

    split = json.loads((results / "split.json").read_text())
    assert not split["labeled"] and set(split["test"].values()) == {-1} and "corrupt.jpg" in split["unreadable"]
    # Nothing held out without labels: every readable image is trained on and evaluated.
    assert split["test"] == split["train"] and len(split["train"]) == 24
    assert sum(metrics["cluster_sizes"]) == 24
    pretext = json.loads((results / "pretext" / "metrics.json").read_text())
    assert pretext["train_neighbor_acc"] is None and pretext["knn_top1"] is None
    assert np.load(results / "pretext" / "topk-train-neighbors.npy").shape[0] == len(split["train"])
    for path in ("scan/model.pth.tar", "selflabel/model.pth.tar", "selflabel/model_eval/prototypes.png"):
        assert (results / path).is_file(), path

    rows = predict_rows(
        env, "snapshots", root, results / "scan" / "model.pth.tar", [root / "day1"], tmp_path / "predictions.csv"
    )
    assert len(rows) == 18 and all(row["matched_class"] == "" for row in rows)
    # No eval.py of the SCAN model, so no names file: the default names, numbered.
    assert all(row["name"] == f"cluster_{int(row['cluster']):02d}" for row in rows)

"""Final evaluation of one clustering head: metrics printed, saved as JSON, confusion matrix as PNG."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path

import torch

from engine.evaluate import cluster_metrics
from utils.plots import plot_confusion_matrix
from utils.results import atomic_write, write_json

# predictions.csv, from eval.py and predict.py alike: label and matched_class stay empty where unknown.
PREDICTION_COLUMNS = ("file", "cluster", "confidence", "label", "matched_class")


def clustering_report(
    head_output: dict, class_names: list[str], out_dir: str | Path, extra: dict | None = None, title: str = "Clustering"
) -> dict:
    """Score `head_output` (one head of engine.inference.Outputs) and write metrics.json + confusion_matrix.png;
    without labels (targets −1) only the cluster sizes, with one notice."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    predictions, targets = head_output["predictions"], head_output["targets"]
    num_clusters = head_output["probabilities"].shape[1]
    metrics = dict(extra or {})
    metrics["num_samples"] = int(predictions.numel())
    metrics["cluster_sizes"] = torch.bincount(predictions, minlength=num_clusters).tolist()
    if (targets < 0).any():
        print(
            f"{title}: the evaluated data has no labels (or only some), so ACC/NMI/ARI are skipped; "
            f"cluster sizes: {metrics['cluster_sizes']}",
            flush=True,
        )
    else:
        scores = cluster_metrics(predictions, head_output["probabilities"], targets, num_classes=len(class_names))
        reordered = scores.pop("reordered_predictions")
        metrics.update(scores)
        print(
            f"{title}: ACC {100 * scores['ACC']:.2f}  NMI {100 * scores['NMI']:.2f}  ARI {100 * scores['ARI']:.2f}  "
            f"AMI {100 * scores['AMI']:.2f}  ACC Top-5 {100 * scores['ACC Top-5']:.2f}  "
            f"({scores['matching']} matching)",
            flush=True,
        )
        plot_confusion_matrix(reordered.numpy(), targets.numpy(), class_names, out_dir / "confusion_matrix.png")
        print(f"Saved {out_dir / 'confusion_matrix.png'}", flush=True)
    write_json(metrics, out_dir / "metrics.json")
    print(f"Saved {out_dir / 'metrics.json'}", flush=True)
    return metrics


def write_predictions_csv(
    path: str | Path, rows: Iterable[tuple[str, int, float, str]], cluster_to_class: dict[int, str]
) -> None:
    """One row per image, (file, cluster, confidence, label), plus the class eval.py matched to the cluster.

    One format for eval.py's and predict.py's files, so a script written for one reads the other.
    """
    with atomic_write(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(PREDICTION_COLUMNS)
        for file, cluster, confidence, label in rows:
            writer.writerow([file, cluster, f"{confidence:.6f}", label, cluster_to_class.get(cluster, "")])

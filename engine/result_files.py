"""Final evaluation of one clustering head: metrics printed, saved as JSON, confusion matrix as PNG."""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from engine.metrics import cluster_metrics
from utils.files import atomic_write, write_json
from utils.plots import plot_confusion_matrix

# predictions.csv, from eval.py and predict.py alike: label and matched_class stay empty where unknown.
PREDICTION_COLUMNS = ("file", "cluster", "confidence", "label", "matched_class")
PREDICTION_COLUMNS += ("runner_up", "runner_up_confidence", "name")


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
    path: str | Path,
    files: list[str],
    head_output: dict,
    class_names: list[str],
    cluster_to_class: dict[int, str],
    names: list[str],
) -> None:
    """One row per image: its file, cluster and the cluster's probability, its true class when known, the class eval.py
    matched to the cluster, the second most probable cluster and its probability, and its name (`names`: per image,
    tools/cluster_names.assign_names). One format for eval.py's and predict.py's files, so a script written for one
    reads the other."""
    probabilities = head_output["probabilities"].float()
    values, indices = (t.tolist() for t in probabilities.topk(min(2, probabilities.shape[1]), dim=1))
    clusters, targets = head_output["predictions"].tolist(), head_output["targets"].tolist()
    with atomic_write(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(PREDICTION_COLUMNS)
        for i, (cluster, target) in enumerate(zip(clusters, targets)):
            runner_up = [indices[i][1], f"{values[i][1]:.6f}"] if len(values[i]) > 1 else ["", ""]  # K = 1: none
            label, matched = class_names[target] if target >= 0 else "", cluster_to_class.get(cluster, "")
            writer.writerow([files[i], cluster, f"{values[i][0]:.6f}", label, matched, *runner_up, names[i]])

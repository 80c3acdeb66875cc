"""engine/result_files.py: metrics.json, the confusion matrix and predictions.csv of a stage."""

from __future__ import annotations

import pytest
import torch


def test_clustering_report_scores_labelled_data_and_counts_sizes_without_labels(tmp_path, monkeypatch):
    import json

    from engine import result_files

    drawn = []
    monkeypatch.setattr(result_files, "plot_confusion_matrix", lambda *args: drawn.append(args[-1]))
    output = {
        "predictions": torch.tensor([2, 2, 0, 0, 0]),
        "probabilities": torch.nn.functional.one_hot(torch.tensor([2, 2, 0, 0, 0]), 3).float(),
        "targets": torch.tensor([0, 0, 1, 1, 0]),
    }
    metrics = result_files.clustering_report(output, ["a", "b"], tmp_path / "labelled", extra={"head": 1})
    assert metrics["head"] == 1 and metrics["num_samples"] == 5 and metrics["cluster_sizes"] == [3, 0, 2]
    assert metrics["ACC"] == pytest.approx(0.8) and "reordered_predictions" not in metrics
    assert json.loads((tmp_path / "labelled/metrics.json").read_text()) == metrics
    assert drawn == [tmp_path / "labelled/confusion_matrix.png"]
    unlabelled = result_files.clustering_report({**output, "targets": torch.full((5,), -1)}, [], tmp_path / "none")
    assert unlabelled == {"num_samples": 5, "cluster_sizes": [3, 0, 2]} and len(drawn) == 1

"""Watching the clusters while self-labeling, and choosing which epoch's model to keep (docs/selflabel.md).

Self-labeling can move images of the less confident clusters into the confident ones until some empty, and the
original keeps the last epoch whatever happened. Here every epoch's test cluster sizes are compared with the SCAN
model's ("epoch 0") and shrunken clusters reported; with `selflabel_keep: best` the stage keeps the epoch, epoch 0
included, with the lowest assignment SCAN loss (engine/cluster_criteria.py) among those whose clusters all
survived. Hard assignments, not probabilities: self-labeling sharpens the probabilities by design, and the
probability-based loss rose at every epoch on the digits while accuracy rose, so it would always keep epoch 0.
"""

from __future__ import annotations

import math

import torch

from engine.cluster_criteria import assignment_scan_loss


def cluster_sizes(predictions: torch.Tensor, num_clusters: int) -> list[int]:
    return torch.bincount(predictions.long(), minlength=num_clusters).tolist()


def shrunken_clusters(sizes: list[int], sizes_after_scan: list[int], fraction: float) -> list[dict]:
    """Clusters that emptied, or fell below `fraction` of their size after SCAN (empty ones after SCAN excluded)."""
    found = []
    for cluster, (size, reference) in enumerate(zip(sizes, sizes_after_scan)):
        if reference == 0:
            continue
        if size == 0:
            found.append({"cluster": cluster, "size": 0, "size_after_scan": reference, "kind": "emptied"})
        elif size < fraction * reference:
            found.append({"cluster": cluster, "size": size, "size_after_scan": reference, "kind": "shrunk"})
    return found


class SelfLabelWatch:
    """Per-epoch cluster sizes, warnings and scores of a self-labeling run, and the best epoch so far; epoch 0,
    the SCAN model, gives the reference sizes and the score to beat. `state_dict()` goes into the checkpoint."""

    def __init__(self, warning_fraction: float, state: dict | None = None) -> None:
        self.warning_fraction = warning_fraction
        state = state or {}
        self.history: list[dict] = list(state.get("history", []))
        self.best_epoch: int | None = state.get("best_epoch")
        self.best_score: float = state.get("best_score", math.inf)

    @property
    def sizes_after_scan(self) -> list[int]:
        return self.history[0]["cluster_sizes"]

    def observe(self, epoch: int, head_output: dict, neighbors: torch.Tensor | None, extra: dict) -> dict:
        """Record one epoch (0 = the SCAN model) and return its record; 'improved': the new best (never an epoch
        with an emptied or shrunken cluster)."""
        num_clusters = head_output["probabilities"].shape[1]
        sizes = cluster_sizes(head_output["predictions"], num_clusters)
        warnings = [] if epoch == 0 else shrunken_clusters(sizes, self.sizes_after_scan, self.warning_fraction)
        score = None
        if neighbors is not None:
            criterion = assignment_scan_loss(head_output["predictions"], neighbors, num_clusters)
            score = criterion.pop("score")
            extra = {**extra, **criterion}
        improved = score is not None and not warnings and score < self.best_score
        if improved:
            self.best_epoch, self.best_score = epoch, score
        record = {"epoch": epoch, "cluster_sizes": sizes, "warnings": warnings, "score": score, **extra}
        self.history.append(record)
        return {**record, "improved": improved}

    def warning_lines(self, record: dict) -> list[str]:
        lines = []
        for warning in record["warnings"]:
            what = "emptied" if warning["kind"] == "emptied" else f"fell to {warning['size']} images"
            lines.append(
                f"WARNING: epoch {record['epoch']}: cluster {warning['cluster']} {what} on the test split "
                f"(it had {warning['size_after_scan']} after SCAN; warning below "
                f"{self.warning_fraction:g} of that)"
            )
        return lines

    def all_warnings(self) -> list[dict]:
        return [{"epoch": record["epoch"], **warning} for record in self.history for warning in record["warnings"]]

    def kept_reason(self) -> str:
        """Why the kept model (best mode) is the one it is, in one sentence for the log and metrics.json."""
        scan_score = self.history[0]["score"]
        if self.best_epoch in (None, 0):
            return (
                f"no self-labeling epoch had all clusters intact and a lower assignment SCAN loss on the test "
                f"neighbours than the SCAN model ({scan_score:.4f}): kept the SCAN head (epoch 0)"
            )
        return (
            f"epoch {self.best_epoch} has the lowest assignment SCAN loss on the test neighbours "
            f"({self.best_score:.4f}; SCAN model {scan_score:.4f}) among the epochs with no emptied or shrunken cluster"
        )

    def state_dict(self) -> dict:
        return {"history": self.history, "best_epoch": self.best_epoch, "best_score": self.best_score}

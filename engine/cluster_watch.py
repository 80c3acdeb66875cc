"""Watching the clusters while self-labeling, and choosing which epoch's model to keep.

Self-labeling trains the model toward its own confident predictions. When a few clusters supply most of the
confident samples (as at the paper's threshold 0.99 on data outside its benchmarks), the model moves other
clusters' images into them until some clusters empty, and accuracy ends below the SCAN model it started from.
The original keeps the last epoch whatever happened. This module makes that visible and avoidable:

- every epoch, the predicted cluster sizes on the test split are compared with those of the SCAN model
  ("epoch 0"); a cluster that empties or falls below `cluster_warning_fraction` of its size is reported;
- every epoch is scored by a label-free criterion, and with `selflabel_keep: best` the stage keeps the best
  epoch whose clusters all survived, epoch 0 (the SCAN model itself) included, so the result is never worse
  on that criterion than the SCAN model.

The criterion is the SCAN loss (entropy weight 1) of the test split's cluster *assignments* on its mined
neighbours: −log(share of (image, neighbour) pairs assigned to the same cluster) − entropy of the cluster-size
distribution. Like the SCAN loss the clustering stage picks its head with, it rewards clusters that agree with
the neighbours and penalises unbalanced sizes, with no labels. It is computed on the argmax rather than on the
probabilities because self-labeling sharpens the probabilities by design: the probability-based SCAN loss
punishes every confident disagreement with a (possibly wrong) neighbour, and on the digits it rose at every
epoch, also while test accuracy rose from 0.947 to 0.983 (seed 0, per-cluster pseudo-labels), so it would
always keep the SCAN model. The assignment-based one fell with that accuracy and rose with the collapse of
the threshold rule (docs/selflabel.md).
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
    """Per-epoch cluster sizes, warnings and scores of a self-labeling run, and the best epoch so far.

    Epoch 0 is the SCAN model the run starts from: its sizes are the reference for the warnings and its
    score the bar a kept epoch must beat. `state_dict()` goes into the resumable checkpoint.
    """

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
        """Record one epoch (0 = the SCAN model) and return its record; 'improved' says whether it is the new best.

        An epoch with an emptied or shrunken cluster is never kept, however good its score.
        """
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

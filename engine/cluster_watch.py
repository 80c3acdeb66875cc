"""Watching the clusters while self-labeling, and choosing which epoch's model to keep (docs/selflabel.md).

Self-labeling can move images of the less confident clusters into the confident ones until some empty, and the
original keeps the last epoch whatever happened. Here every epoch's test cluster sizes are compared with the SCAN
model's ("epoch 0") and shrunken clusters reported; with `selflabel_keep: best` the stage keeps the last epoch whose
clusters all survived and whose strong views (train split) land in their weak view's cluster at least as often as
in epoch 1 (epoch 0 if none): a run drifting into a few clusters loses that agreement before a cluster shrinks
below the warning. Not the epoch that agrees best with the mined neighbours (the assignment SCAN loss, still
logged): self-labeling exists to correct the neighbours' mistakes, so on a weak pretext model that agreement falls
while accuracy rises, and that rule kept the SCAN model (docs/selflabel.md).
"""

from __future__ import annotations

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
    """Per-epoch cluster sizes, warnings and scores of a self-labeling run, and the epoch to keep so far; epoch 0,
    the SCAN model, gives the reference sizes. `state_dict()` goes into the checkpoint."""

    def __init__(self, warning_fraction: float, state: dict | None = None) -> None:
        self.warning_fraction = warning_fraction
        state = state or {}
        self.history: list[dict] = list(state.get("history", []))
        self.best_epoch: int | None = state.get("best_epoch")
        self.first_agreement: float | None = state.get("first_agreement")  # epoch 1's, the bar for later epochs

    @property
    def sizes_after_scan(self) -> list[int]:
        return self.history[0]["cluster_sizes"]

    def observe(
        self, epoch: int, head_output: dict, neighbors: torch.Tensor | None, extra: dict, agreement: float | None = None
    ) -> dict:
        """Record one epoch (0 = the SCAN model); 'improved': the new epoch to keep, with no emptied or shrunken
        cluster and its training's weak/strong `agreement` at least epoch 1's (if known; kept out of the record, as a
        mid-epoch resume counts only the batches since). The score (with `neighbors`) is for the log only."""
        num_clusters = head_output["probabilities"].shape[1]
        sizes = cluster_sizes(head_output["predictions"], num_clusters)
        warnings = [] if epoch == 0 else shrunken_clusters(sizes, self.sizes_after_scan, self.warning_fraction)
        score = None
        if neighbors is not None:
            criterion = assignment_scan_loss(head_output["predictions"], neighbors, num_clusters)
            score = criterion.pop("score")
            extra = {**extra, **criterion}
        record = {"epoch": epoch, "cluster_sizes": sizes, "warnings": warnings, "score": score, **extra}
        self.history.append(record)
        self.first_agreement = agreement if epoch == 1 else self.first_agreement
        improved = not warnings and (None in (agreement, self.first_agreement) or agreement >= self.first_agreement)
        self.best_epoch = epoch if improved else self.best_epoch
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
        rule = "no emptied or shrunken cluster and a weak/strong agreement at least epoch 1's"
        if self.best_epoch == self.history[-1]["epoch"]:
            return f"epoch {self.best_epoch}, the last one, has {rule}"
        scan = ": kept the SCAN head" if self.best_epoch == 0 else ""
        return f"epoch {self.best_epoch} is the last with {rule} (no later epoch has){scan}"

    def state_dict(self) -> dict:
        return {"history": self.history, "best_epoch": self.best_epoch, "first_agreement": self.first_agreement}

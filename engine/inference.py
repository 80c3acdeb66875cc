"""One pass of a model over evaluation batches: the one loop behind the kNN monitor, neighbour mining, head
selection, the self-label watch and eval.py, on images or on cached backbone features."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from utils.distributed import batch_indices, broadcast_from_main, concat_indices, gather_in_order, is_main_process
from utils.progress import tqdm


@dataclass
class Outputs:
    """Every row of one pass, in dataset order, on the CPU in float32 (targets and neighbours int64)."""

    targets: torch.Tensor  # [N], −1 without labels
    logits: list[torch.Tensor]  # one [N, C] per cluster head; empty for a feature model
    features: torch.Tensor | None = None  # a feature model's output, or the backbone features ('return_all')
    backbone: torch.Tensor | None = None  # what model.backbone output, when asked for (`backbone_features`)
    neighbors: torch.Tensor | None = None  # [N, k+1], when the batches carry 'possible_neighbors'

    def head(self, index: int) -> dict:
        """One head as metrics, reports and the self-label watch read it: 'predictions' (argmax of the logits, not
        of the rounded probabilities), 'probabilities' (float32 softmax), 'targets' (and 'neighbors')."""
        logits = self.logits[index]
        output = {"predictions": logits.argmax(dim=1), "probabilities": F.softmax(logits, dim=1)}
        output["targets"] = self.targets
        if self.neighbors is not None:
            output["neighbors"] = self.neighbors
        return output

    def heads(self) -> list[dict]:
        return [self.head(index) for index in range(len(self.logits))]


@torch.no_grad()
def run_model(
    model: torch.nn.Module,
    batches,
    device: torch.device | str,
    forward_pass: str | None = None,
    backbone_features: bool = False,
    desc: str = "inference",
) -> Outputs:
    """Run `model` in eval mode over `batches` (images under 'anchor' or 'image') and collect its outputs.

    `forward_pass` as ClusteringModel's (None: `model(x)`); `backbone_features` also keeps `model.backbone`'s
    output of the same pass. Outputs go to the CPU batch by batch in float32, so mixed precision predicts as
    float32 code does and large splits never pile up on the device. Under torchrun a collective: each process
    runs its shard with the main process's weights, and all get every row in dataset order.
    """
    model.eval()
    broadcast_from_main(model)
    rows: dict[str, list[torch.Tensor]] = {}
    indices = []

    def keep(key: str, value: torch.Tensor) -> None:
        rows.setdefault(key, []).append(value.cpu())

    hook = None
    if backbone_features:
        hook = model.backbone.register_forward_hook(lambda module, inputs, output: keep("backbone", output.float()))
    try:
        for batch in tqdm(batches, desc=desc, leave=False, disable=not is_main_process()):
            images = batch["anchor" if "anchor" in batch else "image"].to(device, non_blocking=True)
            output = model(images) if forward_pass is None else model(images, forward_pass=forward_pass)
            features, logits = (output["features"], output["output"]) if isinstance(output, dict) else (None, output)
            if torch.is_tensor(logits):  # a feature model
                features, logits = logits, []
            if features is not None:
                keep("features", features.float())
            for head, head_logits in enumerate(logits):
                keep(f"logits/{head}", head_logits.float())
            keep("targets", torch.as_tensor(batch["target"]).long())
            if "possible_neighbors" in batch:
                keep("neighbors", batch["possible_neighbors"].long())
            indices.append(batch_indices(batch))
    finally:
        if hook is not None:
            hook.remove()
    if "neighbors" in rows and len(rows["neighbors"]) != len(rows["targets"]):
        raise ValueError("run_model: some batches carry 'possible_neighbors' and others do not.")
    gathered = gather_in_order({key: torch.cat(value) for key, value in rows.items()}, concat_indices(indices))
    if "targets" not in gathered:
        raise ValueError("run_model: the batches held no sample.")
    num_heads = sum(key.startswith("logits/") for key in gathered)
    return Outputs(
        targets=gathered["targets"],
        logits=[gathered[f"logits/{head}"] for head in range(num_heads)],
        features=gathered.get("features"),
        backbone=gathered.get("backbone"),
        neighbors=gathered.get("neighbors"),
    )

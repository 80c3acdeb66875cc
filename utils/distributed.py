"""Collective operations the stages need under torchrun, each a no-op in a single process.

SimCLR's loss contrasts every anchor with the whole batch, so under DistributedDataParallel the
features of all processes are gathered *with gradients* (`torch.distributed.nn.all_gather`): the
loss each process computes is then the single-process loss on the global batch, instead of one
that only sees a 1/world_size slice of the negatives.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` of every process along dim 0 (rank order); gradients flow back to each owner.

    Every process then computes the same loss on the global batch. The backward of the gather sums each
    process's gradient onto the features it owns, and DDP averages over processes, so the parameter
    gradient equals the single-process gradient on the concatenated batch.
    """
    if not is_distributed():
        return tensor
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor), dim=0)

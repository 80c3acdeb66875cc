"""Collective operations the stages need under torchrun, each a no-op in a single process."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` of every process along dim 0 (rank order), with gradients flowing back to each owner:
    SimCLR's loss on the global batch then has the single-process gradient, not 1/world_size of the negatives."""
    if not is_distributed():
        return tensor
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor), dim=0)


# Sharded evaluation ---------------------------------------------------------------------------------------------
# Under torchrun every process does a share of the evaluation work (features, predictions, the kNN monitor,
# neighbour mining) and the results are gathered in dataset order on every process. The work is split into whole
# blocks of the single-process computation (a batch, a chunk of query rows), so each block is the same call on
# the same rows as in one process: on a CPU the gathered results are then bit-identical to one process's.
# (A matrix product's rows are not: the same row can round differently in a product with more or fewer rows.)

ELEMENTS_PER_GATHER = 2**26  # elements of one tensor sent by one process per all_gather (256 MB in float32)


def is_main_process() -> bool:
    """True in the process that writes files: rank 0, or the only process."""
    return not is_distributed() or dist.get_rank() == 0


def shard_range(num_items: int, block: int, rank: int | None = None, world_size: int | None = None) -> range:
    """This process's share of `num_items` items processed `block` at a time: a contiguous run of whole blocks
    (possibly none), dealt as evenly as their number allows; rank and world size default to the process group's."""
    if rank is None or world_size is None:
        rank, world_size = (dist.get_rank(), dist.get_world_size()) if is_distributed() else (0, 1)
    blocks = -(-num_items // block)
    first, last = rank * blocks // world_size, (rank + 1) * blocks // world_size
    return range(min(first * block, num_items), min(last * block, num_items))


def _collective_device() -> torch.device:
    """Where tensors must be for a collective: the GPU for NCCL, the CPU for gloo."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


@torch.no_grad()
def broadcast_from_main(module: torch.nn.Module) -> None:
    """Give every process the main process's parameters and buffers (in place) before a sharded evaluation: without
    SyncBatchNorm (CPU) each process's BatchNorm statistics differ, and the main process's model is the one saved."""
    if not is_distributed():
        return
    device = _collective_device()
    for tensor in module.state_dict().values():
        sent = tensor.to(device).contiguous()  # channels_last weights are sent as a contiguous copy
        dist.broadcast(sent, src=0)
        if sent is not tensor:
            tensor.copy_(sent)


def _all_gather_rows(local: torch.Tensor, counts: list[int]) -> list[torch.Tensor]:
    """Every process's `local` rows (counts[rank] of them), in rank order, on `local`'s device. Shards differ in size,
    so each is padded to the largest; large tensors go in slices of ELEMENTS_PER_GATHER."""
    device, most = _collective_device(), max(counts)
    step = max(1, ELEMENTS_PER_GATHER // max(1, math.prod(local.shape[1:])))  # the same on every process
    pieces: list[list[torch.Tensor]] = [[] for _ in counts]
    for start in range(0, most, step):
        stop = min(start + step, most)
        sent = torch.zeros((stop - start, *local.shape[1:]), dtype=local.dtype, device=device)
        mine = local[start:stop]
        sent[: len(mine)] = mine.to(device)
        received = [torch.empty_like(sent) for _ in counts]
        dist.all_gather(received, sent)
        for rank, part in enumerate(received):
            pieces[rank].append(part[: max(0, min(stop, counts[rank]) - start)].to(local.device))
    return [torch.cat(rank_pieces) if rank_pieces else local[:0] for rank_pieces in pieces]


def batch_indices(batch: dict) -> torch.Tensor | None:
    """The dataset indices of a batch's samples: 'index' (wrapped datasets, the batched backend) or the image
    datasets' meta['index']; None when the batch does not say."""
    if "index" in batch:
        return torch.as_tensor(batch["index"]).long().cpu()
    if "meta" in batch and "index" in batch["meta"]:
        return torch.as_tensor(batch["meta"]["index"]).long().cpu()
    return None


def concat_indices(indices: list[torch.Tensor | None]) -> torch.Tensor | None:
    """All batches' indices in one tensor (empty for a process without batches), None if a batch had none."""
    if any(index is None for index in indices):
        return None
    return torch.cat(indices) if indices else torch.empty(0, dtype=torch.long)


def gather_in_order(rows: dict[str, torch.Tensor], indices: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Every process's `rows` (row i belongs to dataset item `indices[i]`) in dataset order, on every process; the
    identity in one process. A process without rows passes `{}`; the indices must cover 0..N-1 exactly once."""
    if not is_distributed():
        return rows
    if indices is None:
        raise ValueError(
            "Sharded evaluation needs each batch's dataset indices ('index'), and these batches have none."
        )
    shapes = {key: (tuple(value.shape[1:]), value.dtype) for key, value in rows.items()}
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, (len(indices), shapes))
    counts = [count for count, _ in everyone]
    shapes = next((shape for count, shape in everyone if count), shapes)
    indices = torch.cat(_all_gather_rows(indices.long().cpu(), counts))
    order = indices.argsort()
    if not torch.equal(indices[order], torch.arange(len(indices))):
        raise RuntimeError(f"The processes' shards do not cover the {len(indices)} items exactly once.")
    gathered = {}
    for key, (shape, dtype) in shapes.items():
        local = rows[key] if key in rows else torch.empty((0, *shape), dtype=dtype)
        gathered[key] = torch.cat(_all_gather_rows(local, counts))[order.to(local.device)]
    return gathered


def sum_over_processes(value: int) -> int:
    """The sum of an integer over all processes (a collective under torchrun; the value itself in one process)."""
    if not is_distributed():
        return value
    total = torch.tensor([value], dtype=torch.int64, device=_collective_device())
    dist.all_reduce(total)
    return int(total.item())

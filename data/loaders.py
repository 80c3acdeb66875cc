"""DataLoaders with the original's settings: train shuffles and drops the last partial batch."""

from __future__ import annotations

import warnings

from torch.utils.data import DataLoader, DistributedSampler

from utils.runtime import Runtime


def train_loader(dataset, batch_size: int, num_workers: int, runtime: Runtime) -> DataLoader:
    """Shuffled loader that drops the last partial batch.

    With fewer samples than one (per-process) batch, dropping it would run zero steps, so
    the batch is capped at the dataset size with a warning.
    """
    per_process = max(1, len(dataset) // runtime.world_size)
    if per_process < batch_size:
        warnings.warn(
            f"batch_size {batch_size} is larger than the {per_process} training samples per process; "
            f"using batch_size {per_process} so that every epoch runs at least one step.",
            stacklevel=2,
        )
        batch_size = per_process
    sampler = DistributedSampler(dataset, shuffle=True, drop_last=True) if runtime.distributed else None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=runtime.device.type == "cuda",
        drop_last=True,
        persistent_workers=num_workers > 0,
    )


def eval_loader(dataset, batch_size: int, num_workers: int, runtime: Runtime) -> DataLoader:
    """In-order loader over every sample (each process sees the whole split)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=runtime.device.type == "cuda",
        drop_last=False,
    )


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Reshuffle differently each epoch under DistributedSampler."""
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)

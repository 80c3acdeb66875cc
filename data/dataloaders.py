"""DataLoaders with the original's settings: train shuffles and drops the last partial batch."""

from __future__ import annotations

import signal
import warnings

from torch.utils.data import DataLoader, DistributedSampler

from utils.distributed import shard_range
from utils.runtime import Runtime


def ignore_stop_signals(worker_id: int) -> None:
    """Workers leave Ctrl-C / SIGTERM to the main process, which stops cleanly between steps and then
    shuts them down; a worker killed by the signal would instead crash the batch being loaded."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def capped_batch_size(num_samples: int, batch_size: int, world_size: int) -> int:
    """`batch_size`, or with fewer training samples per process than that, their number (with a warning): a
    loader that drops the last partial batch would otherwise run no step at all. Every training loader uses it."""
    per_process = max(1, num_samples // world_size)
    if per_process >= batch_size:
        return batch_size
    warnings.warn(
        f"batch_size {batch_size} is larger than the {per_process} training samples per process; "
        f"using batch_size {per_process} so that every epoch runs at least one step.",
        stacklevel=3,
    )
    return per_process


def train_loader(dataset, batch_size: int, num_workers: int, runtime: Runtime, collate_fn=None) -> DataLoader:
    """Shuffled loader that drops the last partial batch (batch capped: capped_batch_size). Workers start anew
    each epoch, as in the original, seeded from torch's generator, whose state checkpoints save: a resumed run
    repeats an epoch's augmentations exactly."""
    batch_size = capped_batch_size(len(dataset), batch_size, runtime.world_size)
    sampler = DistributedSampler(dataset, shuffle=True, drop_last=True) if runtime.distributed else None
    return _loader(dataset, batch_size, num_workers, runtime, collate_fn, sampler, train=True)


def eval_loader(dataset, batch_size: int, num_workers: int, runtime: Runtime, collate_fn=None) -> DataLoader:
    """In-order loader over every sample; under torchrun over this process's shard, a run of whole batches, so
    the shards engine/inference.run_model gathers equal one process's results."""
    shard = shard_range(len(dataset), batch_size, runtime.rank, runtime.world_size) if runtime.distributed else None
    return _loader(dataset, batch_size, num_workers, runtime, collate_fn, shard, train=False)


def _loader(dataset, batch_size: int, num_workers: int, runtime: Runtime, collate_fn, sampler, train: bool):
    """The DataLoader both share: training shuffles (without a sampler) and drops the last partial batch."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=runtime.device.type == "cuda",
        drop_last=train,
        worker_init_fn=ignore_stop_signals,
        collate_fn=collate_fn,
    )


def set_epoch(loader, epoch: int) -> None:
    """Reshuffle differently each epoch: under DistributedSampler, or through the loader's own set_epoch."""
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    elif isinstance(getattr(loader, "sampler", None), DistributedSampler):
        loader.sampler.set_epoch(epoch)

"""Where and how a run executes: device, distributed init, seeding, autocast.

One code path serves a laptop CPU, one GPU and `torchrun` (DistributedDataParallel):
stages call these helpers instead of touching CUDA or torch.distributed directly.
"""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only the main process writes files and prints summaries."""
        return self.rank == 0


def init_runtime() -> Runtime:
    """CUDA when present, else CPU; joins the process group when launched by torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        torch.backends.cudnn.benchmark = True
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Runtime(device=device, rank=rank, world_size=world_size, local_rank=local_rank)


def seed_everything(seed: int | None, rank: int = 0) -> None:
    """Seed python, numpy and torch (offset by rank so processes draw different augmentations)."""
    if seed is None:
        return
    seed = seed + rank
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def wrap_model(model: torch.nn.Module, runtime: Runtime) -> torch.nn.Module:
    """Move to the device; wrap in DDP when distributed (BatchNorm synced across GPUs)."""
    model = model.to(runtime.device)
    if runtime.distributed:
        if runtime.device.type == "cuda":  # SyncBatchNorm has no CPU implementation
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        device_ids = [runtime.local_rank] if runtime.device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    return model


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model behind a DDP wrapper, whose state dict has no `module.` prefix."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def autocast(runtime: Runtime, enabled: bool):
    """bfloat16 autocast when `amp` is on (no loss scaling needed); a no-op otherwise."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=runtime.device.type, dtype=torch.bfloat16)


def barrier(runtime: Runtime) -> None:
    """Wait for all processes (e.g. while the main one writes a file the others will read)."""
    if runtime.distributed:
        dist.barrier()

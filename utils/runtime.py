"""Where and how a run executes (device, distributed init, seeding, autocast): one code path for a CPU, one GPU
and `torchrun`, as the stages call these instead of CUDA or torch.distributed."""

from __future__ import annotations

import contextlib
import os
import random
import re
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
    channels_last: bool = False  # model and image batches in NHWC memory format (config `channels_last`)
    compile: bool = False  # torch.compile the model (config `compile`)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only the main process writes files and prints summaries."""
        return self.rank == 0


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: 'gpu[03-05,09],cpu1' -> 'gpu03' (zero padding kept)."""
    prefix, ranges = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist).groups()
    return prefix if ranges is None else prefix + ranges.split(",")[0].split("-")[0]


def adopt_slurm_environment(environ: dict = os.environ) -> None:
    """Under `srun python simclr.py ...` (one task per GPU) take rank and world from SLURM; torchrun's variables
    win when present. The rendezvous is the job's first node on MASTER_PORT (default 29500), as torchrun's."""
    if "RANK" in environ or "SLURM_PROCID" not in environ or int(environ.get("SLURM_NTASKS", "1")) < 2:
        return
    environ["RANK"] = environ["SLURM_PROCID"]
    environ["WORLD_SIZE"] = environ["SLURM_NTASKS"]
    environ["LOCAL_RANK"] = environ.get("SLURM_LOCALID", "0")
    environ.setdefault("MASTER_ADDR", first_host(environ.get("SLURM_JOB_NODELIST", environ.get("SLURM_NODELIST", ""))))
    environ.setdefault("MASTER_PORT", "29500")


def init_runtime() -> Runtime:
    """CUDA when present, else CPU; joins the process group when launched by torchrun or srun."""
    adopt_slurm_environment()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", gpu_of(local_rank, torch.cuda.device_count()))
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":  # NCCL bound to this GPU from the start: no collective has to guess it
            dist.init_process_group(backend="nccl", device_id=device)
        else:
            dist.init_process_group(backend="gloo")
    return Runtime(device=device, rank=rank, world_size=world_size, local_rank=local_rank)


def gpu_of(local_rank: int, device_count: int) -> int:
    """The GPU of this local rank, modulo the visible count: under srun with one GPU per task each process sees
    only its own, as cuda:0; with more processes than GPUs they share them."""
    return local_rank % device_count


def resolve_fast_path(cfg: dict, runtime: Runtime) -> None:
    """Turn the config's ``auto`` speed settings into what this run does, in ``cfg`` (the log shows it) and
    ``runtime``: on CUDA amp, channels_last and the batched backend (pil for a library model's own preprocessing);
    on a CPU none (bf16 autocast is slow there, and the batched backend gains little: docs/speed.md)."""
    from utils.config import ConfigError
    from utils.library_names import is_library_backbone

    cuda = runtime.device.type == "cuda"
    for key in ("amp", "channels_last"):
        if cfg[key] == "auto":
            cfg[key] = cuda

    # A torchvision/timm model's preprocessing (data/library_preprocessing.py) exists only as PIL transforms.
    library_preprocessing = is_library_backbone(cfg["backbone"]) and not cfg["transformation_kwargs"]
    if cfg["augmentation_backend"] == "auto":
        cfg["augmentation_backend"] = "batched" if cuda and not library_preprocessing else "pil"
    elif cfg["augmentation_backend"] == "batched" and library_preprocessing:
        raise ConfigError(
            f"{cfg['backbone']} uses its library's preprocessing, which runs on the pil backend only: set "
            "augmentation_backend: pil (or auto), or give transformation_kwargs (crop_size, normalize)."
        )
    runtime.channels_last, runtime.compile = cfg["channels_last"], cfg["compile"]


def seed_everything(seed: int | None, rank: int = 0) -> None:
    """Seed python, numpy and torch (offset by rank so processes draw different augmentations)."""
    if seed is None:
        return
    seed = seed + rank
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """This process's random generators (python, numpy, torch CPU and CUDA), in a form torch.save keeps
    and `torch.load(weights_only=True)` reads back."""
    name, key, position, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (name, key.tolist(), position, has_gauss, gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():  # this process's GPU only: under torchrun each process draws on its own
        state["cuda"] = [torch.cuda.get_rng_state()]
    return state


def set_rng_state(state: dict) -> bool:
    """Put every generator back where `rng_state()` found it (the GPU's from a one-entry list, or the current
    device's entry of an older every-GPU list); False when the saved run had a GPU and this one not, or the reverse.
    """
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    name, key, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.asarray(key, dtype=np.uint32), position, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    saved = state.get("cuda")
    if not torch.cuda.is_available() or not saved:
        return torch.cuda.is_available() == bool(saved)
    torch.cuda.set_rng_state(saved[torch.cuda.current_device() % len(saved)])
    return True


def gather_rng_states(runtime: Runtime, state: dict | None = None) -> list[dict]:
    """Every process's generator state (`state`, default the current one), in rank order (a collective)."""
    state = rng_state() if state is None else state
    if not runtime.distributed:
        return [state]
    states: list = [None] * runtime.world_size
    dist.all_gather_object(states, state)
    return states


def restore_rng_states(states: list[dict], runtime: Runtime) -> None:
    """Take this rank's state from `gather_rng_states`' list (with a note when the process count changed, or
    when the checkpoint was written on a CPU and this run has a GPU, or the reverse)."""
    same_gpu_streams = set_rng_state(states[runtime.rank % len(states)])
    if runtime.is_main and (len(states) != runtime.world_size or not same_gpu_streams):
        where = "on a GPU" if torch.cuda.is_available() else "on the CPU"
        written = f"{len(states)} process(es)" + ("" if same_gpu_streams else f" not {where}")
        print(
            f"Note: the checkpoint was written by {written}, this run has {runtime.world_size} {where}: "
            "random streams (augmentations, shuffling) differ from an uninterrupted run.",
            flush=True,
        )


def any_process(flag: bool, runtime: Runtime) -> bool:
    """True on every process when `flag` is true on any (so that all stop at the same step)."""
    if not runtime.distributed:
        return flag
    value = torch.tensor([float(flag)], device=runtime.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def from_main(value: object, runtime: Runtime) -> object:
    """The main process's `value` on every process (a decision the others follow)."""
    if not runtime.distributed:
        return value
    shared = [value]
    dist.broadcast_object_list(shared, src=0)
    return shared[0]


def wrap_model(model: torch.nn.Module, runtime: Runtime) -> torch.nn.Module:
    """Move to the device (channels_last when asked); wrap in DDP when distributed (BatchNorm synced across GPUs);
    compile when asked."""
    model = model.to(runtime.device)
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if runtime.distributed:
        if runtime.device.type == "cuda":  # SyncBatchNorm has no CPU implementation
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    if runtime.compile:
        model = torch.compile(model)
    return model


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model behind torch.compile and DDP wrappers, whose state dict has no `_orig_mod.` / `module.` prefix."""
    model = getattr(model, "_orig_mod", model)  # torch.compile's OptimizedModule
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def main_process_speaks(runtime: Runtime):
    """A block every process runs under torchrun (loading and checking the model file, reading the cluster names,
    so an error stops them all) whose printed lines the main process alone shows, once, not once per process."""
    return contextlib.nullcontext() if runtime.is_main else contextlib.redirect_stdout(None)


def autocast(runtime: Runtime, enabled: bool):
    """bfloat16 autocast when `amp` is on (no loss scaling needed); a no-op otherwise."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=runtime.device.type, dtype=torch.bfloat16)


def leave_process_group() -> None:
    """Under torchrun, wait for every process, then leave the process group: one that exited while the main one
    still wrote tore gloo down under it, and torchrun reported the run as failed."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier(runtime: Runtime) -> None:
    """Wait for all processes (e.g. while the main one writes a file the others will read)."""
    if runtime.distributed:
        dist.barrier()

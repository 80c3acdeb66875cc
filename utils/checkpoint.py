"""Saving and loading checkpoints safely: atomic saves that refuse non-finite weights, `weights_only` loads."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import numpy as np
import torch

from utils.errors import UserError
from utils.files import atomic_write

# The published SCAN checkpoints (torch 1.4, numpy 1) store the best head as a numpy.int64,
# pickled as `numpy.core.multiarray.scalar(dtype, bytes)`. Allow exactly that reconstruction
# (and numpy 2's name for it) plus the dtype objects it needs; nothing else is unpickled.
_NUMPY_SCALAR = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
_SAFE_GLOBALS = [(_NUMPY_SCALAR, "numpy.core.multiarray.scalar"), (_NUMPY_SCALAR, "numpy._core.multiarray.scalar")]
_SAFE_GLOBALS += [np.dtype, type(np.dtype(np.int64)), type(np.dtype(np.int32))]


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that is missing, unreadable, or does not fit the model described by the config."""


class NonFiniteError(UserError, RuntimeError):
    """Training diverged (NaN or infinite loss or weights); nothing good on disk was replaced."""


def non_finite_tensors(obj: object, prefix: str = "") -> list[str]:
    """Names of the floating-point tensors inside `obj` (nested dicts / lists) holding NaN or infinity."""
    if isinstance(obj, torch.Tensor):
        return [prefix or "tensor"] if obj.is_floating_point() and not bool(torch.isfinite(obj).all()) else []
    if isinstance(obj, dict):
        return [name for key, value in obj.items() for name in non_finite_tensors(value, f"{prefix}{key}.")]
    if isinstance(obj, (list, tuple)):
        return [name for i, value in enumerate(obj) for name in non_finite_tensors(value, f"{prefix}{i}.")]
    return []


def save_atomic(obj: object, path: str | Path) -> None:
    """torch.save to a temporary file, fsync, rename over `path`; refuses NaN or infinite weights, so that a
    diverged run never replaces the last good file."""
    bad = non_finite_tensors(obj)
    if bad:
        raise NonFiniteError(
            f"Not saving {path}: {len(bad)} tensor(s) hold NaN or infinite values ({', '.join(bad[:5]).rstrip('.')}"
            f"{', ...' if len(bad) > 5 else ''}); training diverged. The file on disk is unchanged. {DIVERGENCE_HINT}"
        )
    with atomic_write(path, "wb") as file:
        torch.save(obj, file)


DIVERGENCE_HINT = (
    "Usual causes: a learning rate too high (lower optimizer_kwargs.lr), mixed precision (try amp=false), "
    "or broken input images. Rerunning resumes from the last good checkpoint."
)


def _unreadable(path: Path, error: Exception) -> CheckpointError:
    """Say what is wrong with an unreadable file in the user's terms, not the unpickler's."""
    text = str(error)
    if "GLOBAL" in text:
        blocked = next(line.strip() for line in text.splitlines() if "GLOBAL" in line)
        return CheckpointError(
            f"Refused to load {path}: it holds pickled Python objects, which could run code when loaded "
            f"({blocked}). Only plain weight files are read: use a checkpoint written by these scripts or a "
            f"published model-zoo file."
        )
    if isinstance(error, (EOFError, RuntimeError)) or "zip archive" in text:
        return CheckpointError(
            f"Could not read checkpoint {path}: the file is truncated or corrupt ({type(error).__name__}: "
            f"{text.split('. ')[0] if text else 'unexpected end of file'}). If it is a stage's checkpoint.pth.tar, "
            f"start that stage over with --fresh (moves the folder aside) or --set resume=false."
        )
    return CheckpointError(
        f"Could not read checkpoint {path}: it is not a PyTorch checkpoint ({type(error).__name__}). "
        f"Check that the path names a model file written by these scripts or the published model zoo."
    )


def load_checkpoint(path: str | Path, missing_hint: str = "") -> object:
    """Load a checkpoint on the CPU without executing pickled code (zip and legacy files, CUDA tensors included)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint not found: {path}. {missing_hint}".strip())
    with torch.serialization.safe_globals(_SAFE_GLOBALS), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol")  # a note on files we refuse anyway
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, OSError, AttributeError) as error:
            raise _unreadable(path, error) from error


def strip_module_prefix(state_dict: dict) -> dict:
    """Drop the `module.` prefix that DataParallel / DistributedDataParallel add to every key."""
    if state_dict and all(key.startswith("module.") for key in state_dict):
        return {key[len("module.") :]: value for key, value in state_dict.items()}
    return state_dict


def load_state_dict_checked(
    model: torch.nn.Module,
    state_dict: dict,
    allowed_unused: tuple[str, ...] = (),
    allowed_missing: tuple[str, ...] = (),
    source: str = "checkpoint",
) -> None:
    """Load weights, failing with the full list of missing / unexpected / mis-shaped keys; `allowed_unused` and
    `allowed_missing` are key prefixes the file may hold unused or lack (a pretext model seeds no cluster head)."""
    state_dict = strip_module_prefix(dict(state_dict))
    expected = model.state_dict()
    missing = [key for key in expected if key not in state_dict and not key.startswith(allowed_missing)]
    unexpected = [key for key in state_dict if key not in expected and not key.startswith(allowed_unused)]
    mis_shaped = [
        f"{key}: file {tuple(state_dict[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in expected
        if key in state_dict
        and hasattr(state_dict[key], "shape")
        and tuple(state_dict[key].shape) != tuple(expected[key].shape)
    ]
    if missing or unexpected or mis_shaped:

        def listing(keys: list[str]) -> str:
            return ", ".join(keys[:20]) + (f", ... ({len(keys)} in all)" if len(keys) > 20 else "") if keys else "none"

        raise CheckpointError(
            f"The {source} does not fit the model built from the config "
            f"(check backbone, backbone_kwargs, num_classes and num_heads).\n"
            f"  missing keys: {listing(missing)}\n  unexpected keys: {listing(unexpected)}\n"
            f"  shape mismatches: {listing(mis_shaped)}"
        )
    model.load_state_dict({key: state_dict[key] for key in expected if key in state_dict}, strict=not allowed_missing)


def training_checkpoint(record: dict | None, model: torch.nn.Module, optimizer: torch.optim.Optimizer, **state) -> dict:
    """What `checkpoint.pth.tar` holds: weights, optimizer state, the run's record (engine/run_record.py) and
    `state` (epoch, step, RNG states, stage extras such as SCAN's best loss)."""
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "record": record, **state}


def load_resumable(path: str | Path) -> dict:
    """A stage's checkpoint.pth.tar, or a clear error for any other file."""
    checkpoint = load_checkpoint(path)
    if not isinstance(checkpoint, dict) or not {"model", "optimizer", "epoch"} <= checkpoint.keys():
        raise CheckpointError(
            f"{path} is not a resumable checkpoint (a dict with 'model', 'optimizer' and 'epoch'). "
            f"Start over with --fresh or --set resume=false."
        )
    return checkpoint


def resume(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, verbose: bool = True) -> dict:
    """Restore model and optimizer from a resumable `checkpoint.pth.tar`; returns it ('epoch': the next to run,
    'step': steps of it done, RNG states, stage extras). Whether to resume is engine/run_record.py's decision."""
    checkpoint = load_resumable(path)
    load_state_dict_checked(model, checkpoint["model"], source=f"checkpoint {path}")
    try:
        optimizer.load_state_dict(checkpoint["optimizer"])
    except (ValueError, KeyError) as error:
        raise CheckpointError(
            f"The optimizer state in {path} does not fit this run's optimizer ({error}). "
            f"Start over with --fresh or --set resume=false."
        ) from error
    if verbose:
        where = f"epoch {checkpoint['epoch']}" + (f", step {checkpoint['step']}" if checkpoint.get("step") else "")
        print(f"Resuming from {path} at {where}", flush=True)
    return checkpoint

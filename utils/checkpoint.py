"""Saving and loading checkpoints safely.

Saves are atomic (temporary file + rename), so an interrupted run never leaves a
truncated model behind. Loads use `weights_only=True` (no arbitrary pickled code),
with the one numpy scalar type the published SCAN files contain allow-listed.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch

# The published SCAN checkpoints (torch 1.4, numpy 1) store the best head as a numpy.int64,
# pickled as `numpy.core.multiarray.scalar(dtype, bytes)`. Allow exactly that reconstruction
# (and numpy 2's name for it) plus the dtype objects it needs; nothing else is unpickled.
_NUMPY_SCALAR = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
_SAFE_GLOBALS = [
    (_NUMPY_SCALAR, "numpy.core.multiarray.scalar"),
    (_NUMPY_SCALAR, "numpy._core.multiarray.scalar"),
    np.dtype,
    type(np.dtype(np.int64)),
    type(np.dtype(np.int32)),
]


class CheckpointError(RuntimeError):
    """A checkpoint that is missing or does not fit the model described by the config."""


def save_atomic(obj: object, path: str | Path) -> None:
    """torch.save to a temporary file in the same folder, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(obj, file)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_checkpoint(path: str | Path, missing_hint: str = "") -> object:
    """Load a checkpoint on the CPU without executing pickled code.

    Works for zip and legacy (torch ≤ 1.5) files, CUDA-saved tensors included.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint not found: {path}. {missing_hint}".strip())
    with torch.serialization.safe_globals(_SAFE_GLOBALS):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises several types for unreadable files
            raise CheckpointError(f"Could not read checkpoint {path}: {error}") from error


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
    """Load weights, failing with the full list of missing / unexpected / mis-shaped keys.

    `allowed_unused` lists key prefixes that may be present in the file but unused by the
    model, and `allowed_missing` those the model keeps at their initial values: a pretext
    model seeds a clustering model's backbone, not its cluster heads.
    """
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


def resume(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, verbose: bool = True) -> dict:
    """Restore model and optimizer from a resumable `checkpoint.pth.tar` if it exists.

    Returns the checkpoint (its 'epoch' is the next epoch to run, plus any stage extras),
    or {'epoch': 0} when there is nothing to resume.
    """
    if not Path(path).is_file():
        return {"epoch": 0}
    checkpoint = load_checkpoint(path)
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    if verbose:
        print(f"Resuming from {path} at epoch {checkpoint['epoch']}", flush=True)
    return checkpoint

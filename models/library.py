"""Image models of torchvision and timm as SCAN backbones: `backbone: torchvision:<name>` or `timm:<name>`.

A backbone pretrained on millions of images gives far better neighbours than a SimCLR run on a small
dataset, so most users should start from one. The model keeps the library's own module names, so the
library's published weights load unchanged, and only loses its classifier: it returns the pooled features
the classifier would have seen, and `out_dim` is their width.

timm is optional (requirements-extra.txt): it is imported only when a config names a `timm:` backbone.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn
import torchvision

from utils.checkpoint import CheckpointError, load_checkpoint, load_state_dict_checked
from utils.config import ConfigError

LIBRARIES = ("torchvision", "timm")


class PretrainedWeightsError(CheckpointError):
    """Weights that cannot be found, fetched or loaded; the message says where to put the file."""


def is_library_backbone(name: str) -> bool:
    """True for `torchvision:<name>` and `timm:<name>`, the backbones this module builds."""
    library, sep, arch = str(name).partition(":")
    return bool(sep) and library in LIBRARIES and bool(arch)


def split_name(name: str) -> tuple[str, str]:
    """'timm:resnet50' → ('timm', 'resnet50'), with a clear error for anything else."""
    if not is_library_backbone(name):
        raise ValueError(
            f"Backbone '{name}' is not a library backbone: write torchvision:<model name> (e.g. torchvision:resnet50) "
            "or timm:<model name> (e.g. timm:vit_small_patch14_dinov2.lvd142m)."
        )
    library, _, arch = name.partition(":")
    return library, arch


def import_timm():
    """timm, or an error that says how to install it (it is an optional dependency)."""
    try:
        return importlib.import_module("timm")
    except ImportError as error:
        raise ConfigError(
            "This config asks for a timm backbone but timm is not installed. Install the optional extras: "
            "pip install -r requirements-extra.txt"
        ) from error


def _last_linear(model: nn.Module) -> str:
    """Name of the classifier of a torchvision model: its last nn.Linear (fc, classifier.1, heads.head, ...)."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise ValueError(
            f"{type(model).__name__} has no linear classifier to remove (e.g. SqueezeNet's is a convolution); "
            "pick another torchvision model or a timm one."
        )
    return names[-1]


def _torchvision_backbone(arch: str) -> nn.Module:
    try:
        model = torchvision.models.get_model(arch, weights=None)
    except ValueError:
        raise ValueError(
            f"torchvision has no model '{arch}'. Names: torchvision.models.list_models(), e.g. resnet50, vit_b_16."
        ) from None
    classifier = _last_linear(model)
    out_dim = model.get_submodule(classifier).in_features
    model.set_submodule(classifier, nn.Identity())
    model.out_dim = out_dim
    model.classifier_keys = (classifier + ".",)  # key prefixes of a full weights file that the backbone drops
    return model


def _timm_backbone(arch: str) -> nn.Module:
    timm = import_timm()
    if not timm.is_model(arch.split(".")[0]):
        raise ValueError(
            f"timm has no model '{arch}'. Names: timm.list_models(), e.g. resnet50, vit_small_patch16_224."
        )
    model = timm.create_model(arch, pretrained=False, num_classes=0)  # num_classes=0: pooled features, no classifier
    model.out_dim = model.num_features
    classifier = model.pretrained_cfg.get("classifier") or ()
    model.classifier_keys = tuple(f"{name}." for name in ((classifier,) if isinstance(classifier, str) else classifier))
    return model


def build_library_backbone(name: str) -> nn.Module:
    """The named torchvision / timm model without its classifier and without weights (see load_pretrained_weights)."""
    library, arch = split_name(name)
    return _torchvision_backbone(arch) if library == "torchvision" else _timm_backbone(arch)


def _state_dict_from_file(path: Path) -> dict:
    """A state dict from a .safetensors file or a torch file (bare, or under 'state_dict' / 'model')."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    checkpoint = load_checkpoint(path)
    for key in ("state_dict", "model"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
    if not isinstance(checkpoint, dict):
        raise PretrainedWeightsError(f"{path} holds no state dict.")
    return checkpoint


def _torchvision_default_state_dict(arch: str) -> dict:
    """DEFAULT weights from torch's hub cache, downloaded there first when missing and online."""
    weights = torchvision.models.get_model_weights(arch).DEFAULT
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    try:
        return weights.get_state_dict(progress=True)
    except Exception as error:  # noqa: BLE001 - offline, proxy, truncated file: all mean "the file is not there"
        raise PretrainedWeightsError(
            f"Could not get torchvision's weights for '{arch}' ({type(error).__name__}: {error}).\n"
            f"Offline? Download {weights.url} on a machine with internet and put the file at\n  {cached}\n"
            "(torch's cache; set TORCH_HOME to move it), or give its path in the config: pretrained: /path/to/file.pth"
        ) from error


def _timm_default(model: nn.Module, arch: str) -> None:
    """Let timm load its default weights (Hugging Face cache, or download when online) into `model`."""
    timm = import_timm()
    source = model.pretrained_cfg.get("hf_hub_id") or model.pretrained_cfg.get("url")
    if not source:
        raise PretrainedWeightsError(f"timm publishes no weights for '{arch}'; give a file with pretrained: PATH.")
    try:
        loaded = timm.create_model(arch, pretrained=True, num_classes=0)
    except Exception as error:  # noqa: BLE001 - offline, missing hub package, ...: all mean "no weights here"
        where = f"https://huggingface.co/{source}" if model.pretrained_cfg.get("hf_hub_id") else source
        raise PretrainedWeightsError(
            f"timm could not fetch the weights of '{arch}' ({type(error).__name__}: {error}).\n"
            f"Offline? Download them on a machine with internet ({where}: model.safetensors) and give the file in "
            "the config: pretrained: /path/to/model.safetensors, or copy the Hugging Face cache "
            "(~/.cache/huggingface, or $HF_HOME) to this machine."
        ) from error
    model.load_state_dict(loaded.state_dict())


def load_pretrained_weights(backbone: nn.Module, name: str, pretrained: str | None) -> str:
    """Load `pretrained` (a file path, or 'default' for the library's own weights) into `backbone`.

    A file may hold the full classifier model: its classifier keys are dropped, every other key must fit.
    Returns a description of where the weights came from, for the log.
    """
    library, arch = split_name(name)
    if pretrained is None:
        raise PretrainedWeightsError(
            f"Config key 'pretrained' is not set: give a weights file for {name} (pretrained: /path/to/weights) "
            "or `pretrained: default` for the library's own weights."
        )
    if pretrained == "default":
        if library == "torchvision":
            state = _torchvision_default_state_dict(arch)
        else:
            _timm_default(backbone, arch)
            return f"timm's default weights of {arch}"
        source = f"torchvision's default weights of {arch}"
    else:
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise PretrainedWeightsError(
                f"Weights file not found: {path}. Set pretrained: to an existing file, or to `default` for "
                f"{library}'s own weights (downloaded when online)."
            )
        state = _state_dict_from_file(path)
        source = str(path)
    load_state_dict_checked(backbone, state, allowed_unused=backbone.classifier_keys, source=f"weights {source}")
    return source


def _torchvision_preprocessing(arch: str):
    """The DEFAULT weights' evaluation transform (torchvision's ImageClassification preset)."""
    try:
        weights = torchvision.models.get_model_weights(arch).DEFAULT
    except (ValueError, AttributeError):
        raise ValueError(
            f"torchvision publishes no weights (hence no preprocessing) for '{arch}': set transformation_kwargs "
            "(crop_size and normalize) in the config."
        ) from None
    return weights.transforms()


def _timm_data_config(arch: str) -> dict:
    """timm's resolved data config (input_size, crop_pct, mean, std, ...) of the model's pretrained config."""
    timm = import_timm()
    from timm.data import resolve_data_config

    pretrained_cfg = timm.get_pretrained_cfg(arch)
    return resolve_data_config(pretrained_cfg=pretrained_cfg.to_dict() if pretrained_cfg else {"input_size": 224})


def library_transform(name: str) -> Callable:
    """The model's own evaluation preprocessing (resize, center crop, mean/std) from the library's metadata.

    torchvision: the DEFAULT weights' `transforms()`; timm: `resolve_data_config` + `create_transform` on the
    model's pretrained config. A local weights file is assumed to be preprocessed like the default weights.
    """
    library, arch = split_name(name)
    if library == "torchvision":
        return _torchvision_preprocessing(arch)
    data_config = _timm_data_config(arch)  # first: says how to install timm when it is missing
    from timm.data import create_transform

    return create_transform(**data_config, is_training=False)


def library_preprocessing(name: str) -> dict:
    """The numbers behind `library_transform`: {resize, crop, mean, std} (resize: the shorter side before the crop).

    utils/new_dataset.py sizes the other stages' crops and augmentation to them, so that the strong views of
    self-labeling have the size and normalisation of what the model was trained on.
    """
    library, arch = split_name(name)
    if library == "torchvision":
        preset = _torchvision_preprocessing(arch)
        resize, crop, mean, std = preset.resize_size[0], preset.crop_size[0], preset.mean, preset.std
    else:
        data = _timm_data_config(arch)
        crop = int(data["input_size"][-1])
        resize = math.floor(crop / data["crop_pct"])  # timm's eval transform: scale_size = floor(size / crop_pct)
        mean, std = data["mean"], data["std"]
    return {"resize": int(resize), "crop": int(crop), "mean": [float(v) for v in mean], "std": [float(v) for v in std]}

"""Image models of torchvision and timm as SCAN backbones: `backbone: torchvision:<name>` or `timm:<name>`.

The model keeps the library's module names, so its published weights load unchanged, and loses only its
classifier: it returns the pooled features (`out_dim` wide). timm is optional, imported only for `timm:` names.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torchvision

from utils.checkpoint import CheckpointError, load_checkpoint, load_state_dict_checked
from utils.config import ConfigError
from utils.library_names import import_timm, split_name


class PretrainedWeightsError(CheckpointError):
    """Weights that cannot be found, fetched or loaded; the message says where to put the file."""


def _last_linear(model: nn.Module) -> str:
    """Name of the classifier of a torchvision model: its last nn.Linear (fc, classifier.1, heads.head, ...)."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise ConfigError(
            f"{type(model).__name__} has no linear classifier to remove (e.g. SqueezeNet's is a convolution); "
            "pick another torchvision model or a timm one."
        )
    return names[-1]


def _torchvision_backbone(arch: str) -> nn.Module:
    try:
        model = torchvision.models.get_model(arch, weights=None)
    except ValueError:
        raise ConfigError(
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
        raise ConfigError(
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
    """Load `pretrained` (a file path, or 'default' for the library's own weights) into `backbone`; a file's
    classifier keys are dropped, every other key must fit. Returns where the weights came from, for the log."""
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

"""A torchvision / timm model's own evaluation preprocessing (resize, center crop, mean/std), from its library.

Used by the pil val transform (data/augment.py) when a library backbone has no transformation_kwargs, and by
tools/new_dataset.py to size the other stages' crops to what the model was trained on.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torchvision

from utils.config import ConfigError
from utils.library_names import import_timm, split_name


def _torchvision_preprocessing(arch: str):
    """The DEFAULT weights' evaluation transform (torchvision's ImageClassification preset)."""
    try:
        weights = torchvision.models.get_model_weights(arch).DEFAULT
    except (ValueError, AttributeError):
        raise ConfigError(
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
    """The model's own evaluation preprocessing from the library's metadata (a local weights file is assumed to
    be preprocessed like the default weights)."""
    library, arch = split_name(name)
    if library == "torchvision":
        return _torchvision_preprocessing(arch)
    data_config = _timm_data_config(arch)  # first: says how to install timm when it is missing
    from timm.data import create_transform

    return create_transform(**data_config, is_training=False)


def library_preprocessing(name: str) -> dict:
    """The numbers behind `library_transform`: {resize, crop, mean, std} (resize: the shorter side before the crop),
    to which tools/new_dataset.py sizes self-labeling's strong views."""
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

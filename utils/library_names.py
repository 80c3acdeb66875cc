"""Backbone names of the form `torchvision:<name>` / `timm:<name>`, read the same way by every layer.

models/ builds these backbones and data/ reads their preprocessing; both parse the name here, so neither
imports the other. timm is optional (requirements-extra.txt) and imported only through `import_timm`.
"""

from __future__ import annotations

import importlib

from utils.config import ConfigError

LIBRARIES = ("torchvision", "timm")


def is_library_backbone(name: str) -> bool:
    """True for `torchvision:<name>` and `timm:<name>`, the backbones this module builds."""
    library, sep, arch = str(name).partition(":")
    return bool(sep) and library in LIBRARIES and bool(arch)


def split_name(name: str) -> tuple[str, str]:
    """'timm:resnet50' → ('timm', 'resnet50'), for a name is_library_backbone accepts."""
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

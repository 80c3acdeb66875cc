"""The keys and value types of every config block that has a fixed set of keys.

`load_config` checks a merged config against these tables, so that a typo at any depth (`optimizer_kwargs.lrr`) or a
value of the wrong type (`epochs: ten`) stops the run before it starts, with the closest valid key named: a silently
ignored key costs a whole training run. A schema maps a key to a tuple of accepted types, or to a nested schema (a
dict); which one a `*_kwargs` block follows can depend on another key (the optimizer, criterion, strategy, backbone).
"""

from __future__ import annotations

import difflib
from typing import Any

from utils.errors import UserError

NUMBER = (int, float)
INT = (int,)
BOOL = (bool,)
STR = (str,)
LIST = (list,)
OPTIONAL_INT = (int, type(None))

NORMALIZE = {"mean": LIST, "std": LIST}

AUGMENTATION_SCHEMAS: dict[str, dict] = {
    "simclr": {
        "random_resized_crop": {"size": INT, "scale": LIST, "ratio": LIST},
        "horizontal_flip": BOOL,
        "color_jitter_random_apply": {"p": NUMBER},
        "color_jitter": {"brightness": NUMBER, "contrast": NUMBER, "saturation": NUMBER, "hue": NUMBER},
        "random_grayscale": {"p": NUMBER},
        "normalize": NORMALIZE,
    },
    "ours": {
        "horizontal_flip": BOOL,
        "crop_size": INT,
        "num_strong_augs": INT,
        "normalize": NORMALIZE,
        "cutout_kwargs": {"n_holes": INT, "length": INT, "random": BOOL},
    },
}

TRANSFORMATION_SCHEMA = {"crop_size": INT, "normalize": NORMALIZE}

OPTIMIZER_SCHEMAS: dict[str, dict] = {
    "sgd": {"lr": NUMBER, "momentum": NUMBER, "weight_decay": NUMBER, "nesterov": BOOL, "dampening": NUMBER},
    "adam": {"lr": NUMBER, "weight_decay": NUMBER, "betas": LIST, "eps": NUMBER, "amsgrad": BOOL},
}

SCHEDULER_SCHEMAS: dict[str, dict] = {
    "constant": {},
    "cosine": {"lr_decay_rate": NUMBER, "warmup_epochs": INT},
    "step": {"lr_decay_rate": NUMBER, "lr_decay_epochs": LIST},
}

CRITERION_SCHEMAS: dict[str, dict] = {
    "simclr": {"temperature": NUMBER},
    "scan": {"entropy_weight": NUMBER, "target_prior": (list, type(None))},
    "confidence-cross-entropy": {"apply_class_balancing": BOOL},
}

BACKBONE_SCHEMAS: dict[str, dict] = {"resnet18": {"stem": STR, "base_width": INT}, "resnet50": {}}

# `*_kwargs` blocks whose schema another key chooses: block → (the choosing key, schema by choice).
CHOSEN_SCHEMAS = {
    "augmentation_kwargs": ("augmentation_strategy", AUGMENTATION_SCHEMAS),
    "optimizer_kwargs": ("optimizer", OPTIMIZER_SCHEMAS),
    "scheduler_kwargs": ("scheduler", SCHEDULER_SCHEMAS),
    "criterion_kwargs": ("criterion", CRITERION_SCHEMAS),
}

CONTRASTIVE_MODEL_SCHEMA = {"head": STR, "features_dim": INT}

DIGITS_SCHEMA = {"image_size": INT, "seed": INT, "test_fraction": NUMBER, "class_fraction": (dict,)}
FOLDER_SCHEMA = {
    "root": STR,
    "labeled": (bool, str),
    "image_size": OPTIONAL_INT,
    "test_fraction": (int, float, str),  # which values: check_folder_values
    "split_seed": INT,
}
BUILTIN_ARCHIVES = ("cifar-10", "cifar-20", "stl-10", "imagenet", "imagenet_50", "imagenet_100", "imagenet_200")

# Top-level keys whose default (None or REQUIRED) says nothing about their type.
TOP_LEVEL_TYPES: dict[str, tuple] = {
    "setup": STR,
    "backbone": STR,
    "num_classes": INT,
    "train_db_name": STR,
    "val_db_name": STR,
    "criterion": STR,
    "augmentation_strategy": STR,
    "seed": OPTIONAL_INT,
    "amp": (bool, str),  # true | false | auto
    "channels_last": (bool, str),  # true | false | auto
    "pretrained": (str, type(None)),
    "knn_ivf_lists": (int, str),  # a number | auto
    "num_workers": (int, str),  # a number | auto
}

# Keys that take a word: the words allowed (besides true/false where the type allows booleans).
CHOICES: dict[str, tuple[str, ...]] = {
    "amp": ("auto",),
    "channels_last": ("auto",),
    "augmentation_backend": ("pil", "batched", "auto"),
    "head_input": ("images", "cached_features"),
    "pseudo_labels": ("threshold", "per_cluster"),
    "selflabel_keep": ("last", "best"),
    "knn_index": ("exact", "ivf"),
    "knn_ivf_lists": ("auto",),
    "num_workers": ("auto",),
    "optimizer": tuple(OPTIMIZER_SCHEMAS),
    "scheduler": tuple(SCHEDULER_SCHEMAS),
    "criterion": tuple(CRITERION_SCHEMAS),
    "augmentation_strategy": tuple(AUGMENTATION_SCHEMAS),
}
LIBRARY_PREFIXES = ("torchvision:", "timm:")

# Lower bounds that a value of the right type must still respect: (minimum, what it means).
MINIMUMS: dict[str, tuple[float, str]] = {
    "num_classes": (1, "at least one cluster"),
    "num_heads": (1, "at least one head"),
    "epochs": (0, "zero or more epochs"),
    "batch_size": (1, "at least one image per batch"),
    "num_workers": (0, "zero (load in the main process) or more"),
    "num_neighbors": (1, "at least one neighbour"),
    "topk_neighbors_train": (1, "at least one neighbour"),
    "topk_neighbors_val": (1, "at least one neighbour"),
    "knn_monitor_k": (1, "at least one neighbour"),
    "knn_every": (1, "the kNN monitor every epoch at most"),
    "pseudo_label_fraction": (0, "a share of each cluster's members, 0 to 1"),
    "cluster_warning_fraction": (0, "a share of a cluster's size after SCAN, 0 to 1"),
    "knn_ivf_lists": (1, "at least one IVF cell"),
    "knn_ivf_probe": (1, "at least one IVF cell searched"),
    "average_epochs": (0, "0 keeps the last epoch's weights; n averages the last n epochs'"),
}


class ConfigError(UserError, ValueError):
    """A config file or override that cannot be used as written."""


def describe_types(types: tuple) -> str:
    """What a user must write, in words: (int, float) is "a number such as 0.4 or 1e-4"."""
    if float in types:
        types = tuple(t for t in types if t is not int)
    names = {
        bool: "true or false",
        int: "a whole number such as 10",
        float: "a number such as 0.4 or 1e-4",
        str: "a string",
        list: "a list",
        dict: "a mapping",
        type(None): "null",
    }
    return " or ".join(dict.fromkeys(names[t] for t in types))


def is_instance(value: Any, types: tuple) -> bool:
    """isinstance, except that true/false is never taken for a number (YAML `epochs: yes` is a mistake)."""
    if isinstance(value, bool) and bool not in types:
        return False
    return isinstance(value, types)


def unknown_key(key: str, valid: dict | list, where: str) -> ConfigError:
    close = difflib.get_close_matches(key, list(valid), n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    listing = ", ".join(sorted(valid)) or "none (this block takes no keys)"
    return ConfigError(f"Unknown config key '{key}' in {where}.{hint} Valid keys: {listing}.")


def check_block(block: Any, schema: dict, where: str) -> None:
    """Check a nested block: a mapping whose keys are in `schema`, each value of its type."""
    if block is None:
        return
    if not isinstance(block, dict):
        raise ConfigError(f"Config key '{where}' must be a mapping of keys to values, got {block!r}.")
    for key, value in block.items():
        if key not in schema:
            raise unknown_key(key, schema, where)
        expected = schema[key]
        if isinstance(expected, dict):
            check_block(value, expected, f"{where}.{key}")
        elif not is_instance(value, expected):
            raise ConfigError(
                f"Config key '{where}.{key}' must be {describe_types(expected)}, got {value!r} "
                f"({type(value).__name__})."
            )


def select(schemas: dict[str, dict], choice: Any, chooser: str, block: str) -> dict | None:
    """The schema chosen by `cfg[chooser]`; an unknown choice is an error only when the block is used."""
    if choice in schemas:
        return schemas[choice]
    raise ConfigError(f"{chooser} '{choice}' is not one of {', '.join(schemas)} (needed to check {block}).")


def check_top_level(cfg: dict, defaults: dict, required: object) -> None:
    """Types of the top-level keys: from TOP_LEVEL_TYPES, else from the type of the default."""
    for key, value in cfg.items():
        if key in TOP_LEVEL_TYPES:
            expected = TOP_LEVEL_TYPES[key]
        elif key in defaults and defaults[key] is not None and defaults[key] is not required:
            default = defaults[key]
            expected = NUMBER if isinstance(default, float) else (type(default),)
        else:
            continue
        if value is None and key in defaults and defaults[key] is None:
            continue
        if not is_instance(value, expected):
            raise ConfigError(
                f"Config key '{key}' must be {describe_types(expected)}, got {value!r} ({type(value).__name__})."
            )
        if key in CHOICES and isinstance(value, str) and value not in CHOICES[key]:
            allowed = ", ".join(CHOICES[key]) + (", true, false" if bool in expected else "")
            raise ConfigError(f"Config key '{key}' is '{value}', but it must be one of {allowed}.")
        library = key == "backbone" and value.startswith(LIBRARY_PREFIXES) and value.partition(":")[2] != ""
        if key == "backbone" and value not in BACKBONE_SCHEMAS and not library:
            raise ConfigError(
                f"Config key 'backbone' is {value!r}: use {', '.join(BACKBONE_SCHEMAS)}, "
                "torchvision:<model name> or timm:<model name>."
            )
        if key in MINIMUMS and not isinstance(value, str) and value < MINIMUMS[key][0]:
            minimum, meaning = MINIMUMS[key]
            raise ConfigError(f"Config key '{key}' is {value}, but it must be {minimum} or more ({meaning}).")


def check_nested(cfg: dict) -> None:
    """Every `*_kwargs` block against the schema its selector key picks."""
    for block, (chooser, schemas) in CHOSEN_SCHEMAS.items():
        if cfg.get(block):
            check_block(cfg[block], select(schemas, cfg.get(chooser), chooser, block), block)
    check_block(cfg.get("transformation_kwargs"), TRANSFORMATION_SCHEMA, "transformation_kwargs")
    if cfg.get("backbone_kwargs"):
        library = str(cfg.get("backbone")).startswith(LIBRARY_PREFIXES)  # a torchvision/timm model takes none
        schema = {} if library else select(BACKBONE_SCHEMAS, cfg.get("backbone"), "backbone", "backbone_kwargs")
        check_block(cfg["backbone_kwargs"], schema, "backbone_kwargs")
    if cfg.get("model_kwargs"):
        # Only the contrastive model of the pretext stages takes keyword arguments.
        schema = CONTRASTIVE_MODEL_SCHEMA if cfg.get("setup") in ("simclr", "moco") else {}
        check_block(cfg["model_kwargs"], schema, "model_kwargs")
    if cfg.get("dataset_kwargs"):
        name = cfg.get("train_db_name")
        schema = {} if name in BUILTIN_ARCHIVES else DIGITS_SCHEMA if name == "digits" else FOLDER_SCHEMA
        check_block(cfg["dataset_kwargs"], schema, "dataset_kwargs")
        if schema is FOLDER_SCHEMA:
            check_folder_values(cfg["dataset_kwargs"])


def check_folder_values(kwargs: dict) -> None:
    """The values a folder dataset's keys may take, beyond their types."""
    labeled, image_size = kwargs.get("labeled", "auto"), kwargs.get("image_size")
    if labeled not in ("auto", True, False):
        raise ConfigError(f"dataset_kwargs.labeled must be auto, true or false, not {labeled!r}.")
    if image_size is not None and image_size < 1:
        raise ConfigError(
            f"dataset_kwargs.image_size must be a positive whole number of pixels (or null), not {image_size!r}."
        )
    fraction = kwargs.get("test_fraction", "auto")
    if fraction != "auto" and not (is_instance(fraction, NUMBER) and 0 <= fraction < 1):
        raise ConfigError(
            f"Config key 'dataset_kwargs.test_fraction' is {fraction!r}: give the share held out as the test "
            "split, from 0 (none: the test split is every image) up to but not 1, or auto (labeled 0.2, else 0)."
        )

"""Experiment configuration: env YAML + experiment YAML + `--set` overrides, validated.

Every hyper-parameter lives in the YAML files; this module only knows which keys
exist, their defaults, and where each stage writes its files. An unknown key is an
error, because a silently ignored typo (say `epoch: 5`) costs a whole training run.
"""

from __future__ import annotations

import argparse
import difflib
import importlib.util
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from utils.config_schema import ConfigError, check_nested, check_top_level, unknown_key

REQUIRED = object()

# Keys of configs/env.yml: where results go and where datasets are.
ENV_DEFAULTS: dict[str, Any] = {
    "root_dir": "results",
    "data_root": "datasets",
    "download": True,  # fetch CIFAR / STL-10 archives when missing (needs a network)
}

# Every key an experiment config may hold, with its default (REQUIRED: must be given).
EXPERIMENT_DEFAULTS: dict[str, Any] = {
    "setup": REQUIRED,  # simclr | moco | pretrained | scan | selflabel
    "backbone": REQUIRED,  # resnet18 | resnet50 | torchvision:<name> | timm:<name>
    "backbone_kwargs": {},  # e.g. {stem: stl, base_width: 64}
    "model_kwargs": {},  # ContrastiveModel: {head: mlp, features_dim: 128}
    "num_classes": REQUIRED,
    "num_heads": 1,
    "train_db_name": REQUIRED,
    "val_db_name": REQUIRED,
    "train_split": "train",  # pretext training split; STL-10 uses train+unlabeled
    "dataset_kwargs": {},  # passed to the dataset class (digits: image_size; folders: root, ...)
    "criterion": None,
    "criterion_kwargs": {},
    "epochs": 1,
    "optimizer": "adam",
    "optimizer_kwargs": {},
    "scheduler": "constant",
    "scheduler_kwargs": {},
    "batch_size": 128,
    "num_workers": "auto",  # data loading processes; `auto`: the CPU cores this process may use, at most 8
    "augmentation_strategy": None,
    "augmentation_kwargs": {},
    "transformation_kwargs": {},
    "seed": None,  # None: not seeded, like the original
    # Speed (docs/speed.md): each `auto` means on / batched with CUDA, off / pil on a CPU.
    "amp": "auto",  # bfloat16 autocast for forward passes: true | false | auto
    "channels_last": "auto",  # NHWC memory format for the model and image batches: true | false | auto
    "compile": False,  # torch.compile the model (a minute of compiling, then faster steps)
    "gather_negatives": True,  # SimCLR under torchrun: negatives from every process's batch (global batch)
    "resume": True,  # continue from the stage's checkpoint.pth.tar; false: start over (it is overwritten)
    "tensorboard": False,  # also log each epoch's history.jsonl values to <stage dir>/tensorboard (needs tensorboard)
    # Where images are augmented: pil (per image, in DataLoader workers; the faithful path) | batched (whole
    # batches on the device, data/batch_augment.py) | auto.
    "augmentation_backend": "auto",
    # pretext
    "topk_neighbors_train": 20,
    "topk_neighbors_val": 5,
    "knn_monitor_k": 100,  # weighted-kNN progress monitor of the pretext stage
    "knn_every": 10,  # run that monitor every this many epochs, and always after the last one
    # Neighbour mining at scale (docs/scaling.md): exact (the paper) or faiss's approximate IVF index.
    "knn_index": "exact",  # exact | ivf (prints its recall against an exact search of 1,000 sampled queries)
    "knn_ivf_lists": "auto",  # IVF k-means cells; auto: √N
    "knn_ivf_probe": 32,  # IVF cells searched per query: more is slower and closer to exact
    "knn_float16": False,  # exact mining: features kept in float16 on the device, scores summed in float32
    # scan
    "num_neighbors": 20,
    "update_cluster_head_only": False,
    # selflabel
    "confidence_threshold": 0.99,
    "use_ema": False,
    "ema_alpha": 0.999,
    "average_epochs": 0,  # write the average of the last this many epochs' weights (0: the last epoch's, the paper)
    # selflabel robustness (docs/selflabel.md)
    "pseudo_labels": "threshold",  # threshold (paper: above confidence_threshold) | per_cluster
    "pseudo_label_fraction": 0.5,  # per_cluster: each cluster's most confident share of its batch members
    "selflabel_keep": "last",  # last (paper) | best: the last epoch with intact clusters and views agreeing
    "cluster_warning_fraction": 0.25,  # warn when a cluster falls below this share of its size after SCAN
    # pretrained backbones and cached features (pretrained.py; scan.py head_input; estimate_k.py)
    "pretrained": None,  # pretrained.py: weights file of a torchvision:/timm: backbone, or `default` (library's own)
    "save_features": False,  # pretext stages: also save backbone features features-{train,val}.npy (float16)
    "head_input": "images",  # scan.py head-only training on: images (the paper) | cached_features
}

SETUPS = ("simclr", "moco", "pretrained", "scan", "selflabel")
PRETEXT, TRAINED = ("simclr", "moco", "pretrained"), ("simclr", "scan", "selflabel")

# Keys only some setups read (every other key is read by all). A key given to a setup that does not read it is
# refused: `--set confidence_threshold=0.9` on simclr.py would otherwise be ignored without a word.
STAGE_KEYS: dict[str, tuple[str, ...]] = {
    "model_kwargs": ("simclr", "moco"),
    "train_split": ("simclr",),
    "gather_negatives": ("simclr",),
    "knn_monitor_k": ("simclr",),
    "knn_every": ("simclr",),
    "pretrained": ("pretrained",),
    **dict.fromkeys(("topk_neighbors_train", "topk_neighbors_val", "save_features"), PRETEXT),
    **dict.fromkeys(("knn_index", "knn_ivf_lists", "knn_ivf_probe", "knn_float16"), PRETEXT),
    **dict.fromkeys(("criterion", "criterion_kwargs", "epochs", "resume", "tensorboard"), TRAINED),
    **dict.fromkeys(("optimizer", "optimizer_kwargs", "scheduler", "scheduler_kwargs"), TRAINED),
    **dict.fromkeys(("augmentation_strategy", "augmentation_kwargs"), TRAINED),
    **dict.fromkeys(("num_neighbors", "update_cluster_head_only", "head_input"), ("scan",)),
    "num_heads": ("scan", "selflabel"),
    **dict.fromkeys(("confidence_threshold", "use_ema", "ema_alpha", "pseudo_labels"), ("selflabel",)),
    **dict.fromkeys(("average_epochs",), ("selflabel",)),
    **dict.fromkeys(("pseudo_label_fraction", "selflabel_keep", "cluster_warning_fraction"), ("selflabel",)),
    # The paths stage_paths adds: each stage's own files and its inputs.
    **dict.fromkeys(("pretext_dir", "pretext_checkpoint"), PRETEXT),
    **dict.fromkeys(("pretext_model", "topk_neighbors_train_path"), (*PRETEXT, "scan")),
    "topk_neighbors_val_path": (*PRETEXT, "scan", "selflabel"),
    **dict.fromkeys(("scan_dir", "scan_checkpoint"), ("scan",)),
    "scan_model": ("scan", "selflabel"),
    **dict.fromkeys(("selflabel_dir", "selflabel_checkpoint", "selflabel_model"), ("selflabel",)),
}


def reads_key(setup: str, key: str) -> bool:
    """Whether the stage of `setup` reads config key `key`."""
    return setup in STAGE_KEYS.get(key, (setup,))


def check_stage_keys(setup: str, given: dict[str, str]) -> None:
    """Refuse a key that `setup` does not read, naming the stage that does; `given` maps key -> where it was set."""
    for key, where in given.items():
        if not reads_key(setup, key):
            stages = " / ".join(f"{name}.py (setup: {name})" for name in STAGE_KEYS[key])
            raise ConfigError(
                f"Config key '{key}' ({where}) is read by {stages}, not by this {setup} stage, which would ignore it. "
                f"Remove it here, or set it in the config of that stage."
            )


class NumberLoader(yaml.SafeLoader):
    """YAML as PyTorch users write it: `1e-4`, `5E-4` and `1e3` are numbers (YAML 1.1 reads them as strings,
    wanting `1.0e-4`)."""


NumberLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$"), list("-+0123456789.")
)


def read_yaml_text(text: str) -> Any:
    """A YAML value with exponent numbers read as floats (NumberLoader)."""
    return yaml.load(text, Loader=NumberLoader)


def _read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file not found: {path}. Pass an existing YAML file (see configs/).")
    with open(path) as handle:
        content = read_yaml_text(handle) or {}
    if not isinstance(content, dict):
        raise ConfigError(f"Config file {path} must hold a mapping of keys to values.")
    return content


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`['a.b=1', 'c=x']` → {'a.b': 1, 'c': 'x'}; values are parsed as YAML scalars."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"Override '{pair}' is not KEY=VALUE (e.g. --set epochs=2 optimizer_kwargs.lr=0.1).")
        overrides[key.strip()] = read_yaml_text(value)
    return overrides


def apply_override(cfg: dict, dotted_key: str, value: Any, known: dict) -> None:
    """Set `cfg[a][b]... = value` for 'a.b...'; the top-level key must be a known one."""
    parts = dotted_key.split(".")
    if parts[0] not in known:
        raise unknown_key(parts[0], known, f"--set {dotted_key}")
    node = cfg
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted_key}: '{part}' holds {child!r}, not a mapping.")
        node = child
    node[parts[-1]] = value


def stage_paths(root_dir: str | Path, train_db_name: str) -> dict[str, str]:
    """Where every stage reads and writes: <root_dir>/<train_db_name>/{pretext,scan,selflabel}/."""
    base = Path(root_dir) / train_db_name
    pretext, scan, selflabel = base / "pretext", base / "scan", base / "selflabel"
    return {
        "pretext_dir": str(pretext),
        "pretext_checkpoint": str(pretext / "checkpoint.pth.tar"),
        "pretext_model": str(pretext / "model.pth.tar"),
        "topk_neighbors_train_path": str(pretext / "topk-train-neighbors.npy"),
        "topk_neighbors_val_path": str(pretext / "topk-val-neighbors.npy"),
        "scan_dir": str(scan),
        "scan_checkpoint": str(scan / "checkpoint.pth.tar"),
        "scan_model": str(scan / "model.pth.tar"),
        "selflabel_dir": str(selflabel),
        "selflabel_checkpoint": str(selflabel / "checkpoint.pth.tar"),
        "selflabel_model": str(selflabel / "model.pth.tar"),
    }


def auto_num_workers(max_workers: int = 8) -> int:
    """`num_workers: auto`: the cores this process may run on, shared among torchrun's processes on the node."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(0, min(max_workers, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def load_config(config_env: str | Path, config_exp: str | Path, overrides: list[str] | None = None) -> dict:
    """Merge defaults, env file, experiment file and `--set` overrides; validate; add paths. Relative `root_dir` /
    `data_root` are taken from the current working directory."""
    known = {**ENV_DEFAULTS, **EXPERIMENT_DEFAULTS}
    cfg = {key: (dict(value) if isinstance(value, dict) else value) for key, value in known.items()}
    given = {}  # experiment keys set in the file or by --set, for check_stage_keys
    for path, defaults in ((config_env, ENV_DEFAULTS), (config_exp, EXPERIMENT_DEFAULTS)):
        if path is None:
            continue
        for key, value in _read_yaml(path).items():
            if key not in defaults:
                raise unknown_key(key, defaults, str(path))
            cfg[key] = value
            given[key] = f"in {path}"
    for key, value in parse_overrides(overrides or []).items():
        apply_override(cfg, key, value, known)
        given[key.split(".")[0]] = f"--set {key}"

    missing = [key for key, value in cfg.items() if value is REQUIRED]
    if missing:
        raise ConfigError(f"Config {config_exp} lacks required key(s): {', '.join(missing)}.")
    if cfg["setup"] not in SETUPS:
        raise ConfigError(f"setup '{cfg['setup']}' is not one of {', '.join(SETUPS)}.")
    check_stage_keys(cfg["setup"], given)
    if cfg["num_workers"] == "auto":
        cfg["num_workers"] = auto_num_workers()
    if cfg["knn_index"] == "ivf" and importlib.util.find_spec("faiss") is None:
        raise ConfigError("knn_index: ivf needs faiss: `pip install faiss-cpu`, or use --set knn_index=exact.")
    try:
        check_top_level(cfg, known, REQUIRED)
        check_nested(cfg)
    except ConfigError as error:
        raise ConfigError(f"{error} (config: {config_exp}{', with --set overrides' if overrides else ''})") from None
    cfg["root_dir"] = os.path.abspath(os.path.expanduser(str(cfg["root_dir"])))
    cfg["data_root"] = os.path.abspath(os.path.expanduser(str(cfg["data_root"])))
    cfg.update(stage_paths(cfg["root_dir"], cfg["train_db_name"]))
    return cfg


def spelling_hints(given: list[str], options: dict[str, argparse.Action]) -> list[str]:
    """'Did you mean' lines for the spellings other projects use: `--output-dir` for --output_dir, and a bare
    `epochs=2` (not after --set, nor the value of an option) for `--set epochs=2`."""
    hints, previous = [], None
    for arg in given:
        if arg.startswith("-"):
            flag = arg.split("=", 1)[0]
            previous = options.get(flag) if "=" not in arg else None
            if flag in options or not flag.startswith("--"):
                continue
            underscored = "--" + flag[2:].replace("-", "_")
            close = [underscored] if underscored in options else difflib.get_close_matches(flag, list(options), n=1)
            if close:
                hints.append(f"{flag}: did you mean {close[0]}?")
        elif re.fullmatch(r"[A-Za-z_][\w.]*=.*", arg) and (previous is None or previous.nargs == 0):
            hints.append(f"{arg}: did you mean --set {arg}?")
        elif previous is not None and previous.nargs not in ("+", "*"):
            previous = None  # the option's one value is taken
    return hints


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors add 'did you mean' hints (spelling_hints) for the arguments it was given."""

    def parse_known_args(self, args=None, namespace=None):
        self.given = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def error(self, message: str):
        hints = spelling_hints(getattr(self, "given", []), self._option_string_actions)
        super().error("\n  ".join([message, *hints]))


def parse_early(module_name: str, parse: Callable[[], object]) -> None:
    """In an entry script run from the shell (`module_name` "__main__"), parse the arguments before torch is
    imported: --help and usage mistakes are answered in seconds, not ten."""
    if module_name == "__main__":
        parse()


def stage_parser(description: str, module_name: str, extra_arguments=None) -> ArgumentParser:
    """The arguments of a training stage's script, parsed at once when it runs from the shell (parse_early)."""
    parser = ArgumentParser(description=description)
    add_config_arguments(parser)
    fresh = "start this stage over: its output folder is moved aside (renamed with a timestamp), not deleted"
    parser.add_argument("--fresh", action="store_true", help=fresh)
    changed = "continue an unfinished run's checkpoint although its settings or input files changed (recorded)"
    parser.add_argument("--resume_changed", action="store_true", help=changed)
    if extra_arguments is not None:
        extra_arguments(parser)
    parse_early(module_name, parser.parse_args)
    return parser


def add_config_arguments(parser: argparse.ArgumentParser, env_required: bool = True) -> None:
    """The arguments every entry script shares."""
    default_env = Path(__file__).resolve().parents[1] / "configs" / "env.yml"
    parser.add_argument(
        "--config_env",
        default=None if env_required else str(default_env),
        required=env_required,
        help="YAML with root_dir (outputs) and data_root (datasets)"
        + ("" if env_required else f" (default: {default_env})"),
    )
    parser.add_argument("--config_exp", required=True, help="experiment YAML, e.g. configs/pretext/simclr_cifar10.yml")
    add_set_argument(
        parser, "override config entries, dotted keys for nested ones: --set epochs=2 optimizer_kwargs.lr=0.1"
    )


def add_eval_batch_size_argument(parser: argparse.ArgumentParser) -> None:
    """--batch_size of eval.py and predict.py: images per batch, whatever batch the model was trained with."""
    help = "images per batch (default 256; the config's batch_size is the training one)"
    parser.add_argument("--batch_size", type=int, default=256, help=help)


def add_set_argument(parser: argparse.ArgumentParser, help: str) -> None:
    """`--set KEY=VALUE ...` into `args.overrides`, repeatable; the benches hand the list on to every stage."""
    parser.add_argument(
        "--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE", help=help
    )


def format_config(cfg: dict) -> str:
    """The settings this stage reads, as YAML, for the log: a run should say exactly what it ran (and not the
    defaults of the other stages)."""
    shown = {key: value for key, value in cfg.items() if reads_key(cfg["setup"], key)}
    return yaml.safe_dump(shown, sort_keys=False, default_flow_style=None)

"""What produced a stage's files, and what a rerun does about it, as a build tool compares a target with its inputs.

A run's record holds the config values that change its result and the identity (SHA-256) of every file it read
from an earlier stage. It is saved in checkpoint.pth.tar, in metrics.json and with the model file. On start, a
stage compares the record of what it is asked to do with those on disk (docs/reliability.md has the table):
nothing there → train; same inputs → resume, continue with more epochs, or do nothing when up to date; other
inputs → start over with the previous folder moved aside (finished run) or stop and say how to go on (unfinished).
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from data.cached_features import feature_paths
from data.registry import folder_split_file
from engine.model_files import file_sha256
from utils.checkpoint import CheckpointError, load_resumable
from utils.config import EXPERIMENT_DEFAULTS, reads_key

# Config keys that do not change a stage's result (dotted for nested ones; a key covers everything below it):
# how fast or where it runs, what it logs. Every other experiment key changes the result.
FREE_KEYS = (
    *("num_workers", "resume", "tensorboard", "knn_every"),
    "knn_monitor_k",  # the pretext stage's progress monitor only
    "amp",  # the fast and the faithful path give the same result in distribution (docs/speed.md)
    *("channels_last", "compile", "augmentation_backend"),
)
# Keys of what a pretext stage makes from its finished model (neighbours, cached features): a change redoes that
# part from the checkpoint, without training again.
AFTER_TRAINING_KEYS = (
    *("topk_neighbors_train", "topk_neighbors_val", "save_features"),
    *("knn_index", "knn_ivf_lists", "knn_ivf_probe", "knn_float16"),
)
# Keys that decide the model or the data: a checkpoint written under other values cannot be continued at all.
MODEL_AND_DATA_KEYS = (
    *("setup", "backbone", "backbone_kwargs", "model_kwargs", "num_classes", "num_heads"),
    *("train_db_name", "val_db_name", "train_split", "dataset_kwargs", "augmentation_strategy"),
    *("augmentation_kwargs.random_resized_crop.size", "augmentation_kwargs.crop_size"),
    *("transformation_kwargs.crop_size", "num_neighbors"),
    "update_cluster_head_only",  # which parameters the optimizer holds
    "head_input",  # images or cached features: what the heads train on
    "optimizer",  # another optimizer cannot take over the saved one's state
)
CHECKPOINTS = {"simclr": "pretext_checkpoint", "scan": "scan_checkpoint", "selflabel": "selflabel_checkpoint"}
MODEL_FILES = {"scan": "scan_model", "selflabel": "selflabel_model"}  # the pretext setups: pretext_model


def covered(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == prefix or key.startswith(prefix + ".") for prefix in prefixes)


def flatten(values: dict, prefix: str = "") -> dict:
    """{'a': {'b': 1}, 'c': {}} → {'a.b': 1}; an empty mapping, like a missing one, adds nothing."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_record(cfg: dict) -> dict:
    """The experiment keys this stage reads (no paths, no env), as the record keeps them."""
    return {key: cfg[key] for key in EXPERIMENT_DEFAULTS if key in cfg and reads_key(cfg["setup"], key)}


def stage_inputs(cfg: dict, args: argparse.Namespace) -> tuple[dict[str, str], dict[str, str]]:
    """(required, optional) files the stage reads from earlier stages or the user, by name → path."""
    setup, optional = cfg["setup"], {}
    split = folder_split_file(cfg["root_dir"], cfg["train_db_name"])
    if setup == "moco":
        required = {"moco_weights": args.moco_weights}
    elif setup == "pretrained":
        required = {} if cfg["pretrained"] in (None, "default") else {"pretrained": cfg["pretrained"]}
    elif setup == "scan":
        names = ("pretext_model", "topk_neighbors_train_path", "topk_neighbors_val_path")
        required = {name: cfg[name] for name in names}
        if cfg["head_input"] == "cached_features":
            for split in ("train", "val"):
                files = feature_paths(cfg["pretext_dir"], split).items()
                required.update({f"{kind}-{split}": str(path) for kind, path in files})
        optional["split"] = str(split)
    elif setup == "selflabel":
        required = {"scan_model": cfg["scan_model"]}
        optional = {"topk_neighbors_val_path": cfg["topk_neighbors_val_path"], "split": str(split)}
    else:  # simclr reads no earlier stage's file; it writes the split
        required = {}
    return required, optional


def shown_path(path: str | Path, cfg: dict) -> str:
    """A path as a user reads it: relative to root_dir when inside it (so a moved results folder reads the same)."""
    path = os.path.abspath(path)
    root = os.path.abspath(cfg["root_dir"])
    return os.path.relpath(path, root) if path.startswith(root + os.sep) else str(path)


def current_record(cfg: dict, args: argparse.Namespace) -> dict | None:
    """This run's record; None when a required input is missing (the stage then says which and how to make it)."""
    required, optional = stage_inputs(cfg, args)
    if any(not Path(path).is_file() for path in required.values()):
        return None
    present = {**required, **{name: path for name, path in optional.items() if Path(path).is_file()}}
    inputs = {name: {"path": shown_path(path, cfg), "sha256": file_sha256(path)} for name, path in present.items()}
    record = {"stage": cfg["setup"], "config": config_record(cfg), "inputs": inputs, "changes_on_resume": []}
    return json.loads(json.dumps(record))  # as it reads back from metrics.json: lists, not tuples


def differences(saved: dict, now: dict, ignore: tuple[str, ...]) -> list[str]:
    """'key: old → new' for every config key (outside `ignore`) and every input file that differs."""
    before, after = flatten(saved.get("config", {})), flatten(now["config"])
    # A key the saved record lacks came into the code after it was written. Its default keeps the behaviour of
    # before (`average_epochs: 0`), so at that default it is no change: an upgrade does not retrain finished stages.
    added = {key: EXPERIMENT_DEFAULTS[key] for key in after.keys() - before.keys() if key in EXPERIMENT_DEFAULTS}
    before = {**added, **before}
    lines = [
        f"{key}: {before.get(key, '(unset)')!r} → {after.get(key, '(unset)')!r}"
        for key in sorted(set(before) | set(after))
        if before.get(key) != after.get(key) and not covered(key, ignore)
    ]
    old_inputs, new_inputs = saved.get("inputs", {}), now["inputs"]
    for name in sorted(set(old_inputs) | set(new_inputs)):
        old, new = old_inputs.get(name), new_inputs.get(name)
        if (old or {}).get("sha256") != (new or {}).get("sha256"):
            describe = lambda entry: f"{entry['path']} (sha256 {entry['sha256'][:12]})" if entry else "(none)"  # noqa: E731
            lines.append(f"{name}: {describe(old)} → {describe(new)}")
    return lines


@dataclass
class RunPlan:
    """What setup decided: train from scratch, resume the checkpoint, or nothing (up to date, `saved_metrics`)."""

    record: dict | None
    resume: bool = False
    up_to_date: bool = False
    saved_metrics: dict = field(default_factory=dict)


class ChangedInputsError(CheckpointError):
    """An unfinished run's inputs changed: continuing it would mix two experiments unless the user says so."""


def model_path(cfg: dict) -> str:
    return cfg[MODEL_FILES.get(cfg["setup"], "pretext_model")]


def finished_outputs(cfg: dict) -> bool:
    """Whether every file a finished stage leaves is there (a user may have deleted one)."""
    files = [model_path(cfg), Path(model_path(cfg)).parent / "metrics.json"]
    if cfg["setup"] not in MODEL_FILES:
        files += [cfg["topk_neighbors_train_path"], cfg["topk_neighbors_val_path"]]
        if cfg["save_features"]:
            files += [path for split in ("train", "val") for path in feature_paths(cfg["pretext_dir"], split).values()]
    return all(Path(file).is_file() for file in files)


def saved_metrics(cfg: dict) -> dict:
    path = Path(model_path(cfg)).parent / "metrics.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        return {}


def plan_run(cfg: dict, args: argparse.Namespace, move_aside) -> RunPlan:
    """The rule (docs/reliability.md): compare this run's record with the checkpoint's and metrics.json's."""
    record = current_record(cfg, args)
    stage_dir = Path(model_path(cfg)).parent
    checkpoint_path = Path(cfg.get(CHECKPOINTS.get(cfg["setup"], ""), stage_dir / "checkpoint.pth.tar"))
    if not cfg["resume"]:
        if checkpoint_path.is_file():
            print(f"resume: false — ignoring {checkpoint_path}; it is overwritten after the first epoch.", flush=True)
        return RunPlan(record)
    metrics = saved_metrics(cfg)
    done = metrics.get("record")
    if record is None:  # a missing input: the stage names it before anything is moved
        return RunPlan(record, resume=checkpoint_path.is_file())
    if not checkpoint_path.is_file():  # moco, pretrained, or a stage whose checkpoint is gone
        if done is not None and not differences(done, record, FREE_KEYS) and finished_outputs(cfg):
            return up_to_date(cfg, record, metrics)
        if done is not None:
            restart(stage_dir, differences(done, record, FREE_KEYS) or ["(outputs missing)"], move_aside)
        return RunPlan(record)

    checkpoint = load_resumable(checkpoint_path)
    saved = checkpoint.get("record")
    if saved is None:
        print(f"Note: {checkpoint_path} records no inputs (written by an older version): resumed unchecked.")
        return RunPlan(record, resume=True)
    record["changes_on_resume"] = list(saved.get("changes_on_resume", []))
    trained, planned = checkpoint["epoch"], saved["config"].get("epochs", 0)
    finished = trained >= planned and not checkpoint.get("step")
    changed = differences(saved, record, FREE_KEYS + AFTER_TRAINING_KEYS + ("epochs",))
    if finished and cfg["epochs"] < trained:
        changed.append(f"epochs: {trained} trained → {cfg['epochs']}")
    if changed and finished:
        restart(stage_dir, changed, move_aside)
        return RunPlan({**record, "changes_on_resume": []})
    if changed:
        return continue_changed(args, record, changed, checkpoint_path)
    if finished and cfg["epochs"] > trained:
        print(f"Same inputs, more epochs: continuing the finished run from epoch {trained} to {cfg['epochs']}.")
        record["changes_on_resume"].append(f"epochs: {trained} → {cfg['epochs']} (continued after finishing)")
    elif finished:
        redo = differences(done, record, FREE_KEYS) if done is not None else ["no record in metrics.json"]
        if not redo and finished_outputs(cfg):
            return up_to_date(cfg, record, metrics)
        print("Training is finished; making its outputs again (" + ("; ".join(redo) or "some are missing") + ")")
    elif cfg["epochs"] != planned:
        record["changes_on_resume"].append(f"epochs: {planned} → {cfg['epochs']} (while unfinished)")
    return RunPlan(record, resume=True)


def up_to_date(cfg: dict, record: dict, metrics: dict) -> RunPlan:
    scores = "  ".join(f"{key} {value:.4f}" for key, value in metrics.items() if isinstance(value, float))
    print(
        f"Up to date: {Path(model_path(cfg)).parent} was made from these inputs and settings; nothing to train.\n"
        f"  model: {model_path(cfg)}\n  metrics: {Path(model_path(cfg)).parent / 'metrics.json'}"
        + (f"\n  {scores}" if scores else "")
        + "\n(--fresh trains again, moving this folder aside.)",
        flush=True,
    )
    return RunPlan(record, up_to_date=True, saved_metrics=metrics)


def restart(stage_dir: Path, changed: list[str], move_aside) -> None:
    moved = move_aside(stage_dir)
    print(
        f"Starting over: the finished run in {stage_dir} was made from other inputs:\n  "
        + "\n  ".join(changed)
        + (f"\nIts results are kept in {moved}." if moved else ""),
        flush=True,
    )


def continue_changed(args, record: dict, changed: list[str], path: Path) -> RunPlan:
    blocked = [line for line in changed if covered(line.split(":")[0], MODEL_AND_DATA_KEYS)]
    if not getattr(args, "resume_changed", False) or blocked:
        folder = Path(path).parent
        raise ChangedInputsError(
            f"{path} belongs to an unfinished run with other inputs:\n  " + "\n  ".join(changed) + "\nTwo ways on:\n"
            f"  --fresh           start over (moves {folder}/ aside, renamed with a timestamp, nothing deleted)\n"
            + (
                f"  (--resume_changed cannot continue it: {', '.join(line.split(':')[0] for line in blocked)} "
                "changes the model or the data)"
                if blocked
                else "  --resume_changed  continue this checkpoint under the new settings (recorded as such)"
            )
        )
    print("Note: resuming under changed settings (recorded in the model's record):\n  " + "\n  ".join(changed))
    record["changes_on_resume"] += changed
    return RunPlan(record, resume=True)

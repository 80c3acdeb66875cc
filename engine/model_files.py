"""Model files that say which architecture they hold, so eval.py and predict.py need not guess it.

Users often evaluate with another config than they trained with, and the weights alone do not say which width or
stem built them. SCAN files ({'model', 'head'}) get a third key, 'architecture' (the original reads only the first
two); pretext and self-label files must stay plain state dicts (the original's load_state_dict rejects extra keys),
so theirs is a sidecar `<file>.arch.json` holding the model file's SHA-256: a sidecar left over from another file
is ignored, not trusted. Files without a record (model zoo, older runs) are described by the config.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from models import ClusteringModel, ContrastiveModel, build_backbone
from models.resnet import ResNet18, resnet50
from utils.checkpoint import CheckpointError, load_checkpoint, load_state_dict_checked, save_atomic, strip_module_prefix
from utils.config import PRETEXT
from utils.files import write_json

RECORD_FORMAT = 1
BACKBONE_BUILDERS = {"resnet18": ResNet18, "resnet50": resnet50}  # whose keyword defaults the record spells out


@dataclass
class ModelFile:
    """What a model file holds: weights, the stored head (SCAN files), the architecture and the run's record
    (engine/run_record.py; None for model-zoo files and older runs)."""

    state_dict: dict
    head: int | None
    architecture: dict | None
    record: dict | None = None


def backbone_kwargs_with_defaults(backbone: str, kwargs: dict) -> dict:
    """The backbone's keyword arguments with its defaults filled in ({} → {'stem': 'cifar', 'base_width': 64}),
    so that a record and a config compare equal whether or not the config wrote a default."""
    builder = BACKBONE_BUILDERS.get(backbone)
    if builder is None:
        return dict(kwargs)
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(builder).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }
    return {**defaults, **kwargs}


def architecture_record(cfg: dict, num_heads: int | None = None) -> dict:
    """The architecture a stage's model was built with, from its config; `num_heads` overrides the config's where
    the file holds another count (self-labeling keeps one head)."""
    contrastive = cfg["setup"] in PRETEXT
    record = {
        "format": RECORD_FORMAT,
        "kind": "contrastive" if contrastive else "clustering",
        "backbone": cfg["backbone"],
        "backbone_kwargs": backbone_kwargs_with_defaults(cfg["backbone"], cfg.get("backbone_kwargs") or {}),
    }
    if contrastive:
        record["model_kwargs"] = pretext_model_kwargs(cfg)
    else:
        record["num_classes"] = int(cfg["num_classes"])
        record["num_heads"] = int(num_heads if num_heads is not None else cfg.get("num_heads", 1))
    if cfg.get("train_db_name") is not None:  # the data it learned from, so that eval.py can name a mix-up first
        image_size = (cfg.get("transformation_kwargs") or {}).get("crop_size")
        record["dataset"] = {
            "name": cfg["train_db_name"],
            "num_classes": int(cfg["num_classes"]),
            "image_size": image_size or (cfg.get("dataset_kwargs") or {}).get("image_size"),
        }
    return record


def require_same_dataset(recorded: dict | None, cfg: dict, model_path: str | Path) -> None:
    """A model trained on one dataset and a config of another: say so before any width note or missing file."""
    trained_on = (recorded or {}).get("dataset")
    if trained_on is None or trained_on["name"] == cfg["train_db_name"]:
        return
    config_side = architecture_record(cfg)["dataset"]

    def describe(dataset: dict) -> str:
        size = f", {dataset['image_size']}-pixel images" if dataset.get("image_size") else ""
        return f"{dataset['name']} ({dataset['num_classes']} classes{size})"

    raise CheckpointError(
        f"{model_path} was trained on {describe(trained_on)}, but the config is for {describe(config_side)}. "
        f"Pass the config of {trained_on['name']} (the one the model was trained with)."
    )


def pretext_model_kwargs(cfg: dict) -> dict:
    """ContrastiveModel's keyword arguments for a pretext setup: an imported library backbone has no head."""
    return {"head": "none"} if cfg["setup"] == "pretrained" else dict(cfg.get("model_kwargs") or {})


def sidecar_path(model_path: str | Path) -> Path:
    """`model.pth.tar` → `model.pth.tar.arch.json`, the record of a plain state-dict file."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.name + ".arch.json")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def dated(record: dict | None) -> dict | None:
    """The run's record as saved with a model file: with the time the file was written."""
    return None if record is None else {**record, "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def save_state_dict_file(state_dict: dict, path: str | Path, architecture: dict, record: dict | None = None) -> None:
    """A plain state dict (loadable by the original code) plus its sidecar: architecture and the run's record."""
    save_atomic(state_dict, path)
    sidecar = {"model_file": Path(path).name, "sha256": file_sha256(path), "architecture": architecture}
    write_json({**sidecar, "record": dated(record)}, sidecar_path(path))


def save_scan_file(
    state_dict: dict, head: int, path: str | Path, architecture: dict, record: dict | None = None
) -> None:
    """The SCAN format {'model', 'head'} with the architecture and the run's record as extra keys."""
    save_atomic({"model": state_dict, "head": int(head), "architecture": architecture, "record": dated(record)}, path)


def read_sidecar(path: str | Path) -> dict | None:
    """The sidecar of a plain state-dict file ('architecture', 'record'), or None when there is no valid one."""
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        return None
    try:
        content = json.loads(sidecar.read_text())
        recorded_sha, _ = content["sha256"], content["architecture"]
    except (ValueError, KeyError, TypeError) as error:
        print(f"Note: ignoring {sidecar}, which is not an architecture record ({error}).", flush=True)
        return None
    if recorded_sha != file_sha256(path):
        print(
            f"Note: ignoring {sidecar}: it describes another version of {Path(path).name} "
            "(the file was replaced after it was written). The config describes the model.",
            flush=True,
        )
        return None
    return content


def read_model_file(path: str | Path) -> ModelFile:
    """Weights, stored head and recorded architecture from any published, stage-written or resumable file."""
    checkpoint = load_checkpoint(path)
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path} holds a {type(checkpoint).__name__}, not a state dict.")
    if "model" in checkpoint and isinstance(checkpoint["model"], dict):  # SCAN {'model', 'head'} or a checkpoint
        head = checkpoint.get("head", checkpoint.get("best_loss_head"))
        head = None if head is None else int(head)
        record = checkpoint.get("record")
        return ModelFile(strip_module_prefix(checkpoint["model"]), head, checkpoint.get("architecture"), record)
    sidecar = read_sidecar(path) or {}
    return ModelFile(strip_module_prefix(checkpoint), None, sidecar.get("architecture"), sidecar.get("record"))


def architecture_differences(recorded: dict, cfg: dict, keys: tuple[str, ...]) -> list[str]:
    """'key: file X, config Y' for each of `keys` where the record and the config disagree; backbone_kwargs entry
    by entry, so the message names e.g. `backbone_kwargs.base_width` rather than the whole mapping."""
    config_side = architecture_record(cfg)
    differences = []
    for key in keys:
        if key not in recorded or key not in config_side:  # e.g. model_kwargs: contrastive models only
            continue
        file_value, config_value = recorded[key], config_side[key]
        if key == "backbone_kwargs" and recorded.get("backbone") == config_side["backbone"]:
            for name in sorted(set(file_value) | set(config_value)):
                if file_value.get(name) != config_value.get(name):
                    differences.append(
                        f"backbone_kwargs.{name}: file {file_value.get(name)!r}, config {config_value.get(name)!r}"
                    )
        elif file_value != config_value:
            differences.append(f"{key}: file {file_value!r}, config {config_value!r}")
    return differences


def require_matching_architecture(recorded: dict | None, cfg: dict, keys: tuple[str, ...], source: str) -> None:
    """For a stage that trains on from a file: the config must build the architecture the file recorded."""
    if recorded is None:
        return
    differences = architecture_differences(recorded, cfg, keys)
    if differences:
        overrides = " ".join(
            f"{line.split(':')[0]}={recorded_value(recorded, line.split(':')[0])}" for line in differences
        )
        raise CheckpointError(
            f"The {source} was trained with another architecture than this config builds:\n  "
            + "\n  ".join(differences)
            + f"\nMake the config match the file (e.g. --set {overrides}) or retrain the earlier stage."
        )


def recorded_value(recorded: dict, dotted_key: str) -> object:
    """The value under 'a.b' in the record, written as a `--set` value."""
    value = recorded
    for part in dotted_key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return json.dumps(value) if isinstance(value, (dict, list)) else value


def model_from_file(cfg: dict, model_file: ModelFile, model_path: str | Path) -> torch.nn.Module:
    """The untrained model to load `model_file` into: the recorded architecture (a differing config gets a note),
    else the config's backbone with the weights' number of heads and clusters, so that a self-label file (1 head)
    fits a SCAN config and an over-clustering model is evaluated by majority mapping."""
    state_dict, recorded = model_file.state_dict, model_file.architecture
    require_same_dataset(recorded, cfg, model_path)
    if recorded is not None:
        differences = architecture_differences(recorded, cfg, ("backbone", "backbone_kwargs", "model_kwargs"))
        if differences:
            print(
                f"Note: {model_path} records the architecture it was trained with, and the config differs in:\n  "
                + "\n  ".join(differences)
                + "\nBuilding the model the file describes.",
                flush=True,
            )
        backbone = build_backbone(recorded["backbone"], **recorded["backbone_kwargs"])
        if recorded["kind"] == "contrastive":
            model = ContrastiveModel(backbone, **recorded.get("model_kwargs", {}))
        else:
            model = ClusteringModel(backbone, recorded["num_classes"], recorded["num_heads"])
    else:
        backbone = build_backbone(cfg["backbone"], **cfg["backbone_kwargs"])
        if any(key.startswith("contrastive_head") for key in state_dict) or cfg["setup"] in PRETEXT:
            model = ContrastiveModel(backbone, **pretext_model_kwargs(cfg))
        else:
            first_head = state_dict.get("cluster_head.0.weight")
            num_clusters = cfg["num_classes"] if first_head is None else first_head.shape[0]
            num_heads = len({key for key in state_dict if re.match(r"cluster_head\.\d+\.weight$", key)})
            model = ClusteringModel(backbone, num_clusters, max(num_heads, 1))
    if isinstance(model, ClusteringModel) and model.cluster_head[0].out_features != cfg["num_classes"]:
        print(
            f"Note: the model has {model.cluster_head[0].out_features} clusters, "
            f"the config says num_classes {cfg['num_classes']}.",
            flush=True,
        )
    return model


def describe_record(path: str | Path, record: dict | None) -> str:
    """One line or a few for eval.py and predict.py: which model file, made by which stage, when, from what."""
    if record is None:
        return f"Model {path}: no record of what produced it (a model-zoo file or an older run): inputs unknown."
    inputs = ", ".join(f"{name} {entry['path']} ({entry['sha256'][:12]})" for name, entry in record["inputs"].items())
    lines = [f"Model {path}: {record['stage']} stage, written {record.get('date', '?')}; inputs: {inputs or 'none'}"]
    lines += [f"  resumed under a change: {line}" for line in record.get("changes_on_resume", [])]
    return "\n".join(lines)


def load_model_file(cfg: dict, model_path: str | Path) -> tuple[torch.nn.Module, int | None]:
    """(ContrastiveModel, None) for a pretext file, else (ClusteringModel, the stored head or 0), loaded; says
    which file it read and what produced it."""
    model_file = read_model_file(model_path)
    print(describe_record(model_path, model_file.record), flush=True)
    model = model_from_file(cfg, model_file, model_path)
    load_state_dict_checked(model, model_file.state_dict, source=f"model {model_path}")
    if isinstance(model, ContrastiveModel):
        return model, None
    head = model_file.head if model_file.head is not None else 0
    if head >= model.num_heads:
        raise CheckpointError(f"{model_path} names head {head} but holds only {model.num_heads} head(s).")
    return model, head


def default_output_dir(model_path: str | Path) -> Path:
    """`<model dir>/<model file stem>_eval`: where results go without --output_dir, and where predict.py looks."""
    return Path(model_path).parent / (Path(model_path).name.split(".")[0] + "_eval")

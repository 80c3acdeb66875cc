"""The bad-input table of docs/reliability.md, row by row: each runs the real entry script in a subprocess on a small
scenario, checks what the user sees, that no Python traceback reaches them, and that no file that existed
before the run was changed (datasets, models, checkpoints, neighbour files).

The subprocesses start together (a few at a time) when the first row's test asks for them, since most of
their time is importing torch; each test then checks its own row.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from engine.run_record import current_record
from models import build_model
from tests.conftest import ROOT, write_cifar10
from utils.checkpoint import save_atomic, training_checkpoint
from utils.config import load_config
from utils.runtime import rng_state

pytestmark = pytest.mark.slow

PRETEXT, SCAN, SELFLABEL = (
    ROOT / "configs/pretext/simclr_cifar10.yml",
    ROOT / "configs/scan/scan_cifar10.yml",
    ROOT / "configs/selflabel/selflabel_cifar10.yml",
)
CUSTOM = ROOT / "configs/pretext/simclr_custom.yml"
TINY = ["backbone_kwargs.base_width=4", "num_workers=0", "batch_size=20", "epochs=1", "seed=0"]
# The custom template trains on 96×96 crops with STL-10's stem; 16×16 keeps a run on a few images short.
SMALL_IMAGES = [
    "dataset_kwargs.image_size=16",
    "augmentation_kwargs.random_resized_crop.size=16",
    "transformation_kwargs.crop_size=16",
    "backbone_kwargs.stem=cifar",
    "topk_neighbors_train=3",
    "topk_neighbors_val=1",
]


# Scenario builders: each writes files below `root` and returns what the run needs --------------------
def cifar_env(root: Path, data: bool = True, results: Path | None = None) -> Path:
    """A tiny CIFAR-10 copy (100 train / 50 test images) and an env.yml pointing at it."""
    if data:
        write_cifar10(root / "datasets" / "cifar-10")
    env = root / "env.yml"
    results = results or root / "results"
    env.write_text(yaml.safe_dump({"root_dir": str(results), "data_root": str(root / "datasets"), "download": False}))
    return env


def stage(script: str, env: Path, config: Path, *overrides: str, extra: tuple[str, ...] = ()) -> list[str]:
    return [script, "--config_env", str(env), "--config_exp", str(config), *extra, "--set", *TINY, *overrides]


def pretext_outputs(env: Path) -> dict:
    """A seeded random pretext model (base width 4) and random neighbour files."""
    cfg = load_config(env, PRETEXT, TINY)
    torch.manual_seed(0)
    save_atomic(build_model(cfg).state_dict(), cfg["pretext_model"])
    rng = np.random.default_rng(0)
    np.save(cfg["topk_neighbors_train_path"], rng.integers(0, 100, size=(100, 21)))
    np.save(cfg["topk_neighbors_val_path"], rng.integers(0, 50, size=(50, 6)))
    return cfg


def scan_model(env: Path) -> dict:
    """A seeded random SCAN model file {'model', 'head'} with 10 clusters."""
    cfg = load_config(env, SCAN, TINY)
    torch.manual_seed(0)
    save_atomic({"model": build_model(cfg).state_dict(), "head": 0}, cfg["scan_model"])
    return cfg


def resumable_checkpoint(env: Path, config: Path, *overrides: str) -> dict:
    """checkpoint.pth.tar after one epoch, as a stage writes it under `overrides`."""
    cfg = load_config(env, config, [*TINY, *overrides])
    torch.manual_seed(0)
    model = build_model(cfg)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1) if cfg["optimizer"] == "sgd" else None
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=0.1)
    key = {"simclr": "pretext_checkpoint", "scan": "scan_checkpoint"}[cfg["setup"]]
    state = {"epoch": 1, "step": 0, "rng": [rng_state()], "batch_size": cfg["batch_size"]}
    record = current_record(cfg, argparse.Namespace())
    save_atomic(training_checkpoint(record, model, optimizer, **state), cfg[key])
    return cfg


def image_folder(root: Path, counts: dict[str, int]) -> Path:
    rng = np.random.default_rng(0)
    for c, (name, count) in enumerate(counts.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = np.clip(rng.normal(40 + 60 * c, 20, size=(20, 20, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i:02d}.png")
    return root


def folder_run(root: Path, images: Path, *overrides: str) -> list[str]:
    env = cifar_env(root, data=False)
    return stage(
        "simclr.py",
        env,
        CUSTOM,
        *SMALL_IMAGES,
        f"dataset_kwargs.root={images}",
        "train_db_name=photos",
        "val_db_name=photos",
        "num_classes=3",
        "batch_size=4",
        *overrides,
    )


def read_only_folder(path: Path) -> Path:
    """A folder this process cannot write to: permissions for a normal user, a read-only mount for root."""
    path.mkdir(parents=True)
    if os.geteuid() != 0:
        path.chmod(0o555)
    elif subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)]).returncode:
        pytest.skip("running as root without permission to mount a read-only folder")
    return path


def small_disk(path: Path, size: str) -> Path:
    path.mkdir(parents=True)
    if (
        os.geteuid() != 0
        or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]).returncode
    ):
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    return path


def evil_checkpoint(path: Path, marker: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"model": {}, "head": Evil()}, path)


# The rows ----------------------------------------------------------------------------------------------
@dataclass
class Row:
    """A bad input: how to build it, the command, what the user must see (regex), the exit status."""

    bad_input: str
    build: Callable[[Path], list[str]]
    expect: str
    exit_code: int = 1
    absent: tuple[str, ...] = ()  # files (relative to the scenario folder) that must not appear
    unmount: list[Path] = field(default_factory=list)


def missing_dataset(root):
    return stage("simclr.py", cifar_env(root, data=False), PRETEXT)


def partial_dataset(root):
    env = cifar_env(root)
    (root / "datasets/cifar-10/cifar-10-batches-py/test_batch").unlink()
    return stage("simclr.py", env, PRETEXT)


def corrupt_pickle(root):
    env = cifar_env(root)
    (root / "datasets/cifar-10/cifar-10-batches-py/data_batch_1").write_bytes(b"\x80\x02garbage" * 100)
    return stage("simclr.py", env, PRETEXT)


def broken_images(root):
    images = image_folder(root / "photos", {"a": 8, "b": 8, "c": 8})
    (images / "a" / "broken.png").write_bytes(b"not an image at all")
    (images / "b" / "cut.png").write_bytes((images / "b" / "00.png").read_bytes()[:60])
    return folder_run(root, images)


def empty_folder(root):
    (root / "photos" / "sub").mkdir(parents=True)
    return folder_run(root, root / "photos")


def one_image_class(root):
    images = image_folder(root / "photos", {"a": 8, "b": 8, "lonely": 1})
    return folder_run(root, images)


def more_clusters(root):
    env = cifar_env(root)
    pretext_outputs(env)
    return stage("scan.py", env, SCAN, "num_classes=500")


def pretext_other_backbone(root):
    env = cifar_env(root)
    pretext_outputs(env)
    return stage("scan.py", env, SCAN, "backbone_kwargs.base_width=8")


def scan_other_cluster_count(root):
    env = cifar_env(root)
    scan_model(env)
    return stage("selflabel.py", env, SELFLABEL, "num_classes=5", "confidence_threshold=0.1")


def selflabel_file_for_scan(root):
    env = cifar_env(root)
    cfg = scan_model(env)
    save_atomic(torch.load(cfg["scan_model"], weights_only=True)["model"], cfg["scan_model"])  # a plain state dict
    return stage("selflabel.py", env, SELFLABEL)


def scan_file_for_selflabel(root):
    env = cifar_env(root)
    cfg = scan_model(env)
    Path(cfg["selflabel_dir"]).mkdir(parents=True)
    Path(cfg["selflabel_checkpoint"]).write_bytes(Path(cfg["scan_model"]).read_bytes())
    return stage("selflabel.py", env, SELFLABEL)


def random_model_file(root):
    cifar_env(root)
    (root / "model.pth.tar").write_bytes(np.random.default_rng(0).bytes(5000))
    return [
        "eval.py",
        "--config_env",
        str(root / "env.yml"),
        "--config_exp",
        str(SCAN),
        "--model",
        str(root / "model.pth.tar"),
    ]


def code_pickle(root):
    cifar_env(root)
    evil_checkpoint(root / "model.pth.tar", root / "code_ran")
    return [
        "eval.py",
        "--config_env",
        str(root / "env.yml"),
        "--config_exp",
        str(SCAN),
        "--model",
        str(root / "model.pth.tar"),
    ]


def truncated_checkpoint(root):
    env = cifar_env(root)
    pretext_outputs(env)
    cfg = resumable_checkpoint(env, SCAN)
    data = Path(cfg["scan_checkpoint"]).read_bytes()
    Path(cfg["scan_checkpoint"]).write_bytes(data[: len(data) // 2])
    return stage("scan.py", env, SCAN)


def checkpoint_other_settings(root):
    env = cifar_env(root)
    pretext_outputs(env)
    resumable_checkpoint(env, SCAN, "epochs=2")  # unfinished
    return stage("scan.py", env, SCAN, "epochs=2", "num_heads=2")


def neighbours_other_dataset(root):
    env = cifar_env(root)
    cfg = pretext_outputs(env)
    np.save(cfg["topk_neighbors_train_path"], np.random.default_rng(0).integers(0, 60, size=(60, 21)))
    return stage("scan.py", env, SCAN)


def neighbours_corrupt(root):
    env = cifar_env(root)
    cfg = pretext_outputs(env)
    data = Path(cfg["topk_neighbors_train_path"]).read_bytes()
    Path(cfg["topk_neighbors_train_path"]).write_bytes(data[:200])
    return stage("scan.py", env, SCAN)


def selflabel_test_neighbours_truncated(root):
    env = cifar_env(root)
    pretext_outputs(env)
    cfg = scan_model(env)
    data = Path(cfg["topk_neighbors_val_path"]).read_bytes()
    Path(cfg["topk_neighbors_val_path"]).write_bytes(data[:200])
    return stage("selflabel.py", env, SELFLABEL)


def selflabel_test_neighbours_other_dataset(root):
    env = cifar_env(root)
    pretext_outputs(env)
    cfg = scan_model(env)
    np.save(cfg["topk_neighbors_val_path"], np.random.default_rng(0).integers(0, 40, size=(40, 6)))
    return stage("selflabel.py", env, SELFLABEL)


def with_overrides(*overrides):
    def build(root):
        return stage("simclr.py", cifar_env(root), PRETEXT, *overrides)

    return build


def out_of_order(root):
    return stage("selflabel.py", cifar_env(root), SELFLABEL)


def set_without_equals(root):
    return ["simclr.py", "--config_env", str(cifar_env(root)), "--config_exp", str(PRETEXT), "--set", "epochs", "2"]


def missing_config(root):
    return ["simclr.py", "--config_env", str(cifar_env(root)), "--config_exp", str(root / "simclr_mine.yml")]


def not_writable(root):
    results = read_only_folder(root / "results")
    ROWS_BY_NAME["output folder not writable"].unmount.append(results)
    return stage("simclr.py", cifar_env(root, results=results), PRETEXT)


def disk_full(root):
    results = small_disk(root / "results", "400k")
    ROWS_BY_NAME["disk full while saving a checkpoint"].unmount.append(results)
    env = cifar_env(root, results=results)
    resumable_checkpoint(env, PRETEXT, "epochs=2")  # 256 KB: a second one (with momentum) does not fit beside it
    return stage("simclr.py", env, PRETEXT, "epochs=2")


def diverging(root):
    env = cifar_env(root)
    overrides = ("epochs=2", "optimizer_kwargs.lr=1.0e+30")
    resumable_checkpoint(env, PRETEXT, *overrides)  # a good epoch-1 checkpoint that must survive
    return stage("simclr.py", env, PRETEXT, *overrides)


DOTALL = r"(?s)"
ROWS = [
    Row("dataset folder missing", missing_dataset, r"CIFAR-10: folder not found.*Looked in: .*Download the CIFAR-10"),
    Row(
        "dataset folder partial (test_batch missing)", partial_dataset, r"CIFAR-10: missing test_batch.*Expected layout"
    ),
    Row("corrupt dataset file (pickle)", corrupt_pickle, r"data_batch_1 is malformed: cannot unpickle it.*Download"),
    Row(
        "corrupt or truncated image in a folder dataset",
        broken_images,
        r"skipping 2 unreadable image file\(s\).*a/broken.png.*b/cut.png.*Fix or delete them",
        exit_code=0,
    ),
    Row("empty image folder", empty_folder, r"Folder dataset: no image files .* in .*photos"),
    Row(
        "a class folder with one image",
        one_image_class,
        r"class folder\(s\) lonely have no image in the test split.*at least 3 images",
        exit_code=0,
    ),
    Row(
        "more clusters than images",
        more_clusters,
        r"num_classes is 500, but the training split has only 100 images: lower num_classes",
    ),
    Row(
        "pretext model of another backbone",
        pretext_other_backbone,
        r"pretext model .*model.pth.tar does not fit the model built from the config.*shape mismatches: backbone",
    ),
    Row(
        "SCAN model with another number of clusters",
        scan_other_cluster_count,
        r"SCAN model .* does not fit .*cluster_head.0.weight: file \(10, 32\) vs model \(5, 32\)",
    ),
    Row(
        "a self-label (plain state dict) file where the SCAN file is expected",
        selflabel_file_for_scan,
        r"scan/model.pth.tar is not a SCAN model file \(a dict with 'model' and 'head'\)",
    ),
    Row(
        "a SCAN model file where the self-label checkpoint is expected",
        scan_file_for_selflabel,
        r"selflabel/checkpoint.pth.tar is not a resumable checkpoint.*--fresh",
    ),
    Row("a random file as a model", random_model_file, r"model.pth.tar: it is not a PyTorch checkpoint"),
    Row(
        "a pickle that would execute code",
        code_pickle,
        r"Refused to load .*model.pth.tar: it holds pickled Python objects, which could run code.*posix.system",
        absent=("code_ran",),
    ),
    Row(
        "truncated checkpoint.pth.tar",
        truncated_checkpoint,
        r"scan/checkpoint.pth.tar: the file is truncated or corrupt",
    ),
    Row(
        "checkpoint written with other model settings",
        checkpoint_other_settings,
        r"unfinished run with other inputs.*num_heads: 1 → 2.*--fresh .*nothing deleted.*cannot continue it",
    ),
    Row(
        "neighbour file of another dataset",
        neighbours_other_dataset,
        r"The neighbour file .*topk-train-neighbors.npy has shape \(60, 21\).*but the dataset has 100 images.*"
        r"mined on other data",
    ),
    Row("truncated neighbour file", neighbours_corrupt, r"Could not read the neighbour file .*truncated"),
    Row(
        "self-label: test neighbour file of another dataset",
        selflabel_test_neighbours_other_dataset,
        r"The neighbour file .*topk-val-neighbors.npy has shape \(40, 6\).*but the dataset has 50 images.*"
        r"mined on other data",
    ),
    Row(
        "self-label: truncated test neighbour file",
        selflabel_test_neighbours_truncated,
        r"Could not read the neighbour file .*topk-val-neighbors.npy: it is truncated",
    ),
    Row(
        "unknown config key",
        with_overrides("epoch=2"),
        r"Unknown config key 'epoch' in --set epoch\b.*Did you mean 'epochs'\?",
    ),
    Row(
        "mistyped nested config key",
        with_overrides("optimizer_kwargs.lrr=0.1"),
        r"Unknown config key 'lrr' in optimizer_kwargs\. Did you mean 'lr'\?",
    ),
    Row(
        "wrong value type (epochs: ten)",
        with_overrides("epochs=ten"),
        r"'epochs' must be a whole number such as 10, got 'ten'",
    ),
    Row("zero batch size", with_overrides("batch_size=0"), r"'batch_size' is 0, but it must be 1 or more"),
    Row("negative batch size", with_overrides("batch_size=-4"), r"'batch_size' is -4, but it must be 1 or more"),
    Row(
        "stages out of order (self-label before SCAN)",
        out_of_order,
        r"Missing input file\(s\):.*scan/model.pth.tar.*They are written by:.*python scan.py",
    ),
    Row("--set without =", set_without_equals, r"Override 'epochs' is not KEY=VALUE"),
    Row("config file missing", missing_config, r"Config file not found: .*simclr_mine.yml"),
    Row(
        "output folder not writable",
        not_writable,
        r"error: Could not write .*results.*: (Read-only file system|Permission denied)\..*Choose an output folder",
    ),
    Row(
        "disk full while saving a checkpoint",
        disk_full,
        r"Could not write .*checkpoint.pth.tar: No space left on device\. The previous checkpoint.pth.tar is "
        r"unchanged\. Free disk space",
    ),
    Row(
        "training diverges (learning rate 1e30)",
        diverging,
        r"The loss is nan at epoch 2, step \d+: training diverged.*optimizer_kwargs.lr.*amp=false",
    ),
]
ROWS_BY_NAME = {row.bad_input: row for row in ROWS}


def digest(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def run_row(row: Row, root: Path) -> dict:
    root.mkdir(parents=True)
    try:
        command = row.build(root)
    except pytest.skip.Exception as skip:
        return {"skip": str(skip)}
    before = digest(root)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        done = subprocess.run(
            [sys.executable, *command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
        )
        after = digest(root)
    finally:
        for mount in row.unmount:
            subprocess.run(["umount", str(mount)])
    return {"returncode": done.returncode, "output": done.stdout + done.stderr, "before": before, "after": after}


@pytest.fixture(scope="module")
def outcomes(request, tmp_path_factory) -> dict[str, dict]:
    """Run the rows selected in this session, three subprocesses at a time."""
    selected = {item.callspec.params["row"] for item in request.session.items if item.originalname == "test_bad_input"}
    base = tmp_path_factory.mktemp("bad_inputs")
    rows = [row for row in ROWS if row.bad_input in selected]
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = pool.map(lambda pair: run_row(pair[1], base / f"row{pair[0]}"), enumerate(rows))
        outcomes = {row.bad_input: result for row, result in zip(rows, results)}
    if os.environ.get("BAD_INPUT_LOG"):  # what the user saw, row by row: the source of docs/reliability.md's table
        tails = {name: outcome.get("output", "")[-1500:] for name, outcome in outcomes.items()}
        Path(os.environ["BAD_INPUT_LOG"]).write_text(json.dumps(tails, indent=2))
    return outcomes


@pytest.mark.parametrize("row", [row.bad_input for row in ROWS])
def test_bad_input(row, outcomes):
    spec, outcome = ROWS_BY_NAME[row], outcomes[row]
    if "skip" in outcome:
        pytest.skip(outcome["skip"])
    output = outcome["output"]
    assert "Traceback" not in output, output[-3000:]
    assert re.search(DOTALL + spec.expect, output), output[-3000:]
    assert outcome["returncode"] == spec.exit_code, output[-3000:]
    damaged = [name for name, sha in outcome["before"].items() if outcome["after"].get(name) != sha]
    assert not damaged, f"changed or removed by the run: {damaged}"
    if spec.exit_code:
        assert re.search(r"(?m)^error: ", output) or "Stopped" in output
    for name in spec.absent:
        assert name not in outcome["after"], name

"""Shared fixtures: tiny datasets in the real on-disk formats and an env file pointing at them."""

from __future__ import annotations

import os
import pickle
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

# The suite runs on the CPU, where resumes are bit-identical; SCAN_TEST_CUDA=1 lets tests see the GPUs
# (bench/gpu_check.sh). Set before anything initialises CUDA; subprocesses (torchrun, the stages) inherit it.
if os.environ.get("SCAN_TEST_CUDA") != "1":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
ROOT = Path(__file__).resolve().parents[1]
CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def free_port() -> int:
    """A TCP port free on this machine now, for a test's own process group."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def exit_skipping_teardown() -> None:
    """End a spawned worker whose results are on disk without the interpreter's teardown. There a gloo thread still
    releasing a finished collective's work needs the GIL for a Python object that work holds, and aborts the process
    ("terminate called without an active exception", pytorch/pytorch#190489): test_distributed's worker in 8 runs of
    222 here, test_sharded_eval's in about one of forty. Not seen at the stages' own exit under torchrun (0 of 40 runs
    of simclr.py, 0 of 30 of eval.py)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def class_pattern_images(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """N×size×size×3 uint8 images whose colour depends on the label, plus noise, so classes are separable."""
    palette = rng.integers(0, 256, size=(labels.max() + 1, 3))
    images = palette[labels][:, None, None, :] + rng.normal(0, 20, size=(len(labels), size, size, 3))
    return np.clip(images, 0, 255).astype(np.uint8)


def write_cifar10(root: Path, train_per_batch: int = 20, test: int = 50, seed: int = 0) -> Path:
    """`root/cifar-10-batches-py/` with five train batches, a test batch and batches.meta, as pickled by CIFAR."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in files:
        n = test if name == "test_batch" else train_per_batch
        labels = np.arange(n) % 10
        images = class_pattern_images(labels, 32, rng)
        data = images.transpose(0, 3, 1, 2).reshape(n, 3072)  # channel-planar rows, like the real files
        with open(folder / name, "wb") as handle:
            pickle.dump(
                {
                    "batch_label": name,
                    "labels": labels.tolist(),
                    "data": data,
                    "filenames": [f"{i}.png" for i in range(n)],
                },
                handle,
                protocol=2,
            )
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump(
            {"label_names": CIFAR10_NAMES, "num_cases_per_batch": train_per_batch, "num_vis": 3072}, handle, protocol=2
        )
    return folder


@pytest.fixture
def tiny_cifar_env(tmp_path: Path) -> Path:
    """An env.yml whose data_root holds a 100-train / 50-test CIFAR-10 copy; results go to tmp_path/results."""
    write_cifar10(tmp_path / "datasets" / "cifar-10")
    env = tmp_path / "env.yml"
    env.write_text(
        yaml.safe_dump(
            {"root_dir": str(tmp_path / "results"), "data_root": str(tmp_path / "datasets"), "download": False}
        )
    )
    return env


@pytest.fixture(scope="session")
def digits_pretext(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished pretext stage on the digits, trained once per test session for every test that only needs its
    files: `<returned>/digits/pretext/` holds the model, neighbours and cached features (SimCLR, one epoch, width 4,
    seed 0, `save_features: true`). Tests copy or link it and never write into it."""
    import warnings

    import simclr

    root = tmp_path_factory.mktemp("digits_pretext")
    overrides = ["epochs=1", "num_workers=0", "backbone_kwargs.base_width=4", "seed=0", "save_features=true"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        simclr.main(
            [
                "--config_env",
                str(ROOT / "configs/env.yml"),
                "--config_exp",
                str(ROOT / "configs/pretext/simclr_digits.yml"),
                "--set",
                f"root_dir={root}",
                *overrides,
            ]
        )
    return root


@pytest.fixture
def one_torch_thread():
    """torch in one thread for the test: on tiny tensors more threads only contend, many times slower on a
    shared CPU."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_random_pretext_outputs(env: Path, overrides: list[str], train_shape: tuple, val_shape: tuple) -> dict:
    """What scan.py needs without training SimCLR: a seeded random pretext model (simclr_cifar10.yml with
    `overrides`) and random neighbour files of the given shapes [rows, k + 1], indices below `rows`."""
    import torch

    from models import build_model
    from utils.checkpoint import save_atomic
    from utils.config import load_config

    cfg = load_config(env, ROOT / "configs/pretext/simclr_cifar10.yml", overrides)
    torch.manual_seed(0)
    save_atomic(build_model(cfg).state_dict(), cfg["pretext_model"])
    rng = np.random.default_rng(0)
    np.save(cfg["topk_neighbors_train_path"], rng.integers(0, train_shape[0], size=train_shape))
    np.save(cfg["topk_neighbors_val_path"], rng.integers(0, val_shape[0], size=val_shape))
    return cfg


# A stage's main() on 20 tiny images in about a second: the fast tier's stage runs.
TINY = ["num_workers=0", "backbone_kwargs.base_width=2", "seed=0", "batch_size=10", "transformation_kwargs.crop_size=8"]


@pytest.fixture
def tiny_env(tmp_path, monkeypatch, one_torch_thread):
    """An env.yml over a 20-train / 10-test CIFAR-10 copy; curves.png and confusion matrices are not drawn, and
    torch computes in one thread (conftest.one_torch_thread)."""
    import utils.history
    from engine import result_files
    from tests.conftest import write_cifar10

    write_cifar10(tmp_path / "datasets" / "cifar-10", train_per_batch=4, test=10)
    env = tmp_path / "env.yml"
    env.write_text(f"root_dir: {tmp_path / 'results'}\ndata_root: {tmp_path / 'datasets'}\ndownload: false\n")
    monkeypatch.setattr(utils.history, "plot_history", lambda records, title="": b"")
    monkeypatch.setattr(result_files, "plot_confusion_matrix", lambda *args, **kwargs: None)
    return env


def tiny_args(env, config: str, *overrides: str) -> list[str]:
    return ["--config_env", str(env), "--config_exp", str(ROOT / "configs" / config), "--set", *TINY, *overrides]

"""Training throughput of one stage: the faithful path and the fast path side by side, on synthetic data.

    .venv/bin/python bench/throughput.py --config_exp configs/pretext/simclr_cifar10.yml [--set batch_size=256 ...]

Random images shaped like the config's dataset (CIFAR 32×32, STL-10 96×96, digits, ImageNet-like images with
a shorter side of 256 and varying widths) stand in for the data, so nothing has to be downloaded; they are read
the way the real dataset would be (in memory, or decoded by workers). The stage's own ``train_one_epoch`` runs
``--steps`` steps (after ``--warmup`` untimed ones) for each path:

* faithful: ``augmentation_backend: pil`` (PIL in ``num_workers`` DataLoader workers), fp32, no channels_last;
* fast: ``augmentation_backend: batched``, ``amp`` and ``channels_last`` auto (on with CUDA), ``compile`` as set.

One markdown table comes out: training images per second (each image gives two views), the same for the data
and augmentation alone, the epoch time this implies for the real dataset, peak GPU memory, and for the pretext
stage the time of one kNN monitor and of neighbour mining over ``--eval_images`` images.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import itertools
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import scan  # noqa: E402
import selflabel  # noqa: E402
import simclr  # noqa: E402
from data.base import ImageDataset  # noqa: E402
from data.stage_batches import eval_batches, train_batches  # noqa: E402
from engine import knn  # noqa: E402
from engine.inference import run_model  # noqa: E402
from engine.knn import mine_nearest_neighbors  # noqa: E402
from losses import ConfidenceBasedCE, SCANLoss, SimCLRLoss  # noqa: E402
from models import build_model  # noqa: E402
from utils.config import add_config_arguments, load_config  # noqa: E402
from utils.optim import build_optimizer  # noqa: E402
from utils.runtime import init_runtime, resolve_fast_path, seed_everything, unwrap, wrap_model  # noqa: E402

PATHS = {
    "faithful": {"augmentation_backend": "pil", "amp": False, "channels_last": False, "compile": False},
    "fast": {"augmentation_backend": "batched", "amp": "auto", "channels_last": "auto"},
}
# Training images per epoch of the real datasets (pretext split first), for the epoch-time column.
TRAIN_IMAGES = {"cifar-10": 50_000, "cifar-20": 50_000, "digits": 1_437, "stl-10": 5_000, "stl-10+unlabeled": 105_000}


class SyntheticImages(ImageDataset):
    """Random uint8 images: held in an ``images`` array when they share a size, else drawn per index."""

    def __init__(self, count: int, height: int, width: int, varying: bool, num_classes: int, seed: int = 0) -> None:
        super().__init__()
        rng = np.random.default_rng(seed)
        self.height, self.width, self.seed = height, width, seed
        self.targets = rng.integers(0, num_classes, count).tolist()
        self.classes = [str(c) for c in range(num_classes)]
        if varying:  # ImageNet-like: shorter side fixed, the other up to 4/3 longer
            self.widths = rng.integers(width, width * 4 // 3 + 1, count)
        else:
            self.images = rng.integers(0, 256, (count, height, width, 3), dtype=np.uint8)

    def load_image(self, index: int) -> Image.Image:
        if hasattr(self, "images"):
            return Image.fromarray(self.images[index])
        rng = np.random.default_rng(self.seed * 1_000_003 + index)
        return Image.fromarray(rng.integers(0, 256, (self.height, self.widths[index], 3), dtype=np.uint8))


def quiet_tqdm(*args, **kwargs):
    """tqdm without output: the stages' progress bars would interleave with the table."""
    kwargs["disable"] = True
    return tqdm(*args, **kwargs)


def image_format(cfg: dict) -> tuple[int, int, bool]:
    """(height, width, varying sizes) of the config's training images as its reader delivers them."""
    name, kwargs = cfg["train_db_name"], cfg.get("dataset_kwargs") or {}
    if name in ("cifar-10", "cifar-20"):
        return 32, 32, False
    if name == "stl-10":
        return 96, 96, False
    if name == "digits":
        size = kwargs.get("image_size", 16)
        return size, size, False
    side = kwargs.get("image_size") or 256  # ImageNet (resized to 256) and folders of your own images
    return side, side, True


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class FirstBatches:
    """The next ``count`` batches of the iterator ``batches`` (a stage's loop reads it as one short epoch)."""

    def __init__(self, batches, count: int) -> None:
        self.batches, self.count = batches, count

    def __len__(self) -> int:
        return self.count

    def __iter__(self):
        return itertools.islice(iter(self.batches), self.count)


def stage_pieces(cfg: dict, dataset, runtime):
    """The model, loss, optimizer, batches and one-epoch function of the config's stage."""
    model = wrap_model(build_model(cfg), runtime)
    optimizer = build_optimizer(cfg, model)
    setup = cfg["setup"]
    if setup == "simclr":
        batches = train_batches(cfg, dataset, runtime, views=("train", "train"))
        criterion = SimCLRLoss(**cfg["criterion_kwargs"])
        return model, batches, lambda b: simclr.train_one_epoch(b, model, criterion, optimizer, runtime, cfg["amp"], 0)
    if setup == "scan":
        n, k = len(dataset), cfg["num_neighbors"] + 1
        neighbors = np.stack([np.arange(n)] + [np.random.default_rng(c).permutation(n) for c in range(1, k)], axis=1)
        batches = train_batches(cfg, dataset, runtime, neighbors=neighbors)
        criterion = SCANLoss(**cfg["criterion_kwargs"])
        return model, batches, lambda b: scan.train_one_epoch(b, model, criterion, optimizer, runtime, cfg, 0)
    if setup == "selflabel":
        batches = train_batches(cfg, dataset, runtime, views=("val", "train"))
        # A fresh model is confident about nothing; threshold 0 keeps every step a full training step.
        criterion = ConfidenceBasedCE(0.0, **cfg["criterion_kwargs"])
        return (
            model,
            batches,
            lambda b: selflabel.train_one_epoch(b, model, criterion, optimizer, None, runtime, cfg["amp"], 0),
        )
    raise SystemExit(f"setup '{setup}' has no training loop to time: use a pretext (simclr), scan or selflabel config.")


def timed(function, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    function()
    synchronize(device)
    return time.perf_counter() - start


def measure(cfg: dict, runtime, args) -> dict:
    """One path: training and augmentation throughput, peak memory, kNN monitor and mining times."""
    seed_everything(0)
    height, width, varying = image_format(cfg)
    count = (args.warmup + 2 * args.steps) * cfg["batch_size"]
    dataset = SyntheticImages(count, height, width, varying, cfg["num_classes"])
    if runtime.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(runtime.device)
    model, batches, train_one_epoch = stage_pieces(cfg, dataset, runtime)
    # One pass over the data for the warm-up and both timings: the DataLoader workers start once, before the
    # warm-up, not inside a timed window (which would understate the faithful path's rate).
    stream = iter(batches)
    train_one_epoch(FirstBatches(stream, args.warmup))
    seconds = timed(lambda: train_one_epoch(FirstBatches(stream, args.steps)), runtime.device)
    augment_seconds = timed(lambda: [None for _ in FirstBatches(stream, args.steps)], runtime.device)
    images = args.steps * cfg["batch_size"]
    result = {
        "images/s": images / seconds,
        "augment images/s": images / augment_seconds,
        "peak GPU memory (GiB)": torch.cuda.max_memory_allocated(runtime.device) / 2**30
        if runtime.device.type == "cuda"
        else "skipped on CPU",
    }
    if cfg["setup"] == "simclr":
        bank = SyntheticImages(args.eval_images, height, width, varying, cfg["num_classes"], seed=1)
        queries = SyntheticImages(max(1, args.eval_images // 5), height, width, varying, cfg["num_classes"], seed=2)
        bank_batches, query_batches = eval_batches(cfg, bank, runtime), eval_batches(cfg, queries, runtime)
        monitor = lambda: simclr.knn_monitor(unwrap(model), bank_batches, query_batches, cfg, runtime.device)  # noqa: E731
        result["kNN monitor (s)"] = timed(monitor, runtime.device)

        def mining():
            outputs = run_model(unwrap(model), bank_batches, runtime.device)
            features, targets = outputs.features.numpy(), outputs.targets.numpy()
            mine_nearest_neighbors(features, targets, cfg["topk_neighbors_train"], runtime.device)

        result["mining (s)"] = timed(mining, runtime.device)
    return result


def epoch_images(cfg: dict) -> int | None:
    name = cfg["train_db_name"]
    if name == "stl-10" and cfg["setup"] == "simclr" and cfg["train_split"] == "train+unlabeled":
        name = "stl-10+unlabeled"
    return TRAIN_IMAGES.get(name)


def number(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"


def table(cfg: dict, rows: dict[str, dict], settings: dict[str, dict], device: str) -> str:
    per_epoch = epoch_images(cfg)
    columns = ["images/s", "augment images/s", "peak GPU memory (GiB)", "kNN monitor (s)", "mining (s)"]
    header = ["path", "backend", "amp", "channels_last", "compile", *columns]
    if per_epoch:
        header.insert(7, f"epoch of {per_epoch:,} (s)")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for path, result in rows.items():
        s = settings[path]
        cells = [path, s["augmentation_backend"], str(s["amp"]), str(s["channels_last"]), str(s["compile"])]
        values = [result.get(column) for column in columns]
        cells += [value if isinstance(value, str) else "-" if value is None else number(value) for value in values]
        if per_epoch:
            cells.insert(7, f"{per_epoch / result['images/s']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    speedup = rows["fast"]["images/s"] / rows["faithful"]["images/s"] if len(rows) == 2 else None
    title = f"{cfg['setup']} on {cfg['train_db_name']} ({device}), batch {cfg['batch_size']}"
    note = "" if speedup is None else f"\n\nfast / faithful: {speedup:.2f}× the training images per second"
    if torch.cuda.is_available() and "faithful" in rows and torch.backends.cudnn.allow_tf32:
        note += (
            "\n\nThe faithful path's convolutions run in TF32 (cuDNN's default, torch.backends.cudnn.allow_tf32), "
            "as a real run with amp: false does; its matrix products in full float32."
        )
    return f"{title}\n\n" + "\n".join(lines) + note


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_arguments(parser, env_required=False)
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per path")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (workers, cuDNN autotuning)")
    parser.add_argument("--eval_images", type=int, default=5000, help="memory bank size for the kNN/mining times")
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS))
    args = parser.parse_args(argv)
    for module in (simclr, scan, selflabel, knn):
        module.tqdm = quiet_tqdm
    base = load_config(args.config_env, args.config_exp, args.overrides)
    runtime = init_runtime()

    rows, settings = {}, {}
    for path in args.paths:
        cfg = copy.deepcopy(base)
        cfg.update(PATHS[path])
        path_runtime = dataclasses.replace(runtime)
        resolve_fast_path(cfg, path_runtime)
        settings[path] = {key: cfg[key] for key in ("augmentation_backend", "amp", "channels_last", "compile")}
        rows[path] = measure(cfg, path_runtime, args)
    name = torch.cuda.get_device_name(runtime.device) if runtime.device.type == "cuda" else "CPU"
    threads = f", {torch.get_num_threads()} torch threads, num_workers {base['num_workers']}"
    report = table(base, rows, settings, name + threads)
    print(report, flush=True)
    return report


if __name__ == "__main__":
    main()

"""Speed of SCAN's head-only training: on cached features vs on images (the paper's augmented path).

    python bench/cached_heads_bench.py --output results/cached_heads_bench.json [--threads 1]

Both paths run scan.py's own train_one_epoch with the CIFAR-10 SCAN config (ResNet-18, 512-d features,
batch 128, Adam) switched to `update_cluster_head_only: true`:

- cached features: one epoch over 50,000 synthetic float16 features with 20 random neighbours each
  (CachedPairLoader, as `head_input: cached_features` uses it);
- images: a few batches of NeighborsDataset over a CIFAR-10 copy in the real on-disk format (random pixels),
  with the config's strong augmentation, decoded in the main process (num_workers 0) and sent through the
  frozen backbone, as `head_input: images` does.

Prints and saves the time per (anchor, neighbour) pair of each and their ratio. The image path is timed on a
few batches only (its per-pair time does not depend on the dataset size); the first batch is a warm-up.
"""

from __future__ import annotations

import argparse
import itertools
import pickle
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import scan  # noqa: E402
from data.augment import get_train_transformations  # noqa: E402
from data.cached_features import CachedPairLoader, CachedSplit  # noqa: E402
from data.dataloaders import train_loader  # noqa: E402
from data.pair_datasets import NeighborsDataset  # noqa: E402
from data.registry import get_train_dataset  # noqa: E402
from losses import SCANLoss  # noqa: E402
from models import build_model  # noqa: E402
from utils.config import load_config  # noqa: E402
from utils.files import write_json  # noqa: E402
from utils.optim import build_optimizer  # noqa: E402
from utils.runtime import init_runtime, resolve_fast_path  # noqa: E402

CONFIG = ROOT / "configs/scan/scan_cifar10.yml"


class FirstBatches:
    """The first `count` batches of a loader, so one epoch of train_one_epoch is a short timed run."""

    def __init__(self, loader, count: int) -> None:
        self.loader, self.count, self.batch_size = loader, count, loader.batch_size

    def __len__(self) -> int:
        return self.count

    def __iter__(self):
        return itertools.islice(iter(self.loader), self.count)


def write_cifar10_copy(root: Path, per_batch: int) -> None:
    """<root>/cifar-10/cifar-10-batches-py with random pixels, pickled as the real files are."""
    folder = root / "cifar-10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        with open(folder / name, "wb") as handle:
            pickle.dump({"data": data, "labels": (np.arange(per_batch) % 10).tolist()}, handle)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, handle)


def timed_epoch(loader, model, cfg: dict, runtime) -> float:
    """Seconds per (anchor, neighbour) pair of one pass of scan.train_one_epoch over `loader`."""
    criterion = SCANLoss(**cfg["criterion_kwargs"])
    optimizer = build_optimizer(cfg, model)
    start = time.perf_counter()
    scan.train_one_epoch(loader, model, criterion, optimizer, runtime, cfg, epoch=0)
    return (time.perf_counter() - start) / (len(loader) * loader.batch_size)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="Head-only SCAN: cached features vs images")
    parser.add_argument("--output", default="results/cached_heads_bench.json")
    parser.add_argument("--num_features", type=int, default=50_000)
    parser.add_argument("--image_batches", type=int, default=4, help="timed image batches (after one warm-up)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    runtime = init_runtime()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_cifar10_copy(tmp / "datasets", per_batch=200)
        env = tmp / "env.yml"
        env.write_text(f"root_dir: {tmp / 'results'}\ndata_root: {tmp / 'datasets'}\ndownload: false\n")
        overrides = ["update_cluster_head_only=true", "num_workers=0", "seed=0", "augmentation_backend=pil"]
        cfg = load_config(env, CONFIG, overrides)
        resolve_fast_path(cfg, runtime)  # amp / channels_last "auto" → what this device does (CPU: off)
        model = build_model(cfg).to(runtime.device)
        torch.manual_seed(0)

        # Cached features: the whole of a CIFAR-sized train split.
        n, dim = args.num_features, model.backbone.out_dim
        generator = torch.Generator().manual_seed(0)
        split = CachedSplit(
            torch.randn(n, dim, generator=generator).abs().half(),
            torch.zeros(n, dtype=torch.long),
            torch.randint(0, n, (n, cfg["num_neighbors"] + 1), generator=generator),
            [],
        )
        cached_cfg = {**cfg, "head_input": "cached_features"}
        cached_loader = CachedPairLoader(split, cfg["batch_size"], runtime.device)
        timed_epoch(FirstBatches(cached_loader, 5), model, cached_cfg, runtime)  # warm-up
        cached_seconds = timed_epoch(cached_loader, model, cached_cfg, runtime)

        # Images: the paper's head-only path (strong augmentation, frozen backbone forward on both views).
        dataset = get_train_dataset(cfg, get_train_transformations(cfg))
        neighbors = np.random.default_rng(0).integers(0, len(dataset), size=(len(dataset), cfg["num_neighbors"] + 1))
        loader = train_loader(NeighborsDataset(dataset, neighbors, cfg["num_neighbors"]), cfg["batch_size"], 0, runtime)
        images_cfg = {**cfg, "head_input": "images"}
        timed_epoch(FirstBatches(loader, 1), model, images_cfg, runtime)  # warm-up
        image_seconds = timed_epoch(FirstBatches(loader, args.image_batches), model, images_cfg, runtime)

    result = {
        "device": str(runtime.device),
        "threads": torch.get_num_threads(),
        "config": str(CONFIG.relative_to(ROOT)),
        "cached_features": {"pairs": len(cached_loader) * cached_loader.batch_size, "seconds_per_pair": cached_seconds},
        "images": {"pairs": args.image_batches * cfg["batch_size"], "seconds_per_pair": image_seconds},
        "cached_epoch_seconds_50k": cached_seconds * n,
        "image_epoch_seconds_50k": image_seconds * n,
        "speedup": image_seconds / cached_seconds,
    }
    write_json(result, args.output)
    print(
        f"Head-only SCAN on {runtime.device} ({torch.get_num_threads()} thread(s)):\n"
        f"  cached features: {1e6 * cached_seconds:.2f} µs per pair ({cached_seconds * n:.2f} s per epoch of {n})\n"
        f"  images:          {1e3 * image_seconds:.2f} ms per pair "
        f"({image_seconds * n / 60:.1f} min per epoch of {n})\n"
        f"  speed-up: {result['speedup']:.0f}×   saved {args.output}",
        flush=True,
    )
    return result


if __name__ == "__main__":
    main()

"""Big folders: how long a folder dataset takes to list and split, what it holds in memory, and how JPEG
decoding scales with DataLoader workers.

    python bench/folder_bench.py [--images 20000] [--size 64] [--workers 0 1 2 4]

Generates `--images` small JPEGs (a labeled folder of 10 classes) in a temporary directory, then prints:
  1. the first construction (walk + header check of every file + split written) and a second one (split
     read back), with the Python heap each dataset object holds (tracemalloc),
  2. images/s of decoding through a DataLoader (the worker path the folder data keeps) for each worker count.
Extrapolating the per-image memory to a million files is printed too; nothing here needs a GPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data.folder import FolderDataset  # noqa: E402


def write_jpegs(root: Path, count: int, size: int) -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    for index in range(count):
        folder = root / f"class_{index % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.roll(base, index, axis=1)
        Image.fromarray(pixels).save(folder / f"{index:07d}.jpg", quality=90)


def construct(root: Path, split_file: Path) -> tuple[FolderDataset, float, int]:
    tracemalloc.start()
    start = time.perf_counter()
    dataset = FolderDataset(root, split="train", split_file=split_file)
    seconds = time.perf_counter() - start
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return dataset, seconds, held


def to_uint8_tensor(sample: dict) -> dict:
    sample["image"] = torch.from_numpy(np.asarray(sample["image"])).permute(2, 0, 1)
    return sample


def decode_rate(dataset: FolderDataset, workers: int, batch_size: int = 256) -> float:
    dataset.transform = None
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, num_workers=workers, collate_fn=lambda batch: len(batch)
    )
    start = time.perf_counter()
    count = sum(loader)
    return count / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Folder dataset listing, memory and JPEG decode throughput")
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--size", type=int, default=64, help="side of the generated JPEGs")
    cores = len(os.sched_getaffinity(0))
    parser.add_argument("--workers", type=int, nargs="+", default=sorted({0, 1, 2, cores}))
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        root, split_file = Path(tmp) / "images", Path(tmp) / "split.json"
        start = time.perf_counter()
        write_jpegs(root, args.images, args.size)
        print(
            f"Wrote {args.images} JPEGs of {args.size}x{args.size} in {time.perf_counter() - start:.1f} s", flush=True
        )

        dataset, first, held_first = construct(root, split_file)
        _, second, held_second = construct(root, split_file)
        per_image = held_second / len(dataset)
        print(f"\n{'step':<44} {'seconds':>8} {'heap MB':>8}")
        print(f"{'first construction (walk, check, split)':<44} {first:>8.2f} {held_first / 2**20:>8.1f}")
        print(f"{'second construction (split read back)':<44} {second:>8.2f} {held_second / 2**20:>8.1f}")
        print(f"Held per image: {per_image:.0f} bytes -> about {per_image * 1e6 / 2**20:.0f} MB for a million images")

        print(f"\n{'DataLoader workers':<20} {'images/s':>10}   (decode only, {args.size}x{args.size} JPEG)")
        for workers in args.workers:
            print(f"{workers:<20} {decode_rate(dataset, workers):>10.0f}", flush=True)
        print(f"(cores available: {cores}; 0 workers = decoding in the main process)")


if __name__ == "__main__":
    main()

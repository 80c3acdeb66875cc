"""Time the Hungarian evaluation at ImageNet-1k scale (K = 1000 clusters, N = 50,000 images).

    .venv/bin/python bench/hungarian_bench.py

The count matrix is built in one bincount pass; a K×K loop over the data (the original's
approach) takes about 70 s at this size on 2 cores, so it is timed only with --naive.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from engine.metrics import cluster_metrics, count_matrix  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--naive", action="store_true", help="also time the K×K loop for comparison")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    targets = rng.integers(0, args.clusters, args.samples)
    noisy = rng.random(args.samples) < 0.4  # 60 % of images in their "true" (permuted) cluster
    predictions = np.where(noisy, rng.integers(0, args.clusters, args.samples), rng.permutation(args.clusters)[targets])
    logits = torch.randn(args.samples, args.clusters)
    logits[torch.arange(args.samples), torch.from_numpy(predictions)] += 10
    probabilities = logits.softmax(dim=1)

    start = time.perf_counter()
    counts = count_matrix(predictions, targets, args.clusters, args.clusters)
    print(f"count matrix (one pass):        {time.perf_counter() - start:8.3f} s")
    start = time.perf_counter()
    metrics = cluster_metrics(torch.from_numpy(predictions), probabilities, torch.from_numpy(targets))
    print(f"all metrics (match, NMI, ...):  {time.perf_counter() - start:8.3f} s   ACC {metrics['ACC']:.4f}")
    if args.naive:
        start = time.perf_counter()
        naive = np.zeros((args.clusters, args.clusters))
        for c1 in range(args.clusters):
            for c2 in range(args.clusters):
                naive[c1, c2] = ((predictions == c1) & (targets == c2)).sum()
        print(f"count matrix (K×K loop):        {time.perf_counter() - start:8.3f} s")
        assert np.array_equal(naive, counts)


if __name__ == "__main__":
    main()

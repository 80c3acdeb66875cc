"""Smoke test of bench/throughput.py: each stage's table has both paths with their settings and numbers.

Tiny models and a few steps, so this checks the wiring (synthetic data in the config's format, both backends,
the stage loops, the kNN and mining timings), not speed: docs/speed.md holds measured figures.
"""

from __future__ import annotations

import argparse
import re

import pytest
import torch

from bench import throughput
from utils.runtime import Runtime

TINY = ["batch_size=8", "backbone_kwargs.base_width=2", "num_workers=0"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "config", ["pretext/simclr_cifar10.yml", "scan/scan_cifar10.yml", "selflabel/selflabel_cifar10.yml"]
)
def test_table_has_both_paths(config):
    argv = ["--config_exp", f"configs/{config}", "--steps", "2", "--warmup", "1", "--eval_images", "120"]
    report = throughput.main([*argv, "--set", *TINY])
    rows = {line.split("|")[1].strip(): line for line in report.splitlines() if line.startswith("| f")}
    assert set(rows) == {"faithful", "fast"}
    assert "| pil | False | False | False |" in rows["faithful"] and "| batched |" in rows["fast"]
    for row in rows.values():  # the last two cells: kNN monitor and mining, timed for the pretext stage only
        knn_seconds, mining_seconds = (cell.strip() for cell in row.split("|")[-3:-1])
        timed = config.startswith("pretext")
        assert (knn_seconds != "-", mining_seconds != "-") == (timed, timed)
    assert re.search(r"fast / faithful: \d+\.\d\d×", report)


@pytest.mark.parametrize("warmup, steps", [(3, 5), (1, 2)])
def test_the_workers_start_once_before_the_warmup_not_in_a_timed_window(monkeypatch, warmup, steps):
    """One pass over the data feeds the warm-up, the timed training and the timed augmentation, in that order."""
    passes, trained = [], []

    class Batches:  # a DataLoader: each iter() starts its workers anew
        def __init__(self, count: int) -> None:
            self.count = count

        def __iter__(self):
            passes.append(self.count)
            return iter(range(self.count))

    def stage_pieces(cfg, dataset, runtime):
        return None, Batches(len(dataset) // cfg["batch_size"]), lambda batches: trained.append(list(batches))

    monkeypatch.setattr(throughput, "stage_pieces", stage_pieces)
    cfg = {"setup": "scan", "train_db_name": "cifar-10", "num_classes": 10, "batch_size": 4}
    args = argparse.Namespace(warmup=warmup, steps=steps, eval_images=0)
    result = throughput.measure(cfg, Runtime(device=torch.device("cpu")), args)
    assert passes == [warmup + 2 * steps]  # one iterator, with a batch for every step
    assert trained == [list(range(warmup)), list(range(warmup, warmup + steps))]
    assert result["images/s"] > 0 and result["augment images/s"] > 0
    assert result["peak GPU memory (GiB)"] == "skipped on CPU"

"""Smoke test of bench/throughput.py: each stage's table has both paths with their settings and numbers.

Tiny models and a few steps, so this checks the wiring (synthetic data in the config's format, both backends,
the stage loops, the kNN and mining timings), not speed: docs/speed.md holds measured figures.
"""

from __future__ import annotations

import re

import pytest

from bench import throughput

pytestmark = pytest.mark.slow

TINY = ["batch_size=8", "backbone_kwargs.base_width=2", "num_workers=0"]


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

"""Smoke test of `make demo`: bench/digits_demo.py runs all four stages on the digits and writes its summary.

A few epochs only, so this checks the wiring (configs, stage hand-offs, eval with prototypes, the summary
files), not the quality target; bench/RESULTS.md holds the measured numbers of the full demo.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from PIL import Image

from bench import digits_demo

pytestmark = pytest.mark.slow

SHORT = ["epochs=1", "num_workers=0", "backbone_kwargs.base_width=8"]
STAGE_FILES = {
    "pretext": (
        "checkpoint.pth.tar",
        "model.pth.tar",
        "topk-train-neighbors.npy",
        "topk-val-neighbors.npy",
        "metrics.json",
    ),
    "scan": ("checkpoint.pth.tar", "model.pth.tar", "confusion_matrix.png", "metrics.json"),
    "selflabel": ("checkpoint.pth.tar", "model.pth.tar", "confusion_matrix.png", "metrics.json"),
    "eval": ("confusion_matrix.png", "prototypes.png", "predictions.csv", "metrics.json"),
}


def assert_unit_interval(value: float, what: str) -> None:
    assert isinstance(value, float) and 0.0 <= value <= 1.0, f"{what} = {value!r}"


def test_demo_runs_every_stage_and_writes_a_summary(tmp_path: Path) -> None:
    output_dir = tmp_path / "demo"
    summary = digits_demo.main(["--seeds", "0", "--output_dir", str(output_dir), "--set", *SHORT])

    results = output_dir / "seed_0" / "digits"
    for stage, names in STAGE_FILES.items():
        for name in names:
            assert (results / stage / name).is_file(), f"{stage}/{name}"
    for stage in ("scan", "selflabel", "eval"):
        Image.open(results / stage / "confusion_matrix.png").verify()
        metrics = json.loads((results / stage / "metrics.json").read_text())
        for key in digits_demo.METRICS:
            assert_unit_interval(metrics[key], f"{stage} {key}")
    Image.open(results / "eval" / "prototypes.png").verify()

    saved = json.loads((output_dir / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    assert saved["seeds"] == [0] and len(saved["runs"]) == 1
    for step in digits_demo.STEPS:
        for key in digits_demo.METRICS:
            assert_unit_interval(saved[step][key]["mean"], f"{step} {key} mean")
            assert saved[step][key]["std"] == 0.0
    run = saved["runs"][0]
    assert run["eval"]["ACC"] == pytest.approx(run["selflabel"]["ACC"])
    assert math.isfinite(run["wall_seconds"]) and run["wall_seconds"] > 0
    markdown = (output_dir / "summary.md").read_text()
    assert "| selflabel |" in markdown and "bench/digits_demo.py" in markdown

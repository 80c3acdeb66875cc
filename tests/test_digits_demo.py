"""Short run of `make demo`: bench/digits_demo.py runs all four stages on the digits, writes its summary, and
clusters well above chance.

Ten epochs per stage at base width 8 (about 1.5 minutes on 2 cores), so this checks the wiring (configs, stage
hand-offs, eval with prototypes, the summary files) and that the method still learns. The quality floors below
were measured, not guessed: the same short run over seeds 0, 1, 2 (2-core CPU, torch 2.14.1) gave kNN top-1
0.75 / 0.87 / 0.76, train-neighbour accuracy 0.68 / 0.83 / 0.70, SCAN ACC 0.64 / 0.81 / 0.73 and self-label
ACC 0.62 / 0.86 / 0.74 (chance: 0.10). The floors sit a little under the worst seed, so that thread-count
rounding cannot fail the test while a bug that stops any stage from learning (ACC near 0.1–0.3) does.
Those were measured with one SCAN head and no pretext warm-up; with the ten heads and the 10-epoch warm-up of the
digits configs now, seed 0's short run gave kNN 0.86, train-neighbour accuracy 0.84, SCAN ACC 0.68 and self-label
ACC 0.73 (AMD EPYC, 2026-12-06; other seeds not re-measured), and 0.73 again with the last 5 of its 10 self-label
epochs averaged (`average_epochs: 5`, 2026-12-07). bench/RESULTS.md holds the numbers of the full demo.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from PIL import Image

from bench import digits_demo

SHORT = ["epochs=10", "num_workers=0", "backbone_kwargs.base_width=8"]
FLOORS = {
    ("pretext", "knn_top1"): 0.65,
    ("pretext", "train_neighbor_acc"): 0.55,
    ("scan", "ACC"): 0.50,
    ("selflabel", "ACC"): 0.50,
    ("selflabel", "NMI"): 0.55,
}
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


@pytest.mark.slow
@pytest.mark.core  # the end-to-end run of all three stages plus eval that `make test` keeps
def test_demo_runs_every_stage_and_writes_a_summary(tmp_path: Path, capsys) -> None:
    output_dir = tmp_path / "demo"
    summary = digits_demo.main(["--seeds", "0", "--output_dir", str(output_dir), "--set", *SHORT])
    printed = capsys.readouterr().out

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
    assert run["cpu_seconds"] == pytest.approx(sum(run["stage_cpu_seconds"].values())) and run["cpu_seconds"] > 0
    for (step, key), floor in FLOORS.items():
        assert run[step][key] >= floor, f"{step} {key} = {run[step][key]:.3f} fell below the measured floor {floor}"
    markdown = (output_dir / "summary.md").read_text()
    assert "| selflabel |" in markdown and "bench/digits_demo.py" in markdown
    # The last lines point at the report eval.py wrote, with a command that opens it.
    report = results / "eval" / "report.html"
    assert report.is_file()
    assert printed.rstrip().splitlines()[-2:] == digits_demo.report_lines(output_dir, [0])
    assert str(report) in printed


def test_report_lines_name_each_seeds_report_and_the_platforms_opener(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    inside = digits_demo.report_lines(tmp_path / "results" / "demo", [0, 2], platform="linux")
    assert inside[0] == "Report of seed 0: results/demo/seed_0/digits/eval/report.html"
    assert inside[1].startswith("  open it in a browser: xdg-open results/demo/seed_0/digits/eval/report.html ")
    assert f"file://{tmp_path}/results/demo/seed_0/digits/eval/report.html" in inside[1]
    assert inside[2] == "Report of seed 2: results/demo/seed_2/digits/eval/report.html"
    outside = digits_demo.report_lines(Path("/elsewhere/demo"), [1], platform="darwin")
    assert outside[0] == "Report of seed 1: /elsewhere/demo/seed_1/digits/eval/report.html"
    assert outside[1].startswith("  open it in a browser: open /elsewhere/demo/seed_1/digits/eval/report.html ")

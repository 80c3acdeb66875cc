"""Smoke test of bench/selflabel_study.py on a one-epoch digits pretext run: wiring and table, not quality."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import selflabel_study

pytestmark = pytest.mark.slow

SHORT = ["epochs=1", "num_workers=0", "backbone_kwargs.base_width=4"]


def test_study_runs_scan_per_head_count_and_selflabel_per_variant(tmp_path: Path, digits_pretext: Path) -> None:
    pretext_root = tmp_path / "pretext_runs"
    pretext_root.mkdir()
    (pretext_root / "seed_0").symlink_to(digits_pretext, target_is_directory=True)
    out = tmp_path / "study"
    study = selflabel_study.main(
        [
            "--pretext_root",
            str(pretext_root),
            "--seeds",
            "0",
            "--output_dir",
            str(out),
            "--heads",
            "1",
            "2",
            "--variants",
            "threshold@0.99",
            "per_cluster@0.99",
            "--set",
            *SHORT,
        ]
    )
    assert json.loads((out / "study.json").read_text()) == json.loads(json.dumps(study))
    assert set(study["scan"]) == {"1", "2"} and study["selflabel_heads"] == [1]
    for variant in ("threshold@0.99", "per_cluster@0.99"):
        run = study["selflabel"]["1"][variant]["0"]
        assert [record["epoch"] for record in run["history"]] == [0, 1]
        assert run["scan"]["ACC"] == pytest.approx(study["scan"]["1"]["0"]["ACC"])  # epoch 0 is that SCAN model
        assert run["best"]["ACC"] == pytest.approx(run["final_ACC"])  # the written model is the kept epoch
        assert run["last"]["epoch"] == 1 and run["best"]["epoch"] in (0, 1)
    markdown = (out / "study.md").read_text()
    assert "| 2 |" in markdown and "| 1 | per_cluster@0.99 | best epoch |" in markdown

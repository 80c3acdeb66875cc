"""bench/selflabel_study.py: the keep rules on a hand-made history, and a smoke test on a one-epoch digits pretext
run (wiring and tables, not quality)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import selflabel_study

SHORT = ["epochs=1", "num_workers=0", "backbone_kwargs.base_width=4"]


def epoch(number: int, acc: float, score: float, intact: bool = True, changed: float | None = 0.1) -> dict:
    return {
        "epoch": number,
        "ACC": acc,
        "score": score,
        "intact": intact,
        "changed": changed,
        "size_entropy": 2.3,
        "weak_strong_agreement": 0.8,
        "test_confident": 0.5,
        "train_confident": 0.5,
    }


def test_the_keep_rules_read_the_recorded_epochs():
    # The SCAN model has the lowest score; epoch 2 settles (fewest changes); epoch 3 shrank a cluster.
    history = [
        epoch(0, 0.70, -2.0, changed=None),
        epoch(1, 0.75, -1.9, changed=0.05),
        epoch(2, 0.80, -1.8, changed=0.01),
        epoch(3, 0.90, -1.7, intact=False, changed=0.20),
    ]
    kept = {name: rule(history) for name, rule in selflabel_study.RULES.items()}
    assert kept["old: lowest assignment SCAN loss"] == 0
    assert kept["last epoch (paper)"] == 3 and kept["hindsight: highest test ACC"] == 3
    assert kept["last intact epoch"] == 2 and kept["most stable intact epoch"] == 2
    assert kept[selflabel_study.STAGE_RULE] == 2
    history[2]["weak_strong_agreement"] = 0.7  # below epoch 1's 0.8: the stage's rule keeps epoch 1
    assert selflabel_study.RULES[selflabel_study.STAGE_RULE](history) == 1
    history[1]["intact"] = False  # now epoch 2 comes after a shrink: the prefix rule stops at the SCAN model
    assert selflabel_study.RULES["last epoch before any shrink"](history) == 0
    assert selflabel_study.RULES["last intact epoch"](history) == 2


@pytest.mark.slow
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
            "--selflabel_heads",
            "1",
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
        last = run["history"][-1]  # what the candidate rules read, recorded for every epoch
        assert len(last["predictions"]) == 360 and 0.0 <= last["changed"] <= 1.0 and last["intact"] in (True, False)
        assert 0.0 <= last["weak_strong_agreement"] <= 1.0 and 0.0 <= last["train_confident"] <= 1.0
        assert run["scan"]["ACC"] == pytest.approx(study["scan"]["1"]["0"]["ACC"])  # epoch 0 is that SCAN model
        assert run["best"]["ACC"] == pytest.approx(run["final_ACC"])  # the written model is the kept epoch
        assert run["last"]["epoch"] == 1 and run["best"]["epoch"] in (0, 1)
    markdown = (out / "study.md").read_text()
    assert "| 2 |" in markdown and "| 1 | per_cluster@0.99 | best epoch |" in markdown
    assert "| 1 | per_cluster@0.99 | last intact epoch |" in markdown and "| 1 | threshold@0.99 | 0 |" in markdown


def test_each_stage_of_the_study_gets_the_overrides_it_reads_and_an_unknown_key_goes_to_both():
    overrides = ["epochs=1", "average_epochs=0", "backbone_kwargs.base_width=4", "num_neighbors=5", "epochz=1"]
    scan_reads = ["epochs=1", "backbone_kwargs.base_width=4", "num_neighbors=5", "epochz=1"]
    assert selflabel_study.overrides_read_by("scan", overrides) == scan_reads
    selflabel_reads = ["epochs=1", "average_epochs=0", "backbone_kwargs.base_width=4", "epochz=1"]
    assert selflabel_study.overrides_read_by("selflabel", overrides) == selflabel_reads

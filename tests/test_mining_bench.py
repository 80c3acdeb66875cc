"""bench/mining_bench.py on tiny sizes: each case runs in its own process and lands in the table, or says why not.

This checks the wiring (synthetic features, every backend, memory and recall columns, the --max-seconds skip),
not speed: docs/scaling.md and bench/RESULTS.md hold measured figures.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench import mining_bench


def rows_of(report: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.split("|")[1:-1]] for line in report.splitlines() if line.startswith("| ")]


@pytest.mark.slow  # four processes, each importing torch
def test_table_has_every_backend_with_time_memory_and_recall():
    report = mining_bench.main(
        ["--sizes", "1500", "--dims", "16", "--ks", "5", "--backends", "faiss", "torch", "torch-fp16", "ivf"]
    )
    header, *rows = rows_of(report)
    assert header[:6] == ["backend", "device", "N", "d", "k", "time (s)"] and len(rows) == 4
    by_backend = {row[0]: dict(zip(header, row)) for row in rows}
    for backend, row in by_backend.items():
        assert (row["N"], row["d"], row["k"], row["device"]) == ("1,500", "16", "5", "cpu"), backend
        assert float(row["time (s)"]) > 0 and float(row["peak RSS over features (MiB)"].split()[0]) >= 0
    assert by_backend["faiss"]["recall@k"] == by_backend["torch"]["recall@k"] == "exact"
    assert float(by_backend["torch-fp16"]["recall@k"].split()[0]) > 0.99  # float16 rounding swaps only near-ties
    ivf_recall = float(by_backend["ivf"]["recall@k"].split()[0])
    assert 0.5 < ivf_recall <= 1.0 and "(1000 queries" in by_backend["ivf"]["recall@k"]


@pytest.mark.slow
def test_cases_predicted_over_the_budget_are_skipped_and_say_so():
    report = mining_bench.main(
        ["--sizes", "200000", "--dims", "8", "--ks", "5", "--backends", "torch", "--max-seconds", "0.001"]
    )
    (row,) = rows_of(report)[1:]
    assert row[5] == "-" and "skipped: predicted" in row[-1] and "> --max-seconds 0.001" in row[-1]


def test_clustered_features_are_seeded_unit_rows():
    features = mining_bench.clustered_features(300, 8, seed=5, clusters=4)
    assert features.shape == (300, 8) and features.dtype == np.float32
    assert np.allclose(np.linalg.norm(features, axis=1), 1, atol=1e-5)
    assert np.array_equal(features, mining_bench.clustered_features(300, 8, seed=5, clusters=4))
    # Clustered: each row's nearest other row is much closer than a random pair.
    scores = features @ features.T
    np.fill_diagonal(scores, -1)
    assert scores.max(axis=1).mean() > scores.mean() + 0.5


def test_a_kernel_without_vmhwm_gives_a_case_whose_peak_is_not_reported(monkeypatch):
    """Sandboxed kernels may omit VmHWM from /proc/self/status: the timed case still lands in the table."""
    read_text = Path.read_text

    def without_peak(path, *args, **kwargs):
        text = read_text(path, *args, **kwargs)
        if str(path) != "/proc/self/status":
            return text
        return "\n".join(line for line in text.splitlines() if not line.startswith("VmHWM"))

    monkeypatch.setattr(Path, "read_text", without_peak)
    result = mining_bench.run_case(300, 8, 5, "torch", None)
    assert result["seconds"] >= 0 and result["peak_rss_mib"] is None
    (row,) = rows_of(mining_bench.table([result]))[1:]
    assert row[7] == "not reported" and "VmRSS" in mining_bench.vm_fields() and "VmHWM" not in mining_bench.vm_fields()

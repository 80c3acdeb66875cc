"""bench/gpu_check.sh in its QUICK form on the CPU, as the GPU machine runs it: every step, every table filled.

The GPU check runs only when a GPU machine is lent (rarely, for minutes): this test keeps it from rotting between
loans. The wheel-install step gets a wheel of a missing module (installed) and one of a module the machine has
(left out); the steps that need CUDA say "skipped on CPU" in their rows.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

SCALE = 6  # GPU_CHECK_TIME_SCALE: the step limits are sized for a GPU machine, not a loaded 2-core CPU
NUMBER = re.compile(r"^\d[\d,]*(\.\d+)?$")
# Columns of measurements; every other column holds names and settings.
MEASURED = {
    "images/s", "augment images/s", "epoch of 50,000 (s)", "peak GPU memory (GiB)", "kNN monitor (s)", "mining (s)",
    "time (s)", "features (MiB)", "peak RSS over features (MiB)", "peak GPU (MiB)", "recall@k",
    "passed", "failed", "errors", "skipped", "seconds", "limit (s)", "took (s)",
}  # fmt: skip


def write_wheel(folder: Path, name: str, version: str = "1.0") -> Path:
    """A minimal pure-Python wheel of the module `name` (what pip needs: the module and its dist-info)."""
    path = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": "PROBE = True\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{file},,\n" for file in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(path, "w") as wheel:
        for file, text in files.items():
            wheel.writestr(file, text)
    return path


def tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """Every markdown table of `text`: (header cells, rows of cells)."""
    found, lines = [], text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            rows = []
            for row in lines[i + 2 :]:
                if not row.startswith("|"):
                    break
                rows.append([cell.strip() for cell in row.strip("|").split("|")])
            found.append(([cell.strip() for cell in line.strip("|").split("|")], rows))
    return found


def test_quick_gpu_check_fills_every_table_on_a_cpu(tmp_path):
    wheels, out, results = tmp_path / "whl", tmp_path / "out", tmp_path / "GPU_RESULTS.md"
    wheels.mkdir()
    out.mkdir()
    write_wheel(wheels, "scan_gpu_check_probe")  # a module this machine lacks: installed
    write_wheel(wheels, "yaml", "0.0.1")  # the machine has yaml: left out, so its own version stays
    environment = {
        **os.environ,
        "QUICK": "1",
        "PYTHON": sys.executable,
        "WHEELS": str(wheels),
        "OUT": str(out),
        "RESULTS": str(results),
        "GPU_CHECK_TIME_SCALE": str(SCALE),
        "OMP_NUM_THREADS": "1",  # tiny models: threads only contend on a shared CPU
    }
    environment.pop("PYTHONPATH", None)
    done = subprocess.run(
        ["bash", "bench/gpu_check.sh"], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = results.read_text()
    assert (out / "GPU_RESULTS.md").read_text() == text and "== tests" in (out / "gpu_check.log").read_text()

    assert "| torch " in text and "| CUDA " in text and "missing modules:" in text and "nvidia-smi" in text
    assert "installed (their modules were missing): scan_gpu_check_probe-1.0-py3-none-any.whl" in text
    assert "yaml-0.0.1" not in text and "failed" not in text.replace("| failed |", "")

    found = tables(text)
    assert len(found) == 3 + 3 + 1 + 1  # throughput of three stages, three mining backends, tests, steps
    for header, rows in found:
        assert rows, header
        for row in rows:
            assert len(row) == len(header), row
            cells = dict(zip(header, row))
            for column in MEASURED & set(header):
                value = cells[column]
                if value in ("skipped on CPU", "exact") or NUMBER.match(value.split(" (")[0]):
                    continue
                # Not measured: the kNN monitor and mining of the SCAN and self-label stages, the CUDA tests.
                not_measured = column in ("kNN monitor (s)", "mining (s)") or cells.get("device") == "skipped on CPU"
                assert value == "-" and not_measured, (column, row)
    throughput = [rows for header, rows in found if "images/s" in header]
    assert [len(rows) for rows in throughput] == [2, 2, 2]
    assert [row[-2] != "-" for rows in throughput for row in rows] == [True, True, False, False, False, False]
    mining = [rows[0] for header, rows in found if "backend" in header and "time (s)" in header]
    assert [row[0] for row in mining] == ["torch-fp16", "torch", "faiss"]
    assert all(NUMBER.match(row[5]) and row[8] == "skipped on CPU" for row in mining)
    (tests_header, tests_rows), (steps_header, steps_rows) = found[-2:]
    assert [row[1] for row in tests_rows] == ["skipped on CPU", "skipped on CPU", "cpu"]
    assert tests_rows[-1][2:4] == ["2", "0"]  # the plain CPU tests ran through pytest and its junit file
    assert [row[0] for row in steps_rows][:2] == ["machine", "wheels"] and len(steps_rows) == 9
    assert all(row[3] == "ok" for row in steps_rows)
    assert sum(int(row[1]) for row in steps_rows) <= 360 * SCALE  # the whole check: at most 6 minutes on a GPU

"""Fault injection: kill the three-stage pipeline at random moments, rerun it, and count the runs that end
with exactly the files of an uninterrupted run.

    OMP_NUM_THREADS=1 python bench/fault_injection.py --kills 20 --output_dir results/fault_injection

A short CPU pipeline (simclr.py → scan.py → selflabel.py on scikit-learn's digits, tiny network, two epochs
each, seeded) runs once uninterrupted as the reference. Then, for each kill point, a fresh copy runs the
same commands as separate processes, and at a random moment (a stage drawn in proportion to its wall time in
the reference, a time uniform within it, process start-up included) that stage's process group receives
SIGKILL, SIGTERM or SIGINT (chosen at random; a stage that ends before the moment is drawn again). The
pipeline is then run again from its first command, as a user would, and every file it leaves is compared
with the reference bit for bit: the three model files, the neighbour files, the resumable checkpoints
(weights, optimizer state, position, RNG states, extras) and the metrics.json files.

Writes `<output_dir>/summary.json` (every trial: kill time, signal, stage, identical or what differed) and
prints the count of identical runs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from utils.files import write_json  # noqa: E402

STAGES = (
    ("pretext", "simclr.py", "configs/pretext/simclr_digits.yml", ()),
    ("scan", "scan.py", "configs/scan/scan_digits.yml", ()),
    ("selflabel", "selflabel.py", "configs/selflabel/selflabel_digits.yml", ("confidence_threshold=0.2",)),
)
OVERRIDES = ("epochs=2", "backbone_kwargs.base_width=4", "batch_size=128", "num_workers=0", "seed=0")
SIGNALS = {"KILL": signal.SIGKILL, "TERM": signal.SIGTERM, "INT": signal.SIGINT}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Kill the pipeline at random moments; count exact resumes")
    parser.add_argument("--kills", type=int, default=20, help="number of kill points (one rerun each)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill times and signals")
    parser.add_argument("--signals", nargs="+", choices=sorted(SIGNALS), default=sorted(SIGNALS))
    parser.add_argument("--output_dir", default="results/fault_injection")
    return parser.parse_args(argv)


def commands(root: Path) -> list[tuple[str, list[str]]]:
    env = root / "env.yml"
    env.write_text(f"root_dir: {root / 'results'}\ndata_root: {root / 'datasets'}\ndownload: false\n")
    return [
        (name, [sys.executable, script, "--config_env", str(env), "--config_exp", config, "--set", *OVERRIDES, *extra])
        for name, script, config, extra in STAGES
    ]


def run_pipeline(root: Path, kill: tuple[str, float, int] | None = None) -> dict[str, float]:
    """Run every stage in turn, each as its own process; returns each stage's wall time.

    With `kill` = (stage, seconds, signal), that stage's process group gets the signal that many seconds
    after the process started, and the pipeline stops there (the returned dict then ends with that stage).
    """
    durations = {}
    with open(root / "log.txt", "a") as log:
        for name, command in commands(root):
            start = time.monotonic()
            process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=log, start_new_session=True)
            while process.poll() is None:
                if kill is not None and kill[0] == name and time.monotonic() - start >= kill[1]:
                    os.killpg(process.pid, kill[2])
                    process.wait()
                    durations[name] = time.monotonic() - start
                    return durations
                time.sleep(0.005)
            durations[name] = time.monotonic() - start
            if process.returncode != 0:
                raise RuntimeError(f"{name} failed (exit {process.returncode}); see {root / 'log.txt'}")
            if kill is not None and kill[0] == name:
                return durations  # finished before the kill time: no fault injected
    return durations


def final_files(root: Path) -> dict:
    """Every file of the three stage folders, loaded (tensors, arrays, JSON)."""
    files = {}
    for path in sorted((root / "results").rglob("*")):
        name = str(path.relative_to(root / "results"))
        if path.suffix == ".tar":
            files[name] = torch.load(path, weights_only=True)
        elif path.suffix == ".npy":
            files[name] = torch.from_numpy(np.load(path))
        elif path.suffix == ".json":
            files[name] = json.loads(path.read_text())
    return files


def differences(a, b, where: str = "") -> list[str]:
    """Where two loaded file trees differ (empty when bit-identical)."""
    if isinstance(a, torch.Tensor):
        same = isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
        return [] if same else [where]
    if isinstance(a, dict):
        if not isinstance(b, dict) or a.keys() != b.keys():
            return [f"{where} (keys)"]
        return [d for key in a for d in differences(a[key], b[key], f"{where}/{key}")]
    if isinstance(a, (list, tuple)):
        if not isinstance(b, (list, tuple)) or len(a) != len(b):
            return [f"{where} (length)"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}[{i}]")]
    return [] if a == b else [where]


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    output_dir = Path(args.output_dir).resolve()
    shutil.rmtree(output_dir, ignore_errors=True)
    output_dir.mkdir(parents=True)
    rng = random.Random(args.seed)

    reference_root = output_dir / "reference"
    reference_root.mkdir()
    durations = run_pipeline(reference_root)
    reference = final_files(reference_root)
    print(f"Reference pipeline: {durations} s, {len(reference)} files", flush=True)

    trials, missed = [], 0
    while len(trials) < args.kills:
        root = output_dir / f"trial_{len(trials) + missed:02d}"
        root.mkdir()
        # A stage drawn in proportion to its wall time, a moment within it (its process start-up included).
        stage = rng.choices(list(durations), weights=list(durations.values()))[0]
        kill_at, signame = rng.uniform(0, 0.95 * durations[stage]), rng.choice(args.signals)
        reached = run_pipeline(root, (stage, kill_at, SIGNALS[signame]))
        if reached.get(stage, 0) < kill_at:  # the stage ended sooner this time: no fault, draw again
            missed += 1
            shutil.rmtree(root)
            continue
        run_pipeline(root)  # the user's rerun: every stage resumes or starts, as its files say
        diff = differences(reference, final_files(root))
        trials.append({"stage": stage, "kill_at_s": round(kill_at, 2), "signal": signame, "identical": not diff})
        if diff:
            trials[-1]["differs"] = diff[:20]
        else:
            shutil.rmtree(root)
        shown = "identical" if not diff else f"DIFFERENT: {', '.join(diff[:3])}"
        print(f"Kill {len(trials)}/{args.kills}: SIG{signame} {kill_at:.1f} s into {stage}: {shown}", flush=True)

    identical = sum(trial["identical"] for trial in trials)
    summary = {
        "command": "python bench/fault_injection.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "overrides": list(OVERRIDES),
        "reference_seconds": {name: round(seconds, 1) for name, seconds in durations.items()},
        "kills": len(trials),
        "redrawn_because_the_stage_ended_first": missed,
        "identical": identical,
        "trials": trials,
    }
    write_json(summary, output_dir / "summary.json")
    print(f"{identical} of {len(trials)} interrupted runs resumed to files identical to the uninterrupted run")
    return summary


if __name__ == "__main__":
    main()

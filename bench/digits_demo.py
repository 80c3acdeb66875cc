"""The whole SCAN method on scikit-learn's bundled digits, for one or more seeds, then a summary table.

    python bench/digits_demo.py --seeds 0 1 2 --output_dir results/digits_bench [--set epochs=2 ...]

Each seed runs simclr.py → scan.py → selflabel.py → eval.py (--visualize_prototypes) through their
`main(argv)`, i.e. exactly the code path and configs a user gets from the command line, in its own root
directory `<output_dir>/seed_<seed>/` (stages write to `.../digits/{pretext,scan,selflabel,eval}/`). The
digits need no download and no GPU, so this is the one command that shows the method working end to end.
`--set` is handed to every stage, so CI can shorten all of them at once (e.g. `--set epochs=1`).

Writes `<output_dir>/summary.json` and `<output_dir>/summary.md`: mean ± std over the seeds of ACC, NMI
and ARI on the test split for the SCAN and self-label steps, and the wall and CPU time (user + sys, all threads)
of each seed and stage: on a shared machine the wall time mostly measures the other jobs. Ends by saying where
each seed's report.html is and how to open it, since that page is what a first-time user came to see.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the entry scripts live at the repository root, one level up

import eval as eval_script  # noqa: E402
import scan  # noqa: E402
import selflabel  # noqa: E402
import simclr  # noqa: E402
from tools.html_report import REPORT_FILE  # noqa: E402
from utils.config import add_set_argument  # noqa: E402
from utils.files import write_summary  # noqa: E402

PRETEXT_CONFIG = ROOT / "configs/pretext/simclr_digits.yml"
SCAN_CONFIG = ROOT / "configs/scan/scan_digits.yml"
SELFLABEL_CONFIG = ROOT / "configs/selflabel/selflabel_digits.yml"
DB_NAME = "digits"  # train_db_name of the three configs: stage outputs go to <root_dir>/digits/
STEPS = ("scan", "selflabel")
METRICS = ("ACC", "NMI", "ARI")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="SCAN on scikit-learn's digits for several seeds, with a summary")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one full run per seed")
    parser.add_argument(
        "--output_dir",
        default="results/digits_demo",
        help="each seed writes to OUTPUT_DIR/seed_<seed>/; the summary goes here too",
    )
    parser.add_argument(
        "--config_env",
        default=str(ROOT / "configs/env.yml"),
        help="env YAML; its root_dir is replaced by the per-seed directory",
    )
    add_set_argument(parser, "config overrides handed to every stage, e.g. --set epochs=1 num_workers=0")
    return parser.parse_args(argv)


def run_seed(seed: int, seed_dir: Path, config_env: str, overrides: list[str]) -> dict:
    """The four stages for one seed; returns the test-split metrics of each step and the stage times."""
    common = ["--config_env", config_env]
    sets = ["--set", f"root_dir={seed_dir}", f"seed={seed}", *overrides]
    if (seed_dir / DB_NAME).exists():
        print(
            f"Note: {seed_dir} already holds results; stages resume from their checkpoints, so the wall time "
            "below counts only the remaining work.",
            flush=True,
        )
    model = seed_dir / DB_NAME / "selflabel" / "model.pth.tar"
    stages = [
        ("pretext", simclr.main, [*common, "--config_exp", str(PRETEXT_CONFIG), *sets]),
        ("scan", scan.main, [*common, "--config_exp", str(SCAN_CONFIG), *sets]),
        ("selflabel", selflabel.main, [*common, "--config_exp", str(SELFLABEL_CONFIG), *sets]),
        # eval.py on the final model: the confusion matrix, per-image predictions and one prototype per cluster.
        (
            "eval",
            eval_script.main,
            [
                *common,
                "--config_exp",
                str(SELFLABEL_CONFIG),
                "--model",
                str(model),
                "--output_dir",
                str(seed_dir / DB_NAME / "eval"),
                "--visualize_prototypes",
                *sets,
            ],
        ),
    ]
    metrics, times, cpu_times = {}, {}, {}
    for name, stage_main, stage_argv in stages:
        start, cpu_start = time.perf_counter(), time.process_time()
        metrics[name] = stage_main(stage_argv)
        times[name], cpu_times[name] = time.perf_counter() - start, time.process_time() - cpu_start

    return {
        "seed": seed,
        "pretext": {key: metrics["pretext"][key] for key in ("knn_top1", "train_neighbor_acc", "val_neighbor_acc")},
        **{name: {key: metrics[name][key] for key in METRICS} for name in ("scan", "selflabel", "eval")},
        "stage_seconds": times,
        "wall_seconds": sum(times.values()),
        "stage_cpu_seconds": cpu_times,
        "cpu_seconds": sum(cpu_times.values()),
    }


def mean_std(values: list[float]) -> dict[str, float]:
    """Mean and sample standard deviation (0 for a single seed, where there is no spread to estimate)."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def summarize(runs: list[dict]) -> dict:
    """Aggregate the per-seed results into mean ± std per step and metric."""
    return {
        "seeds": [run["seed"] for run in runs],
        **{step: {key: mean_std([run[step][key] for run in runs]) for key in METRICS} for step in STEPS},
        "wall_seconds": mean_std([run["wall_seconds"] for run in runs]),
        "cpu_seconds": mean_std([run["cpu_seconds"] for run in runs]),
        "runs": runs,
    }


def format_markdown(summary: dict, command: str) -> str:
    """Two markdown tables: the aggregate over seeds, then every seed with its wall / CPU seconds per stage."""
    seeds = summary["seeds"]
    lines = [
        f"Test split of scikit-learn's digits (360 images), {len(seeds)} seed(s): {', '.join(map(str, seeds))}. "
        "Mean ± sample std over the seeds.",
        "",
        "| Step | " + " | ".join(METRICS) + " |",
        "|---|" + "---|" * len(METRICS),
    ]
    for step in STEPS:
        cells = [f"{summary[step][key]['mean']:.3f} ± {summary[step][key]['std']:.3f}" for key in METRICS]
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Seconds as wall / CPU (user + sys, all threads).",
        "",
        "| Seed | SCAN ACC | Self-label ACC | Pretext (s) | SCAN (s) | Self-label (s) | Eval (s) | Whole seed (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in summary["runs"]:
        wall, cpu = run["stage_seconds"], run["stage_cpu_seconds"]
        stages = " | ".join(f"{wall[name]:.0f} / {cpu[name]:.0f}" for name in ("pretext", "scan", "selflabel", "eval"))
        lines.append(
            f"| {run['seed']} | {run['scan']['ACC']:.3f} | {run['selflabel']['ACC']:.3f} | {stages} | "
            f"{run['wall_seconds']:.0f} / {run['cpu_seconds']:.0f} |"
        )
    wall, cpu = summary["wall_seconds"], summary["cpu_seconds"]
    lines += [
        "",
        f"Per seed: wall {wall['mean']:.0f} ± {wall['std']:.0f} s, CPU {cpu['mean']:.0f} ± {cpu['std']:.0f} s.",
        "",
        f"Command: `{command}`",
        "",
    ]
    return "\n".join(lines)


def report_lines(output_dir: Path, seeds: list[int], platform: str = sys.platform) -> list[str]:
    """Where each seed's report.html is and the command that opens it on this platform."""
    opener = {"darwin": "open", "win32": "start"}.get(platform, "xdg-open")
    lines = []
    for seed in seeds:
        path = output_dir / f"seed_{seed}" / DB_NAME / "eval" / REPORT_FILE
        shown = path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path
        lines += [
            f"Report of seed {seed}: {shown}",
            f"  open it in a browser: {opener} {shown}   (or paste {path.as_uri()} into the address bar)",
        ]
    return lines


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    output_dir = Path(args.output_dir).resolve()
    command = " ".join(["python bench/digits_demo.py", *(argv if argv is not None else sys.argv[1:])])
    runs = []
    for seed in args.seeds:
        print(f"=== Seed {seed} ===", flush=True)
        runs.append(run_seed(seed, output_dir / f"seed_{seed}", args.config_env, args.overrides))
    summary = {"command": command, **summarize(runs)}
    write_summary(summary, format_markdown(summary, command), output_dir)
    print(f"Saved {output_dir / 'summary.json'} and {output_dir / 'summary.md'}", flush=True)
    print("\n".join(report_lines(output_dir, args.seeds)), flush=True)
    return summary


if __name__ == "__main__":
    main()

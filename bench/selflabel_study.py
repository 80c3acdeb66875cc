"""How robust are stages 2 and 3 across seeds? SCAN with 1 vs 5 heads, self-labeling per pseudo-label rule.

    python bench/selflabel_study.py --pretext_root /work/digits_runs --seeds 0 1 2 3 4 \
        --output_dir results/selflabel_study [--heads 1 5] [--variants threshold@0.99 per_cluster@0.99] [--set ...]

Starts from finished pretext runs (`<pretext_root>/seed_<s>/digits/pretext/`, as `bench/digits_demo.py` or
`simclr.py --set root_dir=... seed=s` write them), so the pretext stage is not retrained. For every seed:

1. `scan.py` (configs/scan/scan_digits.yml) once per `--heads` value, in `<output_dir>/seed_<s>/scan_heads<h>/`;
   the lowest-loss head is kept, as always.
2. `selflabel.py` (configs/selflabel/selflabel_digits.yml) once per `--variants` entry `<pseudo_labels>@<threshold>`,
   from the SCAN model of every `--selflabel_heads` value, in
   `<output_dir>/seed_<s>/selflabel_heads<h>_<pseudo_labels>_<threshold>/`.
   Each run uses `selflabel_keep: best` and logs every epoch (engine/cluster_watch.py); which model is written
   does not change the training, so one run gives both results: "last" is the last epoch's test evaluation,
   "best" the kept epoch's.

Writes `<output_dir>/study.json` (every number) and `<output_dir>/study.md` (the tables of docs/selflabel.md).
Stages resume from their checkpoints, so an interrupted study continues when rerun.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the entry scripts live at the repository root, one level up

import scan  # noqa: E402
import selflabel  # noqa: E402
from utils.config import add_set_argument  # noqa: E402
from utils.files import write_json  # noqa: E402

SCAN_CONFIG = ROOT / "configs/scan/scan_digits.yml"
SELFLABEL_CONFIG = ROOT / "configs/selflabel/selflabel_digits.yml"
DB_NAME = "digits"
PRETEXT_FILES = ("model.pth.tar", "model.pth.tar.arch.json", "topk-train-neighbors.npy", "topk-val-neighbors.npy")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="SCAN heads and self-label pseudo-label rules across seeds")
    parser.add_argument("--pretext_root", required=True, help="holds seed_<s>/digits/pretext/ for every seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--output_dir", default="results/selflabel_study")
    parser.add_argument("--heads", type=int, nargs="+", default=[1, 5], help="SCAN num_heads values to compare")
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["threshold@0.99", "per_cluster@0.99"],
        help="self-label runs as <pseudo_labels>@<confidence_threshold>",
    )
    parser.add_argument(
        "--selflabel_heads",
        type=int,
        nargs="+",
        default=None,
        help="self-label from the SCAN models with these head counts (default: num_heads of scan_digits.yml)",
    )
    parser.add_argument("--config_env", default=str(ROOT / "configs/env.yml"))
    add_set_argument(parser, "config overrides handed to every stage, e.g. --set epochs=1 (smoke runs)")
    return parser.parse_args(argv)


def copy_files(source: Path, target: Path, names: tuple[str, ...]) -> None:
    """Copy the named files that exist in `source` and not yet in `target`."""
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        if (source / name).is_file() and not (target / name).is_file():
            shutil.copy2(source / name, target / name)


def empty_clusters(sizes: list[int]) -> int:
    return sum(size == 0 for size in sizes)


def run_scan(seed: int, heads: int, pretext: Path, out: Path, args) -> dict:
    root = out / f"seed_{seed}" / f"scan_heads{heads}"
    copy_files(pretext, root / DB_NAME / "pretext", PRETEXT_FILES)
    start = time.perf_counter()
    metrics = scan.main(
        [
            "--config_env",
            args.config_env,
            "--config_exp",
            str(SCAN_CONFIG),
            "--set",
            f"root_dir={root}",
            f"seed={seed}",
            f"num_heads={heads}",
            *args.overrides,
        ]
    )
    return {
        "ACC": metrics["ACC"],
        "head": metrics["head"],
        "best_loss": metrics["best_loss"],
        "cluster_sizes": metrics["cluster_sizes"],
        "empty_clusters": empty_clusters(metrics["cluster_sizes"]),
        "seconds": time.perf_counter() - start,
    }


def run_selflabel(seed: int, heads: int, variant: str, pretext: Path, out: Path, args) -> dict:
    pseudo_labels, threshold = variant.split("@")
    scan_root = out / f"seed_{seed}" / f"scan_heads{heads}"
    root = out / f"seed_{seed}" / f"selflabel_heads{heads}_{pseudo_labels}_{threshold}"
    copy_files(pretext, root / DB_NAME / "pretext", ("topk-val-neighbors.npy",))
    copy_files(scan_root / DB_NAME / "scan", root / DB_NAME / "scan", ("model.pth.tar",))
    start = time.perf_counter()
    metrics = selflabel.main(
        [
            "--config_env",
            args.config_env,
            "--config_exp",
            str(SELFLABEL_CONFIG),
            "--set",
            f"root_dir={root}",
            f"seed={seed}",
            f"pseudo_labels={pseudo_labels}",
            f"confidence_threshold={threshold}",
            "selflabel_keep=best",
            *args.overrides,
        ]
    )
    history = metrics["epochs"]

    def outcome(record: dict) -> dict:
        return {
            "epoch": record["epoch"],
            "ACC": record["ACC"],
            "score": record["score"],
            "cluster_sizes": record["cluster_sizes"],
            "empty_clusters": empty_clusters(record["cluster_sizes"]),
        }

    return {
        "scan": outcome(history[0]),
        "last": outcome(history[-1]),
        "best": outcome(history[metrics["kept_epoch"]]),
        "kept_reason": metrics["kept_reason"],
        "warnings": len(metrics["cluster_warnings"]),
        "final_ACC": metrics["ACC"],  # the written (= best) model, evaluated by the stage itself
        "history": [
            {
                key: record[key]
                for key in ("epoch", "ACC", "score", "neighbour_agreement", "size_entropy", "cluster_sizes")
            }
            for record in history
        ],
        "seconds": time.perf_counter() - start,
    }


def stats(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {std:.3f}"


def worst(values: dict[int, float]) -> str:
    seed = min(values, key=values.get)
    return f"{values[seed]:.3f} (seed {seed})"


def format_markdown(study: dict) -> str:
    seeds = study["seeds"]
    lines = [
        f"Test split of scikit-learn's digits (360 images), seeds {', '.join(map(str, seeds))}; mean ± sample std "
        "over the seeds. Empty clusters: clusters without a test image, summed over the seeds.",
        "",
        "**SCAN (configs/scan/scan_digits.yml), lowest-loss head kept**",
        "",
        "| num_heads | ACC | worst seed | per seed | empty clusters | s per run |",
        "|---|---|---|---|---|---|",
    ]
    for heads, runs in study["scan"].items():
        accs = {seed: runs[str(seed)]["ACC"] for seed in seeds}
        lines.append(
            f"| {heads} | {stats(list(accs.values()))} | {worst(accs)} | "
            + " ".join(f"{acc:.3f}" for acc in accs.values())
            + f" | {sum(runs[str(s)]['empty_clusters'] for s in seeds)} | "
            f"{statistics.fmean(runs[str(s)]['seconds'] for s in seeds):.0f} |"
        )
    lines += [
        "",
        "**Self-labeling (configs/selflabel/selflabel_digits.yml with the rule and threshold shown)**: ACC of "
        "the SCAN model it starts from (epoch 0), of its last epoch and of the epoch `selflabel_keep: best` keeps; "
        "seeds below SCAN: seeds where that model's ACC is lower than the SCAN model's.",
        "",
        "| SCAN heads | pseudo_labels @ threshold | model | ACC | worst seed | per seed | seeds below SCAN "
        "| empty clusters | kept epoch per seed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for heads, variants in study["selflabel"].items():
        for variant, runs in variants.items():
            scan_accs = {seed: runs[str(seed)]["scan"]["ACC"] for seed in seeds}
            for row, label in (("scan", "SCAN (epoch 0)"), ("last", "last epoch"), ("best", "best epoch")):
                accs = {seed: runs[str(seed)][row]["ACC"] for seed in seeds}
                below = "–" if row == "scan" else sum(accs[seed] < scan_accs[seed] for seed in seeds)
                kept = " ".join(str(runs[str(seed)][row]["epoch"]) for seed in seeds)
                lines.append(
                    f"| {heads} | {variant} | {label} | {stats(list(accs.values()))} | {worst(accs)} | "
                    + " ".join(f"{acc:.3f}" for acc in accs.values())
                    + f" | {below} | {sum(runs[str(s)][row]['empty_clusters'] for s in seeds)} | {kept} |"
                )
    lines += ["", f"Command: `{study['command']}`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    out = Path(args.output_dir).resolve()
    selflabel_heads = args.selflabel_heads or [int(yaml.safe_load(SCAN_CONFIG.read_text()).get("num_heads", 1))]
    heads = list(dict.fromkeys([*selflabel_heads, *args.heads]))
    study = {
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores (shared), torch {torch.__version__}",
        "command": " ".join(["python bench/selflabel_study.py", *(argv if argv is not None else sys.argv[1:])]),
        "seeds": args.seeds,
        "selflabel_heads": selflabel_heads,
        "scan": {str(h): {} for h in heads},
        "selflabel": {str(h): {variant: {} for variant in args.variants} for h in selflabel_heads},
    }
    pretext = {seed: Path(args.pretext_root) / f"seed_{seed}" / DB_NAME / "pretext" for seed in args.seeds}
    for seed, folder in pretext.items():
        if not (folder / "model.pth.tar").is_file():
            raise SystemExit(f"error: no pretext model in {folder}: run the pretext stage for seed {seed} first.")

    def save() -> None:
        write_json(study, out / "study.json")
        (out / "study.md").write_text(format_markdown(study))

    def scan_runs(h: int) -> None:
        for seed in args.seeds:
            print(f"=== SCAN, {h} head(s), seed {seed} ===", flush=True)
            study["scan"][str(h)][str(seed)] = run_scan(seed, h, pretext[seed], out, args)
            write_json(study, out / "study.json")

    # Each SCAN model self-labeling starts from, then self-labeling from it; then the other head counts.
    for h in selflabel_heads:
        scan_runs(h)
        for variant in args.variants:
            for seed in args.seeds:
                print(f"=== Self-label from the {h}-head SCAN model, {variant}, seed {seed} ===", flush=True)
                study["selflabel"][str(h)][variant][str(seed)] = run_selflabel(
                    seed, h, variant, pretext[seed], out, args
                )
                write_json(study, out / "study.json")
    for h in heads:
        if h not in selflabel_heads:
            scan_runs(h)
    save()
    print(format_markdown(study), flush=True)
    print(f"Saved {out / 'study.json'} and {out / 'study.md'}", flush=True)
    return study


if __name__ == "__main__":
    main()

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

Every self-label epoch is recorded with what a keep rule could read (`recording_epochs`), and every rule of
`RULES` is scored offline on those records, so one run per seed and variant compares them all. Writes
`<output_dir>/study.json` (every number) and `<output_dir>/study.md` (the tables of docs/selflabel.md); runs
already in study.json are reused.
Stages resume from their checkpoints, so an interrupted study continues when rerun.
"""

from __future__ import annotations

import argparse
import contextlib
import json
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
from utils.config import add_set_argument, reads_key  # noqa: E402
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
    add_set_argument(parser, "config overrides handed to each stage that reads them, e.g. --set epochs=1 (smoke runs)")
    return parser.parse_args(argv)


def overrides_read_by(setup: str, overrides: list[str]) -> list[str]:
    """The `KEY=VALUE` overrides whose key the stage of `setup` reads (`average_epochs` only self-labeling); an
    unknown key goes to every stage, which refuses it."""
    return [item for item in overrides if reads_key(setup, item.split("=", 1)[0].split(".", 1)[0])]


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
    start, cpu_start = time.perf_counter(), time.process_time()
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
            *overrides_read_by("scan", args.overrides),
        ]
    )
    return {
        "ACC": metrics["ACC"],
        "head": metrics["head"],
        "best_loss": metrics["best_loss"],
        "cluster_sizes": metrics["cluster_sizes"],
        "empty_clusters": empty_clusters(metrics["cluster_sizes"]),
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu_start,  # all threads: a shared machine inflates the wall time
    }


@contextlib.contextmanager
def recording_epochs(threshold: float):
    """Record, per epoch of the self-label run inside, what the candidate keep rules read besides the watch's
    history: the test predictions (for the pseudo-label stability between epochs), the test share above
    `threshold`, and the training's confident share, loss and weak/strong agreement. Patches two of the stage's
    module functions; training itself is untouched."""
    epochs: dict[int, dict] = {}
    train: dict = {}
    stage_watch, stage_train = selflabel.watch_epoch, selflabel.train_one_epoch

    def train_one_epoch(*args, **kwargs) -> dict:
        train["stats"] = stage_train(*args, **kwargs)
        return train["stats"]

    def watch_epoch(watch, epoch: int, head_output: dict, *args, **kwargs) -> dict:
        record = stage_watch(watch, epoch, head_output, *args, **kwargs)
        stats = train.pop("stats", None) if epoch > 0 else None
        epochs[epoch] = {
            "predictions": head_output["predictions"].tolist(),
            "test_confident": float((head_output["probabilities"].max(dim=1).values > threshold).float().mean()),
            "train_confident": None if stats is None else stats["confident"],
            "train_loss": None if stats is None else stats["loss"],
            "weak_strong_agreement": None if stats is None else stats["weak_strong_agreement"],
        }
        return record

    selflabel.watch_epoch, selflabel.train_one_epoch = watch_epoch, train_one_epoch
    try:
        yield epochs
    finally:
        selflabel.watch_epoch, selflabel.train_one_epoch = stage_watch, stage_train


def with_stability(history: list[dict]) -> list[dict]:
    """Each record plus 'changed': the share of test images whose cluster differs from the previous epoch's."""
    previous = None
    for record in history:
        predictions = record.get("predictions")
        record["changed"] = None
        if predictions is not None and previous is not None:
            record["changed"] = sum(a != b for a, b in zip(predictions, previous)) / len(predictions)
        previous = predictions
    return history


def run_selflabel(seed: int, heads: int, variant: str, pretext: Path, out: Path, args) -> dict:
    pseudo_labels, threshold = variant.split("@")
    scan_root = out / f"seed_{seed}" / f"scan_heads{heads}"
    root = out / f"seed_{seed}" / f"selflabel_heads{heads}_{pseudo_labels}_{threshold}"
    copy_files(pretext, root / DB_NAME / "pretext", ("topk-val-neighbors.npy",))
    copy_files(scan_root / DB_NAME / "scan", root / DB_NAME / "scan", ("model.pth.tar",))
    start, cpu_start = time.perf_counter(), time.process_time()
    with recording_epochs(float(threshold)) as recorded:
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
                *overrides_read_by("selflabel", args.overrides),
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
        "history": with_stability(
            [
                {
                    **{
                        key: record[key]
                        for key in (
                            "epoch",
                            "ACC",
                            "score",
                            "neighbour_agreement",
                            "size_entropy",
                            "cluster_sizes",
                        )
                    },
                    "intact": not record["warnings"],
                    **recorded.get(record["epoch"], {}),
                }
                for record in history
            ]
        ),
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu_start,  # all threads: a shared machine inflates the wall time
    }


def stats(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {std:.3f}"


def worst(values: dict[int, float]) -> str:
    seed = min(values, key=values.get)
    return f"{values[seed]:.3f} (seed {seed})"


def _intact(history: list[dict]) -> list[dict]:
    return [record for record in history if record["intact"]]


def _prefix(history: list[dict]) -> list[dict]:
    """Epoch 0 and the epochs before the first one with an emptied or shrunken cluster."""
    kept = []
    for record in history:
        if not record["intact"]:
            break
        kept.append(record)
    return kept


def _best(records: list[dict], key: str, lowest: bool = False) -> int:
    """The epoch with the highest (lowest) `key` among `records` that have it, the later on ties; 0 if none."""
    scored = [r for r in records if r.get(key) is not None]
    if not scored:
        return 0
    sign = -1 if lowest else 1
    return max(scored, key=lambda r: (sign * r[key], r["epoch"]))["epoch"]


STAGE_RULE = "stage: last intact epoch, weak/strong agreement >= epoch 1's"  # engine/cluster_watch.py
# Candidate label-free keep rules: each maps one run's per-epoch history (epoch 0 = the SCAN model) to the kept
# epoch; "hindsight" reads the test labels and is the bar. All but "last" and "hindsight" skip every epoch with an
# emptied or shrunken cluster.
RULES = {
    "old: lowest assignment SCAN loss": lambda h: min(_intact(h), key=lambda r: (r["score"], r["epoch"]))["epoch"],
    "last epoch (paper)": lambda h: h[-1]["epoch"],
    "last intact epoch": lambda h: _intact(h)[-1]["epoch"],
    "last epoch before any shrink": lambda h: _prefix(h)[-1]["epoch"],
    "most stable intact epoch": lambda h: _best(_intact(h), "changed", lowest=True),
    "last intact epoch as balanced as SCAN": lambda h: [
        r for r in _intact(h) if r["size_entropy"] >= h[0]["size_entropy"]
    ][-1]["epoch"],
    "most weak/strong agreement, intact": lambda h: _best(_intact(h), "weak_strong_agreement"),
    STAGE_RULE: lambda h: [
        r for r in _intact(h) if r["epoch"] < 2 or r["weak_strong_agreement"] >= h[1]["weak_strong_agreement"]
    ][-1]["epoch"],
    "most confident (test), intact": lambda h: _best(_intact(h), "test_confident"),
    "most confident (train), intact": lambda h: _best(_intact(h), "train_confident"),
    "hindsight: highest test ACC": lambda h: _best(h, "ACC"),
}


def rules_markdown(study: dict) -> list[str]:
    """One row per rule and self-label variant: the kept ACC against the SCAN model and the hindsight best."""
    lines = [
        "",
        "**Keep rules, evaluated offline on the recorded epochs**: kept ACC (mean over seeds), its mean gap to the "
        "best epoch in hindsight, the worst seed's ACC minus its SCAN model's, seeds more than 0.005 below SCAN, "
        "kept epochs with an emptied or shrunken cluster, and the kept epoch per seed.",
        "",
        "| SCAN heads | pseudo_labels @ threshold | rule | kept ACC | gap to hindsight | worst vs SCAN "
        "| seeds < SCAN − 0.005 | shrunken kept | kept epoch per seed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for heads, variants in study["selflabel"].items():
        for variant, runs in variants.items():
            histories = [runs[str(seed)]["history"] for seed in study["seeds"] if str(seed) in runs]
            if not histories:
                continue
            for name, rule in RULES.items():
                kept = [h[rule(h)] for h in histories]
                best = [max(r["ACC"] for r in h) for h in histories]
                versus = [k["ACC"] - h[0]["ACC"] for k, h in zip(kept, histories)]
                lines.append(
                    f"| {heads} | {variant} | {name} | {statistics.fmean(k['ACC'] for k in kept):.3f} | "
                    f"{statistics.fmean(b - k['ACC'] for b, k in zip(best, kept)):.3f} | {min(versus):+.3f} | "
                    f"{sum(v < -0.005 for v in versus)} | {sum(not k['intact'] for k in kept)} | "
                    + " ".join(str(k["epoch"]) for k in kept)
                    + " |"
                )
    return lines + per_seed_markdown(study)


def per_seed_markdown(study: dict) -> list[str]:
    """Per seed and variant: the SCAN model, the old and the new (stage's) rule's kept epoch, the best epoch in
    hindsight and the last epoch, as "ACC (epoch)"."""
    lines = [
        "",
        "**Per seed**: test ACC (epoch) of the SCAN model, of the epoch the old rule (lowest assignment SCAN loss) "
        "and the stage's rule keep, of the best epoch in hindsight and of the last epoch.",
        "",
        "| SCAN heads | pseudo_labels @ threshold | seed | top-20 neighbours | SCAN | old rule | stage's rule "
        "| hindsight best | last epoch | cluster warnings |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    columns = ("old: lowest assignment SCAN loss", STAGE_RULE, "hindsight: highest test ACC")
    for heads, variants in study["selflabel"].items():
        for variant, runs in variants.items():
            for seed in study["seeds"]:
                if str(seed) not in runs:
                    continue
                history = runs[str(seed)]["history"]
                cells = [history[0], *(history[RULES[name](history)] for name in columns), history[-1]]
                neighbours = study.get("neighbour_acc", {}).get(str(seed), float("nan"))
                lines.append(
                    f"| {heads} | {variant} | {seed} | {neighbours:.3f} | "
                    + " | ".join(f"{r['ACC']:.3f} ({r['epoch']})" for r in cells)
                    + f" | {runs[str(seed)]['warnings']} |"
                )
    return lines


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
    lines += rules_markdown(study)
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
        "neighbour_acc": {},  # top-20 train-neighbour accuracy of each seed's pretext model
        "selflabel_heads": selflabel_heads,
        "scan": {str(h): {} for h in heads},
        "selflabel": {str(h): {variant: {} for variant in args.variants} for h in selflabel_heads},
    }
    pretext = {seed: Path(args.pretext_root) / f"seed_{seed}" / DB_NAME / "pretext" for seed in args.seeds}
    for seed, folder in pretext.items():
        if not (folder / "model.pth.tar").is_file():
            raise SystemExit(f"error: no pretext model in {folder}: run the pretext stage for seed {seed} first.")
        if (folder / "metrics.json").is_file():
            study["neighbour_acc"][str(seed)] = json.loads((folder / "metrics.json").read_text())["train_neighbor_acc"]

    def save() -> None:
        write_json(study, out / "study.json")
        (out / "study.md").write_text(format_markdown(study))

    # Runs already in study.json are taken from there: a finished self-label run resumed would record no epochs.
    earlier = json.loads((out / "study.json").read_text()) if (out / "study.json").is_file() else {}

    def scan_runs(h: int) -> None:
        for seed in args.seeds:
            print(f"=== SCAN, {h} head(s), seed {seed} ===", flush=True)
            done = earlier.get("scan", {}).get(str(h), {}).get(str(seed))
            study["scan"][str(h)][str(seed)] = done or run_scan(seed, h, pretext[seed], out, args)
            write_json(study, out / "study.json")

    # Each SCAN model self-labeling starts from, then self-labeling from it; then the other head counts.
    for h in selflabel_heads:
        scan_runs(h)
        for variant in args.variants:
            for seed in args.seeds:
                print(f"=== Self-label from the {h}-head SCAN model, {variant}, seed {seed} ===", flush=True)
                done = earlier.get("selflabel", {}).get(str(h), {}).get(variant, {}).get(str(seed))
                study["selflabel"][str(h)][variant][str(seed)] = done or run_selflabel(
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

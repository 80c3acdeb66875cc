"""SCAN on unequal clusters: the digits with one class thinned out, default entropy term vs the alternatives.

    python bench/imbalance_digits.py --pretext results/digits_demo/seed_0/digits/pretext \
                                     --output_dir results/imbalance --digit 3 --fraction 0.2 --seeds 0 1 2

Takes a trained digits pretext model (model.pth.tar, e.g. `make demo`'s) and mines neighbours and cached
features, as simclr.py does after training, of the digits with `--digit` kept at `--fraction` of its images
in both splits. Then scan.py trains the heads on
those cached features with each setting of SETTINGS and each seed, and this reports the test ACC, and on the
train split the ACC and the size of the cluster matched to the thinned digit against its true count.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import scan  # noqa: E402
from data.augment import get_val_transformations  # noqa: E402
from data.cached_features import load_cached_split  # noqa: E402
from data.dataloaders import eval_loader  # noqa: E402
from data.registry import get_train_dataset, get_val_dataset  # noqa: E402
from engine.inference import run_model  # noqa: E402
from engine.knn import mine_and_save_neighbors  # noqa: E402
from engine.metrics import cluster_metrics  # noqa: E402
from models import build_model  # noqa: E402
from utils.checkpoint import load_checkpoint  # noqa: E402
from utils.config import load_config  # noqa: E402
from utils.files import write_summary  # noqa: E402
from utils.runtime import init_runtime  # noqa: E402

PRETEXT_CONFIG = ROOT / "configs/pretext/simclr_digits.yml"
SCAN_CONFIG = ROOT / "configs/scan/scan_digits_features.yml"


def mine_thinned_digits(source: Path, root: Path, config_env: str, thinned: list[str]) -> None:
    """Neighbours and cached features of the thinned digits from a trained pretext model, as simclr.py mines
    them after training (its checkpoint cannot be resumed on other data, so the mining is called directly)."""
    cfg = load_config(config_env, PRETEXT_CONFIG, [f"root_dir={root}", "save_features=true", *thinned])
    Path(cfg["pretext_dir"]).mkdir(parents=True, exist_ok=True)
    shutil.copy(source / "model.pth.tar", cfg["pretext_model"])
    model = build_model(cfg)
    model.load_state_dict(load_checkpoint(cfg["pretext_model"]))
    transform = get_val_transformations(cfg)
    datasets = get_train_dataset(cfg, transform), get_val_dataset(cfg, transform)
    loaders = [eval_loader(dataset, cfg["batch_size"], 0, init_runtime()) for dataset in datasets]
    mine_and_save_neighbors(model, *loaders, cfg, "cpu", classes=datasets[1].classes)


def settings(digit: int, fraction: float) -> dict[str, list[str]]:
    """Name → scan.py overrides. The prior lists the relative class sizes (their order does not matter)."""
    prior = [1.0] * 9 + [fraction]
    return {
        "default (entropy weight 5)": [],
        "entropy weight 2": ["criterion_kwargs.entropy_weight=2.0"],
        "entropy weight 1": ["criterion_kwargs.entropy_weight=1.0"],
        "target prior (true sizes)": [f"criterion_kwargs.target_prior={prior}"],
    }


def small_cluster(metrics: dict, predictions: np.ndarray, digit: int) -> int:
    """Size of the cluster that the Hungarian match assigns to `digit`."""
    cluster = next(c for c, cls in metrics["hungarian_match"] if cls == digit)
    return int((predictions == cluster).sum())


def train_split_scores(config_env: str, root: Path, overrides: list[str], digit: int) -> dict:
    """ACC and the thinned digit's cluster size on the cached train features, with the saved SCAN model."""
    cfg = load_config(config_env, SCAN_CONFIG, [f"root_dir={root}", *overrides])
    best = load_checkpoint(cfg["scan_model"])
    model = build_model(cfg)
    model.load_state_dict(best["model"])
    train = load_cached_split(cfg, "train", "")
    head = run_model(model, train.batches(), "cpu", "head").head(int(best["head"]))
    metrics = cluster_metrics(head["predictions"], head["probabilities"], head["targets"])
    predictions = head["predictions"].numpy()
    return {"train_ACC": metrics["ACC"], "train_small_cluster": small_cluster(metrics, predictions, digit)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="SCAN heads on imbalanced digits: default vs recommendations")
    parser.add_argument("--pretext", required=True, help="a digits pretext folder (with model.pth.tar)")
    parser.add_argument("--output_dir", default="results/imbalance")
    parser.add_argument("--digit", type=int, default=3)
    parser.add_argument("--fraction", type=float, default=0.2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--config_env", default=str(ROOT / "configs/env.yml"))
    args = parser.parse_args(argv)
    output = Path(args.output_dir).resolve()
    thinned = [f"dataset_kwargs.class_fraction={{{args.digit}: {args.fraction}}}"]

    base = output / "pretext_root"
    pretext = base / "digits" / "pretext"
    if not (pretext / "features-train.npy").is_file():
        mine_thinned_digits(Path(args.pretext), base, args.config_env, thinned)
    counts = np.bincount(np.load(pretext / "targets-train.npy"), minlength=10)
    test_counts = np.bincount(np.load(pretext / "targets-val.npy"), minlength=10)
    print(f"Train class sizes {counts.tolist()}, test {test_counts.tolist()}", flush=True)

    rows = {}
    for index, (name, overrides) in enumerate(settings(args.digit, args.fraction).items()):
        runs = []
        for seed in args.seeds:
            root = output / f"setting_{index}_seed_{seed}"
            (root / "digits").mkdir(parents=True, exist_ok=True)
            if not (root / "digits" / "pretext").exists():
                (root / "digits" / "pretext").symlink_to(pretext, target_is_directory=True)
            sets = [f"root_dir={root}", f"seed={seed}", *thinned, *overrides]
            metrics = scan.main(["--config_env", args.config_env, "--config_exp", str(SCAN_CONFIG), "--set", *sets])
            run = {
                "seed": seed,
                "test_ACC": metrics["ACC"],
                "test_small_cluster": next(
                    metrics["cluster_sizes"][c] for c, cls in metrics["hungarian_match"] if cls == args.digit
                ),
                "test_cluster_sizes": metrics["cluster_sizes"],
                **train_split_scores(args.config_env, root, [f"seed={seed}", *thinned, *overrides], args.digit),
            }
            runs.append(run)
        rows[name] = {
            "runs": runs,
            **{
                key: statistics.fmean(run[key] for run in runs)
                for key in ("test_ACC", "train_ACC", "train_small_cluster", "test_small_cluster")
            },
        }
    summary = {
        "digit": args.digit,
        "fraction": args.fraction,
        "train_class_sizes": counts.tolist(),
        "test_class_sizes": test_counts.tolist(),
        "seeds": args.seeds,
        "settings": rows,
    }
    lines = [
        f"Digit {args.digit} kept at {args.fraction:.0%}: {counts[args.digit]} of {counts.sum()} train images, "
        f"{test_counts[args.digit]} of {test_counts.sum()} test. Mean over seeds {args.seeds}.",
        "",
        "| Setting | test ACC | train ACC | train size of the small cluster (true "
        f"{counts[args.digit]}) | test size (true {test_counts[args.digit]}) |",
        "|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        lines.append(
            f"| {name} | {row['test_ACC']:.3f} | {row['train_ACC']:.3f} | {row['train_small_cluster']:.1f} | "
            f"{row['test_small_cluster']:.1f} |"
        )
    write_summary(summary, "\n".join(lines) + "\n", output)
    return summary


if __name__ == "__main__":
    main()

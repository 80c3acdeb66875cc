"""`make demo-features`: SCAN heads on cached features of the digits, from the demo's pretext model and,
when a weights file is given, from a pretrained torchvision/timm backbone.

    python bench/digits_features_demo.py --output_dir results/digits_features \
        [--pretext_from results/digits_demo/seed_0/digits/pretext] \
        [--weights resnet18-f37072fd.pth --backbone torchvision:resnet18]

1. Demo pretext: the SimCLR model of `make demo` (its checkpoint is copied from --pretext_from when there; else
   simclr.py trains it first, about 5 minutes), re-mined by simclr.py with `save_features: true`, then scan.py
   with configs/scan/scan_digits_features.yml (heads only, on the cached features).
2. With --weights: pretrained.py with configs/pretext/pretrained_digits.yml and that file, then scan.py with
   configs/scan/scan_digits_pretrained.yml.

Every step runs the entry scripts' main(argv), as a user would. Writes <output_dir>/summary.{json,md}.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pretrained  # noqa: E402
import scan  # noqa: E402
import simclr  # noqa: E402
from utils.files import write_summary  # noqa: E402

METRICS = ("ACC", "NMI", "ARI")


def timed(function, argv: list[str]) -> tuple[dict, float]:
    start = time.perf_counter()
    result = function(argv)
    return result, time.perf_counter() - start


def demo_pretext_path(root: Path, pretext_from: Path, config_env: str) -> dict:
    """Cached features of the demo's SimCLR model, then SCAN heads on them."""
    pretext = root / "digits" / "pretext"
    if (pretext_from / "checkpoint.pth.tar").is_file() and not (pretext / "checkpoint.pth.tar").is_file():
        pretext.mkdir(parents=True, exist_ok=True)
        shutil.copy(pretext_from / "checkpoint.pth.tar", pretext / "checkpoint.pth.tar")
        print(f"Copied the demo's pretext checkpoint from {pretext_from}: it is re-mined, not retrained", flush=True)
    sets = ["--set", f"root_dir={root}"]
    _, pretext_seconds = timed(
        simclr.main,
        [
            "--config_env",
            config_env,
            "--config_exp",
            str(ROOT / "configs/pretext/simclr_digits.yml"),
            *sets,
            "save_features=true",
        ],
    )
    metrics, scan_seconds = timed(
        scan.main,
        ["--config_env", config_env, "--config_exp", str(ROOT / "configs/scan/scan_digits_features.yml"), *sets],
    )
    return {
        "features": "demo SimCLR ResNet-18 (width 16), 128-d",
        "pretext_seconds": pretext_seconds,
        "scan_seconds": scan_seconds,
        **{key: metrics[key] for key in METRICS},
    }


def pretrained_path(root: Path, weights: str, backbone: str, config_env: str) -> dict:
    """pretrained.py with the given weights file, then SCAN heads on its cached features."""
    sets = ["--set", f"root_dir={root}", f"backbone={backbone}"]
    pretext_metrics, pretext_seconds = timed(
        pretrained.main,
        [
            "--config_env",
            config_env,
            "--config_exp",
            str(ROOT / "configs/pretext/pretrained_digits.yml"),
            *sets,
            f"pretrained={weights}",
        ],
    )
    metrics, scan_seconds = timed(
        scan.main,
        ["--config_env", config_env, "--config_exp", str(ROOT / "configs/scan/scan_digits_pretrained.yml"), *sets],
    )
    return {
        "features": f"{backbone} from {weights}",
        "pretext_seconds": pretext_seconds,
        "scan_seconds": scan_seconds,
        "train_neighbor_acc": pretext_metrics["train_neighbor_acc"],
        **{key: metrics[key] for key in METRICS},
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="SCAN heads on cached digits features (demo pretext / pretrained)")
    parser.add_argument("--output_dir", default="results/digits_features")
    parser.add_argument(
        "--pretext_from",
        default="results/digits_demo/seed_0/digits/pretext",
        help="a finished `make demo` pretext folder whose checkpoint is reused when present",
    )
    parser.add_argument("--weights", default=None, help="weights file of a torchvision/timm model (optional)")
    parser.add_argument("--backbone", default="torchvision:resnet18", help="the model the weights belong to")
    parser.add_argument("--config_env", default=str(ROOT / "configs/env.yml"))
    args = parser.parse_args(argv)
    output = Path(args.output_dir).resolve()

    rows = {"demo pretext": demo_pretext_path(output / "simclr", Path(args.pretext_from), args.config_env)}
    if args.weights:
        rows["pretrained"] = pretrained_path(output / "pretrained", args.weights, args.backbone, args.config_env)
    lines = [
        "SCAN heads on cached features of the digits (test split, 360 images).",
        "",
        "| Features | ACC | NMI | ARI | pretext (s) | SCAN heads (s) |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows.values():
        lines.append(
            f"| {row['features']} | {row['ACC']:.3f} | {row['NMI']:.3f} | {row['ARI']:.3f} | "
            f"{row['pretext_seconds']:.0f} | {row['scan_seconds']:.0f} |"
        )
    write_summary(rows, "\n".join(lines) + "\n", output)
    return rows


if __name__ == "__main__":
    main()

"""Assign new images to the clusters of a trained SCAN or self-label model.

    python predict.py --config_exp configs/selflabel/selflabel_custom.yml \
                      --model results/my_images/selflabel/model.pth.tar \
                      --images new_photos/ one_more.jpg --output predictions.csv [--config_env configs/env.yml]

Images (files, or folders searched recursively) are read as a folder dataset reads its own and go through the
config's val transform; predictions.csv has eval.py's columns (docs/outputs.md), matched_class from the
`hungarian_match` of eval.py's metrics.json (--metrics). Files that are not images are listed and skipped.
--sort_into DIR also copies (--link: symlinks) the images into DIR/cluster_03_<matched class>/ per cluster.
"""

from __future__ import annotations

import argparse

from tools.sort_images import check_target_folder
from utils.config import ArgumentParser, add_config_arguments, add_eval_batch_size_argument, parse_early


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(description="Assign images to the clusters of a SCAN or self-label model")
    add_config_arguments(parser, env_required=False)
    parser.add_argument("--model", required=True, help="SCAN ({'model', 'head'}) or self-label model file")
    parser.add_argument(
        "--images", required=True, nargs="+", metavar="PATH", help="image files and/or folders (searched recursively)"
    )
    parser.add_argument("--output", default="predictions.csv", help="CSV to write (default: predictions.csv)")
    parser.add_argument(
        "--metrics",
        default=None,
        help="eval.py's metrics.json for this model, to name the clusters "
        "(default: <model dir>/<model file stem>_eval/metrics.json)",
    )
    parser.add_argument(
        "--sort_into",
        metavar="DIR",
        default=None,
        help="also copy the images into one folder per cluster below DIR (new or empty), e.g. DIR/cluster_03_cat/",
    )
    parser.add_argument("--link", action="store_true", help="with --sort_into: symlink the images instead of copying")
    add_eval_batch_size_argument(parser)
    args = parser.parse_args(argv)
    if args.link and not args.sort_into:
        parser.error("--link needs --sort_into DIR")
    if args.sort_into:
        check_target_folder(args.sort_into)  # before the work, not after
    return args


parse_early(__name__, parse_args)

import json
from pathlib import Path

import torch

from data.base import UNLABELED, ImageDataset
from data.folder import IMAGE_EXTENSIONS, find_images, read_image, unreadable_reason
from data.registry import get_val_dataset
from data.stage_batches import eval_batches
from engine.inference import run_model
from engine.model_files import default_output_dir, load_model_file
from engine.result_files import write_predictions_csv
from engine.stage import run_cli
from tools.sort_images import sort_into
from utils.checkpoint import CheckpointError
from utils.config import load_config
from utils.runtime import init_runtime, resolve_fast_path


def collect_images(paths: list[str]) -> list[Path]:
    """Files as given (whatever their extension: an unreadable one is reported later), folders expanded."""
    images = []
    for path in map(Path, paths):
        if path.is_dir():
            images += find_images(path)
        elif path.is_file():
            images.append(path)
        else:
            raise SystemExit(f"error: --images {path}: no such file or folder.")
    if not images:
        raise SystemExit(f"error: no image files ({', '.join(IMAGE_EXTENSIONS)}) in {' '.join(paths)}.")
    return images


def matched_classes(metrics_path: Path, explicit: bool, cfg: dict, head: int) -> dict[int, str]:
    """Cluster → class name from eval.py's Hungarian match on labeled test data; {} when there is none."""
    if not metrics_path.is_file():
        if explicit:
            raise SystemExit(f"error: --metrics {metrics_path}: file not found. It is written by eval.py.")
        print(
            f"No evaluation at {metrics_path}: matched_class stays empty (run eval.py on this model to fill it).",
            flush=True,
        )
        return {}
    metrics = json.loads(metrics_path.read_text())
    if "hungarian_match" not in metrics:
        print(
            f"{metrics_path} holds no cluster-to-class match (evaluated without labels): matched_class stays empty.",
            flush=True,
        )
        return {}
    if metrics.get("head", head) != head:
        raise SystemExit(
            f"error: {metrics_path} evaluated head {metrics['head']}, but predictions use head {head} "
            f"of the model file: pass the metrics.json of this model with --metrics."
        )
    classes = get_val_dataset(cfg).classes
    return {int(cluster): classes[int(cls)] for cluster, cls in metrics["hungarian_match"]}


class ImageFiles(ImageDataset):
    """The images to assign, unlabeled, read as a folder dataset reads its own (data/folder.read_image)."""

    def __init__(self, paths: list[Path], image_size: int | None) -> None:
        super().__init__()
        self.paths, self.image_size = paths, image_size
        self.targets, self.classes = [UNLABELED] * len(paths), []

    def load_image(self, index: int):
        return read_image(self.paths[index], self.image_size)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    cfg = load_config(args.config_env, args.config_exp, args.overrides)
    cfg["batch_size"] = args.batch_size  # not the training batch (1000 for self-labeling): any machine evaluates
    runtime = init_runtime()
    resolve_fast_path(cfg, runtime)  # the stages' batches: augmentation_backend, channels_last as they resolve

    model, head = load_model_file(cfg, args.model)
    if head is None:
        raise CheckpointError(
            f"{args.model} is a pretext model without cluster heads: pass the SCAN or self-label model.pth.tar."
        )
    model = model.to(runtime.device).eval()
    metrics_path = Path(args.metrics) if args.metrics else default_output_dir(args.model) / "metrics.json"
    cluster_to_class = matched_classes(metrics_path, args.metrics is not None, cfg, head)

    paths = collect_images(args.images)
    # Files that are not images are listed and skipped (the check a folder dataset makes); the others are assigned.
    reasons = [unreadable_reason(path) for path in paths]
    failed = [(path, reason) for path, reason in zip(paths, reasons) if reason is not None]
    paths = [path for path, reason in zip(paths, reasons) if reason is None]
    if runtime.is_main:
        print(f"Assigning {len(paths)} image(s) with head {head} of {args.model}", flush=True)
    rows = []
    if paths:  # under torchrun every process assigns its shard and gets all rows
        dataset = ImageFiles(paths, (cfg["dataset_kwargs"] or {}).get("image_size"))
        head_output = run_model(model, eval_batches(cfg, dataset, runtime), runtime.device).head(head)
        # Cluster: argmax on the logits, as eval.py's predictions; confidence: its softmax probability.
        rows = list(zip(head_output["predictions"].tolist(), head_output["probabilities"].max(dim=1).values.tolist()))
    if not runtime.is_main:
        return {}
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    ordered = [(str(path), cluster, confidence, "") for path, (cluster, confidence) in zip(paths, rows)]
    write_predictions_csv(output, ordered, cluster_to_class)  # new images: no label
    if failed:
        print(
            f"Skipped {len(failed)} file(s) that could not be read as images:\n"
            + "\n".join(f"  {path}: {error}" for path, error in failed),
            flush=True,
        )
    sizes = torch.bincount(
        torch.tensor([cluster for cluster, _ in rows], dtype=torch.long),
        minlength=model.cluster_head[head].out_features,
    ).tolist()
    print(f"Saved {output}: {len(rows)} image(s), cluster sizes {sizes}", flush=True)
    if args.sort_into:
        assignments = [(path, cluster) for path, (cluster, _) in zip(paths, rows)]
        sort_into(assignments, args.sort_into, len(sizes), cluster_to_class, link=args.link)
        print(f"{'Linked' if args.link else 'Copied'} them into one folder per cluster in {args.sort_into}", flush=True)
    return {"output": str(output), "num_images": len(rows), "num_failed": len(failed), "cluster_sizes": sizes}


if __name__ == "__main__":
    run_cli(main)

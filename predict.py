"""Assign new images to the clusters of a trained SCAN or self-label model, and export them as a labeled dataset.

    python predict.py --config_exp configs/selflabel/selflabel_custom.yml \
                      --model results/my_images/selflabel/model.pth.tar \
                      --images new_photos/ one_more.jpg --output predictions.csv [--config_env configs/env.yml]

Images (files, or folders searched recursively) are read as a folder dataset reads its own and go through the
config's val transform; predictions.csv has eval.py's columns (docs/outputs.md): matched_class from the
`hungarian_match` of eval.py's metrics.json (--metrics), the names from its cluster_names.yml (--names). Files
that are not images are listed and skipped. The labeled dataset: --sort_into DIR copies (--link: symlinks) the
images into DIR/<name>/, --labels_csv FILE lists file,label; --skip_unsure leaves the unsure images out of both.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tools.cluster_names import add_naming_arguments
from tools.sort_images import check_target_folder
from utils.config import ArgumentParser, add_config_arguments, add_eval_batch_size_argument, parse_early


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(description="Assign images to the clusters of a SCAN or self-label model")
    add_config_arguments(parser, env_required=False)
    parser.add_argument("--model", required=True, help="SCAN ({'model', 'head'}) or self-label model file")
    images = "image files and/or folders (searched recursively)"
    parser.add_argument("--images", required=True, nargs="+", metavar="PATH", help=images)
    parser.add_argument("--output", default="predictions.csv", help="CSV to write (default: predictions.csv)")
    metrics = "eval.py's metrics.json for this model, for the matched classes "
    metrics += "(default: <model dir>/<model file stem>_eval/metrics.json)"
    parser.add_argument("--metrics", default=None, help=metrics)
    sort_into = "also copy the images into one folder per cluster name below DIR (new or empty), e.g. DIR/finch/"
    parser.add_argument("--sort_into", metavar="DIR", default=None, help=sort_into)
    parser.add_argument("--link", action="store_true", help="with --sort_into: symlink the images instead of copying")
    parser.add_argument("--labels_csv", metavar="FILE", default=None, help="also write a CSV of file,label (the name)")
    parser.add_argument("--skip_unsure", action="store_true", help="leave unsure images out of the two above")
    add_naming_arguments(parser)
    add_eval_batch_size_argument(parser)
    args = parser.parse_args(argv)
    if args.link and not args.sort_into:
        parser.error("--link needs --sort_into DIR")
    if args.skip_unsure and not (args.sort_into or args.labels_csv):
        parser.error("--skip_unsure needs --sort_into DIR or --labels_csv FILE")
    for flag, path in (("--metrics", args.metrics), ("--names", args.names)):
        if path and not Path(path).is_file():
            parser.error(f"{flag} {path}: no such file (eval.py writes it beside its outputs)")
    if args.sort_into:
        check_target_folder(args.sort_into)  # before the work, not after
    return args


parse_early(__name__, parse_args)

import json
from collections import Counter

import torch

from data.base import UNLABELED, ImageDataset
from data.folder import IMAGE_EXTENSIONS, find_images, read_image, unreadable_reason
from data.registry import get_val_dataset
from data.stage_batches import eval_batches
from engine.inference import run_model
from engine.model_files import default_output_dir, file_sha256, load_model_file
from engine.result_files import write_predictions_csv
from engine.stage import run_cli
from tools.cluster_names import NAMES_FILE, UNSURE, assign_names, cluster_names
from tools.sort_images import sort_into, write_labels_csv
from utils.checkpoint import CheckpointError
from utils.config import load_config
from utils.runtime import init_runtime, main_process_speaks, resolve_fast_path


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


def matched_classes(metrics_path: Path, cfg: dict, head: int) -> dict[int, str]:
    """Cluster → class name from eval.py's Hungarian match on labeled test data; {} when there is none."""
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    if "hungarian_match" not in metrics:  # eval.py not run on this model, or on images without labels
        print(f"No cluster-to-class match in {metrics_path} (eval.py fills it): matched_class stays empty.", flush=True)
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

    with main_process_speaks(runtime):
        model, head = load_model_file(cfg, args.model)
        if head is None:
            raise CheckpointError(
                f"{args.model} is a pretext model without cluster heads: pass the SCAN or self-label model.pth.tar."
            )
        metrics_path = Path(args.metrics) if args.metrics else default_output_dir(args.model) / "metrics.json"
        cluster_to_class = matched_classes(metrics_path, cfg, head)
        num_clusters = model.cluster_head[head].out_features
        names_path = Path(args.names) if args.names else default_output_dir(args.model) / NAMES_FILE
        sha256 = file_sha256(args.model)
        names = cluster_names(names_path, num_clusters, cluster_to_class, write=False, model_sha256=sha256)
    model = model.to(runtime.device).eval()

    paths = collect_images(args.images)
    # Files that are not images are listed and skipped (the check a folder dataset makes); the others are assigned.
    reasons = [unreadable_reason(path) for path in paths]
    failed = [(path, reason) for path, reason in zip(paths, reasons) if reason is not None]
    paths = [path for path, reason in zip(paths, reasons) if reason is None]
    if not paths:
        raise SystemExit(f"error: none of the {len(failed)} file(s) can be read as an image ({failed[0][1]}).")
    if runtime.is_main:
        print(f"Assigning {len(paths)} image(s) with head {head} of {args.model}", flush=True)
    # Under torchrun every process assigns its shard and gets all rows; cluster: argmax on the logits, as eval.py's.
    dataset = ImageFiles(paths, (cfg["dataset_kwargs"] or {}).get("image_size"))
    head_output = run_model(model, eval_batches(cfg, dataset, runtime), runtime.device).head(head)
    if not runtime.is_main:
        return {}
    assigned = assign_names(head_output, names, args.unsure_below)
    write_predictions_csv(args.output, list(map(str, paths)), head_output, [], cluster_to_class, assigned)
    if failed:
        print(
            f"Skipped {len(failed)} file(s) that could not be read as images:\n"
            + "\n".join(f"  {path}: {error}" for path, error in failed),
            flush=True,
        )
    sizes = torch.bincount(head_output["predictions"], minlength=num_clusters).tolist()
    print(f"Saved {args.output}: {len(paths)} image(s), cluster sizes {sizes}", flush=True)
    kept = [(path, name) for path, name in zip(paths, assigned) if not (args.skip_unsure and name == UNSURE)]
    per_name = dict(sorted(Counter(name for _, name in kept).items()))
    if args.sort_into:
        sort_into(kept, args.sort_into, link=args.link)
        print(f"{'Linked' if args.link else 'Copied'} them into {args.sort_into}, per name: {per_name}", flush=True)
    if args.labels_csv:
        write_labels_csv(kept, args.labels_csv)
        print(f"Saved {args.labels_csv}: {len(kept)} image(s) with their name, per name: {per_name}", flush=True)
    return {"output": args.output, "num_images": len(paths), "num_failed": len(failed), "cluster_sizes": sizes}


if __name__ == "__main__":
    run_cli(main)

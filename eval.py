"""Evaluate a pretext, SCAN or self-label model (yours or a model-zoo file) on the test split.

    python eval.py --config_exp configs/scan/scan_cifar10.yml --model scan_cifar-10.pth.tar \
                   [--config_env configs/env.yml] [--visualize_prototypes] [--output_dir DIR]

Clustering models: ACC, NMI, ARI, AMI, ACC Top-5 and the Hungarian match in DIR/metrics.json,
DIR/confusion_matrix.png, DIR/predictions.csv, and with --visualize_prototypes DIR/prototypes.png.
Pretext models: neighbour accuracy for k = 1, 5, 20 in DIR/metrics.json.
Both: DIR/report.html, one offline page with the metrics, training curves and (clustering) per-cluster galleries.
DIR defaults to a folder beside the model file.
"""

from __future__ import annotations

import argparse
import csv
import re
from pathlib import Path

from data.augment import get_val_transformations
from data.loaders import eval_loader
from data.registry import get_val_dataset
from models import ClusteringModel, build_backbone, build_model
from utils.checkpoint import CheckpointError, load_checkpoint, load_state_dict_checked, strip_module_prefix
from utils.config import add_config_arguments, format_config, load_config
from utils.evaluate import get_predictions, get_prototype_indices
from utils.html_report import add_report_arguments, gallery_options, write_eval_report
from utils.knn import extract_features, mine_nearest_neighbors, neighbor_accuracy
from utils.plots import plot_prototypes
from utils.report import clustering_report
from utils.results import atomic_write, check_writable, write_json
from utils.runtime import init_runtime
from utils.stage import run_cli

PRETEXT_KS = (1, 5, 20)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Evaluate a pretext, SCAN or self-label model on the test split")
    add_config_arguments(parser, env_required=False)
    parser.add_argument("--model", required=True, help="checkpoint file (pretext, SCAN or self-label format)")
    parser.add_argument("--output_dir", default=None, help="where results go (default: beside the model file)")
    parser.add_argument("--visualize_prototypes", action="store_true", help="also save prototypes.png")
    add_report_arguments(parser)
    return parser.parse_args(argv)


def read_model_file(path: str) -> tuple[dict, int | None]:
    """(state dict, stored head or None) from any of the published or resumable formats."""
    checkpoint = load_checkpoint(path)
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path} holds a {type(checkpoint).__name__}, not a state dict.")
    if "model" in checkpoint and isinstance(checkpoint["model"], dict):  # SCAN {'model', 'head'} or a checkpoint
        head = checkpoint.get("head", checkpoint.get("best_loss_head"))
        return strip_module_prefix(checkpoint["model"]), None if head is None else int(head)
    return strip_module_prefix(checkpoint), None


def default_output_dir(model_path: str | Path) -> Path:
    """`<model dir>/<model file stem>_eval`: where results go without --output_dir, and where predict.py looks."""
    return Path(model_path).parent / (Path(model_path).name.split(".")[0] + "_eval")


def count_heads(state_dict: dict) -> int:
    return len({key.split(".")[1] for key in state_dict if re.match(r"cluster_head\.\d+\.weight$", key)})


def clustering_model_from_file(
    cfg: dict, state_dict: dict, stored_head: int | None, model_path: str
) -> tuple[ClusteringModel, int]:
    """The loaded clustering model a file describes, and the head to use (the stored one, else 0).

    The file decides how many heads and clusters there are: a self-label file (1 head) also fits a SCAN
    config, and an over-clustering model (more clusters than classes) is evaluated by majority mapping.
    """
    num_heads = max(count_heads(state_dict), 1)
    num_clusters = (
        state_dict["cluster_head.0.weight"].shape[0] if "cluster_head.0.weight" in state_dict else cfg["num_classes"]
    )
    if num_clusters != cfg["num_classes"]:
        print(
            f"Note: the model has {num_clusters} clusters, the config says num_classes {cfg['num_classes']}.",
            flush=True,
        )
    model = ClusteringModel(build_backbone(cfg["backbone"], **cfg["backbone_kwargs"]), num_clusters, num_heads)
    load_state_dict_checked(model, state_dict, source=f"model {model_path}")
    head = stored_head if stored_head is not None else 0
    if head >= num_heads:
        raise CheckpointError(f"{model_path} names head {head} but holds only {num_heads} head(s).")
    return model, head


def evaluate_pretext(cfg, state_dict, dataset, runtime, out_dir: Path, model_path: str) -> dict:
    """Neighbour accuracy of the contrastive features on the test split, for k = 1, 5, 20."""
    model = build_model({**cfg, "setup": "pretrained" if cfg["setup"] == "pretrained" else "simclr"})
    load_state_dict_checked(model, state_dict, source=f"pretext model {model_path}")
    loader = eval_loader(dataset, cfg["batch_size"], cfg["num_workers"], runtime)
    features, targets = extract_features(model.to(runtime.device), loader, runtime.device)
    indices, _ = mine_nearest_neighbors(features, targets, max(PRETEXT_KS))
    accuracies = {str(k): neighbor_accuracy(indices, targets, k) for k in PRETEXT_KS}
    metrics = {"model": model_path, "neighbor_acc": accuracies}
    if not runtime.is_main:  # under torchrun every process has extracted and mined its shard; the main one writes
        return metrics
    for k, accuracy in metrics["neighbor_acc"].items():
        shown = "n/a (no labels)" if accuracy is None else f"{100 * accuracy:.2f}%"
        print(f"Top-{k} neighbour accuracy on the test split: {shown}", flush=True)
    write_json(metrics, out_dir / "metrics.json")
    print(f"Saved {out_dir / 'metrics.json'}", flush=True)
    return metrics


def write_predictions_csv(path: Path, dataset, head_output: dict, cluster_to_class: dict[int, str]) -> None:
    """One row per evaluated image: its cluster, confidence and (when matched) class name."""
    paths = getattr(dataset, "paths", None)
    confidence = head_output["probabilities"].max(dim=1).values
    with atomic_write(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["index", "path", "cluster", "confidence", "target", "matched_class"])
        for i, (cluster, conf, target) in enumerate(
            zip(head_output["predictions"].tolist(), confidence.tolist(), head_output["targets"].tolist())
        ):
            writer.writerow(
                [
                    i,
                    paths[i] if paths is not None else "",
                    cluster,
                    f"{conf:.6f}",
                    target,
                    cluster_to_class.get(cluster, ""),
                ]
            )
    print(f"Saved {path}", flush=True)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    cfg = load_config(args.config_env, args.config_exp, args.overrides)
    runtime = init_runtime()  # under torchrun every process evaluates its shard of the test split
    model_path = args.model
    out_dir = Path(args.output_dir) if args.output_dir else default_output_dir(model_path)
    state_dict, stored_head = read_model_file(model_path)
    dataset = get_val_dataset(cfg, get_val_transformations(cfg))
    if runtime.is_main:  # the only process that writes
        print(format_config(cfg), flush=True)
        check_writable(out_dir)
        print(
            f"Evaluating {model_path} on {len(dataset)} test images of {cfg['val_db_name']}; writing to {out_dir}",
            flush=True,
        )

    if any(key.startswith("contrastive_head") for key in state_dict) or cfg["setup"] in (
        "simclr",
        "moco",
        "pretrained",
    ):
        metrics = evaluate_pretext(cfg, state_dict, dataset, runtime, out_dir, model_path)
        if runtime.is_main:
            write_eval_report(out_dir, model_path, metrics)
        return metrics

    model, head = clustering_model_from_file(cfg, state_dict, stored_head, model_path)
    loader = eval_loader(dataset, cfg["batch_size"], cfg["num_workers"], runtime)
    head_outputs, features = get_predictions(
        model.to(runtime.device), loader, runtime.device, return_features=args.visualize_prototypes
    )
    if not runtime.is_main:  # it has predicted its shard; the main process writes the results
        return {}
    head_output = head_outputs[head]
    metrics = clustering_report(
        head_output,
        dataset.classes,
        out_dir,
        extra={"model": model_path, "head": head},
        title=f"Head {head} of {model.num_heads}",
    )

    cluster_to_class = {cluster: dataset.classes[cls] for cluster, cls in metrics.get("hungarian_match", [])}
    write_predictions_csv(out_dir / "predictions.csv", dataset, head_output, cluster_to_class)
    if args.visualize_prototypes:
        indices = get_prototype_indices(head_output["probabilities"], features)
        shown = [(cluster, index) for cluster, index in enumerate(indices) if index is not None]
        images = [dataset.get_image(index) for _, index in shown]
        titles = [
            f"{cluster}: {cluster_to_class[cluster]}" if cluster in cluster_to_class else f"cluster {cluster}"
            for cluster, _ in shown
        ]
        plot_prototypes(images, titles, out_dir / "prototypes.png")
        print(f"Saved {out_dir / 'prototypes.png'} ({len(shown)} non-empty clusters)", flush=True)
    write_eval_report(out_dir, model_path, metrics, dataset, head_output, gallery_options(args))
    return metrics


if __name__ == "__main__":
    run_cli(main)

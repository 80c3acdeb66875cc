"""Evaluate a pretext, SCAN or self-label model (yours or a model-zoo file) on the test split.

    python eval.py --config_exp configs/scan/scan_cifar10.yml --model scan_cifar-10.pth.tar \
                   [--config_env configs/env.yml] [--visualize_prototypes] [--output_dir DIR]

Clustering models: metrics.json (ACC, NMI, ARI, AMI, ACC Top-5, Hungarian match), confusion_matrix.png,
predictions.csv, cluster_names.yml (written once, for the user to edit; read back after) and with
--visualize_prototypes prototypes.png; pretext models: neighbour accuracy for k = 1, 5, 20. Both: report.html.
DIR defaults to a folder beside the model file (docs/outputs.md).
"""

from __future__ import annotations

import argparse

from tools.cluster_names import add_naming_arguments
from tools.report_options import add_report_arguments, gallery_options
from utils.config import ArgumentParser, add_config_arguments, add_eval_batch_size_argument, parse_early


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(description="Evaluate a pretext, SCAN or self-label model on the test split")
    add_config_arguments(parser, env_required=False)
    parser.add_argument("--model", required=True, help="checkpoint file (pretext, SCAN or self-label format)")
    parser.add_argument("--output_dir", default=None, help="where results go (default: beside the model file)")
    parser.add_argument("--visualize_prototypes", action="store_true", help="also save prototypes.png")
    add_naming_arguments(parser)
    add_eval_batch_size_argument(parser)
    add_report_arguments(parser)
    return parser.parse_args(argv)


parse_early(__name__, parse_args)

from pathlib import Path

from data.registry import get_val_dataset
from data.stage_batches import eval_batches
from engine.inference import run_model
from engine.knn import mine_nearest_neighbors, neighbor_accuracy
from engine.metrics import get_prototype_indices
from engine.model_files import default_output_dir, file_sha256, load_model_file
from engine.result_files import clustering_report, write_predictions_csv
from engine.stage import run_cli
from tools.cluster_names import NAMES_FILE, assign_names, cluster_names
from tools.html_report import write_eval_report
from utils.config import format_config, load_config
from utils.files import check_writable, write_json
from utils.plots import plot_prototypes
from utils.runtime import init_runtime, main_process_speaks, resolve_fast_path

PRETEXT_KS = (1, 5, 20)


def evaluate_pretext(cfg, model, batches, runtime, out_dir: Path, model_path: str) -> dict:
    """Neighbour accuracy of the contrastive features on the test split, for k = 1, 5, 20."""
    outputs = run_model(model.to(runtime.device), batches, runtime.device)
    features, targets = outputs.features.numpy(), outputs.targets.numpy()
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


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    cfg = load_config(args.config_env, args.config_exp, args.overrides)
    cfg["batch_size"] = args.batch_size  # not the training batch (1000 for self-labeling): any machine evaluates
    runtime = init_runtime()  # under torchrun every process evaluates its shard of the test split
    resolve_fast_path(cfg, runtime)  # the stages' batches: augmentation_backend, channels_last as they resolve
    model_path = args.model
    out_dir = Path(args.output_dir) if args.output_dir else default_output_dir(model_path)
    with main_process_speaks(runtime):
        model, head = load_model_file(cfg, model_path)
    dataset = get_val_dataset(cfg)
    batches = eval_batches(cfg, dataset, runtime)
    if runtime.is_main:  # the only process that writes
        print(format_config(cfg), flush=True)
        check_writable(out_dir)
        print(
            f"Evaluating {model_path} on {len(dataset)} test images of {cfg['val_db_name']}; writing to {out_dir}",
            flush=True,
        )

    if head is None:  # a pretext model
        metrics = evaluate_pretext(cfg, model, batches, runtime, out_dir, model_path)
        if runtime.is_main:
            write_eval_report(out_dir, model_path, metrics)
        return metrics

    forward_pass = "return_all" if args.visualize_prototypes else None  # prototypes need the backbone features
    outputs = run_model(model.to(runtime.device), batches, runtime.device, forward_pass)
    if not runtime.is_main:  # it has predicted its shard; the main process writes the results
        return {}
    head_output = outputs.head(head)
    extra, title = {"model": model_path, "head": head}, f"Head {head} of {model.num_heads}"
    metrics = clustering_report(head_output, dataset.classes, out_dir, extra, title)

    cluster_to_class = {cluster: dataset.classes[cls] for cluster, cls in metrics.get("hungarian_match", [])}
    num_clusters = head_output["probabilities"].shape[1]
    names_path = Path(args.names or out_dir / NAMES_FILE)
    names = cluster_names(names_path, num_clusters, cluster_to_class, write=True, model_sha256=file_sha256(model_path))
    paths = getattr(dataset, "paths", None)  # an image without a file is `<dataset>[<index>]`
    files = [str(paths[i]) if paths is not None else f"{cfg['val_db_name']}[{i}]" for i in range(len(dataset))]
    assigned = assign_names(head_output, names, args.unsure_below)
    write_predictions_csv(out_dir / "predictions.csv", files, head_output, dataset.classes, cluster_to_class, assigned)
    print(f"Saved {out_dir / 'predictions.csv'}", flush=True)
    if args.visualize_prototypes:
        indices = get_prototype_indices(head_output["probabilities"], outputs.features)
        shown = [(cluster, index) for cluster, index in enumerate(indices) if index is not None]
        images = [dataset.get_image(index) for _, index in shown]
        plot_prototypes(images, [f"{cluster}: {names[cluster]}" for cluster, _ in shown], out_dir / "prototypes.png")
        print(f"Saved {out_dir / 'prototypes.png'} ({len(shown)} non-empty clusters)", flush=True)
    write_eval_report(
        out_dir, model_path, metrics, dataset, head_output, gallery_options(args), names, args.unsure_below
    )
    return metrics


if __name__ == "__main__":
    run_cli(main)

"""How many clusters? SCAN heads for several K on cached features, label-free criteria, one recommendation.

    python estimate_k.py --config_env configs/env.yml --config_exp configs/scan/scan_digits_features.yml \
                         --k 5 8 10 12 15 20 --seeds 0 1 2 3 4

Needs the pretext stage's cached features (`save_features: true`). For every K and seed it trains the config's
SCAN heads on the train features, then scores the train assignments (engine/cluster_number.py); labels, when
there are any, give test ACC/NMI/ARI for reference only. Writes <root_dir>/<db>/estimate_k/estimate_k.{json,md};
--write_k sets num_classes to the recommended K in the configs it names (tools.new_dataset --num_classes auto).
"""

from __future__ import annotations

import argparse
import os

from utils.config import ArgumentParser, add_config_arguments, parse_early


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(description="Estimate the number of clusters from cached features")
    add_config_arguments(parser, env_required=False)
    parser.add_argument("--k", type=int, nargs="+", required=True, help="candidate numbers of clusters")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="one SCAN run per seed and K")
    parser.add_argument("--write_k", nargs="+", default=[], metavar="CONFIG", help="configs to set num_classes in")
    args = parser.parse_args(argv)
    if len(args.seeds) < 2:
        parser.error("--seeds needs at least two seeds: stability compares runs")
    if min(args.k) < 2:
        parser.error("--k values must be at least 2")
    if missing := [config for config in args.write_k if not os.path.isfile(config)]:
        parser.error(f"--write_k {' '.join(missing)}: no such config file")
    return args


parse_early(__name__, parse_args)

import statistics
from pathlib import Path

import numpy as np
import torch

from data.cached_features import CachedPairLoader, load_cached_split
from engine.cluster_criteria import kappa, neighbour_agreement, scan_evaluate
from engine.cluster_number import recommend, size_balance, stability, used_clusters
from engine.inference import run_model
from engine.metrics import cluster_metrics
from engine.stage import run_cli, stage_command
from losses import make_criterion
from models import ClusteringModel
from utils.config import load_config
from utils.files import atomic_write, write_json
from utils.optim import adjust_learning_rate, build_optimizer
from utils.progress import tqdm
from utils.runtime import init_runtime, seed_everything
from utils.yaml_lines import set_values

LABEL_METRICS = ("ACC", "NMI", "ARI")


def train_heads(train, num_clusters: int, cfg: dict, seed: int, device) -> ClusteringModel:
    """SCAN heads for `num_clusters` on the cached train features: scan.py's head-only loop without files."""
    seed_everything(seed)
    features_in = torch.nn.Identity()
    features_in.out_dim = train.features.shape[1]
    model = ClusteringModel(features_in, num_clusters, cfg["num_heads"]).to(device)
    # A target prior lists one size per cluster of the config's num_classes: it cannot follow K, so it is left out.
    kwargs = {key: value for key, value in cfg["criterion_kwargs"].items() if key != "target_prior"}
    criterion = make_criterion({**cfg, "criterion_kwargs": kwargs}, "scan")
    optimizer = build_optimizer({**cfg, "update_cluster_head_only": True}, model)
    loader = CachedPairLoader(train, cfg["batch_size"], device)
    model.train()
    for epoch in range(cfg["epochs"]):
        adjust_learning_rate(cfg, optimizer, epoch)
        for batch in loader:
            anchors = model(batch["anchor"], forward_pass="head")
            neighbors = model(batch["neighbor"], forward_pass="head")
            loss = torch.stack([criterion(a, n)[0] for a, n in zip(anchors, neighbors)]).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model


def score_run(model, train, val, num_clusters: int, device) -> dict:
    """Label-free criteria on the train split (the lowest-loss head, chosen as scan.py does) + reference metrics."""
    train_heads_out = run_model(model, train.batches(), device, forward_pass="head").heads()
    val_out = run_model(model, val.batches(), device, forward_pass="head").heads()
    head = scan_evaluate(val_out)["lowest_loss_head"]
    chosen = train_heads_out[head]
    assignment = chosen["predictions"].numpy()
    neighbors = train.neighbors.numpy()
    scan_scores = scan_evaluate([chosen])["scan"][0]
    run = {
        "assignment": assignment,
        "agreement": neighbour_agreement(assignment, neighbors),
        "kappa": kappa(assignment, neighbors, num_clusters),
        "balance": size_balance(assignment, num_clusters),
        "used": used_clusters(assignment, num_clusters),
        "scan_loss_per_log_k": scan_scores["total_loss"] / np.log(num_clusters),
    }
    if not (val.targets < 0).any():
        chosen_val = val_out[head]  # K: the dataset's classes, as eval.py counts them
        scores = cluster_metrics(
            chosen_val["predictions"], chosen_val["probabilities"], val.targets, num_classes=len(val.classes)
        )
        run.update({key: scores[key] for key in LABEL_METRICS})
    return run


def summarize_k(num_clusters: int, runs: list[dict]) -> dict:
    """Mean over seeds of every criterion, plus stability across the seeds."""
    mean_ari, std_ari, pairwise = stability([run["assignment"] for run in runs])
    row = {"k": num_clusters, "stability": mean_ari, "stability_std": std_ari, "pairwise_ari": pairwise}
    for key in ("agreement", "kappa", "balance", "used", "scan_loss_per_log_k", *LABEL_METRICS):
        if key in runs[0]:
            row[key] = statistics.fmean(run[key] for run in runs)
    return row


def format_table(rows: list[dict], recommendation: dict) -> str:
    labels = "ACC" in rows[0]
    header = (
        "| K | stability (ARI between seeds) | neighbour agreement | kappa | balance | used clusters "
        "| SCAN loss / log K |"
    )
    lines = [header + (" ACC* | NMI* | ARI* |" if labels else ""), "|---" * (7 + 3 * labels) + "|"]
    for row in rows:
        mark = " ←" if row["k"] == recommendation["k"] else ""
        cells = [f"{row['k']}{mark}", f"{row['stability']:.3f} ± {row['stability_std']:.3f}"]
        cells += [f"{row[key]:.3f}" for key in ("agreement", "kappa", "balance")] + [f"{row['used']:.1f}"]
        cells += [f"{row[key]:.3f}" for key in ("scan_loss_per_log_k", *(LABEL_METRICS if labels else ()))]
        lines.append("| " + " | ".join(cells) + " |")
    if labels:
        lines.append("\n*test split, mean over seeds: for reference only, never used to choose K.")
    lines.append(f"\nRecommended K = {recommendation['k']} (confidence: {recommendation['confidence']}). ")
    lines.append(recommendation["reason"])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    cfg = load_config(args.config_env, args.config_exp, args.overrides)
    runtime = init_runtime()
    pretext_command = stage_command("pretext", cfg["train_db_name"], args.config_env, cfg["backbone"])
    train = load_cached_split(cfg, "train", pretext_command, cfg["num_neighbors"])
    val = load_cached_split(cfg, "val", pretext_command)
    print(
        f"Estimating K among {args.k} with seeds {args.seeds}: {len(train.targets)} train features "
        f"({train.features.shape[1]}-d), {cfg['epochs']} epochs per run",
        flush=True,
    )
    rows = []
    for num_clusters in sorted(set(args.k)):
        runs = []
        for seed in tqdm(args.seeds, desc=f"K={num_clusters}", leave=False):
            model = train_heads(train, num_clusters, cfg, seed, runtime.device)
            runs.append(score_run(model, train, val, num_clusters, runtime.device))
        rows.append(summarize_k(num_clusters, runs))
        print(f"K={num_clusters}: stability {rows[-1]['stability']:.3f}", flush=True)
    recommendation = recommend(rows)
    table = format_table(rows, recommendation)
    print(table, flush=True)
    out_dir = Path(cfg["root_dir"]) / cfg["train_db_name"] / "estimate_k"
    result = {"config": str(args.config_exp), "seeds": args.seeds, "rows": rows, "recommendation": recommendation}
    write_json(result, out_dir / "estimate_k.json")
    (out_dir / "estimate_k.md").write_text(table + "\n")
    print(f"Saved {out_dir / 'estimate_k.json'} and {out_dir / 'estimate_k.md'}", flush=True)
    for path in args.write_k:  # the configs' comments are kept
        with atomic_write(path, "w") as handle:
            handle.write(set_values(Path(path).read_text(), {"num_classes": recommendation["k"]}))
        print(f"num_classes: {recommendation['k']} written to {path}", flush=True)
    return result


if __name__ == "__main__":
    run_cli(main)

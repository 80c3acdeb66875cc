"""Stage 2: SCAN clustering on mined neighbours.

    python scan.py --config_env configs/env.yml --config_exp configs/scan/scan_cifar10.yml

Needs the pretext stage's model.pth.tar and neighbour files; writes <root_dir>/<db>/scan/ (docs/outputs.md). With
`update_cluster_head_only: true` and `head_input: cached_features` the heads train on the backbone features the
pretext stage saved (data/cached_features.py).
"""

from __future__ import annotations

from utils.config import stage_parser

PARSER = stage_parser("SCAN clustering", __name__)

import math
import time
from pathlib import Path

import torch

from data.cached_features import CachedPairLoader, check_cached_mode, load_cached_split
from data.dataloaders import set_epoch
from data.neighbors import read_neighbors
from data.registry import get_train_dataset, get_val_dataset
from data.stage_batches import eval_batches, train_batches
from engine.cluster_criteria import scan_evaluate
from engine.inference import run_model
from engine.metrics import cluster_metrics
from engine.model_files import architecture_record, read_sidecar, require_matching_architecture, save_scan_file
from engine.result_files import clustering_report
from engine.stage import check_cluster_count, run_cli, setup_stage, stage_command
from losses import make_criterion
from models import build_model
from utils.checkpoint import load_checkpoint, load_state_dict_checked
from utils.guard import TrainingGuard, finite_loss
from utils.history import History
from utils.optim import adjust_learning_rate, build_optimizer
from utils.prerequisites import require_files
from utils.progress import tqdm
from utils.runtime import autocast, barrier, unwrap, wrap_model


def train_one_epoch(loader, model, criterion, optimizer, runtime, cfg: dict, epoch: int) -> dict:
    """One pass over (anchor, neighbour) pairs; every head's loss is summed for backprop. With
    `head_input: cached_features` the batches already hold backbone features, so only the heads run."""
    head_only = cfg["update_cluster_head_only"]
    cached = cfg.get("head_input") == "cached_features"
    model.train(not head_only)  # a frozen backbone runs in eval mode and keeps its BatchNorm statistics
    sums = {"total": 0.0, "consistency": 0.0, "entropy": 0.0}
    steps = 0
    progress = tqdm(loader, desc=f"epoch {epoch + 1}", leave=False, disable=not runtime.is_main)
    for batch in progress:
        anchors = batch["anchor"].to(runtime.device, non_blocking=True)
        neighbors = batch["neighbor"].to(runtime.device, non_blocking=True)
        with autocast(runtime, cfg["amp"]):
            if head_only:
                anchor_features, neighbor_features = anchors, neighbors
                if not cached:
                    with torch.no_grad():
                        anchor_features = model(anchors, forward_pass="backbone")
                        neighbor_features = model(neighbors, forward_pass="backbone")
                anchors_output = model(anchor_features, forward_pass="head")
                neighbors_output = model(neighbor_features, forward_pass="head")
            else:
                anchors_output, neighbors_output = model(anchors), model(neighbors)
        losses = [criterion(a, n) for a, n in zip(anchors_output, neighbors_output)]
        total_loss = torch.stack([total for total, _, _ in losses]).sum()
        optimizer.zero_grad(set_to_none=True)
        total_loss.backward()
        optimizer.step()
        steps += 1
        # The step's values in one device sync, not one per head: total, mean consistency, mean entropy.
        parts = torch.stack([torch.stack([c, e]) for _, c, e in losses]).detach().double().mean(dim=0)
        total, consistency, entropy = torch.cat([total_loss.detach().double().reshape(1), parts]).tolist()
        sums["total"] += finite_loss(total, epoch, steps)
        sums["consistency"] += consistency
        sums["entropy"] += entropy
        progress.set_postfix(loss=f"{total:.4f}")
    return {key: value / max(steps, 1) for key, value in sums.items()}


def main(argv: list[str] | None = None) -> dict:
    args, cfg, runtime, plan = setup_stage(PARSER, argv, ("scan",))
    if plan.up_to_date:
        return plan.saved_metrics
    pretext_command = stage_command("pretext", cfg["train_db_name"], args.config_env, cfg["backbone"])
    require_files(
        [cfg["pretext_model"], cfg["topk_neighbors_train_path"], cfg["topk_neighbors_val_path"]], pretext_command
    )
    Path(cfg["scan_dir"]).mkdir(parents=True, exist_ok=True)
    check_cached_mode(cfg)
    cached = cfg["head_input"] == "cached_features"

    if cached:  # backbone features saved by the pretext stage: no image decoded, no backbone forward pass
        train_data = load_cached_split(cfg, "train", pretext_command, cfg["num_neighbors"])
        val_data = load_cached_split(cfg, "val", pretext_command)
        check_cluster_count(cfg["num_classes"], len(train_data.targets))
        loader = CachedPairLoader(train_data, cfg["batch_size"], runtime.device, runtime.world_size)
        class_names, num_train, num_val = val_data.classes, len(train_data.targets), len(val_data.targets)
    else:
        train_dataset, val_dataset = get_train_dataset(cfg), get_val_dataset(cfg)
        train_neighbors, val_neighbors = cfg["topk_neighbors_train_path"], cfg["topk_neighbors_val_path"]
        loader = train_batches(
            cfg, train_dataset, runtime, neighbors=read_neighbors(train_neighbors), source=train_neighbors
        )
        val_loader = eval_batches(
            cfg, val_dataset, runtime, neighbors=read_neighbors(val_neighbors), source=val_neighbors
        )
        check_cluster_count(cfg["num_classes"], len(train_dataset))
        class_names, num_train, num_val = val_dataset.classes, len(train_dataset), len(val_dataset)

    def val_predictions(model) -> list[dict]:
        if cached:
            return run_model(model, val_data.batches(), runtime.device, forward_pass="head").heads()
        return run_model(model, val_loader, runtime.device).heads()

    if runtime.is_main:
        print(
            f"Train: {num_train} {'cached features' if cached else 'images'} with {cfg['num_neighbors']} "
            f"neighbours each, test: {num_val}. Writing to {cfg['scan_dir']}",
            flush=True,
        )

    require_matching_architecture(
        (read_sidecar(cfg["pretext_model"]) or {}).get("architecture"),
        cfg,
        ("backbone", "backbone_kwargs"),
        source=f"pretext model {cfg['pretext_model']}",
    )
    model = build_model(cfg)
    # A pretext model seeds the backbone: only its contrastive head may go unused, only the heads stay new.
    load_state_dict_checked(
        model,
        load_checkpoint(cfg["pretext_model"], pretext_command),
        allowed_unused=("contrastive_head",),
        allowed_missing=("cluster_head",),
        source=f"pretext model {cfg['pretext_model']}",
    )
    # The optimizer freezes the backbone when only the heads train: build it before DDP wraps the model, since DDP
    # expects a gradient, at every step, for each parameter that required one when it wrapped the model.
    optimizer = build_optimizer(cfg, model.to(runtime.device))
    model = wrap_model(model, runtime)
    criterion = make_criterion(cfg, "scan")

    guard = TrainingGuard(cfg, runtime, cfg["scan_checkpoint"], unwrap(model), optimizer, plan)
    checkpoint = guard.resume()
    best_loss, best_loss_head = checkpoint.get("best_loss", math.inf), checkpoint.get("best_loss_head")
    history = History(cfg["scan_dir"], guard.start_epoch, cfg["epochs"], cfg["tensorboard"], runtime.is_main)

    for epoch in guard.epochs():
        set_epoch(loader, epoch)
        lr = adjust_learning_rate(cfg, optimizer, epoch)
        start = time.perf_counter()
        losses = train_one_epoch(guard.batches(loader), model, criterion, optimizer, runtime, cfg, epoch)
        pairs_per_second = len(loader) * loader.batch_size / (time.perf_counter() - start)

        # Pick the head with the lowest SCAN loss on the test neighbours (no labels used). Every process predicts
        # its shard and gets all predictions, so all pick the same head.
        head_outputs = val_predictions(unwrap(model))
        scores = scan_evaluate(head_outputs)
        head, head_loss = scores["lowest_loss_head"], scores["lowest_loss"]
        improved = head_loss < best_loss
        if improved:
            best_loss, best_loss_head = head_loss, head
        if runtime.is_main:
            summary = (
                f"Epoch {epoch + 1}/{cfg['epochs']}  lr {lr:.5f}  train loss {losses['total']:.4f} "
                f"(consistency {losses['consistency']:.4f}, entropy {losses['entropy']:.4f})  "
                f"best head {head} val loss {head_loss:.4f}  ({pairs_per_second:.0f} pairs/s)"
            )
            chosen, accuracy = head_outputs[head], None
            if not (chosen["targets"] < 0).any():
                accuracy = cluster_metrics(
                    chosen["predictions"], chosen["probabilities"], chosen["targets"], num_classes=len(class_names)
                )["ACC"]
                summary += f"  ACC {100 * accuracy:.2f}"
            print(summary, flush=True)
            history.log(epoch + 1, **losses, lr=lr, val_loss=head_loss, head=head, ACC=accuracy)
            if improved:
                save_scan_file(
                    unwrap(model).state_dict(), head, cfg["scan_model"], architecture_record(cfg), plan.record
                )
                print(f"  lowest loss so far: saved head {head} to {cfg['scan_model']}", flush=True)
        guard.save_checkpoint(epoch + 1, best_loss=best_loss, best_loss_head=best_loss_head)

    if not Path(cfg["scan_model"]).is_file():  # epochs: 0 — the untrained heads, as simclr.py writes its model
        scores = scan_evaluate(val_predictions(unwrap(model)))
        best_loss, head = scores["lowest_loss"], scores["lowest_loss_head"]
        if runtime.is_main:
            save_scan_file(unwrap(model).state_dict(), head, cfg["scan_model"], architecture_record(cfg), plan.record)
            print(f"No epoch trained: saved the untrained heads (head {head}) to {cfg['scan_model']}", flush=True)
        barrier(runtime)
    best = load_checkpoint(cfg["scan_model"])
    final_model = build_model(cfg).to(runtime.device)
    load_state_dict_checked(final_model, best["model"], source=cfg["scan_model"])
    head_outputs = val_predictions(final_model)  # every process predicts its shard; the main one reports
    metrics = {}
    if runtime.is_main:
        metrics = clustering_report(
            head_outputs[int(best["head"])],
            class_names,
            cfg["scan_dir"],
            extra={"head": int(best["head"]), "best_loss": best_loss, "record": plan.record},
            title=f"SCAN (head {int(best['head'])}) on the test split",
        )
    barrier(runtime)
    return metrics


if __name__ == "__main__":
    run_cli(main)

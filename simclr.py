"""Stage 1: SimCLR pretext training, then nearest-neighbour mining for SCAN.

    python simclr.py --config_env configs/env.yml --config_exp configs/pretext/simclr_cifar10.yml

Writes <root_dir>/<db>/pretext/ (docs/outputs.md); resumes from its checkpoint.pth.tar when it exists.
"""

from __future__ import annotations

from utils.config import stage_parser

PARSER = stage_parser("SimCLR pretext training and neighbour mining", __name__)

from pathlib import Path

import torch

from data.dataloaders import set_epoch
from data.registry import get_train_dataset, get_val_dataset
from data.stage_batches import eval_batches, train_batches
from engine.inference import run_model
from engine.knn import mine_and_save_neighbors, weighted_knn_accuracy
from engine.model_files import architecture_record, save_state_dict_file
from engine.stage import run_cli, setup_stage
from losses import make_criterion
from models import build_model
from utils.distributed import gather_with_grad
from utils.files import write_json
from utils.guard import TrainingGuard, finite_loss
from utils.history import History
from utils.optim import adjust_learning_rate, build_optimizer
from utils.progress import tqdm
from utils.runtime import autocast, barrier, unwrap, wrap_model


def train_one_epoch(
    loader, model, criterion, optimizer, runtime, amp: bool, epoch: int, gather_negatives: bool = True
) -> float:
    """One pass of SimCLR over the train split; returns the mean loss."""
    model.train()
    total, steps = 0.0, 0
    progress = tqdm(loader, desc=f"epoch {epoch + 1}", leave=False, disable=not runtime.is_main)
    for batch in progress:
        images = batch["image"].to(runtime.device, non_blocking=True)
        augmented = batch["image_augmented"].to(runtime.device, non_blocking=True)
        b = images.shape[0]
        inputs = torch.stack([images, augmented], dim=1).flatten(0, 1)  # [2b, C, H, W], views interleaved
        if runtime.channels_last:  # stacking gives a plain contiguous tensor: back to the model's layout
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with autocast(runtime, amp):
            features = model(inputs)
        features = features.view(b, 2, -1)
        if gather_negatives:  # under torchrun: contrast with the whole global batch, not this process's slice
            features = gather_with_grad(features)
        loss = criterion(features)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        value = finite_loss(loss, epoch, steps + 1)  # the step's one device sync
        total, steps = total + value, steps + 1
        progress.set_postfix(loss=f"{value:.4f}")
    return total / max(steps, 1)


def knn_monitor_due(epoch: int, knn_every: int, epochs: int) -> bool:
    """Whether the kNN monitor runs after 0-based `epoch`: every `knn_every` epochs, and after the last one
    whatever `knn_every` is, so that every run ends with a measured kNN accuracy in its history and checkpoint."""
    return (epoch + 1) % knn_every == 0 or epoch + 1 == epochs


def knn_monitor(model, base_loader, val_loader, cfg, device) -> float | None:
    """Weighted-kNN top-1 of test features against the train memory bank (None without labels)."""
    bank = run_model(model, base_loader, device, desc="memory bank")
    query = run_model(model, val_loader, device, desc="kNN monitor")
    bank, bank_targets, query, query_targets = bank.features, bank.targets, query.features, query.targets
    if (bank_targets < 0).all() or (query_targets < 0).all():
        return None
    # Votes go to label classes, which need not number num_classes (the clusters) on a folder of your own images.
    num_label_classes = int(max(bank_targets.max(), query_targets.max())) + 1
    return weighted_knn_accuracy(
        query.to(device),
        query_targets.to(device),
        bank.to(device),
        bank_targets.to(device),
        num_label_classes,
        k=cfg["knn_monitor_k"],
        temperature=cfg["criterion_kwargs"]["temperature"],
    )


def main(argv: list[str] | None = None) -> dict:
    args, cfg, runtime, plan = setup_stage(PARSER, argv, ("simclr",))
    if plan.up_to_date:
        return plan.saved_metrics
    Path(cfg["pretext_dir"]).mkdir(parents=True, exist_ok=True)

    model = build_model(cfg)
    train_dataset = get_train_dataset(cfg, split=cfg["train_split"])
    base_dataset = get_train_dataset(cfg)  # train split, val transform: memory bank + mining
    val_dataset = get_val_dataset(cfg)
    loader = train_batches(cfg, train_dataset, runtime, views=("train", "train"))
    base_loader = eval_batches(cfg, base_dataset, runtime)
    val_loader = eval_batches(cfg, val_dataset, runtime)
    if runtime.is_main:
        print(
            f"Train ({cfg['train_split']}): {len(train_dataset)} images, memory bank: {len(base_dataset)}, "
            f"test: {len(val_dataset)}. Writing to {cfg['pretext_dir']}",
            flush=True,
        )

    model = wrap_model(model, runtime)
    criterion = make_criterion(cfg, "simclr")
    optimizer = build_optimizer(cfg, model)

    guard = TrainingGuard(cfg, runtime, cfg["pretext_checkpoint"], unwrap(model), optimizer, plan)
    knn_top1 = guard.resume().get("knn_top1")

    history = History(cfg["pretext_dir"], guard.start_epoch, cfg["epochs"], cfg["tensorboard"], runtime.is_main)
    for epoch in guard.epochs():
        set_epoch(loader, epoch)
        lr = adjust_learning_rate(cfg, optimizer, epoch)
        loss = train_one_epoch(
            guard.batches(loader), model, criterion, optimizer, runtime, cfg["amp"], epoch, cfg["gather_negatives"]
        )
        knn_due = knn_monitor_due(epoch, cfg["knn_every"], cfg["epochs"])
        if knn_due:  # every process extracts and votes for its shard
            knn_top1 = knn_monitor(unwrap(model), base_loader, val_loader, cfg, runtime.device)
        if runtime.is_main:
            summary = f"Epoch {epoch + 1}/{cfg['epochs']}  lr {lr:.5f}  loss {loss:.4f}"
            if knn_due:
                summary += "  kNN top-1 " + ("n/a (no labels)" if knn_top1 is None else f"{100 * knn_top1:.2f}%")
            print(summary, flush=True)
            history.log(epoch + 1, loss=loss, lr=lr, knn_top1=knn_top1)
        guard.save_checkpoint(epoch + 1, knn_top1=knn_top1)

    if runtime.is_main:
        save_state_dict_file(unwrap(model).state_dict(), cfg["pretext_model"], architecture_record(cfg), plan.record)
        print(f"Saved the pretext model to {cfg['pretext_model']}", flush=True)
    # Every process mines its shard; the main one writes the neighbour files.
    metrics = mine_and_save_neighbors(
        unwrap(model), base_loader, val_loader, cfg, runtime.device, classes=val_dataset.classes
    )
    metrics.update(knn_top1=knn_top1, record=plan.record)
    if runtime.is_main:
        write_json(metrics, Path(cfg["pretext_dir"]) / "metrics.json")
    barrier(runtime)
    return metrics


if __name__ == "__main__":
    run_cli(main)

"""Stage 3: self-labeling with confident pseudo-labels of the SCAN model.

    python selflabel.py --config_env configs/env.yml --config_exp configs/selflabel/selflabel_cifar10.yml

Starts from the best head of scan/model.pth.tar (as head 0). Writes <root_dir>/<db>/selflabel/
{checkpoint.pth.tar, model.pth.tar (plain state dict), confusion_matrix.png, metrics.json}.
"""

from __future__ import annotations

from pathlib import Path

import torch

from data.batches import eval_batches, train_batches
from data.loaders import set_epoch
from data.registry import get_train_dataset, get_val_dataset
from losses import ConfidenceBasedCE, NoConfidentSamplesError
from models import build_model
from utils.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_state_dict_checked,
    save_atomic,
    strip_module_prefix,
)
from utils.evaluate import cluster_metrics, get_predictions
from utils.guard import TrainingGuard, finite_loss
from utils.history import History
from utils.optim import EMA, adjust_learning_rate, build_optimizer
from utils.progress import tqdm
from utils.report import clustering_report
from utils.runtime import autocast, barrier, unwrap, wrap_model
from utils.stage import check_cluster_count, require_files, run_cli, setup_stage, stage_command


def best_head_state_dict(scan_checkpoint: dict) -> dict:
    """The SCAN model's state dict with only its best head, renamed to head 0."""
    state, head = strip_module_prefix(dict(scan_checkpoint["model"])), int(scan_checkpoint["head"])
    best_weight, best_bias = state[f"cluster_head.{head}.weight"], state[f"cluster_head.{head}.bias"]
    state = {key: value for key, value in state.items() if not key.startswith("cluster_head.")}
    state["cluster_head.0.weight"], state["cluster_head.0.bias"] = best_weight, best_bias
    return state


def train_one_epoch(loader, model, criterion, optimizer, ema, runtime, amp: bool, epoch: int) -> dict:
    """Cross-entropy of the strong view toward the weak view's confident predictions."""
    model.train()
    total, steps, skipped, confident_samples, samples = 0.0, 0, 0, 0, 0
    progress = tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=not runtime.is_main)
    for batch in progress:
        images = batch["image"].to(runtime.device, non_blocking=True)
        augmented = batch["image_augmented"].to(runtime.device, non_blocking=True)
        with autocast(runtime, amp):
            with torch.no_grad():
                weak_output = model(images)[0]
            strong_output = model(augmented)[0]
        confident_samples += (weak_output.float().softmax(dim=1).max(dim=1).values > criterion.threshold).sum()
        samples += weak_output.shape[0]
        confident = True
        try:
            loss = criterion(weak_output, strong_output)
        except NoConfidentSamplesError:
            # Nothing to learn from this batch: counted and reported per epoch.
            confident, skipped = False, skipped + 1
            if not runtime.distributed:
                continue
            # Under DDP every process must join the gradient all-reduce: contribute a zero gradient.
            loss = strong_output.float().sum() * 0.0
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if ema is not None:
            ema.update(unwrap(model))
        if confident:
            total, steps = total + finite_loss(loss, epoch, steps + skipped + 1), steps + 1
            progress.set_postfix(loss=f"{loss.item():.4f}")
    confident_fraction = int(confident_samples) / max(samples, 1)
    return {"loss": total / max(steps, 1), "steps": steps, "skipped": skipped, "confident": confident_fraction}


def main(argv: list[str] | None = None) -> dict:
    args, cfg, runtime = setup_stage("Self-labeling", argv, ("selflabel",))
    scan_command = stage_command("scan", cfg["train_db_name"], args.config_env)
    require_files([cfg["scan_model"]], scan_command)
    Path(cfg["selflabel_dir"]).mkdir(parents=True, exist_ok=True)

    # Weak view: the val transform; strong view: the training augmentation.
    train_dataset, val_dataset = get_train_dataset(cfg), get_val_dataset(cfg)
    check_cluster_count(cfg["num_classes"], len(train_dataset))
    loader = train_batches(cfg, train_dataset, runtime, views=("val", "train"))
    val_loader = eval_batches(cfg, val_dataset, runtime)
    if runtime.is_main:
        print(
            f"Train: {len(train_dataset)} images, test: {len(val_dataset)}. Writing to {cfg['selflabel_dir']}",
            flush=True,
        )

    model = build_model(cfg)
    scan_checkpoint = load_checkpoint(cfg["scan_model"], scan_command)
    if not isinstance(scan_checkpoint, dict) or not {"model", "head"} <= scan_checkpoint.keys():
        raise CheckpointError(f"{cfg['scan_model']} is not a SCAN model file (a dict with 'model' and 'head').")
    load_state_dict_checked(model, best_head_state_dict(scan_checkpoint), source=f"SCAN model {cfg['scan_model']}")
    model = wrap_model(model, runtime)
    criterion = ConfidenceBasedCE(cfg["confidence_threshold"], **cfg["criterion_kwargs"])
    optimizer = build_optimizer(cfg, model)

    guard = TrainingGuard(cfg, runtime, cfg["selflabel_checkpoint"], unwrap(model), optimizer)
    guard.resume()
    # EMA writes its average back into the model after every step, so the resumed weights are its state.
    ema = EMA(unwrap(model), alpha=cfg["ema_alpha"]) if cfg["use_ema"] else None
    history = History(cfg["selflabel_dir"], guard.start_epoch, cfg["epochs"], cfg["tensorboard"], runtime.is_main)

    for epoch in guard.epochs():
        set_epoch(loader, epoch)
        lr = adjust_learning_rate(cfg, optimizer, epoch)
        stats = train_one_epoch(guard.batches(loader), model, criterion, optimizer, ema, runtime, cfg["amp"], epoch)
        head_output = get_predictions(unwrap(model), val_loader, runtime.device)[0][0]  # each process: its shard
        if runtime.is_main:
            summary = f"Epoch {epoch + 1}/{cfg['epochs']}  lr {lr:.5f}  loss {stats['loss']:.4f}"
            if stats["skipped"]:
                summary += (
                    f"  ({stats['skipped']} of {stats['skipped'] + stats['steps']} batches skipped: no sample "
                    f"above confidence {cfg['confidence_threshold']})"
                )
            accuracy = None
            if not (head_output["targets"] < 0).any():
                accuracy = cluster_metrics(
                    head_output["predictions"], head_output["probabilities"], head_output["targets"]
                )["ACC"]
                summary += f"  ACC {100 * accuracy:.2f}"
            print(summary, flush=True)
            history.log(
                epoch + 1,
                loss=stats["loss"],
                lr=lr,
                confident_fraction=stats["confident"],
                skipped_batches=stats["skipped"],
                ACC=accuracy,
            )
            save_atomic(unwrap(model).state_dict(), cfg["selflabel_model"])
        guard.save_checkpoint(epoch + 1)

    require_files(
        [cfg["selflabel_model"]], f"python selflabel.py --config_env {args.config_env} --config_exp {args.config_exp}"
    )
    final_model = build_model(cfg).to(runtime.device)
    load_state_dict_checked(final_model, load_checkpoint(cfg["selflabel_model"]), source=cfg["selflabel_model"])
    head_output = get_predictions(final_model, val_loader, runtime.device)[0][0]  # each process: its shard
    metrics = {}
    if runtime.is_main:
        metrics = clustering_report(
            head_output, val_dataset.classes, cfg["selflabel_dir"], title="Self-label on the test split"
        )
    barrier(runtime)
    return metrics


if __name__ == "__main__":
    run_cli(main)

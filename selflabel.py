"""Stage 3: self-labeling with confident pseudo-labels of the SCAN model (docs/selflabel.md).

    python selflabel.py --config_env configs/env.yml --config_exp configs/selflabel/selflabel_cifar10.yml

Starts from the best head of scan/model.pth.tar (as head 0); writes <root_dir>/<db>/selflabel/ (docs/outputs.md).
Every epoch logs the test cluster sizes, each cluster's pseudo-labels and a warning for a cluster that emptied or
shrank (engine/cluster_watch.py). `selflabel_keep: last` writes the last epoch, as the paper; `best` the last
epoch with no emptied or shrunken cluster and a weak/strong agreement at least epoch 1's (else the SCAN model).
With `average_epochs: n` an epoch's model is the average of the weights at the end of the last n epochs so far.
"""

from __future__ import annotations

from utils.config import stage_parser

PARSER = stage_parser("Self-labeling", __name__)

from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel

from data.dataloaders import set_epoch
from data.neighbors import load_neighbors
from data.registry import get_train_dataset, get_val_dataset
from data.stage_batches import eval_batches, train_batches
from engine.cluster_watch import SelfLabelWatch
from engine.inference import run_model
from engine.metrics import cluster_metrics
from engine.model_files import architecture_record, require_matching_architecture, save_state_dict_file
from engine.result_files import clustering_report
from engine.stage import check_cluster_count, run_cli, setup_stage, stage_command
from losses import NoConfidentSamplesError, make_criterion, pseudo_labels
from models import build_model
from utils.checkpoint import CheckpointError, load_checkpoint, load_state_dict_checked, strip_module_prefix
from utils.guard import TrainingGuard, finite_loss
from utils.history import History
from utils.optim import EMA, adjust_learning_rate, build_optimizer
from utils.prerequisites import require_files
from utils.progress import tqdm
from utils.runtime import autocast, barrier, unwrap, wrap_model


def best_head_state_dict(scan_checkpoint: dict) -> dict:
    """The SCAN model's state dict with only its best head, renamed to head 0."""
    state, head = strip_module_prefix(dict(scan_checkpoint["model"])), int(scan_checkpoint["head"])
    best_weight, best_bias = state[f"cluster_head.{head}.weight"], state[f"cluster_head.{head}.bias"]
    state = {key: value for key, value in state.items() if not key.startswith("cluster_head.")}
    state["cluster_head.0.weight"], state["cluster_head.0.bias"] = best_weight, best_bias
    return state


def build_criterion(cfg: dict) -> torch.nn.Module:
    """`criterion: confidence-cross-entropy` toward the targets `pseudo_labels` names: the paper's threshold rule,
    or every cluster's most confident `pseudo_label_fraction` of its batch members as well."""
    fraction = cfg["pseudo_label_fraction"] if cfg["pseudo_labels"] == "per_cluster" else None
    return make_criterion(cfg, "confidence-cross-entropy", threshold=cfg["confidence_threshold"], fraction=fraction)


def train_one_epoch(loader, model, criterion, optimizer, ema, runtime, amp: bool, epoch: int) -> dict:
    """Cross-entropy of the strong view toward the weak view's confident predictions.

    Also counts, per cluster, the train images predicted in it (weak view), those that became targets, and those
    whose strong view is predicted in the same cluster (the weak/strong agreement the keep rule reads).
    """
    model.train()
    total, steps, skipped = 0.0, 0, 0
    predicted, targets, agreed = None, None, None
    progress = tqdm(loader, desc=f"epoch {epoch + 1}", leave=False, disable=not runtime.is_main)
    for batch in progress:
        images = batch["image"].to(runtime.device, non_blocking=True)
        augmented = batch["image_augmented"].to(runtime.device, non_blocking=True)
        with autocast(runtime, amp):
            with torch.no_grad():
                weak_output = model(images)[0]
            strong_output = model(augmented)[0]
        # The criterion's own rule, for the per-epoch log.
        cluster, mask = pseudo_labels(F.softmax(weak_output.float(), dim=1), criterion.threshold, criterion.fraction)
        if predicted is None:
            predicted = torch.zeros(weak_output.shape[1], dtype=torch.long, device=weak_output.device)
            targets, agreed = torch.zeros_like(predicted), torch.zeros_like(predicted)
        predicted += torch.bincount(cluster, minlength=predicted.numel())
        targets += torch.bincount(cluster[mask], minlength=targets.numel())
        agreed += torch.bincount(cluster[strong_output.argmax(dim=1) == cluster], minlength=agreed.numel())
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
            value = finite_loss(loss, epoch, steps + skipped + 1)  # the step's one device sync
            total, steps = total + value, steps + 1
            progress.set_postfix(loss=f"{value:.4f}")
    if runtime.distributed and predicted is not None:
        dist.all_reduce(predicted)
        dist.all_reduce(targets)
        dist.all_reduce(agreed)
    return {
        "loss": total / max(steps, 1),
        "steps": steps,
        "skipped": skipped,
        "train_cluster_sizes": [] if predicted is None else predicted.tolist(),
        "pseudo_labels_per_cluster": [] if targets is None else targets.tolist(),
        # The fraction of train images that became targets (for `threshold`: those above the threshold).
        "confident": 0.0 if predicted is None else int(targets.sum()) / max(int(predicted.sum()), 1),
        "weak_strong_agreement": None if predicted is None else int(agreed.sum()) / max(int(predicted.sum()), 1),
    }


def watch_epoch(
    watch, epoch: int, head_output: dict, val_neighbors, runtime, num_classes: int, agreement: float | None = None
) -> dict:
    """Record the epoch's test predictions in `watch`; the main process prints sizes, warnings and score.

    Every process records: under torchrun they all hold the same gathered predictions, so they agree on
    which epoch is best without a broadcast.
    """
    predictions, targets = head_output["predictions"], head_output["targets"]
    labels = {}  # when there are any, they only go into the log, never into the choice
    if not (targets < 0).any():
        scores = cluster_metrics(predictions, head_output["probabilities"], targets, num_classes=num_classes)
        labels["ACC"] = scores["ACC"]
    record = watch.observe(epoch, head_output, val_neighbors, labels, agreement)
    line = f"  test cluster sizes {record['cluster_sizes']}"
    if record["score"] is not None:
        line += (
            f"\n  assignment SCAN loss on the test neighbours {record['score']:.4f} (neighbour agreement "
            f"{record['neighbour_agreement']:.4f}, size entropy {record['size_entropy']:.4f})"
        )
    if "ACC" in record:
        line += f"  ACC {100 * record['ACC']:.2f}"
    if runtime.is_main:
        print("\n".join([line, *watch.warning_lines(record)]), flush=True)
    return record


def main(argv: list[str] | None = None) -> dict:
    args, cfg, runtime, plan = setup_stage(PARSER, argv, ("selflabel",))
    if plan.up_to_date:
        return plan.saved_metrics
    scan_command = stage_command("scan", cfg["train_db_name"], args.config_env)
    require_files([cfg["scan_model"]], scan_command)
    Path(cfg["selflabel_dir"]).mkdir(parents=True, exist_ok=True)

    # Weak view: the val transform; strong view: the training augmentation.
    train_dataset, val_dataset = get_train_dataset(cfg), get_val_dataset(cfg)
    num_classes = len(val_dataset.classes)  # K of the log's ACC: a class without test images still counts
    check_cluster_count(cfg["num_classes"], len(train_dataset))
    loader = train_batches(cfg, train_dataset, runtime, views=("val", "train"))
    val_loader = eval_batches(cfg, val_dataset, runtime)
    val_neighbors = None  # optional, for the log's assignment SCAN loss (a model-zoo SCAN file comes without them)
    if Path(cfg["topk_neighbors_val_path"]).is_file():
        val_neighbors = load_neighbors(cfg["topk_neighbors_val_path"], len(val_dataset))
    if runtime.is_main:
        print(
            f"Train: {len(train_dataset)} images, test: {len(val_dataset)}. Writing to {cfg['selflabel_dir']}",
            flush=True,
        )

    model = build_model(cfg)
    scan_checkpoint = load_checkpoint(cfg["scan_model"], scan_command)
    if not isinstance(scan_checkpoint, dict) or not {"model", "head"} <= scan_checkpoint.keys():
        raise CheckpointError(f"{cfg['scan_model']} is not a SCAN model file (a dict with 'model' and 'head').")
    require_matching_architecture(
        scan_checkpoint.get("architecture"),
        cfg,
        ("backbone", "backbone_kwargs", "num_classes"),
        source=f"SCAN model {cfg['scan_model']}",
    )
    load_state_dict_checked(model, best_head_state_dict(scan_checkpoint), source=f"SCAN model {cfg['scan_model']}")
    model = wrap_model(model, runtime)
    criterion = build_criterion(cfg)
    optimizer = build_optimizer(cfg, model)
    architecture = architecture_record(cfg, num_heads=1)

    guard = TrainingGuard(cfg, runtime, cfg["selflabel_checkpoint"], unwrap(model), optimizer, plan)
    checkpoint = guard.resume()
    watch = SelfLabelWatch(cfg["cluster_warning_fraction"], checkpoint.get("watch"))
    # EMA writes its average back into the model after every step, so the resumed weights are its state.
    ema = EMA(unwrap(model), alpha=cfg["ema_alpha"]) if cfg["use_ema"] else None
    # `average_epochs`: the equal-weight average of the last epochs' weights (BatchNorm statistics included)
    # replaces the last epoch's, whose test ACC swings by a few images from epoch to epoch (docs/selflabel.md).
    averaged = AveragedModel(unwrap(model), use_buffers=True) if cfg["average_epochs"] else None
    first_averaged = max(cfg["epochs"] - cfg["average_epochs"], 0) + 1  # the first epoch in the average (1-based)
    if averaged is not None and "averaged" in checkpoint:
        averaged.load_state_dict(checkpoint["averaged"])
    history = History(cfg["selflabel_dir"], guard.start_epoch, cfg["epochs"], cfg["tensorboard"], runtime.is_main)
    keep_best = cfg["selflabel_keep"] == "best"

    if not watch.history:  # a fresh run, or a checkpoint written before the watch existed
        # Epoch 0 is the SCAN model: the reference sizes for the warnings, and what `best` keeps if nothing else.
        if runtime.is_main:
            print("Before training (epoch 0): the SCAN model", flush=True)
        scan_model = build_model(cfg).to(runtime.device)
        scan_model.load_state_dict(best_head_state_dict(scan_checkpoint))
        head_output = run_model(scan_model, val_loader, runtime.device).head(0)  # each process: its shard
        watch_epoch(watch, 0, head_output, val_neighbors, runtime, num_classes)
        if keep_best and runtime.is_main:
            save_state_dict_file(scan_model.state_dict(), cfg["selflabel_model"], architecture, plan.record)
    barrier(runtime)

    for epoch in guard.epochs():
        set_epoch(loader, epoch)
        lr = adjust_learning_rate(cfg, optimizer, epoch)
        stats = train_one_epoch(guard.batches(loader), model, criterion, optimizer, ema, runtime, cfg["amp"], epoch)
        evaluated = unwrap(model)  # the model the keep rule judges and the stage writes
        if averaged is not None and epoch + 1 >= first_averaged:
            averaged.update_parameters(evaluated)
            evaluated = averaged.module
        head_output = run_model(evaluated, val_loader, runtime.device).head(0)  # each process: its shard
        if runtime.is_main:
            summary = f"Epoch {epoch + 1}/{cfg['epochs']}  lr {lr:.5f}  loss {stats['loss']:.4f}"
            if evaluated is not unwrap(model):
                summary += f"  (evaluated: the weights averaged over epochs {first_averaged}-{epoch + 1})"
            if stats["skipped"]:
                summary += (
                    f"  ({stats['skipped']} of {stats['skipped'] + stats['steps']} batches skipped: no sample "
                    f"above confidence {cfg['confidence_threshold']})"
                )
            summary += (
                f"\n  train: pseudo-labels per cluster {stats['pseudo_labels_per_cluster']} "
                f"of predicted {stats['train_cluster_sizes']}"
            )
            if stats["weak_strong_agreement"] is not None:
                summary += f"; weak/strong agreement {stats['weak_strong_agreement']:.4f}"
            print(summary, flush=True)
        # The train-side counts of an interrupted epoch cover only the batches run after the resume: the sizes go
        # to the log and history only; the agreement, a share, still estimates the epoch's for the keep rule.
        agreement = stats["weak_strong_agreement"]
        record = watch_epoch(watch, epoch + 1, head_output, val_neighbors, runtime, num_classes, agreement)
        if runtime.is_main:
            history.log(
                epoch + 1,
                loss=stats["loss"],
                lr=lr,
                confident_fraction=stats["confident"],
                skipped_batches=stats["skipped"],
                ACC=record.get("ACC"),
                train_cluster_sizes=stats["train_cluster_sizes"],
                pseudo_labels_per_cluster=stats["pseudo_labels_per_cluster"],
                weak_strong_agreement=stats["weak_strong_agreement"],
            )
            if not keep_best or record["improved"]:
                save_state_dict_file(evaluated.state_dict(), cfg["selflabel_model"], architecture, plan.record)
        extras = {} if averaged is None else {"averaged": averaged.state_dict()}
        guard.save_checkpoint(epoch + 1, watch=watch.state_dict(), **extras)

    if not Path(cfg["selflabel_model"]).is_file():  # epochs: 0 — the SCAN model's best head, untrained further
        if runtime.is_main:
            save_state_dict_file(unwrap(model).state_dict(), cfg["selflabel_model"], architecture, plan.record)
        barrier(runtime)
    final_model = build_model(cfg).to(runtime.device)
    load_state_dict_checked(final_model, load_checkpoint(cfg["selflabel_model"]), source=cfg["selflabel_model"])
    head_output = run_model(final_model, val_loader, runtime.device).head(0)  # each process: its shard
    metrics = {}
    if runtime.is_main:
        if keep_best:
            kept_epoch, reason = watch.best_epoch, watch.kept_reason()
        else:
            kept_epoch, reason = cfg["epochs"], "the last epoch (selflabel_keep: last)"
        print(f"Kept epoch {kept_epoch}: {reason}. {len(watch.all_warnings())} cluster warning(s).", flush=True)
        extra = {
            "selflabel_keep": cfg["selflabel_keep"],
            "pseudo_labels": cfg["pseudo_labels"],
            "average_epochs": cfg["average_epochs"],
            "kept_epoch": kept_epoch,
            "kept_reason": reason,
            "cluster_warnings": watch.all_warnings(),
            "epochs": watch.history,
            "record": plan.record,
        }
        metrics = clustering_report(
            head_output, val_dataset.classes, cfg["selflabel_dir"], extra=extra, title="Self-label on the test split"
        )
    barrier(runtime)
    return metrics


if __name__ == "__main__":
    run_cli(main)

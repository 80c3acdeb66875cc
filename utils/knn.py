"""Features, exact nearest-neighbour mining (faiss or chunked torch top-k) and the weighted-kNN progress monitor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from data.cached_features import save_split_features
from data.wrappers import NeighborsFileError
from utils.distributed import (
    batch_indices,
    broadcast_from_main,
    concat_indices,
    gather_in_order,
    is_main_process,
    shard_range,
    sum_over_processes,
)
from utils.progress import tqdm
from utils.results import save_numpy

SCORES_PER_CHUNK = 2**27  # similarity scores held at once by the chunked top-k (512 MB in float32)


@torch.no_grad()
def extract_features(
    model: torch.nn.Module, loader, device: torch.device, desc: str = "features", backbone_features: bool = False
):
    """Run `model` over `loader` (eval mode) → (features [N, D] float32 numpy, targets [N] int64 numpy).

    With `backbone_features`, also returns what `model.backbone` output in the same pass (the input of the
    cluster heads, before any projection head or normalisation), as a third array.

    Under torchrun this is a collective: each process runs its shard of the split (the eval loaders shard it,
    data/loaders.py) with the main process's weights, and every process returns all rows in dataset order.
    """
    model.eval()
    broadcast_from_main(model)
    features, targets, indices, captured = [], [], [], []
    hook = None
    if backbone_features:
        hook = model.backbone.register_forward_hook(
            lambda module, inputs, output: captured.append(output.float().cpu())
        )
    try:
        for batch in tqdm(loader, desc=desc, leave=False, disable=not is_main_process()):
            output = model(batch["image"].to(device, non_blocking=True))
            features.append(output.float().cpu())
            targets.append(torch.as_tensor(batch["target"]).long().cpu())
            indices.append(batch_indices(batch))
    finally:
        if hook is not None:
            hook.remove()
    rows = {"features": features, "targets": targets, "backbone": captured}
    rows = gather_in_order({key: torch.cat(value) for key, value in rows.items() if value}, concat_indices(indices))
    if "features" not in rows:
        raise ValueError("extract_features: the loader yielded no batches.")
    result = rows["features"].numpy(), rows["targets"].numpy().astype(np.int64)
    return (*result, rows["backbone"].numpy()) if backbone_features else result


def _faiss():
    """The faiss module, or None where it is not installed (it is optional on GPU machines)."""
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def _faiss_index(faiss, features: np.ndarray, on_gpu: bool):
    """An exact inner-product index (flat) of all rows (moved to the GPU if asked)."""
    index = faiss.IndexFlatIP(features.shape[1])
    if on_gpu:
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), torch.cuda.current_device(), index)
    index.add(features)
    return index


def query_block_rows(num_rows: int) -> int:
    """Query rows searched at once: at most SCORES_PER_CHUNK scores against all `num_rows` rows."""
    return max(1, SCORES_PER_CHUNK // max(1, num_rows))


@torch.no_grad()
def topk_inner_product(bank: torch.Tensor, k: int, queries: torch.Tensor | None = None) -> torch.Tensor:
    """Indices [Q, k] of the k largest inner products of every query row (default: every bank row) with all bank
    rows, in descending order.

    Exact, like faiss's flat index: queries are scored against the bank in chunks (at most SCORES_PER_CHUNK
    scores at a time) on the bank's device.
    """
    queries = bank if queries is None else queries
    chunk = query_block_rows(bank.shape[0])
    indices = [
        (queries[start : start + chunk] @ bank.T).topk(k, dim=1).indices for start in range(0, queries.shape[0], chunk)
    ]
    return torch.cat(indices)


def mine_nearest_neighbors(features: np.ndarray, targets: np.ndarray, topk: int, device: torch.device | None = None):
    """Top-(k+1) neighbours of every row among all rows by exact inner product.

    Searched where the run is: on CUDA with faiss's GPU index when that faiss build is installed, else with the
    chunked torch top-k on the GPU; on a CPU with faiss (or the torch top-k without faiss). All are exact and
    agree up to the order of tied scores. Queries are searched in blocks of query_block_rows(N) rows.

    Under torchrun a collective: every process searches its run of query blocks against all rows and the
    indices are gathered, so all processes share the work and get the whole array. Not the main process mining
    alone after the gather: that would leave the others waiting on the quadratic part. The blocks are those one
    process searches, so the result is identical to one process's (a search of more or fewer queries at once can
    round a score differently and so reorder near-ties).

    Returns (indices [N, topk+1] int64, where column 0 is normally the sample itself, neighbour accuracy or
    None). Accuracy is the fraction of the k neighbours (column 0 excluded) that share the anchor's label; None
    when the data has no labels (−1).
    """
    features = np.ascontiguousarray(features, dtype=np.float32)
    n = features.shape[0]
    k = min(topk + 1, n)
    device = device or torch.device("cpu")
    faiss = _faiss()
    faiss_gpu = faiss is not None and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    if faiss is not None and (device.type == "cpu" or (device.type == "cuda" and faiss_gpu)):
        index = _faiss_index(faiss, features, on_gpu=device.type == "cuda")

        def search(queries: slice) -> np.ndarray:
            return index.search(features[queries], k)[1]
    else:
        bank = torch.from_numpy(features).to(device)

        def search(queries: slice) -> np.ndarray:
            return topk_inner_product(bank, k, bank[queries]).cpu().numpy()

    block = query_block_rows(n)
    shard = shard_range(n, block)
    found = [search(slice(start, min(start + block, shard.stop))) for start in range(shard.start, shard.stop, block)]
    found = torch.from_numpy(np.concatenate(found).astype(np.int64)) if found else torch.empty(0, k, dtype=torch.long)
    indices = gather_in_order({"neighbors": found}, torch.arange(shard.start, shard.stop))["neighbors"].numpy()
    if k < topk + 1:  # fewer samples than neighbours asked for: repeat the last column
        indices = np.concatenate([indices, np.repeat(indices[:, -1:], topk + 1 - k, axis=1)], axis=1)
    return indices, neighbor_accuracy(indices, targets)


def neighbor_accuracy(indices: np.ndarray, targets: np.ndarray, k: int | None = None) -> float | None:
    """Fraction of neighbours in columns 1..k sharing the anchor's label (None without labels)."""
    targets = np.asarray(targets)
    if (targets < 0).all():
        return None
    columns = indices[:, 1:] if k is None else indices[:, 1 : k + 1]
    return float((targets[columns] == targets[:, None]).mean())


@torch.no_grad()
def weighted_knn_accuracy(
    query: torch.Tensor,
    query_targets: torch.Tensor,
    bank: torch.Tensor,
    bank_targets: torch.Tensor,
    num_classes: int,
    k: int = 100,
    temperature: float = 0.1,
    chunk: int = 1024,
) -> float:
    """Top-1 accuracy of a kNN classifier whose votes weigh exp(similarity / temperature).

    The SimCLR stage's progress monitor: test features voted on by the train memory bank. Under torchrun a
    collective: each process votes for its run of query chunks and the counts are summed (the chunks one process
    would score, so the count is the same).
    """
    k = min(k, bank.shape[0])
    correct = 0
    shard = shard_range(query.shape[0], chunk)
    for start in range(shard.start, shard.stop, chunk):
        similarity = query[start : start + chunk] @ bank.T
        top_sim, top_idx = similarity.topk(k, dim=1)
        votes = torch.zeros(top_sim.shape[0], num_classes, device=query.device)
        votes.scatter_add_(1, bank_targets[top_idx], (top_sim / temperature).exp())
        correct += (votes.argmax(dim=1) == query_targets[start : start + chunk]).sum().item()
    return sum_over_processes(correct) / query.shape[0]


def mine_and_save_neighbors(
    model: torch.nn.Module, train_loader, val_loader, cfg: dict, device: torch.device, classes: list[str] | None = None
) -> dict:
    """Mine top-k neighbours of the train split and of the test split (each within itself) and save them.

    Writes `topk-train-neighbors.npy` [N_train, k_train+1] and `topk-val-neighbors.npy`
    [N_test, k_val+1]; returns the neighbour accuracies (None without labels). With `save_features: true`
    the backbone features of both splits are saved beside them (data/cached_features.py), from the same pass,
    with the dataset's `classes` (names for later reports). Under torchrun every process extracts and mines its
    share; the main process writes the files.
    """
    save_features = cfg.get("save_features", False)
    results = {}
    for split, loader, topk, path in (
        ("train", train_loader, cfg["topk_neighbors_train"], cfg["topk_neighbors_train_path"]),
        ("val", val_loader, cfg["topk_neighbors_val"], cfg["topk_neighbors_val_path"]),
    ):
        extracted = extract_features(model, loader, device, desc=f"features ({split})", backbone_features=save_features)
        features, targets = extracted[:2]
        indices, accuracy = mine_nearest_neighbors(features, targets, topk, device)
        results[f"{split}_neighbor_acc"] = accuracy
        results[f"topk_{split}"] = topk
        if not is_main_process():
            continue
        save_numpy(indices, path)
        shown = "n/a (no labels)" if accuracy is None else f"{100 * accuracy:.2f}%"
        print(f"Top-{topk} {split} neighbours: accuracy {shown}, saved {indices.shape} to {path}", flush=True)
        if save_features:
            save_split_features(cfg, split, extracted[2], targets, classes)
    return results


def load_neighbors(path: str | Path) -> np.ndarray:
    """A neighbour file written by mine_and_save_neighbors: an [N, k+1] integer array (nothing pickled)."""
    try:
        indices = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise NeighborsFileError(
            f"Could not read the neighbour file {path}: it is truncated or not a .npy array ({error}). "
            f"Re-run the pretext stage (simclr.py --fresh, or moco.py) to mine it again."
        ) from error
    if indices.ndim != 2 or not np.issubdtype(indices.dtype, np.integer):
        raise NeighborsFileError(
            f"The neighbour file {path} holds a {indices.dtype} array of shape {indices.shape}, not [images, k+1] "
            f"integer indices. Re-run the pretext stage to mine it again."
        )
    return indices

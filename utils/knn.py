"""Features, exact nearest-neighbour mining (faiss or chunked torch top-k) and the weighted-kNN progress monitor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from data.cached_features import save_split_features
from data.wrappers import NeighborsFileError
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
    """
    model.eval()
    features, targets, captured = [], [], []
    hook = None
    if backbone_features:
        hook = model.backbone.register_forward_hook(
            lambda module, inputs, output: captured.append(output.float().cpu())
        )
    try:
        for batch in tqdm(loader, desc=desc, leave=False):
            output = model(batch["image"].to(device, non_blocking=True))
            features.append(output.float().cpu())
            targets.append(batch["target"].cpu())
    finally:
        if hook is not None:
            hook.remove()
    result = torch.cat(features).numpy(), torch.cat(targets).numpy().astype(np.int64)
    return (*result, torch.cat(captured).numpy()) if backbone_features else result


def _faiss():
    """The faiss module, or None where it is not installed (it is optional on GPU machines)."""
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def _faiss_search(faiss, features: np.ndarray, k: int, on_gpu: bool) -> np.ndarray:
    """Exact inner-product search of every row among all rows with a flat index (moved to the GPU if asked)."""
    index = faiss.IndexFlatIP(features.shape[1])
    if on_gpu:
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), torch.cuda.current_device(), index)
    index.add(features)
    return index.search(features, k)[1]


@torch.no_grad()
def topk_inner_product(features: torch.Tensor, k: int) -> torch.Tensor:
    """Indices [N, k] of the k largest inner products of every row with all rows, in descending order.

    Exact, like faiss's flat index: query rows are scored against all rows in chunks (at most
    SCORES_PER_CHUNK scores at a time) on the features' device.
    """
    chunk = max(1, SCORES_PER_CHUNK // features.shape[0])
    indices = [
        (features[start : start + chunk] @ features.T).topk(k, dim=1).indices
        for start in range(0, features.shape[0], chunk)
    ]
    return torch.cat(indices)


def mine_nearest_neighbors(features: np.ndarray, targets: np.ndarray, topk: int, device: torch.device | None = None):
    """Top-(k+1) neighbours of every row among all rows by exact inner product.

    Searched where the run is: on CUDA with faiss's GPU index when that faiss build is installed, else with the
    chunked torch top-k on the GPU; on a CPU with faiss (or the torch top-k without faiss). All are exact and
    agree up to the order of tied scores.

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
        indices = _faiss_search(faiss, features, k, on_gpu=device.type == "cuda")
    else:
        indices = topk_inner_product(torch.from_numpy(features).to(device), k).cpu().numpy()
    indices = indices.astype(np.int64)
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

    The SimCLR stage's progress monitor: test features voted on by the train memory bank.
    """
    k = min(k, bank.shape[0])
    correct = 0
    for start in range(0, query.shape[0], chunk):
        similarity = query[start : start + chunk] @ bank.T
        top_sim, top_idx = similarity.topk(k, dim=1)
        votes = torch.zeros(top_sim.shape[0], num_classes, device=query.device)
        votes.scatter_add_(1, bank_targets[top_idx], (top_sim / temperature).exp())
        correct += (votes.argmax(dim=1) == query_targets[start : start + chunk]).sum().item()
    return correct / query.shape[0]


def mine_and_save_neighbors(
    model: torch.nn.Module, train_loader, val_loader, cfg: dict, device: torch.device, classes: list[str] | None = None
) -> dict:
    """Mine top-k neighbours of the train split and of the test split (each within itself) and save them.

    Writes `topk-train-neighbors.npy` [N_train, k_train+1] and `topk-val-neighbors.npy`
    [N_test, k_val+1]; returns the neighbour accuracies (None without labels). With `save_features: true`
    the backbone features of both splits are saved beside them (data/cached_features.py), from the same pass,
    with the dataset's `classes` (names for later reports).
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
        save_numpy(indices, path)
        shown = "n/a (no labels)" if accuracy is None else f"{100 * accuracy:.2f}%"
        print(f"Top-{topk} {split} neighbours: accuracy {shown}, saved {indices.shape} to {path}", flush=True)
        results[f"{split}_neighbor_acc"] = accuracy
        results[f"topk_{split}"] = topk
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

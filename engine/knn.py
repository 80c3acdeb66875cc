"""Features, nearest-neighbour mining (faiss or chunked torch top-k; IVF in knn_index.py) and the kNN monitor."""

from __future__ import annotations

import numpy as np
import torch

from data.cached_features import save_split_features
from engine.inference import run_model
from engine.knn_index import MiningSettings, faiss_on_gpu, ivf_search, sampled_recall
from utils.distributed import gather_in_order, is_main_process, shard_range, sum_over_processes
from utils.files import save_numpy

SCORES_PER_CHUNK = 2**27  # similarity scores held at once by the chunked top-k (512 MB in float32)
ROWS_PER_COPY = 2**16  # rows converted and copied to the device at a time
FLOAT16_BLOCK_ROWS = 4096  # float16 bank rows widened to float32 at a time on a CPU
VOTE_ROWS = 1024  # queries whose class votes the kNN monitor counts at a time


def _faiss():
    """The faiss module, or None where it is not installed (it is optional on GPU machines)."""
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def _faiss_index(faiss, features: np.ndarray, on_gpu: bool, float16: bool = False):
    """An exact (flat) inner-product index of all rows, on the GPU if asked (there in float16 if `float16`)."""
    index = faiss.IndexFlatIP(features.shape[1])
    if on_gpu:
        options = faiss.GpuClonerOptions()
        options.useFloat16 = float16
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), torch.cuda.current_device(), index, options)
    index.add(features)
    return index


def query_block_rows(num_rows: int) -> int:
    """Query rows searched at once: at most SCORES_PER_CHUNK scores against all `num_rows` rows."""
    return max(1, SCORES_PER_CHUNK // max(1, num_rows))


def features_on_device(features: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """`features` as a `dtype` tensor on `device`, converted ROWS_PER_COPY rows at a time: a float16 copy never
    needs a float32 copy of the whole array beside it."""
    source = torch.from_numpy(np.ascontiguousarray(features))
    if source.device == device and source.dtype == dtype:
        return source
    result = torch.empty(source.shape, dtype=dtype, device=device)
    for start in range(0, source.shape[0], ROWS_PER_COPY):
        result[start : start + ROWS_PER_COPY] = source[start : start + ROWS_PER_COPY].to(device)
    return result


def inner_products(query: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """Scores [len(query), len(bank)] in float32. A float16 bank is multiplied with float32 sums: on CUDA by the
    float16 matrix units; on a CPU (no fast float16 product) block by block widened to float32, so no float32
    copy of the whole bank is made."""
    if bank.dtype == torch.float32:
        return query @ bank.T
    if bank.device.type == "cuda":
        return torch.mm(query.to(bank.dtype), bank.T, out_dtype=torch.float32)
    query = query.float()
    scores = torch.empty(query.shape[0], bank.shape[0], device=bank.device)
    for start in range(0, bank.shape[0], FLOAT16_BLOCK_ROWS):
        scores[:, start : start + FLOAT16_BLOCK_ROWS] = query @ bank[start : start + FLOAT16_BLOCK_ROWS].float().T
    return scores


@torch.no_grad()
def chunked_topk(query: torch.Tensor, bank: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores, indices) [len(query), k] of the k largest inner products of each query row with the bank rows,
    exact and descending; chunks of at most SCORES_PER_CHUNK scores bound the memory whatever the sizes."""
    chunk = query_block_rows(bank.shape[0])
    scores = [torch.empty(0, k, device=bank.device)]  # a process whose shard holds no query returns no row
    indices = [torch.empty(0, k, dtype=torch.long, device=bank.device)]
    for start in range(0, query.shape[0], chunk):
        top = inner_products(query[start : start + chunk], bank).topk(k, dim=1)
        scores.append(top.values)
        indices.append(top.indices)
    return torch.cat(scores), torch.cat(indices)


@torch.no_grad()
def topk_inner_product(bank: torch.Tensor, k: int, queries: torch.Tensor | None = None) -> torch.Tensor:
    """Indices [Q, k] of the k largest inner products of every query row (default: every bank row) with all bank
    rows, descending: exact, like faiss's flat index."""
    return chunked_topk(bank if queries is None else queries, bank, k)[1]


def mine_nearest_neighbors(
    features: np.ndarray,
    targets: np.ndarray,
    topk: int,
    device: torch.device | None = None,
    settings: MiningSettings | None = None,
):
    """(indices [N, topk+1] int64, column 0 normally the row itself; neighbour_accuracy) by inner product.

    Exact (the default) searches where the run is, with faiss when installed (its GPU index on CUDA) or the
    chunked torch top-k; all agree up to the order of tied scores. `ivf`: faiss's approximate index
    (engine/knn_index.py), its recall printed. Under torchrun a collective: every process searches its run of
    query blocks (query_block_rows) and all get the gathered array, so none waits on the quadratic part; the
    blocks are one process's, so the result equals one process's (other block sizes can reorder near-ties).
    """
    settings = settings or MiningSettings()
    features = np.ascontiguousarray(features, dtype=np.float32)
    n = features.shape[0]
    k = min(topk + 1, n)
    device = device or torch.device("cpu")
    faiss = _faiss()
    faiss_gpu = faiss is not None and faiss_on_gpu(faiss, device)
    block = query_block_rows(n)
    shard = shard_range(n, block)
    if settings.index == "ivf":
        found = ivf_search(features, k, settings, device, rows=shard)
    else:
        if faiss_gpu or (faiss is not None and device.type == "cpu" and not settings.float16):
            index = _faiss_index(faiss, features, on_gpu=faiss_gpu, float16=settings.float16)

            def search(queries: slice) -> np.ndarray:
                return index.search(features[queries], k)[1]
        else:
            bank = features_on_device(features, device, torch.float16 if settings.float16 else torch.float32)

            def search(queries: slice) -> np.ndarray:
                return topk_inner_product(bank, k, bank[queries]).cpu().numpy()

        starts = range(shard.start, shard.stop, block)
        found = [search(slice(start, min(start + block, shard.stop))) for start in starts]
        found = np.concatenate(found) if found else np.empty((0, k), dtype=np.int64)
    found = torch.from_numpy(found.astype(np.int64))
    indices = gather_in_order({"neighbors": found}, torch.arange(shard.start, shard.stop))["neighbors"].numpy()
    if settings.index == "ivf" and k > 1:
        recall, queries = sampled_recall(features, indices, settings, device)
        if is_main_process():
            print(f"IVF recall@{k - 1} vs exact: {recall:.3f} on {queries} sampled queries", flush=True)
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
) -> float:
    """Top-1 accuracy of a kNN classifier whose votes weigh exp(similarity / temperature): SimCLR's monitor. Under
    torchrun a collective: each process votes for its run of the query chunks one process would score, and the counts
    are summed."""
    k = min(k, bank.shape[0])
    correct = 0
    shard = shard_range(query.shape[0], query_block_rows(bank.shape[0]))
    top_sim, top_idx = chunked_topk(query[shard.start : shard.stop], bank, k)
    targets = query_targets[shard.start : shard.stop]
    for start in range(0, top_sim.shape[0], VOTE_ROWS):
        sim, idx = top_sim[start : start + VOTE_ROWS], top_idx[start : start + VOTE_ROWS]
        votes = torch.zeros(sim.shape[0], num_classes, device=sim.device)
        votes.scatter_add_(1, bank_targets[idx], (sim / temperature).exp())
        correct += (votes.argmax(dim=1) == targets[start : start + VOTE_ROWS]).sum().item()
    return sum_over_processes(correct) / query.shape[0]


def mine_and_save_neighbors(
    model: torch.nn.Module, train_loader, val_loader, cfg: dict, device: torch.device, classes: list[str] | None = None
) -> dict:
    """Mine and save the top-k neighbours of the train and of the test split (each within itself); returns the neighbour
    accuracies. With `save_features: true` the same pass saves both splits' backbone features and `classes`
    (data/cached_features.py). Under torchrun every process mines its share; the main one writes."""
    save_features = cfg.get("save_features", False)
    results = {}
    for split, loader, topk, path in (
        ("train", train_loader, cfg["topk_neighbors_train"], cfg["topk_neighbors_train_path"]),
        ("val", val_loader, cfg["topk_neighbors_val"], cfg["topk_neighbors_val_path"]),
    ):
        extracted = run_model(model, loader, device, desc=f"features ({split})", backbone_features=save_features)
        features, targets = extracted.features.numpy(), extracted.targets.numpy()
        indices, accuracy = mine_nearest_neighbors(features, targets, topk, device, MiningSettings.from_config(cfg))
        results[f"{split}_neighbor_acc"] = accuracy
        results[f"topk_{split}"] = topk
        if not is_main_process():
            continue
        save_numpy(indices, path)
        shown = "n/a (no labels)" if accuracy is None else f"{100 * accuracy:.2f}%"
        print(f"Top-{topk} {split} neighbours: accuracy {shown}, saved {indices.shape} to {path}", flush=True)
        if save_features:
            save_split_features(cfg, split, extracted.backbone.numpy(), targets, classes)
    return results

"""Approximate neighbour mining for millions of images: a faiss IVF index, with its recall measured as it runs.

An exact search costs N² inner products; IVF clusters the features into `lists` cells and scores each query
against the `probe` nearest cells only (about probe/lists of the work). It may miss neighbours, so every run also
searches a seeded sample of queries exactly and prints the recall. `knn_index: exact` never comes here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

RECALL_QUERIES = 1000  # queries searched exactly to measure the recall of every IVF run
TRAIN_POINTS_PER_LIST = 64  # k-means sample: faiss warns below 39 points per list, and trains slowly far above


@dataclass(frozen=True)
class MiningSettings:
    """How neighbours are mined: the config keys `knn_index`, `knn_ivf_lists`, `knn_ivf_probe`, `knn_float16`."""

    index: str = "exact"  # exact | ivf
    ivf_lists: int | str = "auto"  # k-means cells of the IVF index; auto: about √N
    ivf_probe: int = 32  # cells searched per query
    float16: bool = False  # exact search: features kept in float16 on the device, scores in float32
    seed: int = 0  # the IVF k-means sample and the recall sample

    @classmethod
    def from_config(cls, cfg: dict) -> MiningSettings:
        return cls(
            index=cfg.get("knn_index", "exact"),
            ivf_lists=cfg.get("knn_ivf_lists", "auto"),
            ivf_probe=cfg.get("knn_ivf_probe", 32),
            float16=cfg.get("knn_float16", False),
            seed=cfg.get("seed") or 0,
        )


def require_faiss():
    """The faiss module; the IVF index has no fallback, so its absence is an error saying what to install."""
    try:
        import faiss
    except ImportError:
        raise ImportError(
            "knn_index: ivf needs faiss, which is not installed: `pip install faiss-cpu` (or a faiss build with GPU "
            "support), or mine exactly with --set knn_index=exact."
        ) from None
    return faiss


def faiss_on_gpu(faiss, device: torch.device) -> bool:
    """Whether faiss can search on `device`: CUDA and a faiss build with GPU support that sees a GPU."""
    return device.type == "cuda" and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def number_of_lists(ivf_lists: int | str, n: int) -> int:
    """IVF cells for n vectors: `auto` is √n (faiss's usual range is 1–16·√n), never under 39 vectors a cell."""
    lists = round(np.sqrt(n)) if ivf_lists == "auto" else int(ivf_lists)
    return max(1, min(lists, n // 39))


def recall_at_k(approx_indices: np.ndarray, exact_indices: np.ndarray) -> float:
    """Fraction of the exact neighbours [n, k] that the approximate search also found, in any column of its row
    (ties at the k-th score can make even two exact searches disagree)."""
    if approx_indices.shape != exact_indices.shape:
        raise ValueError(f"recall_at_k: shapes {approx_indices.shape} and {exact_indices.shape} differ")
    found = [np.intersect1d(a, e).size for a, e in zip(approx_indices, exact_indices, strict=True)]
    return float(np.sum(found) / exact_indices.size)


def exact_search(faiss, queries: np.ndarray, base: np.ndarray, k: int, device: torch.device) -> np.ndarray:
    """Indices [len(queries), k] of the k largest inner products of each query among `base` (flat index)."""
    index = faiss.IndexFlatIP(base.shape[1])
    if faiss_on_gpu(faiss, device):
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), device.index or 0, index)
    index.add(base)
    return index.search(queries, k)[1]


def ivf_search(
    features: np.ndarray,
    k: int,
    settings: MiningSettings,
    device: torch.device | None = None,
    rows: range | None = None,
) -> np.ndarray:
    """Approximate top-k inner products of the `rows` (default: all) among all rows: indices [len(rows), k], self
    normally in column 0. Rows whose probed cells hold fewer than k vectors (faiss pads with -1) are searched
    exactly, so every row has k real neighbours."""
    faiss = require_faiss()
    device = device or torch.device("cpu")
    features = np.ascontiguousarray(features, dtype=np.float32)
    n, dim = features.shape
    lists = number_of_lists(settings.ivf_lists, n)
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, lists, faiss.METRIC_INNER_PRODUCT)
    if faiss_on_gpu(faiss, device):
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), device.index or 0, index)
    rng = np.random.default_rng(settings.seed)
    sample = np.sort(rng.choice(n, size=min(n, TRAIN_POINTS_PER_LIST * lists), replace=False))
    index.train(features[sample])
    index.add(features)
    index.nprobe = min(settings.ivf_probe, lists)
    queries = features if rows is None else features[rows.start : rows.stop]
    indices = index.search(queries, k)[1]
    short = np.flatnonzero((indices < 0).any(axis=1))
    if short.size:
        indices[short] = exact_search(faiss, queries[short], features, k, device)
    return indices


def sampled_recall(
    features: np.ndarray, approx_indices: np.ndarray, settings: MiningSettings, device: torch.device | None = None
) -> tuple[float, int]:
    """(recall of `approx_indices` [N, k+1] without column 0, queries searched) against an exact search of
    RECALL_QUERIES seeded random rows."""
    faiss = require_faiss()
    features = np.ascontiguousarray(features, dtype=np.float32)
    n, width = approx_indices.shape
    rng = np.random.default_rng(settings.seed + 1)
    queries = np.sort(rng.choice(n, size=min(n, RECALL_QUERIES), replace=False))
    exact = exact_search(faiss, features[queries], features, width, device or torch.device("cpu"))
    return recall_at_k(approx_indices[queries, 1:], exact[:, 1:]), queries.size

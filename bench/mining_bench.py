"""Neighbour-mining time and peak memory on synthetic features: exact (faiss flat, torch top-k) and faiss IVF.

Every case (N images × d dimensions, top-k, backend) runs in its own process, so its peak memory is its own:
host memory is the peak resident set (VmHWM, reset once the features exist) minus the resident set at that
moment, i.e. what mining needed beyond the features; GPU memory is torch's peak allocation (features included;
faiss's GPU memory is not seen by torch). The features are unit-norm and clustered (seeded), like normalised
image embeddings, generated on the device and handed to mining as a host array, as engine.inference.run_model does.

    OMP_NUM_THREADS=2 python bench/mining_bench.py --sizes 50000 200000 --dims 128 --ks 20 50 \\
        --backends faiss torch ivf --max-seconds 600

Backends: `faiss` (flat inner-product index, exact; on the GPU when faiss has GPU support), `torch` (chunked
top-k on the run's device, exact), `torch-fp16` (the same with the features kept in float16, scores in float32:
`knn_float16: true`), `ivf` (faiss IVF, approximate: `knn_index: ivf`). For `ivf` and `torch-fp16` the recall
of the k neighbours against an exact search of 1,000 sampled queries is printed; exact backends say `exact`.
`--max-seconds` skips a case whose time, extrapolated from the same backend on 8,192 rows (65,536 on a GPU;
as N² for exact backends, N^1.5 for IVF), exceeds the budget, and any case whose features do not fit in the
available memory; the table says so.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import knn, knn_index  # noqa: E402

BACKENDS = ("faiss", "torch", "torch-fp16", "ivf")
CALIBRATION_ROWS = {"cpu": 8192, "cuda": 65536}  # a GPU needs more rows before fixed costs stop dominating
CLUSTERS = 1000
NOISE = 1.0  # norm of the noise added to a unit cluster centre before normalising: clusters overlap, as real ones do


def clustered_features(
    n: int, dim: int, seed: int = 0, device: str | torch.device = "cpu", clusters: int = CLUSTERS
) -> np.ndarray:
    """[n, dim] float32 unit rows around `clusters` random centres, generated in chunks on `device` (seeded)."""
    generator = torch.Generator(device=device).manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(clusters, dim, generator=generator, device=device), dim=1)
    features = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, knn.ROWS_PER_COPY):
        rows = min(knn.ROWS_PER_COPY, n - start)
        labels = torch.randint(clusters, (rows,), generator=generator, device=device)
        noise = torch.randn(rows, dim, generator=generator, device=device) * (NOISE / dim**0.5)
        features[start : start + rows] = torch.nn.functional.normalize(centres[labels] + noise, dim=1).cpu().numpy()
    return features


def resident_mib(field: str) -> float | None:
    """VmRSS (now) or VmHWM (peak) of this process in MiB, from /proc/self/status (Linux); None where the kernel
    does not report it (some sandboxed kernels have no VmHWM line)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return None


def vm_fields() -> str:
    """The Vm* fields /proc/self/status reports here (which memory columns can be filled), for the header."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return "no /proc/self/status"
    return " ".join(line.split(":")[0] for line in lines if line.startswith("Vm")) or "no Vm* fields"


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current resident set (Linux ≥ 4.0); False where that is not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def mine(features: np.ndarray, k: int, backend: str, device: torch.device) -> tuple[np.ndarray, str]:
    """Indices [N, k+1] by `backend`, through the same functions as engine/knn.py's mining; and where it ran."""
    faiss = knn._faiss()
    if backend == "faiss":
        on_gpu = faiss is not None and knn_index.faiss_on_gpu(faiss, device)
        index = knn._faiss_index(knn_index.require_faiss(), features, on_gpu=on_gpu)
        return index.search(features, k + 1)[1], ("cuda" if on_gpu else "cpu")
    if backend in ("torch", "torch-fp16"):
        dtype = torch.float16 if backend == "torch-fp16" else torch.float32
        bank = knn.features_on_device(features, device, dtype)
        return knn.topk_inner_product(bank, k + 1).cpu().numpy(), device.type
    settings = knn_index.MiningSettings(index="ivf")
    on_gpu = knn_index.faiss_on_gpu(knn_index.require_faiss(), device)
    return knn_index.ivf_search(features, k + 1, settings, device), ("cuda" if on_gpu else "cpu")


def timed_mining(features: np.ndarray, k: int, backend: str, device: torch.device) -> tuple[float, np.ndarray, str]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    indices, where = mine(features, k, backend, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, indices, where


def run_case(n: int, dim: int, k: int, backend: str, max_seconds: float | None, seed: int = 0) -> dict:
    """One case in this process: time, memory and (approximate backends) sampled recall, or why it was skipped."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result = {"backend": backend, "N": n, "d": dim, "k": k, "device": device.type}
    features_mib = n * dim * 4 / 2**20
    available_mib = _available_mib()
    if features_mib * (2.5 if backend == "ivf" else 1.5) > available_mib:  # IVF also holds its own copy
        return {**result, "note": f"skipped: {features_mib:,.0f} MiB of features, {available_mib:,.0f} MiB available"}
    faiss = knn._faiss()
    faiss_gpu = faiss is not None and knn_index.faiss_on_gpu(faiss, device)
    on_gpu = device.type == "cuda" and (backend.startswith("torch") or faiss_gpu)
    calibration_rows = CALIBRATION_ROWS["cuda" if on_gpu else "cpu"]  # where this backend runs, not the machine
    if max_seconds is not None and n > calibration_rows:
        small = clustered_features(calibration_rows, dim, seed + 1, device)
        scores_per_chunk = knn.SCORES_PER_CHUNK
        # The torch top-k with as many query rows per product as at N (fewer rows per product run slower).
        knn.SCORES_PER_CHUNK = knn.query_block_rows(n) * calibration_rows
        try:
            timed_mining(small, k, backend, device)  # warm-up: CUDA context, faiss GPU resources, kernels
            seconds = timed_mining(small, k, backend, device)[0]
        finally:
            knn.SCORES_PER_CHUNK = scores_per_chunk
        predicted = seconds * (n / calibration_rows) ** (1.5 if backend == "ivf" else 2)
        if predicted > max_seconds:
            return {**result, "note": f"skipped: predicted {predicted:,.0f} s > --max-seconds {max_seconds:g}"}
    features = clustered_features(n, dim, seed, device)
    reset = reset_peak_rss()
    baseline = resident_mib("VmRSS") if reset else 0.0
    reset = reset and baseline is not None
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    seconds, indices, where = timed_mining(features, k, backend, device)
    result.update(
        device=where,
        seconds=float(f"{seconds:.3g}"),  # three significant digits: a tiny case is not 0.0
        features_mib=round(features_mib, 1),
        peak_rss_is="over features" if reset else "whole process",
    )
    peak = resident_mib("VmHWM")
    result.update(
        peak_rss_mib=None if peak is None else round(peak - (baseline if reset else 0.0)),
        peak_gpu_mib=round(torch.cuda.max_memory_allocated() / 2**20) if device.type == "cuda" else None,
    )
    if backend == "torch-fp16" and knn._faiss() is None:
        result["note"] = "recall not checked: faiss is not installed"
    elif backend in ("ivf", "torch-fp16"):
        start = time.perf_counter()
        recall, queries = knn_index.sampled_recall(features, indices, knn_index.MiningSettings(seed=seed), device)
        result.update(
            recall=round(recall, 4), recall_queries=queries, recall_seconds=round(time.perf_counter() - start, 1)
        )
    return result


def _available_mib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return float("inf")


def run_case_in_subprocess(n: int, dim: int, k: int, backend: str, max_seconds: float | None) -> dict:
    command = [sys.executable, __file__, "--case", str(n), str(dim), str(k), backend]
    if max_seconds is not None:
        command += ["--max-seconds", str(max_seconds)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"backend": backend, "N": n, "d": dim, "k": k, "note": f"failed (exit {done.returncode}): {reason}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(results: list[dict]) -> str:
    header = (
        "| backend | device | N | d | k | time (s) | features (MiB) | peak RSS over features (MiB) | "
        "peak GPU (MiB) | recall@k | note |"
    )
    lines = [header, "|---" * (header.count("|") - 1) + "|"]
    for r in results:
        recall = "exact" if r["backend"] in ("faiss", "torch") else "-"
        if "recall" in r:
            recall = f"{r['recall']:.4f} ({r['recall_queries']} queries, {r['recall_seconds']} s)"
        peak_rss = r.get("peak_rss_mib", "-")
        if peak_rss is None:
            peak_rss = "not reported"
        elif r.get("peak_rss_is") == "whole process":
            peak_rss = f"{peak_rss} (whole process)"
        cells = [
            r["backend"],
            r.get("device", "-"),
            f"{r['N']:,}",
            r["d"],
            r["k"],
            r.get("seconds", "-"),
            f"{r['features_mib']:,}" if "features_mib" in r else "-",
            peak_rss,
            r["peak_gpu_mib"] if r.get("peak_gpu_mib") is not None else "skipped on CPU" if "seconds" in r else "-",
            recall if "seconds" in r else "-",
            r.get("note", ""),
        ]
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    return "\n".join(lines)


def machine() -> str:
    cuda = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    faiss = knn._faiss()
    faiss_version = f"faiss {faiss.__version__}" if faiss is not None else "no faiss"
    return (
        f"{os.cpu_count()} CPU cores, {cuda}; torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"{faiss_version}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; "
        f"load average {os.getloadavg()[0]:.2f}; /proc/self/status reports {vm_fields()}"
    )


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[50_000, 200_000, 1_000_000], help="N")
    parser.add_argument("--dims", type=int, nargs="+", default=[128, 2048], help="d")
    parser.add_argument("--ks", type=int, nargs="+", default=[20, 50], help="neighbours per image")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=["faiss", "torch", "ivf"])
    parser.add_argument("--max-seconds", type=float, default=None, help="skip cases predicted to take longer")
    parser.add_argument("--case", nargs=4, metavar=("N", "D", "K", "BACKEND"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:
        n, dim, k, backend = args.case
        print(json.dumps(run_case(int(n), int(dim), int(k), backend, args.max_seconds)), flush=True)
        return ""
    print(f"Machine: {machine()}", file=sys.stderr, flush=True)  # progress on stderr, the report on stdout
    results = []
    for n in args.sizes:
        for dim in args.dims:
            for k in args.ks:
                for backend in args.backends:
                    results.append(run_case_in_subprocess(n, dim, k, backend, args.max_seconds))
                    print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    report = f"Machine: {machine()}\n\n{table(results)}"
    print(report, flush=True)
    return report


if __name__ == "__main__":
    main()

"""Exact cosine top-k (embedlens.knn.cosine_topk) against the bare blocked matrix product it is built on.

Within-set top-50 over N rows of 1,280-d float32 features (random, or the rows of a real feature store
with --store), at two row counts, each measurement in a fresh process:

- bare: the same blocked X @ X.T as cosine_topk (same blocks, same copies to the device, same device
  and threads), with no normalisation and no top-k: the floor any exact method has to pay;
- embedlens: ``cosine_topk(X, k=50)``;
- faiss: ``faiss.knn`` (exhaustive inner product on a normalised float32 copy, k+1 neighbours with the
  row itself dropped), only when faiss is importable (``pip install faiss-cpu``).

Printed per row count: seconds, the ratio to the bare product, and the working set: peak resident
memory (ru_maxrss) less the resident memory before the call, which already holds the input. The
results of each top-k method are checked against a float64 brute force on 200 sampled rows.

Pass criteria (exit status 1 otherwise): cosine_topk takes at most 2x the bare product at the largest
row count, and its working set grows at most linearly with the rows (an n x n similarity matrix would
be 14.4 GB at 60,000 rows).

    python benchmarks/knn.py                    # 30,000 and 60,000 random rows: ~5 min on an idle 2-core CPU, more with faiss
    python benchmarks/knn.py --rows 15000 30000 # quicker
    python benchmarks/knn.py --store results/cifar100/dino_vits16/features.h5
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # embedlens from this checkout

CHECKED_ROWS = 200


def load_rows(rows: int, dim: int, store: str | None) -> np.ndarray:
    """The first ``rows`` rows of the store's splits concatenated (read straight into one array, so
    loading leaves no second copy behind), or random Gaussian float32 rows."""
    if store is None:
        return np.random.default_rng(0).standard_normal((rows, dim), dtype=np.float32)
    import h5py

    with h5py.File(store) as f:
        splits = [f[name]["features"] for name in f if isinstance(f[name], h5py.Group) and "features" in f[name]]
        available = sum(split.shape[0] for split in splits)
        if rows > available:
            raise SystemExit(f"{store} has {available} rows in its splits; ask for --rows up to {available}")
        features = np.empty((rows, splits[0].shape[1]), dtype=np.float32)
        filled = 0
        for split in splits:
            take = min(split.shape[0], rows - filled)
            if take:
                split.read_direct(features, np.s_[:take], np.s_[filled:filled + take])
                filled += take
    return features


def bare_product(features: np.ndarray, block_size: int, device) -> None:
    import torch

    for q_start in range(0, len(features), block_size):
        queries = torch.as_tensor(features[q_start:q_start + block_size]).to(device=device, dtype=torch.float32)
        for r_start in range(0, len(features), block_size):
            reference = torch.as_tensor(features[r_start:r_start + block_size]).to(device=device, dtype=torch.float32)
            queries @ reference.T
    if device.type == "cuda":
        torch.cuda.synchronize()


def faiss_within_set(features: np.ndarray, k: int, threads: int) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    faiss.omp_set_num_threads(threads)
    normalised = np.array(features, dtype=np.float32)
    faiss.normalize_L2(normalised)
    similarities, indices = faiss.knn(normalised, normalised, k + 1, metric=faiss.METRIC_INNER_PRODUCT)
    # Drop the row itself; where exact duplicates pushed it out of the k+1, drop the last column.
    drop = indices == np.arange(len(features))[:, None]
    drop[~drop.any(axis=1), -1] = True
    keep = ~drop
    return indices[keep].reshape(-1, k), similarities[keep].reshape(-1, k)


def agreement_with_brute_force(features: np.ndarray, indices: np.ndarray, k: int) -> float:
    """Fraction of the neighbours of CHECKED_ROWS sampled rows that a float64 brute force confirms."""
    sample = np.random.default_rng(1).choice(len(features), size=min(CHECKED_ROWS, len(features)), replace=False)
    queries = features[sample].astype(np.float64)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    similarities = np.empty((len(sample), len(features)))
    for start in range(0, len(features), 8192):
        chunk = features[start:start + 8192].astype(np.float64)
        similarities[:, start:start + 8192] = queries @ (chunk / np.linalg.norm(chunk, axis=1, keepdims=True)).T
    similarities[np.arange(len(sample)), sample] = -np.inf
    expected = np.argsort(-similarities, axis=1, kind="stable")[:, :k]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(expected, indices[sample])]))


def resident_kb() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def worker(method: str, rows: int, dim: int, k: int, block_size: int, device_name: str, store: str | None) -> None:
    import torch

    from embedlens.knn import cosine_topk
    from embedlens.devices import resolve_device

    device = resolve_device(device_name, "--device")
    features = load_rows(rows, dim, store)
    before_kb = resident_kb()
    start = time.perf_counter()
    indices = None
    if method == "bare":
        bare_product(features, block_size, device)
    elif method == "embedlens":
        indices = cosine_topk(features, k=k, block_size=block_size, device=device).indices
    else:
        indices = faiss_within_set(features, k, torch.get_num_threads())[0]
    seconds = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({
        "seconds": seconds, "input_mb": features.nbytes / 1e6, "working_set_mb": (peak_kb - before_kb) / 1024,
        "gpu_peak_mb": torch.cuda.max_memory_allocated() / 1e6 if device.type == "cuda" else None,
        "agreement": None if indices is None else agreement_with_brute_force(features, indices, k),
        "threads": torch.get_num_threads(), "device": str(device)}))


def measure(method: str, rows: int, args) -> dict:
    command = [sys.executable, __file__, "--worker", method, "--rows", str(rows), "--dim", str(args.dim),
               "--k", str(args.k), "--block-size", str(args.block_size), "--device", args.device]
    if args.store:
        command += ["--store", args.store]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[30_000, 60_000], help="row counts to time")
    parser.add_argument("--dim", type=int, default=1280, help="dimensions of the random rows")
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--block-size", type=int, default=4096)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--store", help="an HDF5 feature store whose splits' features to use instead of random rows")
    parser.add_argument("--worker", choices=["bare", "embedlens", "faiss"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.rows[0], args.dim, args.k, args.block_size, args.device, args.store)
        return 0

    methods = ["bare", "embedlens"] + (["faiss"] if faiss_available() else [])
    source = args.store or f"random {args.dim}-d float32"
    print(f"within-set cosine top-{args.k}, {source}, block {args.block_size}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    results = {}
    for rows in sorted(args.rows):
        for method in methods:
            result = results[rows, method] = measure(method, rows, args)
            ratio = result["seconds"] / results[rows, "bare"]["seconds"]
            line = (f"{rows:>7,} rows  {method:9s} {result['seconds']:7.1f} s  {ratio:5.2f}x bare  "
                    f"working set {result['working_set_mb']:6.0f} MB (input {result['input_mb']:.0f} MB)")
            if result["gpu_peak_mb"] is not None:
                line += f"  GPU peak {result['gpu_peak_mb']:.0f} MB"
            if result["agreement"] is not None:
                line += f"  agrees with float64 brute force: {result['agreement']:.4f}"
            print(line + f"  [{result['device']}, {result['threads']} threads]", flush=True)

    small, large = min(args.rows), max(args.rows)
    ratio = results[large, "embedlens"]["seconds"] / results[large, "bare"]["seconds"]
    growth = results[large, "embedlens"]["working_set_mb"] / max(results[small, "embedlens"]["working_set_mb"], 1.0)
    print(f"cosine_topk / bare product at {large:,} rows: {ratio:.2f}x (target <= 2x); working set "
          f"{growth:.2f}x from {small:,} to {large:,} rows (at most {large / small:.2f}x: linear)")
    return 0 if ratio <= 2.0 and growth <= large / small else 1


if __name__ == "__main__":
    sys.exit(main())

"""Sampler start-up on random lengths: `BucketBatchSampler` construction and its first epoch.

Issue 18's check that the sampler stays cheap at tens of millions of pairs. Generates N pairs
of lengths like lo.de-en's (source 1 to 60 subwords, target within +-8 of it), a block at a
time, in `--dtype` (uint16: what `ParallelDataset` holds now; int64: what it held before), then
times `BucketBatchSampler(src, tgt, max_tokens)` and `len()` (which computes the first epoch's
batches) and a pass over the epoch's first 1000 batches. Prints one JSON line: the times, the
lengths' bytes, and the peak memory the sampler added (the process's peak RSS, ru_maxrss, minus
its RSS before the sampler was built).

    PYTHONPATH=. python scripts/sampler_benchmark.py --pairs 40e6

Run it with another checkout on PYTHONPATH to compare implementations.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def lengths(n: int, dtype: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    src, tgt = np.empty(n, dtype=dtype), np.empty(n, dtype=dtype)
    block = 1 << 20
    for a in range(0, n, block):
        b = min(n, a + block)
        s = rng.integers(1, 61, size=b - a)
        src[a:b] = s
        tgt[a:b] = np.clip(s + rng.integers(-8, 9, size=b - a), 1, None)
    return src, tgt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=float, default=8e6)
    p.add_argument("--max-tokens", type=int, default=2000)  # trainer.max_tokens
    p.add_argument("--dtype", default="uint16", choices=["uint16", "int64"])
    args = p.parse_args()
    from nmt.batching import BucketBatchSampler

    n = int(args.pairs)
    src, tgt = lengths(n, args.dtype)
    before = rss_mb()
    t0 = time.perf_counter()
    sampler = BucketBatchSampler(src, tgt, max_tokens=args.max_tokens)
    t1 = time.perf_counter()
    batches = len(sampler)
    t2 = time.perf_counter()
    it = iter(sampler)
    for _ in range(min(1000, batches)):
        next(it)
    t3 = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {
        "pairs": n,
        "dtype": args.dtype,
        "max_tokens": args.max_tokens,
        "batches": batches,
        "construct_s": round(t1 - t0, 3),
        "first_epoch_s": round(t2 - t1, 3),
        "first_1000_batches_s": round(t3 - t2, 3),
        "lengths_mb": round((src.nbytes + tgt.nbytes) / 2**20),
        "rss_before_mb": round(before),
        "sampler_added_peak_mb": round(peak - before),
        "sampler_bytes_per_pair": round((peak - before) * 2**20 / max(n, 1), 1),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()

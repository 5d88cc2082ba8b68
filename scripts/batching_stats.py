"""Padding and speed of length-bucketed batching versus random batching.

Prepares a corpus (SentencePiece + id cache under --cache-dir, reused when present), then for
one epoch of the training split reports, per batching scheme at the same token budget:
batches, sentences per batch, how full batches are (padded cells / max_tokens), the padding
fraction on each side (pad cells / all cells of the (B, S) and (B, T) tensors, eos/bos cells
counted as real) and the time to build the epoch's batches and to iterate them with collate.

    python scripts/batching_stats.py --corpus ../shared/corpora/lo.de-en --src de --tgt en \
        --max-tokens 4096
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from nmt.batching import BucketBatchSampler, cut_batches
from nmt.config import DataConfig, TokenizerConfig
from nmt.data import ParallelDataset, collate_indices, prepare


def padding(batches: list[list[int]], lengths: np.ndarray, extra_tokens: int) -> float:
    """Pad cells / all cells over the batches' (B, max len + extra) tensors."""
    cells = real = 0
    for batch in batches:
        lens = lengths[batch] + extra_tokens
        cells += len(batch) * int(lens.max())
        real += int(lens.sum())
    return 1.0 - real / cells


def measure(
    name: str,
    make_batches: Callable[[], list[list[int]]],
    data: ParallelDataset,
    max_tokens: int,
    pad_id: int,
    bos_id: int,
    eos_id: int,
) -> dict:
    t0 = time.perf_counter()
    batches = make_batches()
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for batch in batches:
        collate_indices(data, batch, pad_id, bos_id, eos_id)
    collate_s = time.perf_counter() - t0
    sizes = np.array([len(b) for b in batches])
    cost = np.maximum(data.src_lengths, data.tgt_lengths) + 1
    fill = np.array([len(b) * int(cost[b].max()) for b in batches]) / max_tokens
    return {
        "scheme": name,
        "batches": len(batches),
        "sentences_per_batch": round(float(sizes.mean()), 1),
        "fill": round(float(fill.mean()), 3),
        "src_padding": round(padding(batches, data.src_lengths, 1), 4),
        "tgt_padding": round(padding(batches, data.tgt_lengths, 1), 4),
        "build_s": round(build_s, 3),
        "epoch_with_collate_s": round(build_s + collate_s, 3),
        "ms_per_batch": round(1000 * (build_s + collate_s) / len(batches), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", required=True, help="directory with {train,dev,test}.{src,tgt}")
    parser.add_argument("--src", default="de")
    parser.add_argument("--tgt", default="en")
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--max-sentences", type=int, default=0)
    parser.add_argument("--pool-factor", type=int, default=100)
    parser.add_argument("--strip-factor", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cache-dir", default="data/cache")
    parser.add_argument("--vocab-size", type=int, default=TokenizerConfig.vocab_size)
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")

    prepared = prepare(
        DataConfig(dir=args.corpus, src=args.src, tgt=args.tgt, cache_dir=args.cache_dir),
        TokenizerConfig(vocab_size=args.vocab_size),
    )
    data = prepared.dataset("train")
    tok = prepared.tokenizer
    src, tgt = data.src_lengths, data.tgt_lengths

    def random_batches() -> list[list[int]]:
        order = np.random.default_rng(args.seed).permutation(len(data))
        return cut_batches(order, src, tgt, args.max_tokens, args.max_sentences)

    def bucketed(pool_factor: int, strip_factor: int) -> Callable[[], list[list[int]]]:
        def make() -> list[list[int]]:
            sampler = BucketBatchSampler(
                src,
                tgt,
                args.max_tokens,
                max_sentences=args.max_sentences,
                seed=args.seed,
                pool_factor=pool_factor,
                strip_factor=strip_factor,
            )
            return list(sampler)

        return make

    schemes: list[tuple[str, Callable[[], list[list[int]]]]] = [
        ("random", random_batches),
        (f"sorted by (src, tgt), pool_factor {args.pool_factor}", bucketed(args.pool_factor, 0)),
        (
            f"bucketed, pool_factor {args.pool_factor}, strip_factor {args.strip_factor}",
            bucketed(args.pool_factor, args.strip_factor),
        ),
        (
            f"bucketed, one pool (pool_factor 0), strip_factor {args.strip_factor}",
            bucketed(0, args.strip_factor),
        ),
    ]
    rows = [
        measure(name, make, data, args.max_tokens, tok.pad_id, tok.bos_id, tok.eos_id)
        for name, make in schemes
    ]
    result = {
        "corpus": args.corpus,
        "pairs": len(data),
        "max_tokens": args.max_tokens,
        "max_sentences": args.max_sentences,
        "vocab_size": args.vocab_size,
        "rows": rows,
    }

    print(f"train pairs: {len(data)}, max_tokens {args.max_tokens}\n")
    print("| scheme | batches | sent/batch | fill | src pad | tgt pad | epoch (collate incl.) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['scheme']} | {r['batches']} | {r['sentences_per_batch']} | {r['fill']:.2f} "
            f"| {100 * r['src_padding']:.1f}% | {100 * r['tgt_padding']:.1f}% "
            f"| {r['epoch_with_collate_s']:.2f} s ({r['ms_per_batch']:.2f} ms/batch) |"
        )
    print()
    print(json.dumps(result, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

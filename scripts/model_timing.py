"""Parameter count and forward+backward time per batch of the default model on real batches.

Builds ``ModelConfig()`` (optionally with overrides below) on the prepared corpus (joint
SentencePiece vocabulary from ``TokenizerConfig()``), cuts real length-bucketed batches of
about ``--max-tokens`` target tokens with ``BucketBatchSampler``, and times one training step
without the optimizer: forward, output layer on the real target tokens, label-smoothed loss,
backward. Reports the median over ``--batches`` batches after ``--warmup`` batches, for each
precision (fp32, bf16 autocast) and input feeding off/on.

    .venv/bin/python scripts/model_timing.py                 # all four settings
    .venv/bin/python scripts/model_timing.py --precision bf16 --input-feeding off
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import statistics
import time

import torch

from nmt.batching import BucketBatchSampler
from nmt.config import DataConfig, ModelConfig, TokenizerConfig
from nmt.data import Batch, collate_indices, prepare
from nmt.loss import label_smoothed_nll
from nmt.model import Seq2Seq, build_model

logger = logging.getLogger("model_timing")


def train_step_seconds(
    model: Seq2Seq, batch: Batch, pad_id: int, precision: str, smoothing: float
) -> float:
    """One forward + backward (no optimizer step); returns wall seconds."""
    autocast = (
        torch.autocast("cpu", dtype=torch.bfloat16)
        if precision == "bf16"
        else contextlib.nullcontext()
    )
    start = time.perf_counter()
    with autocast:
        h = model(batch.src, batch.src_lengths, batch.tgt_in)  # (B, T, Hd)
        real = batch.tgt_out != pad_id
        loss, n = label_smoothed_nll(model.logits(h[real]), batch.tgt_out[real], smoothing)
    (loss / n).backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=DataConfig().dir)
    parser.add_argument("--max-tokens", type=int, default=2000)
    parser.add_argument("--batches", type=int, default=10, help="measured batches (median)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--precision", choices=["fp32", "bf16", "both"], default="both")
    parser.add_argument("--input-feeding", choices=["off", "on", "both"], default="both")
    parser.add_argument("--attention", default=ModelConfig().attention)
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = default")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)

    prepared = prepare(dataclasses.replace(DataConfig(), dir=args.data_dir), TokenizerConfig())
    tok = prepared.tokenizer
    train = prepared.dataset("train")
    sampler = BucketBatchSampler(
        train.src_lengths, train.tgt_lengths, max_tokens=args.max_tokens, seed=args.seed
    )
    batches: list[Batch] = []
    for indices in sampler:
        batches.append(collate_indices(train, indices, tok.pad_id, tok.bos_id, tok.eos_id))
        if len(batches) == args.warmup + args.batches:
            break
    measured = batches[args.warmup :]
    tgt_tokens = [b.n_tgt_tokens for b in measured]
    padded = [b.tgt_out.numel() for b in measured]

    precisions = ["fp32", "bf16"] if args.precision == "both" else [args.precision]
    feedings = [False, True] if args.input_feeding == "both" else [args.input_feeding == "on"]
    results = []
    for input_feeding in feedings:
        torch.manual_seed(args.seed)
        cfg = dataclasses.replace(
            ModelConfig(), input_feeding=input_feeding, attention=args.attention
        )
        model = build_model(cfg, tok.src_vocab_size, tok.tgt_vocab_size, tok.pad_id).train()
        n_params = sum(p.numel() for p in model.parameters())
        for precision in precisions:
            for batch in batches[: args.warmup]:
                train_step_seconds(model, batch, tok.pad_id, precision, 0.1)
            times = [train_step_seconds(model, b, tok.pad_id, precision, 0.1) for b in measured]
            median = statistics.median(times)
            results.append(
                {
                    "input_feeding": input_feeding,
                    "precision": precision,
                    "attention": args.attention,
                    "params": n_params,
                    "median_ms": round(1000 * median, 1),
                    "min_ms": round(1000 * min(times), 1),
                    "tgt_tokens_per_s": round(statistics.median(tgt_tokens) / median),
                }
            )
            logger.info("%s", results[-1])

    print(
        f"vocab {tok.src_vocab_size}/{tok.tgt_vocab_size} (joint={tok.joint}); "
        f"{len(measured)} measured batches after {args.warmup} warm-up, max_tokens "
        f"{args.max_tokens}: median {statistics.median([len(b) for b in measured])} sentences, "
        f"{statistics.median(tgt_tokens)} real / {statistics.median(padded)} padded target "
        f"tokens; torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"load avg {os.getloadavg()[0]:.1f}"
    )
    print(
        f"{'input_feeding':>13} {'precision':>9} {'params':>10} {'median ms':>10} "
        f"{'min ms':>8} {'tgt tok/s':>9}"
    )
    for r in results:
        print(
            f"{str(r['input_feeding']):>13} {r['precision']:>9} {r['params']:>10,} "
            f"{r['median_ms']:>10} {r['min_ms']:>8} {r['tgt_tokens_per_s']:>9}"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()

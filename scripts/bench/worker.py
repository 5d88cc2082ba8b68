"""The worker side of scripts/benchmark.py: what runs in one benchmark process and is timed.

``python scripts/benchmark.py --worker SPEC`` calls ``main``: one arm's training run through
the trainer's own set-up and ``nmt.trainer.train_update`` (and, for the base run, greedy and
beam decoding), written as JSON to the spec's ``out`` path. The parent process measures the
matmul peak with ``peak_matmul`` here too. Model FLOPs come from ``nmt.flops``.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import statistics
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .arms import Arm


def main(spec_path: str) -> None:
    """Run the spec's arm; its result goes to the spec's ``out`` path."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    spec = json.loads(Path(spec_path).read_text())
    Path(spec["out"]).write_text(json.dumps(run_worker(spec)))


# ----------------------------------------------------------------------------------- peak


def peak_matmul(dtype: torch.dtype, size: int, reps: int, device: torch.device) -> dict[str, float]:
    """Median FLOP/s of a size x size matmul in ``dtype`` (2 * size^3 FLOPs each)."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    times = []
    for i in range(reps + 2):
        sync(device)
        start = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        if i >= 2:  # two warm-up products
            times.append(time.perf_counter() - start)
    flops = 2.0 * size**3
    return {
        "gflop_s": flops / statistics.median(times) / 1e9,
        "best_gflop_s": flops / min(times) / 1e9,
        "size": size,
        "reps": reps,
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------- batches


def bucketed_batches(
    sampler: Any,
) -> Iterator[list[int]]:
    """The trainer's batches, epoch after epoch (the sampler moves to the next epoch itself)."""
    while True:
        yield from sampler


def random_batches(
    src_lengths: np.ndarray,
    tgt_lengths: np.ndarray,
    max_tokens: int,
    max_sentences: int,
    seed: int,
) -> Iterator[list[int]]:
    """Plain random batches: each epoch a fresh permutation, cut by the same token budget."""
    from nmt.batching import cut_batches

    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(src_lengths))
        yield from cut_batches(order, src_lengths, tgt_lengths, max_tokens, max_sentences)


def padded_encoder_forward(self: Any, src: Tensor, src_lengths: Tensor) -> Any:
    """``Encoder.forward`` without packing: the LSTM runs over every padded cell.

    Measurement only: the forward direction's final state then comes after the padding, so
    the bridge gets the wrong state (see nmt/encoder.py). Outputs at padded positions are set
    to 0 as packing gives them; attention masks them either way.
    """
    from nmt.encoder import EncoderOutput, lengths_to_mask

    max_len = src.size(1)
    emb = self.dropout(self.embedding(src))  # (B, S, E)
    outputs, (h, c) = self.rnn(emb)  # (B, S, D*H); h, c: (L*D, B, H)
    mask = lengths_to_mask(src_lengths, max_len, src.device)  # (B, S)
    outputs = outputs.masked_fill(~mask[:, :, None], 0.0)  # (B, S, D*H)
    return EncoderOutput(outputs=outputs, h=h, c=c, mask=mask)


# ------------------------------------------------------------------------------- training


def start_watchdog(seconds: float, out_path: str, message: str) -> threading.Timer:
    """After ``seconds``, write ``{"error": message}`` to ``out_path`` and end the process.

    A thread rather than a signal: compilation may run in C++ or swallow exceptions.
    """

    def fire() -> None:
        Path(out_path).write_text(json.dumps({"error": message}))
        os._exit(3)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    return timer


def peak_rss_mb() -> float:
    """Process-lifetime peak resident set size in MiB (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def current_rss_mb() -> float:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return float("nan")


def make_batches(arm: Arm, train_set: Any, sampler: Any, tcfg: Any) -> Iterator[list[int]]:
    """An endless stream of index lists: the trainer's bucketed sampler, or random batches."""
    if arm.batching == "random":
        return random_batches(
            train_set.src_lengths,
            train_set.tgt_lengths,
            tcfg.max_tokens,
            tcfg.max_sentences,
            tcfg.seed,
        )
    sampler.set_epoch(0)
    return bucketed_batches(sampler)


def make_update(
    arm: Arm, cfg: Any, device: torch.device, out_dir: Path
) -> tuple[Any, Callable[[], dict[str, float]]]:
    """The trainer's own set-up (``nmt.trainer.setup_data``, ``setup_model``) for this arm;
    returns (run, update) where ``update()`` draws and collates the next batches, runs
    ``nmt.trainer.train_update`` and returns its counts. ``out_dir`` only names the run:
    nothing is written there."""
    from nmt import distributed as dist_utils
    from nmt.data import collate_indices
    from nmt.flops import training_flops
    from nmt.trainer import Step, setup_data, setup_model, train_update

    cfg = replace(
        cfg,
        model=replace(cfg.model, input_feeding=arm.input_feeding, rnn_impl=arm.rnn_impl),
        trainer=replace(cfg.trainer, precision=arm.precision),
    )
    ctx = dist_utils.DistContext(device=device)
    prepared, train_set, sampler = setup_data(cfg, ctx)
    run = setup_model(cfg, out_dir, ctx, device, prepared, train_set, sampler)
    batches = make_batches(arm, train_set, sampler, cfg.trainer)
    if arm.encoder == "padded":  # this instance only; see padded_encoder_forward
        encoder = run.model.encoder
        encoder.forward = types.MethodType(padded_encoder_forward, encoder)  # type: ignore[method-assign]
    if arm.compile:
        run.criterion = torch.compile(run.criterion, dynamic=True)  # type: ignore[assignment]
    step = Step.of(run)
    tok = prepared.tokenizer

    def update() -> dict[str, float]:
        group = []
        for _ in range(cfg.trainer.accum_steps):
            idx = next(batches)
            group.append(collate_indices(train_set, idx, tok.pad_id, tok.bos_id, tok.eos_id))
        stats = train_update(group, step)
        return {
            "tgt": float(stats.tokens),
            "src": float(sum(int(b.src_lengths.sum()) for b in group)),
            "src_cells": float(sum(b.src.numel() for b in group)),
            "tgt_cells": float(sum(b.tgt_out.numel() for b in group)),
            "loss": float(stats.loss),
            "skipped": 0.0 if stats.finite else 1.0,
            "flops": sum(
                training_flops(
                    cfg.model,
                    tok.tgt_vocab_size,
                    b.src_lengths.numpy(),
                    b.tgt_lengths.numpy() if b.tgt_lengths is not None else np.zeros(0),
                )
                for b in group
            ),
        }

    return run, update


def measure_training(
    update: Callable[[], dict[str, float]], spec: dict[str, Any], device: torch.device
) -> dict[str, Any]:
    """Warm-up updates (under the compile watchdog), then ``repeats`` timed blocks of
    ``updates`` updates: medians of the rates, padding and token counts over all timed ones."""
    start = time.perf_counter()
    watchdog = None
    if spec["compile_timeout"] > 0:
        watchdog = start_watchdog(
            spec["compile_timeout"],
            spec["out"],
            f"not supported: compilation + {spec['warmup']} warm-up updates took over "
            f"{spec['compile_timeout']:.0f} s (--compile-timeout)",
        )
    for _ in range(spec["warmup"]):
        update()
    sync(device)
    if watchdog is not None:
        watchdog.cancel()
    warmup_s = time.perf_counter() - start

    blocks: list[dict[str, float]] = []
    totals: dict[str, float] = {}
    for _ in range(spec["repeats"]):
        acc: dict[str, float] = {}
        sync(device)
        t0 = time.perf_counter()
        for _ in range(spec["updates"]):
            for k, v in update().items():
                acc[k] = acc.get(k, 0.0) + v
        sync(device)
        seconds = time.perf_counter() - t0
        for k, v in acc.items():
            totals[k] = totals.get(k, 0.0) + v
        blocks.append({"seconds": seconds, **acc})
    result: dict[str, Any] = {
        "tgt_tokens_per_s": statistics.median(b["tgt"] / b["seconds"] for b in blocks),
        "src_tgt_tokens_per_s": statistics.median(
            (b["src"] + b["tgt"]) / b["seconds"] for b in blocks
        ),
        "updates_per_s": statistics.median(spec["updates"] / b["seconds"] for b in blocks),
        "model_flop_s": statistics.median(b["flops"] / b["seconds"] for b in blocks),
        "flops_per_tgt_token": totals["flops"] / max(totals["tgt"], 1.0),
        "repeat_seconds": [round(b["seconds"], 3) for b in blocks],
        "warmup_s": warmup_s,
        "pad_fraction": 1.0
        - (totals["src"] + totals["tgt"]) / max(totals["src_cells"] + totals["tgt_cells"], 1.0),
        "pad_fraction_src": 1.0 - totals["src"] / max(totals["src_cells"], 1.0),
        "pad_fraction_tgt": 1.0 - totals["tgt"] / max(totals["tgt_cells"], 1.0),
        "tgt_tokens_per_update": totals["tgt"] / (spec["updates"] * spec["repeats"]),
        "skipped_updates": int(totals["skipped"]),
        "loss_per_token": blocks[-1]["loss"] / max(blocks[-1]["tgt"], 1.0),
    }
    return result


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One training run (and, for the base run, the decoding measurements) in this process."""
    from nmt.compose import compose_train
    from nmt.rng import seed_everything
    from nmt.runtime import tune_malloc

    torch.set_num_threads(spec["threads"])
    arm = Arm(**spec["arm"])
    if arm.malloc:
        tune_malloc()
    device = torch.device(spec["device"])
    cfg = compose_train(spec["overrides"])
    seed_everything(cfg.trainer.seed)
    run, update = make_update(arm, cfg, device, Path(spec["out"]).parent)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = current_rss_mb()
    run.model.train()
    result = measure_training(update, spec, device)
    result["rss_before_training_mb"] = rss_before
    result["peak_rss_mb"] = peak_rss_mb()  # the process so far: import, data, model, training
    result["params"] = sum(p.numel() for p in run.model.parameters())
    if device.type == "cuda":
        result["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    if spec["decode_sentences"] > 0:
        result["decode"] = run_decode(spec, cfg, run.prepared, run.model, device)
        result["peak_rss_after_decoding_mb"] = peak_rss_mb()
    return result


# ------------------------------------------------------------------------------- decoding


def run_decode(
    spec: dict[str, Any], cfg: Any, prepared: Any, model: torch.nn.Module, device: torch.device
) -> dict[str, Any]:
    """Greedy and beam-5 speed on the dev split's first sentences (see the module docstring)."""
    from nmt.translation import translate_ids

    tok = prepared.tokenizer
    source = "model after the base run's warm-up and timed updates"
    if spec["decode_checkpoint"]:
        from nmt.checkpoint import load_model

        model, tok, _ = load_model(spec["decode_checkpoint"], device)
        source = f"checkpoint {spec['decode_checkpoint']}"
    src_lines, ref_lines = prepared.raw("dev")
    keep = [i for i, line in enumerate(src_lines[: spec["decode_sentences"]]) if line.strip()]
    ids = tok.encode_src([src_lines[i] for i in keep])
    refs = tok.encode_tgt([ref_lines[i] for i in keep])
    out: dict[str, Any] = {
        "model": source,
        "sentences": len(ids),
        "mean_src_tokens": float(np.mean([len(x) for x in ids])) if ids else 0.0,
        "mean_ref_tokens": float(np.mean([len(x) for x in refs])) if refs else 0.0,
        "max_tokens": cfg.decode.max_tokens,
        "max_len_a": cfg.decode.max_len_a,
        "max_len_b": cfg.decode.max_len_b,
        "precision": "fp32",
    }
    model.eval()
    for name, beam in (("greedy", 1), ("beam5", 5)):
        decode = replace(cfg.decode, beam_size=beam, nbest=1)
        args = (decode, device, tok.pad_id, tok.bos_id, tok.eos_id)
        translate_ids(model, ids[:16], *args)  # warm-up
        runs = []
        for _ in range(spec["repeats"]):
            sync(device)
            t0 = time.perf_counter()
            hyps = translate_ids(model, ids, *args)
            sync(device)
            seconds = time.perf_counter() - t0
            tokens = sum(len(h[0].tokens) for h in hyps)
            runs.append((seconds, tokens))
        seconds = statistics.median(r[0] for r in runs)
        tokens = runs[0][1]
        out[name] = {
            "beam_size": beam,
            "sentences_per_s": len(ids) / seconds,
            "tokens_per_s": tokens / seconds,
            "mean_output_tokens": tokens / max(len(ids), 1),
            "seconds": seconds,
        }
    return out

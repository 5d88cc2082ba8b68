"""Training and decoding benchmark on the current device, with ablations as ratios.

    python scripts/benchmark.py --corpus data/lo.de-en --src de --tgt en model=reference
    make bench ARGS="--corpus data/lo.de-en model=reference --out-json docs/bench.json"
    python scripts/benchmark.py --quick            # a smoke test at tiny size (seconds)

Positional arguments are Hydra overrides of the training config (``configs/train.yaml``,
composed exactly as ``python -m nmt.train`` does), e.g. ``model=reference
trainer.max_tokens=2000 trainer.precision=bf16``. The composed config is the *base* run.

What is measured (every figure after ``--warmup`` updates, median over ``--repeats``; with
``--rounds N`` the whole list of runs is repeated N times, interleaved, and each run's median
round is kept, which keeps ratios fair on a machine whose speed drifts):

- training: ``--updates`` optimizer updates through ``nmt.trainer.train_update`` (the trainer's
  own step: autocast, label-smoothed loss on real target tokens, backward, clipping, Adam),
  batches drawn and collated inside the timed loop as the trainer does; validation and
  checkpointing are not part of it. Reported: real (non-pad) target tokens/s, source+target
  tokens/s, updates/s, the padding fraction of the batches trained on (pad cells / all cells of
  the (B, S) and (B, T) tensors; eos/bos count as real), and the peak memory: the process's
  peak RSS (``ru_maxrss``) read right after training, and on CUDA
  ``torch.cuda.max_memory_allocated``. Each run is a fresh subprocess, so RSS peaks do not
  leak from one run into the next.
- model FLOPs utilisation (MFU): model FLOP/s over a peak measured in the same run (before and
  after the training runs; the higher of the two), the median rate of an N x N matmul (``--peak-size``: 2048 on CPU, 8192 on CUDA) in the training dtype (fp32,
  or bf16 for a bf16 run) on the same device and thread count.
- decoding: the dev split's first ``--decode-sentences`` source sentences (pre-encoded, so
  SentencePiece is not timed) through ``nmt.translation.translate_ids``, greedy (beam 1) and beam 5,
  in fp32 as ``nmt.translate`` runs; sentences/s and output tokens/s (eos excluded), with
  ``decode.max_tokens`` and the mean output length. The model is the base run's model after its
  timed updates (barely trained: its output lengths differ from a trained model's), or
  ``--decode-checkpoint`` for a trained one.

Ablations (``--ablations``), each as the ratio of real target tokens/s of arm A to arm B, both
measured in this run; one arm is usually the base run itself:

- ``batching``: length-bucketed ``BucketBatchSampler`` vs random batches (a fresh permutation of
  the training set cut by the same token budget with ``nmt.batching.cut_batches``);
- ``input_feeding``: the fast path (``model.input_feeding=false``: one LSTM call over the target)
  vs input feeding (a Python loop over target steps);
- ``packing``: the packed encoder vs the LSTM run on the padded batch. nmt has no unpacked
  encoder, so this script swaps ``Encoder.forward`` *on the benchmark's own model instance* for
  a version that calls ``encoder.rnn`` on the padded embeddings (same FLOPs per cell, but the
  final states come after the padding: measurement only, never for real training);
- ``precision``: bf16 autocast vs fp32 (``trainer.precision``);
- ``rnn_impl``: ``model.rnn_impl=nmt`` (``nmt.lstm``: the packed recurrence with per-sequence
  weight gradients, the fused input-feeding loop) vs ``torch`` (``nn.LSTM``);
- ``malloc``: ``nmt.runtime.tune_malloc()`` (glibc mmap/trim thresholds) vs the default malloc;
- ``compile``: ``torch.compile(criterion, dynamic=True)`` vs eager. Compilation happens in the
  warm-up; a run whose warm-up exceeds ``--compile-timeout`` seconds, or that fails, is
  reported as not supported with the reason. Skipped by ``--quick`` unless listed explicitly.

Model FLOPs, counted analytically per batch from the model config and the real (non-pad)
lengths s_i (source, eos included) and t_i (target, bos/eos included) of each sentence i:
padding, embeddings and elementwise work (gates, softmax, loss, dropout) are not counted, so
padding shows up as lower MFU. With E embedding, He encoder hidden per direction, D directions,
Le/Ld layers, Dv = D*He, Hd decoder hidden, V target vocabulary, and an LSTM layer costing
``2 * 4 * H * (in + H)`` per token per direction (four gates, input and recurrent matmuls):

    encoder  = sum_i s_i * D * sum_l 8*He*(in_l + He),   in_0 = E, in_l = Dv
    bridge   = B * Ld * 2 * 2*Dv*Hd                      (learned bridge: h and c)
    keys     = sum_i s_i * 2*Dv*Hd                       (general/concat/bahdanau; 0 for dot)
    decoder  = sum_i t_i * sum_l 8*Hd*(in_l + Hd),       in_0 = E (+Hd input feeding)
                                                         (+Dv bahdanau), in_l = Hd
    query    = sum_i t_i * 2*Hd*Hd                       (concat/bahdanau only)
    attend   = sum_i t_i * s_i * (2*Hd + 2*Dv)           (scores + context, real pairs only)
    combine  = sum_i t_i * 2*(Hd + Dv)*Hd
    output   = sum_i t_i * 2*Hd*V                        (+ 2*Hd*E with a tied out_proj)
    training = 3 * (sum of the above)                    (backward = 2 x forward)

For the reference model (E 256, 2x256 bi-LSTM, 2x512 decoder with input feeding, 8k vocabulary)
this is about 70 MFLOP per target token at source length ~ target length. V is the model's
target vocabulary: with ``tokenizer.target_vocab=used`` (the default) the target pieces in use,
4,549 on lo.de-en (64.5M FLOPs per real target token measured, against 75.1M with ``all``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import types
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]

log = logging.getLogger("benchmark")


@dataclass(frozen=True)
class Arm:
    """What one training run varies relative to the composed config."""

    batching: str = "bucketed"  # bucketed | random
    input_feeding: bool = False
    encoder: str = "packed"  # packed | padded (unpacked LSTM, measurement only)
    precision: str = "fp32"  # fp32 | bf16 | fp16
    compile: bool = False
    rnn_impl: str = "auto"  # model.rnn_impl: auto | nmt | torch
    malloc: bool = True  # nmt.runtime.tune_malloc() in the worker

    def describe(self) -> str:
        return ", ".join(
            [
                self.batching,
                "input feeding" if self.input_feeding else "fast path",
                f"{self.encoder} encoder",
                self.precision,
                "compiled" if self.compile else "eager",
                f"{self.rnn_impl} LSTM",
                "tuned malloc" if self.malloc else "default malloc",
            ]
        )


# name -> (Arm field, value of arm A, value of arm B, label A, label B); ratio = A / B
ABLATIONS: dict[str, tuple[str, Any, Any, str, str]] = {
    "batching": ("batching", "bucketed", "random", "bucketed", "random"),
    "input_feeding": ("input_feeding", False, True, "fast path", "input feeding"),
    "packing": ("encoder", "packed", "padded", "packed encoder", "padded encoder"),
    "precision": ("precision", "bf16", "fp32", "bf16 autocast", "fp32"),
    "compile": ("compile", True, False, "torch.compile", "eager"),
    "rnn_impl": ("rnn_impl", "nmt", "torch", "nmt.lstm loops", "torch nn.LSTM"),
    "malloc": ("malloc", True, False, "tuned malloc", "default malloc"),
}

QUICK_OVERRIDES = [
    "model=tiny",
    "tokenizer.vocab_size=300",
    "trainer.max_tokens=400",
    "decode.max_len_a=1.0",
    "decode.max_len_b=5",
]


# ---------------------------------------------------------------------------------- config


def compose_config(overrides: list[str]) -> Any:
    """configs/train.yaml + overrides -> TrainConfig, as ``nmt-train`` composes it."""
    from nmt.compose import compose_train

    return compose_train(overrides)


# ----------------------------------------------------------------------------------- FLOPs


def forward_flops(
    m: Any, tgt_vocab: int, src_lengths: np.ndarray, tgt_lengths: np.ndarray
) -> float:
    """Model FLOPs of one forward pass over a batch (see the module docstring).

    m: ModelConfig; src_lengths, tgt_lengths: (B,) real lengths (eos/bos included).
    """
    s = src_lengths.astype(np.float64)
    t = tgt_lengths.astype(np.float64)
    d = 2 if m.bidirectional else 1
    he, hd, e = m.enc_hidden, m.dec_hidden, m.emb_size
    dv = d * he
    enc_per_token = sum(
        d * 8 * he * ((e if layer == 0 else dv) + he) for layer in range(m.enc_layers)
    )
    dec_in0 = e + (hd if m.input_feeding else 0) + (dv if m.attention == "bahdanau" else 0)
    dec_per_token = sum(
        8 * hd * ((dec_in0 if layer == 0 else hd) + hd) for layer in range(m.dec_layers)
    )
    keys_per_token = 0 if m.attention == "dot" else 2 * dv * hd
    query_per_token = 2 * hd * hd if m.attention in ("concat", "bahdanau") else 0
    bridge = len(s) * m.dec_layers * 2 * 2 * dv * hd if m.bridge == "learned" else 0
    out_per_token = 2 * hd * tgt_vocab
    if m.tie_output and hd != e:
        out_per_token = 2 * hd * e + 2 * e * tgt_vocab
    combine_per_token = 2 * (hd + dv) * hd
    total = (
        s.sum() * (enc_per_token + keys_per_token)
        + bridge
        + t.sum() * (dec_per_token + query_per_token + combine_per_token + out_per_token)
        + (t * s).sum() * (2 * hd + 2 * dv)
    )
    return float(total)


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


# ---------------------------------------------------------------------------------- batches


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


# ------------------------------------------------------------------------------ worker: train


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


def make_batches(arm: Arm, train_set: Any, tcfg: Any) -> Iterator[list[int]]:
    """An endless stream of index lists: the trainer's bucketed sampler, or random batches."""
    from nmt.trainer import train_sampler

    if arm.batching == "random":
        return random_batches(
            train_set.src_lengths,
            train_set.tgt_lengths,
            tcfg.max_tokens,
            tcfg.max_sentences,
            tcfg.seed,
        )
    sampler = train_sampler(train_set, tcfg)
    sampler.set_epoch(0)
    return bucketed_batches(sampler)


def make_update(arm: Arm, cfg: Any, prepared: Any, device: torch.device) -> tuple[Any, Any]:
    """Build the run's model and optimizer; returns (model, update) where ``update()`` draws
    and collates the next batches, runs ``nmt.trainer.train_update`` and returns its counts."""
    from nmt import distributed as dist_utils
    from nmt.data import collate
    from nmt.loss import Criterion
    from nmt.model import build_model
    from nmt.optim import build_optimizer
    from nmt.trainer import train_update

    tcfg, ocfg, tok = cfg.trainer, cfg.optim, prepared.tokenizer
    model_cfg = replace(cfg.model, input_feeding=arm.input_feeding, rnn_impl=arm.rnn_impl)
    train_set = prepared.dataset("train")
    batches = make_batches(arm, train_set, tcfg)
    model = build_model(model_cfg, tok.src_vocab_size, tok.tgt_vocab_size, tok.pad_id).to(device)
    if arm.encoder == "padded":  # this instance only; see padded_encoder_forward
        model.encoder.forward = types.MethodType(padded_encoder_forward, model.encoder)  # type: ignore[method-assign]
    criterion: torch.nn.Module = Criterion(model, ocfg.label_smoothing)
    if arm.compile:
        criterion = torch.compile(criterion, dynamic=True)  # type: ignore[assignment]
    optimizer = build_optimizer(model.parameters(), ocfg)
    scaler = torch.amp.GradScaler("cuda") if arm.precision == "fp16" else None
    ctx = dist_utils.DistContext(device=device)

    def update() -> dict[str, float]:
        group = []
        for _ in range(tcfg.accum_steps):
            idx = next(batches)
            group.append(
                collate([(i, *train_set[i]) for i in idx], tok.pad_id, tok.bos_id, tok.eos_id)
            )
        stats = train_update(
            group, criterion, model, optimizer, scaler, ctx, device, arm.precision, ocfg.clip_norm
        )
        return {
            "tgt": float(stats.tokens),
            "src": float(sum(int(b.src_lengths.sum()) for b in group)),
            "src_cells": float(sum(b.src.numel() for b in group)),
            "tgt_cells": float(sum(b.tgt_out.numel() for b in group)),
            "loss": float(stats.loss),
            "skipped": 0.0 if stats.finite else 1.0,
            "flops": 3.0
            * sum(
                forward_flops(
                    model_cfg,
                    tok.tgt_vocab_size,
                    b.src_lengths.numpy(),
                    b.tgt_lengths.numpy() if b.tgt_lengths is not None else np.zeros(0),
                )
                for b in group
            ),
        }

    return model, update


def measure_training(update: Any, spec: dict[str, Any], device: torch.device) -> dict[str, Any]:
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
    from nmt.data import prepare
    from nmt.rng import seed_everything
    from nmt.runtime import tune_malloc

    torch.set_num_threads(spec["threads"])
    arm = Arm(**spec["arm"])
    if arm.malloc:
        tune_malloc()
    device = torch.device(spec["device"])
    cfg = compose_config(spec["overrides"])
    seed_everything(cfg.trainer.seed)
    prepared = prepare(cfg.data, cfg.tokenizer)
    model, update = make_update(arm, cfg, prepared, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = current_rss_mb()
    model.train()
    result = measure_training(update, spec, device)
    result["rss_before_training_mb"] = rss_before
    result["peak_rss_mb"] = peak_rss_mb()  # the process so far: import, data, model, training
    result["params"] = sum(p.numel() for p in model.parameters())
    if device.type == "cuda":
        result["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    if spec["decode_sentences"] > 0:
        result["decode"] = run_decode(spec, cfg, prepared, model, device)
        result["peak_rss_after_decoding_mb"] = peak_rss_mb()
    return result


# ----------------------------------------------------------------------------- worker: decode


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


# -------------------------------------------------------------------------------- the parent


def machine_info(threads: int, device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu in (
                "",
                platform.machine(),
                platform.processor(),
            ):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_bf16": sorted(f for f in flags if f in ("avx512_bf16", "amx_bf16", "amx_tile")),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": threads,
        "device": str(device),
        "load_avg_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def plan_arms(base: Arm, ablations: list[str]) -> tuple[list[Arm], list[tuple[str, Arm, Arm]]]:
    """Distinct runs (base first) and (ablation, arm A, arm B) triples."""
    arms = [base]
    pairs = []
    for name in ablations:
        field, a_value, b_value, _, _ = ABLATIONS[name]
        a, b = replace(base, **{field: a_value}), replace(base, **{field: b_value})
        pairs.append((name, a, b))
        arms += [x for x in (a, b) if x not in arms]
    return arms, pairs


def launch(spec: dict[str, Any], hard_timeout: float | None) -> dict[str, Any]:
    """Run one worker in a fresh process; its result, or {"error": reason}."""
    with tempfile.TemporaryDirectory(prefix="nmt-bench-") as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_path.write_text(json.dumps({**spec, "out": str(out_path)}))
        env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"])}
        try:
            proc = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path)],
                capture_output=True,
                text=True,
                timeout=hard_timeout,
                env=env,
            )
        except subprocess.TimeoutExpired:
            return {"error": f"not supported: the run took over {hard_timeout:.0f} s"}
        if not out_path.is_file():
            tail = [line for line in proc.stderr.strip().splitlines() if line.strip()]
            reason = tail[-1] if tail else f"exit status {proc.returncode}"
            return {"error": f"failed: {reason}"}
        result: dict[str, Any] = json.loads(out_path.read_text())
        return result


def fmt(x: Any, digits: int = 0) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return str(x)


def markdown(report: dict[str, Any]) -> str:
    m, cfg = report["machine"], report["config"]
    mc, tc = cfg["model"], cfg["trainer"]
    lines = [
        "# nmt benchmark",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {m['cpu']}, {m['cpus_usable']} usable of {m['cpu_count']} CPUs"
        + (f" (bf16: {', '.join(m['cpu_bf16'])})" if m["cpu_bf16"] else "")
        + (f", GPU {m['gpu']}" if "gpu" in m else "")
        + f"; device {m['device']}; torch {m['torch']}; {m['threads']} threads; "
        f"load average at start {fmt(m['load_avg_at_start'], 2)}.",
        "",
        f"Model: emb {mc['emb_size']}, encoder {mc['enc_layers']}x{mc['enc_hidden']}"
        f"{' bi' if mc['bidirectional'] else ''}-LSTM, decoder {mc['dec_layers']}x"
        f"{mc['dec_hidden']} LSTM, {mc['attention']} attention, input feeding "
        f"{'on' if mc['input_feeding'] else 'off'}, dropout {mc['dropout']}; "
        f"{cfg['optim']['name']} lr {cfg['optim']['lr']}; max_tokens {tc['max_tokens']} per side; "
        f"vocabulary {report['vocab']['src']}/{report['vocab']['tgt']} "
        f"({'joint' if report['vocab']['joint'] else 'separate'}); corpus {cfg['data']['dir']}.",
        "",
        f"Each training figure: median of {report['repeats']} repeats of {report['updates']} "
        f"updates after {report['warmup']} warm-up updates"
        + (
            f"; the arms were run {report['rounds']} times interleaved and each arm's median "
            "round is shown (peak RSS: the highest round)"
            if report.get("rounds", 1) > 1
            else ""
        )
        + ". Peak matmul ("
        + ", ".join(
            f"{k} {v['size']}x{v['size']}: {v['gflop_s']:,.0f} GFLOP/s"
            + (
                f" (before the runs {v['gflop_s_start']:,.0f}, after {v['gflop_s_end']:,.0f})"
                if "gflop_s_end" in v
                else ""
            )
            for k, v in report["peak"].items()
        )
        + ").",
        "",
        "## Training",
        "",
        "| run | tgt tok/s | src+tgt tok/s | upd/s | tgt tok/upd | MFLOP/tgt tok | MFU | pad "
        "| peak RSS MB | warm-up s |" + (" CUDA max alloc MB |" if "gpu" in m else ""),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if "gpu" in m else ""),
    ]
    for run in report["runs"]:
        name = ("**base**: " if run["base"] else "") + run["label"]
        r = run["result"]
        if "error" in r:
            lines.append(f"| {name} | {r['error']} |" + " |" * 8)
            continue
        row = (
            f"| {name} | {fmt(r['tgt_tokens_per_s'])} | {fmt(r['src_tgt_tokens_per_s'])} "
            f"| {fmt(r['updates_per_s'], 2)} | {fmt(r['tgt_tokens_per_update'])} "
            f"| {fmt(r['flops_per_tgt_token'] / 1e6, 1)} | {100 * r['mfu']:.1f}% "
            f"| {100 * r['pad_fraction']:.1f}% | {fmt(r['peak_rss_mb'])} "
            f"| {fmt(r['warmup_s'], 1)} |"
        )
        if "gpu" in m:
            row += f" {fmt(r.get('cuda_max_allocated_mb'))} |"
        lines.append(row)
    dec = report.get("decode")
    if dec:
        lines += [
            "",
            "## Decoding",
            "",
            f"{dec['sentences']} dev sentences (mean {dec['mean_src_tokens']:.1f} source / "
            f"{dec['mean_ref_tokens']:.1f} reference subwords), {dec['precision']}, "
            f"decode.max_tokens {dec['max_tokens']}, max length {dec['max_len_a']} * src + "
            f"{dec['max_len_b']}; model: {dec['model']}.",
            "",
            "| search | sentences/s | output tok/s | mean output tokens | sentences/s per round |",
            "|---|---:|---:|---:|---|",
        ]
        for name in ("greedy", "beam5"):
            d = dec[name]
            per_round = ", ".join(fmt(x, 1) for x in d.get("rounds_sentences_per_s", []))
            lines.append(
                f"| {name} | {fmt(d['sentences_per_s'], 1)} | {fmt(d['tokens_per_s'])} "
                f"| {fmt(d['mean_output_tokens'], 1)} | {per_round} |"
            )
        if dec["greedy"]["mean_output_tokens"] > 1.5 * dec["mean_ref_tokens"]:
            lines += [
                "",
                "Outputs run towards the length limit (an untrained model rarely ends with eos), "
                "so these speeds understate a trained model's; pass --decode-checkpoint for "
                "realistic output lengths.",
            ]
    if report["ablations"]:
        lines += [
            "",
            "## Ablations (ratio of target tokens/s, A / B)",
            "",
            "| ablation | A | B | A tok/s | B tok/s | A / B | peak RSS A / B MB |",
            "|---|---|---|---:|---:|---:|---:|",
        ]
        for ab in report["ablations"]:
            lines.append(
                f"| {ab['name']} | {ab['a']} | {ab['b']} | {fmt(ab['a_tgt_tokens_per_s'])} "
                f"| {fmt(ab['b_tgt_tokens_per_s'])} | "
                + (f"{ab['ratio']:.2f}" if ab["ratio"] is not None else ab.get("note", "-"))
                + f" | {fmt(ab['a_peak_rss_mb'])} / {fmt(ab['b_peak_rss_mb'])} |"
            )
    if report["notes"]:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in report["notes"]]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Training/decoding benchmark with ablations (see the module docstring).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=reference")
    p.add_argument("--corpus", default="data/lo.de-en", help="directory with {split}.{lang}")
    p.add_argument("--src", default="de")
    p.add_argument("--tgt", default="en")
    p.add_argument("--updates", type=int, help="timed updates per repeat (30; --quick 3)")
    p.add_argument("--warmup", type=int, help="untimed updates first (5; --quick 1)")
    p.add_argument("--repeats", type=int, help="median over this many repeats (3; --quick 2)")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the list of arms this many times, interleaved, and keep each arm's median "
        "round (shared machines drift over minutes; interleaving keeps the ratios fair)",
    )
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument(
        "--decode-sentences", type=int, help="dev sentences to decode (300; --quick 20; 0 = skip)"
    )
    p.add_argument("--decode-checkpoint", help="decode with this trained checkpoint instead")
    p.add_argument(
        "--ablations",
        nargs="*",
        choices=list(ABLATIONS),
        help=f"default: all ({' '.join(ABLATIONS)}); --quick leaves out compile",
    )
    p.add_argument("--compile-timeout", type=float, default=180.0, help="seconds for compile")
    p.add_argument(
        "--peak-size", type=int, help="matmul size for the peak (CPU 2048, CUDA 8192; --quick 256)"
    )
    p.add_argument("--peak-reps", type=int, default=10)
    p.add_argument("--out-json", help="write the full results here")
    p.add_argument(
        "--out-md",
        help="markdown table (docs/benchmarks_table.md; --quick: stdout only); '-' = none",
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    q = args.quick
    for name, full, quick in (
        ("updates", 30, 3),
        ("warmup", 5, 1),
        ("repeats", 3, 2),
        ("decode_sentences", 300, 20),
    ):
        if getattr(args, name) is None:
            setattr(args, name, quick if q else full)
    if args.ablations is None:
        args.ablations = [a for a in ABLATIONS if not (q and a == "compile")]
    if args.out_md is None:
        args.out_md = "-" if q else "docs/benchmarks_table.md"
    if args.updates < 1 or args.repeats < 1 or args.warmup < 0 or args.rounds < 1:
        p.error("--updates, --repeats and --rounds must be >= 1, --warmup >= 0")
    return args


def run_arms(
    args: argparse.Namespace,
    overrides: list[str],
    device: torch.device,
    arms: list[Arm],
    peak: dict[str, dict[str, float]],
) -> dict[Arm, dict[str, Any]]:
    """Each arm in its own process, base (arms[0], which also decodes) first; ``--rounds``
    times over the list, keeping for each arm the round with the median target tokens/s
    (its peak RSS the highest of all rounds); decoding: each search's median round."""
    rounds: dict[Arm, list[dict[str, Any]]] = {arm: [] for arm in arms}
    for _ in range(args.rounds):
        one = run_round(args, overrides, device, arms, peak, decode=True)
        for arm in arms:
            rounds[arm].append(one[arm])
    decodes = [x["decode"] for x in rounds[arms[0]] if "decode" in x]
    results: dict[Arm, dict[str, Any]] = {}
    for arm, runs in rounds.items():
        ok = [x for x in runs if "error" not in x]
        if not ok:
            results[arm] = runs[0]
            continue
        ok.sort(key=lambda x: x["tgt_tokens_per_s"])
        chosen = dict(ok[(len(ok) - 1) // 2])
        if arm == arms[0] and decodes:
            chosen["decode"] = median_decode(decodes)
        chosen["peak_rss_mb"] = max(x["peak_rss_mb"] for x in ok)
        chosen["rounds_tgt_tokens_per_s"] = [
            round(x["tgt_tokens_per_s"], 1) for x in runs if "error" not in x
        ]
        results[arm] = chosen
    return results


def median_decode(decodes: list[dict[str, Any]]) -> dict[str, Any]:
    """Per search (greedy, beam5), the round with the median sentences/s."""
    out = dict(decodes[0])
    for name in ("greedy", "beam5"):
        runs = sorted((d[name] for d in decodes if name in d), key=lambda r: r["sentences_per_s"])
        if runs:
            out[name] = {
                **runs[(len(runs) - 1) // 2],
                "rounds_sentences_per_s": [round(r["sentences_per_s"], 1) for r in runs],
            }
    return out


def run_round(
    args: argparse.Namespace,
    overrides: list[str],
    device: torch.device,
    arms: list[Arm],
    peak: dict[str, dict[str, float]],
    decode: bool,
) -> dict[Arm, dict[str, Any]]:
    """One pass over the arms, each in its own process."""
    results: dict[Arm, dict[str, Any]] = {}
    for k, arm in enumerate(arms):
        spec = {
            "overrides": overrides,
            "arm": asdict(arm),
            "threads": args.threads,
            "device": str(device),
            "updates": args.updates,
            "warmup": args.warmup,
            "repeats": args.repeats,
            "decode_sentences": args.decode_sentences if k == 0 and decode else 0,
            "decode_checkpoint": args.decode_checkpoint,
            "compile_timeout": args.compile_timeout if arm.compile else 0,
        }
        hard = None  # a compiled run may hang compiling: give it 3x the base run's time
        base = results.get(arms[0], {"error": ""})
        if arm.compile and "error" not in base:
            hard = args.compile_timeout + 3 * (base["warmup_s"] + sum(base["repeat_seconds"])) + 120
        log.info("run %d/%d: %s", k + 1, len(arms), arm.describe())
        result = launch(spec, hard)
        if "error" in result:
            log.warning("  %s", result["error"])
        else:
            result["mfu"] = result["model_flop_s"] / (peak[arm.precision]["gflop_s"] * 1e9)
            log.info(
                "  %.0f tgt tok/s, %.2f upd/s, MFU %.1f%%, pad %.1f%%, peak RSS %.0f MB",
                result["tgt_tokens_per_s"],
                result["updates_per_s"],
                100 * result["mfu"],
                100 * result["pad_fraction"],
                result["peak_rss_mb"],
            )
        results[arm] = result
    return results


def compare(
    pairs: list[tuple[str, Arm, Arm]], results: dict[Arm, dict[str, Any]]
) -> list[dict[str, Any]]:
    """Each ablation as A / B ratios of target tokens/s and updates/s."""
    ablations = []
    for name, a, b in pairs:
        ra, rb = results[a], results[b]
        ok = "error" not in ra and "error" not in rb
        entry: dict[str, Any] = {
            "name": name,
            "a": ABLATIONS[name][3],
            "b": ABLATIONS[name][4],
            "a_run": a.describe(),
            "b_run": b.describe(),
            "a_tgt_tokens_per_s": ra.get("tgt_tokens_per_s"),
            "b_tgt_tokens_per_s": rb.get("tgt_tokens_per_s"),
            "a_peak_rss_mb": ra.get("peak_rss_mb"),
            "b_peak_rss_mb": rb.get("peak_rss_mb"),
            "ratio": ra["tgt_tokens_per_s"] / rb["tgt_tokens_per_s"] if ok else None,
            "ratio_updates_per_s": ra["updates_per_s"] / rb["updates_per_s"] if ok else None,
        }
        if not ok:
            entry["note"] = ra.get("error") or rb.get("error")
        ablations.append(entry)
    return ablations


def explain(args: argparse.Namespace, arms: list[Arm], device: torch.device) -> list[str]:
    """Notes printed under the tables: how each ablation was made."""
    notes = []
    if "bf16" in {a.precision for a in arms} and device.type == "cpu":
        if not {"avx512_bf16", "amx_bf16"} & set(machine_info(1, device)["cpu_bf16"]):
            notes.append("this CPU has no native bf16 (avx512_bf16/amx): bf16 is emulated")
    if "packing" in args.ablations:
        notes.append(
            "padded encoder: this script swaps Encoder.forward on its own model instance for "
            "an unpacked LSTM call on the padded batch (nmt has no such option; the final "
            "states are then wrong, so it is for timing only)"
        )
    if "batching" in args.ablations:
        notes.append(
            "random batching: a fresh permutation of the training set each epoch, cut by the "
            "same token budget (nmt.batching.cut_batches), no length sorting"
        )
    if "compile" in args.ablations:
        notes.append(
            f"torch.compile(criterion, dynamic=True); compilation happens in the {args.warmup} "
            f"warm-up updates, limited to --compile-timeout {args.compile_timeout:.0f} s"
        )
    elif args.quick:
        notes.append("torch.compile: not measured by --quick (compiling alone takes ~1 min)")
    notes.append(
        "model FLOPs count real tokens only (formula in the scripts/benchmark.py docstring); "
        "MFU divides them by the matmul peak in the run's dtype"
    )
    return notes


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        spec = json.loads(Path(args.worker).read_text())
        Path(spec["out"]).write_text(json.dumps(run_worker(spec)))
        return
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from nmt.data import prepare
    from nmt.runtime import pick_device

    command = " ".join(shlex.quote(a) for a in ["python", "scripts/benchmark.py", *sys.argv[1:]])
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    overrides = [f"data.dir={args.corpus}", f"data.src={args.src}", f"data.tgt={args.tgt}"]
    overrides += (QUICK_OVERRIDES if args.quick else []) + list(args.overrides)
    cfg = compose_config(overrides)
    if cfg.trainer.precision == "fp16" and device.type != "cuda":
        raise SystemExit("trainer.precision=fp16 needs CUDA; use bf16 on the CPU")
    tok = prepare(cfg.data, cfg.tokenizer).tokenizer  # build the cache once; the runs reuse it

    if args.peak_size is None:
        args.peak_size = 256 if args.quick else 8192 if device.type == "cuda" else 2048
    rnn_impl = cfg.model.rnn_impl
    if rnn_impl == "auto":  # resolved here so the rnn_impl ablation reuses the base run
        rnn_impl = "nmt" if device.type == "cpu" else "torch"
    base = Arm(
        input_feeding=cfg.model.input_feeding, precision=cfg.trainer.precision, rnn_impl=rnn_impl
    )
    arms, pairs = plan_arms(base, args.ablations)
    peak: dict[str, dict[str, float]] = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        if name in {a.precision for a in arms}:
            peak[name] = peak_matmul(dtype, args.peak_size, args.peak_reps, device)
            log.info("peak %s matmul: %.1f GFLOP/s", name, peak[name]["gflop_s"])
    results = run_arms(args, overrides, device, arms, peak)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    for name in list(peak):  # again after the runs: shared machines drift
        again = peak_matmul(dtypes[name], args.peak_size, args.peak_reps, device)
        log.info("peak %s matmul at the end: %.1f GFLOP/s", name, again["gflop_s"])
        peak[name]["gflop_s_start"] = peak[name]["gflop_s"]
        peak[name]["gflop_s_end"] = again["gflop_s"]
        peak[name]["gflop_s"] = max(peak[name]["gflop_s"], again["gflop_s"])  # MFU: the higher
    for arm, result in results.items():
        if "error" not in result:
            result["mfu"] = result["model_flop_s"] / (peak[arm.precision]["gflop_s"] * 1e9)

    report: dict[str, Any] = {
        "command": command,
        "machine": machine_info(args.threads, device),
        "config": asdict(cfg),
        "vocab": {"src": tok.src_vocab_size, "tgt": tok.tgt_vocab_size, "joint": tok.joint},
        "updates": args.updates,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "rounds": args.rounds,
        "peak": peak,
        "runs": [
            {
                "label": arm.describe(),
                "base": arm == base,
                "arm": asdict(arm),
                "result": {k: v for k, v in result.items() if k != "decode"},
            }
            for arm, result in results.items()
        ],
        "decode": results[base].get("decode"),
        "ablations": compare(pairs, results),
        "notes": explain(args, arms, device),
    }
    md = markdown(report)
    print(md)
    if args.out_md != "-":
        Path(args.out_md).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out_md).write_text(md, encoding="utf-8")
        log.info("wrote %s", args.out_md)
    if args.out_json:
        Path(args.out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out_json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        log.info("wrote %s", args.out_json)
    if "error" in results[base]:
        raise SystemExit(f"the base run failed: {results[base]['error']}")


if __name__ == "__main__":
    main()

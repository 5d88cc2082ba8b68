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
  own step: autocast, label-smoothed loss on real target tokens, backward, clipping, Adam) on
  what the trainer's own set-up builds (``nmt.trainer.setup_data``, ``setup_model``), batches
  drawn and collated inside the timed loop as the trainer does; validation and checkpointing
  are not part of it. Reported: real (non-pad) target tokens/s, source+target
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

Model FLOPs are counted analytically from the model config and the real (non-pad) lengths of
each batch (``nmt.flops``; the formula is in its docstring). The worker side (one timed run in
its own process) is ``scripts/bench/worker.py``, the tables ``scripts/bench/report.py``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from bench import report, worker  # scripts/bench, beside this file
from bench.arms import ABLATIONS, QUICK_OVERRIDES, Arm, plan_arms

log = logging.getLogger("benchmark")


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


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker.main(args.worker)
        return
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from nmt.compose import compose_train
    from nmt.data import prepare
    from nmt.lstm import uses_nmt
    from nmt.runtime import pick_device

    command = " ".join(shlex.quote(a) for a in ["python", "scripts/benchmark.py", *sys.argv[1:]])
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    overrides = [f"data.dir={args.corpus}", f"data.src={args.src}", f"data.tgt={args.tgt}"]
    overrides += (QUICK_OVERRIDES if args.quick else []) + list(args.overrides)
    cfg = compose_train(overrides)
    if cfg.trainer.precision == "fp16" and device.type != "cuda":
        raise SystemExit("trainer.precision=fp16 needs CUDA; use bf16 on the CPU")
    tok = prepare(cfg.data, cfg.tokenizer).tokenizer  # build the cache once; the runs reuse it

    if args.peak_size is None:
        args.peak_size = 256 if args.quick else 8192 if device.type == "cuda" else 2048
    # resolved here so the rnn_impl ablation reuses the base run
    rnn_impl = "nmt" if uses_nmt(cfg.model.rnn_impl, device) else "torch"
    base = Arm(
        input_feeding=cfg.model.input_feeding, precision=cfg.trainer.precision, rnn_impl=rnn_impl
    )
    arms, pairs = plan_arms(base, args.ablations)
    peak = measure_peaks(args, device, {a.precision for a in arms})
    results = run_arms(args, overrides, device, arms, peak)
    measure_peaks_again(args, device, peak)
    for arm, result in results.items():
        if "error" not in result:
            result["mfu"] = result["model_flop_s"] / (peak[arm.precision]["gflop_s"] * 1e9)

    out: dict[str, Any] = {
        "command": command,
        "machine": report.machine_info(args.threads, device),
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
        "ablations": report.compare(pairs, results),
        "notes": report.explain(args, arms, device),
    }
    report.write(out, args.out_md, args.out_json)
    if "error" in results[base]:
        raise SystemExit(f"the base run failed: {results[base]['error']}")


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def measure_peaks(
    args: argparse.Namespace, device: torch.device, precisions: set[str]
) -> dict[str, dict[str, float]]:
    """The matmul peak of each precision the arms train in, before the runs."""
    peak: dict[str, dict[str, float]] = {}
    for name, dtype in DTYPES.items():
        if name in precisions:
            peak[name] = worker.peak_matmul(dtype, args.peak_size, args.peak_reps, device)
            log.info("peak %s matmul: %.1f GFLOP/s", name, peak[name]["gflop_s"])
    return peak


def measure_peaks_again(
    args: argparse.Namespace, device: torch.device, peak: dict[str, dict[str, float]]
) -> None:
    """Again after the runs (shared machines drift); MFU divides by the higher of the two."""
    for name in list(peak):
        again = worker.peak_matmul(DTYPES[name], args.peak_size, args.peak_reps, device)
        log.info("peak %s matmul at the end: %.1f GFLOP/s", name, again["gflop_s"])
        peak[name]["gflop_s_start"] = peak[name]["gflop_s"]
        peak[name]["gflop_s_end"] = again["gflop_s"]
        peak[name]["gflop_s"] = max(peak[name]["gflop_s"], again["gflop_s"])


if __name__ == "__main__":
    main()

"""nmt side by side with OpenNMT-py 3.5.1: training speed, peak memory, decoding speed.

    scripts/peers/install_onmt.sh .venv/bin/python          # once: .peers/onmt-venv
    PYTHONPATH=. .venv/bin/python scripts/peers/onmt_benchmark.py --rounds 3 --seconds 300 \
        --out-json docs/peers_onmt.json --out-md docs/peers_onmt.md

Issue 17, item 1. Both toolkits train the same architecture on the same corpus with the same
SentencePiece pieces and about the same real target tokens per update, alternating in one
sitting, each run a fresh process:

- data: ``nmt.data.prepare`` (the cache ``python -m nmt.train`` uses, joint 8k unigram model)
  gives the filtered training pairs as ids; OpenNMT-py gets exactly those pairs as pieces
  (``spm.id_to_piece``, so an unknown id is ``<unk>``), and as vocabularies the pieces that
  occur on each side of them (``piece<TAB>count``, specials left to OpenNMT-py). nmt's output
  layer spans the target pieces in use too (``tokenizer.target_vocab=used``, set here unless an
  override says otherwise; an option since issue 17 item 2; its cached target ids are model ids, mapped back to SentencePiece ids here);
  ``tokenizer.target_vocab=all`` spans all pieces of the joint model, as before.
- model: nmt ``experiment=reference trainer.max_tokens=2600`` (emb 256, 2x256 bi-LSTM, 2x512
  decoder, general attention, input feeding, learned bridge, dropout 0.2, Adam 1e-3, label
  smoothing 0.1, clipping at 1.0, uniform init +-0.1). OpenNMT-py: brnn 2 layers of 512 split
  across directions, rnn decoder 2x512, general attention, input feed, bridge, dropout 0.2, Adam
  1e-3, label smoothing 0.1, max_grad_norm 1.0, param_init 0.1 (its default), its default
  data loader (2 workers, buckets of 262,144 pairs). Its ``batch_size`` (tokens) is the one
  whose real target tokens per batch over an epoch of its own batching
  (``onmt_driver.py batches``) are nearest nmt's over an epoch of ``nmt.batching`` (on
  lo.de-en: 2,700 against ``trainer.max_tokens=2600``, both about 2,010), unless
  ``--onmt-batch-size`` says otherwise; the training logs give the tokens per update measured.
- each round trains each toolkit for ``--seconds`` (nmt: ``trainer.max_time_min``; OpenNMT-py:
  ``onmt_driver.py train`` ends its batch iterator at the deadline), order alternating between
  rounds. Training speed: real target tokens (eos included, as both count them) per second
  from the toolkits' own log lines every ``--log-every`` updates (tokens/s of each interval times
  its length from the log timestamps), excluding the first log line and everything within
  ``--warmup`` seconds after it. Peak memory: the largest process's peak RSS (``wait4``) and the
  peak of the summed PSS of the process tree (OpenNMT-py's loader workers included), sampled
  every second.
- decoding: each toolkit's checkpoint from that round, on the first ``--decode-sentences``
  dev sentences (same ids), greedy and beam 5, ``--decode-max-tokens`` source tokens per batch
  for both, max output length 1.5 * source + 10 for nmt and 1.5 * the longest source + 10 for
  OpenNMT-py (it has one limit per run), GNMT length penalty alpha 1 for both (OpenNMT-py:
  ``-length_penalty wu -alpha 1``), OpenNMT-py greedy with ``-random_sampling_topk 1`` (its
  default samples). Timed in-process after a warm-up, model loading excluded; reported with
  the mean output length (pieces, eos excluded) and BLEU on those sentences, so sentences/s
  compare like with like.

Every toolkit run gets ``OMP_NUM_THREADS=--threads`` and ``torch.set_num_threads(--threads)``.
Reported: each toolkit's median over rounds, and nmt / OpenNMT-py ratios of the medians.
Work files live under ``--work`` (default ``.peers/work``, git-ignored). Never run in CI.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
NMT_OVERRIDES = ["experiment=reference"]
DEFAULT_ONMT_PYTHON = ROOT / ".peers" / "onmt-venv" / "bin" / "python"
TOOLKITS = ("nmt", "onmt")
NAMES = {"nmt": "nmt", "onmt": "OpenNMT-py 3.5.1"}

# ------------------------------------------------------------------------ pure helpers (tested)

_STAMP = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})")
# nmt.trainer.log_train: "update 50 epoch 1 | loss ... | 1234 tgt tok/s | ..."
_NMT = re.compile(r"\bupdate (\d+) epoch \d+ \|.*?\| ([\d.]+) tgt tok/s")
# onmt.utils.Statistics.output: "Step 50/1000000; acc: ...; bsz: 2400/2000/80; 1500/1400 tok/s;"
_ONMT = re.compile(
    r"\bStep\s+(\d+)(?:/\s*\d+)?;.*?bsz:\s*[\d.]+/\s*[\d.]+/\s*[\d.]+;\s*[\d.]+/\s*([\d.]+) tok/s"
)


@dataclass(frozen=True)
class Report:
    """One training log line: wall time (s since the epoch), update number, target tokens/s of
    the interval it closes."""

    time: float
    update: int
    tgt_tok_s: float


def parse_reports(text: str, toolkit: str) -> list[Report]:
    """The training reports of a log (nmt's or OpenNMT-py's format), in order."""
    pattern = _NMT if toolkit == "nmt" else _ONMT
    out = []
    for line in text.splitlines():
        m, s = pattern.search(line), _STAMP.search(line)
        if m and s:
            t = datetime.datetime.strptime(s.group(1), "%Y-%m-%d %H:%M:%S")
            t = t.replace(tzinfo=datetime.timezone.utc)
            out.append(Report(t.timestamp() + int(s.group(2)) / 1000, int(m[1]), float(m[2])))
    return out


def throughput(reports: list[Report], warmup_s: float) -> dict[str, float] | None:
    """Target tokens/s, tokens per update and updates/s over the intervals between consecutive
    reports that start at least ``warmup_s`` after the first report (the first report's own
    interval, which holds start-up, is never counted). None when no interval is left."""
    if len(reports) < 2:
        return None
    start = reports[0].time + warmup_s
    tokens = seconds = 0.0
    updates = 0
    for prev, cur in zip(reports, reports[1:], strict=False):
        if prev.time < start or cur.time <= prev.time:
            continue
        dt = cur.time - prev.time
        tokens += cur.tgt_tok_s * dt
        seconds += dt
        updates += cur.update - prev.update
    if seconds <= 0 or updates <= 0:
        return None
    return {
        "tgt_tok_s": tokens / seconds,
        "tgt_tokens_per_update": tokens / updates,
        "updates_per_s": updates / seconds,
        "measured_s": seconds,
        "measured_updates": updates,
    }


def vocab_lines(counts: np.ndarray, pieces: list[str], skip: Iterable[int]) -> list[str]:
    """``piece<TAB>count`` for every id that occurs (count > 0) and is not in ``skip``, most
    frequent first (ties by id): an OpenNMT-py vocabulary of the pieces a side uses."""
    skipped = set(skip)
    used = [i for i in np.flatnonzero(counts) if int(i) not in skipped]
    used.sort(key=lambda i: (-int(counts[i]), int(i)))
    return [f"{pieces[i]}\t{int(counts[i])}" for i in used]


def closest(rows: list[dict[str, float]], target: float) -> dict[str, float]:
    """The row whose ``tgt_tokens_per_batch`` is nearest ``target`` (smaller batch_size on ties)."""
    return min(rows, key=lambda r: (abs(r["tgt_tokens_per_batch"] - target), r["batch_size"]))


def median_or_none(values: Iterable[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return statistics.median(kept) if kept else None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


# --------------------------------------------------------------------------- processes, memory


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def _pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def tree_pss_mb(pid: int) -> float:
    """Summed PSS of a process and its descendants (shared pages split among their users)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += _pss_kb(p)
        todo.extend(_children(p))
    return total / 1024


def run_measured(
    cmd: list[str], log_path: Path, env: dict[str, str], timeout_s: float
) -> dict[str, Any]:
    """Run ``cmd`` (stdout and stderr into ``log_path``); wall time, exit status, the largest
    process's peak RSS (wait4) and the peak summed PSS of its process tree (sampled each second)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    peak = [0.0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(1.0):
            peak[0] = max(peak[0], tree_pss_mb(proc.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    killer = threading.Timer(timeout_s, proc.kill)
    t0 = time.perf_counter()
    sampler.start()
    killer.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        killer.cancel()
        done.set()
        sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {
        "rc": proc.returncode,
        "wall_s": time.perf_counter() - t0,
        "max_rss_mb": usage.ru_maxrss / 1024,
        "peak_tree_pss_mb": peak[0],
        "log": str(log_path.relative_to(ROOT)) if log_path.is_relative_to(ROOT) else str(log_path),
    }


def child_env(threads: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
    env.update(extra or {})
    return env


# ----------------------------------------------------------------------------------- the data


def compose_train_config(overrides: list[str]) -> Any:
    """``nmt/configs/train.yaml`` + overrides, as ``nmt-train`` composes it."""
    from nmt.compose import compose_train

    return compose_train(overrides)


def prepare_data(args: argparse.Namespace, overrides: list[str]) -> dict[str, Any]:
    """nmt's cache, and from it OpenNMT-py's files under ``--work/<cache name>``."""
    import sentencepiece as spm

    from nmt.batching import BucketBatchSampler
    from nmt.data import prepare

    cfg = compose_train_config(overrides)
    prepared = prepare(cfg.data, cfg.tokenizer)
    if not prepared.tokenizer.joint:
        raise SystemExit("the peer benchmark expects nmt's joint SentencePiece model")
    cache = prepared.path
    sp = spm.SentencePieceProcessor(model_file=str(cache / "spm.model"))
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    tok = cfg.tokenizer
    specials = (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id)
    work = (ROOT / args.work / cache.name).resolve()
    work.mkdir(parents=True, exist_ok=True)
    vocab_sizes = {}
    for side in ("src", "tgt"):
        ids = np.load(cache / f"train.{side}.ids.npy")
        target_vocab = prepared.tokenizer.tgt_vocab
        if side == "tgt" and target_vocab is not None:  # model ids -> SentencePiece ids
            ids = target_vocab.sp_ids(ids.astype(np.int64))
        offsets = np.load(cache / f"train.{side}.offsets.npy")
        train_file = work / f"train.{side}"
        if not train_file.exists():
            table = np.array(pieces, dtype=object)
            lines = (
                " ".join(table[ids[a:b]]) + "\n"
                for a, b in zip(offsets[:-1], offsets[1:], strict=True)
            )
            tmp = train_file.with_suffix(".tmp")
            with open(tmp, "w", encoding="utf-8") as f:
                f.writelines(lines)
            tmp.rename(train_file)
        counts = np.bincount(ids.astype(np.int64), minlength=len(pieces))
        vocab = vocab_lines(counts, pieces, specials)
        (work / f"vocab.{side}").write_text("".join(v + "\n" for v in vocab), encoding="utf-8")
        vocab_sizes[side] = len(vocab)
    train_set = prepared.dataset("train")
    sampler = BucketBatchSampler(
        train_set.src_lengths,
        train_set.tgt_lengths,
        max_tokens=cfg.trainer.max_tokens,
        max_sentences=cfg.trainer.max_sentences,
        shuffle=True,
        seed=cfg.trainer.seed,
        pool_factor=cfg.trainer.pool_factor,
    )  # as nmt.trainer builds it
    epoch = list(sampler)
    nmt_tokens = float(np.mean([int(train_set.tgt_lengths[b].sum()) + len(b) for b in epoch]))
    src_lines, ref_lines = prepared.raw("dev")
    keep = [i for i, line in enumerate(src_lines) if line.strip()][: args.decode_sentences]
    src = [src_lines[i] for i in keep]
    ids = sp.encode(src)
    (work / "decode.src.txt").write_text("".join(s + "\n" for s in src), encoding="utf-8")
    (work / "decode.src.pieces").write_text(
        "".join(" ".join(pieces[i] for i in seq) + "\n" for seq in ids), encoding="utf-8"
    )
    return {
        "cache": str(cache.relative_to(ROOT)) if cache.is_relative_to(ROOT) else str(cache),
        "work": work,
        "sp": sp,
        "train_pairs": len(train_set),
        "nmt_epoch": {
            "max_tokens": cfg.trainer.max_tokens,
            "batches": len(epoch),
            "tgt_tokens_per_batch": nmt_tokens,
        },
        "pieces_used": vocab_sizes,
        "spm_pieces": len(pieces),
        "decode_refs": [ref_lines[i] for i in keep],
        "decode_sentences": len(src),
        "decode_mean_src_tokens": float(np.mean([len(s) for s in ids])) if ids else 0.0,
        "decode_max_src_tokens": max((len(s) for s in ids), default=0),
    }


def onmt_batching(args: argparse.Namespace, data: dict[str, Any]) -> dict[str, Any]:
    """OpenNMT-py's own batching of one epoch (``onmt_driver.py batches``) for a range of token
    batch sizes; returns the one whose real target tokens per batch are nearest nmt's, or the
    row for ``--onmt-batch-size`` when given."""
    target = data["nmt_epoch"]["tgt_tokens_per_batch"]
    if args.onmt_batch_size:
        sizes = [args.onmt_batch_size]
    else:
        mt = data["nmt_epoch"]["max_tokens"]
        sizes = list(range(int(mt * 0.8), int(mt * 1.25) + 1, 10))
    work = data["work"]
    cmd = [
        str(args.onmt_python), str(HERE / "onmt_driver.py"), "batches",
        "--batch-size", ",".join(map(str, sizes)), str(work / "train.src"), str(work / "train.tgt"),
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=child_env(1))
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    best = closest(rows, target)
    print(
        f"OpenNMT-py batch_size {best['batch_size']} (tokens): "
        f"{best['tgt_tokens_per_batch']:.0f} real target tokens per batch over an epoch; "
        f"nmt max_tokens {data['nmt_epoch']['max_tokens']}: {target:.0f}",
        file=sys.stderr,
    )
    return best


def onmt_train_config(args: argparse.Namespace, work: Path, run_dir: Path) -> Path:
    """OpenNMT-py's training config for the reference architecture (module docstring)."""
    big = 10**8
    cfg = {
        "data": {
            "corpus_1": {"path_src": str(work / "train.src"), "path_tgt": str(work / "train.tgt")}
        },
        "src_vocab": str(work / "vocab.src"),
        "tgt_vocab": str(work / "vocab.tgt"),
        "src_vocab_size": 10**6,
        "tgt_vocab_size": 10**6,
        "save_model": str(run_dir / "model"),
        "overwrite": True,
        "train_steps": big,
        "save_checkpoint_steps": big,
        "valid_steps": big,
        "report_every": args.log_every,
        "seed": 1,
        "encoder_type": "brnn",
        "decoder_type": "rnn",
        "rnn_type": "LSTM",
        "word_vec_size": 256,
        "enc_layers": 2,
        "dec_layers": 2,
        "enc_hid_size": 512,
        "dec_hid_size": 512,
        "global_attention": "general",
        "input_feed": 1,
        "bridge": True,
        "dropout": [0.2],
        "optim": "adam",
        "learning_rate": 0.001,
        "start_decay_steps": big,
        "max_grad_norm": 1.0,
        "label_smoothing": 0.1,
        "param_init": 0.1,
        "batch_type": "tokens",
        "batch_size": args.onmt_batch["batch_size"],
        "accum_count": [1],
    }
    path = run_dir / "onmt_train.yaml"
    path.write_text(json.dumps(cfg, indent=1) + "\n", encoding="utf-8")  # JSON is YAML
    return path


# ------------------------------------------------------------------------------------ the arms


def train_arm(
    toolkit: str,
    args: argparse.Namespace,
    overrides: list[str],
    data: dict[str, Any],
    run_dir: Path,
) -> tuple[dict[str, Any], Path | None]:
    run_dir.mkdir(parents=True, exist_ok=True)
    timeout = args.seconds + args.start_timeout
    if toolkit == "nmt":
        cmd = [
            sys.executable, "-m", "nmt.train", *overrides,
            f"trainer.max_time_min={args.seconds / 60}",
            f"trainer.log_every={args.log_every}",
            f"trainer.num_threads={args.threads}",
            "trainer.valid_every=100000000", "trainer.save_every=100000000",
            "trainer.valid_max_sentences=1", "trainer.tensorboard=false",
            "trainer.progress=false", "eval_test=false",
            f"out_dir={run_dir}", f"hydra.run.dir={run_dir}",
        ]  # fmt: skip
        env = child_env(args.threads, {"PYTHONPATH": str(ROOT)})
    else:
        config = onmt_train_config(args, data["work"], run_dir)
        cmd = [
            str(args.onmt_python), str(HERE / "onmt_driver.py"), "train",
            "--seconds", str(args.seconds), "--threads", str(args.threads), "-config", str(config),
        ]  # fmt: skip
        env = child_env(args.threads)
    res = run_measured(cmd, run_dir / "train.out", env, timeout)
    text = (run_dir / "train.out").read_text(encoding="utf-8", errors="replace")
    reports = parse_reports(text, toolkit)
    res["updates"] = reports[-1].update if reports else 0
    res["throughput"] = throughput(reports, args.warmup)
    ckpt = trained_checkpoint(toolkit, run_dir)
    if res["rc"] != 0 or ckpt is None:
        res["error"] = f"exit status {res['rc']}; see {res['log']}"
        print(f"  {toolkit}: training failed: {res['error']}", file=sys.stderr)
        print("  " + "\n  ".join(text.splitlines()[-15:]), file=sys.stderr)
        return res, None
    return res, ckpt


def trained_checkpoint(toolkit: str, run_dir: Path) -> Path | None:
    """The checkpoint a training arm left in ``run_dir``: nmt's last.pt, OpenNMT-py's
    model_step_N.pt of the largest N; None if there is none."""
    if toolkit == "nmt":
        ckpt = run_dir / "last.pt"
        return ckpt if ckpt.exists() else None
    steps = {int(m.group(1)): p for p in run_dir.glob("model_step_*.pt")
             if (m := re.fullmatch(r"model_step_(\d+)\.pt", p.name))}  # fmt: skip
    return steps[max(steps)] if steps else None


def redecode_plan(report: dict[str, Any]) -> list[list[tuple[str, dict[str, Any], Path]]]:
    """``--decode-from``: per round of an earlier report, in its alternating order, each
    toolkit's training result and the checkpoint its run left (next to its training log)."""
    plan = []
    for r, done in enumerate(report["rounds"]):
        order = [tk for tk in TOOLKITS if tk in done]
        arms = []
        for tk in order if r % 2 == 0 else order[::-1]:
            train = done[tk]["train"]
            ckpt = trained_checkpoint(tk, Path(train["log"]).parent)
            if ckpt is None:
                raise SystemExit(f"round {r + 1} {tk}: no checkpoint next to {train['log']}")
            arms.append((tk, train, ckpt))
        plan.append(arms)
    return plan


def bleu(hyp_pieces: list[str], refs: list[str], sp: Any) -> float:
    import sacrebleu

    hyps = [sp.decode(line.split()) for line in hyp_pieces]
    return float(sacrebleu.corpus_bleu(hyps, [refs]).score)


def decode_arm(
    toolkit: str, args: argparse.Namespace, data: dict[str, Any], ckpt: Path, run_dir: Path
) -> dict[str, Any]:
    work: Path = data["work"]
    out: dict[str, Any] = {}
    arms = [("greedy", 1, "none"), ("beam5", 5, "none")]
    if toolkit == "nmt" and args.nmt_int8:
        arms += [("greedy_int8", 1, "int8"), ("beam5_int8", 5, "int8")]
    for name, beam, quantize in arms:
        hyp_path, timing = run_dir / f"{name}.hyp", run_dir / f"{name}.json"
        if toolkit == "nmt":
            cmd = [
                sys.executable, str(HERE / "nmt_decode.py"), str(ckpt), str(work / "decode.src.txt"),
                "--beam", str(beam), "--repeats", str(args.decode_repeats),
                "--threads", str(args.threads), "--max-tokens", str(args.decode_max_tokens),
                "--quantize", quantize, "--output", str(hyp_path), "--json-out", str(timing),
            ]  # fmt: skip
            env = child_env(args.threads, {"PYTHONPATH": str(ROOT)})
        else:
            search = ["-length_penalty", "wu", "-alpha", "1.0"]
            if beam == 1:
                search = ["-random_sampling_topk", "1"]
            max_length = int(1.5 * data["decode_max_src_tokens"] + 10)
            cmd = [
                str(args.onmt_python), str(HERE / "onmt_driver.py"), "translate",
                "--repeats", str(args.decode_repeats), "--threads", str(args.threads),
                "--json-out", str(timing), "-model", str(ckpt),
                "-src", str(work / "decode.src.pieces"), "-output", str(hyp_path),
                "-beam_size", str(beam), "-n_best", "1", "-batch_type", "tokens",
                "-batch_size", str(args.decode_max_tokens), "-max_length", str(max_length),
                "-seed", "1", *search,
            ]  # fmt: skip
            env = child_env(args.threads, {"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"})
        res = run_measured(cmd, run_dir / f"{name}.out", env, args.start_timeout + 3600)
        if res["rc"] != 0 or not timing.exists():
            text = (run_dir / f"{name}.out").read_text(encoding="utf-8", errors="replace")
            print(f"  {toolkit} {name}: failed; see {res['log']}", file=sys.stderr)
            print("  " + "\n  ".join(text.splitlines()[-15:]), file=sys.stderr)
            out[name] = {"error": f"exit status {res['rc']}; see {res['log']}"}
            continue
        t = json.loads(timing.read_text())
        hyps = hyp_path.read_text(encoding="utf-8").splitlines()
        seconds = statistics.median(t["seconds"])
        tokens = sum(len(h.split()) for h in hyps)
        out[name] = {
            "beam_size": beam,
            "sentences": t["sentences"],
            "seconds": seconds,
            "all_seconds": t["seconds"],
            "sentences_per_s": t["sentences"] / seconds,
            "tokens_per_s": tokens / seconds,
            "mean_output_tokens": tokens / max(len(hyps), 1),
            "bleu": bleu(hyps, data["decode_refs"], data["sp"]),
            "max_rss_mb": res["max_rss_mb"],
        }
    return out


# ------------------------------------------------------------------------------------ report


METRICS: list[tuple[str, str, str]] = [
    # key path, label, better
    ("train.throughput.tgt_tok_s", "training, real target tokens/s", "higher"),
    ("train.throughput.tgt_tokens_per_update", "real target tokens per update", ""),
    ("train.throughput.updates_per_s", "updates/s", "higher"),
    ("train.updates", "updates (at the last log line)", ""),
    ("train.wall_s", "training process wall time, start-up and final save included (s)", ""),
    ("train.max_rss_mb", "training peak RSS, largest process (MB)", "lower"),
    ("train.peak_tree_pss_mb", "training peak PSS, all processes (MB)", "lower"),
    ("decode.greedy.sentences_per_s", "greedy, sentences/s", "higher"),
    ("decode.greedy.tokens_per_s", "greedy, output tokens/s", "higher"),
    ("decode.greedy.mean_output_tokens", "greedy, mean output length (pieces)", ""),
    ("decode.greedy.bleu", "greedy, BLEU on the decoded dev sentences", ""),
    ("decode.beam5.sentences_per_s", "beam 5, sentences/s", "higher"),
    ("decode.beam5.tokens_per_s", "beam 5, output tokens/s", "higher"),
    ("decode.beam5.mean_output_tokens", "beam 5, mean output length (pieces)", ""),
    ("decode.beam5.bleu", "beam 5, BLEU on the decoded dev sentences", ""),
    # nmt only (--nmt-int8); the ratio is against OpenNMT-py's float decoding of the same kind
    (
        "decode.greedy_int8.sentences_per_s",
        "greedy, sentences/s, nmt int8 (OpenNMT-py float)",
        "higher",
    ),
    (
        "decode.greedy_int8.mean_output_tokens",
        "greedy, mean output length, nmt int8 (OpenNMT-py float)",
        "",
    ),
    ("decode.greedy_int8.bleu", "greedy, BLEU, nmt int8 (OpenNMT-py float)", ""),
    (
        "decode.beam5_int8.sentences_per_s",
        "beam 5, sentences/s, nmt int8 (OpenNMT-py float)",
        "higher",
    ),
    (
        "decode.beam5_int8.mean_output_tokens",
        "beam 5, mean output length, nmt int8 (OpenNMT-py float)",
        "",
    ),
    ("decode.beam5_int8.bleu", "beam 5, BLEU, nmt int8 (OpenNMT-py float)", ""),
]


def dig(d: Any, path: str) -> float | None:
    for key in path.split("."):
        if not isinstance(d, dict) or d.get(key) is None:
            return None
        d = d[key]
    return float(d) if isinstance(d, int | float) else None


def toolkit_key(toolkit: str, key: str) -> str:
    """The metric of ``toolkit`` a row shows: OpenNMT-py has no int8 arm, so nmt's int8 rows
    are set against its float decoding of the same kind."""
    return key if toolkit == "nmt" else key.replace("_int8.", ".")


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for key, label, better in METRICS:
        per = {tk: [dig(r[tk], toolkit_key(tk, key)) for r in rounds if tk in r] for tk in TOOLKITS}
        med = {tk: median_or_none(v) for tk, v in per.items()}
        summary[key] = {
            "label": label,
            "better": better,
            "rounds": per,
            "median": med,
            "ratio_nmt_over_onmt": ratio(med["nmt"], med["onmt"]),
        }
    return summary


def fmt(x: float | None, digits: int = 0) -> str:
    if x is None:
        return "-"
    return f"{x:,.{digits}f}"


def markdown(report: dict[str, Any]) -> str:
    m, s = report["machine"], report["settings"]
    onmt = report["data"].get("onmt_epoch") or {}
    onmt_bs = onmt.get("batch_size", "-")
    onmt_ep = onmt.get("tgt_tokens_per_batch", float("nan"))
    nmt_ep = report["data"]["nmt_epoch"]["tgt_tokens_per_batch"]
    lines = [
        f"nmt vs OpenNMT-py 3.5.1, {s['rounds']} rounds of {s['seconds']:.0f} s training per "
        f"toolkit (alternating), warm-up {s['warmup']:.0f} s excluded; {m['cpu']} "
        f"({m['cores']} cores), {s['threads']} threads, torch {m['torch']}, {report['date']}.",
        *(
            [
                "",
                f"Training rows: the run of {s['trained']}; decoding rows: its checkpoints "
                f"decoded again on {report['date']} (`--decode-from {s['decode_from']}`).",
            ]
            if s.get("decode_from")
            else []
        ),
        "",
        f"Data: {report['data']['train_pairs']:,} training pairs of {report['data']['cache']}; "
        f"pieces used: {report['data']['pieces_used']['src']:,} source, "
        f"{report['data']['pieces_used']['tgt']:,} target (of {report['data']['spm_pieces']:,}); "
        f"decoding: {report['data']['decode_sentences']} dev sentences "
        f"(mean {report['data']['decode_mean_src_tokens']:.1f} source pieces), "
        f"{s['decode_max_tokens']} source tokens per batch. nmt: `{' '.join(s['nmt_overrides'])}`; "
        f"OpenNMT-py: `batch_type tokens, batch_size {onmt_bs}`. Real target tokens per "
        f"update over one epoch of each toolkit's own batching: nmt {nmt_ep:,.0f}, "
        f"OpenNMT-py {onmt_ep:,.0f}.",
        "",
        "| | nmt (rounds) | OpenNMT-py (rounds) | nmt / OpenNMT-py |",
        "|---|---:|---:|---:|",
    ]
    for key, label, better in METRICS:
        row = report["summary"][key]
        digits = 2 if "updates_per" in key else 1 if ("mean_output" in key or "bleu" in key) else 0
        cells = []
        for tk in TOOLKITS:
            rounds = " / ".join(fmt(v, digits) for v in row["rounds"][tk])
            cells.append(f"**{fmt(row['median'][tk], digits)}** ({rounds})")
        r = row["ratio_nmt_over_onmt"]
        note = f" ({better} is better)" if better else ""
        lines.append(f"| {label} | {cells[0]} | {cells[1]} | {fmt(r, 2)}{note if r else ''} |")
    lines.append("")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__}


# --------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides for nmt's training")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--seconds", type=float, default=150.0, help="training time per run")
    p.add_argument("--warmup", type=float, default=30.0, help="seconds after the first log line")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--log-every", type=int, default=10, help="updates between log lines")
    p.add_argument("--nmt-max-tokens", type=int, default=2600)
    p.add_argument(
        "--onmt-batch-size",
        type=int,
        default=0,
        help="OpenNMT-py's batch_size in tokens; 0: the one matching nmt's real target tokens "
        "per update over an epoch (both toolkits' own batching, computed before training)",
    )
    p.add_argument("--onmt-python", type=Path, default=DEFAULT_ONMT_PYTHON)
    p.add_argument("--work", default=".peers/work")
    p.add_argument("--decode-sentences", type=int, default=500)
    p.add_argument("--decode-max-tokens", type=int, default=6000)
    p.add_argument("--decode-repeats", type=int, default=3)
    p.add_argument("--no-decode", action="store_true")
    p.add_argument(
        "--nmt-int8", action="store_true", help="also decode nmt's model with quantize=int8"
    )
    p.add_argument("--only", choices=TOOLKITS, help="run one toolkit (calibration)")
    p.add_argument("--start-timeout", type=float, default=600.0, help="slack for start-up")
    p.add_argument("--out-json")
    p.add_argument("--out-md")
    p.add_argument(
        "--decode-from",
        help="an earlier --out-json report: decode its runs' checkpoints again, no training "
        "(its data and training settings; the --decode-* and --threads options of this call)",
    )
    args = p.parse_args(argv)
    if args.decode_from and (args.only or args.overrides):
        p.error("--decode-from decodes every toolkit of that report with its own settings; "
                "--only and nmt overrides do not apply")  # fmt: skip
    args.earlier = None  # the --decode-from report, read once
    if args.decode_from:  # the same data and training settings as that run
        args.earlier = json.loads(Path(args.decode_from).read_text(encoding="utf-8"))
        earlier = args.earlier["settings"]
        args.nmt_max_tokens, args.work = earlier["nmt_max_tokens"], earlier["work"]
        args.decode_sentences = earlier["decode_sentences"]
        args.overrides = [o for o in earlier["nmt_overrides"] if o not in NMT_OVERRIDES]
        args.overrides = [o for o in args.overrides if not o.startswith("trainer.max_tokens=")]
    overrides = [*NMT_OVERRIDES, f"trainer.max_tokens={args.nmt_max_tokens}", *args.overrides]
    if not any(o.startswith("tokenizer.target_vocab=") for o in overrides):
        overrides.append("tokenizer.target_vocab=used")  # like OpenNMT-py's vocabulary
    return args, overrides


def redecode(args: argparse.Namespace, data: dict[str, Any], runs: Path) -> list[dict[str, Any]]:
    """``--decode-from REPORT``: decode the checkpoints of that report's runs again (new
    decoding code, a quieter machine), keeping its training results; same order, same data."""
    rounds: list[dict[str, Any]] = []
    for r, arms in enumerate(redecode_plan(args.earlier)):
        this: dict[str, Any] = {}
        for tk, train, ckpt in arms:
            print(f"round {r + 1}: {tk} decoding {ckpt}", file=sys.stderr)
            run_dir = runs / f"round{r + 1}-{tk}"
            run_dir.mkdir(parents=True, exist_ok=True)
            this[tk] = {"train": train, "decode": decode_arm(tk, args, data, ckpt, run_dir)}
            print(f"  {json.dumps(this[tk]['decode'], default=str)}", file=sys.stderr)
        rounds.append(this)
    return rounds


def main(argv: list[str] | None = None) -> None:
    args, overrides = parse_args(argv)
    if not args.onmt_python.exists() and args.only != "nmt":
        raise SystemExit(f"{args.onmt_python} missing: run scripts/peers/install_onmt.sh first")
    os.chdir(ROOT)  # nmt's data paths and cache are relative to the repository
    data = prepare_data(args, overrides)
    if args.only != "nmt" and not args.decode_from:
        args.onmt_batch = onmt_batching(args, data)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    runs = ROOT / args.work / "runs" / stamp
    print(
        f"data: {data['train_pairs']} pairs, pieces used {data['pieces_used']}; runs in {runs}",
        file=sys.stderr,
    )
    toolkits = [args.only] if args.only else list(TOOLKITS)
    rounds: list[dict[str, Any]] = []
    if args.decode_from:
        rounds = redecode(args, data, runs)
    for r in range(0 if args.decode_from else args.rounds):
        order = toolkits if r % 2 == 0 else toolkits[::-1]
        this: dict[str, Any] = {}
        for tk in order:
            run_dir = runs / f"round{r + 1}-{tk}"
            print(
                f"round {r + 1}/{args.rounds}: {tk} training {args.seconds:.0f} s", file=sys.stderr
            )
            train, ckpt = train_arm(tk, args, overrides, data, run_dir)
            this[tk] = {"train": train}
            if ckpt is not None and not args.no_decode:
                print(f"round {r + 1}/{args.rounds}: {tk} decoding", file=sys.stderr)
                this[tk]["decode"] = decode_arm(tk, args, data, ckpt, run_dir)
            print(f"  {json.dumps(this[tk], default=str)}", file=sys.stderr)
        rounds.append(this)
    settings = {
        k: (str(v) if isinstance(v, Path) else v)
        for k, v in vars(args).items()
        if k not in ("overrides", "earlier")
    }
    data["onmt_epoch"] = settings.pop("onmt_batch", None)
    settings["nmt_overrides"] = overrides
    if args.earlier is not None:  # the training settings and figures are the earlier run's
        earlier = args.earlier
        for key in ("rounds", "seconds", "warmup", "log_every", "nmt_max_tokens", "nmt_overrides"):
            settings[key] = earlier["settings"][key]
        settings["trained"] = earlier["date"]
        data["onmt_epoch"] = earlier["data"].get("onmt_epoch")
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "settings": settings,
        "data": {k: v for k, v in data.items() if k not in ("sp", "decode_refs", "work")},
        "rounds": rounds,
        "summary": summarise(rounds),
    }
    md = markdown(report)
    print(md)
    if args.out_json:
        Path(args.out_json).write_text(json.dumps(report, indent=1, default=str) + "\n")
    if args.out_md:
        Path(args.out_md).write_text(md)


if __name__ == "__main__":
    main()

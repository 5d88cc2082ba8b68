"""Scale benchmark: prepare and training start-up on synthetic corpora of N pairs (issue 18).

For each N (millions of pairs), builds `WORK/N/{train,dev,test}.{src,tgt}`: the corpus's train
pairs repeated until there are N, every repeat perturbed (two neighbouring words swapped on each
side, at a position that moves with the repeat) so that SentencePiece and the cache see N
distinct pairs of the corpus's length and vocabulary; dev and test are copied. Then, each in its
own process:

- `python -m nmt.prepare` on it: wall time, peak memory of the process tree, cache size, the
  phase times of the summary, encoding pairs/s;
- training start-up (prepare's cache hit, opening the train split, the sampler's first epoch,
  the model) and `--updates` updates on the CPU; `hit_from_stat` says whether the cache hit
  took the files' digests from `file-digests.json` (files written less than 2 s before prepare
  read them are re-hashed instead) (`--model small`: 64/64/128 units, the default
  vocabulary and batch size; what grows with N is the data's share): times and peak memory.

Memory is the peak, sampled every 0.2 s, of the summed PSS (proportional set size: shared pages
split between the processes sharing them) of the process and its descendants, the largest
single-process peak RSS (VmHWM) among them, and the peak of their summed anonymous memory
(PSS counts the pages of the memory-mapped cache that batches have touched: clean page cache,
up to the cache's size, which the kernel can drop; anonymous memory is what the process holds). Results go to `--json`, and a markdown table with the slope
per million pairs (least squares over the sizes) to stdout.

    python scripts/scale_benchmark.py --corpus ../shared/corpora/lo.de-en --src de --tgt en \\
        --sizes 0.5,2,8 --workers-at-smallest 1,2 --work /tmp/nmt-scale --json scale.json

Files under --work are this script's own; `--clean` removes the synthetic corpora and caches it
wrote there when it is done.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# memory of a process tree


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out.extend(int(x) for x in f.read().split())
    except OSError:
        pass
    return out


def _pss_kb(pid: int) -> tuple[int, int]:
    """(PSS, anonymous memory) of a process in kB: PSS counts the pages of memory-mapped files
    it has touched (the cache's ids, clean and reclaimable); anonymous memory does not."""
    pss = anon = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
                elif line.startswith("Anonymous:"):
                    anon = int(line.split()[1])
    except OSError:
        pass
    return pss, anon


def _hwm_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_memory_mb(pid: int) -> tuple[float, float, float]:
    """(summed PSS of pid and its descendants, the largest peak RSS among them, summed
    anonymous memory)."""
    todo, total, hwm, anon = [pid], 0, 0, 0
    while todo:
        p = todo.pop()
        pss, a = _pss_kb(p)
        total, anon = total + pss, anon + a
        hwm = max(hwm, _hwm_kb(p))
        todo.extend(_children(p))
    return total / 1024, hwm / 1024, anon / 1024


def run_measured(cmd: list[str], log: Path) -> dict:
    """Run cmd (stdout+stderr to `log`); wall time, peak tree PSS, largest child peak RSS."""
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        peak = [0.0, 0.0, 0.0]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.2):
                pss, hwm, anon = tree_memory_mb(proc.pid)
                peak[0], peak[1] = max(peak[0], pss), max(peak[1], hwm)
                peak[2] = max(peak[2], anon)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        rc = proc.wait()
        done.set()
        thread.join()
    if rc != 0:
        sys.exit(f"error: {' '.join(cmd)} failed with status {rc}; see {log}")
    return {
        "wall_s": round(time.perf_counter() - start, 2),
        "peak_pss_mb": round(peak[0]),
        "max_process_rss_mb": round(peak[1]),  # VmHWM, sampled
        "peak_anon_mb": round(peak[2]),  # anonymous memory: PSS less the mapped files' pages
    }


# ---------------------------------------------------------------------------------------------
# synthetic corpus


def _perturb(line: str, k: int) -> str:
    if k == 0:
        return line
    words = line.split(" ")
    if len(words) < 2:
        return line + " " + line if line else line
    i = k % (len(words) - 1)
    words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words)


def synthesize(corpus: Path, src: str, tgt: str, n: int, out: Path) -> None:
    """N train pairs from the corpus's train split, repeated and perturbed; dev/test copied."""
    stamp = out / ".complete"
    if stamp.is_file() and stamp.read_text() == str(n):
        return
    out.mkdir(parents=True, exist_ok=True)
    for split in ("dev", "test"):
        for lang in (src, tgt):
            shutil.copyfile(corpus / f"{split}.{lang}", out / f"{split}.{lang}")
    for lang in (src, tgt):
        lines = (corpus / f"train.{lang}").read_text("utf-8").split("\n")
        if lines[-1] == "":
            lines.pop()
        with (out / f"train.{lang}").open("w", encoding="utf-8") as f:
            written, k = 0, 0
            while written < n:
                take = lines[: n - written]
                f.write("".join(_perturb(line, k + i) + "\n" for i, line in enumerate(take)))
                written += len(take)
                k += 1
    stamp.write_text(str(n))


def dir_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


# ---------------------------------------------------------------------------------------------
# the training child


def train_child(args: argparse.Namespace) -> None:
    """Start-up and `updates` updates as nmt.trainer does them; prints one JSON line."""
    t_start = time.perf_counter()
    import torch

    from nmt import distributed as dist_utils
    from nmt.cache import known_digest, read_digests
    from nmt.config import DataConfig, TrainConfig
    from nmt.data import collate_indices, prepare
    from nmt.dataset import SPLITS
    from nmt.model import build_model
    from nmt.optim import build_optimizer
    from nmt.trainer import Criterion, Step, train_sampler, train_update

    torch.set_num_threads(args.threads)
    t_import = time.perf_counter()
    cfg = TrainConfig(data=DataConfig(dir=args.data, src=args.src, tgt=args.tgt))
    cfg.data.cache_dir = args.cache
    for override in args.prepare_args.split():  # tokenizer.x=v / data.x=v, as prepare had them
        group, _, rest = override.partition(".")
        name, _, value = rest.partition("=")
        section = getattr(cfg, group)
        setattr(section, name, type(getattr(section, name))(value))
    if args.model == "small":  # the data's share of memory is what grows with N
        cfg.model.emb_size, cfg.model.enc_hidden, cfg.model.dec_hidden = 64, 64, 128
    times = {"import_s": t_import - t_start}
    root = Path(cfg.data.dir)
    pairs = [(root / f"{s}.{cfg.data.src}", root / f"{s}.{cfg.data.tgt}") for s in SPLITS]
    records = read_digests(Path(cfg.data.cache_dir))
    from_stat = all(known_digest(records, pair) is not None for pair in pairs)
    t0 = time.perf_counter()
    prepared = prepare(cfg.data, cfg.tokenizer)
    assert prepared.reused, "the training child expects a prepared cache"
    times["prepare_hit_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    train_set = prepared.dataset("train")
    times["open_train_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    sampler = train_sampler(train_set, cfg.trainer)
    batches = iter(sampler)
    first = next(batches)
    times["sampler_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    tok = prepared.tokenizer
    device = torch.device("cpu")
    model = build_model(cfg.model, tok.src_vocab_size, tok.tgt_vocab_size, tok.pad_id)
    criterion = Criterion(model, cfg.optim.label_smoothing)
    optimizer = build_optimizer(model.parameters(), cfg.optim)
    ctx = dist_utils.DistContext(device=device)
    step = Step(criterion, model, optimizer, None, ctx, device, "fp32", cfg.optim.clip_norm)
    times["model_s"] = time.perf_counter() - t0
    times["startup_s"] = time.perf_counter() - t_import
    t0 = time.perf_counter()
    idx = first
    for _ in range(args.updates):
        batch = collate_indices(train_set, idx, tok.pad_id, tok.bos_id, tok.eos_id)
        model.train()
        train_update([batch], step)
        idx = next(batches)
    times["updates_s"] = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {k: round(v, 3) for k, v in times.items()}
    out |= {"hit_from_stat": from_stat, "pairs": len(train_set), "self_peak_rss_mb": round(rss)}
    print(json.dumps(out))


# ---------------------------------------------------------------------------------------------


def slope(xs: list[float], ys: list[float]) -> float:
    if len(xs) < 2:
        return float("nan")
    return float(np.polyfit(np.array(xs), np.array(ys), 1)[0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", default="data/lo.de-en")
    p.add_argument("--src", default="de")
    p.add_argument("--tgt", default="en")
    p.add_argument("--sizes", default="0.5,2,8", help="millions of pairs, comma-separated")
    p.add_argument("--workers-at-smallest", default="1,2", help="data.num_workers to compare")
    p.add_argument("--updates", type=int, default=50)
    p.add_argument("--threads", type=int, default=2, help="torch threads for the updates")
    p.add_argument(
        "--model", default="small", choices=["small", "default"], help="model for the updates"
    )
    p.add_argument("--work", default="/tmp/nmt-scale")
    p.add_argument("--json", default=None)
    p.add_argument(
        "--prepare-args",
        default="",
        help="more nmt.prepare overrides, e.g. tokenizer.input_sentence_size=500000",
    )
    p.add_argument("--clean", action="store_true")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--train-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--cache", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.train_child:
        train_child(args)
        return

    corpus, work = Path(args.corpus), Path(args.work)
    for split in ("train", "dev", "test"):
        for lang in (args.src, args.tgt):
            if not (corpus / f"{split}.{lang}").is_file():
                sys.exit(f"error: {corpus / f'{split}.{lang}'}: no such file")
    sizes = [float(s) for s in args.sizes.split(",")]
    worker_counts = [int(w) for w in args.workers_at_smallest.split(",")]
    results = []
    for size in sizes:
        n = int(round(size * 1e6))
        data = work / f"{size:g}M"
        t0 = time.perf_counter()
        synthesize(corpus, args.src, args.tgt, n, data)
        print(f"[{size:g}M] corpus in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
        # a corpus is normally older than nmt.cache.RACY_NS (2 s) when prepare reads it: only
        # then are the files' digests recorded for the training run's cache hit
        newest = max(f.stat().st_mtime for f in data.iterdir())
        time.sleep(max(0.0, newest + 2.5 - time.time()))
        for workers in worker_counts if size == sizes[0] else [0]:
            cache = work / f"cache-{size:g}M-w{workers}"
            if cache.exists():
                shutil.rmtree(cache)
            cmd = [
                sys.executable,
                "-m",
                "nmt.prepare",
                f"data.dir={data}",
                f"data.src={args.src}",
                f"data.tgt={args.tgt}",
                f"data.cache_dir={cache}",
                f"data.num_workers={workers}",
                *args.prepare_args.split(),
            ]
            log = work / f"prepare-{size:g}M-w{workers}.log"
            m = run_measured(cmd, log)
            [built] = [d for d in cache.iterdir() if (d / "summary.json").is_file()]
            summary = json.loads((built / "summary.json").read_text())
            pairs = sum(s["read"] for s in summary["splits"].values())
            row = {
                "pairs": n,
                "workers": workers or os.cpu_count(),
                "prepare": m,
                "phases_s": summary["time_s"],
                "encode_pairs_per_s": round(pairs / summary["time_s"]["encode"]),
                "cache_mb": round(dir_mb(built)),
                "text_mb": round(
                    sum((data / f"train.{x}").stat().st_size for x in (args.src, args.tgt)) / 1e6
                ),
            }
            print(f"[{size:g}M w{workers}] {json.dumps(row)}", file=sys.stderr)
            if not args.skip_train and workers == (worker_counts[-1] if size == sizes[0] else 0):
                cmd = [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--train-child",
                    f"--data={data}",
                    f"--src={args.src}",
                    f"--tgt={args.tgt}",
                    f"--cache={cache}",
                    f"--updates={args.updates}",
                    f"--threads={args.threads}",
                    f"--model={args.model}",
                    f"--prepare-args={args.prepare_args}",
                ]
                log = work / f"train-{size:g}M.log"
                m = run_measured(cmd, log)
                child = json.loads(log.read_text().strip().splitlines()[-1])
                row["train"] = m | child
                print(f"[{size:g}M train] {json.dumps(row['train'])}", file=sys.stderr)
            results.append(row)
            if args.clean:
                shutil.rmtree(cache)
        if args.clean:
            shutil.rmtree(data)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)


def print_table(results: list[dict]) -> None:
    print(
        "| pairs | workers | prepare wall s | validate / spm / encode s | encode pairs/s "
        "| prepare peak PSS MB | max process RSS MB | cache MB | train start-up s "
        "| sampler s | train peak PSS MB |"
    )
    print("|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        ph, tr = r["phases_s"], r.get("train", {})
        print(
            f"| {r['pairs'] / 1e6:g}M | {r['workers']} | {r['prepare']['wall_s']:.0f} "
            f"| {ph.get('validate', 0):.1f} / {ph['spm_train']:.0f} / {ph['encode']:.0f} "
            f"| {r['encode_pairs_per_s']:,} | {r['prepare']['peak_pss_mb']:,} "
            f"| {r['prepare']['max_process_rss_mb']:,} | {r['cache_mb']:,} "
            f"| {tr.get('startup_s', float('nan')):.1f} | {tr.get('sampler_s', float('nan')):.1f} "
            f"| {tr.get('peak_pss_mb', 0):,} |"
        )
    main_rows = [r for r in results if "train" in r]
    xs = [r["pairs"] / 1e6 for r in main_rows]
    for name, ys in (
        ("prepare wall s", [r["prepare"]["wall_s"] for r in main_rows]),
        ("prepare peak PSS MB", [r["prepare"]["peak_pss_mb"] for r in main_rows]),
        ("cache MB", [r["cache_mb"] for r in main_rows]),
        ("train start-up s", [r["train"]["startup_s"] for r in main_rows]),
        ("train peak PSS MB", [r["train"]["peak_pss_mb"] for r in main_rows]),
    ):
        print(f"slope of {name}: {slope(xs, ys):.2f} per million pairs")


if __name__ == "__main__":
    main()

"""OpenNMT-py's side of the peer benchmark; runs inside its environment (install_onmt.sh).

    onmt-venv/bin/python scripts/peers/onmt_driver.py train --seconds S --threads T -config X
    onmt-venv/bin/python scripts/peers/onmt_driver.py translate --repeats R --threads T \
        --json-out X -model M -src F -output O -beam_size 5 ...

``train`` runs ``onmt_train`` (its own ``main``, options passed through) and stops it after
``--seconds`` of training: the iterator of training batches that ``Trainer.train`` consumes is
wrapped so that it ends at the first batch asked for after the deadline, counted from the
first batch; OpenNMT-py's loop then ends as at ``train_steps`` and saves its checkpoint. Nothing
else of its loop changes.

``translate`` loads the model once with OpenNMT-py's ``InferenceEnginePY`` (what
``onmt_translate`` uses), translates the first 16 lines of ``-src`` as a warm-up, then all lines
``--repeats`` times, timing each ``infer_list`` call (reading pre-tokenized pieces, batching,
search, detokenization to piece strings; model loading not timed). It writes the predictions of
the last repeat to ``-output`` and the timings as JSON to ``--json-out``.

``batches --batch-size N[,N...] --workers W SRC TGT`` reports, for each N, the real target tokens (pieces + eos, what
its training counts) per batch that OpenNMT-py's own batching (``DynamicDatasetIter.batch_iter``
and ``text_sort_key``, tokens batches, one bucket per data loader worker holding every W-th
pair, as with its default bucket_size of 262,144 on this corpus) makes of one epoch of SRC/TGT
(pieces), without training: to choose a ``batch_size`` that matches nmt's tokens per update.

No code here comes from OpenNMT-py; it only calls it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import types
from collections.abc import Iterable, Iterator
from typing import Any


def say(message: str) -> None:
    """A log line with a timestamp in OpenNMT-py's format."""
    now = time.time()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(now)) + f",{int(now % 1 * 1000):03d}"
    print(f"[{stamp} INFO] peer-driver: {message}", file=sys.stderr, flush=True)


def until(batches: Iterable[Any], seconds: float) -> Iterator[Any]:
    """Yield from ``batches`` until ``seconds`` after the first one arrived."""
    deadline = None
    for batch in batches:
        now = time.perf_counter()
        if deadline is None:
            deadline = now + seconds
            say("first training batch")
        elif now >= deadline:
            say(f"stopping after {seconds:g} s of training")
            return
        yield batch


def train(seconds: float, threads: int, rest: list[str]) -> None:
    import torch

    torch.set_num_threads(threads)
    import onmt.trainer
    from onmt.bin.train import main

    original = onmt.trainer.Trainer.train

    def timed(self: Any, train_iter: Any, *args: Any, **kwargs: Any) -> Any:
        return original(self, until(train_iter, seconds), *args, **kwargs)

    onmt.trainer.Trainer.train = timed  # type: ignore[method-assign]
    sys.argv = ["onmt_train", *rest]
    main()


def translate(repeats: int, threads: int, json_out: str, rest: list[str]) -> None:
    import torch

    torch.set_num_threads(threads)
    from onmt.bin.translate import _get_parser
    from onmt.inference_engine import InferenceEnginePY
    from onmt.utils.parse import ArgumentParser

    opt = _get_parser().parse_args(rest)
    # the checks onmt.bin.translate.translate runs before building its engine
    ArgumentParser.validate_translate_opts(opt)
    ArgumentParser._get_all_transform_translate(opt)
    ArgumentParser._validate_transforms_opts(opt)
    ArgumentParser.validate_translate_opts_dynamic(opt)
    t0 = time.perf_counter()
    engine = InferenceEnginePY(opt)
    load_s = time.perf_counter() - t0
    with open(opt.src, encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f]
    engine.infer_list(lines[:16])  # warm-up
    seconds = []
    preds: list[Any] = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        _, preds = engine.infer_list(lines)
        seconds.append(time.perf_counter() - t0)
    engine.terminate()
    hyps = [p[0] for p in preds]  # n_best lists: keep the best
    with open(opt.output, "w", encoding="utf-8") as f:
        f.writelines(h + "\n" for h in hyps)
    with open(json_out, "w", encoding="utf-8") as f:
        json.dump({"seconds": seconds, "load_s": load_s, "sentences": len(lines)}, f)


def batches(batch_sizes: list[int], workers: int, src: str, tgt: str) -> None:
    from onmt.constants import CorpusTask
    from onmt.inputters.dynamic_iterator import DynamicDatasetIter
    from onmt.inputters.text_utils import text_sort_key

    with open(src, encoding="utf-8") as f:
        src_lines = [line.rstrip("\n") for line in f]
    with open(tgt, encoding="utf-8") as f:
        tgt_lens = [len(line.split()) for line in f]
    its = types.SimpleNamespace(task=CorpusTask.TRAIN)  # all that batch_iter reads of self
    buckets = []
    for w in range(workers):
        bucket = [
            (
                {
                    "src": {"src": src_lines[i], "src_ids": [0] * len(src_lines[i].split())},
                    "tgt": {"tgt_ids": [0] * (tgt_lens[i] + 2)},  # bos + pieces + eos
                },
                i,
            )
            for i in range(w, len(src_lines), workers)
        ]
        bucket.sort(key=lambda x: text_sort_key(x[0]))
        buckets.append(bucket)
    for batch_size in batch_sizes:
        sizes = []
        for bucket in buckets:
            for mb in DynamicDatasetIter.batch_iter(its, bucket, batch_size, "tokens", 1):
                sizes.append((len(mb), sum(len(ex["tgt"]["tgt_ids"]) - 1 for ex, _ in mb)))
        kept = sum(n for n, _ in sizes)
        tokens = sum(t for _, t in sizes)
        print(
            json.dumps(
                {
                    "batch_size": batch_size,
                    "batches": len(sizes),
                    "pairs": len(src_lines),
                    "pairs_in_batches": kept,
                    "tgt_tokens_per_batch": tokens / max(len(sizes), 1),
                    "sentences_per_batch": kept / max(len(sizes), 1),
                }
            ),
            flush=True,
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("command", choices=("train", "translate", "batches"))
    p.add_argument("--batch-size", default="2600", help="comma-separated (batches)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--json-out", default=os.devnull)
    args, rest = p.parse_known_args()
    if args.command == "batches":
        batches([int(b) for b in args.batch_size.split(",")], args.workers, *rest)
    elif args.command == "train":
        train(args.seconds, args.threads, rest)
    else:
        translate(args.repeats, args.threads, args.json_out, rest)


if __name__ == "__main__":
    main()

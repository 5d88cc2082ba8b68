"""Decoding speed of one checkpoint on one source file: the before/after A/B tool.

Times ``nmt.translation.translate_ids`` (SentencePiece not timed) on the first ``--sentences`` lines,
``--repeats`` times after one warm-up, and prints the median. To compare two versions of the
code, run it from a second checkout in alternating processes on the same machine, e.g.

    git worktree add /tmp/nmt-old caeffa3
    for i in 1 2 3; do
      PYTHONPATH=/tmp/nmt-old .venv/bin/python scripts/decode_speed.py runs/reference30/best.pt
      .venv/bin/python scripts/decode_speed.py runs/reference30/best.pt
    done

(``PYTHONPATH`` decides which ``nmt`` is imported; the script itself only uses
``translate_ids``, ``load_model`` and ``DecodeConfig``.) ``--dump FILE`` writes the
hypotheses as JSON, to check that two versions decode the same.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import torch

from nmt.checkpoint import load_model
from nmt.config import DecodeConfig
from nmt.translation import translate_ids


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("ckpt")
    p.add_argument("--src", default="data/lo.de-en/dev.de")
    p.add_argument("--sentences", type=int, default=300)
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--max-tokens", type=int, default=DecodeConfig().max_tokens)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dump", help="write [[tokens, score], ...] as JSON here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, tok, _ = load_model(args.ckpt, "cpu")
    try:
        with open(args.src, encoding="utf-8") as f:
            lines = [line.rstrip("\n") for line in f][: args.sentences]
    except (OSError, UnicodeDecodeError) as e:
        p.error(f"--src {args.src}: {e}")
    if not any(line.strip() for line in lines):
        p.error(f"--src {args.src}: no non-empty lines")
    ids = tok.encode_src([line for line in lines if line.strip()])
    decode = dataclasses.replace(
        DecodeConfig(), beam_size=args.beam, nbest=1, max_tokens=args.max_tokens
    )
    run = (decode, "cpu", tok.pad_id, tok.bos_id, tok.eos_id)
    translate_ids(model, ids[:16], *run)  # warm-up
    seconds = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        hyps = translate_ids(model, ids, *run)
        seconds.append(time.perf_counter() - t0)
    median = statistics.median(seconds)
    tokens = sum(len(h[0].tokens) for h in hyps)
    print(
        f"beam {args.beam}: {len(ids) / median:.1f} sentences/s, {tokens / median:,.0f} output "
        f"tokens/s (median of {args.repeats}: {median:.3f} s; all "
        f"{', '.join(f'{s:.3f}' for s in seconds)}); mean output {tokens / len(ids):.1f} tokens"
    )
    if args.dump:
        with open(args.dump, "w", encoding="utf-8") as f:
            json.dump([[h[0].tokens, round(h[0].score, 4)] for h in hyps], f)


if __name__ == "__main__":
    main()

"""nmt's side of the peer benchmark's decoding: one checkpoint, one beam size, timed.

    PYTHONPATH=. .venv/bin/python scripts/peers/nmt_decode.py CKPT SRC --beam 5 \
        --repeats 3 --threads 2 --max-tokens 6000 [--quantize int8] --output OUT --json-out X

SRC holds raw source lines, encoded with the checkpoint's SentencePiece model (the peer
benchmark gives OpenNMT-py the same ids as pieces, so both toolkits decode the same input).
The model is loaded as ``nmt.translate`` loads it (``load_for_decoding``, malloc tuned).
``nmt.translation.translate_ids`` (what ``nmt.translate`` runs) translates the first 16 lines
as a warm-up, then all lines ``--repeats`` times, each call timed (model loading and
SentencePiece not timed; ``--quantize int8`` quantizes after loading, untimed, as
``nmt-translate quantize=int8`` does). The best hypothesis of each line is written to ``--output`` as
target pieces, and the timings as JSON to ``--json-out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

from nmt.config import DecodeConfig
from nmt.quantize import QUANTIZE_MODES, quantize_model
from nmt.runtime import tune_malloc
from nmt.translation import load_for_decoding, translate_ids


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("ckpt")
    p.add_argument("src")
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=DecodeConfig().max_tokens)
    p.add_argument("--quantize", choices=QUANTIZE_MODES, default="none")
    p.add_argument("--output", required=True)
    p.add_argument("--json-out", required=True)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    tune_malloc()  # as nmt.translate does
    t0 = time.perf_counter()
    model, tok = load_for_decoding(args.ckpt, "cpu")  # as nmt.translate loads it
    model = quantize_model(model.eval(), args.quantize)
    load_s = time.perf_counter() - t0
    with open(args.src, encoding="utf-8") as f:
        ids = tok.encode_src([line.rstrip("\n") for line in f])
    decode = dataclasses.replace(
        DecodeConfig(), beam_size=args.beam, nbest=1, max_tokens=args.max_tokens
    )
    run = (decode, "cpu", tok.pad_id, tok.bos_id, tok.eos_id)
    translate_ids(model, ids[:16], *run)  # warm-up
    seconds = []
    hyps = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        hyps = translate_ids(model, ids, *run)
        seconds.append(time.perf_counter() - t0)
    with open(args.output, "w", encoding="utf-8") as f:
        f.writelines(" ".join(tok.tgt_pieces(list(h[0].tokens))) + "\n" for h in hyps)
    with open(args.json_out, "w", encoding="utf-8") as f:
        json.dump({"seconds": seconds, "load_s": load_s, "sentences": len(ids)}, f)


if __name__ == "__main__":
    main()

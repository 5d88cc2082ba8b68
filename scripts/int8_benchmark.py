"""fp32 against int8 decoding on the CPU: BLEU and speed, greedy and beam 5.

    .venv/bin/python scripts/int8_benchmark.py runs/default/best.pt \\
        --src data/lo.de-en/test.de --ref data/lo.de-en/test.en --threads 2 --repeats 3

Variants, each loaded as ``nmt.translate`` loads it (``load_for_decoding``: on the CPU the
decoder's LSTM fused for decoding, nmt/fused_step.py): ``fp32`` (float; nmt's own LSTM in the
encoder), ``int8-linear`` (the linear layers quantized, the LSTMs float) and ``int8`` (linear
layers and LSTMs quantized, what ``quantize=int8`` does). Each variant translates the whole source file with each beam
for BLEU (sacrebleu, detokenised output), then the first ``--time-sentences`` lines
``--repeats`` times (SentencePiece included, as ``nmt-translate`` does); times are medians.
The variants run interleaved (fp32, int8-linear, int8, fp32, ...) so that load changes on a
shared machine hit them alike. Prints a Markdown table, and JSON with ``--json FILE``.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
import warnings
from dataclasses import replace

import torch
from torch import nn

from nmt.checkpoint import load_model
from nmt.config import DecodeConfig
from nmt.metrics import score
from nmt.quantize import quantize_model
from nmt.translation import load_for_decoding, translate_lines


def torch_lstm_int8(model: nn.Module) -> nn.Module:
    """``quantize=int8`` as it was before the fused decoder step: every nn.Linear int8 with a
    scale per row, both LSTMs torch's dynamically quantized LSTM (a scale per matrix)."""
    quant = torch.ao.quantization
    spec = {nn.Linear: quant.per_channel_dynamic_qconfig, nn.LSTM: quant.default_dynamic_qconfig}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = quant.quantize_dynamic(copy.deepcopy(model), spec, dtype=torch.qint8, inplace=True)
    for module in out.modules():
        if hasattr(module, "rnn_impl"):
            module.rnn_impl = "torch"
    return out.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("ckpt")
    p.add_argument("--src", default="data/lo.de-en/test.de")
    p.add_argument("--ref", default="data/lo.de-en/test.en")
    p.add_argument("--sentences", type=int, default=0, help="BLEU on the first N lines (0 = all)")
    p.add_argument("--time-sentences", type=int, default=300, help="time the first N lines")
    p.add_argument("--beams", default="1,5")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="write the results here")
    p.add_argument(
        "--before",
        action="store_true",
        help="also the variants from before the fused decoder step: fp32-unfused (nn.LSTM "
        "parameters, nmt's step) and int8-torch-lstm (torch's quantized LSTM in the decoder)",
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    with open(args.src, encoding="utf-8") as f:
        src = [line.rstrip("\n") for line in f]
    with open(args.ref, encoding="utf-8") as f:
        ref = [line.rstrip("\n") for line in f]
    if args.sentences:
        src, ref = src[: args.sentences], ref[: args.sentences]
    timed = src[: args.time_sentences]
    fp32, tok = load_for_decoding(args.ckpt, "cpu")  # as nmt.translate loads it
    models = {
        "fp32": fp32,
        "int8-linear": quantize_model(fp32, "int8", lstms=False),
        "int8": quantize_model(fp32, "int8"),
    }
    if args.before:  # what nmt.translate ran before the decoder step was fused
        plain = load_model(args.ckpt, "cpu")[0].eval()
        models = {"fp32-unfused": plain, **models, "int8-torch-lstm": torch_lstm_int8(plain)}
    results = []
    for beam in [int(b) for b in args.beams.split(",")]:
        decode = replace(DecodeConfig(), beam_size=beam)
        times: dict[str, list[float]] = {name: [] for name in models}
        bleu: dict[str, float] = {}
        outputs: dict[str, list[str]] = {}
        for name, model in models.items():  # warm-up, and the BLEU of each variant
            translate_lines(model, tok, src[:50], decode, "cpu")
            hyps = translate_lines(model, tok, src, decode, "cpu")
            texts = tok.decode_tgt([h[0].tokens for h in hyps])
            texts = [t if s.strip() else "" for t, s in zip(texts, src, strict=True)]
            bleu[name] = float(score(texts, ref, ("bleu",))["bleu"])
            outputs[name] = texts
        for _ in range(args.repeats):
            for name, model in models.items():
                start = time.perf_counter()
                translate_lines(model, tok, timed, decode, "cpu")
                times[name].append(time.perf_counter() - start)
        base = statistics.median(times["fp32"])
        for name in models:
            med = statistics.median(times[name])
            results.append(
                {
                    "variant": name,
                    "beam": beam,
                    "bleu": round(bleu[name], 2),
                    "same_as_fp32": round(
                        sum(a == b for a, b in zip(outputs[name], outputs["fp32"], strict=True))
                        / len(src),
                        3,
                    ),
                    "seconds": round(med, 2),
                    "sent_per_s": round(len(timed) / med, 1),
                    "speedup": round(base / med, 2),
                    "runs": [round(t, 2) for t in times[name]],
                }
            )
    print(
        f"BLEU on {len(src)} sentences; time: the first {len(timed)}, {args.threads} threads, "
        f"median of {args.repeats}\n"
    )
    print("| variant | beam | BLEU | output = fp32's | s (median) | sent/s | speed vs fp32 |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(
            f"| {r['variant']} | {r['beam']} | {r['bleu']:.2f} | {100 * r['same_as_fp32']:.1f}% | "
            f"{r['seconds']:.2f} | "
            f"{r['sent_per_s']:.1f} | {r['speedup']:.2f}x |"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()

"""The Python API for translation: load a checkpoint once, translate lists of strings.

    from nmt import Translator
    tr = Translator.load("runs/default/best.pt", device="cpu", beam_size=5)
    tr.translate(["Klicken Sie auf OK."])            # -> ["Click OK."]
    tr.translate_nbest(["Klicken Sie auf OK."], 3)   # -> [[("Click OK.", -0.12), ...]]
    tr.translate_with_attention(["Klicken Sie auf OK."])[0].attention  # (T + 1, S + 1)

The same objects ``nmt.translate`` uses: ``load_for_decoding`` (one checkpoint, or several
joined by commas for an ensemble) and ``translate_lines``; the decode options are
``DecodeConfig``'s fields, checked when the translator is made.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from nmt.config import DecodeConfig
from nmt.quantize import quantize_model
from nmt.runtime import pick_device
from nmt.tokenizer import Tokenizer
from nmt.translation import (
    Translation,
    best_texts,
    load_for_decoding,
    translate_lines,
    translate_with_attention,
)


class Translator:
    """A model and its tokenizer on a device, with decode options."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Tokenizer,
        decode: DecodeConfig,
        device: torch.device,
    ) -> None:
        decode.check()
        self.model, self.tokenizer, self.decode, self.device = model, tokenizer, decode, device

    @classmethod
    def load(
        cls,
        path: str | Path | list[str | Path],
        device: str = "auto",
        quantize: str = "none",
        **decode: Any,
    ) -> Translator:
        """``path``: a checkpoint, or a list of them (an ensemble sharing one vocabulary).
        ``quantize``: ``none`` or ``int8`` (CPU; see nmt/quantize.py).
        ``decode``: any ``DecodeConfig`` field (beam_size, nbest, length_penalty, max_len_a,
        max_len_b, min_len, max_tokens). On the CPU ``.model`` has its decoder fused for
        decoding (nmt/fused_step.py): it translates; to train or score given targets, load
        the checkpoint with ``nmt.checkpoint.load_model``."""
        spec = ",".join(map(str, path)) if isinstance(path, list) else str(path)
        dev = pick_device("cpu" if quantize != "none" and device == "auto" else device)
        model, tokenizer = load_for_decoding(spec, dev)
        return cls(quantize_model(model, quantize), tokenizer, DecodeConfig(**decode), dev)

    def translate(self, lines: list[str]) -> list[str]:
        """The best translation of each line, in order; empty lines stay empty."""
        hyps = translate_lines(self.model, self.tokenizer, lines, self.decode, self.device)
        return best_texts(self.tokenizer, lines, hyps)

    def translate_nbest(
        self, lines: list[str], nbest: int | None = None
    ) -> list[list[tuple[str, float]]]:
        """The ``nbest`` best translations of each line with their (length-penalised) scores,
        best first; ``nbest`` defaults to the decode option and may not exceed the beam."""
        decode = replace(self.decode, nbest=nbest or self.decode.nbest)
        decode.check()
        hyps = translate_lines(self.model, self.tokenizer, lines, decode, self.device)
        out = []
        for hs in hyps:
            texts = self.tokenizer.decode_tgt([h.tokens for h in hs])
            out.append([(t, float(h.score)) for t, h in zip(texts, hs, strict=True)])
        return out

    def translate_with_attention(self, lines: list[str]) -> list[Translation]:
        """The best translation of each line with its subwords and attention matrix
        (``Translation``: text, score, src_pieces, tgt_pieces, attention)."""
        return translate_with_attention(self.model, self.tokenizer, lines, self.decode, self.device)

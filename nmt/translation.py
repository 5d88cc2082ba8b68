"""Translating text: load model(s) for decoding, raw lines -> ids -> batches under a token
budget -> greedy or beam search -> hypotheses in input order, and the attention behind a
translation (``Translation``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from nmt.batching import BucketBatchSampler
from nmt.checkpoint import CheckpointError, load_model
from nmt.config import DecodeConfig
from nmt.decoder import fuse_decoders
from nmt.ensemble import Ensemble
from nmt.search import Hypothesis, Searchable, as_searchable, beam_search, greedy_decode
from nmt.tokenizer import Tokenizer

logger = logging.getLogger(__name__)


def _make_src(
    ids: list[list[int]], pad_id: int, eos_id: int, device: torch.device | str
) -> tuple[Tensor, Tensor]:
    """Rows sorted by length descending -> src (B, S) ids + [eos] padded, lengths (B,) on CPU."""
    lengths = torch.tensor([len(row) + 1 for row in ids], dtype=torch.long)  # (B,)
    src = torch.full((len(ids), int(lengths.max())), pad_id, dtype=torch.long)  # (B, S)
    for i, row in enumerate(ids):
        src[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        src[i, len(row)] = eos_id
    return src.to(device), lengths


def translate_ids(
    model: nn.Module,
    src_ids: list[list[int]],
    decode: DecodeConfig,
    device: torch.device | str,
    pad_id: int,
    bos_id: int,
    eos_id: int,
    progress: bool = False,
) -> list[list[Hypothesis]]:
    """Translate already-encoded sources (ids without specials), in input order.

    Sentences are grouped by length into token-budget batches (``decode.max_tokens`` source
    tokens per batch; the sampler's evaluation mode) and decoded greedily (beam_size 1) or
    with beam search; each result is a list of up to ``decode.nbest`` hypotheses.
    """
    results: list[list[Hypothesis]] = [[] for _ in src_ids]
    if not src_ids:
        return results
    lengths = np.array([len(row) for row in src_ids], dtype=np.int64)
    sampler = BucketBatchSampler(lengths, lengths, max_tokens=decode.max_tokens, shuffle=False)
    searchable = as_searchable(model)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for indices in tqdm(
                list(sampler), disable=not progress, desc="translate", unit="batch"
            ):
                order = sorted(indices, key=lambda i: -len(src_ids[i]))  # descending length
                src, src_lengths = _make_src([src_ids[i] for i in order], pad_id, eos_id, device)
                for i, hyps in zip(
                    order,
                    _search(searchable, src, src_lengths, decode, bos_id, eos_id),
                    strict=True,
                ):
                    results[i] = hyps
    finally:
        model.train(was_training)
    return results


def _search(
    model: Searchable,
    src: Tensor,
    src_lengths: Tensor,
    decode: DecodeConfig,
    bos_id: int,
    eos_id: int,
) -> list[list[Hypothesis]]:
    """Greedy (beam_size 1) or beam search on one batch, as hypothesis lists."""
    if decode.beam_size == 1:
        hyps = greedy_decode(
            model,
            src,
            src_lengths,
            bos_id,
            eos_id,
            max_len_a=decode.max_len_a,
            max_len_b=decode.max_len_b,
            min_len=decode.min_len,
            length_penalty=decode.length_penalty,
        )
        return [[hyp] for hyp in hyps]
    return beam_search(
        model,
        src,
        src_lengths,
        bos_id,
        eos_id,
        beam_size=decode.beam_size,
        length_penalty=decode.length_penalty,
        max_len_a=decode.max_len_a,
        max_len_b=decode.max_len_b,
        min_len=decode.min_len,
        nbest=decode.nbest,
    )


def translate_lines(
    model: nn.Module,
    tokenizer: Tokenizer,
    lines: list[str],
    decode: DecodeConfig,
    device: torch.device | str,
    progress: bool = False,
) -> list[list[Hypothesis]]:
    """Translate raw source lines; one hypothesis list per line, in input order.

    An empty (whitespace-only) line is not run through the model: it gets
    ``[Hypothesis([], 0.0, 0.0)]``.
    """
    results: list[list[Hypothesis]] = [[Hypothesis([], 0.0, 0.0)] for _ in lines]
    keep = [i for i, line in enumerate(lines) if line.strip()]
    if not keep:
        return results
    ids = tokenizer.encode_src([lines[i] for i in keep])
    logger.debug("translating %d lines (%d empty)", len(keep), len(lines) - len(keep))
    hyps = translate_ids(
        model,
        ids,
        decode,
        device,
        pad_id=tokenizer.pad_id,
        bos_id=tokenizer.bos_id,
        eos_id=tokenizer.eos_id,
        progress=progress,
    )
    for i, h in zip(keep, hyps, strict=True):
        results[i] = h
    return results


def best_texts(tokenizer: Tokenizer, lines: list[str], hyps: list[list[Hypothesis]]) -> list[str]:
    """The text of each line's best hypothesis; a blank input line gives an empty line."""
    texts = tokenizer.decode_tgt([h[0].tokens for h in hyps])
    return [t if line.strip() else "" for t, line in zip(texts, lines, strict=True)]


@dataclass
class Translation:
    """The best translation of one line with the attention that produced it.

    ``attention`` is (len(tgt_pieces) + 1, len(src_pieces) + 1) float32: one row per output
    subword and a last row for the final eos; one column per source subword and a last column
    for the source eos. Rows sum to 1. Empty input lines get an empty (0, 0) matrix.
    """

    text: str
    score: float
    src_pieces: list[str]
    tgt_pieces: list[str]
    attention: np.ndarray


def forced_attention(
    model: nn.Module,
    src_ids: list[list[int]],
    tgt_ids: list[list[int]],
    device: torch.device | str,
    pad_id: int,
    bos_id: int,
    eos_id: int,
    batch_size: int = 64,
) -> list[np.ndarray]:
    """Attention weights of ``model`` (a Seq2Seq or an Ensemble) following given outputs.

    Per sentence, a (len(tgt) + 1, len(src) + 1) array: the decoder is fed bos + tgt one token
    at a time (as in search) and each step's weights over the source (+ eos) are kept. For a
    hypothesis the model produced itself these are the weights it had while producing it.
    """
    out: list[np.ndarray] = [np.zeros((0, 0), dtype=np.float32) for _ in src_ids]
    searchable = as_searchable(model)
    order = sorted(range(len(src_ids)), key=lambda i: -len(src_ids[i]))
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                src, src_lengths = _make_src([src_ids[i] for i in idx], pad_id, eos_id, device)
                steps = max(len(tgt_ids[i]) for i in idx) + 1
                feed = torch.full((len(idx), steps), eos_id, dtype=torch.long)  # (B, T+1)
                feed[:, 0] = bos_id
                for row, i in enumerate(idx):
                    feed[row, 1 : len(tgt_ids[i]) + 1] = torch.tensor(tgt_ids[i])
                feed = feed.to(device)
                memory, state = searchable.encode(src, src_lengths)
                weights = []
                for t in range(steps):
                    _, state, attn = searchable.step(feed[:, t], state, memory)  # (B, S)
                    weights.append(attn.float().cpu())
                stacked = torch.stack(weights, dim=1).numpy()  # (B, T+1, S)
                for row, i in enumerate(idx):
                    out[i] = stacked[row, : len(tgt_ids[i]) + 1, : len(src_ids[i]) + 1].copy()
    finally:
        model.train(was_training)
    return out


def attach_attention(
    model: nn.Module,
    tokenizer: Tokenizer,
    lines: list[str],
    best: list[Hypothesis],
    device: torch.device | str,
) -> list[Translation]:
    """``Translation``s (text, pieces, attention) for hypotheses already found for ``lines``."""
    keep = [i for i, line in enumerate(lines) if line.strip()]
    src_ids = tokenizer.encode_src([lines[i] for i in keep])
    tgt_ids = [best[i].tokens for i in keep]
    weights = forced_attention(
        model, src_ids, tgt_ids, device, tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id
    )
    texts = tokenizer.decode_tgt([h.tokens for h in best])
    result = [Translation("", 0.0, [], [], np.zeros((0, 0), dtype=np.float32)) for _ in lines]
    for k, i in enumerate(keep):
        src_pieces = tokenizer.src_pieces(lines[i])
        tgt_pieces = tokenizer.tgt_pieces(tgt_ids[k])
        result[i] = Translation(texts[i], best[i].score, src_pieces, tgt_pieces, weights[k])
    return result


def translate_with_attention(
    model: nn.Module,
    tokenizer: Tokenizer,
    lines: list[str],
    decode: DecodeConfig,
    device: torch.device | str,
    progress: bool = False,
) -> list[Translation]:
    """Translate raw lines (as ``translate_lines``) and return each best translation with its
    subwords and attention matrix (see ``Translation``)."""
    hyps = translate_lines(model, tokenizer, lines, decode, device, progress=progress)
    return attach_attention(model, tokenizer, lines, [h[0] for h in hyps], device)


def load_for_decoding(
    spec: str, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, Tokenizer]:
    """One checkpoint path, or several joined by commas (an ensemble sharing one vocabulary),
    in eval mode. On the CPU the decoders' LSTMs are fused for decoding (``fuse_decoders``:
    the same steps, about 0.9 of the time; the model decodes, it does not train)."""
    paths = [p.strip() for p in spec.split(",") if p.strip()]
    if not paths:
        raise CheckpointError("ckpt: no checkpoint given")
    loaded = [load_model(p, device)[:2] for p in paths]
    if torch.device(device).type == "cpu":
        for model, _ in loaded:
            fuse_decoders(model)  # load_model gives it in eval mode
    if len(loaded) == 1:
        return loaded[0]
    tokenizer = loaded[0][1]
    for p, (_, tok) in zip(paths[1:], loaded[1:], strict=True):
        if tok.fingerprint() != tokenizer.fingerprint():
            raise CheckpointError(
                f"{p}: its vocabulary differs from {paths[0]}'s; only checkpoints sharing a "
                "SentencePiece model and target vocabulary can be ensembled"
            )
    return Ensemble([m for m, _ in loaded]).eval(), tokenizer

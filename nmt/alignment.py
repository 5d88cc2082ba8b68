"""Hard alignments from attention weights, in Pharaoh ``i-j`` format.

Attention matrices here are (target tokens + eos) x (source tokens + eos), as returned by
``nmt.translation.translate_with_attention``. Each target subword is linked to the source subword
it attends to most; a target subword whose strongest weight is on the source eos is left
unaligned, and so is the target eos row. Word positions come from the SentencePiece pieces: a
piece that starts with ``▁`` starts a new word, so word ``k`` is the ``k``-th whitespace-separated
word of the (detokenised) line. Positions are 0-based; ``i`` is the source, ``j`` the target.
"""

from __future__ import annotations

import numpy as np

UNITS = ("word", "subword")
WORD_START = "\u2581"  # SentencePiece's "▁"


def hard_alignment(attention: np.ndarray, n_src: int, n_tgt: int) -> list[tuple[int, int]]:
    """Subword links ``(i, j)``: target subword j -> its most attended source subword i."""
    links = []
    for j in range(min(n_tgt, attention.shape[0])):
        i = int(np.argmax(attention[j]))
        if i < n_src:  # the last column is the source eos
            links.append((i, j))
    return links


def word_positions(pieces: list[str]) -> list[int]:
    """The word number of each piece (a piece starting with ``▁`` begins a word)."""
    out, word = [], -1
    for piece in pieces:
        if piece.startswith(WORD_START) or word < 0:
            word += 1
        out.append(word)
    return out


def to_words(
    links: list[tuple[int, int]], src_pieces: list[str], tgt_pieces: list[str]
) -> list[tuple[int, int]]:
    """Subword links -> word links: source word of i, target word of j, without repeats."""
    sw, tw = word_positions(src_pieces), word_positions(tgt_pieces)
    return sorted({(sw[i], tw[j]) for i, j in links})


def pharaoh(links: list[tuple[int, int]]) -> str:
    """``0-0 1-2 2-1``: links sorted by source, then target position."""
    return " ".join(f"{i}-{j}" for i, j in sorted(links))


def alignment_line(
    attention: np.ndarray, src_pieces: list[str], tgt_pieces: list[str], unit: str = "word"
) -> str:
    """One hypothesis' Pharaoh line, in ``word`` or ``subword`` positions."""
    if unit not in UNITS:
        raise ValueError(f"alignment_unit: unknown {unit!r}; choose word or subword")
    links = hard_alignment(attention, len(src_pieces), len(tgt_pieces))
    if unit == "word":
        links = to_words(links, src_pieces, tgt_pieces)
    return pharaoh(links)

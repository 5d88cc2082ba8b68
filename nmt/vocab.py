"""The target vocabulary: which SentencePiece pieces the output layer and target embeddings cover.

With a joint SentencePiece model the target side uses only part of the pieces (on lo.de-en,
about 4.5k of 8k); ``tokenizer.target_vocab=used`` gives the model one row per piece seen in the
target side of the training split, plus the special ids. ``TargetVocab`` is that choice, and the
exact mapping both ways:

    model id -> SentencePiece id    keep[m]               (V,)  every model id has one piece
    SentencePiece id -> model id    to_model[s]           (Vsp,) pieces outside keep -> unk

Special ids (pad, unk, bos, eos) keep their numbers: model id s is SentencePiece id s for each
special s, so the pad/bos/eos/unk ids the rest of nmt reads from the tokenizer mean the same in
both spaces. The other kept pieces fill the remaining model ids in SentencePiece order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class TargetVocabError(ValueError):
    """A mapping that cannot be a target vocabulary (one-line message)."""


class TargetVocab:
    """An exact mapping between model ids (0..V-1) and SentencePiece ids (0..Vsp-1)."""

    keep: np.ndarray  # (V,) int64: SentencePiece id of each model id
    to_model: np.ndarray  # (Vsp,) int64: model id of each SentencePiece id (unk if dropped)
    sp_size: int
    unk_id: int

    def __init__(
        self, keep: Sequence[int] | np.ndarray, sp_size: int, specials: Sequence[int]
    ) -> None:
        """``keep``: the SentencePiece id of each model id; ``specials``: pad, unk, bos, eos
        (unk second), each of which must map to itself."""
        keep_arr = np.asarray(keep, dtype=np.int64).reshape(-1)
        if len(keep_arr) == 0 or keep_arr.min() < 0 or keep_arr.max() >= sp_size:
            raise TargetVocabError(f"target vocabulary ids must lie in [0, {sp_size})")
        if len(np.unique(keep_arr)) != len(keep_arr):
            raise TargetVocabError("target vocabulary lists a SentencePiece id twice")
        for s in specials:
            if not (0 <= s < len(keep_arr) and keep_arr[s] == s):
                raise TargetVocabError(
                    f"special id {s} must keep its number in the target vocabulary "
                    f"({len(keep_arr)} pieces)"
                )
        self.keep = keep_arr
        self.keep.flags.writeable = False
        self.sp_size = sp_size
        self.unk_id = int(specials[1])
        self.to_model = np.full(sp_size, self.unk_id, dtype=np.int64)
        self.to_model[keep_arr] = np.arange(len(keep_arr), dtype=np.int64)
        self.to_model.flags.writeable = False
        # Python lists: per-token lookups on short lists are faster than numpy round trips
        self._to_model_list: list[int] = self.to_model.tolist()
        self._to_sp_list: list[int] = keep_arr.tolist()

    @classmethod
    def used(cls, counts: np.ndarray, specials: Sequence[int]) -> TargetVocab:
        """The pieces with a count above 0 (``counts``: (Vsp,) occurrences in the target side
        of the training data) and the specials, specials at their own ids, the rest in
        SentencePiece order."""
        sp_size = len(counts)
        fixed = sorted({int(s) for s in specials})
        seen = np.flatnonzero(np.asarray(counts) > 0)
        others = seen[~np.isin(seen, fixed)]
        size = len(fixed) + len(others)
        if fixed and fixed[-1] >= size:
            raise TargetVocabError(
                f"special id {fixed[-1]} lies beyond the {size} target pieces in use; "
                "use tokenizer.target_vocab=all"
            )
        keep = np.empty(size, dtype=np.int64)
        free = np.ones(size, dtype=bool)
        free[fixed] = False
        keep[fixed] = fixed
        keep[free] = others  # ascending: SentencePiece order
        return cls(keep, sp_size, specials)

    def __len__(self) -> int:
        return len(self.keep)

    def model_ids(self, sp_ids: np.ndarray) -> np.ndarray:
        """SentencePiece ids -> model ids (any shape); pieces outside the vocabulary -> unk."""
        return self.to_model[sp_ids]

    def sp_ids(self, model_ids: np.ndarray) -> np.ndarray:
        """Model ids -> SentencePiece ids (any shape)."""
        return self.keep[model_ids]

    def model_list(self, sp_ids: Sequence[int]) -> list[int]:
        """``model_ids`` for one short list of ids."""
        m = self._to_model_list
        return [m[i] for i in sp_ids]

    def sp_list(self, model_ids: Sequence[int]) -> list[int]:
        """``sp_ids`` for one short list of ids."""
        s = self._to_sp_list
        return [s[i] for i in model_ids]

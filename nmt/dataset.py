"""Cached splits as datasets: memory-mapped ids, raw text, and `Prepared`, the cache directory.

Opening a split reads only its offsets (to get the lengths), a block at a time; the ids and
offsets stay on disk and are paged in as batches touch them, so what a split holds in memory
is its lengths, 2 bytes a pair per side (uint16; uint32 for sentences of 65536 subwords or
more), not the text. The raw text of a split is read only on request (`Prepared.raw`: dev and
test); training never reads the training split's text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nmt.tokenizer import Tokenizer

SPLITS = ("train", "dev", "test")
SIDES = ("src", "tgt")


LENGTH_BLOCK = 1 << 20  # offsets read at a time when computing lengths


def length_dtype(longest: int) -> type[np.unsignedinteger]:
    """The smallest unsigned dtype for lengths up to `longest`."""
    if longest < 2**16:
        return np.uint16
    return np.uint32 if longest < 2**32 else np.uint64


def as_lengths(values: np.ndarray | list[int]) -> np.ndarray:
    """Lengths as an unsigned array: unsigned input is kept as it is (no copy), signed input is
    copied into the smallest unsigned dtype that holds it. ValueError for negative lengths."""
    a = np.asarray(values)
    if a.dtype.kind == "u":
        return a
    if a.size == 0:
        return a.astype(np.uint16)
    if a.dtype.kind != "i":
        raise ValueError(f"lengths must be integers, got {a.dtype}")
    if int(a.min()) < 0:
        raise ValueError(f"negative length {int(a.min())}")
    return a.astype(length_dtype(int(a.max())))


def lengths_of(offsets: np.ndarray) -> np.ndarray:
    """(N + 1,) offsets -> (N,) lengths in the smallest unsigned dtype (`length_dtype`),
    computed a block at a time: two passes over the offsets (the longest, then the lengths), no
    temporary of N int64s."""
    n = len(offsets) - 1
    longest = 0
    for a in range(0, n, LENGTH_BLOCK):
        diff = np.diff(offsets[a : a + LENGTH_BLOCK + 1])
        if int(diff.min()) < 0:
            raise ValueError(f"offsets decrease after position {a + int(diff.argmin())}")
        longest = max(longest, int(diff.max()))
    out = np.empty(max(n, 0), dtype=length_dtype(longest))
    for a in range(0, n, LENGTH_BLOCK):
        out[a : a + LENGTH_BLOCK] = np.diff(offsets[a : a + LENGTH_BLOCK + 1])
    return out


class ParallelDataset:
    """Pairs of id sequences (no specials) stored as flat arrays plus offsets.

    src_lengths / tgt_lengths: (N,) subword counts without specials, unsigned (`lengths_of`:
    uint16 unless a sentence has 65536 subwords or more).
    """

    def __init__(
        self,
        src_ids: np.ndarray,
        src_offsets: np.ndarray,
        tgt_ids: np.ndarray,
        tgt_offsets: np.ndarray,
        lengths: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        """lengths: (source, target) lengths when already computed (`load`), else computed
        from the offsets."""
        if len(src_offsets) != len(tgt_offsets):
            raise ValueError(f"{len(src_offsets) - 1} source vs {len(tgt_offsets) - 1} targets")
        # a plain ndarray view of a memory map keeps the pages on disk but slices 3x faster
        self._src_ids = src_ids.view(np.ndarray)
        self._tgt_ids = tgt_ids.view(np.ndarray)
        self._src_off = src_offsets.view(np.ndarray)  # on disk too when memory-mapped
        self._tgt_off = tgt_offsets.view(np.ndarray)
        if lengths is None:
            lengths = lengths_of(self._src_off), lengths_of(self._tgt_off)
        self.src_lengths: np.ndarray = lengths[0]
        self.tgt_lengths: np.ndarray = lengths[1]

    @classmethod
    def load(cls, directory: Path, split: str) -> ParallelDataset:
        """Memory-map a cached split's ids and offsets. The lengths are read through mappings
        of their own, closed when done, so the offsets' pages do not stay mapped into this
        process (its resident memory) until batches touch them."""
        files = {
            (side, kind): directory / f"{split}.{side}.{kind}.npy"
            for side in SIDES
            for kind in ("ids", "offsets")
        }
        src_len, tgt_len = (
            lengths_of(np.load(files[side, "offsets"], mmap_mode="r")) for side in SIDES
        )
        src_ids, src_off, tgt_ids, tgt_off = (np.load(p, mmap_mode="r") for p in files.values())
        return cls(src_ids, src_off, tgt_ids, tgt_off, lengths=(src_len, tgt_len))

    def __len__(self) -> int:
        return len(self.src_lengths)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Source ids, target ids of pair i (no specials; views, dtype of the store)."""
        s0, s1 = self._src_off[i], self._src_off[i + 1]
        t0, t1 = self._tgt_off[i], self._tgt_off[i + 1]
        return self._src_ids[s0:s1], self._tgt_ids[t0:t1]


def load_text(path: Path) -> list[str]:
    lines = path.read_bytes().decode("utf-8").split("\n")
    lines.pop()  # after the final newline
    return lines


def _key(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return split


@dataclass
class Prepared:
    """A complete cache directory: tokenizer, datasets and raw text of every split.

    Splits are addressed by key, "train" | "dev" | "test", never by the configured file stems
    (`data.dev=test` makes the key "dev" read the files named test.*).
    """

    path: Path  # the cache directory
    tokenizer: Tokenizer
    summary: dict  # also in path/summary.json
    reused: bool = False  # True when an existing cache was loaded instead of built
    _datasets: dict[str, ParallelDataset] = field(default_factory=dict, repr=False)

    def dataset(self, split: str) -> ParallelDataset:
        """The memory-mapped ids of a split: "train" | "dev" | "test"."""
        key = _key(split)
        if key not in self._datasets:
            self._datasets[key] = ParallelDataset.load(self.path, key)
        return self._datasets[key]

    def raw(self, split: str) -> tuple[list[str], list[str]]:
        """Raw source/target lines of a split (kept pairs for train; every line for dev/test).
        Reads the whole split into memory: meant for dev and test (training calls it for
        those two only; the training split's text is kept for people, not read back)."""
        key = _key(split)
        return load_text(self.path / f"{key}.src.txt"), load_text(self.path / f"{key}.tgt.txt")

"""Cached splits as datasets: memory-mapped ids, raw text, and `Prepared`, the cache directory.

Opening a split reads only its offsets (to get the lengths); the ids stay on disk and are
paged in as batches touch them, so memory and start-up time grow with the number of pairs
by 16 bytes a pair per side (offsets and lengths), not with the text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nmt.tokenizer import Tokenizer

SPLITS = ("train", "dev", "test")
SIDES = ("src", "tgt")


class ParallelDataset:
    """Pairs of id sequences (no specials) stored as flat arrays plus offsets.

    src_lengths / tgt_lengths: int64 (N,) subword counts without specials.
    """

    def __init__(
        self,
        src_ids: np.ndarray,
        src_offsets: np.ndarray,
        tgt_ids: np.ndarray,
        tgt_offsets: np.ndarray,
    ) -> None:
        if len(src_offsets) != len(tgt_offsets):
            raise ValueError(f"{len(src_offsets) - 1} source vs {len(tgt_offsets) - 1} targets")
        # a plain ndarray view of a memory map keeps the pages on disk but slices 3x faster
        self._src_ids = src_ids.view(np.ndarray)
        self._tgt_ids = tgt_ids.view(np.ndarray)
        self._src_off = src_offsets.view(np.ndarray)  # on disk too when memory-mapped
        self._tgt_off = tgt_offsets.view(np.ndarray)
        self.src_lengths: np.ndarray = np.diff(self._src_off).astype(np.int64, copy=False)
        self.tgt_lengths: np.ndarray = np.diff(self._tgt_off).astype(np.int64, copy=False)

    @classmethod
    def load(cls, directory: Path, split: str) -> ParallelDataset:
        """Memory-map a cached split's ids and offsets."""
        arrays = [
            np.load(directory / f"{split}.{side}.{kind}.npy", mmap_mode="r")
            for side in SIDES
            for kind in ("ids", "offsets")
        ]
        return cls(*arrays)

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
        Reads the whole split into memory: meant for dev and test."""
        key = _key(split)
        return load_text(self.path / f"{key}.src.txt"), load_text(self.path / f"{key}.tgt.txt")

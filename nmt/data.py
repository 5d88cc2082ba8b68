"""Datasets and batches, and the names other modules import from here.

Reading and validation live in nmt/textio.py, building the id cache in nmt/cache.py, the cached
datasets and `Prepared` in nmt/dataset.py; they are re-exported here so that
`from nmt.data import DataError, prepare, Prepared, ParallelDataset, Batch, collate` works.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from nmt.cache import CACHE_VERSION, SUMMARY, prepare, remove_stale
from nmt.dataset import SIDES, SPLITS, ParallelDataset, Prepared
from nmt.textio import DataError, read_parallel

__all__ = [
    "CACHE_VERSION",
    "SIDES",
    "SPLITS",
    "SUMMARY",
    "Batch",
    "DataError",
    "ParallelDataset",
    "collate_indices",
    "Prepared",
    "collate",
    "prepare",
    "read_parallel",
    "remove_stale",
]


# ---------------------------------------------------------------------------------------------
# Batches


@dataclass
class Batch:
    """A padded batch, rows sorted by source length (descending) so the encoder packs as is.

    src:         (B, S) int64, row = ids + [eos], then pad
    src_lengths: (B,)   int64 on CPU, descending, eos included
    tgt_in:      (B, T) int64, row = [bos] + ids, then pad
    tgt_out:     (B, T) int64, row = ids + [eos], then pad
    index:       (B,)   int64 dataset indices of the rows
    tgt_lengths: (B,)   int64 on CPU, eos included (real cells of tgt_out)
    """

    src: Tensor
    src_lengths: Tensor
    tgt_in: Tensor
    tgt_out: Tensor
    index: Tensor
    tgt_lengths: Tensor | None = None

    def to(self, device: torch.device | str) -> Batch:
        """Move to `device`; src_lengths and tgt_lengths stay on CPU (packing wants them there)."""
        return Batch(
            src=self.src.to(device, non_blocking=True),
            src_lengths=self.src_lengths,
            tgt_in=self.tgt_in.to(device, non_blocking=True),
            tgt_out=self.tgt_out.to(device, non_blocking=True),
            index=self.index.to(device, non_blocking=True),
            tgt_lengths=self.tgt_lengths,
        )

    def __len__(self) -> int:
        return int(self.src.shape[0])

    @property
    def n_tgt_tokens(self) -> int:
        """Real target tokens (non-pad cells of tgt_out, eos included)."""
        if self.tgt_lengths is None:
            raise ValueError("Batch built without tgt_lengths; use collate()")
        return int(self.tgt_lengths.sum())


def collate(
    examples: list[tuple[int, np.ndarray, np.ndarray]], pad_id: int, bos_id: int, eos_id: int
) -> Batch:
    """(dataset index, src ids, tgt ids) triples -> Batch, rows sorted by source length
    descending (stable: ties keep their input order)."""
    if not examples:
        raise ValueError("collate needs at least one example")
    order = sorted(range(len(examples)), key=lambda k: -len(examples[k][1]))
    rows = [examples[k] for k in order]
    n = len(rows)
    src_len = np.fromiter((len(r[1]) for r in rows), dtype=np.int64, count=n)  # without eos
    tgt_len = np.fromiter((len(r[2]) for r in rows), dtype=np.int64, count=n)
    s_max, t_max = int(src_len.max()) + 1, int(tgt_len.max()) + 1
    arange_n = np.arange(n)

    src = np.full((n, s_max), pad_id, dtype=np.int64)
    src[np.arange(s_max)[None, :] < src_len[:, None]] = np.concatenate([r[1] for r in rows])
    src[arange_n, src_len] = eos_id

    flat_tgt = np.concatenate([r[2] for r in rows])
    positions = np.arange(t_max)[None, :]  # (1, T)
    tgt_out = np.full((n, t_max), pad_id, dtype=np.int64)
    tgt_out[positions < tgt_len[:, None]] = flat_tgt
    tgt_out[arange_n, tgt_len] = eos_id
    tgt_in = np.full((n, t_max), pad_id, dtype=np.int64)
    tgt_in[(positions >= 1) & (positions <= tgt_len[:, None])] = flat_tgt
    tgt_in[:, 0] = bos_id

    return Batch(
        src=torch.from_numpy(src),
        src_lengths=torch.from_numpy(src_len + 1),
        tgt_in=torch.from_numpy(tgt_in),
        tgt_out=torch.from_numpy(tgt_out),
        index=torch.tensor([r[0] for r in rows], dtype=torch.int64),
        tgt_lengths=torch.from_numpy(tgt_len + 1),
    )


def collate_indices(
    dataset: ParallelDataset, indices: Iterable[int], pad_id: int, bos_id: int, eos_id: int
) -> Batch:
    """``collate`` of the examples ``indices`` of ``dataset`` (a sampler's batch)."""
    return collate([(i, *dataset[i]) for i in indices], pad_id, bos_id, eos_id)

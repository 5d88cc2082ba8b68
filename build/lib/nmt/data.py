"""Aligned text -> validated lines -> SentencePiece ids cached on disk -> datasets -> batches.

Cache layout (one directory per hash of the input bytes, the filtering settings and the whole
tokenizer config, under `DataConfig.cache_dir`)::

    spm.model | src.model + tgt.model     SentencePiece model(s)
    {split}.{side}.ids.npy                flat ids of every sentence, uint16 (int32 if V > 65536)
    {split}.{side}.offsets.npy            int64 (N + 1,): sentence i is ids[off[i]:off[i + 1]]
    {split}.{side}.txt                    raw text of the kept lines (all lines for dev/test)
    summary.json                          counts, vocabulary, special ids, timings; written last

with split in {train, dev, test} and side in {src, tgt}. A cache is built in a temporary
directory and renamed into place, so a directory under its final name is always complete.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from nmt.config import DataConfig, TokenizerConfig
from nmt.faults import fault_point
from nmt.tokenizer import Tokenizer, split_lines

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
SPLITS = ("train", "dev", "test")
SIDES = ("src", "tgt")
SUMMARY = "summary.json"


class DataError(Exception):
    """Bad input data. The message is one line naming the file (and line) and what is wrong."""


# ---------------------------------------------------------------------------------------------
# Reading and validation


def _read_file(path: Path) -> tuple[list[str], bytes]:
    """Lines of a UTF-8 text file and its raw bytes; DataError on a missing file or bad bytes."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        bad = data[e.start : e.end].hex(" ")
        raise DataError(f"{path}: line {line}: invalid UTF-8 (bytes {bad})") from None
    return split_lines(text), data


def _read_pair(src_path: Path, tgt_path: Path) -> tuple[list[str], list[str], bytes]:
    """Validated aligned lines of both files and a sha256 digest of both files' bytes."""
    src, src_bytes = _read_file(src_path)
    tgt, tgt_bytes = _read_file(tgt_path)
    if len(src) != len(tgt):
        raise DataError(
            f"line counts differ: {src_path} has {len(src)} lines, {tgt_path} has {len(tgt)}"
        )
    if not src:
        raise DataError(f"{src_path}: empty split (no lines in it or in {tgt_path})")
    h = hashlib.sha256()
    for chunk in (src_bytes, tgt_bytes):
        h.update(len(chunk).to_bytes(8, "little"))
        h.update(chunk)
    return src, tgt, h.digest()


def read_parallel(src_path: Path, tgt_path: Path) -> tuple[list[str], list[str]]:
    """Aligned source/target lines of two files.

    Raises DataError for a missing file, different line counts, bytes that are not UTF-8, or an
    empty split. Lines are split on '\\n' only; a trailing '\\r' per line is dropped.
    """
    src, tgt, _ = _read_pair(Path(src_path), Path(tgt_path))
    return src, tgt


# ---------------------------------------------------------------------------------------------
# Datasets


def _flatten(seqs: list[list[int]], dtype: type[np.integer]) -> tuple[np.ndarray, np.ndarray]:
    """Ragged id lists -> (flat ids, int64 offsets (N + 1,))."""
    lengths = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))
    offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.fromiter(itertools.chain.from_iterable(seqs), dtype=dtype, count=int(offsets[-1]))
    return flat, offsets


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
        self._src_off = np.array(src_offsets, dtype=np.int64)  # small: held in memory
        self._tgt_off = np.array(tgt_offsets, dtype=np.int64)
        self.src_lengths: np.ndarray = np.diff(src_offsets).astype(np.int64)
        self.tgt_lengths: np.ndarray = np.diff(tgt_offsets).astype(np.int64)

    @classmethod
    def from_lists(cls, src: list[list[int]], tgt: list[list[int]]) -> ParallelDataset:
        """In-memory dataset (tests, translation); `tgt` may be empty lists."""
        if len(src) != len(tgt):
            raise ValueError(f"{len(src)} source vs {len(tgt)} target sequences")
        src_ids, src_off = _flatten(src, np.int64)
        tgt_ids, tgt_off = _flatten(tgt, np.int64)
        return cls(src_ids, src_off, tgt_ids, tgt_off)

    @classmethod
    def load(cls, directory: Path, split: str) -> ParallelDataset:
        """Memory-map a cached split's ids (offsets are read into memory)."""
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


def _save_split(
    directory: Path, split: str, side: str, seqs: list[list[int]], vocab_size: int
) -> None:
    dtype = np.uint16 if vocab_size <= 65536 else np.int32
    flat, offsets = _flatten(seqs, dtype)
    np.save(directory / f"{split}.{side}.ids.npy", flat)
    np.save(directory / f"{split}.{side}.offsets.npy", offsets)


def _save_text(path: Path, lines: list[str]) -> None:
    path.write_bytes("".join(line + "\n" for line in lines).encode("utf-8"))


def _load_text(path: Path) -> list[str]:
    lines = path.read_bytes().decode("utf-8").split("\n")
    lines.pop()  # after the final newline
    return lines


# ---------------------------------------------------------------------------------------------
# Preparation


@dataclass
class Prepared:
    """A complete cache directory: tokenizer, datasets and raw text of every split."""

    path: Path  # the cache directory
    tokenizer: Tokenizer
    summary: dict  # also in path/summary.json
    reused: bool = False  # True when an existing cache was loaded instead of built
    _datasets: dict[str, ParallelDataset] = field(default_factory=dict, repr=False)

    def _split(self, split: str) -> str:
        if split in SPLITS:
            return split
        for key, name in self.summary["split_names"].items():  # configured file stems
            if name == split:
                return str(key)
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")

    def dataset(self, split: str) -> ParallelDataset:
        """The memory-mapped ids of a split: "train" | "dev" | "test"."""
        key = self._split(split)
        if key not in self._datasets:
            self._datasets[key] = ParallelDataset.load(self.path, key)
        return self._datasets[key]

    def raw(self, split: str) -> tuple[list[str], list[str]]:
        """Raw source/target lines of a split (kept pairs for train; every line for dev/test)."""
        key = self._split(split)
        return _load_text(self.path / f"{key}.src.txt"), _load_text(self.path / f"{key}.tgt.txt")


def _cache_key(data: DataConfig, tok: TokenizerConfig, digests: list[bytes]) -> str:
    """Hash of everything the cache content depends on (not paths, not thread counts)."""
    settings = {
        "version": CACHE_VERSION,
        "src": data.src,
        "tgt": data.tgt,
        "max_len": data.max_len,
        "max_ratio": data.max_ratio,
        "tokenizer": asdict(tok),
    }
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode("utf-8"))
    for digest in digests:
        h.update(digest)
    return h.hexdigest()[:20]


def _filter_train(
    src_len: np.ndarray, tgt_len: np.ndarray, max_len: int, max_ratio: float
) -> tuple[np.ndarray, dict[str, int]]:
    """Keep mask (N,) and counts dropped by reason, each pair counted under its first reason:
    an empty side, a side over max_len subwords, or longer/shorter ratio over max_ratio.
    max_len <= 0 or max_ratio <= 0 disables that filter."""
    longer = np.maximum(src_len, tgt_len)
    shorter = np.minimum(src_len, tgt_len)
    empty = shorter == 0
    too_long = ~empty & (longer > max_len) if max_len > 0 else np.zeros_like(empty)
    ratio = (
        ~empty & ~too_long & (longer > max_ratio * shorter)
        if max_ratio > 0
        else np.zeros_like(empty)
    )
    keep = ~(empty | too_long | ratio)
    dropped = {
        "empty": int(empty.sum()),
        "too_long": int(too_long.sum()),
        "ratio": int(ratio.sum()),
    }
    return keep, dropped


def _build(
    out: Path,
    final: Path,
    texts: dict[str, tuple[list[str], list[str]]],
    paths: dict[str, tuple[Path, Path]],
    data: DataConfig,
    tok: TokenizerConfig,
    key: str,
    start: float,
) -> tuple[Tokenizer, dict]:
    """Train the tokenizer, encode and filter every split, write everything into `out`."""
    t0 = time.perf_counter()
    train_src, train_tgt = paths["train"]
    try:
        tokenizer = Tokenizer.train(
            tok, [train_src], [train_tgt], out, num_threads=data.num_threads
        )
    except RuntimeError as e:  # e.g. vocabulary too large for the corpus
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise DataError(
            f"{train_src}, {train_tgt}: SentencePiece training failed: {reason}"
        ) from None
    spm_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    splits: dict[str, dict] = {}
    for split, (src_lines, tgt_lines) in texts.items():
        src_ids = tokenizer.encode_src(src_lines, num_threads=data.num_threads)
        tgt_ids = tokenizer.encode_tgt(tgt_lines, num_threads=data.num_threads)
        src_len = np.fromiter(map(len, src_ids), dtype=np.int64, count=len(src_ids))
        tgt_len = np.fromiter(map(len, tgt_ids), dtype=np.int64, count=len(tgt_ids))
        n_read = len(src_ids)
        dropped = {"empty": 0, "too_long": 0, "ratio": 0}
        if split == "train":
            keep, dropped = _filter_train(src_len, tgt_len, data.max_len, data.max_ratio)
            if not keep.all():
                kept_idx = np.flatnonzero(keep).tolist()
                src_ids = [src_ids[i] for i in kept_idx]
                tgt_ids = [tgt_ids[i] for i in kept_idx]
                src_lines = [src_lines[i] for i in kept_idx]
                tgt_lines = [tgt_lines[i] for i in kept_idx]
                src_len, tgt_len = src_len[keep], tgt_len[keep]
            if not src_ids:
                raise DataError(
                    f"{train_src}: no training pairs left after filtering "
                    f"(empty side {dropped['empty']}, over max_len {dropped['too_long']}, "
                    f"length ratio {dropped['ratio']})"
                )
        _save_split(out, split, "src", src_ids, tokenizer.src_vocab_size)
        _save_split(out, split, "tgt", tgt_ids, tokenizer.tgt_vocab_size)
        _save_text(out / f"{split}.src.txt", src_lines)
        _save_text(out / f"{split}.tgt.txt", tgt_lines)
        splits[split] = {
            "read": n_read,
            "kept": len(src_ids),
            "dropped": dropped,
            "src_tokens": int(src_len.sum()),
            "tgt_tokens": int(tgt_len.sum()),
            "src_max_len": int(src_len.max(initial=0)),
            "tgt_max_len": int(tgt_len.max(initial=0)),
        }
    encode_s = time.perf_counter() - t0

    summary = {
        "path": str(final),
        "key": key,
        "files": {split: [str(p) for p in pair] for split, pair in paths.items()},
        "split_names": {"train": data.train, "dev": data.dev, "test": data.test},
        "src": data.src,
        "tgt": data.tgt,
        "splits": splits,
        "vocab_size": {"src": tokenizer.src_vocab_size, "tgt": tokenizer.tgt_vocab_size},
        "special_ids": {
            "pad": tokenizer.pad_id,
            "unk": tokenizer.unk_id,
            "bos": tokenizer.bos_id,
            "eos": tokenizer.eos_id,
        },
        "tokenizer": asdict(tok),
        "filter": {"max_len": data.max_len, "max_ratio": data.max_ratio},
        "fingerprint": tokenizer.fingerprint(),
        "time_s": {
            "spm_train": round(spm_s, 3),
            "encode": round(encode_s, 3),
            "total": round(time.perf_counter() - start, 3),
        },
    }
    (out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return tokenizer, summary


def prepare(data: DataConfig, tok: TokenizerConfig) -> Prepared:
    """Validate the aligned text, train SentencePiece on the train split, encode, filter and
    cache every split under cache_dir/<hash>; reuse that directory when it already exists.

    Only train pairs are filtered (empty side, > max_len subwords, ratio > max_ratio), and every
    drop is counted in the summary. Raises DataError for bad input.
    """
    start = time.perf_counter()
    root = Path(data.dir)
    stems = {"train": data.train, "dev": data.dev, "test": data.test}
    paths = {
        s: (root / f"{stem}.{data.src}", root / f"{stem}.{data.tgt}") for s, stem in stems.items()
    }
    texts: dict[str, tuple[list[str], list[str]]] = {}
    digests = []
    for split in SPLITS:
        src, tgt, digest = _read_pair(*paths[split])
        texts[split] = (src, tgt)
        digests.append(digest)
    key = _cache_key(data, tok, digests)
    cache_root = Path(data.cache_dir)
    final = cache_root / key

    if (final / SUMMARY).is_file():
        summary = json.loads((final / SUMMARY).read_text(encoding="utf-8"))
        # the same content may be reached through other paths than the ones that built it
        summary["path"] = str(final)
        summary["files"] = {split: [str(p) for p in pair] for split, pair in paths.items()}
        logger.info("reusing prepared data in %s", final)
        return Prepared(final, Tokenizer.load(final), summary, reused=True)

    cache_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=cache_root))
    try:
        logger.info("preparing %s -> %s", root, final)
        tokenizer, summary = _build(tmp, final, texts, paths, data, tok, key, start)
        fault_point("prepare")
        if final.exists() and not (final / SUMMARY).is_file():
            shutil.rmtree(final)  # incomplete leftover (summary deleted by hand)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / SUMMARY).is_file():
                raise
            shutil.rmtree(tmp)  # a concurrent prepare finished the same cache first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    train = summary["splits"]["train"]
    logger.info(
        "train: %d read, %d kept; vocab %s; %.1fs",
        train["read"],
        train["kept"],
        summary["vocab_size"],
        summary["time_s"]["total"],
    )
    return Prepared(final, tokenizer, summary, reused=False)


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

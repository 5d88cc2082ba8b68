"""Aligned text -> validated -> SentencePiece ids cached on disk, in bounded memory and in parallel.

Cache layout (one directory per hash of the input bytes, the filtering settings and the whole
tokenizer config, under `DataConfig.cache_dir`)::

    spm.model | src.model + tgt.model     SentencePiece model(s)
    tgt_vocab.npy                         the target vocabulary (target_vocab=used): int32 (V,)
    {split}.{side}.ids.npy                flat ids of every sentence, uint16 (int32 if V > 65536)
    {split}.{side}.offsets.npy            int64 (N + 1,): sentence i is ids[off[i]:off[i + 1]]
    {split}.{side}.txt                    raw text of the kept lines (all lines for dev/test)
    summary.json                          counts, vocabulary, special ids, timings; written last

with split in {train, dev, test} and side in {src, tgt}. Source ids are SentencePiece ids; target
ids are model ids (`Tokenizer.encode_tgt`): with `tokenizer.target_vocab=used`, the rows of the
target vocabulary made of the pieces the target side of the kept training pairs uses (dev and
test pieces outside it are stored as unk, and counted in the summary).

Phases, each logged with its time: (1) validate: every file is read once in blocks (UTF-8,
line counts, a digest for the cache key, the byte offset of every `chunk_lines`-th line);
(2) SentencePiece is trained on a stream of the train lines (it keeps only its own sample of
`input_sentence_size` sentences, fewer when the text is over `input_sample_mb`: its memory
grows with the bytes it samples); (3) encode: chunks of `chunk_lines` aligned pairs go to
`data.num_workers` worker processes, each reading its chunk straight from the files, encoding,
filtering (train) and writing its own shard files of SentencePiece ids, and counting the target
pieces of its train pairs; (4) write: the target vocabulary is made from those counts; per split
and side, the shards are concatenated behind an .npy header by the kernel
(`os.copy_file_range`/`sendfile`; target shards are mapped to model ids on the way when there is
a target vocabulary) and the offsets are written from the shards' lengths, one shard at a time.
Memory is bounded by a block and a chunk per process, plus SentencePiece's sample.

Cache hits without reading the text: `cache_dir/file-digests.json` records, per pair of files
of a split, the digest with the files' stat (size, modification and change times in ns, inode,
device) when it was computed. A later prepare whose three splits all match their records takes
the digests from there and, when that cache exists, opens it without reading a byte of text;
any difference (an edited, replaced, touched or moved file) re-reads and re-hashes. A digest is
recorded only for files last changed more than RACY_NS before they were read (like git's racily
clean entries: a change within the file system's timestamp granularity of the read could leave
the stat unchanged); the change time cannot be set back by a program, so an edit that restores
the size and modification time still misses.

A cache is built in a temporary directory `.tmp-<key>-<host>-<pid>-<random>` and renamed into
place, so a directory under its final name is always complete; an interrupted build removes its
temporary directory, and one left by a killed process (same host, pid gone) is removed by the
next prepare in that cache_dir.
"""

from __future__ import annotations

import ctypes
import hashlib
import itertools
import json
import logging
import multiprocessing as mp
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from tqdm import tqdm

from nmt.config import DataConfig, TokenizerConfig
from nmt.dataset import SPLITS, Prepared
from nmt.faults import fault_point
from nmt.textio import DataError, FileScan, check_pair, read_chunk, scan_file
from nmt.tokenizer import (
    Tokenizer,
    model_files,
    read_tokenizer,
    resolve_threads,
    sample_bounded,
    sample_size,
)
from nmt.vocab import TargetVocab, TargetVocabError

logger = logging.getLogger(__name__)

CACHE_VERSION = 2  # 2: target ids are model ids of a target vocabulary (tokenizer.target_vocab)
SUMMARY = "summary.json"
CHUNK_LINES = 50_000  # aligned pairs per encoding task
SMALL_BYTES = 1 << 20  # train text below this: SentencePiece in this process
DIGESTS = "file-digests.json"  # in cache_dir: stat -> digest of the split files seen
DIGESTS_VERSION = 1
DIGESTS_KEPT = 256  # entries (file pairs) kept, the most recently recorded
RACY_NS = 2_000_000_000  # files changed this shortly before being read get no record
_TMP = re.compile(r"^\.tmp-[0-9a-f]{20}-(?P<host>[A-Za-z0-9._]+)-(?P<pid>[0-9]+)-[a-z0-9_]{8}$")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "localhost"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        return True
    return True


def remove_stale(cache_root: Path) -> list[Path]:
    """Remove temporary build directories of earlier prepares on this host whose process is
    gone; return them. Anything else (live builds, other hosts, foreign names) is left alone."""
    removed: list[Path] = []
    if not cache_root.is_dir():
        return removed
    host = _host()
    for entry in cache_root.iterdir():
        m = _TMP.match(entry.name)
        if not m or m["host"] != host or not entry.is_dir() or entry.is_symlink():
            continue
        pid = int(m["pid"])
        if pid == os.getpid() or _alive(pid):
            continue
        # a killed prepare's encoding workers may still be writing shards into it for a moment
        # (they notice their parent's death asynchronously): retry until it stays gone
        for _ in range(50):
            shutil.rmtree(entry, ignore_errors=True)
            if not entry.exists():
                break
            time.sleep(0.1)
        removed.append(entry)
        logger.info("removed %s, left by an interrupted prepare (pid %d)", entry, pid)
    return removed


def _tokenizer_settings(tok: TokenizerConfig, train: tuple[Path, Path]) -> dict:
    """The tokenizer settings the cache depends on: ``input_sample_mb`` only where it bounds a
    sample (so caches from before the option stay valid for text under the bound)."""
    if tok.model:
        return {"model": read_tokenizer(tok.model).fingerprint(), "target_vocab": tok.target_vocab}
    settings = asdict(tok)
    if not any(sample_bounded(tok, files) for files in model_files(tok, *train)):
        del settings["input_sample_mb"]
    return settings


def _cache_key(
    data: DataConfig, tok: TokenizerConfig, digests: list[bytes], train: tuple[Path, Path]
) -> str:
    """Hash of everything the cache content depends on (not paths, not thread counts)."""
    settings = {
        "version": CACHE_VERSION,
        "src": data.src,
        "tgt": data.tgt,
        "max_len": data.max_len,
        "max_ratio": data.max_ratio,
        "tokenizer": _tokenizer_settings(tok, train),
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


# ---------------------------------------------------------------------------------------------
# Encoding one chunk (runs in a worker process)


@dataclass
class _Task:
    split: str
    index: int
    src: tuple[Path, int, int]  # file, first byte, end byte
    tgt: tuple[Path, int, int]
    shard: Path  # shard files are shard.{side}.{ids,len,txt}
    filter: tuple[int, float] | None  # (max_len, max_ratio) for train


_worker_tok: Tokenizer | None = None


def _die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this worker when the process that started it dies, so a
    killed prepare leaves no worker writing into its temporary directory."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def _init_child() -> None:
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and cleans up


def _init_worker(tok_bytes: dict) -> None:
    global _worker_tok
    _init_child()
    _worker_tok = Tokenizer.from_bytes(tok_bytes)


def _context() -> mp.context.BaseContext:
    """forkserver where there is one: children are forked from a fresh single-threaded server
    (forking the caller, which may run torch or other threads, can deadlock a child) that
    preloads only this module; else spawn."""
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["nmt.cache"])
        return ctx
    return mp.get_context("spawn")


def _id_dtype(vocab_size: int) -> type[np.integer]:
    return np.uint16 if vocab_size <= 65536 else np.int32


def _encode_chunk(task: _Task, tok: Tokenizer | None = None) -> dict:
    """Encode one chunk of aligned lines, filter it (train), write its shard files of
    SentencePiece ids; for train, count the target pieces of the kept pairs."""
    tok = tok or _worker_tok
    assert tok is not None and tok.tgt_vocab is None  # SentencePiece ids on both sides
    src_lines = read_chunk(*task.src)
    tgt_lines = read_chunk(*task.tgt)
    src_ids = tok.encode_src(src_lines, num_threads=1)
    tgt_ids = tok.encode_tgt(tgt_lines, num_threads=1)
    src_len = np.fromiter(map(len, src_ids), dtype=np.int64, count=len(src_ids))
    tgt_len = np.fromiter(map(len, tgt_ids), dtype=np.int64, count=len(tgt_ids))
    n_read = len(src_ids)
    dropped = {"empty": 0, "too_long": 0, "ratio": 0}
    if task.filter is not None:
        keep, dropped = _filter_train(src_len, tgt_len, *task.filter)
        if not keep.all():
            idx = np.flatnonzero(keep).tolist()
            src_ids = [src_ids[i] for i in idx]
            tgt_ids = [tgt_ids[i] for i in idx]
            src_lines = [src_lines[i] for i in idx]
            tgt_lines = [tgt_lines[i] for i in idx]
            src_len, tgt_len = src_len[keep], tgt_len[keep]
    sides = (
        ("src", src_ids, src_len, src_lines, tok.src_vocab_size),
        ("tgt", tgt_ids, tgt_len, tgt_lines, tok.tgt_vocab_size),
    )
    tgt_counts = None
    for side, ids, lengths, lines, vocab in sides:
        flat = np.fromiter(
            itertools.chain.from_iterable(ids), dtype=_id_dtype(vocab), count=int(lengths.sum())
        )
        flat.tofile(f"{task.shard}.{side}.ids")
        if side == "tgt" and task.split == "train":
            tgt_counts = np.bincount(flat, minlength=vocab).astype(np.int64)
        lengths.tofile(f"{task.shard}.{side}.len")
        Path(f"{task.shard}.{side}.txt").write_bytes(
            "".join(line + "\n" for line in lines).encode("utf-8")
        )
    return {
        "split": task.split,
        "index": task.index,
        "read": n_read,
        "kept": len(src_len),
        "dropped": dropped,
        "src_tokens": int(src_len.sum()),
        "tgt_tokens": int(tgt_len.sum()),
        "src_max_len": int(src_len.max(initial=0)),
        "tgt_max_len": int(tgt_len.max(initial=0)),
        "bytes": task.src[2] - task.src[1] + task.tgt[2] - task.tgt[1],
        "tgt_counts": tgt_counts,  # (V_sp,) for train, else None
    }


def _tasks(
    scans: dict[str, tuple[FileScan, FileScan]], shard_dir: Path, data: DataConfig
) -> list[_Task]:
    tasks = []
    for split in SPLITS:
        src, tgt = scans[split]
        for j in range(len(src.starts) - 1):
            tasks.append(
                _Task(
                    split,
                    j,
                    (src.path, int(src.starts[j]), int(src.starts[j + 1])),
                    (tgt.path, int(tgt.starts[j]), int(tgt.starts[j + 1])),
                    shard_dir / f"{split}.{j:07d}",
                    (data.max_len, data.max_ratio) if split == "train" else None,
                )
            )
    return tasks


def _run_tasks(tasks: list[_Task], tokenizer: Tokenizer, workers: int) -> Iterator[dict]:
    """Results of every task, in completion order; `workers` processes (1: this process).
    Up to one task per split (a small corpus) runs here too: no processes to start."""
    if workers <= 1 or len(tasks) <= len(SPLITS):
        for task in tasks:
            yield _encode_chunk(task, tokenizer)
        return
    with _context().Pool(
        workers, _init_worker, (tokenizer.to_bytes(),), maxtasksperchild=None
    ) as pool:
        results = pool.imap_unordered(_encode_chunk, tasks)
        while True:  # a wait without a timeout would not see Ctrl-C
            try:
                yield results.next(timeout=0.2)
            except mp.TimeoutError:
                continue
            except StopIteration:
                return


# ---------------------------------------------------------------------------------------------
# Merging shards


def _append(out: BinaryIO, path: Path) -> None:
    """Append a file's bytes to the open file `out`, copied by the kernel where it can."""
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        out.flush()
        done = 0
        try:
            while done < size:
                n = os.copy_file_range(f.fileno(), out.fileno(), size - done)
                if n == 0:
                    break
                done += n
        except (AttributeError, OSError):
            f.seek(done)
            out.seek(0, 2)
            shutil.copyfileobj(f, out, 1 << 20)
            return
        out.seek(0, 2)


def _npy_header(out: BinaryIO, dtype: type[np.integer], n: int) -> None:
    """The header np.save writes for a 1-D array of n items."""
    descr = np.lib.format.dtype_to_descr(np.dtype(dtype))
    header = {"descr": descr, "fortran_order": False, "shape": (n,)}
    np.lib.format.write_array_header_1_0(out, header)


def _append_mapped(out: BinaryIO, path: Path, tok: Tokenizer) -> int:
    """Append a target shard's SentencePiece ids to `out` as model ids of `tok`'s target
    vocabulary; return how many tokens became unk that were not unk before."""
    assert tok.tgt_vocab is not None
    sp = np.fromfile(path, dtype=_id_dtype(tok.sp_tgt_vocab_size))
    ids = tok.tgt_vocab.model_ids(sp)
    out.seek(0, 2)
    out.write(ids.astype(_id_dtype(tok.tgt_vocab_size)).tobytes())
    return int(np.count_nonzero((ids == tok.unk_id) & (sp != tok.unk_id)))


def _merge(out_dir: Path, split: str, shards: list[Path], stats: dict, tok: Tokenizer) -> None:
    """Concatenate a split's shards into its .npy/.txt files, one shard open at a time; target
    ids are mapped to `tok`'s model ids (tokens that became unk: stats["tgt_new_unk"])."""
    kept = stats["kept"]
    stats["tgt_new_unk"] = 0
    for side, vocab in (("src", tok.src_vocab_size), ("tgt", tok.tgt_vocab_size)):
        dtype = _id_dtype(vocab)
        with (out_dir / f"{split}.{side}.ids.npy").open("wb") as ids_out:
            _npy_header(ids_out, dtype, stats[f"{side}_tokens"])
            for shard in shards:
                if side == "tgt" and tok.tgt_vocab is not None:
                    stats["tgt_new_unk"] += _append_mapped(ids_out, Path(f"{shard}.tgt.ids"), tok)
                else:
                    _append(ids_out, Path(f"{shard}.{side}.ids"))
                Path(f"{shard}.{side}.ids").unlink()
        with (out_dir / f"{split}.{side}.offsets.npy").open("wb") as off_out:
            _npy_header(off_out, np.int64, kept + 1)
            base = np.zeros(1, dtype=np.int64)
            base.tofile(off_out)
            for shard in shards:
                lengths = np.fromfile(f"{shard}.{side}.len", dtype=np.int64)
                offsets = np.cumsum(lengths) + base[0]
                offsets.tofile(off_out)
                if len(offsets):
                    base[0] = offsets[-1]
                Path(f"{shard}.{side}.len").unlink()
        with (out_dir / f"{split}.{side}.txt").open("wb") as txt_out:
            for shard in shards:
                _append(txt_out, Path(f"{shard}.{side}.txt"))
                Path(f"{shard}.{side}.txt").unlink()


# ---------------------------------------------------------------------------------------------
# Preparation


def _progress(total: int, desc: str) -> tqdm:
    return tqdm(
        total=total,
        desc=desc,
        unit="B",
        unit_scale=True,
        unit_divisor=1000,
        dynamic_ncols=True,
        disable=None,  # a terminal only
        file=sys.stderr,
    )


# ---------------------------------------------------------------------------------------------
# Digests of unchanged files, by their stat


def _stat(path: Path) -> list[int]:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def _pair_name(pair: tuple[Path, Path]) -> str:
    return "\n".join(os.path.abspath(p) for p in pair)


def read_digests(cache_root: Path) -> dict[str, dict]:
    """The records of `cache_root/file-digests.json`; {} when it is missing or unreadable."""
    try:
        data = json.loads((cache_root / DIGESTS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != DIGESTS_VERSION:
        return {}
    entries = data.get("pairs")
    if not isinstance(entries, dict):
        return {}
    return {
        k: v
        for k, v in entries.items()
        if isinstance(v, dict) and isinstance(v.get("recorded_ns"), int)
    }


def known_digest(records: dict[str, dict], pair: tuple[Path, Path]) -> bytes | None:
    """The recorded digest of a pair of files whose stat is still the recorded one, else None."""
    entry = records.get(_pair_name(pair))
    try:
        if not isinstance(entry, dict) or entry.get("stat") != [_stat(p) for p in pair]:
            return None
        return bytes.fromhex(entry["digest"])
    except (OSError, KeyError, TypeError, ValueError):
        return None


def _record(
    records: dict[str, dict],
    pair: tuple[Path, Path],
    before: list[list[int]],
    read_ns: int,
    digest: bytes,
) -> bool:
    """Record a digest computed from reading `pair` from time read_ns on, when the files did not
    change while they were read and had not changed for RACY_NS before. True if recorded."""
    try:
        after = [_stat(p) for p in pair]
    except OSError:
        return False
    newest = max(max(st[1], st[2]) for st in after)  # modification and change times
    if after != before or newest >= read_ns - RACY_NS:
        return False
    records[_pair_name(pair)] = {"stat": after, "digest": digest.hex(), "recorded_ns": read_ns}
    return True


def write_digests(cache_root: Path, new: dict[str, dict]) -> None:
    """Add the records `new` to those on disk (now: another prepare may have written since),
    keep the DIGESTS_KEPT most recent, write through a temporary file and a rename. A cache_dir
    that cannot be written keeps its old records (the next run re-hashes)."""
    records = read_digests(cache_root) | new
    recent = sorted(records.items(), key=lambda kv: -kv[1]["recorded_ns"])
    data = {"version": DIGESTS_VERSION, "pairs": dict(recent[:DIGESTS_KEPT])}
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{DIGESTS}.", dir=cache_root)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, cache_root / DIGESTS)
    except OSError as e:
        logger.info("could not record the input files' digests in %s (%s)", cache_root, e)
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def _scan_all(
    paths: dict[str, tuple[Path, Path]], chunk_lines: int
) -> tuple[dict[str, tuple[FileScan, FileScan]], list[bytes], dict[str, dict]]:
    """Validate every split's files (in order: train, dev, test; source, then target). Third
    result: the records of their digests for file-digests.json (see _record)."""
    scans: dict[str, tuple[FileScan, FileScan]] = {}
    digests = []
    records: dict[str, dict] = {}
    total = sum(p.stat().st_size for pair in paths.values() for p in pair if p.is_file())
    with _progress(total, "validate") as bar:
        for split in SPLITS:
            pair = paths[split]
            h = hashlib.sha256()
            read_ns = time.time_ns()
            before = [_stat(p) for p in pair if p.is_file()]
            src = scan_file(pair[0], chunk_lines, h)
            bar.update(src.size)
            tgt = scan_file(pair[1], chunk_lines, h)
            bar.update(tgt.size)
            check_pair(src, tgt)
            scans[split] = (src, tgt)
            digests.append(h.digest())
            _record(records, pair, before, read_ns, digests[-1])
    return scans, digests, records


def _spm_child(
    tok: TokenizerConfig, src: Path, tgt: Path, out: Path, threads: int, lines: tuple[int, int]
) -> dict:
    return Tokenizer.train(tok, [src], [tgt], out, threads, lines).to_bytes()


def _log_sample(tok: TokenizerConfig, train: tuple[FileScan, FileScan]) -> None:
    """Say how many training sentences each SentencePiece model will sample."""
    scans = {scan.path: scan for scan in train}
    for files in model_files(tok, train[0].path, train[1].path):
        lines = sum(scans[p].lines for p in files)
        n = sample_size(tok, files, lines)
        if n < lines:
            logger.info(
                "spm_train: %s: a sample of %d of %d sentences (%.0f MB of text; "
                "tokenizer.input_sentence_size=%d, tokenizer.input_sample_mb=%g)",
                " + ".join(str(p) for p in files),
                n,
                lines,
                sum(scans[p].size for p in files) / 1e6,
                tok.input_sentence_size,
                tok.input_sample_mb,
            )


def _train_tokenizer(
    out: Path, train: tuple[FileScan, FileScan], data: DataConfig, tok: TokenizerConfig
) -> Tokenizer:
    """SentencePiece on the train split, in a child process: Ctrl-C need not wait for the
    trainer's C++ loop, and its memory (the sentence sample) is returned when it exits.
    Small corpora (a few seconds of training) train in this process."""
    train_src, train_tgt = train[0].path, train[1].path
    if tok.model:  # tokenizer.model: reuse, never retrain
        tokenizer = read_tokenizer(tok.model)
        tokenizer.save(out)
        return tokenizer
    _log_sample(tok, train)
    lines = (train[0].lines, train[1].lines)  # counted by validation: not read again
    try:
        if train[0].size + train[1].size < SMALL_BYTES:
            return Tokenizer.train(tok, [train_src], [train_tgt], out, data.num_threads, lines)
        with _context().Pool(1, _init_child) as pool:
            args = (tok, train_src, train_tgt, out, data.num_threads, lines)
            result = pool.apply_async(_spm_child, args)
            while True:  # a wait without a timeout would not see Ctrl-C
                try:
                    return Tokenizer.from_bytes(result.get(timeout=0.2))
                except mp.TimeoutError:
                    pass
    except RuntimeError as e:  # e.g. vocabulary too large for the corpus
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise DataError(
            f"{train_src}, {train_tgt}: SentencePiece training failed: {reason}"
        ) from None


def _target_vocab(tokenizer: Tokenizer, tok: TokenizerConfig, counts: np.ndarray) -> Tokenizer:
    """The tokenizer with the target vocabulary `tokenizer.target_vocab` asks for: all: none;
    used: the one a checkpoint given as `tokenizer.model` carries (its output layer is fixed),
    else the specials and the pieces with a count (the target side of the kept train pairs)."""
    if tok.target_vocab == "all":
        return tokenizer.spm_only()
    if tokenizer.tgt_vocab is not None:
        logger.info(
            "target vocabulary: the %d pieces of %s (pieces outside it become unk)",
            tokenizer.tgt_vocab_size,
            tok.model,
        )
        return tokenizer
    try:
        vocab = TargetVocab.used(counts, tokenizer.special_ids)
    except TargetVocabError as e:
        raise DataError(f"tokenizer.target_vocab=used: {e}") from None
    logger.info(
        "target vocabulary: %d of %d pieces (those the target training text uses, and specials)",
        len(vocab),
        tokenizer.sp_tgt_vocab_size,
    )
    return tokenizer.with_target_vocab(vocab)


def _encode_all(
    out: Path,
    scans: dict[str, tuple[FileScan, FileScan]],
    data: DataConfig,
    tok: TokenizerConfig,
    tokenizer: Tokenizer,
) -> tuple[dict[str, dict], Tokenizer]:
    """Encode every split in chunks on the workers; the per-split counts of the summary, and
    the tokenizer with its target vocabulary (the ids the cache holds)."""
    shard_dir = out / "shards"
    shard_dir.mkdir()
    tasks = _tasks(scans, shard_dir, data)
    counts = np.zeros(tokenizer.sp_tgt_vocab_size, dtype=np.int64)
    workers = resolve_threads(data.num_workers)
    splits: dict[str, dict] = {
        s: {
            "read": 0,
            "kept": 0,
            "dropped": {"empty": 0, "too_long": 0, "ratio": 0},
            "src_tokens": 0,
            "tgt_tokens": 0,
            "src_max_len": 0,
            "tgt_max_len": 0,
        }
        for s in SPLITS
    }
    total = sum(t.src[2] - t.src[1] + t.tgt[2] - t.tgt[1] for t in tasks)
    lines = 0
    start = time.perf_counter()
    with _progress(total, f"encode ({workers} workers)") as bar:
        for r in _run_tasks(tasks, tokenizer.spm_only(), workers):
            if r["tgt_counts"] is not None:
                counts += r["tgt_counts"]
            acc = splits[r["split"]]
            for k in ("read", "kept", "src_tokens", "tgt_tokens"):
                acc[k] += r[k]
            for k in ("src_max_len", "tgt_max_len"):
                acc[k] = max(acc[k], r[k])
            for k, v in r["dropped"].items():
                acc["dropped"][k] += v
            lines += r["read"]
            bar.update(r["bytes"])
            bar.set_postfix_str(f"{lines:,} pairs, {lines / (time.perf_counter() - start):,.0f}/s")
    train = splits["train"]
    if not train["kept"]:
        d = train["dropped"]
        raise DataError(
            f"{scans['train'][0].path}: no training pairs left after filtering "
            f"(empty side {d['empty']}, over max_len {d['too_long']}, "
            f"length ratio {d['ratio']})"
        )
    t0 = time.perf_counter()
    tokenizer = _target_vocab(tokenizer, tok, counts)
    for split in SPLITS:
        shards = [t.shard for t in tasks if t.split == split]
        _merge(out, split, shards, splits[split], tokenizer)
    shard_dir.rmdir()
    logger.info("write: shards merged in %.1fs", time.perf_counter() - t0)
    return splits, tokenizer


def _build(
    out: Path,
    final: Path,
    scans: dict[str, tuple[FileScan, FileScan]],
    paths: dict[str, tuple[Path, Path]],
    data: DataConfig,
    tok: TokenizerConfig,
    key: str,
    times: dict[str, float],
    start: float,
) -> tuple[Tokenizer, dict]:
    """Train the tokenizer, encode and filter every split, write everything into `out`."""
    t0 = time.perf_counter()
    tokenizer = _train_tokenizer(out, scans["train"], data, tok)
    times["spm_train"] = time.perf_counter() - t0
    logger.info("spm_train: %.1fs", times["spm_train"])

    t0 = time.perf_counter()
    splits, tokenizer = _encode_all(out, scans, data, tok, tokenizer)
    tokenizer.save(out)  # with its target vocabulary
    times["encode"] = time.perf_counter() - t0
    n = sum(s["read"] for s in splits.values())
    logger.info("encode: %d pairs in %.1fs (%.0f pairs/s)", n, times["encode"], n / times["encode"])

    summary = {
        "path": str(final),
        "key": key,
        "files": {split: [str(p) for p in pair] for split, pair in paths.items()},
        "split_names": {"train": data.train, "dev": data.dev, "test": data.test},
        "src": data.src,
        "tgt": data.tgt,
        "splits": splits,
        "vocab_size": {"src": tokenizer.src_vocab_size, "tgt": tokenizer.tgt_vocab_size},
        "target_vocab": {
            "setting": tok.target_vocab,
            "size": tokenizer.tgt_vocab_size,
            "sentencepiece_size": tokenizer.sp_tgt_vocab_size,
            # target tokens stored as unk whose piece is not unk (outside the vocabulary)
            "new_unk": {split: splits[split].pop("tgt_new_unk") for split in SPLITS},
        },
        "special_ids": {
            "pad": tokenizer.pad_id,
            "unk": tokenizer.unk_id,
            "bos": tokenizer.bos_id,
            "eos": tokenizer.eos_id,
        },
        "tokenizer": asdict(tok),
        "filter": {"max_len": data.max_len, "max_ratio": data.max_ratio},
        "fingerprint": tokenizer.fingerprint(),
        "time_s": {k: round(v, 3) for k, v in times.items()}
        | {"total": round(time.perf_counter() - start, 3)},
    }
    (out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return tokenizer, summary


def prepare(data: DataConfig, tok: TokenizerConfig, chunk_lines: int = CHUNK_LINES) -> Prepared:
    """Validate the aligned text, train SentencePiece on the train split, encode, filter and
    cache every split under cache_dir/<hash>; reuse that directory when it already exists.

    Only train pairs are filtered (empty side, > max_len subwords, ratio > max_ratio), and every
    drop is counted in the summary. Raises DataError for bad input. `chunk_lines` pairs make
    one encoding task (the cache does not depend on it).
    """
    start = time.perf_counter()
    root = Path(data.dir)
    stems = {"train": data.train, "dev": data.dev, "test": data.test}
    paths = {
        s: (root / f"{stem}.{data.src}", root / f"{stem}.{data.tgt}") for s, stem in stems.items()
    }
    cache_root = Path(data.cache_dir)
    records = read_digests(cache_root)
    known = [known_digest(records, paths[split]) for split in SPLITS]
    if all(d is not None for d in known):
        hashed = [d for d in known if d is not None]
        final = cache_root / _cache_key(data, tok, hashed, paths["train"])
        if (final / SUMMARY).is_file():
            logger.info("validate: skipped (files unchanged since hashed: %s)", DIGESTS)
            remove_stale(cache_root)
            return _reuse(final, paths, stems)
    scans, digests, new_records = _scan_all(paths, chunk_lines)
    times = {"validate": time.perf_counter() - start}
    logger.info("validate: %.1fs", times["validate"])
    key = _cache_key(data, tok, digests, paths["train"])
    final = cache_root / key
    remove_stale(cache_root)

    if (final / SUMMARY).is_file():
        if new_records:
            write_digests(cache_root, new_records)
        return _reuse(final, paths, stems)

    cache_root.mkdir(parents=True, exist_ok=True)
    prefix = f".tmp-{key}-{_host()}-{os.getpid()}-"
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=cache_root))
    try:
        logger.info("preparing %s -> %s", root, final)
        tokenizer, summary = _build(tmp, final, scans, paths, data, tok, key, times, start)
        fault_point("prepare")
        _move_into_place(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if new_records:
        write_digests(cache_root, new_records)
    train = summary["splits"]["train"]
    logger.info(
        "train: %d read, %d kept; vocab %s; %.1fs",
        train["read"],
        train["kept"],
        summary["vocab_size"],
        summary["time_s"]["total"],
    )
    return Prepared(final, tokenizer, summary, reused=False)


def _reuse(final: Path, paths: dict[str, tuple[Path, Path]], stems: dict[str, str]) -> Prepared:
    """The cache ``final`` built before, its summary naming this call's files."""
    summary = json.loads((final / SUMMARY).read_text(encoding="utf-8"))
    # the same content may be reached through other paths and stems than the ones that built it
    summary["path"] = str(final)
    summary["files"] = {split: [str(p) for p in pair] for split, pair in paths.items()}
    summary["split_names"] = stems
    logger.info("reusing prepared data in %s", final)
    return Prepared(final, Tokenizer.load(final), summary, reused=True)


def _move_into_place(tmp: Path, final: Path) -> None:
    """Rename the built directory ``tmp`` to ``final`` (one rename: readers see all or none)."""
    if final.exists() and not (final / SUMMARY).is_file():
        shutil.rmtree(final)  # incomplete leftover (summary deleted by hand)
    try:
        os.rename(tmp, final)
    except OSError:
        if not (final / SUMMARY).is_file():
            raise
        shutil.rmtree(tmp)  # a concurrent prepare finished the same cache first

"""read_parallel validation, streaming reads (blocks, chunks), ParallelDataset storage, collate/Batch layout."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from nmt import dataset as dataset_mod
from nmt import textio
from nmt.data import Batch, DataError, ParallelDataset, collate, read_parallel
from nmt.dataset import lengths_of
from nmt.tokenizer import split_lines

# deliberately not the defaults (0..3), so a hard-coded id shows up
PAD, BOS, EOS = 7, 5, 6


def write(path: Path, data: str | bytes) -> Path:
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


# ---------------------------------------------------------------------------------------------
# read_parallel


def test_read_parallel_lines(tmp_path):
    # CRLF endings, no final newline, an empty line, and U+2028 / form feed inside lines
    # (str.splitlines would split on those; files are split on '\n' only, like wc -l)
    src = write(tmp_path / "a.src", "uno\r\n\r\ntres\u2028bis\x0cx")
    tgt = write(tmp_path / "a.tgt", "one\n\nthree\n")
    assert read_parallel(src, tgt) == (["uno", "", "tres\u2028bis\x0cx"], ["one", "", "three"])


def test_missing_file(tmp_path):
    src = write(tmp_path / "a.src", "x\n")
    with pytest.raises(DataError, match=r"a\.tgt: no such file"):
        read_parallel(src, tmp_path / "a.tgt")


def test_line_counts_differ(tmp_path):
    src = write(tmp_path / "a.src", "a\nb\nc\n")
    tgt = write(tmp_path / "a.tgt", "a\nb\n")
    with pytest.raises(DataError) as e:
        read_parallel(src, tgt)
    msg = str(e.value)
    assert "\n" not in msg
    assert f"{src} has 3 lines" in msg and f"{tgt} has 2" in msg


def test_invalid_utf8_names_file_and_line(tmp_path):
    src = write(tmp_path / "a.src", "a\nb\nc\n")
    tgt = write(tmp_path / "a.tgt", b"ok\nfine\nbad \xff byte\n")
    with pytest.raises(
        DataError, match=rf"^{re.escape(str(tgt))}: line 3: invalid UTF-8 \(bytes ff\)$"
    ):
        read_parallel(src, tgt)


def test_empty_split(tmp_path):
    src = write(tmp_path / "a.src", "")
    tgt = write(tmp_path / "a.tgt", "")
    with pytest.raises(DataError, match=rf"^{re.escape(str(src))}: empty split"):
        read_parallel(src, tgt)


# ---------------------------------------------------------------------------------------------
# ParallelDataset


def test_dataset_from_flat_ids_and_offsets():
    """What ``ParallelDataset.load`` gives it: flat ids and (N + 1,) offsets per side."""
    src = [[4, 5, 6], [], [9]]
    tgt = [[1], [2, 3], []]
    ds = ParallelDataset(
        np.array([4, 5, 6, 9], dtype=np.int16),
        np.array([0, 3, 3, 4], dtype=np.int64),
        np.array([1, 2, 3], dtype=np.int16),
        np.array([0, 1, 3, 3], dtype=np.int64),
    )
    assert len(ds) == 3
    assert ds.src_lengths.tolist() == [3, 0, 1] and ds.src_lengths.dtype == np.uint16
    assert ds.tgt_lengths.tolist() == [1, 2, 0]
    for i in range(3):
        s, t = ds[i]
        assert s.tolist() == src[i] and t.tolist() == tgt[i]
    with pytest.raises(ValueError):  # one source sentence, no target
        ParallelDataset(np.array([1]), np.array([0, 1]), np.array([]), np.array([0]))


@pytest.mark.parametrize("block", [dataset_mod.LENGTH_BLOCK, 2, 1])
def test_lengths_of_offsets_in_blocks(block, monkeypatch):
    monkeypatch.setattr(dataset_mod, "LENGTH_BLOCK", block)
    offsets = np.array([0, 3, 3, 70_003, 70_010, 70_011], dtype=np.int64)
    lengths = lengths_of(offsets)
    assert lengths.tolist() == [3, 0, 70_000, 7, 1] and lengths.dtype == np.uint32
    small = lengths_of(np.array([0, 2, 65_537], dtype=np.int64))
    assert small.tolist() == [2, 65_535] and small.dtype == np.uint16
    assert lengths_of(np.zeros(1, dtype=np.int64)).tolist() == []
    with pytest.raises(ValueError, match="offsets decrease after position 1"):
        lengths_of(np.array([0, 4, 2, 5], dtype=np.int64))


# ---------------------------------------------------------------------------------------------
# collate


def examples() -> list[tuple[int, np.ndarray, np.ndarray]]:
    rows = [
        (10, [11, 12], [21, 22, 23]),
        (11, [13, 14, 15, 16], [24]),
        (12, [], [25, 26]),  # empty source: becomes [eos]
        (13, [17, 18], []),  # tie with index 10 on source length: keeps input order
    ]
    return [(i, np.array(s, dtype=np.uint16), np.array(t, dtype=np.uint16)) for i, s, t in rows]


def test_collate_reference_layout():
    b = collate(examples(), PAD, BOS, EOS)
    P, B, E = PAD, BOS, EOS
    assert b.index.tolist() == [11, 10, 13, 12]  # source length descending, stable
    assert b.src.tolist() == [
        [13, 14, 15, 16, E],
        [11, 12, E, P, P],
        [17, 18, E, P, P],
        [E, P, P, P, P],
    ]
    assert b.src_lengths.tolist() == [5, 3, 3, 1]
    assert b.tgt_in.tolist() == [
        [B, 24, P, P],
        [B, 21, 22, 23],
        [B, P, P, P],
        [B, 25, 26, P],
    ]
    assert b.tgt_out.tolist() == [
        [24, E, P, P],
        [21, 22, 23, E],
        [E, P, P, P],
        [25, 26, E, P],
    ]
    for t in (b.src, b.src_lengths, b.tgt_in, b.tgt_out, b.index):
        assert t.dtype == torch.int64
    assert b.n_tgt_tokens == 2 + 4 + 1 + 3
    assert len(b) == 4


def test_collate_shift_pad_and_lengths_on_random_rows():
    rng = np.random.default_rng(0)
    rows = []
    for i in range(30):
        s = rng.integers(8, 50, size=int(rng.integers(0, 12)))
        t = rng.integers(8, 50, size=int(rng.integers(0, 12)))
        rows.append((100 + i, s, t))
    b = collate(rows, PAD, BOS, EOS)
    assert (b.src_lengths[:-1] >= b.src_lengths[1:]).all()
    by_index = {i: (s, t) for i, s, t in rows}
    for r, idx in enumerate(b.index.tolist()):
        s, t = by_index[idx]
        n, m = len(s), len(t)
        assert b.src_lengths[r] == n + 1
        assert b.src[r, :n].tolist() == s.tolist() and b.src[r, n] == EOS
        assert (b.src[r, n + 1 :] == PAD).all()
        # tgt_in is tgt_out shifted right by one, bos first
        assert b.tgt_in[r, 0] == BOS
        assert b.tgt_in[r, 1 : m + 1].tolist() == b.tgt_out[r, :m].tolist() == t.tolist()
        assert b.tgt_out[r, m] == EOS
        assert (b.tgt_out[r, m + 1 :] == PAD).all() and (b.tgt_in[r, m + 1 :] == PAD).all()
    assert b.src.shape[1] == int(b.src_lengths.max())
    assert b.n_tgt_tokens == int((b.tgt_out != PAD).sum())


def test_batch_to_keeps_lengths_on_cpu():
    b = collate(examples(), PAD, BOS, EOS).to("cpu")
    assert b.src_lengths.device.type == "cpu"
    assert isinstance(b, Batch) and b.tgt_out.shape == (4, 4)


# ---------------------------------------------------------------------------------------------
# streaming reads (nmt.textio): blocks cut at newlines, chunk offsets, errors across blocks


@pytest.fixture
def tiny_blocks(monkeypatch):
    monkeypatch.setattr(textio, "BLOCK", 16)  # many blocks even for a few lines


TRICKY = "\ufeffuno\r\ndós\n\n" + "x" * 50 + "\ntres\u2028bis\x0cx\r\n\ufeffcuatro\ncinco"


@pytest.mark.parametrize("text", [TRICKY, TRICKY + "\n", "", "\ufeff", "\n", "a"])
@pytest.mark.parametrize("chunk", [1, 2, 3, 100])
def test_scan_and_chunks_match_whole_file_split(tmp_path, tiny_blocks, text, chunk):
    path = write(tmp_path / "a.txt", text)
    expected = split_lines(text)  # the whole-file reference
    h = hashlib.sha256()
    scan = textio.scan_file(path, chunk, h)
    data = path.read_bytes()
    assert h.digest() == hashlib.sha256(len(data).to_bytes(8, "little") + data).digest()
    assert scan.lines == len(expected) and scan.size == len(data)
    assert scan.starts[-1] == len(data) and len(scan.starts) - 1 == -(-len(expected) // chunk)
    chunks = [
        textio.read_chunk(path, int(a), int(b))
        for a, b in zip(scan.starts[:-1], scan.starts[1:], strict=True)
    ]
    assert all(len(c) == chunk for c in chunks[:-1])
    assert [line for c in chunks for line in c] == expected
    assert list(textio.iter_lines(path)) == expected


def test_invalid_utf8_line_number_across_blocks(tmp_path, tiny_blocks):
    lines = [f"line number {i}" for i in range(40)]
    data = ("\n".join(lines[:33]) + "\nbad \xe9 here\n").encode("latin-1")
    path = write(tmp_path / "a.txt", data)
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: line 34: invalid UTF-8"):
        textio.scan_file(path, 10)

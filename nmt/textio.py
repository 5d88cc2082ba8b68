"""Aligned text files read in bounded memory: validation, line counts, digests, line chunks.

A file is read in blocks of about BLOCK bytes cut after a newline (a UTF-8 sequence never
spans a newline, so every block decodes on its own), so memory stays bounded by a block
whatever the file's size. Lines are split on '\\n' only, like `wc -l`; a leading BOM, a
trailing '\\r' per line and the empty string after a final newline are dropped.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

BLOCK = 8 << 20  # bytes read at a time
BOM = b"\xef\xbb\xbf"


class DataError(Exception):
    """Bad input data. The message is one line naming the file (and line) and what is wrong."""


def _split(text: str) -> list[str]:
    """Lines of text that starts at a line start: '\\n' only, final empty string and a
    trailing '\\r' per line dropped."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def split_lines(text: str) -> list[str]:
    """Split text on '\\n' only, like `wc -l` (not str.splitlines, which also splits on
    U+2028, form feeds, ...). A leading BOM, a trailing '\\r' per line and the empty string
    after a final newline are dropped."""
    if text.startswith("\ufeff"):
        text = text[1:]
    return _split(text)


def _blocks(f: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """(byte offset, bytes) pieces of a file, each ending with a newline except maybe the last."""
    size = BLOCK
    offset = 0
    rest = b""
    while True:
        data = f.read(size)
        if not data:
            if rest:
                yield offset, rest
            return
        buf = rest + data if rest else data
        cut = buf.rfind(b"\n") + 1
        if cut == 0:  # one line longer than a block: keep reading
            rest = buf
            continue
        yield offset, buf[:cut]
        offset += cut
        rest = buf[cut:]


def _open(path: Path) -> BinaryIO:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        return path.open("rb")
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None


@dataclass
class FileScan:
    """A validated file: its line count and the byte offsets that cut it into chunks.

    starts: int64 byte offsets of lines 0, chunk, 2 * chunk, ... (a BOM skipped), then the file
    size, so chunk j is bytes starts[j]:starts[j + 1].
    """

    path: Path
    size: int
    lines: int
    starts: np.ndarray


def scan_file(path: Path, chunk_lines: int, digest: hashlib._Hash | None = None) -> FileScan:
    """Validate a file as UTF-8 block by block, count its lines and find the byte offset of
    every chunk_lines-th line; feed the file's length (8 bytes, little endian) and bytes to
    `digest`. DataError on a missing or unreadable file or bytes that are not UTF-8."""
    path = Path(path)
    with _open(path) as f:
        size = f.seek(0, 2)
        f.seek(0)
        if digest is not None:
            digest.update(size.to_bytes(8, "little"))
        first = 0
        lines = 0  # newlines seen so far
        last = b""
        found = [np.zeros(1, dtype=np.int64)]
        for offset, block in _blocks(f):
            if digest is not None:
                digest.update(block)
            if offset == 0 and block.startswith(BOM):
                first = len(BOM)
                found[0][0] = first
            try:
                block.decode("utf-8")
            except UnicodeDecodeError as e:
                line = lines + block.count(b"\n", 0, e.start) + 1
                bad = block[e.start : e.end].hex(" ")
                raise DataError(f"{path}: line {line}: invalid UTF-8 (bytes {bad})") from None
            newlines = np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == 10)
            # the line after newline k has index lines + k + 1; keep those divisible by chunk
            k0 = (-(lines + 1)) % chunk_lines
            found.append(offset + newlines[k0::chunk_lines].astype(np.int64) + 1)
            lines += len(newlines)
            last = block[-1:]
    if size > first and last != b"\n":
        lines += 1  # a final line without a newline
    starts = np.concatenate(found)
    starts = np.append(starts[starts < size], size) if lines else np.array([size], np.int64)
    return FileScan(path, size, lines, starts)


def read_chunk(path: Path, start: int, end: int) -> list[str]:
    """Lines in bytes start:end of a file (start at a line start, past any BOM)."""
    with path.open("rb") as f:
        f.seek(start)
        data = f.read(end - start)
    return _split(data.decode("utf-8"))


def iter_lines(path: Path) -> Iterator[str]:
    """Every line of a UTF-8 file, read block by block."""
    with Path(path).open("rb") as f:
        for offset, block in _blocks(f):
            if offset == 0 and block.startswith(BOM):
                block = block[len(BOM) :]
            yield from _split(block.decode("utf-8"))


def read_parallel(src_path: Path, tgt_path: Path) -> tuple[list[str], list[str]]:
    """Aligned source/target lines of two files (whole, in memory: small files only).

    Raises DataError for a missing file, different line counts, bytes that are not UTF-8, or an
    empty split. Lines are split on '\\n' only; a trailing '\\r' per line is dropped.
    """
    src_path, tgt_path = Path(src_path), Path(tgt_path)
    check_pair(scan_file(src_path, 1 << 62), scan_file(tgt_path, 1 << 62))
    return list(iter_lines(src_path)), list(iter_lines(tgt_path))


def check_pair(src: FileScan, tgt: FileScan) -> None:
    """DataError unless both files have the same, non-zero number of lines."""
    if src.lines != tgt.lines:
        raise DataError(
            f"line counts differ: {src.path} has {src.lines} lines, {tgt.path} has {tgt.lines}"
        )
    if not src.lines:
        raise DataError(f"{src.path}: empty split (no lines in it or in {tgt.path})")

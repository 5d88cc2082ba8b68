"""``python -m nmt.translate ckpt=PATH[,PATH...] input=FILE|- output=FILE|- decode.beam_size=5``.

Raw text in, detokenised text out, one line per input line (empty lines stay empty). Needs
nothing but the checkpoint(s); several comma-separated checkpoints are ensembled.
``alignment_output=FILE`` also writes each translation's hard alignment, one Pharaoh line
(``0-0 1-2 2-1``, source-target, 0-based) per input line, in word positions (the
whitespace-separated words of the input line and of the output line), or subword positions
with ``alignment_unit=subword`` (SentencePiece pieces, eos excluded).

Streaming: the input is read incrementally and translated ``chunk_lines`` lines at a time
(each chunk sorted by length into ``decode.max_tokens`` batches), and each chunk's translations
are written in input order and flushed before the next chunk is read, so memory stays bounded
whatever the input's size. From a pipe or a terminal a chunk is whatever lines have arrived,
so an interactive producer gets each line's translation without sending more. A file input is
checked (UTF-8) and counted first: the progress bar knows the total. ``quantize=int8``
decodes with an int8 copy of the model on the CPU (nmt/quantize.py).
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from nmt.cli import log_to_stderr, to_config, user_errors
from nmt.config import TranslateConfig

if TYPE_CHECKING:
    import torch

    from nmt.search import Hypothesis
    from nmt.tokenizer import Tokenizer

ConfigStore.instance().store(name="translate_schema", node=TranslateConfig)
log = logging.getLogger("nmt.translate")


class InputError(Exception):
    """Unreadable input text or an output that cannot be written (one-line message)."""


def check_writable(key: str, path: str | None) -> None:
    """Fail before any work when ``path`` (``-`` = stdout) could not be written."""
    if path is None or path == "-":
        return
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        raise InputError(f"{key}={path}: is a directory")
    if not parent.is_dir():
        raise InputError(f"{key}={path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise InputError(f"{key}={path}: not writable")


def read_lines(path: str) -> list[str]:
    """Lines of ``path`` (``-`` = stdin), checked for UTF-8 with the failing line number.

    Read as prepare reads training text: a leading UTF-8 BOM and a trailing '\r' per line are
    dropped."""
    return list(iter_lines(path))


def _decode_line(raw: bytes, name: str, n: int) -> str:
    if n == 1 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    if raw.endswith(b"\n"):
        raw = raw[:-1]
    try:
        return raw.decode("utf-8").rstrip("\r")
    except UnicodeDecodeError as e:
        raise InputError(f"{name}:{n}: not valid UTF-8 (byte {e.start + 1})") from None


def iter_lines(path: str) -> Iterator[str]:
    """The lines of ``path`` (``-`` = stdin) one at a time, as ``read_lines`` reads them: each
    line is yielded as soon as it has been read (an interactive producer gets every line
    through without sending more)."""
    name = "<stdin>" if path == "-" else path
    try:
        f = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115
    except OSError as e:
        raise InputError(f"{name}: cannot read input ({e.strerror})") from None
    try:
        for n, raw in enumerate(f, 1):
            yield _decode_line(raw, name, n)
    except OSError as e:
        raise InputError(f"{name}: cannot read input ({e.strerror})") from None
    finally:
        if f is not sys.stdin.buffer:
            f.close()


def count_lines(path: str) -> int:
    """Lines in the file ``path``, all checked for UTF-8 (a pass before translating, so a bad
    line fails before any output and the progress bar knows the total)."""
    return sum(1 for _ in iter_lines(path))


def is_file(path: str) -> bool:
    """``path`` is a regular file (not ``-``, a pipe or a terminal)."""
    return path != "-" and Path(path).is_file()


def chunks(path: str, size: int, interactive: bool) -> Iterator[list[str]]:
    """The lines of ``path`` in chunks of at most ``size``. ``interactive``: a chunk is what
    has arrived so far (at least one line), so no line waits for input after it; otherwise
    chunks are full. Read by a thread into a bounded queue: memory stays bounded."""
    lines: queue.Queue[str | BaseException | None] = queue.Queue(maxsize=size)

    def read() -> None:
        try:
            for line in iter_lines(path):
                lines.put(line)
        except BaseException as e:  # handed to the consumer, raised there
            lines.put(e)
        lines.put(None)

    threading.Thread(target=read, name="nmt-read", daemon=True).start()
    done = False
    while not done:
        chunk: list[str] = []
        while len(chunk) < size:
            try:
                item = lines.get(block=not (interactive and chunk))
            except queue.Empty:
                break
            if isinstance(item, BaseException):
                raise item
            if item is None:
                done = True
                break
            chunk.append(item)
        if chunk:
            yield chunk


def write_lines(path: str, lines: list[str]) -> None:
    text = "".join(line + "\n" for line in lines)
    if path == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        Path(path).write_text(text, encoding="utf-8")


class Writer:
    """Lines written and flushed as they come: to stdout (``-``) or a file opened once."""

    def __init__(self, path: str) -> None:
        self.file: TextIO = sys.stdout if path == "-" else open(path, "w", encoding="utf-8")  # noqa: SIM115

    def write(self, lines: list[str]) -> None:
        self.file.write("".join(line + "\n" for line in lines))
        self.file.flush()

    def close(self) -> None:
        if self.file is not sys.stdout:
            self.file.close()


def run(cfg: TranslateConfig) -> None:
    """Stream: read a chunk, translate it (sorted into token-budget batches), write it in
    input order, flush, read the next. Translations do not depend on their batch, so the output
    is the same whatever the chunk size."""
    from tqdm import tqdm

    from nmt.quantize import quantize_model
    from nmt.runtime import pick_device, tune_malloc
    from nmt.translation import best_texts, load_for_decoding, translate_lines

    tune_malloc()
    check_writable("output", cfg.output)
    check_writable("nbest_output", cfg.nbest_output)
    check_writable("alignment_output", cfg.alignment_output)
    regular = is_file(cfg.input)
    total = count_lines(cfg.input) if regular else None
    device = pick_device("cpu" if cfg.quantize != "none" and cfg.device == "auto" else cfg.device)
    model, tokenizer = load_for_decoding(cfg.ckpt, device)
    model = quantize_model(model, cfg.quantize)
    progress = cfg.progress and regular and sys.stderr.isatty()
    out = Writer(cfg.output)
    nbest = Writer(cfg.nbest_output) if cfg.nbest_output else None
    align = Writer(cfg.alignment_output) if cfg.alignment_output else None
    done = 0
    try:
        with tqdm(total=total, disable=not progress, desc="translate", unit="line") as bar:
            for lines in chunks(cfg.input, cfg.chunk_lines, interactive=not regular):
                hyps = translate_lines(model, tokenizer, lines, cfg.decode, device)
                out.write(best_texts(tokenizer, lines, hyps))
                if nbest is not None:
                    nbest.write(nbest_rows(tokenizer, hyps, done))
                if align is not None:
                    align.write(alignment_rows(cfg, model, tokenizer, lines, hyps, device))
                done += len(lines)
                bar.update(len(lines))
    finally:
        for writer in (out, nbest, align):
            if writer is not None:
                writer.close()
    log.info("translated %d lines with %s", done, cfg.ckpt)


def nbest_rows(tokenizer: Tokenizer, hyps: list[list[Hypothesis]], first: int) -> list[str]:
    """``i ||| text ||| score`` for every hypothesis; ``i`` counts input lines from ``first``."""
    rows = []
    for i, hs in enumerate(hyps, first):
        texts = tokenizer.decode_tgt([h.tokens for h in hs])
        rows += [f"{i} ||| {t} ||| {h.score:.4f}" for t, h in zip(texts, hs, strict=True)]
    return rows


def alignment_rows(
    cfg: TranslateConfig,
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    lines: list[str],
    hyps: list[list[Hypothesis]],
    device: torch.device,
) -> list[str]:
    """Pharaoh ``i-j`` lines (source i, target j, 0-based) for each best hypothesis, in word
    or subword positions (``cfg.alignment_unit``); see ``nmt.alignment``."""
    from nmt.alignment import alignment_line
    from nmt.translation import attach_attention

    translations = attach_attention(model, tokenizer, lines, [h[0] for h in hyps], device)
    return [
        alignment_line(t.attention, t.src_pieces, t.tgt_pieces, cfg.alignment_unit)
        for t in translations
    ]


@hydra.main(version_base="1.3", config_path="configs", config_name="translate")
def main(dcfg: DictConfig) -> None:
    from nmt.checkpoint import CheckpointError

    log_to_stderr()
    with user_errors(InputError, CheckpointError, ValueError):
        run(to_config(dcfg, TranslateConfig))


if __name__ == "__main__":
    from nmt.evaluate import quote_path_lists  # ckpt=a.pt,b.pt: one value, not a sweep

    sys.argv = quote_path_lists(sys.argv)
    main()

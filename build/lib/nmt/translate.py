"""``python -m nmt.translate ckpt=PATH[,PATH...] input=FILE|- output=FILE|- decode.beam_size=5``.

Raw text in, detokenised text out, one line per input line (empty lines stay empty). Needs
nothing but the checkpoint(s); several comma-separated checkpoints are ensembled.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from nmt.config import TranslateConfig

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
    name = "<stdin>" if path == "-" else path
    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as e:
        raise InputError(f"{name}: cannot read input ({e.strerror})") from None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    out = []
    for n, raw in enumerate(lines, 1):
        try:
            out.append(raw.decode("utf-8").rstrip("\r"))
        except UnicodeDecodeError as e:
            raise InputError(f"{name}:{n}: not valid UTF-8 (byte {e.start + 1})") from None
    return out


def write_lines(path: str, lines: list[str]) -> None:
    text = "".join(line + "\n" for line in lines)
    if path == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        Path(path).write_text(text, encoding="utf-8")


def run(cfg: TranslateConfig) -> None:
    from nmt.checkpoint import load_for_decoding
    from nmt.runtime import pick_device, tune_malloc
    from nmt.search import translate_lines

    tune_malloc()
    check_writable("output", cfg.output)
    check_writable("nbest_output", cfg.nbest_output)
    device = pick_device(cfg.device)
    model, tokenizer = load_for_decoding(cfg.ckpt, device)
    lines = read_lines(cfg.input)
    progress = cfg.progress and cfg.input != "-" and sys.stderr.isatty()
    hyps = translate_lines(model, tokenizer, lines, cfg.decode, device, progress=progress)
    best = tokenizer.decode_tgt([h[0].tokens for h in hyps])
    write_lines(
        cfg.output, [t if line.strip() else "" for t, line in zip(best, lines, strict=True)]
    )
    if cfg.nbest_output:
        rows = []
        for i, hs in enumerate(hyps):
            texts = tokenizer.decode_tgt([h.tokens for h in hs])
            rows += [f"{i} ||| {t} ||| {h.score:.4f}" for t, h in zip(texts, hs, strict=True)]
        write_lines(cfg.nbest_output, rows)
    log.info("translated %d lines with %s", len(lines), cfg.ckpt)


@hydra.main(version_base="1.3", config_path="configs", config_name="translate")
def main(dcfg: DictConfig) -> None:
    from nmt.checkpoint import CheckpointError

    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        cfg: TranslateConfig = OmegaConf.to_object(dcfg)  # type: ignore[assignment]
        run(cfg)
    except (InputError, CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

"""SentencePiece tokenization: one joint model for both sides, or one model per side.

Special ids (pad/unk/bos/eos) are set explicitly when a model is trained and read back from the
(target) model afterwards; nothing else in the package hard-codes them. A tokenizer is built from
serialized model protos, so a checkpoint can carry it (`to_bytes` / `from_bytes`).

Target ids are *model* ids: with a target vocabulary (`nmt.vocab.TargetVocab`, from
`tokenizer.target_vocab=used`) `encode_tgt` maps SentencePiece ids to the rows of the output
layer and `decode_tgt` / `tgt_pieces` map them back; without one (`all`, and checkpoints from
before the option) the two are the same numbers. Source ids are always SentencePiece ids.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import sentencepiece as spm

from nmt.config import ConfigError, TokenizerConfig
from nmt.textio import iter_lines, scan_file
from nmt.textio import split_lines as split_lines  # re-exported
from nmt.vocab import TargetVocab

logger = logging.getLogger(__name__)

JOINT_MODEL = "spm.model"
SRC_MODEL = "src.model"
TGT_MODEL = "tgt.model"
TGT_VOCAB = "tgt_vocab.npy"  # beside the model(s): the target vocabulary's SentencePiece ids


def resolve_threads(num_threads: int) -> int:
    """0 (or less) means every core."""
    return num_threads if num_threads > 0 else (os.cpu_count() or 1)


def _iter_files(files: list[Path]) -> Iterator[str]:
    for path in files:
        yield from iter_lines(path)


def _text_bytes(files: list[Path]) -> int:
    return sum(Path(p).stat().st_size for p in files)


def sample_bounded(cfg: TokenizerConfig, files: list[Path]) -> bool:
    """Whether ``input_sample_mb`` bounds the sample of a model trained on ``files``."""
    return 0 < cfg.input_sample_mb * 1e6 < _text_bytes(files)


def model_files(cfg: TokenizerConfig, src: Path, tgt: Path) -> list[list[Path]]:
    """The training files of each SentencePiece model: both sides (joint), or one per side."""
    return [[src, tgt]] if cfg.joint else [[src], [tgt]]


def sample_size(cfg: TokenizerConfig, files: list[Path], lines: int) -> int:
    """How many of the ``lines`` lines of ``files`` SentencePiece trains on: at most
    ``input_sentence_size`` (0: no bound), and, when the text is larger than
    ``input_sample_mb``, that budget's share of the lines (SentencePiece's trainer needs about
    20 bytes of memory per byte of sampled text, so a sentence count alone does not bound it:
    longer sentences cost more)."""
    n = lines if cfg.input_sentence_size <= 0 else min(lines, cfg.input_sentence_size)
    budget, total = cfg.input_sample_mb * 1e6, _text_bytes(files)
    if 0 < budget < total:
        n = min(n, max(1, int(lines * budget / total)))
    return n


def sampled_lines(files: list[Path], lines: int, n: int, seed: int) -> Iterator[str]:
    """``n`` of the ``lines`` lines of ``files``, drawn uniformly without replacement by a
    generator seeded with ``seed``, in file order. (SentencePiece's own sampling,
    ``input_sentence_size``, gave another model in every process for the same seed; this one
    is the same in any process.)"""
    if n >= lines:
        yield from _iter_files(files)
        return
    keep = np.random.default_rng(seed).choice(lines, n, replace=False, shuffle=False)
    wanted = iter(np.sort(keep).tolist())
    del keep
    want = next(wanted, -1)
    for i, line in enumerate(_iter_files(files)):
        if i == want:
            yield line
            want = next(wanted, -1)
            if want < 0:
                return


def _train_model(
    cfg: TokenizerConfig, files: list[Path], num_threads: int, lines: int | None = None
) -> bytes:
    """Train one SentencePiece model on the lines of `files` (or a sample of them, see
    ``sample_size``) and return its serialized proto. ``lines``: their line count when the
    caller has it (prepare's validation does), else they are read once to count it."""
    if lines is None:
        lines = sum(scan_file(Path(p), 1 << 62).lines for p in files)
    n = sample_size(cfg, files, lines)
    sentences = sampled_lines(files, lines, n, cfg.seed)
    spm.set_random_generator_seed(cfg.seed)  # SentencePiece's shuffling
    writer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=sentences,
        model_writer=writer,
        vocab_size=cfg.vocab_size,
        model_type=cfg.model_type,
        character_coverage=cfg.character_coverage,
        # the sample is drawn above; SentencePiece then keeps all n (its shuffle, which a size
        # of 0 would skip, makes the model it trained before sampling moved here)
        input_sentence_size=n if n < lines else cfg.input_sentence_size,
        shuffle_input_sentence=True,
        pad_id=cfg.pad_id,
        unk_id=cfg.unk_id,
        bos_id=cfg.bos_id,
        eos_id=cfg.eos_id,
        num_threads=resolve_threads(num_threads),
        minloglevel=1,
    )
    return writer.getvalue()


class Tokenizer:
    """One joint SentencePiece model, or one per side.

    Encoding returns subword ids without bos/eos; `decode_tgt` drops pad/bos/eos ids. Target
    ids are model ids (see the module docstring); `tgt_vocab` is None when they are the
    SentencePiece ids themselves.
    """

    joint: bool
    pad_id: int
    unk_id: int
    bos_id: int
    eos_id: int
    src_vocab_size: int
    tgt_vocab_size: int  # rows of the output layer: len(tgt_vocab), or every target piece
    sp_tgt_vocab_size: int  # pieces of the target SentencePiece model
    tgt_vocab: TargetVocab | None

    def __init__(
        self,
        src_proto: bytes,
        tgt_proto: bytes,
        joint: bool,
        tgt_keep: list[int] | np.ndarray | None = None,
    ) -> None:
        """``tgt_keep``: the SentencePiece id of each target model id (``TargetVocab.keep``);
        None: target model ids are SentencePiece ids."""
        self.joint = joint
        self._src_proto = src_proto
        self._tgt_proto = tgt_proto
        self._src = spm.SentencePieceProcessor(model_proto=src_proto)
        self._tgt = self._src if joint else spm.SentencePieceProcessor(model_proto=tgt_proto)
        self.pad_id = self._tgt.pad_id()
        self.unk_id = self._tgt.unk_id()
        self.bos_id = self._tgt.bos_id()
        self.eos_id = self._tgt.eos_id()
        src_special = (
            self._src.pad_id(),
            self._src.unk_id(),
            self._src.bos_id(),
            self._src.eos_id(),
        )
        if src_special != (self.pad_id, self.unk_id, self.bos_id, self.eos_id):
            raise ValueError(
                f"source and target models disagree on special ids: {src_special} vs "
                f"{(self.pad_id, self.unk_id, self.bos_id, self.eos_id)}"
            )
        self.src_vocab_size = self._src.vocab_size()
        self.sp_tgt_vocab_size = self._tgt.vocab_size()
        self.tgt_vocab = (
            None
            if tgt_keep is None
            else TargetVocab(tgt_keep, self.sp_tgt_vocab_size, self.special_ids)
        )
        self.tgt_vocab_size = (
            len(self.tgt_vocab) if self.tgt_vocab is not None else self.sp_tgt_vocab_size
        )
        self._specials = {self.pad_id, self.bos_id, self.eos_id}

    @property
    def special_ids(self) -> tuple[int, int, int, int]:
        """(pad, unk, bos, eos): the same numbers as model ids and as SentencePiece ids."""
        return (self.pad_id, self.unk_id, self.bos_id, self.eos_id)

    def spm_only(self) -> Tokenizer:
        """This tokenizer without a target vocabulary: target ids are SentencePiece ids."""
        if self.tgt_vocab is None:
            return self
        return Tokenizer(self._src_proto, self._tgt_proto, self.joint)

    def with_target_vocab(self, vocab: TargetVocab) -> Tokenizer:
        """This tokenizer's SentencePiece model(s) with ``vocab`` as its target vocabulary."""
        return Tokenizer(self._src_proto, self._tgt_proto, self.joint, vocab.keep)

    @classmethod
    def train(
        cls,
        cfg: TokenizerConfig,
        src_files: list[Path],
        tgt_files: list[Path],
        out_dir: Path,
        num_threads: int = 0,
        lines: tuple[int, int] | None = None,
    ) -> Tokenizer:
        """Train on the given text files and write the model(s) into `out_dir`.

        Joint: one model on both sides' lines -> out_dir/spm.model. Separate: out_dir/src.model
        on `src_files` and out_dir/tgt.model on `tgt_files`. ``lines``: the line counts of
        `src_files` and of `tgt_files` when known (saves reading them to count).
        """
        out_dir.mkdir(parents=True, exist_ok=True)
        src_lines, tgt_lines = lines if lines is not None else (None, None)
        if cfg.joint:
            both = None if lines is None else sum(lines)
            proto = _train_model(cfg, list(src_files) + list(tgt_files), num_threads, both)
            (out_dir / JOINT_MODEL).write_bytes(proto)
            return cls(proto, proto, joint=True)
        src_proto = _train_model(cfg, list(src_files), num_threads, src_lines)
        tgt_proto = _train_model(cfg, list(tgt_files), num_threads, tgt_lines)
        (out_dir / SRC_MODEL).write_bytes(src_proto)
        (out_dir / TGT_MODEL).write_bytes(tgt_proto)
        return cls(src_proto, tgt_proto, joint=False)

    @classmethod
    def load(cls, out_dir: Path) -> Tokenizer:
        """Read out_dir/spm.model, or out_dir/src.model and out_dir/tgt.model, and the target
        vocabulary out_dir/tgt_vocab.npy when there is one."""
        vocab_path = out_dir / TGT_VOCAB
        keep = np.load(vocab_path) if vocab_path.is_file() else None
        joint_path = out_dir / JOINT_MODEL
        if joint_path.exists():
            proto = joint_path.read_bytes()
            return cls(proto, proto, joint=True, tgt_keep=keep)
        src, tgt = (out_dir / SRC_MODEL).read_bytes(), (out_dir / TGT_MODEL).read_bytes()
        return cls(src, tgt, joint=False, tgt_keep=keep)

    def save(self, out_dir: Path) -> None:
        """Write the model(s) as ``train`` does: spm.model, or src.model and tgt.model; and
        tgt_vocab.npy (int32) when there is a target vocabulary."""
        out_dir.mkdir(parents=True, exist_ok=True)
        if self.joint:
            (out_dir / JOINT_MODEL).write_bytes(self._src_proto)
        else:
            (out_dir / SRC_MODEL).write_bytes(self._src_proto)
            (out_dir / TGT_MODEL).write_bytes(self._tgt_proto)
        if self.tgt_vocab is not None:
            np.save(out_dir / TGT_VOCAB, self.tgt_vocab.keep.astype(np.int32))
        else:
            (out_dir / TGT_VOCAB).unlink(missing_ok=True)

    def encode_src(self, lines: list[str], num_threads: int = 0) -> list[list[int]]:
        """Source lines -> subword ids (no bos/eos), with SentencePiece's threaded batch API."""
        ids: list[list[int]] = self._src.encode(lines, num_threads=resolve_threads(num_threads))
        return ids

    def encode_tgt(self, lines: list[str], num_threads: int = 0) -> list[list[int]]:
        """Target lines -> model ids (no bos/eos); pieces outside the target vocabulary -> unk."""
        ids: list[list[int]] = self._tgt.encode(lines, num_threads=resolve_threads(num_threads))
        if self.tgt_vocab is None:
            return ids
        return [self.tgt_vocab.model_list(seq) for seq in ids]

    def decode_tgt(self, ids: list[list[int]]) -> list[str]:
        """Target model ids -> detokenized text; pad/bos/eos ids are dropped first."""
        cleaned = [[i for i in seq if i not in self._specials] for seq in ids]
        if self.tgt_vocab is not None:
            cleaned = [self.tgt_vocab.sp_list(seq) for seq in cleaned]
        text: list[str] = self._tgt.decode(cleaned)
        return text

    def src_pieces(self, line: str) -> list[str]:
        """Source subword pieces of one line (for inspection, e.g. attention heatmap labels)."""
        pieces: list[str] = self._src.encode(line, out_type=str)
        return pieces

    def tgt_pieces(self, ids: list[int]) -> list[str]:
        """Target pieces of a list of model ids (for inspection)."""
        if self.tgt_vocab is not None:
            ids = self.tgt_vocab.sp_list(ids)
        return [self._tgt.id_to_piece(i) for i in ids]

    def to_bytes(self) -> dict:
        """{"joint": bool, "src": bytes, "tgt": bytes}: serialized model protos, for checkpoints,
        and "tgt_keep": list[int], the target vocabulary, when there is one (checkpoints from
        before target vocabularies, and ``target_vocab=all``, have no such key)."""
        d: dict = {"joint": self.joint, "src": self._src_proto, "tgt": self._tgt_proto}
        if self.tgt_vocab is not None:
            d["tgt_keep"] = self.tgt_vocab.keep.tolist()
        return d

    @classmethod
    def from_bytes(cls, d: dict) -> Tokenizer:
        keep = d.get("tgt_keep")
        return cls(
            bytes(d["src"]),
            bytes(d["tgt"]),
            joint=bool(d["joint"]),
            tgt_keep=None if keep is None else [int(i) for i in keep],
        )

    def fingerprint(self) -> str:
        """sha256 of the model bytes and the target vocabulary: equal fingerprints mean
        identical vocabularies (without a target vocabulary, the same as before there was one)."""
        h = hashlib.sha256()
        h.update(b"joint" if self.joint else b"separate")
        h.update(self._src_proto)
        h.update(self._tgt_proto)
        if self.tgt_vocab is not None:
            h.update(b"tgt_keep")
            h.update(self.tgt_vocab.keep.astype("<i8").tobytes())
        return h.hexdigest()


class TokenizerSourceError(ConfigError):
    """``tokenizer.model`` names nothing a tokenizer can be read from (one-line message)."""


def read_tokenizer(spec: str) -> Tokenizer:
    """The SentencePiece model(s) ``tokenizer.model`` names, to reuse instead of training:

    - an nmt checkpoint (``*.pt``): the tokenizer it carries, with its target vocabulary (the
      rows of its output layer) when it has one;
    - a directory: a prepared cache or any folder with ``spm.model``, or ``src.model`` and
      ``tgt.model`` (the SentencePiece model(s) only: a cache's target vocabulary belongs to
      its data);
    - a SentencePiece ``.model`` file: one joint model for both sides.
    """
    path = Path(spec)
    if path.is_dir():
        if not ((path / JOINT_MODEL).is_file() or (path / SRC_MODEL).is_file()):
            raise TokenizerSourceError(
                f"tokenizer.model={spec}: the directory holds no {JOINT_MODEL} and no "
                f"{SRC_MODEL} + {TGT_MODEL}"
            )
        return _checked(spec, lambda: Tokenizer.load(path).spm_only())
    if not path.is_file():
        raise TokenizerSourceError(f"tokenizer.model={spec}: no such file or directory")
    if path.suffix == ".pt":
        from nmt.checkpoint import load_checkpoint  # checkpoint imports this module

        return Tokenizer.from_bytes(load_checkpoint(path)["tokenizer"])
    proto = path.read_bytes()
    return _checked(spec, lambda: Tokenizer(proto, proto, joint=True))


def _checked(spec: str, make: Callable[[], Tokenizer]) -> Tokenizer:
    try:
        return make()
    except (OSError, RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TokenizerSourceError(
            f"tokenizer.model={spec}: not a SentencePiece model nmt can use ({first[:160]})"
        ) from None

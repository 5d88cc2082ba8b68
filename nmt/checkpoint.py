"""Checkpoints: atomic save, safe load, and rebuilding a model from a checkpoint alone.

A checkpoint is a plain dict saved with ``torch.save`` and read back with
``torch.load(weights_only=True)``: tensors, numbers, strings, bytes, lists and dicts only, so
loading one never runs code. It carries the model config, the vocabulary sizes and special ids,
and the SentencePiece model bytes with the target vocabulary (``Tokenizer.to_bytes``; none in
checkpoints from before it: then target ids are SentencePiece ids), so translation needs
nothing but the file.
"""

from __future__ import annotations

import os
import pickle
import re
import socket
import tempfile
import warnings
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch

from nmt.config import ModelConfig, with_old_values
from nmt.faults import fault_point
from nmt.model import Seq2Seq, build_model
from nmt.tokenizer import Tokenizer

FORMAT = "nmt-checkpoint"
VERSION = 1


class CheckpointError(Exception):
    """A checkpoint that is missing, unreadable, foreign or incompatible (one-line message)."""


def temp_file(path: Path) -> tuple[int, str]:
    """A new temporary file beside ``path`` (descriptor, name), named
    ``.NAME.HOST.PID.RANDOM.tmp``: whose file it is, so a later run can tell a killed
    writer's leftover from a live writer's file. Its mode is 0666 less the umask."""
    prefix = f".{path.name}.{socket.gethostname()}.{os.getpid()}."
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_umask())
    return fd, tmp


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    fd, tmp = temp_file(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def remove_stale_temps(directory: str | Path) -> list[Path]:
    """Remove the temporary files that writers of this host left in ``directory`` when they
    were killed (their process is gone); a live writer's files and other files are kept."""
    removed = []
    mine = re.compile(rf"\..+\.{re.escape(socket.gethostname())}\.(\d+)\.[^.]+\.tmp")
    for tmp in Path(directory).glob(".*.tmp"):
        m = mine.fullmatch(tmp.name)
        if m is None or int(m.group(1)) == os.getpid() or _alive(int(m.group(1))):
            continue
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically: temp file in the same directory, fsync, rename.

    A crash or Ctrl-C at any moment leaves either the previous file or the new one, never a
    truncated file under ``path``; a killed writer's temporary file is removed by the next
    run's ``remove_stale_temps``. The file gets the usual permissions (0666 less the umask).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file(path)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, "version": VERSION, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        fault_point("save.written")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fault_point("save.renamed")
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``); a clear one-line error otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with warnings.catch_warnings():  # torch warns about pickles it is about to refuse
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:  # weights_only refused an object that could run code
        raise CheckpointError(
            f"{path}: not an nmt checkpoint: refused by the safe loader, which reads tensors "
            "and plain data only and never a file that holds other Python objects"
        ) from None
    except Exception as e:  # truncated zip, not a torch file ...
        raise CheckpointError(
            f"{path}: not a readable nmt checkpoint (truncated, corrupt or foreign file: "
            f"{type(e).__name__})"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an nmt checkpoint (no '{FORMAT}' marker)")
    if ckpt.get("version") != VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {ckpt.get('version')} is not supported (expected {VERSION})"
        )
    for key in ("model", "model_config", "vocab", "tokenizer"):
        if key not in ckpt:
            raise CheckpointError(f"{path}: checkpoint lacks '{key}'")
    return ckpt


def model_payload(model: Seq2Seq, model_cfg: ModelConfig, tokenizer: Tokenizer) -> dict[str, Any]:
    """The part of a checkpoint needed to rebuild and run the model."""
    return {
        "model": model.state_dict(),
        "model_config": asdict(model_cfg),
        "vocab": {
            "src_vocab_size": tokenizer.src_vocab_size,
            "tgt_vocab_size": tokenizer.tgt_vocab_size,
            "pad_id": tokenizer.pad_id,
            "unk_id": tokenizer.unk_id,
            "bos_id": tokenizer.bos_id,
            "eos_id": tokenizer.eos_id,
        },
        "tokenizer": tokenizer.to_bytes(),
    }


def model_config_from(ckpt: dict[str, Any]) -> ModelConfig:
    known = {f.name for f in fields(ModelConfig)}
    values = with_old_values("model", ckpt["model_config"])
    return ModelConfig(**{k: v for k, v in values.items() if k in known})


def model_from_checkpoint(
    ckpt: dict[str, Any], device: str | torch.device = "cpu", path: str | Path = "checkpoint"
) -> tuple[Seq2Seq, Tokenizer]:
    """Rebuild the model (in eval mode, on ``device``) and its tokenizer from a loaded checkpoint."""
    vocab = ckpt["vocab"]
    model = build_model(
        model_config_from(ckpt), vocab["src_vocab_size"], vocab["tgt_vocab_size"], vocab["pad_id"]
    )
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(f"{path}: weights do not fit the model config: {first}") from None
    try:
        tokenizer = Tokenizer.from_bytes(ckpt["tokenizer"])
    except ValueError as e:  # e.g. a target vocabulary that does not fit its SentencePiece model
        raise CheckpointError(f"{path}: unusable tokenizer: {e}") from None
    if tokenizer.tgt_vocab_size != vocab["tgt_vocab_size"]:
        raise CheckpointError(
            f"{path}: its tokenizer has {tokenizer.tgt_vocab_size} target ids but the model "
            f"{vocab['tgt_vocab_size']}"
        )
    return model.to(device).eval(), tokenizer


def load_model(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[Seq2Seq, Tokenizer, dict[str, Any]]:
    """Load ``path`` and rebuild its model and tokenizer; returns the checkpoint dict too."""
    ckpt = load_checkpoint(path)
    model, tokenizer = model_from_checkpoint(ckpt, device, path)
    return model, tokenizer, ckpt


def average_checkpoints(paths: list[str | Path]) -> dict[str, Any]:
    """Average the model weights of several checkpoints of one architecture and vocabulary.

    The result keeps the first checkpoint's config and tokenizer and no trainer state, so it is a
    model-only checkpoint that translation accepts (and training does not resume from).
    """
    if not paths:
        raise CheckpointError("average: no checkpoints given")
    first = load_checkpoint(paths[0])
    total = {k: v.double() if v.is_floating_point() else v for k, v in first["model"].items()}
    for p in paths[1:]:
        ckpt = load_checkpoint(p)
        same_shape = model_config_from(ckpt) == model_config_from(first)  # old ones backfilled
        if not same_shape or ckpt["vocab"] != first["vocab"]:
            raise CheckpointError(f"{p}: model config or vocabulary differs from {paths[0]}")
        if ckpt["tokenizer"] != first["tokenizer"]:
            raise CheckpointError(f"{p}: tokenizer differs from {paths[0]}")
        for k, v in ckpt["model"].items():
            if v.is_floating_point():
                total[k] += v.double()
    n = len(paths)
    averaged = {
        k: (v / n).to(first["model"][k].dtype) if v.is_floating_point() else v
        for k, v in total.items()
    }
    return {
        "model": averaged,
        "model_config": first["model_config"],
        "vocab": first["vocab"],
        "tokenizer": first["tokenizer"],
        "averaged_from": [str(p) for p in paths],
    }

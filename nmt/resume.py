"""Continuing a run: which checkpoint to resume from, loading it into a run, the files a
run takes over from another directory, and starting from a checkpoint (``init_from``)."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nmt.checkpoint import (
    CheckpointError,
    load_checkpoint,
    model_config_from,
    write_atomic,
)
from nmt.config import TrainConfig
from nmt.rng import set_rng_state
from nmt.run import (
    Run,
    TrainState,
)
from nmt.tokenizer import Tokenizer

log = logging.getLogger(__name__)


def find_resume(cfg: TrainConfig, out_dir: Path) -> Path | None:
    """The checkpoint this run continues from, or None for a fresh run.

    ``out_dir/last.pt`` when it exists: it is this run's own latest state, newer than any
    ``resume=`` given on the command line (a torchrun restart, or the resume command run a
    second time, must not go back to the older file and then overwrite the newer one).
    Otherwise ``resume=FILE`` or ``resume=RUN_DIR`` (its last.pt).
    """
    last = out_dir / "last.pt"
    if cfg.resume:
        path = Path(cfg.resume)
        if path.is_dir():
            path = path / "last.pt"
        if not path.is_file():
            raise CheckpointError(f"resume={cfg.resume}: no checkpoint at {path}")
        if last.is_file() and not last.samefile(path):
            log.warning(
                "%s exists: continuing from it, not from resume=%s (it holds this run's "
                "latest state)",
                last,
                cfg.resume,
            )
            return last
        return path
    return last if last.is_file() else None


def resume(run: Run, path: Path) -> TrainState:
    """Load ``path`` into the run's model, optimizer, schedule, scaler and sampler, restore
    this rank's random state, and return the saved counters."""
    model, sampler, world_size = run.model, run.sampler, run.ctx.world_size
    data_fingerprint = run.prepared.tokenizer.fingerprint()
    ckpt = load_checkpoint(path)
    if "trainer" not in ckpt:
        raise CheckpointError(
            f"{path}: a model-only checkpoint (best/averaged) cannot resume training"
        )
    tokenizer = Tokenizer.from_bytes(ckpt["tokenizer"])
    if tokenizer.fingerprint() != data_fingerprint:
        raise CheckpointError(
            f"{path}: its vocabulary (SentencePiece model and target vocabulary, fingerprint "
            f"{tokenizer.fingerprint()[:12]}) is not the one the data was prepared with "
            f"({data_fingerprint[:12]}): the weights would meet another vocabulary; use the "
            "same data and tokenizer settings"
        )
    check_fits(path, ckpt["model"], model)
    t = ckpt["trainer"]
    run.optimizer.load_state_dict(t["optimizer"])
    run.scheduler.load_state_dict(t["scheduler"])
    if run.scaler is not None and t.get("scaler"):
        run.scaler.load_state_dict(t["scaler"])
    state = TrainState(**t["state"])
    if t["world_size"] == world_size:
        sampler.load_state_dict(t["sampler"])
        set_rng_state(t.get("rank_rngs", [t["rng"]])[run.ctx.rank], run.device)
        if sampler.epoch == state.epoch + 1 and sampler.position == 0:
            # written by an older nmt after an epoch's last, smaller accumulation group: the
            # sampler had already stepped into the next epoch, the counter had not
            state.epoch += 1
    else:  # a different number of processes: start the next epoch afresh
        state.epoch += 1
        sampler.set_epoch(state.epoch)
        log.warning(
            "checkpoint was written by %d processes, now %d: resuming at the start of epoch %d",
            t["world_size"],
            world_size,
            state.epoch + 1,
        )
    return state


def check_fits(path: Path, weights: dict[str, torch.Tensor], model: nn.Module) -> None:
    """Load ``weights`` into ``model``, or say in one line which tensors differ."""
    own = model.state_dict()
    sized = [
        f"{k} {tuple(v.shape)} in the checkpoint, {tuple(own[k].shape)} here"
        for k, v in weights.items()
        if k in own and v.shape != own[k].shape
    ]
    missing = [k for k in own if k not in weights]
    extra = [k for k in weights if k not in own]
    problems = []
    if sized:
        problems.append(f"{len(sized)} tensors differ in size: " + "; ".join(sized[:3]))
    if missing:
        problems.append(f"{len(missing)} missing: " + ", ".join(missing[:3]))
    if extra:
        problems.append(f"{len(extra)} unexpected: " + ", ".join(extra[:3]))
    if problems:
        raise CheckpointError(
            f"{path}: does not fit this model config ({' | '.join(problems)}); resume with the "
            "run's own model settings"
        )
    model.load_state_dict(weights)


def adopt_run_files(run: Run, resume_from: Path) -> None:
    """Make the state's file list refer to this run directory only.

    The kept best-N list names files of the directory the checkpoint came from; a run resumed
    into another directory must never delete them, so it starts its own list, and it takes a
    copy of that run's ``best.pt`` (the model its best score belongs to) unless it has one.
    """
    state, out_dir = run.state, run.out_dir
    source = resume_from.resolve().parent
    same_dir = out_dir.is_dir() and source.samefile(out_dir)
    kept = []
    for value, name in state.kept:
        path = Path(name)
        if not path.is_absolute():
            path = source / path
        if same_dir and path.parent.resolve() == source:
            kept.append([value, path.name])
    state.kept = kept
    best = source / "best.pt"
    if not same_dir and run.is_main and best.is_file() and not (out_dir / "best.pt").exists():
        copy_file(best, out_dir / "best.pt")
        log.info("copied %s into %s (the best model so far)", best, out_dir)


def copy_file(src: Path, dst: Path) -> None:
    """Copy atomically: a temporary file beside ``dst``, fsync, rename."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(dst, src.read_bytes())


def init_from_config(cfg: TrainConfig) -> tuple[TrainConfig, dict[str, Any] | None]:
    """With ``init_from=CKPT``: the run takes that checkpoint's model shape (this config's
    ``model.dropout`` and ``model.rnn_impl`` still apply), its SentencePiece model and its
    target vocabulary (``target_vocab=used`` when it has one, else ``all``), so new data is
    encoded with the vocabulary the weights were trained on: target pieces of the new data
    outside that vocabulary become unk (counted in the cache summary, ``target_vocab.new_unk``)."""
    if not cfg.init_from:
        return cfg, None
    ckpt = load_checkpoint(cfg.init_from)
    shape = model_config_from(ckpt)
    model = replace(shape, dropout=cfg.model.dropout, rnn_impl=cfg.model.rnn_impl)
    target_vocab = "used" if "tgt_keep" in ckpt["tokenizer"] else "all"
    tokenizer = replace(cfg.tokenizer, model=cfg.init_from, target_vocab=target_vocab)
    return replace(cfg, model=model, tokenizer=tokenizer), ckpt


def start_from(run: Run, path: Path, ckpt: dict[str, Any]) -> None:
    """A new run from ``path``'s weights (fine-tuning); everything else starts fresh."""
    theirs = Tokenizer.from_bytes(ckpt["tokenizer"]).fingerprint()
    ours = run.prepared.tokenizer.fingerprint()
    if theirs != ours:
        raise CheckpointError(
            f"init_from={path}: its vocabulary (fingerprint {theirs[:12]}) is not the one the "
            f"data was prepared with ({ours[:12]})"
        )
    check_fits(path, ckpt["model"], run.model)
    log.info("initialised the model from %s (optimizer, schedule and counters start fresh)", path)


def stored_results(run: Run) -> dict[str, Any] | None:
    """``results.json`` when it describes this state completely (nothing left to do)."""
    path = run.out_dir / "results.json"
    if not path.is_file():
        return None
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(results, dict) or results.get("updates") != run.state.update:
        return None
    if run.cfg.eval_test and "test" not in results:
        return None
    return results

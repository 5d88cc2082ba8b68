"""The training loop, read top to bottom: set up, loop over updates, validate, checkpoint, stop.

No Hydra in here: ``train(cfg, out_dir)`` takes the typed ``TrainConfig``. Data-parallel
training (torchrun) is the same loop with a ``DistributedDataParallel`` wrapper, a sharded
sampler and a global token count; see ``nmt.distributed``.
"""

from __future__ import annotations

import json
import logging
import math
import random
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from enum import IntEnum
from pathlib import Path
from types import FrameType
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from nmt import distributed as dist_utils
from nmt.batching import BucketBatchSampler
from nmt.checkpoint import (
    CheckpointError,
    load_checkpoint,
    model_config_from,
    model_payload,
    remove_stale_temps,
    save_checkpoint,
    write_atomic,
)
from nmt.config import TrainConfig, TrainerConfig
from nmt.data import Batch, ParallelDataset, Prepared, collate, prepare
from nmt.device import (
    cuda_rng_state,
    fp16_step_skipped,
    real_rows,
    set_cuda_rng_state,
    set_tf32,
    to_device,
)
from nmt.faults import fault_point
from nmt.loss import smoothed_loss_and_nll
from nmt.metrics import check_settings, score
from nmt.model import Seq2Seq, build_model
from nmt.monitor import Monitor
from nmt.optim import Scheduler, build_optimizer, build_scheduler
from nmt.runtime import pick_device, tune_malloc
from nmt.search import translate_lines
from nmt.tokenizer import Tokenizer

log = logging.getLogger(__name__)


class TrainingError(Exception):
    """Training cannot go on (one-line message)."""


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM: ``last.pt`` holds the run's latest state (``path``; None when the
    signal came before training started, and nothing needed saving)."""

    def __init__(self, signum: int, path: Path | None) -> None:
        where = f"state saved to {path}" if path else "before training started"
        super().__init__(f"interrupted by signal {signum}; {where}")
        self.signum = signum
        self.path = path


@dataclass
class TrainState:
    """Counters and early-stopping state; saved in every checkpoint and restored on resume."""

    update: int = 0
    epoch: int = 0
    best: float | None = None
    best_update: int = 0
    bad_validations: int = 0
    nonfinite_in_row: int = 0
    skipped_updates: int = 0
    elapsed_s: float = 0.0
    tokens: int = 0
    # the best-N files of this run directory: [[metric, file name], ...], best first
    kept: list[list[Any]] = field(default_factory=list)
    valid_update: int = -1  # the update of the last validation (-1: none yet)


# ---------------------------------------------------------------------------------------------
# set-up helpers


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """Python, NumPy and torch CPU generators, plus the generator of ``device`` when it is a
    CUDA device (only that one: other GPUs are not in use, and a CPU run never touches CUDA)."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": _numpy_state_to_plain(np.random.get_state()),
        "torch": torch.get_rng_state(),
    }
    if device is not None and (cuda := cuda_rng_state(device)) is not None:
        state["cuda"] = cuda
    return state


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Restore ``rng_state``'s output; the CUDA state goes to ``device`` if it is a CUDA device
    (also from the older all-GPUs format; a missing entry is a warning, not an error)."""
    random.setstate(_as_tuple(state["python"]))
    np.random.set_state(_numpy_state_from_plain(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if device is not None:
        set_cuda_rng_state(state.get("cuda"), device)


def _numpy_state_to_plain(state: Any) -> list[Any]:
    name, keys, pos, has_gauss, gauss = state
    return [name, keys.tolist(), int(pos), int(has_gauss), float(gauss)]


def _numpy_state_from_plain(state: list[Any]) -> Any:
    name, keys, pos, has_gauss, gauss = state
    return (name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss)


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, list | tuple) else x


def autocast(device: torch.device, precision: str) -> Any:
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def metric_mode(metric: str) -> Literal["min", "max"]:
    return "min" if metric == "loss" else "max"


def improved(value: float, best: float | None, metric: str) -> bool:
    if best is None:
        return True
    return value < best if metric_mode(metric) == "min" else value > best


# ---------------------------------------------------------------------------------------------
# the criterion (wrapped by DDP so every parameter it uses is synchronised)


class Criterion(nn.Module):
    """Model + label-smoothed loss over real target tokens only.

    ``forward`` returns (smoothed loss sum, NLL sum); the output layer runs only on the rows
    ``tgt_out != pad``, never on padding.
    """

    def __init__(self, model: Seq2Seq, smoothing: float) -> None:
        super().__init__()
        self.model = model
        self.smoothing = smoothing

    def forward(
        self,
        src: torch.Tensor,
        src_lengths: torch.Tensor,
        tgt_in: torch.Tensor,
        tgt_out: torch.Tensor,
        real: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``real``: flat indices (N,) of the cells ``tgt_out != pad`` (``device.real_rows``,
        no host sync on CUDA); computed from ``tgt_out`` when not given."""
        states = self.model(src, src_lengths, tgt_in)  # (B, T, H)
        if real is None:
            real = (tgt_out.reshape(-1) != self.model.pad_id).nonzero().squeeze(1)  # (N,)
        logits = self.model.logits(states.reshape(-1, states.size(-1)).index_select(0, real))
        target = tgt_out.reshape(-1).index_select(0, real)  # (N,)
        return smoothed_loss_and_nll(logits, target, self.smoothing)  # logits (N, V)


# ---------------------------------------------------------------------------------------------
# validation


def dev_loss(
    model: Seq2Seq,
    dataset: ParallelDataset,
    pad_id: int,
    bos_id: int,
    eos_id: int,
    max_tokens: int,
    device: torch.device,
    precision: str,
) -> float:
    """Mean NLL per real target token over ``dataset`` (no smoothing)."""
    criterion = Criterion(model, smoothing=0.0)
    sampler = BucketBatchSampler(
        dataset.src_lengths, dataset.tgt_lengths, max_tokens=max_tokens, shuffle=False
    )
    total = torch.zeros((), dtype=torch.float64, device=device)  # read once, at the end
    count = 0
    model.eval()
    with torch.inference_mode(), autocast(device, precision):
        for idx in sampler:
            cpu = collate([(i, *dataset[i]) for i in idx], pad_id, bos_id, eos_id)
            b = to_device(cpu, device)
            real = real_rows(cpu.tgt_out, pad_id, device)
            loss, _ = criterion(b.src, b.src_lengths, b.tgt_in, b.tgt_out, real)
            total += loss.double()
            count += b.n_tgt_tokens
    return float(total) / max(count, 1)


def validate(
    model: Seq2Seq, prepared: Prepared, cfg: TrainConfig, device: torch.device
) -> dict[str, Any]:
    """Dev loss/perplexity and dev translation scored with sacrebleu against raw references."""
    tok = prepared.tokenizer
    dataset = prepared.dataset(cfg.data.dev)
    src_lines, ref_lines = prepared.raw(cfg.data.dev)
    n = cfg.trainer.valid_max_sentences
    if n > 0:
        src_lines, ref_lines = src_lines[:n], ref_lines[:n]
    start = time.perf_counter()
    loss = dev_loss(
        model,
        dataset,
        tok.pad_id,
        tok.bos_id,
        tok.eos_id,
        cfg.trainer.max_tokens,
        device,
        cfg.trainer.precision,
    )
    decode = replace(cfg.decode, beam_size=cfg.trainer.valid_beam_size, nbest=1)
    hyps = translate_lines(model, tok, src_lines, decode, device)
    texts = tok.decode_tgt([h[0].tokens for h in hyps])
    scores = score(texts, ref_lines, ("bleu", "chrf"), cfg.data.tgt, cfg.metrics)
    model.train()
    return {
        "loss": loss,
        "ppl": math.exp(min(loss, 50.0)),
        **scores,
        "hyps": texts,
        "srcs": src_lines,
        "refs": ref_lines,
        "seconds": time.perf_counter() - start,
    }


# ---------------------------------------------------------------------------------------------
# checkpoints


def trainer_payload(
    state: TrainState,
    optimizer: torch.optim.Optimizer,
    scheduler: Scheduler,
    scaler: torch.amp.GradScaler | None,
    sampler: BucketBatchSampler,
    world_size: int,
    rank_rngs: list[dict[str, Any]],
) -> dict[str, Any]:
    """Everything beyond the model that an exact resume needs; ``rank_rngs`` holds every rank's
    RNG state in rank order (one entry for a single process)."""
    return {
        "state": asdict(state),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "sampler": sampler.state_dict(),
        "world_size": world_size,
        "rng": rank_rngs[0],
        "rank_rngs": rank_rngs,
    }


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


# ---------------------------------------------------------------------------------------------
# signals


class StopFlag:
    """SIGINT/SIGTERM handling for a training run.

    In the loop (``immediate`` false) a signal sets ``signum``: the loop finishes its update,
    saves and exits. A second signal stops at once, unless it comes within ``GRACE_S`` of the
    first: under torchrun a Ctrl-C reaches each worker twice, from the terminal and relayed by
    torchrun. Before the loop and after it (set-up, the final validation and test decoding,
    when ``last.pt`` already holds everything) a signal stops at once with
    ``TrainingInterrupted``.
    """

    GRACE_S = 2.0

    def __init__(self) -> None:
        self.signum = 0
        self.immediate = True
        self.saved: Path | None = None  # what TrainingInterrupted reports in immediate mode
        self._first = 0.0
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread
                pass
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.immediate:
            raise TrainingInterrupted(signum, self.saved)
        if self.signum:  # second signal: stop now
            if time.monotonic() - self._first < self.GRACE_S:
                return
            raise KeyboardInterrupt
        self.signum, self._first = signum, time.monotonic()
        log.warning("signal %d received: finishing this update, then saving last.pt", signum)


class Decision(IntEnum):
    """What every rank does after an update; the largest value over the ranks wins."""

    GO_ON = 0
    STOP = 1
    INTERRUPTED = 2


# ---------------------------------------------------------------------------------------------
# the loop


def update_groups(
    sampler: BucketBatchSampler, dataset: ParallelDataset, pad: int, bos: int, eos: int, accum: int
) -> Iterator[list[Batch]]:
    """The rest of the current epoch's batches, ``accum`` at a time (the epoch's tail forms a
    smaller group).

    Lazy, and the sampler's position advances only as batches are drawn, so a checkpoint
    written after an update resumes exactly at the next group. The last group is yielded
    without resuming the sampler's iterator: the sampler stays at the end of this epoch
    (rather than stepping into the next), so a checkpoint written after the epoch's last update
    resumes at the next epoch, once.
    """
    left = len(sampler) - sampler.position
    batches = iter(sampler)
    group: list[Batch] = []
    for k in range(left):
        idx = next(batches)
        group.append(collate([(i, *dataset[i]) for i in idx], pad, bos, eos))
        if len(group) == accum or k == left - 1:
            yield group
            group = []


def train_sampler(
    train_set: ParallelDataset, tcfg: TrainerConfig, world_size: int = 1, rank: int = 0
) -> BucketBatchSampler:
    """The training batches of ``trainer.*`` (also what scripts/benchmark.py times)."""
    return BucketBatchSampler(
        train_set.src_lengths,
        train_set.tgt_lengths,
        max_tokens=tcfg.max_tokens,
        max_sentences=tcfg.max_sentences,
        shuffle=True,
        seed=tcfg.seed,
        pool_factor=tcfg.pool_factor,
        num_replicas=world_size,
        rank=rank,
    )


@dataclass
class Run:
    """Everything a training run holds between set-up, the loop and the finish."""

    cfg: TrainConfig
    out_dir: Path
    ctx: dist_utils.DistContext
    device: torch.device
    prepared: Prepared
    train_set: ParallelDataset
    sampler: BucketBatchSampler
    model: Seq2Seq
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Scheduler
    scaler: torch.amp.GradScaler | None
    state: TrainState
    monitor: Monitor | None = None

    @property
    def is_main(self) -> bool:
        return self.ctx.rank == 0

    def save_last(self) -> Path:
        """Write ``last.pt`` (every rank must call: the RNG states are gathered)."""
        path = self.out_dir / "last.pt"
        rank_rngs = dist_utils.gather_objects(self.ctx, rng_state(self.device))
        if self.is_main:
            payload = model_payload(self.model, self.cfg.model, self.prepared.tokenizer)
            payload["trainer"] = trainer_payload(
                self.state,
                self.optimizer,
                self.scheduler,
                self.scaler,
                self.sampler,
                self.ctx.world_size,
                rank_rngs,
            )
            payload["train_config"] = asdict(self.cfg)
            save_checkpoint(path, payload)
        return path

    def get_monitor(self) -> Monitor:
        """TensorBoard, opened on first use (a finished run re-run writes nothing)."""
        if self.monitor is None:
            self.monitor = Monitor(
                self.out_dir, enabled=self.is_main and self.cfg.trainer.tensorboard
            )
            if self.is_main:
                self.monitor.hparams(self.cfg)
        return self.monitor


def init_from_config(cfg: TrainConfig) -> tuple[TrainConfig, dict[str, Any] | None]:
    """With ``init_from=CKPT``: the run takes that checkpoint's model shape (this config's
    ``model.dropout`` and ``model.rnn_impl`` still apply) and its SentencePiece model, so new
    data is encoded with the vocabulary the weights were trained on."""
    if not cfg.init_from:
        return cfg, None
    ckpt = load_checkpoint(cfg.init_from)
    shape = model_config_from(ckpt)
    model = replace(shape, dropout=cfg.model.dropout, rnn_impl=cfg.model.rnn_impl)
    tokenizer = replace(cfg.tokenizer, model=cfg.init_from)
    return replace(cfg, model=model, tokenizer=tokenizer), ckpt


def setup(cfg: TrainConfig, out_dir: Path) -> Run:
    """Device, data, model, optimizer, and the state to continue from."""
    cfg, init = init_from_config(cfg)
    ctx = dist_utils.init(cfg.device, cfg.trainer.dist_timeout_s)
    device = ctx.device if ctx.world_size > 1 else pick_device(cfg.device)
    tcfg, ocfg = cfg.trainer, cfg.optim
    if tcfg.num_threads > 0:
        torch.set_num_threads(tcfg.num_threads)
    tune_malloc()
    tf32 = set_tf32(tcfg.tf32)
    if ctx.rank == 0 and device.type == "cuda":
        log.info(
            "precision %s; TF32 matmul=%s cudnn=%s (trainer.tf32)",
            tcfg.precision,
            tf32["matmul"],
            tf32["cudnn"],
        )
    if tcfg.precision == "fp16" and device.type != "cuda":
        raise TrainingError("trainer.precision=fp16 needs CUDA; use bf16 on the CPU")
    if ctx.rank == 0 and out_dir.is_dir():
        for tmp in remove_stale_temps(out_dir):
            log.info("removed %s, left by a writer that was killed", tmp)
    check_settings(cfg.data.tgt, cfg.metrics)  # e.g. ja/ko targets without MeCab: fail now
    seed_everything(tcfg.seed)

    # data: rank 0 builds the cache, the others then find it
    with dist_utils.main_first(ctx):
        prepared = prepare(cfg.data, cfg.tokenizer)
    tok = prepared.tokenizer
    train_set = prepared.dataset(cfg.data.train)
    data_id = (tok.fingerprint(), len(train_set))
    if dist_utils.any_rank(ctx, dist_utils.broadcast_object(ctx, data_id) != data_id):
        raise TrainingError(
            f"ranks prepared different data in {prepared.path}: on several machines, put "
            "data.cache_dir on a shared filesystem or copy rank 0's cache to every machine"
        )
    sampler = train_sampler(train_set, tcfg, ctx.world_size, ctx.rank)
    check_epoch_size(sampler, tcfg, ctx.world_size)

    model = build_model(cfg.model, tok.src_vocab_size, tok.tgt_vocab_size, tok.pad_id).to(device)
    criterion: nn.Module = Criterion(model, ocfg.label_smoothing)
    if ctx.world_size > 1:
        # device_ids=None: the module lives on one device and DDP must not copy the inputs
        # (the lengths stay on the CPU); the only buffer (Bridge.layer_index) is constant
        criterion = DistributedDataParallel(
            criterion, device_ids=None, **dist_utils.no_buffer_sync()
        )

        # DDP copied rank 0's parameters to every rank; from here on each rank draws its own
        # dropout masks (the same seed everywhere would repeat them across ranks)
        seed_everything(tcfg.seed + ctx.rank)
    optimizer = build_optimizer(model.parameters(), ocfg)
    scheduler = build_scheduler(optimizer, ocfg, metric_mode(tcfg.early_stop_metric))
    scaler = torch.amp.GradScaler("cuda") if tcfg.precision == "fp16" else None
    run = Run(
        cfg, out_dir, ctx, device, prepared, train_set, sampler, model, criterion, optimizer,
        scheduler, scaler, TrainState(),
    )  # fmt: skip

    resume_from = find_resume(cfg, out_dir)
    if dist_utils.sum_int(ctx, resume_from is not None) not in (0, ctx.world_size):
        raise TrainingError(
            f"{out_dir / 'last.pt'}: only some ranks can read it; on several machines the "
            "output directory must be on a shared filesystem"
        )
    if resume_from is not None:
        run.state = resume(
            resume_from,
            model,
            optimizer,
            scheduler,
            scaler,
            sampler,
            ctx.world_size,
            ctx.rank,
            tok.fingerprint(),
        )
        adopt_run_files(run, resume_from)
        log.info(
            "resumed from %s at update %d (epoch %d)",
            resume_from,
            run.state.update,
            run.state.epoch + 1,
        )
    else:
        sampler.set_epoch(0)
        if init is not None:
            start_from(run, Path(str(cfg.init_from)), init)
    if run.is_main:
        log.info(
            "model: %.2fM parameters; train pairs: %d; device: %s; world size: %d",
            sum(p.numel() for p in model.parameters()) / 1e6,
            len(train_set),
            device,
            ctx.world_size,
        )
    return run


def start_from(run: Run, path: Path, ckpt: dict[str, Any]) -> None:
    """A new run from ``path``'s weights (fine-tuning); everything else starts fresh."""
    theirs = Tokenizer.from_bytes(ckpt["tokenizer"]).fingerprint()
    ours = run.prepared.tokenizer.fingerprint()
    if theirs != ours:
        raise CheckpointError(
            f"init_from={path}: its SentencePiece model (fingerprint {theirs[:12]}) is not the "
            f"one the data was prepared with ({ours[:12]})"
        )
    check_fits(path, ckpt["model"], run.model)
    log.info("initialised the model from %s (optimizer, schedule and counters start fresh)", path)


def check_epoch_size(sampler: BucketBatchSampler, tcfg: TrainerConfig, world_size: int) -> None:
    """An epoch must give every process at least one batch, or the loop could never update."""
    if len(sampler) == 0:
        raise TrainingError(
            f"the training split gives fewer batches per epoch at trainer.max_tokens="
            f"{tcfg.max_tokens} than the {world_size} processes: use fewer processes, a "
            "smaller trainer.max_tokens or more training data"
        )


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


def finished(cfg: TrainConfig, state: TrainState) -> str:
    """Why the run is over by its limits (empty while it can go on)."""
    t = cfg.trainer
    if t.max_updates and state.update >= t.max_updates:
        return f"reached max_updates={t.max_updates}"
    if t.max_epochs and state.epoch >= t.max_epochs:
        return f"reached max_epochs={t.max_epochs}"
    if t.max_time_min and state.elapsed_s >= t.max_time_min * 60:
        return f"reached max_time_min={t.max_time_min}"
    if t.patience > 0 and state.bad_validations >= t.patience:
        return f"early stopping: no improvement in {t.patience} validations"
    return ""


def train(cfg: TrainConfig, out_dir: Path) -> dict[str, Any]:
    """Train, validate, checkpoint; evaluate the best checkpoint on test at the end.

    Returns a summary dict (also written to ``out_dir/results.json`` on rank 0). A run whose
    limits are already reached (a finished run started again) trains no further: it completes
    whatever of its final validation and test scoring had not been written, or, when nothing
    is missing, returns the stored results and changes nothing.
    """
    out_dir = Path(out_dir)
    run: Run | None = None
    bar: tqdm | None = None
    try:
        with StopFlag() as flag:
            run = setup(cfg, out_dir)
            stop_reason = finished(cfg, run.state)
            if stop_reason:
                stored = dist_utils.broadcast_object(run.ctx, stored_results(run))
                if stored is not None:
                    log.info("this run is already finished (%s): nothing to do", stop_reason)
                    return stored
            else:
                bar = progress_bar(run)
                stop_reason = train_loop(run, flag, bar)
                bar.close()
            flag.immediate, flag.saved = True, run.out_dir / "last.pt"
            return finish(run, stop_reason)
    finally:
        if bar is not None:
            bar.close()
        if run is not None:
            if run.monitor is not None:
                run.monitor.close()
            dist_utils.cleanup(run.ctx)


def progress_bar(run: Run) -> tqdm:
    tcfg = run.cfg.trainer
    return tqdm(
        total=tcfg.max_updates or None,
        initial=run.state.update,
        desc="train",
        unit="upd",
        disable=not (run.is_main and tcfg.progress and sys.stderr.isatty()),
        dynamic_ncols=True,
    )


def train_loop(run: Run, flag: StopFlag, bar: tqdm) -> str:
    """Updates until a limit is reached (returns why) or a signal arrives (raises
    ``TrainingInterrupted`` after saving ``last.pt``)."""
    cfg, state, tcfg = run.cfg, run.state, run.cfg.trainer
    tok = run.prepared.tokenizer
    log_acc = {"loss": 0.0, "nll": 0.0, "tokens": 0, "cells": 0, "real": 0}
    log_acc["t0"] = time.perf_counter()
    run_start = time.perf_counter() - state.elapsed_s
    run.model.train()
    flag.immediate = False
    while True:
        updated = False
        for group in update_groups(
            run.sampler, run.train_set, tok.pad_id, tok.bos_id, tok.eos_id, tcfg.accum_steps
        ):
            updated = True
            stats = train_update(
                group,
                run.criterion,
                run.model,
                run.optimizer,
                run.scaler,
                run.ctx,
                run.device,
                tcfg.precision,
                cfg.optim.clip_norm,
            )
            if not stats["finite"]:
                skip_update(run, state)
                continue
            state.nonfinite_in_row = 0
            state.update += 1
            state.tokens += int(stats["tokens"])
            if not isinstance(run.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                run.scheduler.step()
            for k in ("loss", "nll", "tokens", "cells", "real"):
                log_acc[k] += stats[k]
            bar.update(1)
            fault_point("update")

            if state.update % tcfg.log_every == 0:
                log_train(
                    state, log_acc, run.optimizer, run.get_monitor(), bar, stats["grad_norm"],
                    run.is_main,
                )  # fmt: skip
            if state.update % tcfg.valid_every == 0:
                run_validation(
                    cfg, run.model, run.prepared, run.device, state, run.scheduler,
                    run.get_monitor(), run.out_dir, run.ctx,
                )  # fmt: skip
            state.elapsed_s = time.perf_counter() - run_start
            if state.update % tcfg.save_every == 0:
                run.save_last()
            stop_reason = finished(cfg, state)
            # every rank takes the same exit
            local = Decision.STOP if stop_reason else Decision.GO_ON
            if flag.signum:
                local = Decision.INTERRUPTED
            decision = Decision(dist_utils.max_int(run.ctx, int(local)))
            if decision == Decision.INTERRUPTED:
                state.elapsed_s = time.perf_counter() - run_start
                path = run.save_last()
                if run.is_main:
                    log.warning(
                        "interrupted at update %d; saved %s. Resume with: python -m nmt.train "
                        "resume=%s",
                        state.update,
                        path,
                        path,
                    )
                raise TrainingInterrupted(flag.signum or signal.SIGTERM, path)
            if decision == Decision.STOP:  # only the wall clock can differ by rank
                return stop_reason or f"reached max_time_min={tcfg.max_time_min} on another rank"
        if not updated and run.sampler.position == 0:
            raise TrainingError(
                f"epoch {state.epoch + 1} gave this process no batch: the training split is "
                "too small for trainer.max_tokens and the number of processes"
            )
        state.epoch += 1  # the epoch ended
        run.sampler.set_epoch(state.epoch)
        stop_reason = finished(cfg, state)
        if stop_reason:
            return stop_reason


def skip_update(run: Run, state: TrainState) -> None:
    """Count a non-finite update; give up (after saving) when too many come in a row."""
    state.nonfinite_in_row += 1
    state.skipped_updates += 1
    log.warning(
        "non-finite loss or gradient at update %d: update skipped (%d in a row)",
        state.update + 1,
        state.nonfinite_in_row,
    )
    if state.nonfinite_in_row >= run.cfg.trainer.max_bad_steps:
        run.save_last()
        raise TrainingError(
            f"{state.nonfinite_in_row} non-finite losses in a row at update "
            f"{state.update}: lower optim.lr or use trainer.precision=fp32"
        )


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


def finish(run: Run, stop_reason: str) -> dict[str, Any]:
    """Final validation (unless this update was validated), ``last.pt``, test scores and
    ``results.json``. ``last.pt`` is written before anything slow, so a signal or a crash in
    here loses no update; started again, the run does only what is missing."""
    state, cfg = run.state, run.cfg
    log.info("stopping: %s", stop_reason)
    run.save_last()
    fault_point("finish")
    if state.update > 0 and state.valid_update != state.update:
        run_validation(
            cfg, run.model, run.prepared, run.device, state, run.scheduler, run.get_monitor(),
            run.out_dir, run.ctx,
        )  # fmt: skip
        run.save_last()
    results: dict[str, Any] = {
        "updates": state.update,
        "epochs": state.epoch,
        "train_time_s": round(state.elapsed_s, 1),
        "skipped_updates": state.skipped_updates,
        "best_metric": state.best,
        "best_update": state.best_update,
        "stop_reason": stop_reason,
        "out_dir": str(run.out_dir),
    }
    if run.is_main and cfg.eval_test:
        results["test"] = evaluate_test(cfg, run.prepared, run.out_dir, run.device, run.model)
        run.get_monitor().scalars(
            {"test/bleu": results["test"]["bleu"], "test/chrf": results["test"]["chrf"]},
            state.update,
        )
    if run.is_main:
        write_json(run.out_dir / "results.json", results)
    return results


def write_json(path: Path, value: Any) -> None:
    """Atomically (temporary file, rename): a reader never sees half a file."""
    write_atomic(path, (json.dumps(value, indent=2) + "\n").encode("utf-8"))


def train_update(
    group: list[Batch],
    criterion: nn.Module,
    model: Seq2Seq,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    ctx: dist_utils.DistContext,
    device: torch.device,
    precision: str,
    clip_norm: float,
) -> dict[str, Any]:
    """One optimizer update over ``group`` (accumulated batches), normalised by the number of
    real target tokens across the group and across all ranks."""
    local_tokens = sum(b.n_tgt_tokens for b in group)
    total_tokens = dist_utils.sum_int(ctx, local_tokens)
    # DDP averages gradients over ranks; scale so the result is sum(loss) / total_tokens
    scale = ctx.world_size / max(total_tokens, 1)
    optimizer.zero_grad(set_to_none=True)
    # losses stay on the device (float64 sums: the same numbers as adding Python floats);
    # together with the grad norm and the finite flag they are read once per update
    loss_sum = nll_sum = torch.zeros((), dtype=torch.float64, device=device)
    cells = real = 0
    for i, batch in enumerate(group):
        b = to_device(batch, device)
        rows = real_rows(batch.tgt_out, model.pad_id, device)
        sync = i == len(group) - 1
        no_sync = getattr(criterion, "no_sync", None)
        with no_sync() if (no_sync is not None and not sync) else nullcontext():
            with autocast(device, precision):
                loss, nll = criterion(b.src, b.src_lengths, b.tgt_in, b.tgt_out, rows)
            scaled = loss * scale
            if scaler is not None:
                scaler.scale(scaled).backward()
            else:
                scaled.backward()
        loss_sum = loss_sum + loss.detach().double()
        nll_sum = nll_sum + nll.detach().double()
        cells += b.src.numel() + b.tgt_out.numel()
        real += int(batch.src_lengths.sum()) + b.n_tgt_tokens
    if scaler is not None:
        scaler.unscale_(optimizer)
    if clip_norm > 0:
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
    else:
        norm = torch.linalg.vector_norm(
            torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None])
        )
    values = torch.stack([loss_sum, nll_sum, norm.detach().double()])
    bad = (~torch.isfinite(values)).any().double().reshape(1)
    bad = dist_utils.max_tensor(ctx, bad)  # skip (or not) on every rank alike
    loss_f, nll_f, grad_norm, bad_f = torch.cat([values, bad]).tolist()  # the one read
    finite = bad_f == 0.0
    if scaler is not None:
        # fp16: the scaler skips a step with inf/NaN gradients and lowers its scale; such an
        # update did not happen (it neither advances the schedule nor counts as an update)
        before = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        finite = not fp16_step_skipped(before, scaler.get_scale())
    elif finite:
        optimizer.step()
    else:
        optimizer.zero_grad(set_to_none=True)
    return {
        "finite": finite,
        "loss": loss_f,
        "nll": nll_f,
        "tokens": local_tokens,
        "grad_norm": grad_norm,
        "cells": cells,
        "real": real,
    }


def log_train(
    state: TrainState,
    acc: dict[str, float],
    optimizer: torch.optim.Optimizer,
    monitor: Monitor,
    bar: tqdm,
    grad_norm: float,
    is_main: bool,
) -> None:
    """Log the updates since the last call (per-token figures), then reset ``acc``."""
    now = time.perf_counter()
    tokens = max(acc["tokens"], 1)
    loss, nll = acc["loss"] / tokens, acc["nll"] / tokens
    lr = optimizer.param_groups[0]["lr"]
    tps = acc["tokens"] / max(now - acc["t0"], 1e-9)
    pad = 1.0 - acc["real"] / max(acc["cells"], 1)
    if is_main:
        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tps:,.0f}")
        log.info(
            "update %d epoch %d | loss %.3f nll %.3f ppl %.1f | lr %.2e | %.0f tgt tok/s | "
            "grad norm %.2f | pad %.1f%%",
            state.update,
            state.epoch + 1,
            loss,
            nll,
            math.exp(min(nll, 50)),
            lr,
            tps,
            grad_norm,
            100 * pad,
        )
        monitor.scalars(
            {
                "train/loss": loss,
                "train/nll": nll,
                "train/ppl": math.exp(min(nll, 50)),
                "train/lr": lr,
                "train/grad_norm": grad_norm,
                "train/tokens_per_sec": tps,
                "train/pad_fraction": pad,
            },
            state.update,
        )
    acc.update({"loss": 0.0, "nll": 0.0, "tokens": 0, "cells": 0, "real": 0, "t0": now})


def run_validation(
    cfg: TrainConfig,
    model: Seq2Seq,
    prepared: Prepared,
    device: torch.device,
    state: TrainState,
    scheduler: Scheduler,
    monitor: Monitor,
    out_dir: Path,
    ctx: dist_utils.DistContext,
) -> None:
    """Rank 0 validates and saves; every rank gets the metric and updates the same state."""
    metric_name = cfg.trainer.early_stop_metric
    value = 0.0
    if ctx.rank == 0:
        res = validate(model, prepared, cfg, device)
        value = res[metric_name]
        log.info(
            "validation at update %d: loss %.3f ppl %.2f | BLEU %.2f chrF %.2f (%.0fs) | %s",
            state.update,
            res["loss"],
            res["ppl"],
            res["bleu"],
            res["chrf"],
            res["seconds"],
            res["bleu_signature"],
        )
        monitor.validation(res, model, prepared, device, state.update)
    value = dist_utils.broadcast_float(ctx, value)
    state.valid_update = state.update
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(value)
    if improved(value, state.best, metric_name):
        state.best, state.best_update, state.bad_validations = value, state.update, 0
        if ctx.rank == 0:
            save_best(cfg, model, prepared, state, out_dir, value)
    else:
        state.bad_validations += 1
        log.info(
            "no improvement of %s (best %.3f at update %d): %d/%s",
            metric_name,
            state.best or 0.0,
            state.best_update,
            state.bad_validations,
            cfg.trainer.patience or "-",
        )


def save_best(
    cfg: TrainConfig,
    model: Seq2Seq,
    prepared: Prepared,
    state: TrainState,
    out_dir: Path,
    value: float,
) -> None:
    """``best.pt`` plus the best N model-only checkpoints ``ckpt_u{update}.pt``."""
    payload = model_payload(model, cfg.model, prepared.tokenizer)
    payload["train_config"] = asdict(cfg)
    payload["metric"] = {cfg.trainer.early_stop_metric: value, "update": state.update}
    save_checkpoint(out_dir / "best.pt", payload)
    keep = cfg.trainer.keep_best
    if keep <= 0:
        return
    name = f"ckpt_u{state.update}.pt"
    save_checkpoint(out_dir / name, payload)
    state.kept = [kv for kv in state.kept if kv[1] != name] + [[value, name]]
    reverse = metric_mode(cfg.trainer.early_stop_metric) == "max"
    state.kept.sort(key=lambda kv: kv[0], reverse=reverse)
    for _, old in state.kept[keep:]:  # only files this run wrote, in this directory
        (out_dir / old).unlink(missing_ok=True)
    state.kept = state.kept[:keep]


def resume(
    path: Path,
    model: Seq2Seq,
    optimizer: torch.optim.Optimizer,
    scheduler: Scheduler,
    scaler: torch.amp.GradScaler | None,
    sampler: BucketBatchSampler,
    world_size: int,
    rank: int = 0,
    data_fingerprint: str | None = None,
) -> TrainState:
    ckpt = load_checkpoint(path)
    if "trainer" not in ckpt:
        raise CheckpointError(
            f"{path}: a model-only checkpoint (best/averaged) cannot resume training"
        )
    tokenizer = Tokenizer.from_bytes(ckpt["tokenizer"])
    if data_fingerprint is not None and tokenizer.fingerprint() != data_fingerprint:
        raise CheckpointError(
            f"{path}: its SentencePiece model (fingerprint {tokenizer.fingerprint()[:12]}) is "
            f"not the one the data was prepared with ({data_fingerprint[:12]}): the weights "
            "would meet another vocabulary; use the same data and tokenizer settings"
        )
    check_fits(path, ckpt["model"], model)
    t = ckpt["trainer"]
    optimizer.load_state_dict(t["optimizer"])
    scheduler.load_state_dict(t["scheduler"])
    if scaler is not None and t.get("scaler"):
        scaler.load_state_dict(t["scaler"])
    state = TrainState(**t["state"])
    if t["world_size"] == world_size:
        sampler.load_state_dict(t["sampler"])
        device = next(model.parameters()).device
        set_rng_state(t.get("rank_rngs", [t["rng"]])[rank], device)
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


def evaluate_test(
    cfg: TrainConfig, prepared: Prepared, out_dir: Path, device: torch.device, model: Seq2Seq
) -> dict[str, Any]:
    """Translate the test split with the best checkpoint (beam search) and score it."""
    best = out_dir / "best.pt"
    if best.is_file():
        model.load_state_dict(load_checkpoint(best)["model"])
    model.eval()
    src, ref = prepared.raw(cfg.data.test)
    hyps = translate_lines(model, prepared.tokenizer, src, cfg.decode, device)
    texts = prepared.tokenizer.decode_tgt([h[0].tokens for h in hyps])
    hyp_path = out_dir / f"test.hyp.{cfg.data.tgt}"
    hyp_path.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    scores = score(texts, ref, ("bleu", "chrf"), cfg.data.tgt, cfg.metrics)
    scores["translations"] = str(hyp_path)
    scores["checkpoint"] = str(best if best.is_file() else out_dir / "last.pt")
    scores["beam_size"] = cfg.decode.beam_size
    write_json(out_dir / "test_scores.json", scores)
    return scores

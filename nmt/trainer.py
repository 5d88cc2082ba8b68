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
from nmt.checkpoint import CheckpointError, load_checkpoint, model_payload, save_checkpoint
from nmt.config import TrainConfig, TrainerConfig
from nmt.data import Batch, ParallelDataset, Prepared, collate, prepare
from nmt.loss import smoothed_loss_and_nll
from nmt.metrics import score
from nmt.model import Seq2Seq, build_model
from nmt.monitor import Monitor
from nmt.optim import Scheduler, build_optimizer, build_scheduler
from nmt.runtime import tune_malloc
from nmt.search import translate_lines

log = logging.getLogger(__name__)


class TrainingError(Exception):
    """Training cannot go on (one-line message)."""


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM: ``last.pt`` was written; ``signum`` tells which signal."""

    def __init__(self, signum: int, path: Path) -> None:
        super().__init__(f"interrupted by signal {signum}; state saved to {path}")
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
    kept: list[list[Any]] = field(default_factory=list)  # [[metric, path], ...] best-N files


# ---------------------------------------------------------------------------------------------
# set-up helpers


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"device={name}: CUDA is not available on this machine")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": _numpy_state_to_plain(np.random.get_state()),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_tuple(state["python"]))
    np.random.set_state(_numpy_state_from_plain(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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
    ) -> tuple[torch.Tensor, torch.Tensor]:
        states = self.model(src, src_lengths, tgt_in)  # (B, T, H)
        real = tgt_out != self.model.pad_id  # (B, T)
        logits = self.model.logits(states[real])  # (N, H) -> (N, V)
        target = tgt_out[real]  # (N,)
        return smoothed_loss_and_nll(logits, target, self.smoothing)


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
    total, count = 0.0, 0
    model.eval()
    with torch.inference_mode(), autocast(device, precision):
        for idx in sampler:
            b = collate([(i, *dataset[i]) for i in idx], pad_id, bos_id, eos_id).to(device)
            loss, _ = criterion(b.src, b.src_lengths, b.tgt_in, b.tgt_out)
            total += float(loss)
            count += b.n_tgt_tokens
    return total / max(count, 1)


def validate(
    model: Seq2Seq, prepared: Prepared, cfg: TrainConfig, device: torch.device
) -> dict[str, Any]:
    """Dev loss/perplexity and dev translation scored with sacrebleu against raw references."""
    tok = prepared.tokenizer
    dataset = prepared.dataset("dev")
    src_lines, ref_lines = prepared.raw("dev")
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
    scores = score(texts, ref_lines, ("bleu", "chrf"))
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
    """``resume=FILE``, ``resume=RUN_DIR`` (its last.pt), or ``out_dir/last.pt`` if it exists."""
    if cfg.resume:
        path = Path(cfg.resume)
        if path.is_dir():
            path = path / "last.pt"
        if not path.is_file():
            raise CheckpointError(f"resume={cfg.resume}: no checkpoint at {path}")
        return path
    last = out_dir / "last.pt"
    return last if last.is_file() else None


# ---------------------------------------------------------------------------------------------
# signals


class StopFlag:
    """Set by SIGINT/SIGTERM; the loop finishes its update, saves and exits.

    A second signal stops at once, unless it comes within ``GRACE_S`` of the first: under
    torchrun a Ctrl-C reaches each worker twice, from the terminal and relayed by torchrun.
    """

    GRACE_S = 2.0

    def __init__(self) -> None:
        self.signum = 0
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
        if self.signum:  # second signal: stop now
            if time.monotonic() - self._first < self.GRACE_S:
                return
            raise KeyboardInterrupt
        self.signum, self._first = signum, time.monotonic()
        log.warning("signal %d received: finishing this update, then saving last.pt", signum)


# ---------------------------------------------------------------------------------------------
# the loop


def update_groups(
    sampler: BucketBatchSampler, dataset: ParallelDataset, pad: int, bos: int, eos: int, accum: int
) -> Iterator[list[Batch]]:
    """Batches of one epoch grouped ``accum`` at a time (the epoch's tail forms a smaller group).

    Lazy: the sampler's position advances only as batches are drawn, so a checkpoint written
    after an update resumes exactly at the next group.
    """
    group: list[Batch] = []
    for idx in sampler:
        group.append(collate([(i, *dataset[i]) for i in idx], pad, bos, eos))
        if len(group) == accum:
            yield group
            group = []
    if group:
        yield group


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


def train(cfg: TrainConfig, out_dir: Path) -> dict[str, Any]:
    """Train, validate, checkpoint; evaluate the best checkpoint on test at the end.

    Returns a summary dict (also written to ``out_dir/results.json`` on rank 0).
    """
    out_dir = Path(out_dir)
    ctx = dist_utils.init(cfg.device, cfg.trainer.dist_timeout_s)
    device = ctx.device if ctx.world_size > 1 else pick_device(cfg.device)
    is_main = ctx.rank == 0
    tcfg, ocfg = cfg.trainer, cfg.optim
    if tcfg.num_threads > 0:
        torch.set_num_threads(tcfg.num_threads)
    tune_malloc()
    if tcfg.precision not in ("fp32", "bf16", "fp16"):
        raise TrainingError(f"trainer.precision: unknown '{tcfg.precision}' (fp32 | bf16 | fp16)")
    if tcfg.precision == "fp16" and device.type != "cuda":
        raise TrainingError("trainer.precision=fp16 needs CUDA; use bf16 on the CPU")
    if tcfg.early_stop_metric not in ("bleu", "chrf", "loss"):
        raise TrainingError(
            f"trainer.early_stop_metric: unknown '{tcfg.early_stop_metric}' (bleu | chrf | loss)"
        )
    seed_everything(tcfg.seed)

    # data: rank 0 builds the cache, the others then find it
    with dist_utils.main_first(ctx):
        prepared = prepare(cfg.data, cfg.tokenizer)
    tok = prepared.tokenizer
    train_set = prepared.dataset("train")
    data_id = (tok.fingerprint(), len(train_set))
    if dist_utils.any_rank(ctx, dist_utils.broadcast_object(ctx, data_id) != data_id):
        raise TrainingError(
            f"ranks prepared different data in {prepared.path}: on several machines, put "
            "data.cache_dir on a shared filesystem or copy rank 0's cache to every machine"
        )
    sampler = train_sampler(train_set, tcfg, ctx.world_size, ctx.rank)

    model = build_model(cfg.model, tok.src_vocab_size, tok.tgt_vocab_size, tok.pad_id).to(device)
    criterion: nn.Module = Criterion(model, ocfg.label_smoothing)
    if ctx.world_size > 1:
        criterion = DistributedDataParallel(
            criterion, device_ids=[device.index] if device.type == "cuda" else None
        )
        # DDP copied rank 0's parameters to every rank; from here on each rank draws its own
        # dropout masks (the same seed everywhere would repeat them across ranks)
        seed_everything(tcfg.seed + ctx.rank)
    optimizer = build_optimizer(model.parameters(), ocfg)
    scheduler = build_scheduler(optimizer, ocfg, metric_mode(tcfg.early_stop_metric))
    scaler = torch.amp.GradScaler("cuda") if tcfg.precision == "fp16" else None
    state = TrainState()

    resume_from = find_resume(cfg, out_dir)
    if dist_utils.sum_int(ctx, resume_from is not None) not in (0, ctx.world_size):
        raise TrainingError(
            f"{out_dir / 'last.pt'}: only some ranks can read it; on several machines the "
            "output directory must be on a shared filesystem"
        )
    if resume_from is not None:
        state = resume(
            resume_from, model, optimizer, scheduler, scaler, sampler, ctx.world_size, ctx.rank
        )
        log.info(
            "resumed from %s at update %d (epoch %d)", resume_from, state.update, state.epoch + 1
        )
    else:
        sampler.set_epoch(0)

    monitor = Monitor(out_dir, enabled=is_main and tcfg.tensorboard)
    if is_main:
        n_params = sum(p.numel() for p in model.parameters())
        log.info(
            "model: %.2fM parameters; train pairs: %d; device: %s; world size: %d",
            n_params / 1e6,
            len(train_set),
            device,
            ctx.world_size,
        )
        monitor.hparams(cfg)

    def save_last() -> Path:
        path = out_dir / "last.pt"
        rank_rngs = dist_utils.gather_objects(ctx, rng_state())  # a collective: every rank calls
        if is_main:
            payload = model_payload(model, cfg.model, tok)
            payload["trainer"] = trainer_payload(
                state, optimizer, scheduler, scaler, sampler, ctx.world_size, rank_rngs
            )
            payload["train_config"] = asdict(cfg)
            save_checkpoint(path, payload)
        return path

    bar = tqdm(
        total=tcfg.max_updates or None,
        initial=state.update,
        desc="train",
        unit="upd",
        disable=not (is_main and tcfg.progress and sys.stderr.isatty()),
        dynamic_ncols=True,
    )
    log_acc = {
        "loss": 0.0,
        "nll": 0.0,
        "tokens": 0,
        "cells": 0,
        "real": 0,
        "t0": time.perf_counter(),
    }
    run_start = time.perf_counter() - state.elapsed_s
    stop_reason = ""
    model.train()
    with StopFlag() as flag:
        while not stop_reason:
            for group in update_groups(
                sampler, train_set, tok.pad_id, tok.bos_id, tok.eos_id, tcfg.accum_steps
            ):
                stats = train_update(
                    group,
                    criterion,
                    model,
                    optimizer,
                    scaler,
                    ctx,
                    device,
                    tcfg.precision,
                    ocfg.clip_norm,
                )
                if not stats["finite"]:
                    state.nonfinite_in_row += 1
                    state.skipped_updates += 1
                    log.warning(
                        "non-finite loss or gradient at update %d: update skipped (%d in a row)",
                        state.update + 1,
                        state.nonfinite_in_row,
                    )
                    if state.nonfinite_in_row >= tcfg.max_bad_steps:
                        save_last()
                        raise TrainingError(
                            f"{state.nonfinite_in_row} non-finite losses in a row at update "
                            f"{state.update}: lower optim.lr or use trainer.precision=fp32"
                        )
                    continue
                state.nonfinite_in_row = 0
                state.update += 1
                state.tokens += int(stats["tokens"])
                if not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    scheduler.step()
                for k in ("loss", "nll", "tokens", "cells", "real"):
                    log_acc[k] += stats[k]
                bar.update(1)

                if state.update % tcfg.log_every == 0:
                    log_train(state, log_acc, optimizer, monitor, bar, stats["grad_norm"], is_main)
                if state.update % tcfg.valid_every == 0:
                    run_validation(
                        cfg, model, prepared, device, state, scheduler, monitor, out_dir, ctx
                    )
                    if tcfg.patience > 0 and state.bad_validations >= tcfg.patience:
                        stop_reason = (
                            f"early stopping: no improvement in {tcfg.patience} validations"
                        )
                state.elapsed_s = time.perf_counter() - run_start
                if state.update % tcfg.save_every == 0:
                    save_last()
                if not stop_reason:
                    stop_reason = limits_reached(cfg, state)
                # every rank takes the same exit: 0 go on, 1 stop normally, 2 interrupted
                decision = dist_utils.max_int(ctx, 1 if stop_reason else 2 if flag.signum else 0)
                if decision == 2:
                    stop_reason = ""
                elif decision == 1 and not stop_reason:  # only the wall clock differs by rank
                    stop_reason = f"reached max_time_min={tcfg.max_time_min} on another rank"
                if decision:
                    break
            else:  # the epoch ended
                state.epoch += 1
                sampler.set_epoch(state.epoch)
                if tcfg.max_epochs and state.epoch >= tcfg.max_epochs:
                    stop_reason = f"reached max_epochs={tcfg.max_epochs}"
                continue
            if not stop_reason:  # a signal here or on another rank
                state.elapsed_s = time.perf_counter() - run_start
                path = save_last()
                bar.close()
                monitor.close()
                if is_main:
                    log.warning(
                        "interrupted at update %d; saved %s. Resume with: python -m nmt.train "
                        "resume=%s (plus the same overrides)",
                        state.update,
                        path,
                        path,
                    )
                dist_utils.cleanup(ctx)
                raise TrainingInterrupted(flag.signum or signal.SIGTERM, path)
    bar.close()
    state.elapsed_s = time.perf_counter() - run_start
    log.info("stopping: %s", stop_reason)
    if state.update % tcfg.valid_every != 0 and state.update > 0:
        run_validation(cfg, model, prepared, device, state, scheduler, monitor, out_dir, ctx)
    save_last()
    results: dict[str, Any] = {
        "updates": state.update,
        "epochs": state.epoch,
        "train_time_s": round(state.elapsed_s, 1),
        "skipped_updates": state.skipped_updates,
        "best_metric": state.best,
        "best_update": state.best_update,
        "stop_reason": stop_reason,
        "out_dir": str(out_dir),
    }
    if is_main and cfg.eval_test:
        results["test"] = evaluate_test(cfg, prepared, out_dir, device, model)
        monitor.scalars(
            {"test/bleu": results["test"]["bleu"], "test/chrf": results["test"]["chrf"]},
            state.update,
        )
    if is_main:
        (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    monitor.close()
    dist_utils.cleanup(ctx)
    return results


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
    loss_sum = nll_sum = 0.0
    cells = real = 0
    for i, batch in enumerate(group):
        b = batch.to(device)
        sync = i == len(group) - 1
        no_sync = getattr(criterion, "no_sync", None)
        with no_sync() if (no_sync is not None and not sync) else nullcontext():
            with autocast(device, precision):
                loss, nll = criterion(b.src, b.src_lengths, b.tgt_in, b.tgt_out)
            scaled = loss * scale
            if scaler is not None:
                scaler.scale(scaled).backward()
            else:
                scaled.backward()
        loss_sum += float(loss.detach())
        nll_sum += float(nll)
        cells += b.src.numel() + b.tgt_out.numel()
        real += int(batch.src_lengths.sum()) + b.n_tgt_tokens
    if scaler is not None:
        scaler.unscale_(optimizer)
    if clip_norm > 0:
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm))
    else:
        grad_norm = float(
            torch.linalg.vector_norm(
                torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None])
            )
        )
    finite = math.isfinite(grad_norm) and math.isfinite(loss_sum)
    finite = not dist_utils.any_rank(ctx, not finite)  # skip (or not) on every rank alike
    if (
        scaler is not None
    ):  # fp16: overflow is routine; the scaler skips that step, lowers its scale
        scaler.step(optimizer)
        scaler.update()
        finite = True
    elif finite:
        optimizer.step()
    else:
        optimizer.zero_grad(set_to_none=True)
    return {
        "finite": finite,
        "loss": loss_sum,
        "nll": nll_sum,
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
    path = out_dir / f"ckpt_u{state.update}.pt"
    save_checkpoint(path, payload)
    state.kept.append([value, str(path)])
    reverse = metric_mode(cfg.trainer.early_stop_metric) == "max"
    state.kept.sort(key=lambda kv: kv[0], reverse=reverse)
    for _, old in state.kept[keep:]:
        Path(old).unlink(missing_ok=True)
    state.kept = state.kept[:keep]


def limits_reached(cfg: TrainConfig, state: TrainState) -> str:
    t = cfg.trainer
    if t.max_updates and state.update >= t.max_updates:
        return f"reached max_updates={t.max_updates}"
    if t.max_time_min and state.elapsed_s >= t.max_time_min * 60:
        return f"reached max_time_min={t.max_time_min}"
    return ""


def resume(
    path: Path,
    model: Seq2Seq,
    optimizer: torch.optim.Optimizer,
    scheduler: Scheduler,
    scaler: torch.amp.GradScaler | None,
    sampler: BucketBatchSampler,
    world_size: int,
    rank: int = 0,
) -> TrainState:
    ckpt = load_checkpoint(path)
    if "trainer" not in ckpt:
        raise CheckpointError(
            f"{path}: a model-only checkpoint (best/averaged) cannot resume training"
        )
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(
            f"{path}: does not fit this model config ({str(e).splitlines()[0]})"
        ) from None
    t = ckpt["trainer"]
    optimizer.load_state_dict(t["optimizer"])
    scheduler.load_state_dict(t["scheduler"])
    if scaler is not None and t.get("scaler"):
        scaler.load_state_dict(t["scaler"])
    state = TrainState(**t["state"])
    if t["world_size"] == world_size:
        sampler.load_state_dict(t["sampler"])
        set_rng_state(t.get("rank_rngs", [t["rng"]])[rank])
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


def evaluate_test(
    cfg: TrainConfig, prepared: Prepared, out_dir: Path, device: torch.device, model: Seq2Seq
) -> dict[str, Any]:
    """Translate the test split with the best checkpoint (beam search) and score it."""
    best = out_dir / "best.pt"
    if best.is_file():
        model.load_state_dict(load_checkpoint(best)["model"])
    model.eval()
    src, ref = prepared.raw("test")
    hyps = translate_lines(model, prepared.tokenizer, src, cfg.decode, device)
    texts = prepared.tokenizer.decode_tgt([h[0].tokens for h in hyps])
    hyp_path = out_dir / f"test.hyp.{cfg.data.tgt}"
    hyp_path.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    scores = score(texts, ref, ("bleu", "chrf"))
    scores["translations"] = str(hyp_path)
    scores["checkpoint"] = str(best if best.is_file() else out_dir / "last.pt")
    scores["beam_size"] = cfg.decode.beam_size
    (out_dir / "test_scores.json").write_text(json.dumps(scores, indent=2) + "\n")
    return scores

"""The training loop, read top to bottom: set up, loop over updates, validate, checkpoint, stop.

No Hydra in here: ``train(cfg, out_dir)`` takes the typed ``TrainConfig``. Data-parallel
training (torchrun) is the same loop with a ``DistributedDataParallel`` wrapper, a sharded
sampler and a global token count; see ``nmt.distributed``.
"""

from __future__ import annotations

import logging
import math
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from nmt import distributed as dist_utils
from nmt.batching import BucketBatchSampler
from nmt.checkpoint import (
    remove_stale_temps,
)
from nmt.config import TrainConfig, TrainerConfig
from nmt.data import Batch, ParallelDataset, Prepared, collate_indices, prepare
from nmt.device import (
    fp16_step_skipped,
    real_rows,
    set_tf32,
    to_device,
)
from nmt.faults import fault_point
from nmt.loss import Criterion
from nmt.metrics import check_settings
from nmt.model import Seq2Seq, build_model
from nmt.optim import build_optimizer, build_scheduler
from nmt.resume import (
    adopt_run_files,
    find_resume,
    init_from_config,
    resume,
    start_from,
    stored_results,
)
from nmt.rng import seed_everything
from nmt.run import (
    Run,
    TrainingError,
    TrainingInterrupted,
    TrainState,
    write_json,
)
from nmt.runtime import autocast, pick_device, tune_malloc
from nmt.validation import evaluate_test, metric_mode, run_validation

log = logging.getLogger(__name__)


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
        group.append(collate_indices(dataset, idx, pad, bos, eos))
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


def setup(cfg: TrainConfig, out_dir: Path) -> Run:
    """Device, data, model, optimizer, and the state to continue from."""
    cfg, init = init_from_config(cfg)
    ctx, device = setup_process(cfg, out_dir)
    prepared, train_set, sampler = setup_data(cfg, ctx)
    run = setup_model(cfg, out_dir, ctx, device, prepared, train_set, sampler)
    resume_from = find_resume(cfg, out_dir)
    if dist_utils.sum_int(ctx, resume_from is not None) not in (0, ctx.world_size):
        raise TrainingError(
            f"{out_dir / 'last.pt'}: only some ranks can read it; on several machines the "
            "output directory must be on a shared filesystem"
        )
    if resume_from is not None:
        run.state = resume(run, resume_from)
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
            sum(p.numel() for p in run.model.parameters()) / 1e6,
            len(train_set),
            device,
            ctx.world_size,
        )
    return run


def setup_process(cfg: TrainConfig, out_dir: Path) -> tuple[dist_utils.DistContext, torch.device]:
    """The process group, the device and the process-wide settings; checks that need them."""
    ctx = dist_utils.init(cfg.device, cfg.trainer.dist_timeout_s)
    device = ctx.device if ctx.world_size > 1 else pick_device(cfg.device)
    tcfg = cfg.trainer
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
    return ctx, device


def setup_data(
    cfg: TrainConfig, ctx: dist_utils.DistContext
) -> tuple[Prepared, ParallelDataset, BucketBatchSampler]:
    """The prepared cache (rank 0 builds it, the others then find it) and the sampler."""
    with dist_utils.main_first(ctx):
        prepared = prepare(cfg.data, cfg.tokenizer)
    train_set = prepared.dataset("train")
    data_id = (prepared.tokenizer.fingerprint(), len(train_set))
    if dist_utils.any_rank(ctx, dist_utils.broadcast_object(ctx, data_id) != data_id):
        raise TrainingError(
            f"ranks prepared different data in {prepared.path}: on several machines, put "
            "data.cache_dir on a shared filesystem or copy rank 0's cache to every machine"
        )
    sampler = train_sampler(train_set, cfg.trainer, ctx.world_size, ctx.rank)
    sampler.set_epoch(0)  # a new run's first epoch: the check computes the batches it uses
    check_epoch_size(sampler, cfg.trainer, ctx.world_size)
    return prepared, train_set, sampler


def setup_model(
    cfg: TrainConfig,
    out_dir: Path,
    ctx: dist_utils.DistContext,
    device: torch.device,
    prepared: Prepared,
    train_set: ParallelDataset,
    sampler: BucketBatchSampler,
) -> Run:
    """Model, criterion (DDP-wrapped under torchrun), optimizer, schedule and scaler."""
    tcfg, ocfg, tok = cfg.trainer, cfg.optim, prepared.tokenizer
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
    return Run(
        cfg, out_dir, ctx, device, prepared, train_set, sampler, model, criterion, optimizer,
        scheduler, scaler, TrainState(),
    )  # fmt: skip


def check_epoch_size(sampler: BucketBatchSampler, tcfg: TrainerConfig, world_size: int) -> None:
    """An epoch must give every process at least one batch, or the loop could never update."""
    if len(sampler) == 0:
        raise TrainingError(
            f"the training split gives fewer batches per epoch at trainer.max_tokens="
            f"{tcfg.max_tokens} than the {world_size} processes: use fewer processes, a "
            "smaller trainer.max_tokens or more training data"
        )


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
    acc = LogWindow()
    step = Step.of(run)
    run_start = time.perf_counter() - state.elapsed_s
    run.model.train()
    flag.immediate = False
    while True:
        updated = False
        for group in update_groups(
            run.sampler, run.train_set, tok.pad_id, tok.bos_id, tok.eos_id, tcfg.accum_steps
        ):
            updated = True
            stats = train_update(group, step)
            if not stats.finite:
                skip_update(run, state)
                continue
            count_update(run, stats, acc, bar)
            if state.update % tcfg.valid_every == 0:
                run_validation(run)
            state.elapsed_s = time.perf_counter() - run_start
            if state.update % tcfg.save_every == 0:
                run.save_last()
            stop_reason = finished(cfg, state)
            if decide(run, flag, stop_reason) == Decision.STOP:
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


def count_update(run: Run, stats: UpdateStats, acc: LogWindow, bar: tqdm) -> None:
    """Advance the counters and the schedule after a finite update; log every ``log_every``."""
    state = run.state
    state.nonfinite_in_row = 0
    state.update += 1
    state.tokens += stats.tokens
    if not isinstance(run.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        run.scheduler.step()
    acc.add(stats)
    bar.update(1)
    fault_point("update")
    if state.update % run.cfg.trainer.log_every == 0:
        log_train(run, acc, bar, stats.grad_norm)


def decide(run: Run, flag: StopFlag, stop_reason: str) -> Decision:
    """Every rank takes the same exit: the largest ``Decision`` over the ranks. Interrupted:
    save ``last.pt`` and raise ``TrainingInterrupted``."""
    local = Decision.STOP if stop_reason else Decision.GO_ON
    if flag.signum:
        local = Decision.INTERRUPTED
    decision = Decision(dist_utils.max_int(run.ctx, int(local)))
    if decision == Decision.INTERRUPTED:
        path = run.save_last()
        if run.is_main:
            log.warning(
                "interrupted at update %d; saved %s. Resume with: python -m nmt.train resume=%s",
                run.state.update,
                path,
                path,
            )
        raise TrainingInterrupted(flag.signum or signal.SIGTERM, path)
    return decision


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


def finish(run: Run, stop_reason: str) -> dict[str, Any]:
    """Final validation (unless this update was validated), ``last.pt``, test scores and
    ``results.json``. ``last.pt`` is written before anything slow, so a signal or a crash in
    here loses no update; started again, the run does only what is missing."""
    state, cfg = run.state, run.cfg
    log.info("stopping: %s", stop_reason)
    run.save_last()
    fault_point("finish")
    if state.update > 0 and state.valid_update != state.update:
        run_validation(run)
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
        results["test"] = evaluate_test(run)
        run.get_monitor().scalars(
            {"test/bleu": results["test"]["bleu"], "test/chrf": results["test"]["chrf"]},
            state.update,
        )
    if run.is_main:
        write_json(run.out_dir / "results.json", results)
    return results


@dataclass(frozen=True)
class Step:
    """What ``train_update`` needs besides the batches: the parts of a run one optimizer update
    uses (``Step.of(run)`` in the loop; benchmarks and tests build one from their own parts)."""

    criterion: nn.Module  # the model + loss (DDP-wrapped under torchrun)
    model: Seq2Seq
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None  # fp16 only
    ctx: dist_utils.DistContext
    device: torch.device
    precision: str  # trainer.precision: fp32 | bf16 | fp16
    clip_norm: float  # optim.clip_norm (0: no clipping)

    @classmethod
    def of(cls, run: Run) -> Step:
        return cls(
            run.criterion, run.model, run.optimizer, run.scaler, run.ctx, run.device,
            run.cfg.trainer.precision, run.cfg.optim.clip_norm,
        )  # fmt: skip


def train_update(group: list[Batch], step: Step) -> UpdateStats:
    """One optimizer update over ``group`` (accumulated batches), normalised by the number of
    real target tokens across the group and across all ranks."""
    criterion, model, optimizer, scaler = step.criterion, step.model, step.optimizer, step.scaler
    ctx, device = step.ctx, step.device
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
            with autocast(device, step.precision):
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
    norm = grad_norm_(model, step.clip_norm)
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
    return UpdateStats(finite, loss_f, nll_f, local_tokens, grad_norm, cells, real)


def grad_norm_(model: nn.Module, clip_norm: float) -> torch.Tensor:
    """The total gradient norm, clipped to ``clip_norm`` in place when that is positive."""
    if clip_norm > 0:
        return torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
    grads = [p.grad.norm() for p in model.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(grads))


@dataclass
class UpdateStats:
    """What one update did, summed over its batches (this rank's share)."""

    finite: bool  # False: non-finite loss or gradient (or an fp16 step the scaler skipped)
    loss: float  # smoothed loss sum
    nll: float  # NLL sum
    tokens: int  # real target tokens
    grad_norm: float
    cells: int  # padded cells of source and target
    real: int  # real tokens of source and target


@dataclass
class LogWindow:
    """The updates since the last log line."""

    loss: float = 0.0
    nll: float = 0.0
    tokens: int = 0
    cells: int = 0
    real: int = 0
    t0: float = field(default_factory=time.perf_counter)

    def reset(self) -> None:
        self.loss = self.nll = 0.0
        self.tokens = self.cells = self.real = 0
        self.t0 = time.perf_counter()

    def add(self, s: UpdateStats) -> None:
        self.loss += s.loss
        self.nll += s.nll
        self.tokens += s.tokens
        self.cells += s.cells
        self.real += s.real


def log_train(run: Run, acc: LogWindow, bar: tqdm, grad_norm: float) -> None:
    """Log the updates since the last call (per-token figures), then reset ``acc``."""
    now = time.perf_counter()
    tokens = max(acc.tokens, 1)
    loss, nll = acc.loss / tokens, acc.nll / tokens
    lr = run.optimizer.param_groups[0]["lr"]
    tps = acc.tokens / max(now - acc.t0, 1e-9)
    pad = 1.0 - acc.real / max(acc.cells, 1)
    if run.is_main:
        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tps:,.0f}")
        log.info(
            "update %d epoch %d | loss %.3f nll %.3f ppl %.1f | lr %.2e | %.0f tgt tok/s | "
            "grad norm %.2f | pad %.1f%%",
            run.state.update,
            run.state.epoch + 1,
            loss,
            nll,
            math.exp(min(nll, 50)),
            lr,
            tps,
            grad_norm,
            100 * pad,
        )
        run.get_monitor().scalars(
            {
                "train/loss": loss,
                "train/nll": nll,
                "train/ppl": math.exp(min(nll, 50)),
                "train/lr": lr,
                "train/grad_norm": grad_norm,
                "train/tokens_per_sec": tps,
                "train/pad_fraction": pad,
            },
            run.state.update,
        )
    acc.reset()

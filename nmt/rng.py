"""Seeding, and the random state a checkpoint saves and restores (Python, NumPy, torch, and
the CUDA device in use), so a resumed run draws the same numbers as an uninterrupted one."""

from __future__ import annotations

import logging
import random
from typing import Any

import numpy as np
import torch

from nmt.device import (
    cuda_rng_state,
    set_cuda_rng_state,
)

log = logging.getLogger(__name__)


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

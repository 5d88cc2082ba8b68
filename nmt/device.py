"""Device-specific choices made explicit: TF32, the RNG state of the device in use, and
mixed-precision bookkeeping. Nothing here initialises CUDA unless the device in use is CUDA.

TF32: on Ampere and newer GPUs PyTorch may run float32 matmuls and cuDNN calls (the LSTM
included; ``torch.backends.cudnn.allow_tf32`` is on by default) in TF32, a 10-bit mantissa.
``set_tf32`` sets both flags from ``trainer.tf32`` (off by default: ``precision=fp32`` means
float32) and returns them for the log. They are process-wide and do nothing on the CPU.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # no runtime import: nmt.lstm and nmt.encoder import this module
    from nmt.data import Batch

log = logging.getLogger(__name__)


def set_tf32(enabled: bool) -> dict[str, bool]:
    """Allow (or forbid) TF32 in float32 matmuls and in cuDNN; returns the flags as set."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    return tf32_flags()


def tf32_flags() -> dict[str, bool]:
    """The TF32 flags in force (matmul: cuBLAS float32 matmuls; cudnn: cuDNN, the LSTM)."""
    return {
        "matmul": bool(torch.backends.cuda.matmul.allow_tf32),
        "cudnn": bool(torch.backends.cudnn.allow_tf32),
    }


def cuda_rng_state(device: torch.device) -> torch.Tensor | None:
    """The RNG state of ``device`` if it is a CUDA device, else None (CUDA left untouched)."""
    if device.type != "cuda":
        return None
    return torch.cuda.get_rng_state(device)


def set_cuda_rng_state(saved: Any, device: torch.device) -> bool:
    """Restore ``saved`` into ``device``'s generator; True if something was restored.

    ``saved`` is one state (this format), or the list of every visible GPU's states that
    earlier versions wrote: then the entry of ``device``'s index is used when there is one.
    Nothing happens off CUDA or when ``saved`` is None.
    """
    if device.type != "cuda" or saved is None:
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    if isinstance(saved, list | tuple):  # the old format: one state per visible GPU
        if index >= len(saved):
            log.warning(
                "checkpoint holds CUDA RNG states of %d GPUs, none for cuda:%d: the CUDA "
                "generator is not restored",
                len(saved),
                index,
            )
            return False
        saved = saved[index]
    torch.cuda.set_rng_state(saved, torch.device("cuda", index))
    return True


def fp16_step_skipped(scale_before: float, scale_after: float) -> bool:
    """Whether ``GradScaler`` skipped the optimizer step of an update.

    ``GradScaler.update`` multiplies the scale by ``backoff_factor`` (< 1) exactly when the
    step found inf/NaN gradients and was skipped; otherwise the scale stays or grows.
    """
    return scale_after < scale_before


def to_device(batch: Batch, device: torch.device) -> Batch:
    """``batch.to(device)``; on CUDA from page-locked memory, so the copies are asynchronous
    (a copy from pageable memory waits for the stream: a host-device sync per tensor)."""
    if device.type == "cuda":
        batch = replace(
            batch,
            src=batch.src.pin_memory(),
            tgt_in=batch.tgt_in.pin_memory(),
            tgt_out=batch.tgt_out.pin_memory(),
            index=batch.index.pin_memory(),
        )
    return batch.to(device)


def async_to(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU tensor on ``device``: on CUDA copied from page-locked memory without waiting."""
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def real_rows(tgt_out: torch.Tensor, pad_id: int, device: torch.device) -> torch.Tensor:
    """Flat indices (N,) of the real (non-pad) cells of a CPU ``tgt_out`` (B, T), on ``device``.

    Computed on the CPU: a boolean mask on the GPU would need a sync to learn N."""
    return async_to((tgt_out.reshape(-1) != pad_id).nonzero().squeeze(1), device)

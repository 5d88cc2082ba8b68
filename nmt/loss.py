"""Label-smoothed negative log-likelihood over real target tokens.

Shapes: N real (non-pad) target tokens, V vocabulary size.

With smoothing eps the target distribution is (1 - eps) on the reference token plus eps spread
uniformly over all V entries, so the loss per token is

    (1 - eps) * -log p(y) + eps * mean_v(-log p(v))

which is exactly what ``F.cross_entropy(..., label_smoothing=eps)`` computes.
"""

from __future__ import annotations

import torch
from torch import Tensor


def smoothed_loss_and_nll(
    logits: Tensor, target: Tensor, smoothing: float
) -> tuple[Tensor, Tensor]:
    """logits (N, V), target (N,) -> (summed smoothed loss, summed plain NLL (detached)).

    One log-softmax serves both: the loss to optimise and the NLL to report as perplexity.
    Computed in float32 whatever the logits' dtype (bf16/fp16 autocast).
    """
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"label smoothing must be in [0, 1), got {smoothing}")
    log_probs = torch.log_softmax(logits.float(), dim=-1)  # (N, V)
    nll = -log_probs.gather(1, target[:, None]).squeeze(1)  # (N, 1) -> (N,)
    loss = nll
    if smoothing > 0.0:
        uniform = -log_probs.mean(dim=-1)  # (N,)
        loss = (1.0 - smoothing) * nll + smoothing * uniform
    return loss.sum(), nll.detach().sum()


def label_smoothed_nll(logits: Tensor, target: Tensor, smoothing: float) -> tuple[Tensor, int]:
    """logits (N, V) for real tokens only, target (N,) -> (summed loss, a float32 scalar; N).

    Divide by N (or by the token count summed over accumulation steps / ranks) for the mean.
    """
    loss, _ = smoothed_loss_and_nll(logits, target, smoothing)
    return loss, target.numel()

"""Label-smoothed negative log-likelihood over real target tokens.

Shapes: N real (non-pad) target tokens, V vocabulary size.

With smoothing eps the target distribution is (1 - eps) on the reference token plus eps spread
uniformly over all V entries, so the loss per token is

    (1 - eps) * -log p(y) + eps * mean_v(-log p(v))

which is exactly what ``F.cross_entropy(..., label_smoothing=eps)`` computes. ``Criterion``
puts the model and this loss together (what DDP wraps in data-parallel training).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from nmt.model import Seq2Seq


class _SmoothedCrossEntropy(torch.autograd.Function):
    """Summed label-smoothed cross-entropy and summed NLL, with a hand-written backward.

    The gradient of the summed loss w.r.t. the logits is ``softmax - (1 - eps) * onehot(y) -
    eps / V``, written into one (N, V) buffer; autograd through log_softmax, gather and mean
    would allocate and pass over four. The logits are the biggest tensors of a training step
    (2000 tokens x 8k vocabulary = 64 MB), so this is worth its ten lines.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, logits: Tensor, target: Tensor, smoothing: float
    ) -> tuple[Tensor, Tensor]:
        x = logits.to(torch.promote_types(logits.dtype, torch.float32))  # (N, V)
        lse = torch.logsumexp(x, dim=-1)  # (N,)
        nll = lse - x.gather(1, target[:, None]).squeeze(1)  # (N,)
        loss = nll
        if smoothing > 0.0:
            loss = (1.0 - smoothing) * nll + smoothing * (lse - x.mean(dim=-1))
        ctx.save_for_backward(logits, target, lse)
        ctx.smoothing = smoothing
        ctx.mark_non_differentiable(nll)
        return loss.sum(), nll.sum()

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad_loss: Tensor, grad_nll: Tensor
    ) -> tuple[Tensor, None, None]:
        logits, target, lse = ctx.saved_tensors
        eps: float = ctx.smoothing
        grad = torch.sub(logits.to(lse.dtype), lse[:, None]).exp_()  # softmax (N, V)
        if eps > 0.0:
            grad.sub_(eps / logits.size(-1))
        grad.scatter_add_(1, target[:, None], grad.new_full((target.numel(), 1), -(1.0 - eps)))
        return grad.mul_(grad_loss).to(logits.dtype), None, None


def smoothed_loss_and_nll(
    logits: Tensor, target: Tensor, smoothing: float
) -> tuple[Tensor, Tensor]:
    """logits (N, V), target (N,) -> (summed smoothed loss, summed plain NLL (detached)).

    One log-sum-exp serves both: the loss to optimise and the NLL to report as perplexity.
    Computed in float32 whatever the logits' dtype (bf16/fp16 autocast).
    """
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"label smoothing must be in [0, 1), got {smoothing}")
    loss, nll = _SmoothedCrossEntropy.apply(logits, target, smoothing)
    return loss, nll.detach()


def label_smoothed_nll(logits: Tensor, target: Tensor, smoothing: float) -> tuple[Tensor, int]:
    """logits (N, V) for real tokens only, target (N,) -> (summed loss, a float32 scalar; N).

    Divide by N (or by the token count summed over accumulation steps / ranks) for the mean.
    """
    loss, _ = smoothed_loss_and_nll(logits, target, smoothing)
    return loss, target.numel()


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

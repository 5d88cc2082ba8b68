"""label_smoothed_nll against F.cross_entropy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nmt.loss import label_smoothed_nll


def make(n: int = 9, v: int = 13, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, v, generator=gen) * 3, torch.randint(0, v, (n,), generator=gen)


def test_no_smoothing_equals_cross_entropy() -> None:
    logits, target = make()
    loss, n = label_smoothed_nll(logits, target, 0.0)
    assert n == 9
    torch.testing.assert_close(loss, F.cross_entropy(logits, target, reduction="sum"))


@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_smoothing_equals_cross_entropy_label_smoothing(eps: float) -> None:
    logits, target = make()
    loss, n = label_smoothed_nll(logits, target, eps)
    expected = F.cross_entropy(logits, target, label_smoothing=eps, reduction="sum")
    torch.testing.assert_close(loss, expected)
    # and by hand: (1 - eps) * nll + eps * mean over the vocabulary of -log p
    log_p = torch.log_softmax(logits, -1)
    by_hand = sum(
        (1 - eps) * -log_p[i, target[i]] + eps * -log_p[i].mean() for i in range(len(target))
    )
    torch.testing.assert_close(loss, by_hand)


def test_gradient_matches_cross_entropy() -> None:
    logits, target = make()
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    label_smoothed_nll(a, target, 0.1)[0].backward()
    F.cross_entropy(b, target, label_smoothing=0.1, reduction="sum").backward()
    assert a.grad is not None and b.grad is not None
    torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_scaled_gradient_matches_cross_entropy_and_gradcheck(eps: float) -> None:
    """The hand-written backward: a scaled loss (as the trainer scales by 1/tokens) and
    finite differences in float64."""
    logits, target = make(n=6, v=7, seed=3)
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    (label_smoothed_nll(a, target, eps)[0] * 0.37).backward()
    (F.cross_entropy(b, target, label_smoothing=eps, reduction="sum") * 0.37).backward()
    assert a.grad is not None and b.grad is not None
    torch.testing.assert_close(a.grad, b.grad)
    x = logits.double().requires_grad_()
    assert torch.autograd.gradcheck(lambda z: label_smoothed_nll(z, target, eps)[0], (x,))


def test_low_precision_logits_computed_in_float32() -> None:
    logits, target = make()
    low = logits.to(torch.bfloat16)
    loss, _ = label_smoothed_nll(low, target, 0.1)
    assert loss.dtype == torch.float32
    expected = F.cross_entropy(low.float(), target, label_smoothing=0.1, reduction="sum")
    torch.testing.assert_close(loss, expected)


def test_empty_and_invalid() -> None:
    loss, n = label_smoothed_nll(torch.zeros(0, 5), torch.zeros(0, dtype=torch.long), 0.1)
    assert n == 0 and loss.item() == 0.0
    with pytest.raises(ValueError, match="label smoothing"):
        label_smoothed_nll(*make(), 1.0)


def test_reported_nll_is_plain_cross_entropy_under_smoothing() -> None:
    from nmt.loss import smoothed_loss_and_nll

    g = torch.Generator().manual_seed(3)
    logits = torch.randn(9, 13, generator=g)
    target = torch.randint(0, 13, (9,), generator=g)
    loss, nll = smoothed_loss_and_nll(logits, target, 0.2)
    ref_nll = torch.nn.functional.cross_entropy(logits, target, reduction="sum")
    ref_loss = torch.nn.functional.cross_entropy(
        logits, target, reduction="sum", label_smoothing=0.2
    )
    torch.testing.assert_close(nll, ref_nll)
    torch.testing.assert_close(loss, ref_loss)
    assert not nll.requires_grad

"""nmt.dropout against the definition of (inverted) dropout."""

from __future__ import annotations

import pytest
import torch

from nmt.dropout import Dropout, dropout


def test_drops_with_probability_p_and_scales_survivors() -> None:
    torch.manual_seed(0)
    x = torch.full((200_000,), 2.0, requires_grad=True)
    y = dropout(x, 0.3, training=True)
    dropped = y == 0
    assert abs(dropped.float().mean().item() - 0.3) < 0.01
    torch.testing.assert_close(y[~dropped], torch.full_like(y[~dropped], 2.0 / 0.7))
    weights = torch.randn_like(x)
    (y * weights).sum().backward()
    assert x.grad is not None
    torch.testing.assert_close(x.grad, weights * (~dropped) / 0.7)  # same mask backward


def test_identity_in_eval_at_zero_and_seeded() -> None:
    x = torch.randn(5, 7)
    assert dropout(x, 0.5, training=False) is x
    assert dropout(x, 0.0, training=True) is x
    assert torch.equal(dropout(x, 1.0, training=True), torch.zeros_like(x))
    torch.manual_seed(3)
    a = dropout(x, 0.5, training=True)
    torch.manual_seed(3)
    assert torch.equal(a, dropout(x, 0.5, training=True))


def test_module_follows_train_and_eval() -> None:
    module = Dropout(0.5)
    x = torch.ones(1000)
    assert (module(x) == 0).any()
    module.eval()
    assert torch.equal(module(x), x)
    with pytest.raises(ValueError, match="probability"):
        Dropout(1.5)

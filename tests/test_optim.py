"""Optimizers and schedules against references: the fused Adam/AdamW path against the plain
per-tensor implementation, and the learning-rate factors against their formulas."""

from __future__ import annotations

import math

import pytest
import torch

from nmt.config import OptimConfig
from nmt.optim import build_optimizer, lr_factor


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_fused_adam_matches_reference_implementation(name: str) -> None:
    torch.manual_seed(0)
    start = [torch.randn(7, 5), torch.randn(5)]
    ours = [torch.nn.Parameter(p.clone()) for p in start]
    ref = [torch.nn.Parameter(p.clone()) for p in start]
    cfg = OptimConfig(name=name, lr=1e-2, weight_decay=0.01)
    opt = build_optimizer(ours, cfg)
    cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
    ref_opt = cls(ref, lr=1e-2, betas=cfg.betas, eps=cfg.eps, weight_decay=0.01, foreach=False)
    for _ in range(5):
        grads = [torch.randn_like(p) for p in start]
        for params, optimizer in ((ours, opt), (ref, ref_opt)):
            for p, g in zip(params, grads, strict=True):
                p.grad = g.clone()
            optimizer.step()
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.equal(ours[0], start[0])


def test_lr_factor_formulas() -> None:
    assert lr_factor(0, "constant", 4) == pytest.approx(1 / 4)
    assert lr_factor(10, "constant", 4) == 1.0
    assert lr_factor(3, "inverse_sqrt", 4) == 1.0  # end of warmup
    assert lr_factor(15, "inverse_sqrt", 4) == pytest.approx(math.sqrt(4 / 16))
    assert lr_factor(3, "inverse_sqrt", 0) == pytest.approx(0.5)

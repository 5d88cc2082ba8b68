"""Attention: every variant against a per-sentence, unpadded reference written from the formulas."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from nmt.attention import ATTENTION_KINDS, Attention, Memory

B, S, T = 3, 5, 4
LENGTHS = [5, 2, 1]


def make_memory(att: Attention, dv: int, seed: int = 0) -> Memory:
    gen = torch.Generator().manual_seed(seed)
    values = torch.randn(B, S, dv, generator=gen)  # padded positions hold garbage on purpose
    mask = torch.tensor([[s < n for s in range(S)] for n in LENGTHS])
    return Memory(values=values, keys=att.project_keys(values), mask=mask)


def reference_scores(att: Attention, q: Tensor, v: Tensor) -> Tensor:
    """q (T, Dq), v (n, Dv) real positions only -> (T, n), element by element from the formula."""
    out = torch.empty(q.size(0), v.size(0))
    for t in range(q.size(0)):
        for s in range(v.size(0)):
            if att.kind == "dot":
                out[t, s] = q[t] @ v[s]
            elif att.kind == "general":
                assert att.key_proj is not None
                out[t, s] = q[t] @ att.key_proj.weight @ v[s]  # q^T W v
            else:
                assert att.key_proj is not None and att.query_proj is not None
                assert att.score_proj is not None
                hidden = att.query_proj.weight @ q[t] + att.key_proj.weight @ v[s]
                if att.kind == "bahdanau":
                    assert att.key_proj.bias is not None
                    hidden = hidden + att.key_proj.bias
                out[t, s] = att.score_proj.weight[0] @ torch.tanh(hidden)
    return out


@pytest.mark.parametrize("kind", ATTENTION_KINDS)
def test_attention_matches_reference_and_masks_pads(kind: str) -> None:
    torch.manual_seed(0)
    dq, dv = 6, 6 if kind == "dot" else 7
    att = Attention(kind, dq, dv)
    memory = make_memory(att, dv)
    query = torch.randn(B, T, dq)
    with torch.no_grad():
        context, weights = att(query, memory)
    assert context.shape == (B, T, dv) and weights.shape == (B, T, S)
    for b, n in enumerate(LENGTHS):
        w = weights[b]
        # exactly zero on pads, sums to one over real tokens
        assert torch.equal(w[:, n:], torch.zeros_like(w[:, n:]))
        torch.testing.assert_close(w[:, :n].sum(-1), torch.ones(T))
        # reference on the unpadded sentence alone
        with torch.no_grad():
            ref_w = torch.softmax(reference_scores(att, query[b], memory.values[b, :n]), dim=-1)
        torch.testing.assert_close(w[:, :n], ref_w)
        torch.testing.assert_close(context[b], ref_w @ memory.values[b, :n])


@pytest.mark.parametrize("kind", ATTENTION_KINDS)
def test_single_step_equals_all_steps(kind: str) -> None:
    torch.manual_seed(1)
    att = Attention(kind, 6, 6)
    memory = make_memory(att, 6)
    query = torch.randn(B, T, 6)
    with torch.no_grad():
        context, weights = att(query, memory)
        for t in range(T):
            c_t, w_t = att(query[:, t : t + 1], memory)  # (B, 1, Dq)
            torch.testing.assert_close(c_t[:, 0], context[:, t])
            torch.testing.assert_close(w_t[:, 0], weights[:, t])


@pytest.mark.parametrize("kind", ATTENTION_KINDS)
def test_pad_values_get_no_gradient(kind: str) -> None:
    torch.manual_seed(2)
    att = Attention(kind, 6, 6)
    values = torch.randn(B, S, 6, requires_grad=True)
    mask = torch.tensor([[s < n for s in range(S)] for n in LENGTHS])
    memory = Memory(values=values, keys=att.project_keys(values), mask=mask)
    context, _ = att(torch.randn(B, T, 6), memory)
    context.sum().backward()
    assert values.grad is not None
    for b, n in enumerate(LENGTHS):
        assert torch.equal(values.grad[b, n:], torch.zeros_like(values.grad[b, n:]))
        assert values.grad[b, :n].abs().sum() > 0


@pytest.mark.parametrize("kind", ATTENTION_KINDS)
def test_bf16_autocast_weights_are_float32_and_masked(kind: str) -> None:
    torch.manual_seed(3)
    att = Attention(kind, 6, 6)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        memory = make_memory(att, 6)
        _, weights = att(torch.randn(B, T, 6), memory)
    assert weights.dtype == torch.float32
    for b, n in enumerate(LENGTHS):
        assert torch.equal(weights[b, :, n:], torch.zeros_like(weights[b, :, n:]))
        torch.testing.assert_close(weights[b, :, :n].sum(-1), torch.ones(T))


def test_keys_projected_once_and_shapes() -> None:
    dv = 7
    for kind, dk in (("dot", 6), ("general", 6), ("concat", 6), ("bahdanau", 6)):
        att = Attention(kind, 6, 6 if kind == "dot" else dv)
        values = torch.randn(B, S, 6 if kind == "dot" else dv)
        keys = att.project_keys(values)
        assert keys.shape == (B, S, dk)
        if kind == "dot":
            assert keys is values


def test_invalid_configurations() -> None:
    with pytest.raises(ValueError, match="dot attention needs"):
        Attention("dot", 6, 8)
    with pytest.raises(ValueError, match="unknown attention"):
        Attention("luong", 6, 6)


def test_memory_index_select() -> None:
    att = Attention("general", 6, 6)
    memory = make_memory(att, 6)
    index = torch.tensor([2, 2, 0])
    picked = memory.index_select(index)
    assert torch.equal(picked.values, memory.values[index])
    assert torch.equal(picked.keys, memory.keys[index])
    assert torch.equal(picked.mask, memory.mask[index])


@pytest.mark.parametrize("kind", ATTENTION_KINDS)
@pytest.mark.parametrize("steps", [1, T])
def test_beams_share_a_memory_row(kind: str, steps: int) -> None:
    """K query rows per memory row (beam search) equal attending to the memory repeated K times."""
    torch.manual_seed(1)
    k, dq = 3, 6
    dv = dq if kind == "dot" else 7
    att = Attention(kind, dq, dv)
    memory = make_memory(att, dv)
    query = torch.randn(B * k, steps, dq)
    with torch.no_grad():
        context, weights = att(query, memory)
        tiled = memory.index_select(torch.arange(B).repeat_interleave(k))  # row b*K + k -> b
        want_context, want_weights = att(query, tiled)
    assert context.shape == (B * k, steps, dv) and weights.shape == (B * k, steps, S)
    torch.testing.assert_close(context, want_context)
    torch.testing.assert_close(weights, want_weights)
    with pytest.raises(ValueError, match=r"query rows \(7\) must be a multiple of memory rows"):
        att(torch.randn(7, steps, dq), memory)

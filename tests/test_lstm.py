"""nmt.lstm against torch's own LSTM: same outputs, final states and gradients.

The references: ``nn.LSTM`` on a ``PackedSequence`` (encoder and the decoder's fast path),
the generic ``Decoder._step`` loop over ``nn.LSTM`` (input feeding / Bahdanau), a plain matmul
in a loop (``SharedWeight``) and the LSTM cell equations (``lstm_cell``).
"""

from __future__ import annotations

import dataclasses
import os
import platform
import subprocess
import sys

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from nmt.config import ModelConfig
from nmt.encoder import Encoder
from nmt.lstm import (
    SharedWeight,
    layer_weights,
    lstm_cell,
    lstm_step,
    packed_lstm,
    run_packed,
    uses_nmt,
)
from nmt.model import build_model
from nmt.runtime import tune_malloc


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layers,bidirectional", [(1, False), (2, False), (1, True), (3, True)])
@pytest.mark.parametrize("with_state", [False, True])
def test_packed_lstm_matches_nn_lstm(layers: int, bidirectional: bool, with_state: bool) -> None:
    torch.manual_seed(layers + 10 * bidirectional + 100 * with_state)
    dirs = 2 if bidirectional else 1
    lstm = torch.nn.LSTM(5, 4, num_layers=layers, bidirectional=bidirectional, batch_first=True)
    lengths = torch.tensor([2, 6, 6, 1, 4, 3])
    x = torch.randn(6, 6, 5)
    h0 = torch.randn(layers * dirs, 6, 4)
    c0 = torch.randn(layers * dirs, 6, 4)
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    out, (h, c) = lstm(packed, (h0, c0) if with_state else None)
    order, restore = packed.sorted_indices, packed.unsorted_indices
    state = (h0.index_select(1, order), c0.index_select(1, order)) if with_state else None
    data, h2, c2 = packed_lstm(
        lstm, packed.data, packed.batch_sizes.tolist(), lengths[order].tolist(), state
    )
    _close(data, out.data)
    _close(h2.index_select(1, restore), h)
    _close(c2.index_select(1, restore), c)


@pytest.mark.parametrize("layers,bidirectional", [(1, False), (2, True), (3, True)])
@pytest.mark.parametrize("with_state", [False, True])
def test_packed_lstm_gradients_match_nn_lstm(
    layers: int, bidirectional: bool, with_state: bool
) -> None:
    dirs = 2 if bidirectional else 1
    lengths = torch.tensor([2, 6, 6, 1, 4, 3])
    torch.manual_seed(3)
    lstm = torch.nn.LSTM(5, 4, num_layers=layers, bidirectional=bidirectional, batch_first=True)
    x = torch.randn(6, 6, 5, requires_grad=True)
    h0 = torch.randn(layers * dirs, 6, 4, requires_grad=True)
    c0 = torch.randn(layers * dirs, 6, 4, requires_grad=True)
    w_out = torch.randn(int(lengths.sum()), dirs * 4)
    w_h = torch.randn(layers * dirs, 6, 4)
    w_c = torch.randn(layers * dirs, 6, 4)
    leaves = [x, h0, c0, *lstm.parameters()]

    def grads(ours: bool) -> list[torch.Tensor | None]:
        for p in leaves:
            p.grad = None
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        order, restore = packed.sorted_indices, packed.unsorted_indices
        if ours:
            state = (h0.index_select(1, order), c0.index_select(1, order)) if with_state else None
            data, h, c = packed_lstm(
                lstm, packed.data, packed.batch_sizes.tolist(), lengths[order].tolist(), state
            )
            h, c = h.index_select(1, restore), c.index_select(1, restore)
        else:
            out, (h, c) = lstm(packed, (h0, c0) if with_state else None)
            data = out.data
        ((data * w_out).sum() + (h * w_h).sum() + (c * w_c).sum()).backward()
        return [p.grad.clone() if p.grad is not None else None for p in leaves]

    reference, ours = grads(False), grads(True)
    for name, a, b in zip(
        ["x", "h0", "c0", *dict(lstm.named_parameters())], reference, ours, strict=True
    ):
        if a is None:
            assert b is None or not b.any(), name
        else:
            assert b is not None, name
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)


def test_packed_lstm_single_steps_and_single_sequence() -> None:
    """All lengths 1 (no recurrent step at all) and one sequence alone."""
    torch.manual_seed(4)
    lstm = torch.nn.LSTM(3, 2, num_layers=2, bidirectional=True, batch_first=True)
    for lengths in (torch.tensor([1, 1, 1]), torch.tensor([5])):
        x = torch.randn(len(lengths), int(lengths.max()), 3)
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, (h, c) = lstm(packed)
        data, h2, c2 = packed_lstm(lstm, packed.data, packed.batch_sizes.tolist(), lengths.tolist())
        _close(data, out.data)
        _close(h2.index_select(1, packed.unsorted_indices), h)
        _close(c2.index_select(1, packed.unsorted_indices), c)


def _encoders(layers: int, bidirectional: bool) -> tuple[Encoder, Encoder]:
    torch.manual_seed(5)
    ref = Encoder(40, 8, 6, layers, bidirectional, 0.0, 0, rnn_impl="torch")
    ours = Encoder(40, 8, 6, layers, bidirectional, 0.0, 0, rnn_impl="nmt")
    ours.load_state_dict(ref.state_dict())
    return ref, ours


@pytest.mark.parametrize("layers,bidirectional", [(1, False), (2, True)])
def test_encoder_impls_agree(layers: int, bidirectional: bool) -> None:
    ref, ours = _encoders(layers, bidirectional)
    lengths = torch.tensor([3, 7, 1, 7, 5])
    src = torch.randint(4, 40, (5, 7))
    src[torch.arange(7)[None] >= lengths[:, None]] = 0
    results = []
    for enc in (ref, ours):
        out = enc(src, lengths)
        weights = torch.linspace(-1, 1, out.outputs.numel()).view_as(out.outputs)
        ((out.outputs * weights).sum() + (out.h**2).sum() + (0.5 * out.c).sum()).backward()
        results.append((out, {n: p.grad.clone() for n, p in enc.named_parameters()}))
    (a, grads_a), (b, grads_b) = results
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-6)
    assert (b.outputs[~b.mask] == 0).all()  # exactly 0 at padding, like pad_packed_sequence
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-5, atol=1e-6, msg=name)


def test_encoder_rejects_unknown_impl() -> None:
    with pytest.raises(ValueError, match="rnn_impl"):
        Encoder(10, 4, 4, 1, True, 0.0, 0, rnn_impl="cudnn")


@pytest.mark.parametrize(
    "attention,input_feeding,dec_layers",
    [
        ("general", True, 2),  # the benchmark's reference decoder
        ("general", False, 2),  # fast path: packed recurrence
        ("bahdanau", False, 2),
        ("concat", True, 1),
        ("dot", True, 3),
    ],
)
def test_decoder_impls_agree(attention: str, input_feeding: bool, dec_layers: int) -> None:
    """Teacher forcing with rnn_impl=nmt == rnn_impl=torch: states, attention, gradients."""
    cfg = ModelConfig(
        emb_size=8,
        enc_hidden=6,
        enc_layers=2,
        dec_hidden=12,
        dec_layers=dec_layers,
        dropout=0.0,
        attention=attention,
        input_feeding=input_feeding,
    )
    torch.manual_seed(6)
    ref = build_model(dataclasses.replace(cfg, rnn_impl="torch"), 30, 30, 0)
    ours = build_model(dataclasses.replace(cfg, rnn_impl="nmt"), 30, 30, 0)
    ours.load_state_dict(ref.state_dict())
    lengths = torch.tensor([3, 7, 1, 7, 5])
    src = torch.randint(4, 30, (5, 7))
    src[torch.arange(7)[None] >= lengths[:, None]] = 0
    tgt_lengths = torch.tensor([4, 2, 6, 6, 1])
    tgt = torch.randint(4, 30, (5, 6))
    tgt[torch.arange(6)[None] >= tgt_lengths[:, None]] = 0
    real = tgt != 0
    results = []
    for model in (ref, ours):
        states, weights = model.forward_with_attention(src, lengths, tgt)
        model.logits(states[real]).logsumexp(-1).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((states[real], weights[real], grads))
    (s_a, w_a, g_a), (s_b, w_b, g_b) = results
    torch.testing.assert_close(s_b, s_a, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(w_b, w_a, rtol=1e-5, atol=1e-6)
    assert g_a.keys() == g_b.keys()
    for name in g_a:
        torch.testing.assert_close(g_b[name], g_a[name], rtol=1e-4, atol=1e-6, msg=name)


def test_decoder_nmt_impl_trains_with_dropout() -> None:
    """Training mode with dropout: runs, differs between calls, and eval mode is repeatable."""
    cfg = ModelConfig(emb_size=8, enc_hidden=6, dec_hidden=12, dropout=0.3, input_feeding=True)
    model = build_model(dataclasses.replace(cfg, rnn_impl="nmt"), 30, 30, 0)
    src = torch.randint(4, 30, (3, 5))
    tgt = torch.randint(4, 30, (3, 4))
    lengths = torch.tensor([5, 5, 5])
    a, b = model(src, lengths, tgt), model(src, lengths, tgt)
    assert not torch.equal(a, b)
    a.sum().backward()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(src, lengths, tgt), model(src, lengths, tgt))


def test_shared_weight_matches_matmul_in_a_loop() -> None:
    torch.manual_seed(7)
    w = torch.randn(4, 3, requires_grad=True)
    h0 = torch.randn(2, 4, requires_grad=True)

    def run(shared: bool) -> tuple[torch.Tensor, torch.Tensor]:
        w.grad = h0.grad = None
        use = SharedWeight(w) if shared else (lambda x: x @ w.t())
        h = h0
        for _ in range(5):
            h = torch.tanh(use(h[:, :3]) + h)
        (h * torch.arange(8.0).view(2, 4)).sum().backward()
        assert w.grad is not None and h0.grad is not None
        return w.grad.clone(), h0.grad.clone()

    for a, b in zip(run(False), run(True), strict=True):
        torch.testing.assert_close(b, a)
    with torch.no_grad():
        x = torch.randn(2, 3)
        torch.testing.assert_close(SharedWeight(w)(x), x @ w.t())


def test_shared_weight_takes_any_leading_shape() -> None:
    torch.manual_seed(9)
    w = torch.randn(4, 3, requires_grad=True)
    x = torch.randn(2, 5, 3, requires_grad=True)
    grads = []
    for use in (lambda v: v @ w.t(), SharedWeight(w)):
        w.grad = x.grad = None
        y = use(x)
        assert y.shape == (2, 5, 4)
        (y * torch.arange(40.0).view(2, 5, 4)).sum().backward()
        assert w.grad is not None and x.grad is not None
        grads.append((y.detach(), w.grad.clone(), x.grad.clone()))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(b, a)


def test_rnn_impl_rule() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert uses_nmt("auto", cpu) and not uses_nmt("auto", cuda)
    assert uses_nmt("nmt", cpu) and uses_nmt("nmt", cuda)
    assert not uses_nmt("torch", cpu) and not uses_nmt("torch", cuda)
    with pytest.raises(ValueError, match="rnn_impl 'cudnn'"):
        uses_nmt("cudnn", cpu)


def test_layer_weights_are_the_lstm_parameters() -> None:
    lstm = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True)
    w_ih, w_hh, bias = layer_weights(lstm, 1, reverse=True)
    assert w_ih is lstm.weight_ih_l1_reverse and w_hh is lstm.weight_hh_l1_reverse
    torch.testing.assert_close(bias, lstm.bias_ih_l1_reverse + lstm.bias_hh_l1_reverse)
    assert layer_weights(lstm, 0)[0] is lstm.weight_ih_l0


@pytest.mark.parametrize("bidirectional", [False, True])
def test_run_packed_impls_agree_in_batch_order(bidirectional: bool) -> None:
    """Unsorted lengths and an initial state in batch order: both implementations return what
    nn.LSTM returns, states in batch order."""
    torch.manual_seed(10)
    lstm = torch.nn.LSTM(5, 6, num_layers=2, bidirectional=bidirectional, batch_first=True)
    lengths = torch.tensor([3, 7, 1, 5])
    x = torch.randn(4, 7, 5)
    dirs = 2 if bidirectional else 1
    state = (torch.randn(2 * dirs, 4, 6), torch.randn(2 * dirs, 4, 6))
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    ref_out, (ref_h, ref_c) = lstm(packed, state)
    for ours in (True, False):
        out, (h, c) = run_packed(lstm, packed, lengths, state, ours=ours)
        _close(out.data, ref_out.data)
        _close(h, ref_h)
        _close(c, ref_c)


def test_lstm_step_matches_nn_lstm() -> None:
    torch.manual_seed(11)
    lstm = torch.nn.LSTM(5, 6, num_layers=3, batch_first=True)
    x = torch.randn(4, 5)
    h, c = torch.randn(3, 4, 6), torch.randn(3, 4, 6)
    ref, (ref_h, ref_c) = lstm(x[:, None, :], (h, c))
    with torch.no_grad():
        top, new_h, new_c = lstm_step(lstm, x, h, c, training=False)
    _close(top, ref[:, 0])
    _close(new_h, ref_h)
    _close(new_c, ref_c)


def test_lstm_cell_matches_equations_and_autograd() -> None:
    torch.manual_seed(8)
    gates = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    c_prev = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    i, f, g, o = gates.split(2, dim=-1)
    c_ref = torch.sigmoid(f) * c_prev + torch.sigmoid(i) * torch.tanh(g)
    h_ref = torch.sigmoid(o) * torch.tanh(c_ref)
    h, c = lstm_cell(gates, c_prev)
    torch.testing.assert_close(h, h_ref)
    torch.testing.assert_close(c, c_ref)
    assert torch.autograd.gradcheck(lambda a, b: lstm_cell(a, b), (gates, c_prev))


def test_tune_malloc_can_be_switched_off() -> None:
    code = "from nmt.runtime import tune_malloc; print(tune_malloc())"
    env = dict(os.environ, NMT_MALLOC_TUNING="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "False"
    if platform.libc_ver()[0] == "glibc":  # glibc accepts both thresholds
        assert tune_malloc() is True


@pytest.mark.parametrize("attention,input_feeding", [("general", True), ("bahdanau", False)])
def test_incremental_step_impls_agree(attention: str, input_feeding: bool) -> None:
    """``step`` (decoding) with rnn_impl=nmt (addmm + fused cell) == nn.LSTM's step."""
    cfg = ModelConfig(
        emb_size=8, enc_hidden=6, dec_hidden=12, attention=attention, input_feeding=input_feeding
    )
    torch.manual_seed(9)
    ref = build_model(dataclasses.replace(cfg, rnn_impl="torch"), 30, 30, 0).eval()
    ours = build_model(dataclasses.replace(cfg, rnn_impl="nmt"), 30, 30, 0).eval()
    ours.load_state_dict(ref.state_dict())
    src = torch.randint(4, 30, (4, 6))
    lengths = torch.tensor([6, 6, 6, 6])
    with torch.no_grad():
        states = [m.encode(src, lengths) for m in (ref, ours)]
        prev = torch.full((4,), 2)
        for _ in range(4):
            outs = []
            for k, model in enumerate((ref, ours)):
                memory, state = states[k]
                log_probs, state, weights = model.step(prev, state, memory)
                states[k] = (memory, state)
                outs.append((log_probs, weights, state.h, state.c))
            for a, b in zip(*outs, strict=True):
                torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
            prev = outs[0][0].argmax(-1)


@pytest.mark.parametrize("input_feeding", [False, True])
def test_nmt_impl_trains_under_bf16_autocast(input_feeding: bool) -> None:
    """bf16 autocast: the recurrences run in fp32 inside, the step trains (finite gradients)
    and stays close to the fp32 result."""
    cfg = ModelConfig(emb_size=8, enc_hidden=6, dec_hidden=12, input_feeding=input_feeding)
    torch.manual_seed(10)
    model = build_model(dataclasses.replace(cfg, rnn_impl="nmt", dropout=0.0), 30, 30, 0)
    src = torch.randint(4, 30, (3, 5))
    tgt = torch.randint(4, 30, (3, 4))
    lengths = torch.tensor([5, 3, 5])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model.logits(model(src, lengths, tgt)).float()
    low.logsumexp(-1).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    with torch.no_grad():
        full = model.logits(model(src, lengths, tgt))
    torch.testing.assert_close(low, full, rtol=0.05, atol=0.05)

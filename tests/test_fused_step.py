"""The fused decoder LSTM of int8 decoding (nmt/fused_step.py), in float: the same steps as
the decoder it was made from, with and without the embedding table, for every wiring."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

import nmt.fused_step as fused_step
from nmt.decoder import Decoder
from nmt.fused_step import FusedStepLSTM
from nmt.lstm import lstm_step

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_decoder import make_decoder, make_inputs  # noqa: E402


def fused(decoder: Decoder, table: bool) -> Decoder:
    """A copy of ``decoder`` whose LSTM is a float FusedStepLSTM (what nmt.quantize builds
    before quantizing its linear layers)."""
    out = copy.deepcopy(decoder)
    out.rnn = FusedStepLSTM(out.rnn, out.embedding, table_mb=None if table else 0.0)  # type: ignore[assignment]
    assert (out.rnn.table is not None) == table
    return out


@pytest.mark.parametrize("table", [True, False])
@pytest.mark.parametrize(
    ("attention", "input_feeding", "layers"),
    [("general", True, 2), ("dot", False, 1), ("bahdanau", False, 2), ("concat", True, 3)],
)
@torch.inference_mode()
def test_fused_steps_equal_the_decoders(
    attention: str, input_feeding: bool, layers: int, table: bool
) -> None:
    decoder = make_decoder(attention, input_feeding, layers)
    tgt_in, state, memory = make_inputs(decoder, layers)
    other = fused(decoder, table)
    state_b = state
    for t in range(tgt_in.size(1)):
        att_a, state, w_a = decoder.step(tgt_in[:, t], state, memory)
        att_b, state_b, w_b = other.step(tgt_in[:, t], state_b, memory)
        torch.testing.assert_close(att_b, att_a, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(w_b, w_a, rtol=1e-5, atol=1e-5)
        for a, b in zip(state, state_b, strict=True):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


@torch.inference_mode()
def test_step_matches_lstm_step_with_saturated_gates() -> None:
    """Large pre-activations (sigmoid and tanh saturated) and tiny ones come out as nn.LSTM's."""
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(7, 5, num_layers=2)
    embedding = torch.nn.Embedding(9, 3)
    with torch.no_grad():
        lstm.weight_ih_l0.mul_(40.0)  # saturates the bottom layer's gates
        lstm.weight_hh_l1.mul_(1e-4)
    step = FusedStepLSTM(lstm, embedding)
    prev = torch.tensor([1, 8, 0, 4])
    rest = torch.randn(4, 4)
    h, c = torch.randn(2, 4, 5), torch.randn(2, 4, 5) * 3
    want = lstm_step(lstm, torch.cat([embedding(prev), rest], 1), h, c, training=False)
    got = step.step(prev, rest, h, c)
    for a, b in zip(want, got, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=2e-6)


def test_table_only_under_its_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    lstm = torch.nn.LSTM(8, 16)
    embedding = torch.nn.Embedding(100, 4)  # a (100, 64) float32 table: 25 KB
    assert FusedStepLSTM(lstm, embedding).table is not None
    monkeypatch.setattr(fused_step, "TABLE_MB", 0.02)
    assert FusedStepLSTM(lstm, embedding).table is None
    assert FusedStepLSTM(lstm, embedding).layers[0].in_features == 8 + 16  # embedding joins


def test_teacher_forcing_is_refused() -> None:
    decoder = fused(make_decoder("general", True), table=True)
    tgt_in, state, memory = make_inputs(decoder)
    with pytest.raises(RuntimeError, match="incremental decoding steps only"):
        decoder(tgt_in, state, memory)

"""The decoder LSTM fused for decoding (nmt/fused_step.py), in float: the same steps as the
decoder it was made from, with and without the embedding table, for every wiring, and the
same beam search results as the unfused model."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

import nmt.fused_step as fused_step
from nmt.config import ModelConfig
from nmt.decoder import Decoder, fuse_decoders
from nmt.ensemble import Ensemble
from nmt.fused_step import FusedStepLSTM
from nmt.lstm import lstm_step
from nmt.model import build_model
from nmt.search import beam_search

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
    with pytest.raises(RuntimeError, match="prepared for decoding.*load_model"):
        decoder(tgt_in, state, memory)


@pytest.mark.parametrize(
    "changes",
    [
        {"input_feeding": True, "dec_layers": 2, "tie_output": True},
        {"attention": "bahdanau", "tie_embeddings": True},
        {"attention": "dot", "dec_hidden": 32, "enc_hidden": 16},
    ],
)
@torch.inference_mode()
def test_beam_search_of_a_fused_model_equals_the_unfused(changes: dict[str, object]) -> None:
    """Whole searches, single models and an ensemble of two: fusing changes no hypothesis
    (tied output and tied embeddings included)."""
    cfg = ModelConfig(emb_size=8, enc_hidden=8, enc_layers=1, dec_hidden=8, dec_layers=1)
    for key, value in changes.items():
        setattr(cfg, key, value)
    torch.manual_seed(3)
    models = [build_model(cfg, 30, 30, 0).eval() for _ in range(2)]
    gen = torch.Generator().manual_seed(4)
    lengths = torch.tensor([7, 3, 5, 1])
    src = torch.zeros(4, 7, dtype=torch.long)
    for row, n in enumerate(lengths.tolist()):
        src[row, : n - 1] = torch.randint(4, 30, (n - 1,), generator=gen)
        src[row, n - 1] = 3  # eos
    for plain in (models[0], Ensemble(models).eval()):
        fused = fuse_decoders(copy.deepcopy(plain))
        assert all(
            isinstance(m.rnn, FusedStepLSTM) for m in fused.modules() if isinstance(m, Decoder)
        )
        want = beam_search(plain, src, lengths, 2, 3, beam_size=4, nbest=4, max_len_b=6)
        got = beam_search(fused, src, lengths, 2, 3, beam_size=4, nbest=4, max_len_b=6)
        for a, b in zip(want, got, strict=True):
            assert [h.tokens for h in b] == [h.tokens for h in a]
            assert [h.score for h in b] == pytest.approx([h.score for h in a], abs=1e-5)

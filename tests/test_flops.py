"""nmt.flops: the analytic FLOP count, by hand on a model small enough to count, and against
the values the benchmark reported before the count moved beside the model."""

from __future__ import annotations

import numpy as np
import pytest

from nmt.config import ModelConfig
from nmt.flops import forward_flops, training_flops


def test_flops_by_hand() -> None:
    """One sentence, source 3 and target 2 tokens, a 1-layer model small enough to count."""
    m = ModelConfig(
        emb_size=4,
        enc_hidden=3,
        enc_layers=1,
        bidirectional=True,
        dec_hidden=5,
        dec_layers=1,
        attention="general",
        input_feeding=True,
        bridge="learned",
    )
    s, t, v = 3, 2, 7
    encoder = s * 2 * 8 * 3 * (4 + 3)  # two directions
    keys = s * 2 * 6 * 5  # Dv=6 -> Hd=5
    bridge = 1 * 1 * 2 * 2 * 6 * 5  # h and c
    decoder = t * 8 * 5 * ((4 + 5) + 5)  # input feeding: E + Hd
    attend = t * s * (2 * 5 + 2 * 6)
    combine = t * 2 * (5 + 6) * 5
    output = t * 2 * 5 * v
    expected = encoder + keys + bridge + decoder + attend + combine + output
    got = forward_flops(m, v, np.array([s]), np.array([t]))
    assert got == expected
    assert training_flops(m, v, np.array([s]), np.array([t])) == 3 * expected
    # two sentences cost the sum of each alone (attention counts real pairs only)
    two = forward_flops(m, v, np.array([3, 1]), np.array([2, 4]))
    one = forward_flops(m, v, np.array([3]), np.array([2]))
    other = forward_flops(m, v, np.array([1]), np.array([4]))
    assert two == pytest.approx(one + other)


def test_reference_model_is_about_70_mflop_per_target_token() -> None:
    """The issue's figure: ~70 MFLOP per target token for the reference model, 8k vocab."""
    m = ModelConfig(input_feeding=True)
    lengths = np.full(100, 21)
    per_token = training_flops(m, 8000, lengths, lengths) / lengths.sum()
    assert 60e6 < per_token < 80e6


@pytest.mark.parametrize(
    "model, expected",
    [
        (ModelConfig(), 1053720576.0),
        (ModelConfig(input_feeding=True), 1154383872.0),
        (ModelConfig(attention="dot", bridge="copy"), 1022787584.0),
        (ModelConfig(attention="concat", enc_layers=1, dec_layers=3), 1149140992.0),
        (ModelConfig(attention="bahdanau", input_feeding=True, bridge="zero"), 1271824384.0),
        (ModelConfig(bidirectional=False, tie_output=True, emb_size=128), 564977664.0),
        (ModelConfig(tie_output=True, emb_size=512), 1149140992.0),
    ],
)
def test_same_count_as_the_benchmark_reported(model: ModelConfig, expected: float) -> None:
    """Values of scripts/benchmark.py's forward_flops before it moved here (8k vocabulary)."""
    src, tgt = np.array([7, 12, 3, 21]), np.array([9, 10, 4, 25])
    assert forward_flops(model, 8000, src, tgt) == expected

"""Bridge (layer rule, modes, values) and the attention decoder (forward == looping step)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from nmt.attention import ATTENTION_KINDS, Memory
from nmt.decoder import Bridge, Decoder, DecoderState, bridge_layer_map

B = 3


def joined_layer(state: Tensor, layer: int, num_directions: int) -> Tensor:
    """Reference: nn.LSTM's final state row for (layer, direction) is layer * D + direction;
    join the directions of one layer -> (B, D*He)."""
    return torch.cat([state[layer * num_directions + d] for d in range(num_directions)], dim=-1)


@pytest.mark.parametrize(
    ("enc_layers", "dec_layers", "expected"),
    [(2, 2, [0, 1]), (3, 2, [1, 2]), (3, 1, [2]), (2, 3, [0, 0, 1]), (1, 2, [0, 0])],
)
def test_bridge_layer_map_aligns_top_layers(
    enc_layers: int, dec_layers: int, expected: list[int]
) -> None:
    assert bridge_layer_map(enc_layers, dec_layers) == expected


@pytest.mark.parametrize(
    ("enc_layers", "dec_layers", "directions"),
    [(2, 2, 2), (3, 2, 2), (2, 3, 2), (2, 2, 1), (1, 3, 1)],
)
def test_bridge_copy_values(enc_layers: int, dec_layers: int, directions: int) -> None:
    he = 3
    bridge = Bridge("copy", he, enc_layers, directions, directions * he, dec_layers)
    h = torch.randn(enc_layers * directions, B, he)
    c = torch.randn(enc_layers * directions, B, he)
    h0, c0 = bridge(h, c)
    assert h0.shape == c0.shape == (dec_layers, B, directions * he)
    for i, j in enumerate(bridge_layer_map(enc_layers, dec_layers)):
        assert torch.equal(h0[i], joined_layer(h, j, directions))
        assert torch.equal(c0[i], joined_layer(c, j, directions))


@pytest.mark.parametrize(
    ("enc_layers", "dec_layers", "directions", "dec_hidden"),
    [(2, 2, 2, 6), (2, 2, 2, 5), (3, 2, 2, 4), (1, 2, 1, 7), (2, 3, 2, 5)],
)
def test_bridge_learned_values(
    enc_layers: int, dec_layers: int, directions: int, dec_hidden: int
) -> None:
    torch.manual_seed(0)
    he = 3
    bridge = Bridge("learned", he, enc_layers, directions, dec_hidden, dec_layers)
    assert bridge.h_proj is not None and bridge.c_proj is not None
    h = torch.randn(enc_layers * directions, B, he)
    c = torch.randn(enc_layers * directions, B, he)
    with torch.no_grad():
        h0, c0 = bridge(h, c)
    assert h0.shape == c0.shape == (dec_layers, B, dec_hidden)
    for i, j in enumerate(bridge_layer_map(enc_layers, dec_layers)):
        for b in range(B):
            hj = joined_layer(h, j, directions)[b]
            cj = joined_layer(c, j, directions)[b]
            ref_h = torch.tanh(bridge.h_proj.weight @ hj + bridge.h_proj.bias)
            ref_c = torch.tanh(bridge.c_proj.weight @ cj + bridge.c_proj.bias)
            torch.testing.assert_close(h0[i, b], ref_h.detach())
            torch.testing.assert_close(c0[i, b], ref_c.detach())


def test_bridge_zero_and_errors() -> None:
    bridge = Bridge("zero", 3, 2, 2, 5, 3)
    h0, c0 = bridge(torch.randn(4, B, 3), torch.randn(4, B, 3))
    assert torch.equal(h0, torch.zeros(3, B, 5)) and torch.equal(c0, torch.zeros(3, B, 5))
    assert not list(bridge.parameters())
    with pytest.raises(ValueError, match="bridge 'copy' needs"):
        Bridge("copy", 3, 2, 2, 5, 2)
    with pytest.raises(ValueError, match="unknown bridge"):
        Bridge("mean", 3, 2, 2, 6, 2)


# ---------------------------------------------------------------- decoder

VOCAB, EMB, HD, DV, S, T = 11, 5, 6, 6, 4, 5
SRC_LENGTHS = [4, 2, 1]


def make_decoder(attention: str, input_feeding: bool, layers: int = 2) -> Decoder:
    torch.manual_seed(0)
    return Decoder(
        vocab_size=VOCAB,
        emb_size=EMB,
        hidden_size=HD,
        num_layers=layers,
        memory_size=DV,
        attention=attention,
        input_feeding=input_feeding,
        dropout=0.3,
        pad_id=0,
    ).eval()


def make_inputs(decoder: Decoder, layers: int = 2) -> tuple[Tensor, DecoderState, Memory]:
    gen = torch.Generator().manual_seed(1)
    mask = torch.tensor([[s < n for s in range(S)] for n in SRC_LENGTHS])
    values = torch.randn(B, S, DV, generator=gen) * mask[:, :, None]  # zero at pads like encoder
    memory = Memory(values=values, keys=decoder.attention.project_keys(values), mask=mask)
    state = decoder.init_state(
        torch.randn(layers, B, HD, generator=gen), torch.randn(layers, B, HD, generator=gen)
    )
    tgt_in = torch.randint(1, VOCAB, (B, T), generator=gen)
    tgt_in[2, 3:] = 0  # a padded row
    return tgt_in, state, memory


def loop_steps(
    decoder: Decoder, tgt_in: Tensor, state: DecoderState, memory: Memory
) -> tuple[Tensor, Tensor]:
    atts, weights = [], []
    for t in range(tgt_in.size(1)):
        att, state, w = decoder.step(tgt_in[:, t], state, memory)
        atts.append(att)
        weights.append(w)
    return torch.stack(atts, 1), torch.stack(weights, 1)  # T x (B, .) -> (B, T, .)


@pytest.mark.parametrize("input_feeding", [False, True])
@pytest.mark.parametrize("attention", ATTENTION_KINDS)
def test_forward_equals_looping_step(attention: str, input_feeding: bool) -> None:
    decoder = make_decoder(attention, input_feeding)
    assert decoder.fast_path == (not input_feeding and attention != "bahdanau")
    tgt_in, state, memory = make_inputs(decoder)
    with torch.no_grad():
        out, weights = decoder(tgt_in, state, memory)
        ref_out, ref_weights = loop_steps(decoder, tgt_in, state, memory)
    assert out.shape == (B, T, HD) and weights.shape == (B, T, S)
    real = tgt_in != 0  # after a row's end the packed fast path stops (outputs there unused)
    torch.testing.assert_close(out[real], ref_out[real])
    torch.testing.assert_close(weights[real], ref_weights[real])
    for b, n in enumerate(SRC_LENGTHS):
        assert torch.equal(weights[b, :, n:], torch.zeros_like(weights[b, :, n:]))


def test_input_feeding_and_bahdanau_change_the_result() -> None:
    """The options are wired: the LSTM input grows and the outputs differ from plain Luong."""
    plain = make_decoder("concat", False)
    fed = make_decoder("concat", True)
    bahdanau = make_decoder("bahdanau", False)
    assert plain.rnn.input_size == EMB
    assert fed.rnn.input_size == EMB + HD
    assert bahdanau.rnn.input_size == EMB + DV
    tgt_in, state, memory = make_inputs(fed)
    with torch.no_grad():
        # with zero input-feeding weights, the fed decoder is the plain one with the same weights
        fed_input_weight = fed.rnn.get_parameter("weight_ih_l0")  # (4Hd, E + Hd)
        fed_input_weight[:, EMB:] = 0.0
        weights = fed.state_dict()
        weights["rnn.weight_ih_l0"] = weights["rnn.weight_ih_l0"][:, :EMB]  # drop fed columns
        plain.load_state_dict(weights)
        real = tgt_in != 0
        torch.testing.assert_close(
            fed(tgt_in, state, memory)[0][real], plain(tgt_in, state, memory)[0][real]
        )
        fed_input_weight[:, EMB:] = 0.5
        out_fed = fed(tgt_in, state, memory)[0]
        out_plain = plain(tgt_in, state, memory)[0]
    torch.testing.assert_close(out_fed[:, 0], out_plain[:, 0])  # step 0: att_prev = 0
    assert not torch.allclose(out_fed[:, 1:], out_plain[:, 1:])


@pytest.mark.parametrize("attention", ["general", "bahdanau"])
def test_bahdanau_queries_previous_state(attention: str) -> None:
    """Step 0's attention depends on the initial state (Bahdanau) or on the LSTM output."""
    decoder = make_decoder(attention, False)
    tgt_in, state, memory = make_inputs(decoder)
    with torch.no_grad():
        _, _, w = decoder.step(tgt_in[:, 0], state, memory)
        query = state.h[-1][:, None] if attention == "bahdanau" else None
        if query is None:
            x = decoder.embedding(tgt_in[:, 0])[:, None]
            query, _ = decoder.rnn(x, (state.h, state.c))
        _, ref_w = decoder.attention(query, memory)
    torch.testing.assert_close(w, ref_w[:, 0])


def test_padded_target_positions_do_not_change_real_ones() -> None:
    decoder = make_decoder("general", False)
    tgt_in, state, memory = make_inputs(decoder)
    other = tgt_in.clone()
    other[2, 3:] = 7  # different tokens after row 2's end
    with torch.no_grad():
        a = decoder(tgt_in, state, memory)[0]
        b = decoder(other, state, memory)[0]
    torch.testing.assert_close(a[:, :3], b[:, :3])
    torch.testing.assert_close(a[:2], b[:2])


def test_decoder_state_index_select() -> None:
    state = DecoderState(h=torch.randn(2, B, 4), c=torch.randn(2, B, 4), att=torch.randn(B, 4))
    index = torch.tensor([1, 1, 0, 2])
    picked = state.index_select(index)
    assert torch.equal(picked.h, state.h[:, index])
    assert torch.equal(picked.c, state.c[:, index])
    assert torch.equal(picked.att, state.att[index])

"""Encoder: packing parity, the notebook's three facts, layer/direction order of h_n."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from nmt.encoder import Encoder, lengths_to_mask

PAD = 0
VOCAB = 13
EMB = 5
HIDDEN = 4


def make_encoder(layers: int = 2, bidirectional: bool = True, seed: int = 0) -> Encoder:
    torch.manual_seed(seed)
    enc = Encoder(
        vocab_size=VOCAB,
        emb_size=EMB,
        hidden_size=HIDDEN,
        num_layers=layers,
        bidirectional=bidirectional,
        dropout=0.3,
        pad_id=PAD,
    )
    return enc.eval()  # dropout off: deterministic


def padded_batch(lengths: list[int], seed: int = 1) -> tuple[Tensor, Tensor]:
    """(B, S) random ids in [1, VOCAB) padded with PAD after each length, and the lengths."""
    gen = torch.Generator().manual_seed(seed)
    src = torch.randint(1, VOCAB, (len(lengths), max(lengths) + 1), generator=gen)  # extra pad col
    for b, n in enumerate(lengths):
        src[b, n:] = PAD
    return src, torch.tensor(lengths)


# deliberately unsorted: enforce_sorted=False must handle any order
LENGTHS = [3, 6, 1, 6, 4]


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("layers", [1, 2])
def test_packed_batch_equals_each_sentence_alone(layers: int, bidirectional: bool) -> None:
    enc = make_encoder(layers, bidirectional)
    src, lengths = padded_batch(LENGTHS)
    with torch.no_grad():
        batch = enc(src, lengths)
        for b, n in enumerate(LENGTHS):
            alone = enc(src[b : b + 1, :n], torch.tensor([n]))
            torch.testing.assert_close(batch.outputs[b, :n], alone.outputs[0])
            torch.testing.assert_close(batch.h[:, b], alone.h[:, 0])
            torch.testing.assert_close(batch.c[:, b], alone.c[:, 0])
            # padded positions are exactly the padding value
            assert torch.equal(batch.outputs[b, n:], torch.zeros_like(batch.outputs[b, n:]))
    d = 2 if bidirectional else 1
    assert batch.outputs.shape == (len(LENGTHS), max(LENGTHS) + 1, d * HIDDEN)
    assert batch.h.shape == batch.c.shape == (layers * d, len(LENGTHS), HIDDEN)
    expected_mask = torch.tensor([[i < n for i in range(max(LENGTHS) + 1)] for n in LENGTHS])
    assert torch.equal(batch.mask, expected_mask)


def test_final_states_need_packing() -> None:
    """Fact 1 and 2: unpacked forward final state sits after the padding; packed is right."""
    enc = make_encoder(layers=2, bidirectional=True)
    src, lengths = padded_batch(LENGTHS)
    with torch.no_grad():
        packed = enc(src, lengths)
        # the same LSTM run on the padded embeddings without packing
        _, (h_unpacked, _) = enc.rnn(enc.embedding(src))
    top_packed = packed.h.view(2, 2, len(LENGTHS), HIDDEN)[-1]  # (L*D, B, H) -> (L, D, B, H)[top]
    top_unpacked = h_unpacked.view(2, 2, len(LENGTHS), HIDDEN)[-1]
    for b, n in enumerate(LENGTHS):
        # packed: forward final = output at the last real token, backward final = output at 0
        torch.testing.assert_close(top_packed[0, b], packed.outputs[b, n - 1, :HIDDEN])
        torch.testing.assert_close(top_packed[1, b], packed.outputs[b, 0, HIDDEN:])
        # unpacked: every row has >= 1 pad column, so the forward state ran over padding
        assert not torch.allclose(top_unpacked[0, b], top_packed[0, b], atol=1e-4)


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_h_n_layer_direction_order(layers: int) -> None:
    """Fact 3: h.view(L, D, B, H)[l, d] is layer l, direction d; checked against nn.LSTM's own
    outputs of a copy truncated to l + 1 layers (same weights), for every layer."""
    enc = make_encoder(layers, bidirectional=True)
    src, lengths = padded_batch(LENGTHS)
    with torch.no_grad():
        out = enc(src, lengths)
        emb = enc.embedding(src)
        h = out.h.view(layers, 2, len(LENGTHS), HIDDEN)  # (L*D, B, H) -> (L, D, B, H)
        c = out.c.view(layers, 2, len(LENGTHS), HIDDEN)
        for layer in range(layers):
            sub = nn.LSTM(EMB, HIDDEN, num_layers=layer + 1, batch_first=True, bidirectional=True)
            sub.load_state_dict(
                {k: v for k, v in enc.rnn.state_dict().items() if int(k.split("_l")[1][0]) <= layer}
            )
            for b, n in enumerate(LENGTHS):
                # run sentence b alone, unpadded, through the first layer + 1 layers
                sub_out, (sub_h, sub_c) = sub(emb[b : b + 1, :n])  # (1, n, 2H)
                torch.testing.assert_close(h[layer, 0, b], sub_out[0, n - 1, :HIDDEN])
                torch.testing.assert_close(h[layer, 1, b], sub_out[0, 0, HIDDEN:])
                torch.testing.assert_close(
                    c[layer, :, b], sub_c[-2:, 0]
                )  # its top layer, both dirs
        # joining the top layer's directions gives the (B, 2H) sentence vector
        joined = torch.cat([h[-1, 0], h[-1, 1]], dim=-1)  # 2 x (B, H) -> (B, 2H)
        for b, n in enumerate(LENGTHS):
            expected = torch.cat([out.outputs[b, n - 1, :HIDDEN], out.outputs[b, 0, HIDDEN:]])
            torch.testing.assert_close(joined[b], expected)


def test_unidirectional_final_state_is_last_real_output() -> None:
    enc = make_encoder(layers=2, bidirectional=False)
    src, lengths = padded_batch(LENGTHS)
    with torch.no_grad():
        out = enc(src, lengths)
    assert out.outputs.shape[-1] == HIDDEN and out.h.shape == (2, len(LENGTHS), HIDDEN)
    for b, n in enumerate(LENGTHS):
        torch.testing.assert_close(out.h[-1, b], out.outputs[b, n - 1])


def test_embedding_pad_row_and_inter_layer_dropout() -> None:
    enc = make_encoder(layers=2)
    assert enc.embedding.padding_idx == PAD
    assert enc.rnn.dropout == pytest.approx(0.3)
    assert make_encoder(layers=1).rnn.dropout == 0.0  # nn.LSTM warns on dropout with 1 layer


def test_training_mode_dropout_keeps_pads_zero() -> None:
    enc = make_encoder(layers=2).train()
    src, lengths = padded_batch(LENGTHS)
    out = enc(src, lengths)
    for b, n in enumerate(LENGTHS):
        assert torch.equal(out.outputs[b, n:], torch.zeros_like(out.outputs[b, n:]))


def test_lengths_to_mask() -> None:
    mask = lengths_to_mask(torch.tensor([2, 0, 3]), 4, torch.device("cpu"))
    expected = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    assert torch.equal(mask, expected)

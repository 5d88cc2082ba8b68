"""Source encoder: embeddings + multi-layer (bi-)LSTM over packed sequences.

Shapes: B batch, S source length (padded), E embedding size, H hidden size per direction,
L layers, D directions (2 bidirectional, 1 otherwise).

Packing is what makes the final states right: on a padded batch without packing, the forward
direction's final state is the state after the padding, and the backward direction starts on
padding. ``pack_padded_sequence(..., enforce_sorted=False)`` runs every sentence only over its
real tokens (in any order; PyTorch sorts and restores the batch order itself), so ``h_n`` is
the forward state at the last real token and the backward state at position 0, and
``pad_packed_sequence`` writes exactly ``0.0`` at every padded position.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from nmt.device import async_to
from nmt.dropout import Dropout
from nmt.lstm import RNN_IMPLS, run_packed, uses_nmt


class EncoderOutput(NamedTuple):
    """What the encoder hands to the bridge and the attention."""

    outputs: Tensor  # (B, S, D*H) top-layer outputs, exactly 0 at padded positions
    h: Tensor  # (L*D, B, H) final hidden states in nn.LSTM order (layer-major, then direction)
    c: Tensor  # (L*D, B, H) final cell states
    mask: Tensor  # (B, S) bool, True at real tokens


def lengths_to_mask(lengths: Tensor, max_len: int, device: torch.device) -> Tensor:
    """(B,) lengths -> (B, S=max_len) bool mask, True at positions < length.

    ``lengths`` may live on the CPU; the copy to ``device`` is asynchronous (pinned on CUDA:
    a copy from pageable memory would wait for the stream).
    """
    positions = torch.arange(max_len, device=device)  # (S,)
    return positions[None, :] < async_to(lengths, device)[:, None]  # (B, S)


class Encoder(nn.Module):
    """Embedding -> dropout -> L-layer (bi-)LSTM (dropout between layers) on packed input."""

    def __init__(
        self,
        vocab_size: int,
        emb_size: int,
        hidden_size: int,
        num_layers: int,
        bidirectional: bool,
        dropout: float,
        pad_id: int,
        embedding: nn.Embedding | None = None,
        rnn_impl: str = "auto",
    ) -> None:
        """``embedding``: pass a module to share it (tied source/target embeddings).

        ``rnn_impl``: ``torch`` runs ``nn.LSTM`` on the PackedSequence; ``nmt`` runs the same
        parameters through ``nmt.lstm.packed_lstm`` (same function, faster on the CPU);
        ``auto`` picks ``nmt`` on the CPU and ``torch`` (cuDNN) elsewhere.
        """
        super().__init__()
        if rnn_impl not in RNN_IMPLS:
            raise ValueError(f"unknown rnn_impl {rnn_impl!r}; expected one of {RNN_IMPLS}")
        self.rnn_impl = rnn_impl
        self.pad_id = pad_id
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.num_directions = 2 if bidirectional else 1
        self.output_size = self.num_directions * hidden_size
        self.embedding = (
            embedding if embedding is not None else nn.Embedding(vocab_size, emb_size, pad_id)
        )
        self.dropout = Dropout(dropout)
        self.rnn = nn.LSTM(
            emb_size,
            hidden_size,
            num_layers=num_layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if num_layers > 1 else 0.0,
        )

    def forward(self, src: Tensor, src_lengths: Tensor) -> EncoderOutput:
        """Encode a padded batch.

        src: (B, S) int64 token ids, padded after the real tokens.
        src_lengths: (B,) int64 real lengths (>= 1), preferably on the CPU (packing needs them
        there; any order is accepted).
        """
        max_len = src.size(1)
        emb = self.dropout(self.embedding(src))  # (B, S, E)
        packed = pack_padded_sequence(
            emb, src_lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        ours = uses_nmt(self.rnn_impl, src.device)
        packed_out, (h, c) = run_packed(self.rnn, packed, src_lengths, ours=ours)  # batch order
        outputs, _ = pad_packed_sequence(
            packed_out, batch_first=True, padding_value=0.0, total_length=max_len
        )  # (B, S, D*H)
        mask = lengths_to_mask(src_lengths, max_len, src.device)  # (B, S)
        return EncoderOutput(outputs=outputs, h=h, c=c, mask=mask)

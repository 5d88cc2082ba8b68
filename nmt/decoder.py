"""Bridge (encoder final states -> decoder initial states) and the attention decoder.

Shapes: B batch, S source length, T target length, E embedding size, He encoder hidden size
per direction, D encoder directions, Le encoder layers, Hd decoder hidden size, Ld decoder
layers, Dv = D*He encoder output size.

Layer rule of the bridge: the layers are aligned from the top. Decoder layer i (0 = bottom)
starts from encoder layer ``max(0, i + Le - Ld)``: the top decoder layer always gets the top
encoder layer; with fewer decoder layers the bottom encoder layers are unused; with more
decoder layers the extra bottom decoder layers all get the bottom encoder layer.
For example Le=3, Ld=2 -> [1, 2]; Le=2, Ld=3 -> [0, 0, 1]; Le=1, Ld=2 -> [0, 0].

Decoder (Luong et al. 2015), one step t with previous token y, previous state (h, c) and the
previous attentional state a (zeros at the start):

    x_t = dropout(embed(y))                          (+ [a_{t-1}] with input feeding)
    o_t, (h, c) = LSTM(x_t, (h, c))                  (Ld layers, dropout between layers)
    ctx_t, w_t = attention(query=o_t, memory)
    a_t = tanh(W [o_t; ctx_t])                       the attentional state, (B, Hd)
    output: dropout(a_t), projected to the vocabulary by ``Seq2Seq.logits``

With ``attention="bahdanau"`` the decoder is wired as in Bahdanau et al. 2014: the query is
the previous top-layer hidden state and the context joins the LSTM input,

    ctx_t, w_t = attention(query=h_{t-1}[top], memory)
    o_t, (h, c) = LSTM([x_t; ctx_t], (h, c));  a_t = tanh(W [o_t; ctx_t])

Teacher-forced ``forward`` runs the LSTM over the whole target in one call and attends for all
steps at once when the steps are independent given the LSTM outputs (no input feeding, Luong
wiring); otherwise it loops over the same ``_step`` as incremental decoding.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from nmt.attention import Attention, Memory
from nmt.dropout import Dropout, dropout
from nmt.fused_step import FusedStepLSTM
from nmt.lstm import (
    SharedWeight,
    layer_weights,
    lstm_cell,
    lstm_step,
    run_packed,
    torch_lstm,
    uses_nmt,
)

BRIDGE_MODES = ("learned", "copy", "zero")


class DecoderState(NamedTuple):
    """Recurrent decoder state; plain data with ``index_select`` for beam reordering."""

    h: Tensor  # (Ld, B, Hd)
    c: Tensor  # (Ld, B, Hd)
    att: Tensor  # (B, Hd) previous attentional state (zeros at the start; input feeding)

    def index_select(self, index: Tensor) -> DecoderState:
        """Select/reorder/tile rows along the batch: index (B',) -> a state with B' rows."""
        return DecoderState(
            h=self.h.index_select(1, index),
            c=self.c.index_select(1, index),
            att=self.att.index_select(0, index),
        )


def bridge_layer_map(enc_layers: int, dec_layers: int) -> list[int]:
    """Encoder layer feeding each decoder layer: top-aligned, ``max(0, i + Le - Ld)``."""
    return [max(0, i + enc_layers - dec_layers) for i in range(dec_layers)]


class Bridge(nn.Module):
    """Map encoder final states (Le*D, B, He) to decoder initial states (Ld, B, Hd).

    Modes: ``learned`` (tanh(Linear) of the joined directions, one layer for h and another for
    c, shared across layers), ``copy`` (the joined directions as they are; needs D*He == Hd),
    ``zero`` (zeros; the decoder starts from nothing but attention).
    """

    def __init__(
        self,
        mode: str,
        enc_hidden: int,
        enc_layers: int,
        num_directions: int,
        dec_hidden: int,
        dec_layers: int,
    ) -> None:
        super().__init__()
        if mode not in BRIDGE_MODES:
            raise ValueError(f"unknown bridge {mode!r}; expected one of {BRIDGE_MODES}")
        joined = num_directions * enc_hidden
        if mode == "copy" and joined != dec_hidden:
            raise ValueError(
                f"bridge 'copy' needs directions * encoder hidden == decoder hidden, got "
                f"{num_directions} * {enc_hidden} = {joined} and {dec_hidden}; "
                "use bridge 'learned' or 'zero'"
            )
        self.mode = mode
        self.enc_layers = enc_layers
        self.num_directions = num_directions
        self.dec_hidden = dec_hidden
        self.dec_layers = dec_layers
        self.h_proj: nn.Linear | None = None
        self.c_proj: nn.Linear | None = None
        if mode == "learned":
            self.h_proj = nn.Linear(joined, dec_hidden)
            self.c_proj = nn.Linear(joined, dec_hidden)
        self.register_buffer(
            "layer_index", torch.tensor(bridge_layer_map(enc_layers, dec_layers)), persistent=False
        )
        self.layer_index: Tensor

    def join(self, state: Tensor) -> Tensor:
        """(Le*D, B, He) -> (Ld, B, D*He): directions joined per layer, layers mapped."""
        _, batch, hidden = state.shape
        state = state.view(self.enc_layers, self.num_directions, batch, hidden)  # (Le, D, B, He)
        state = state.permute(0, 2, 1, 3)  # (Le, D, B, He) -> (Le, B, D, He)
        state = state.reshape(self.enc_layers, batch, -1)  # (Le, B, D, He) -> (Le, B, D*He)
        return state.index_select(0, self.layer_index)  # (Le, B, D*He) -> (Ld, B, D*He)

    def forward(self, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """Encoder final (h, c), each (Le*D, B, He) -> decoder initial (h, c), each (Ld, B, Hd)."""
        if self.mode == "zero":
            shape = (self.dec_layers, h.size(1), self.dec_hidden)
            return h.new_zeros(shape), c.new_zeros(shape)
        h0, c0 = self.join(h), self.join(c)  # (Ld, B, D*He)
        if self.h_proj is not None and self.c_proj is not None:  # learned
            h0, c0 = torch.tanh(self.h_proj(h0)), torch.tanh(self.c_proj(c0))  # (Ld, B, Hd)
        return h0.contiguous(), c0.contiguous()


def fuse_decoders(model: nn.Module) -> nn.Module:
    """Give every ``Decoder`` of ``model`` (a Seq2Seq or an Ensemble) a ``FusedStepLSTM`` for
    decoding, in place: the same steps, faster on the CPU (nmt/fused_step.py). The model can
    then decode but not train or be teacher-forced. Returns the model."""
    for decoder in [m for m in model.modules() if isinstance(m, Decoder)]:
        if isinstance(decoder.rnn, nn.LSTM):
            setattr(decoder, "rnn", FusedStepLSTM(decoder.rnn, decoder.embedding))  # noqa: B010
    return model


class Decoder(nn.Module):
    """Multi-layer LSTM decoder with attention (see the module docstring for the equations)."""

    def __init__(
        self,
        vocab_size: int,
        emb_size: int,
        hidden_size: int,
        num_layers: int,
        memory_size: int,
        attention: str,
        input_feeding: bool,
        dropout: float,
        pad_id: int,
        embedding: nn.Embedding | None = None,
        rnn_impl: str = "auto",
    ) -> None:
        """``memory_size`` is Dv, the encoder output size; ``embedding`` shares a module.

        ``rnn_impl``: ``torch`` runs ``nn.LSTM`` (one call on the fast path, one per step
        otherwise, and per incremental ``step``); ``nmt`` runs ``nmt.lstm``'s packed
        recurrence on the fast path, with input feeding or Bahdanau wiring a step loop with
        fused cells and per-batch weight gradients, and incremental ``step`` (without grad) as
        two addmm and a fused cell per layer; ``auto`` picks ``nmt`` on the CPU and ``torch``
        elsewhere. All compute the same function from the same ``nn.LSTM`` parameters.
        """
        super().__init__()
        self.pad_id = pad_id
        self.rnn_impl = rnn_impl
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.input_feeding = input_feeding
        self.attend_first = attention == "bahdanau"  # query = previous state; context -> input
        self.embedding = (
            embedding if embedding is not None else nn.Embedding(vocab_size, emb_size, pad_id)
        )
        self.dropout = Dropout(dropout)
        input_size = emb_size
        input_size += hidden_size if input_feeding else 0
        input_size += memory_size if self.attend_first else 0
        self.rnn = nn.LSTM(
            input_size,
            hidden_size,
            num_layers=num_layers,
            batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.attention = Attention(attention, hidden_size, memory_size)
        self.combine = nn.Linear(hidden_size + memory_size, hidden_size, bias=False)

    @property
    def fast_path(self) -> bool:
        """True when teacher forcing can run the LSTM over all steps in one call."""
        return not self.input_feeding and not self.attend_first

    def init_state(self, h: Tensor, c: Tensor) -> DecoderState:
        """Initial state from bridged (h, c), each (Ld, B, Hd); the attentional state is 0."""
        return DecoderState(h=h, c=c, att=h.new_zeros(h.size(1), self.hidden_size))

    def forward(self, tgt_in: Tensor, state: DecoderState, memory: Memory) -> tuple[Tensor, Tensor]:
        """Teacher-forced decoding of a whole target.

        tgt_in: (B, T) int64 ([bos] + ids, padded). Returns the attentional states after
        dropout (B, T, Hd) and the attention weights (B, T, S). Positions after a row's end
        (padding) get outputs too (the LSTM output there is 0 with ``rnn_impl`` nmt on the
        fast path, the state run on over padding otherwise); they never influence the real
        positions before them.
        """
        if isinstance(self.rnn, FusedStepLSTM):
            self.rnn()  # raises: a decoder fused for decoding only steps
        emb = self.dropout(self.embedding(tgt_in))  # (B, T, E)
        ours = uses_nmt(self.rnn_impl, tgt_in.device)
        if self.fast_path:
            if ours:
                out = self._packed_rnn(emb, tgt_in, state)  # (B, T, Hd), 0 after each row's end
            else:
                out, _ = torch_lstm(self.rnn, emb, (state.h, state.c))  # (B, T, Hd) fp32
            att, weights = self._attend(out, memory)  # (B, T, Hd), (B, T, S)
            return self.dropout(att), weights
        if ours:
            # the loop runs in fp32 (its matmuls are small; under autocast they gain nothing)
            with torch.autocast(emb.device.type, enabled=False):
                fp32_memory = Memory(memory.values.float(), memory.keys.float(), memory.mask)
                fp32_state = DecoderState(state.h.float(), state.c.float(), state.att.float())
                return self._loop(emb.float(), fp32_state, fp32_memory)
        atts: list[Tensor] = []
        all_weights: list[Tensor] = []
        for t in range(tgt_in.size(1)):
            att_t, state, weights_t = self._step(emb[:, t], state, memory)
            atts.append(att_t)
            all_weights.append(weights_t)
        att = torch.stack(atts, dim=1)  # T x (B, Hd) -> (B, T, Hd)
        return self.dropout(att), torch.stack(all_weights, dim=1)  # T x (B, S) -> (B, T, S)

    def _attend(
        self,
        out: Tensor,
        memory: Memory,
        attended: tuple[Tensor, Tensor] | None = None,
        combine: Callable[[Tensor], Tensor] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """The attention step, for T steps at once or one: LSTM outputs out (B, T, Hd) ->
        (attentional states a = tanh(W [o; ctx]) (B, T, Hd), weights (B, T, S)).

        ``attended``: (context (B, T, Dv), weights) already computed (Bahdanau wiring attends
        before the LSTM); otherwise the outputs are the queries. ``combine``: W as a callable
        (the step loop's ``SharedWeight``), ``self.combine`` by default.
        """
        context, weights = attended if attended is not None else self.attention(out, memory)
        joined = torch.cat([out, context], dim=-1)  # (B, T, Hd + Dv)
        return torch.tanh((combine or self.combine)(joined)), weights

    def _packed_rnn(self, emb: Tensor, tgt_in: Tensor, state: DecoderState) -> Tensor:
        """The fast path's LSTM with ``nmt.lstm.packed_lstm`` over the real positions only.

        emb (B, T, E), tgt_in (B, T) -> outputs (B, T, Hd), exactly 0 after each row's end.
        """
        lengths = (tgt_in != self.pad_id).sum(dim=1).cpu()  # (B,) >= 1 (bos)
        packed = pack_padded_sequence(emb, lengths, batch_first=True, enforce_sorted=False)
        out, _ = run_packed(self.rnn, packed, lengths, (state.h, state.c))
        padded, _ = pad_packed_sequence(out, batch_first=True, total_length=tgt_in.size(1))
        return padded  # (B, T, Hd)

    def _loop(self, emb: Tensor, state: DecoderState, memory: Memory) -> tuple[Tensor, Tensor]:
        """Teacher forcing step by step (input feeding / Bahdanau), same maths as ``_step``.

        Work that does not depend on the previous step is done for all steps at once (the
        bottom layer's embedding projection, one matmul); each step's matmuls use
        ``SharedWeight`` (one weight-gradient matmul per batch instead of one per step) and
        ``lstm_cell`` (one autograd node per cell). Returns what ``forward`` returns.
        """
        rnn = self.rnn
        emb_size = emb.size(-1)
        w_ih0, w_hh0, bias0 = layer_weights(rnn, 0)  # w_ih0 (4Hd, E [+ Hd] [+ Dv])
        x_emb = F.linear(emb, w_ih0[:, :emb_size], bias0)  # (B, T, 4Hd)
        recurrent = [SharedWeight(torch.cat([w_ih0[:, emb_size:], w_hh0], dim=1))]
        biases: list[Tensor] = [x_emb.new_zeros(())]
        for layer in range(1, self.num_layers):
            w_ih, w_hh, bias = layer_weights(rnn, layer)
            recurrent.append(SharedWeight(torch.cat([w_ih, w_hh], dim=1)))
            biases.append(bias)
        combine = SharedWeight(self.combine.weight)  # (Hd, Hd + Dv), no bias
        hs, cs = list(state.h.unbind(0)), list(state.c.unbind(0))  # Ld x (B, Hd)
        att_prev = state.att
        atts: list[Tensor] = []
        all_weights: list[Tensor] = []
        # unbind: one backward node stacks the steps' gradients (slicing x_emb[:, t] would
        # give every step a zero-filled (B, T, 4Hd) gradient to add up)
        for x_t in x_emb.unbind(1):
            inputs: list[Tensor] = []
            if self.input_feeding:
                inputs.append(att_prev)  # (B, Hd)
            attended: tuple[Tensor, Tensor] | None = None
            if self.attend_first:
                attended = self.attention(hs[-1][:, None, :], memory)  # (B, 1, Dv), (B, 1, S)
                inputs.append(attended[0][:, 0])
            x = x_t  # (B, 4Hd) embedding part of the bottom layer's gates
            for layer in range(self.num_layers):
                if layer > 0:
                    below = dropout(hs[layer - 1], rnn.dropout, self.training)
                    inputs, x = [below], biases[layer]
                gates = x + recurrent[layer](torch.cat([*inputs, hs[layer]], dim=-1))
                hs[layer], cs[layer] = lstm_cell(gates, cs[layer])
            att, weights = self._attend(hs[-1][:, None, :], memory, attended, combine)
            att_prev = att[:, 0]  # (B, Hd)
            atts.append(att_prev)
            all_weights.append(weights[:, 0])  # (B, S)
        att = torch.stack(atts, dim=1)  # T x (B, Hd) -> (B, T, Hd)
        return self.dropout(att), torch.stack(all_weights, dim=1)  # (B, T, S)

    def step(
        self, prev: Tensor, state: DecoderState, memory: Memory
    ) -> tuple[Tensor, DecoderState, Tensor]:
        """One incremental step: prev (B,) token ids -> (attentional state after dropout
        (B, Hd), new state, attention weights (B, S))."""
        if isinstance(self.rnn, FusedStepLSTM):  # fused for decoding (fuse_decoders); eval only
            return self._step(None, state, memory, prev)
        emb = self.dropout(self.embedding(prev))  # (B, E)
        att, state, weights = self._step(emb, state, memory)
        return self.dropout(att), state, weights

    def _step(
        self, emb: Tensor | None, state: DecoderState, memory: Memory, prev: Tensor | None = None
    ) -> tuple[Tensor, DecoderState, Tensor]:
        """emb (B, E) embedded (and dropped-out) input -> (att (B, Hd) before output dropout,
        new state, weights (B, S)). With a ``FusedStepLSTM`` (``fuse_decoders``) emb is None
        and the LSTM embeds prev (B,) itself."""
        inputs = [] if emb is None else [emb]
        if self.input_feeding:
            inputs.append(state.att)  # (B, Hd)
        attended: tuple[Tensor, Tensor] | None = None
        if self.attend_first:
            query = state.h[-1][:, None, :]  # top layer (B, Hd) -> (B, 1, Hd)
            attended = self.attention(query, memory)  # (B, 1, Dv), (B, 1, S)
            inputs.append(attended[0][:, 0])  # (B, Dv)
        if isinstance(self.rnn, FusedStepLSTM):
            assert prev is not None
            rest = torch.cat(inputs, dim=-1) if inputs else None  # (B, In - E)
            top, h, c = self.rnn.step(prev, rest, state.h, state.c)  # (Ld, B, Hd)
            out = top[:, None, :]  # (B, 1, Hd)
        elif uses_nmt(self.rnn_impl, state.h.device) and not torch.is_grad_enabled():
            x = torch.cat(inputs, dim=-1)  # (B, In); incremental
            top, h, c = lstm_step(self.rnn, x, state.h, state.c, self.training)  # (Ld, B, Hd)
            out = top[:, None, :]  # (B, 1, Hd)
        else:
            x = torch.cat(inputs, dim=-1)  # (B, In)
            out, (h, c) = torch_lstm(self.rnn, x[:, None, :], (state.h, state.c))  # (B, 1, Hd)
        att, weights = self._attend(out, memory, attended)  # (B, 1, Hd), (B, 1, S)
        att = att[:, 0]  # (B, Hd)
        return att, DecoderState(h=h, c=c, att=att), weights[:, 0]  # weights (B, 1, S) -> (B, S)

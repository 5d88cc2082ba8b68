"""The sequence-to-sequence model and ``build_model``, the only reader of ``ModelConfig``.

Shapes: B batch, S source length, T target length, E embedding size, Hd decoder hidden size,
V target vocabulary size.

Output layer: ``logits = Linear(Hd -> V)(state)``. With ``tie_output`` its weight *is* the target
embedding matrix (V, E); when Hd != E a bias-free ``Linear(Hd -> E)`` is put in front of it
(``out_proj``) so tying works at any decoder size. ``tie_embeddings`` shares one embedding
module between source and target (joint vocabulary: the vocabulary sizes must be equal).

Initialisation (``init_parameters``): ``uniform`` draws every parameter from
U(-init_scale, init_scale); ``xavier`` uses Xavier-uniform for every matrix (embeddings
included) and zeros for biases. With ``forget_bias`` set, every LSTM forget-gate bias is then
set to it (b_ih = forget_bias, b_hh = 0 in the forget slice); by default (None) it keeps the
scheme's draw, as OpenNMT-py's does: a bias of 1, the usual advice for LSTMs, slowed learning a
lot at both recipes measured (docs/benchmarks.md, "The forget-gate bias"). The padding rows of
the embeddings are set to zero.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from nmt.attention import ATTENTION_KINDS, Memory
from nmt.config import ModelConfig
from nmt.decoder import BRIDGE_MODES, Bridge, Decoder, DecoderState
from nmt.encoder import Encoder, EncoderOutput

__all__ = [
    "DecoderState",
    "EncoderOutput",
    "Memory",
    "Seq2Seq",
    "build_model",
    "init_parameters",
]

INIT_SCHEMES = ("uniform", "xavier")


class Seq2Seq(nn.Module):
    """Encoder -> bridge -> attention decoder -> output projection."""

    def __init__(
        self,
        encoder: Encoder,
        bridge: Bridge,
        decoder: Decoder,
        tie_output: bool,
        pad_id: int,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.bridge = bridge
        self.decoder = decoder
        self.pad_id = pad_id
        self.src_vocab_size = encoder.embedding.num_embeddings
        self.tgt_vocab_size = decoder.embedding.num_embeddings
        emb_size = decoder.embedding.embedding_dim
        out_in = decoder.hidden_size
        self.out_proj: nn.Linear | None = None
        if tie_output and decoder.hidden_size != emb_size:
            self.out_proj = nn.Linear(decoder.hidden_size, emb_size, bias=False)
            out_in = emb_size
        self.output = nn.Linear(out_in, self.tgt_vocab_size)
        if tie_output:
            self.output.weight = decoder.embedding.weight  # (V, E) shared

    def encode(self, src: Tensor, src_lengths: Tensor) -> tuple[Memory, DecoderState]:
        """src (B, S), src_lengths (B,) on the CPU -> (memory, initial decoder state)."""
        enc = self.encoder(src, src_lengths)
        memory = Memory(
            values=enc.outputs, keys=self.decoder.attention.project_keys(enc.outputs), mask=enc.mask
        )
        h, c = self.bridge(enc.h, enc.c)  # (Ld, B, Hd) each
        return memory, self.decoder.init_state(h, c)

    def forward(self, src: Tensor, src_lengths: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher forced: (B, S), (B,), (B, T) -> attentional states (B, T, Hd).

        Project only the real positions with ``logits`` (the training step does
        ``model.logits(h[tgt_out != pad])``).
        """
        return self.forward_with_attention(src, src_lengths, tgt_in)[0]

    def forward_with_attention(
        self, src: Tensor, src_lengths: Tensor, tgt_in: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Like ``forward``, also returning the attention weights (B, T, S) (heatmaps)."""
        memory, state = self.encode(src, src_lengths)
        return self.decoder(tgt_in, state, memory)

    def logits(self, states: Tensor) -> Tensor:
        """Output projection: (..., Hd) -> (..., V)."""
        if self.out_proj is not None:
            states = self.out_proj(states)  # (..., Hd) -> (..., E)
        return self.output(states)

    def step(
        self, prev: Tensor, state: DecoderState, memory: Memory
    ) -> tuple[Tensor, DecoderState, Tensor]:
        """One decoding step: prev (B,) -> (log_probs (B, V) float32, new state, weights (B, S))."""
        att, state, weights = self.decoder.step(prev, state, memory)
        log_probs = torch.log_softmax(self.logits(att).float(), dim=-1)  # (B, V)
        return log_probs, state, weights


def _init_lstm_forget_bias(lstm: nn.LSTM, value: float) -> None:
    """Forget-gate bias ``value``: gates are ordered (input, forget, cell, output) in nn.LSTM."""
    hidden = lstm.hidden_size
    for name, param in lstm.named_parameters():
        if name.startswith("bias_ih"):
            nn.init.constant_(param[hidden : 2 * hidden], value)
        elif name.startswith("bias_hh"):
            nn.init.zeros_(param[hidden : 2 * hidden])


@torch.no_grad()
def init_parameters(
    model: Seq2Seq, scheme: str, scale: float, forget_bias: float | None = None
) -> None:
    """Initialise in place (see the module docstring). Tied parameters are visited once."""
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"unknown init {scheme!r}; expected one of {INIT_SCHEMES}")
    for param in model.parameters():
        if scheme == "uniform":
            nn.init.uniform_(param, -scale, scale)
        elif param.dim() >= 2:
            nn.init.xavier_uniform_(param)
        else:
            nn.init.zeros_(param)
    if forget_bias is not None:
        for lstm in (model.encoder.rnn, model.decoder.rnn):
            _init_lstm_forget_bias(lstm, forget_bias)
    for emb in (model.encoder.embedding, model.decoder.embedding):
        if emb.padding_idx is not None:
            emb.weight[emb.padding_idx].zero_()


def build_model(cfg: ModelConfig, src_vocab_size: int, tgt_vocab_size: int, pad_id: int) -> Seq2Seq:
    """Build and initialise a Seq2Seq from its config; raises ValueError on inconsistent options."""
    if cfg.attention not in ATTENTION_KINDS:
        raise ValueError(f"unknown attention {cfg.attention!r}; expected one of {ATTENTION_KINDS}")
    if cfg.bridge not in BRIDGE_MODES:
        raise ValueError(f"unknown bridge {cfg.bridge!r}; expected one of {BRIDGE_MODES}")
    if cfg.init not in INIT_SCHEMES:
        raise ValueError(f"unknown init {cfg.init!r}; expected one of {INIT_SCHEMES}")
    shared: nn.Embedding | None = None
    if cfg.tie_embeddings:
        if src_vocab_size != tgt_vocab_size:
            raise ValueError(
                f"tie_embeddings needs a joint vocabulary, got source {src_vocab_size} and "
                f"target {tgt_vocab_size} entries; train a joint tokenizer or set "
                "model.tie_embeddings=false"
            )
        shared = nn.Embedding(src_vocab_size, cfg.emb_size, pad_id)
    encoder = Encoder(
        vocab_size=src_vocab_size,
        emb_size=cfg.emb_size,
        hidden_size=cfg.enc_hidden,
        num_layers=cfg.enc_layers,
        bidirectional=cfg.bidirectional,
        dropout=cfg.dropout,
        pad_id=pad_id,
        embedding=shared,
        rnn_impl=cfg.rnn_impl,
    )
    bridge = Bridge(
        mode=cfg.bridge,
        enc_hidden=cfg.enc_hidden,
        enc_layers=cfg.enc_layers,
        num_directions=encoder.num_directions,
        dec_hidden=cfg.dec_hidden,
        dec_layers=cfg.dec_layers,
    )
    decoder = Decoder(
        vocab_size=tgt_vocab_size,
        emb_size=cfg.emb_size,
        hidden_size=cfg.dec_hidden,
        num_layers=cfg.dec_layers,
        memory_size=encoder.output_size,
        attention=cfg.attention,
        input_feeding=cfg.input_feeding,
        dropout=cfg.dropout,
        pad_id=pad_id,
        embedding=shared,
        rnn_impl=cfg.rnn_impl,
    )
    model = Seq2Seq(encoder, bridge, decoder, tie_output=cfg.tie_output, pad_id=pad_id)
    init_parameters(model, cfg.init, cfg.init_scale, cfg.forget_bias)
    return model

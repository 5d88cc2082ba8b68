"""The decoder's LSTM rearranged for incremental decoding on the CPU, fp32 and int8.

``FusedStepLSTM(lstm, embedding)`` copies a unidirectional ``nn.LSTM`` whose bottom layer's
input starts with the embedding of the previous token (the decoder's ``[embed(y); rest]``).
Shapes: B rows, E embedding size, R the rest of the bottom layer's input (the previous
attentional state with input feeding, the context with Bahdanau wiring; may be 0), H hidden
size, L layers, V target vocabulary. Per step it computes the same function as the LSTM, with
less work:

- **One matmul per layer.** Layer l's gates are one ``nn.Linear`` over the joined
  ``[input; h_l]`` with weight ``[W_ih | W_hh]`` (torch's quantized LSTM runs two matmuls and
  quantizes two activations per layer and step). ``quantize_dynamic`` turns each into one int8
  matmul with a scale per gate row.
- **The embedding's share of the bottom layer is a table look-up.** ``embed(y) @ W_ih[:, :E].T
  + b_ih + b_hh`` depends on the token only, so it is precomputed for every target token as a
  (V, 4H) float32 table (exact, not quantized) and layer 0 multiplies only ``[rest; h_0]``:
  E of its E + R + H input columns (256 of 1,280 in the reference model, 256 of 512 in
  ``make train``'s) leave the matmul. The table is built only while it stays under ``TABLE_MB``
  MiB (35.5 MiB for the reference model's 4,546 target pieces, 31.3 MiB for ``make train``'s
  8,000 pieces and 256 units; a 32k vocabulary with 1,024 units would take 500 MiB):
  otherwise the embedding joins the matmul's input.
- **One sigmoid for the four gates.** The g gate's rows of the weights, bias and table are
  doubled, so ``tanh(g) = 2 sigmoid(2 g) - 1`` comes out of the sigmoid over all 4H gates; the
  cell's ``tanh(c)`` is computed the same way (torch's CPU tanh costs about 2.4 times a
  sigmoid per element here). The result equals the LSTM's to float rounding (tested to 1e-5),
  not bit for bit.

``nmt.translation.load_for_decoding`` fuses the decoders of models it loads on the CPU
(``nmt.decoder.fuse_decoders``), and ``nmt.quantize`` quantizes the fused layers for
``quantize=int8``. Measured in docs/benchmarks.md ("The decoder step, fused (fp32 and int8)").
The copy serves incremental steps only, in eval mode: no dropout, no teacher forcing, no
gradients.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from nmt.lstm import layer_weights

TABLE_MB = 64.0  # MiB: the largest (V, 4H) float32 table of the bottom layer's embedding part


class FusedStepLSTM(nn.Module):
    """See the module docstring. ``step(prev, rest, h, c)`` is one decoder LSTM step."""

    def __init__(
        self, lstm: nn.LSTM, embedding: nn.Embedding, table_mb: float | None = None
    ) -> None:
        super().__init__()
        if lstm.bidirectional or lstm.proj_size:
            raise ValueError("FusedStepLSTM: a unidirectional LSTM without projection")
        hidden, emb = lstm.hidden_size, embedding.embedding_dim
        self.embedding = embedding
        gain = torch.ones(4 * hidden)
        gain[2 * hidden : 3 * hidden] = 2.0  # the g gate: tanh(x) = 2 sigmoid(2x) - 1
        limit = TABLE_MB if table_mb is None else table_mb
        use_table = embedding.num_embeddings * 4 * hidden * 4 <= limit * 2**20
        table: Tensor | None = None
        layers = []
        with torch.no_grad():
            for layer in range(lstm.num_layers):
                w_ih, w_hh, b = (t.detach().float() for t in layer_weights(lstm, layer))
                bias: Tensor | None = b
                if layer == 0 and use_table:
                    table = (embedding.weight.detach().float() @ w_ih[:, :emb].t() + b) * gain
                    w_ih, bias = w_ih[:, emb:], None  # the matmul takes [rest; h_0]
                weight = torch.cat([w_ih, w_hh], dim=1) * gain[:, None]  # (4H, In + H)
                linear = nn.Linear(weight.size(1), 4 * hidden, bias=bias is not None)
                linear.weight.copy_(weight)
                if bias is not None:
                    linear.bias.copy_(bias * gain)
                layers.append(linear)
        self.layers = nn.ModuleList(layers)
        self.register_buffer("table", table, persistent=False)
        self.table: Tensor | None
        self.eval()

    def step(
        self, prev: Tensor, rest: Tensor | None, h: Tensor, c: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """prev (B,) previous tokens, rest (B, R) or None the rest of the bottom layer's input,
        h/c (L, B, H) -> (top output (B, H), h, c), as ``nmt.lstm.lstm_step`` on
        ``[embed(prev); rest]``."""
        hs: list[Tensor] = []
        cs: list[Tensor] = []
        if self.table is not None:
            inp, extra = rest, self.table.index_select(0, prev)  # (B, 4H) embedding + biases
        else:
            emb = self.embedding(prev)  # (B, E)
            inp, extra = (emb if rest is None else torch.cat([emb, rest], dim=1)), None
        for layer, linear in enumerate(self.layers):
            joined = h[layer] if inp is None else torch.cat([inp, h[layer]], dim=1)
            gates = linear(joined)  # (B, 4H), the g block doubled
            if layer == 0 and extra is not None:
                gates += extra
            h_l, c_l = _cell(gates, c[layer])
            hs.append(h_l)
            cs.append(c_l)
            inp = h_l
        assert inp is not None
        return inp, torch.stack(hs), torch.stack(cs)

    def forward(self, *args: object) -> None:
        raise RuntimeError(
            "this model was prepared for decoding (its decoder's LSTM fused, nmt/fused_step.py) "
            "and runs incremental steps only; to train it or score given targets, load it with "
            "nmt.checkpoint.load_model"
        )


def _cell(gates: Tensor, c_prev: Tensor) -> tuple[Tensor, Tensor]:
    """gates (B, 4H) in (i, f, g, o) order with the g block doubled (overwritten), c_prev
    (B, H) -> (h, c): one sigmoid over all gates, tanh(x) = 2 sigmoid(2x) - 1."""
    act = gates.sigmoid_()
    i, f, g, o = act.chunk(4, dim=1)
    g = g.mul_(2.0).sub_(1.0)  # tanh of the g pre-activation
    c = torch.addcmul(i * g, f, c_prev)
    tanh_c = (c * 2.0).sigmoid_().mul_(2.0).sub_(1.0)
    return o * tanh_c, c

"""Model FLOPs, counted analytically from the model config and the real lengths of a batch.

What ``scripts/benchmark.py`` divides by time (model FLOP/s) and by a measured matmul peak
(MFU). Per batch, from the real (non-pad) lengths s_i (source, eos included) and t_i (target,
bos/eos included) of each sentence i: padding, embeddings and elementwise work (gates, softmax,
loss, dropout) are not counted, so padding shows up as lower MFU. With E embedding, He encoder
hidden per direction, D directions, Le/Ld layers, Dv = D*He, Hd decoder hidden, V target
vocabulary, and an LSTM layer costing ``2 * 4 * H * (in + H)`` per token per direction (four
gates, input and recurrent matmuls)::

    encoder  = sum_i s_i * D * sum_l 8*He*(in_l + He),   in_0 = E, in_l = Dv
    bridge   = B * Ld * 2 * 2*Dv*Hd                      (learned bridge: h and c)
    keys     = sum_i s_i * 2*Dv*Hd                       (general/concat/bahdanau; 0 for dot)
    decoder  = sum_i t_i * sum_l 8*Hd*(in_l + Hd),       in_0 = E (+Hd input feeding)
                                                         (+Dv bahdanau), in_l = Hd
    query    = sum_i t_i * 2*Hd*Hd                       (concat/bahdanau only)
    attend   = sum_i t_i * s_i * (2*Hd + 2*Dv)           (scores + context, real pairs only)
    combine  = sum_i t_i * 2*(Hd + Dv)*Hd
    output   = sum_i t_i * 2*Hd*V                        (+ 2*Hd*E with a tied out_proj)
    training = 3 * (sum of the above)                    (backward = 2 x forward)

For the reference model (E 256, 2x256 bi-LSTM, 2x512 decoder with input feeding, 8k vocabulary)
this is about 70 MFLOP per target token at source length ~ target length. V is the model's
target vocabulary: with ``tokenizer.target_vocab=used`` the target pieces in use,
4,549 on lo.de-en (64.5M FLOPs per real target token measured, against 75.1M with ``all``).
"""

from __future__ import annotations

import numpy as np

from nmt.config import ModelConfig


def forward_flops(
    m: ModelConfig, tgt_vocab: int, src_lengths: np.ndarray, tgt_lengths: np.ndarray
) -> float:
    """Model FLOPs of one forward pass over a batch (the formula in the module docstring).

    src_lengths, tgt_lengths: (B,) real lengths (eos/bos included).
    """
    s = src_lengths.astype(np.float64)
    t = tgt_lengths.astype(np.float64)
    d = 2 if m.bidirectional else 1
    he, hd, e = m.enc_hidden, m.dec_hidden, m.emb_size
    dv = d * he
    enc_per_token = sum(
        d * 8 * he * ((e if layer == 0 else dv) + he) for layer in range(m.enc_layers)
    )
    dec_in0 = e + (hd if m.input_feeding else 0) + (dv if m.attention == "bahdanau" else 0)
    dec_per_token = sum(
        8 * hd * ((dec_in0 if layer == 0 else hd) + hd) for layer in range(m.dec_layers)
    )
    keys_per_token = 0 if m.attention == "dot" else 2 * dv * hd
    query_per_token = 2 * hd * hd if m.attention in ("concat", "bahdanau") else 0
    bridge = len(s) * m.dec_layers * 2 * 2 * dv * hd if m.bridge == "learned" else 0
    out_per_token = 2 * hd * tgt_vocab
    if m.tie_output and hd != e:
        out_per_token = 2 * hd * e + 2 * e * tgt_vocab
    combine_per_token = 2 * (hd + dv) * hd
    total = (
        s.sum() * (enc_per_token + keys_per_token)
        + bridge
        + t.sum() * (dec_per_token + query_per_token + combine_per_token + out_per_token)
        + (t * s).sum() * (2 * hd + 2 * dv)
    )
    return float(total)


def training_flops(
    m: ModelConfig, tgt_vocab: int, src_lengths: np.ndarray, tgt_lengths: np.ndarray
) -> float:
    """Forward and backward (twice the forward) over a batch: 3x ``forward_flops``."""
    return 3.0 * forward_flops(m, tgt_vocab, src_lengths, tgt_lengths)

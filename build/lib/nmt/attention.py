"""Attention over encoder outputs with a padding mask.

Shapes: B batch, S source length, T query steps (1 in incremental decoding), Dq query size,
Dv value (encoder output) size, A attention hidden size (= Dq for concat/bahdanau).

Score functions, where q is the query and v_s the value at source position s:

- ``dot``       q . v_s                              (needs Dq == Dv; keys are the values)
- ``general``   q . (W v_s)                          (Luong "general": q^T W v_s)
- ``concat``    u . tanh(Wq q + Wk v_s)              (Luong "concat", W[q; v_s] split in two)
- ``bahdanau``  u . tanh(Wq q + Wk v_s + b)          (additive)

``concat`` and ``bahdanau`` score the same way up to the bias; what makes Bahdanau attention
Bahdanau is where the decoder queries it (the previous hidden state, before the LSTM step, with
the context fed into the LSTM input): that wiring lives in ``nmt.decoder``.

Everything that depends only on the values (``W v_s``, ``Wk v_s + b``) is computed once per
batch by ``project_keys`` and kept in ``Memory.keys``; a decoding step only projects its
query. Padded source positions are filled with ``-inf`` before the softmax, so their weights
are exactly 0 (every source row has at least one real token, its eos, so no row is all
``-inf``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

ATTENTION_KINDS = ("dot", "general", "concat", "bahdanau")


class Memory(NamedTuple):
    """What the decoder attends to; plain data (no module keeps per-batch tensors)."""

    values: Tensor  # (B, S, Dv) encoder outputs
    keys: Tensor  # (B, S, Dk) projected once per batch (the values themselves for dot)
    mask: Tensor  # (B, S) bool, True at real tokens

    def index_select(self, index: Tensor) -> Memory:
        """Select/reorder/tile rows along the batch: index (B',) -> a Memory with B' rows."""
        return Memory(
            values=self.values.index_select(0, index),
            keys=self.keys.index_select(0, index),
            mask=self.mask.index_select(0, index),
        )


class Attention(nn.Module):
    """One of ``ATTENTION_KINDS``; a plain ``if`` picks the score function."""

    def __init__(self, kind: str, query_size: int, value_size: int) -> None:
        super().__init__()
        if kind not in ATTENTION_KINDS:
            raise ValueError(f"unknown attention {kind!r}; expected one of {ATTENTION_KINDS}")
        if kind == "dot" and query_size != value_size:
            raise ValueError(
                f"dot attention needs query size == encoder output size, got {query_size} "
                f"and {value_size}; use 'general' or change the hidden sizes"
            )
        self.kind = kind
        self.key_proj: nn.Linear | None = None
        self.query_proj: nn.Linear | None = None
        self.score_proj: nn.Linear | None = None
        if kind == "general":
            self.key_proj = nn.Linear(value_size, query_size, bias=False)
        elif kind in ("concat", "bahdanau"):
            self.key_proj = nn.Linear(value_size, query_size, bias=kind == "bahdanau")
            self.query_proj = nn.Linear(query_size, query_size, bias=False)
            self.score_proj = nn.Linear(query_size, 1, bias=False)

    def project_keys(self, values: Tensor) -> Tensor:
        """(B, S, Dv) values -> (B, S, Dk) keys; once per batch."""
        if self.key_proj is None:
            return values
        return self.key_proj(values)

    def forward(self, query: Tensor, memory: Memory) -> tuple[Tensor, Tensor]:
        """Attend with T queries at once (T = 1 for one decoding step).

        query: (B, T, Dq). Returns context (B, T, Dv) and weights (B, T, S), at least float32,
        which sum to 1 over the real source tokens and are exactly 0 at padded positions.

        The query may have K times as many rows as the memory (beam search, K beams per
        sentence): query row ``b * K + k`` attends to memory row ``b``, and the K queries of a
        sentence are scored in one batched matmul against its keys, so the memory is never
        repeated K times.
        """
        rows, steps = query.size(0), query.size(1)
        group = rows // memory.mask.size(0)
        if group * memory.mask.size(0) != rows:
            raise ValueError(
                f"query rows ({rows}) must be a multiple of memory rows ({memory.mask.size(0)})"
            )
        if group > 1:  # beam search: K consecutive query rows share a memory row
            query = query.reshape(-1, group * steps, query.size(2))  # (B*K, T) -> (B, K*T)
        scores = self.score(query, memory.keys)  # (B, K*T, S)
        scores = scores.masked_fill(~memory.mask[:, None, :], float("-inf"))
        # softmax in at least float32 (bf16/fp16 scores under autocast): (B, K*T, S)
        weights = torch.softmax(scores.to(torch.promote_types(scores.dtype, torch.float32)), -1)
        context = torch.bmm(weights.to(memory.values.dtype), memory.values)  # (B, K*T, Dv)
        if group > 1:
            context, weights = context.view(rows, steps, -1), weights.view(rows, steps, -1)
        return context, weights

    def score(self, query: Tensor, keys: Tensor) -> Tensor:
        """query (B, T, Dq), keys (B, S, Dk) -> unnormalised scores (B, T, S)."""
        if self.query_proj is None or self.score_proj is None:  # dot, general
            return torch.bmm(query, keys.transpose(1, 2))  # (B, T, Dq) x (B, Dq, S)
        q = self.query_proj(query)  # (B, T, A)
        hidden = torch.tanh(q[:, :, None, :] + keys[:, None, :, :])  # (B, T, S, A)
        return self.score_proj(hidden).squeeze(-1)  # (B, T, S, 1) -> (B, T, S)

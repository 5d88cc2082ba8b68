"""Ensembles: several models sharing one vocabulary, decoded as one (their log-probabilities
averaged at every step); ``Ensemble`` has the ``encode`` + ``step`` interface the searches use."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any, NamedTuple, cast

import torch
from torch import Tensor, nn

from nmt.model import Seq2Seq

logger = logging.getLogger(__name__)


class EnsembleMemory(NamedTuple):
    """One memory per model of an ensemble; ``index_select`` applies to each."""

    parts: tuple[Any, ...]

    def index_select(self, index: Tensor) -> EnsembleMemory:
        return EnsembleMemory(tuple(part.index_select(index) for part in self.parts))


class EnsembleState(NamedTuple):
    """One decoder state per model of an ensemble; ``index_select`` applies to each."""

    parts: tuple[Any, ...]

    def index_select(self, index: Tensor) -> EnsembleState:
        return EnsembleState(tuple(part.index_select(index) for part in self.parts))


class Ensemble(nn.Module):
    """Several models sharing a target vocabulary, decoded together.

    ``step`` returns the log of the mean of the models' probabilities,
    ``logsumexp_i(log p_i) - log(n)``, and the mean of their attention weights.
    """

    def __init__(self, models: Sequence[Seq2Seq]) -> None:
        super().__init__()
        if len(models) == 0:
            raise ValueError("an ensemble needs at least one model")
        sizes = [m.tgt_vocab_size for m in models]
        if len(set(sizes)) != 1:
            raise ValueError(
                f"ensemble members must share a target vocabulary, got target vocabulary sizes "
                f"{sizes}"
            )
        self.models = nn.ModuleList(models)
        first = models[0]
        self.tgt_vocab_size: int = sizes[0]
        self.src_vocab_size: int = first.src_vocab_size
        self.pad_id: int = first.pad_id

    def members(self) -> list[Seq2Seq]:
        """The ensembled models, typed."""
        return [cast(Seq2Seq, model) for model in self.models]

    def encode(self, src: Tensor, src_lengths: Tensor) -> tuple[EnsembleMemory, EnsembleState]:
        """Encode with every model: src (B, S), src_lengths (B,) -> per-model memory/state."""
        pairs = [model.encode(src, src_lengths) for model in self.members()]
        return (
            EnsembleMemory(tuple(memory for memory, _ in pairs)),
            EnsembleState(tuple(state for _, state in pairs)),
        )

    def step(
        self, prev: Tensor, state: EnsembleState, memory: EnsembleMemory
    ) -> tuple[Tensor, EnsembleState, Tensor]:
        """prev (B,) -> (averaged log-probs (B, V), new states, mean attention (B, S))."""
        log_probs: list[Tensor] = []
        states: list[Any] = []
        weights: list[Tensor] = []
        for model, part_state, part_memory in zip(
            self.members(), state.parts, memory.parts, strict=True
        ):
            lp, new_state, attn = model.step(prev, part_state, part_memory)
            log_probs.append(lp.float())
            states.append(new_state)
            weights.append(attn)
        stacked = torch.stack(log_probs)  # n x (B, V) -> (n, B, V)
        mean = torch.logsumexp(stacked, dim=0) - math.log(len(log_probs))  # (B, V)
        attention = torch.stack(weights).mean(dim=0)  # n x (B, S) -> (B, S)
        return mean, EnsembleState(tuple(states)), attention

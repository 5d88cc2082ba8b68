"""Batched greedy and beam search on any model with ``encode`` and ``step`` (a ``Seq2Seq``, or an
``nmt.ensemble.Ensemble``); ``nmt.translation`` turns text into the searches' batches.

Shapes: B sentences in the batch, A sentences still being decoded (A <= B), K beam size,
S source length, V target vocabulary, t number of target tokens generated so far.

Both searches advance every sentence (and every beam) of a batch together with tensor
operations; Python only loops over time steps. Sentences that are done are pruned from the
batch (their rows of the memory and decoder state are dropped with ``index_select``), so the
work per step shrinks as sentences finish, and the result for a sentence never depends on the
other sentences of its batch.

Rules shared by greedy and beam search:

* Maximum output length per sentence: ``floor(max_len_a * src_len + max_len_b)`` tokens (eos not
  counted), where ``src_len`` is the real source length as given in ``src_lengths`` (the eos
  included). A hypothesis that reaches it without eos is finished as it is.
* Minimum length: eos is blocked while fewer than ``min_len`` tokens have been generated.
* Scores: the log-probability of the scored tokens (the output tokens, plus eos when the
  hypothesis ended with eos) divided by the GNMT length penalty
  ``lp = ((5 + n) / 6) ** alpha``, n = number of scored tokens; ``alpha = 0`` gives the raw
  log-probability.

Beam layout: batch-major; row ``a * K + k`` of the decoder state is beam ``k`` of active
sentence ``a``; the memory keeps one row per active sentence, shared by its K beams (see
``Attention.forward``). The K beams of a sentence start identical, so the first step runs one
row per sentence (the state as the encoder left it) and its top 2K extensions become the
K-row layout: at K = 5 the first, largest, step costs a fifth. A step expands every alive
beam by the whole vocabulary, takes the top 2K of the K*V candidates per sentence
(``_top_extensions``), sets aside eos candidates that rank among the top K as finished, and
keeps the best K non-eos candidates alive (as in fairseq). A sentence is done when it has K
finished hypotheses, or its alive hypotheses reach the maximum length (they are then finished
as they are), or (``early_stop``, the default) no alive hypothesis can still reach the n-th
best finished score: log-probabilities only fall as a hypothesis grows, so an alive hypothesis
with log-probability p can at best score p / lp(n') for a final length n' between the next step
and the maximum length (lp is monotonic in n', so one of those two ends bounds it). The n best
hypotheses are the same as without ``early_stop``; only steps that cannot change them are
skipped. Finished hypotheses are stored in tensors of shape (B, K, ...) and sorted by score at
the end.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, cast

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)


class Hypothesis(NamedTuple):
    """One translation: tokens without bos/eos, length-penalised score, raw log-probability."""

    tokens: list[int]
    score: float
    logprob: float


class Searchable(Protocol):
    """What the searches need: a Seq2Seq or an Ensemble.

    ``encode`` returns (memory, state), both with ``index_select(index)`` along the batch;
    ``step(prev (B*K,), state, memory)`` returns (log-probs (B*K, V), new state, attention
    (B*K, S)), where the state has K rows per memory row (K = 1 in greedy search).
    """

    def encode(self, src: Tensor, src_lengths: Tensor) -> tuple[Any, Any]: ...

    def step(self, prev: Tensor, state: Any, memory: Any) -> tuple[Tensor, Any, Tensor]: ...


def as_searchable(model: nn.Module) -> Searchable:
    """The module itself, checked to have ``encode`` and ``step`` (a Seq2Seq or an Ensemble)."""
    if not (callable(getattr(model, "encode", None)) and callable(getattr(model, "step", None))):
        raise TypeError(
            f"{type(model).__name__} has no encode/step methods; pass the Seq2Seq or Ensemble "
            "itself (unwrap DistributedDataParallel or torch.compile wrappers first)"
        )
    return cast(Searchable, model)


# --------------------------------------------------------------------------------- shared rules


def gnmt_penalty(length: int, alpha: float) -> float:
    """GNMT length penalty ``((5 + length) / 6) ** alpha``; 1.0 when ``alpha == 0``."""
    return ((5.0 + length) / 6.0) ** alpha


def max_output_lengths(src_lengths: Tensor, max_len_a: float, max_len_b: float) -> Tensor:
    """(B,) source lengths (eos included) -> (B,) int64 ``floor(a * len + b)``, at least 0."""
    limit = torch.floor(src_lengths.double() * max_len_a + max_len_b).long()
    return limit.clamp(min=0)


def _block_eos(log_probs: Tensor, eos_id: int, t: int, min_len: int) -> Tensor:
    """(N, V) log-probs with eos set to -inf while fewer than ``min_len`` tokens exist."""
    if t >= min_len:
        return log_probs
    log_probs = log_probs.clone()
    log_probs[:, eos_id] = -math.inf
    return log_probs


def _check_lengths(src: Tensor, src_lengths: Tensor) -> None:
    if src.dim() != 2 or src_lengths.shape != (src.size(0),):
        raise ValueError(
            f"expected src (B, S) and src_lengths (B,), got {tuple(src.shape)} and "
            f"{tuple(src_lengths.shape)}"
        )


# ---------------------------------------------------------------------------------------- greedy


def greedy_decode(
    model: Searchable,
    src: Tensor,
    src_lengths: Tensor,
    bos_id: int,
    eos_id: int,
    max_len_a: float = 1.5,
    max_len_b: float = 10,
    min_len: int = 0,
    length_penalty: float = 0.0,
) -> list[Hypothesis]:
    """Batched greedy decoding: one hypothesis per sentence, with its score and log-probability.

    src: (B, S) int64 on the model's device, each row ids + [eos], padded; src_lengths: (B,)
    int64 on CPU. ``length_penalty`` (GNMT alpha) only affects the reported score.
    """
    _check_lengths(src, src_lengths)
    batch = src.size(0)
    if batch == 0:
        return []
    memory, state = model.encode(src, src_lengths)
    device = src.device
    cpu_limits = max_output_lengths(src_lengths, max_len_a, max_len_b)  # (B,) on the CPU
    limits = cpu_limits.to(device)  # (B,)
    output = _GreedyOutput.empty(batch, max(int(cpu_limits.max()), 1), device)

    sent = torch.arange(batch, device=device)  # (A,) batch index of each row
    prev = torch.full((batch,), bos_id, dtype=torch.long, device=device)  # (A,)
    cum = torch.zeros(batch, dtype=torch.float32, device=device)  # (A,)
    alive = limits > 0  # (A,) sentences allowed no output at all are finished (empty)
    t = 0
    while True:
        # Finished rows are dropped from the batch once they are a quarter of it: dropping
        # copies the memory and state, which costs more than stepping a few extra rows.
        dead = int((~alive).sum())
        if dead > 0 and (dead * 4 >= alive.numel() or dead == alive.numel()):
            keep = alive.nonzero().squeeze(1)  # (A',)
            sent, prev, cum, alive = sent[keep], prev[keep], cum[keep], alive[keep]
            memory, state = memory.index_select(keep), state.index_select(keep)
        if sent.numel() == 0:
            break
        log_probs, state, _ = model.step(prev, state, memory)  # (A, V)
        log_probs = _block_eos(log_probs, eos_id, t, min_len)
        best, prev = log_probs.max(dim=1)  # (A,), (A,)
        cum = cum + best.float()
        is_eos = prev == eos_id  # (A,)
        done = alive & (is_eos | (t + 1 >= limits[sent]))  # (A,) finishing at this step
        output.write(sent, t, prev, alive, done, is_eos, cum)
        alive = alive & ~done
        t += 1
    return output.hypotheses(length_penalty)


@dataclass
class _GreedyOutput:
    """Every sentence's output tokens, written as they are chosen, and how each ended."""

    tokens: Tensor  # (B, Lmax) int64
    length: Tensor  # (B,) int64 output tokens (no eos)
    scored: Tensor  # (B,) int64 scored tokens: the output tokens, + eos if it ended so
    logprob: Tensor  # (B,) float32

    @classmethod
    def empty(cls, batch: int, max_len: int, device: torch.device) -> _GreedyOutput:
        return cls(
            tokens=torch.zeros(batch, max_len, dtype=torch.long, device=device),
            length=torch.zeros(batch, dtype=torch.long, device=device),
            scored=torch.zeros(batch, dtype=torch.long, device=device),
            logprob=torch.zeros(batch, dtype=torch.float32, device=device),
        )

    def write(
        self, sent: Tensor, t: int, token: Tensor, alive: Tensor, done: Tensor, is_eos: Tensor,
        cum: Tensor,
    ) -> None:  # fmt: skip
        """Step ``t``'s tokens (A,) of the rows ``sent`` (A,); rows ``done`` (A,) end here with
        log-probability ``cum`` (A,). Written for every row with ``torch.where`` (a boolean
        index would need a host sync): rows that are not alive keep what they hold."""
        self.tokens[sent, t] = torch.where(alive, token, self.tokens[sent, t])
        self.length[sent] = torch.where(done, torch.where(is_eos, t, t + 1), self.length[sent])
        self.scored[sent] = torch.where(done, t + 1, self.scored[sent])
        self.logprob[sent] = torch.where(done, cum, self.logprob[sent])

    def hypotheses(self, alpha: float) -> list[Hypothesis]:
        """One per sentence, in batch order, scored with the GNMT penalty ``alpha``."""
        rows, lens, scored = self.tokens.tolist(), self.length.tolist(), self.scored.tolist()
        return [
            Hypothesis(row[:n], lp / gnmt_penalty(m, alpha), lp)
            for row, n, m, lp in zip(rows, lens, scored, self.logprob.tolist(), strict=True)
        ]


def greedy_search(
    model: Searchable,
    src: Tensor,
    src_lengths: Tensor,
    bos_id: int,
    eos_id: int,
    max_len_a: float = 1.5,
    max_len_b: float = 10,
    min_len: int = 0,
) -> list[list[int]]:
    """Batched greedy decoding: the argmax token at every step; token lists without bos/eos.

    src: (B, S) int64 (ids + [eos], padded); src_lengths: (B,) int64 on CPU.
    """
    hyps = greedy_decode(model, src, src_lengths, bos_id, eos_id, max_len_a, max_len_b, min_len)
    return [hyp.tokens for hyp in hyps]


# ------------------------------------------------------------------------------------------ beam


@dataclass
class _Finished:
    """Finished hypotheses of every sentence of the batch, K slots each (filled in order).

    Every tensor has one more slot, K, a bin that ``add`` writes the candidates it does not
    keep to (so it needs no boolean indexing, which would wait for the device); its scores
    are reset to -inf after each ``add``, so it is never among the filled or the best slots.
    """

    tokens: Tensor  # (B, K+1, Lmax) int64
    length: Tensor  # (B, K+1) int64 output tokens (no eos)
    score: Tensor  # (B, K+1) float32 length-penalised; -inf in empty slots
    logprob: Tensor  # (B, K+1) float32
    count: Tensor  # (B,) int64 filled slots

    @classmethod
    def empty(cls, batch: int, beam_size: int, max_len: int, device: torch.device) -> _Finished:
        slots = beam_size + 1
        return cls(
            tokens=torch.zeros(batch, slots, max_len, dtype=torch.long, device=device),
            length=torch.zeros(batch, slots, dtype=torch.long, device=device),
            score=torch.full((batch, slots), -math.inf, device=device),
            logprob=torch.full((batch, slots), -math.inf, device=device),
            count=torch.zeros(batch, dtype=torch.long, device=device),
        )

    def add(
        self,
        sent: Tensor,
        mask: Tensor,
        logprob: Tensor,
        tokens: Tensor,
        scored_len: int,
        alpha: float,
    ) -> None:
        """Set aside candidates ``mask`` (A, M) of the active sentences ``sent`` (A,).

        logprob: (A, M) raw log-probabilities; tokens: (A, M, n) output tokens, all of one
        length n; ``scored_len`` tokens count for the length penalty (n + 1 with eos, n
        without). Candidates are taken in column order while the sentence has free slots;
        -inf candidates are ignored.
        """
        beam_size = self.score.size(1) - 1  # slot K is the bin
        mask = mask & torch.isfinite(logprob)
        rank = mask.long().cumsum(dim=1) - 1  # (A, M) position among this step's finished
        slot = self.count[sent].unsqueeze(1) + rank  # (A, 1) + (A, M) -> (A, M)
        ok = mask & (slot < beam_size)  # (A, M)
        rows = sent.unsqueeze(1).expand_as(ok)  # (A, 1) -> (A, M)
        cols = torch.where(ok, slot, beam_size)  # (A, M) the rest goes to the bin
        n = tokens.size(2)
        self.logprob[rows, cols] = logprob
        self.score[rows, cols] = logprob / gnmt_penalty(scored_len, alpha)
        self.length[rows, cols] = n
        if n > 0:
            self.tokens[rows, cols, :n] = tokens  # (A, M, n)
        self.count[sent] += ok.sum(dim=1)
        self.score[:, beam_size] = -math.inf
        self.logprob[:, beam_size] = -math.inf


def _top_candidates(cand: Tensor, width: int, vocab: int) -> tuple[Tensor, Tensor, Tensor]:
    """Top W of (A, K*V) -> (scores (A, W), source beam (A, W), token (A, W)), best first;
    W = min(width, K*V)."""
    k = min(width, cand.size(1))
    scores, flat = cand.topk(k, dim=1, largest=True, sorted=True)  # (A, W)
    return scores, torch.div(flat, vocab, rounding_mode="floor"), flat % vocab


CHUNK = 64  # vocabulary entries per chunk in ``_top_extensions``


def _top_extensions(
    log_probs: Tensor, alive_score: Tensor, width: int | None = None, chunk: int | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """The top ``width`` (default 2K) one-token extensions: log_probs (A*K, V) (eos already
    blocked), alive_score (A, K) -> (scores (A, W), source beam (A, W), token (A, W)), best
    first, W = min(width, K*V). The same as ``_top_candidates`` on the (A, K*V) table of
    ``alive_score + log_probs``, without building it. (The first step of beam search has one
    row per sentence, K = 1, and asks for the top 2K of its V extensions.)

    ``topk`` over K*V = 40,000 candidates per sentence is slow on the CPU (about 1.5 ns per
    element, unvectorised). Exact shortcut: cut each beam's vocabulary into chunks of ``chunk``
    (default ``CHUNK``) entries. A chunk holding one of the 2K best candidates has a maximum at
    least as large as the 2K-th best score, and at most 2K chunks can (each holds a candidate
    that good), so the 2K best lie in the 2K chunks with the largest maxima (vectorised
    ``amax``); the last ``V mod chunk`` entries of each beam are always kept. Then ``topk`` runs
    over 2K * chunk + K * (V mod chunk) candidates. Equal scores may come out in another order.
    """
    active, beam_size = alive_score.shape
    vocab = log_probs.size(1)
    width = width or 2 * beam_size
    chunk = chunk or CHUNK
    full = vocab // chunk  # chunks per beam
    if full * beam_size < 2 * width:  # too few chunks to gain anything
        cand = (alive_score.unsqueeze(2) + log_probs.view(active, beam_size, vocab)).view(
            active, -1
        )  # (A, K*V)
        return _top_candidates(cand, width, vocab)
    device = log_probs.device
    main = log_probs[:, : full * chunk].view(active * beam_size, full, chunk)  # (A*K, M, C)
    chunk_max = main.amax(dim=2) + alive_score.view(-1, 1)  # (A*K, M)
    best_chunks = chunk_max.view(active, -1).topk(width, dim=1).indices  # (A, 2K) in K*M
    beam = torch.div(best_chunks, full, rounding_mode="floor")  # (A, 2K)
    first = (best_chunks % full) * chunk  # (A, 2K) first token of each chunk
    rows = torch.arange(active, device=device).unsqueeze(1) * beam_size + beam  # (A, 2K)
    offsets = torch.arange(chunk, device=device)  # (C,)
    tokens = first.unsqueeze(2) + offsets  # (A, 2K, C)
    scores = log_probs[rows.unsqueeze(2), tokens] + alive_score.gather(1, beam).unsqueeze(2)
    beams = beam.unsqueeze(2).expand(-1, -1, chunk)  # (A, 2K, C)
    rest = vocab - full * chunk
    if rest:  # the last entries of every beam (A, K, R)
        tail = log_probs[:, full * chunk :].view(active, beam_size, rest) + alive_score[..., None]
        scores = torch.cat([scores.view(active, -1), tail.view(active, -1)], dim=1)
        tail_tokens = torch.arange(full * chunk, vocab, device=device).expand(
            active, beam_size, rest
        )
        tail_beams = torch.arange(beam_size, device=device)[:, None].expand(active, beam_size, rest)
        tokens = torch.cat([tokens.reshape(active, -1), tail_tokens.reshape(active, -1)], 1)
        beams = torch.cat([beams.reshape(active, -1), tail_beams.reshape(active, -1)], 1)
    top, pos = scores.reshape(active, -1).topk(width, dim=1, largest=True, sorted=True)
    return (
        top,
        beams.reshape(active, -1).gather(1, pos),
        tokens.reshape(active, -1).gather(1, pos),
    )


def _pad_candidates(
    score: Tensor, beam: Tensor, token: Tensor, beam_size: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Candidates (A, W) with W < 2K (a first step with fewer than 2K tokens) -> (A, 2K), the
    added ones at -inf (from beam 0, token 0): never finished, and alive only where fewer
    than K real candidates are, as the not-yet-alive beams were when every step had K rows."""
    missing = 2 * beam_size - score.size(1)
    active = score.size(0)
    return (
        torch.cat([score, score.new_full((active, missing), -math.inf)], dim=1),
        torch.cat([beam, beam.new_zeros(active, missing)], dim=1),
        torch.cat([token, token.new_zeros(active, missing)], dim=1),
    )


def _first_alive(is_eos: Tensor, beam_size: int) -> Tensor:
    """Positions (A, K) of the first K non-eos candidates among (A, 2K), in rank order."""
    width = is_eos.size(1)
    order = torch.arange(width, device=is_eos.device)  # (2K,)
    key = is_eos.long() * width + order  # eos candidates sort after every non-eos one
    return key.topk(beam_size, dim=1, largest=False, sorted=True).indices  # (A, K)


def _reorder(state: Any, beams: Tensor, rows: int) -> Any:
    """Gather the decoder state of the chosen source beams: beams (A, K) indices into each
    sentence's ``rows`` state rows (K, or 1 at the first step) -> a state of A*K rows."""
    active = beams.size(0)
    base = torch.arange(active, device=beams.device).unsqueeze(1) * rows  # (A, 1)
    return state.index_select((base + beams).view(-1))  # (A, K) -> (A*K,)


def _prune_rows(keep: Tensor, rows: int) -> Tensor:
    """State rows of kept sentences, ``rows`` per sentence (K, or 1 before the first step):
    keep (A',) sentence positions -> (A'*R,) row indices."""
    offsets = torch.arange(rows, device=keep.device)  # (R,)
    return (keep.unsqueeze(1) * rows + offsets).view(-1)  # (A', R) -> (A'*R,)


def _finalize(fin: _Finished, nbest: int) -> list[list[Hypothesis]]:
    """Sort each sentence's finished hypotheses by score and keep the n best."""
    order = fin.score.argsort(dim=1, descending=True, stable=True)  # (B, K+1); empty slots last
    order = order[:, :nbest]  # (B, n): only these leave the device
    score = fin.score.gather(1, order).tolist()
    logprob = fin.logprob.gather(1, order).tolist()
    length = fin.length.gather(1, order).tolist()
    index = order.unsqueeze(2).expand(-1, -1, fin.tokens.size(2))  # (B, n, Lmax)
    tokens = fin.tokens.gather(1, index).tolist()
    count = fin.count.tolist()
    results: list[list[Hypothesis]] = []
    for b, filled in enumerate(count):
        results.append(
            [
                Hypothesis(tokens[b][k][: length[b][k]], score[b][k], logprob[b][k])
                for k in range(min(filled, nbest))
            ]
        )
    return results


def beam_search(
    model: Searchable,
    src: Tensor,
    src_lengths: Tensor,
    bos_id: int,
    eos_id: int,
    beam_size: int = 5,
    length_penalty: float = 1.0,
    max_len_a: float = 1.5,
    max_len_b: float = 10,
    min_len: int = 0,
    nbest: int = 1,
    early_stop: bool = True,
) -> list[list[Hypothesis]]:
    """Batched beam search; per sentence, up to ``nbest`` hypotheses sorted by score (best first).

    src: (B, S) int64 on the model's device, each row ids + [eos], padded; src_lengths: (B,)
    int64 on CPU. ``length_penalty`` is the GNMT alpha (0 = raw log-probability). See the
    module docstring for the exact rules.
    """
    _check_lengths(src, src_lengths)
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    if not 1 <= nbest <= beam_size:
        raise ValueError(f"nbest must be between 1 and beam_size={beam_size}, got {nbest}")
    batch, k = src.size(0), beam_size
    if batch == 0:
        return []
    alpha = length_penalty
    device = src.device
    cpu_limits = max_output_lengths(src_lengths, max_len_a, max_len_b)  # (B,) on the CPU
    limits = cpu_limits.to(device)  # (B,)
    fin = _Finished.empty(batch, k, max(int(cpu_limits.max()), 1), device)
    beams = _Beams.start(model, src, src_lengths, k, bos_id)

    empty = limits <= 0  # no output allowed: one empty hypothesis
    fin.add(beams.sent, empty.unsqueeze(1), beams.score[:, :1], beams.tokens[:, :1], 0, 0.0)
    done = empty
    first_limit = int(cpu_limits.min())  # the smallest maximum length of an active sentence
    t = 0
    while True:
        if bool(done.any()):
            beams.keep((~done).nonzero().squeeze(1))
            if beams.sent.numel() > 0:
                first_limit = int(cpu_limits[beams.sent.cpu()].min())
        if beams.sent.numel() == 0:
            break
        _extend(model, beams, fin, t, eos_id, min_len, alpha)
        # alive hypotheses at the maximum length are finished as they are
        at_limit = t + 1 >= limits[beams.sent]  # (A,)
        if t + 1 >= first_limit:  # some sentence may be at its limit (skips ~12 ops a step)
            at = at_limit.unsqueeze(1).expand(-1, k)
            fin.add(beams.sent, at, beams.score, beams.tokens, t + 1, alpha)
        done = at_limit | (fin.count[beams.sent] >= k)
        if early_stop:
            done = done | _cannot_improve(beams, fin, limits[beams.sent], t, nbest, alpha)
        t += 1
    return _finalize(fin, nbest)


@dataclass
class _Beams:
    """The alive hypotheses of the active sentences: A sentences, K beams each."""

    sent: Tensor  # (A,) batch index of each active sentence
    score: Tensor  # (A, K) raw log-probs
    tokens: Tensor  # (A, K, t) output tokens so far
    prev: Tensor  # (A*R,) each row's last token
    memory: Any  # A rows (shared by a sentence's beams)
    state: Any  # A*R rows: R = 1 before the first step (the K beams start identical), then K

    @classmethod
    def start(
        cls, model: Searchable, src: Tensor, src_lengths: Tensor, beam_size: int, bos_id: int
    ) -> _Beams:
        """Every sentence encoded. Its K beams start identical, so the first step runs one
        row per sentence (a fifth of the rows at K = 5) and ``_extend`` makes K of it."""
        batch, device = src.size(0), src.device
        memory, state = model.encode(src, src_lengths)
        score = torch.full((batch, beam_size), -math.inf, device=device)  # (B, K)
        score[:, 0] = 0.0  # the one row stands for beam 0; the others are not alive yet
        return cls(
            sent=torch.arange(batch, device=device),
            score=score,
            tokens=torch.zeros(batch, beam_size, 0, dtype=torch.long, device=device),
            prev=torch.full((batch,), bos_id, dtype=torch.long, device=device),
            memory=memory,
            state=state,  # B rows, as the memory
        )

    @property
    def rows(self) -> int:
        """State rows per sentence: 1 before the first step, K after."""
        return self.prev.numel() // max(self.sent.numel(), 1)

    def keep(self, keep: Tensor) -> None:
        """Only the sentences at positions ``keep`` (A',) stay, with their beams."""
        rows = _prune_rows(keep, self.rows)  # (A'*R,)
        self.sent, self.score, self.tokens = self.sent[keep], self.score[keep], self.tokens[keep]
        self.prev = self.prev[rows]
        self.memory, self.state = self.memory.index_select(keep), self.state.index_select(rows)


def _extend(
    model: Searchable, beams: _Beams, fin: _Finished, t: int, eos_id: int, min_len: int,
    alpha: float,
) -> None:  # fmt: skip
    """One step: expand every alive beam, set aside eos among the top K candidates as
    finished, keep the best K non-eos candidates alive."""
    k, rows = beams.score.size(1), beams.rows  # rows: 1 at the first step, then K
    log_probs, state, _ = model.step(beams.prev, beams.state, beams.memory)  # (A*R, V)
    log_probs = _block_eos(log_probs, eos_id, t, min_len).float()
    cand_score, cand_beam, cand_token = _top_extensions(
        log_probs, beams.score[:, :rows], 2 * k
    )  # (A, 2K)
    if cand_score.size(1) < 2 * k:  # first step, V < 2K: pad with candidates that are not alive
        cand_score, cand_beam, cand_token = _pad_candidates(cand_score, cand_beam, cand_token, k)
    is_eos = cand_token == eos_id  # (A, 2K)

    # eos among the top K candidates: finished; tokens = the source beam's history
    history = beams.tokens.gather(1, cand_beam[:, :k, None].expand(-1, -1, t))  # (A, K, t)
    fin.add(beams.sent, is_eos[:, :k], cand_score[:, :k], history, t + 1, alpha)

    # the best K non-eos candidates stay alive
    pos = _first_alive(is_eos, k)  # (A, K)
    chosen = cand_beam.gather(1, pos)  # (A, K)
    tokens = cand_token.gather(1, pos)  # (A, K)
    beams.score = cand_score.gather(1, pos)  # (A, K)
    beams.tokens = torch.cat(
        [beams.tokens.gather(1, chosen.unsqueeze(2).expand(-1, -1, t)), tokens.unsqueeze(2)],
        dim=2,
    )  # (A, K, t) + (A, K, 1) -> (A, K, t+1)
    beams.state = _reorder(state, chosen, rows)
    beams.prev = tokens.view(-1)  # (A, K) -> (A*K,)


def _cannot_improve(
    beams: _Beams, fin: _Finished, limits: Tensor, t: int, nbest: int, alpha: float
) -> Tensor:
    """(A,) sentences whose alive hypotheses can no longer reach the n-th best finished score
    (``early_stop``); limits: (A,) their maximum lengths."""
    best_alive = beams.score.max(dim=1).values  # (A,) raw log-probs <= 0
    longest = limits.double()  # (A,) the largest scored length still possible
    bound = torch.maximum(
        best_alive.double() / gnmt_penalty(t + 2, alpha),
        best_alive.double() / ((5.0 + longest) / 6.0) ** alpha,
    )  # (A,)
    nth_best = fin.score[beams.sent].topk(nbest, dim=1).values[:, -1]  # (A,) -inf if fewer
    return torch.isfinite(nth_best) & (nth_best.double() >= bound)

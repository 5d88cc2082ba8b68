"""Greedy and beam search, ensembles and translate_lines on tiny models.

References: an unbatched, one-sentence-at-a-time beam search written plainly below; scores
recomputed by teacher forcing; greedy as the beam-1 special case; logsumexp for ensembles.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

from nmt import search
from nmt.batching import BucketBatchSampler
from nmt.config import DecodeConfig, ModelConfig, TokenizerConfig
from nmt.ensemble import Ensemble
from nmt.model import DecoderState, Seq2Seq, build_model
from nmt.search import Hypothesis, beam_search, gnmt_penalty, greedy_decode, greedy_search
from nmt.tokenizer import Tokenizer
from nmt.translation import translate_lines

VOCAB = 20
PAD, UNK, BOS, EOS = 0, 1, 2, 3
FIRST_WORD = 4  # ids 4..19 are ordinary tokens

# Sources without specials; lengths 1..9, deliberately unsorted.
SOURCES = [
    [5, 6, 7],
    [4, 9, 12, 15, 18, 8, 10, 11],
    [13],
    [19, 4, 6, 6, 17],
    [7, 7, 8, 9, 10, 11, 12, 13, 14],
    [16, 5],
]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny tensors: one intra-op thread avoids thread hand-off costs (10x on a busy 2-core box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(**changes: object) -> ModelConfig:
    cfg = ModelConfig(
        emb_size=16, enc_hidden=16, enc_layers=1, dec_hidden=16, dec_layers=1, dropout=0.0
    )
    for key, value in changes.items():
        setattr(cfg, key, value)
    return cfg


def make_src(seqs: list[list[int]]) -> tuple[Tensor, Tensor]:
    """Rows ids + [eos], padded with PAD, in the given order; lengths (B,) on CPU."""
    lengths = torch.tensor([len(s) + 1 for s in seqs])
    src = torch.full((len(seqs), int(lengths.max())), PAD)
    for i, s in enumerate(seqs):
        src[i, : len(s) + 1] = torch.tensor(s + [EOS])
    return src, lengths


def train_reverse(model: Seq2Seq, steps: int, seed: int) -> Seq2Seq:
    """About a hundred Adam steps on reversing random sequences: peaked but imperfect."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    model.train()
    for _ in range(steps):
        seqs = [
            torch.randint(FIRST_WORD, VOCAB, (int(n),), generator=gen).tolist()
            for n in torch.randint(1, 9, (32,), generator=gen)
        ]
        src, lengths = make_src(seqs)
        tgt = [s[::-1] for s in seqs]
        width = max(len(t) for t in tgt) + 1
        tgt_in = torch.full((len(tgt), width), PAD)
        tgt_out = torch.full((len(tgt), width), PAD)
        for i, t in enumerate(tgt):
            tgt_in[i, : len(t) + 1] = torch.tensor([BOS] + t)
            tgt_out[i, : len(t) + 1] = torch.tensor(t + [EOS])
        states = model(src, lengths, tgt_in)
        mask = tgt_out != PAD
        loss = torch.nn.functional.cross_entropy(model.logits(states[mask]), tgt_out[mask])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def trained() -> Seq2Seq:
    torch.manual_seed(0)
    return train_reverse(build_model(tiny_config(), VOCAB, VOCAB, PAD), steps=120, seed=0)


@pytest.fixture(scope="module")
def random_model() -> Seq2Seq:
    """Untrained, with input feeding and Bahdanau wiring: flat distributions, long outputs."""
    torch.manual_seed(1)
    cfg = tiny_config(input_feeding=True, attention="bahdanau", init_scale=0.5)
    return build_model(cfg, VOCAB, VOCAB, PAD).eval()


@pytest.fixture(params=["trained", "random_model"])
def model(request: pytest.FixtureRequest) -> Seq2Seq:
    return request.getfixturevalue(request.param)


def teacher_forced_logprob(
    model: Seq2Seq, src_ids: list[int], tokens: list[int], eos: bool
) -> float:
    """Sum of log p(token) over tokens (+ eos when the hypothesis ended with it)."""
    src, lengths = make_src([src_ids])
    target = tokens + ([EOS] if eos else [])
    if not target:
        return 0.0
    tgt_in = torch.tensor([[BOS] + target[:-1]])
    with torch.no_grad():
        log_probs = torch.log_softmax(model.logits(model(src, lengths, tgt_in)).double(), dim=-1)
    return float(log_probs[0].gather(1, torch.tensor(target)[:, None]).sum())


def max_len(src_ids: list[int], a: float, b: float) -> int:
    return math.floor(a * (len(src_ids) + 1) + b)


def reference_beam(
    model: Seq2Seq,
    src_ids: list[int],
    beam_size: int,
    alpha: float,
    a: float,
    b: float,
    min_len: int,
) -> list[Hypothesis]:
    """One sentence, plain Python lists: expand each alive beam, rank the top 2K candidates,
    finish eos among the first K, keep the first K non-eos, stop with K finished or at the
    maximum length (alive beams finished as they are)."""
    limit = max_len(src_ids, a, b)
    src, lengths = make_src([src_ids])
    memory, state = model.encode(src, lengths)
    alive: list[tuple[list[int], float, DecoderState]] = [
        ([], 0.0, state)
    ]  # tokens, logprob, state
    finished: list[Hypothesis] = []
    t = 0
    while len(finished) < beam_size and t < limit:
        cands = []
        for tokens, score, st in alive:
            prev = torch.tensor([tokens[-1] if tokens else BOS])
            log_probs, new_st, _ = model.step(prev, st, memory)
            for tok in range(VOCAB):
                lp = float(log_probs[0, tok]) if (tok != EOS or t >= min_len) else -math.inf
                cands.append((score + lp, tokens, tok, new_st))
        cands.sort(key=lambda c: -c[0])  # stable: beam order, then token order on ties
        cands = cands[: 2 * beam_size]
        new_alive: list[tuple[list[int], float, DecoderState]] = []
        for rank, (score, tokens, tok, st) in enumerate(cands):
            if tok == EOS:
                if rank < beam_size and len(finished) < beam_size and score > -math.inf:
                    finished.append(Hypothesis(tokens, score / gnmt_penalty(t + 1, alpha), score))
            elif len(new_alive) < beam_size:
                new_alive.append((tokens + [tok], score, st))
        alive = new_alive
        t += 1
        if t >= limit:
            for tokens, score, _ in alive:
                if len(finished) < beam_size and score > -math.inf:
                    finished.append(Hypothesis(tokens, score / gnmt_penalty(t, alpha), score))
    return sorted(finished, key=lambda h: -h.score)


def assert_same_hyps(got: list[Hypothesis], want: list[Hypothesis]) -> None:
    assert [h.tokens for h in got] == [h.tokens for h in want]
    assert [h.score for h in got] == pytest.approx([h.score for h in want], abs=1e-4)
    assert [h.logprob for h in got] == pytest.approx([h.logprob for h in want], abs=1e-4)


@torch.inference_mode()
def test_beam_size_one_equals_greedy(model: Seq2Seq) -> None:
    src, lengths = make_src(SOURCES)
    greedy = greedy_search(model, src, lengths, BOS, EOS)
    beam = beam_search(model, src, lengths, BOS, EOS, beam_size=1, length_penalty=0.0)
    assert [hyps[0].tokens for hyps in beam] == greedy
    scored = greedy_decode(model, src, lengths, BOS, EOS)
    assert [h.logprob for h in scored] == pytest.approx(
        [hyps[0].logprob for hyps in beam], abs=1e-5
    )


@pytest.mark.parametrize("chunk", [64, 4, 3])  # whole rows (V=20), chunks, chunks + a tail
@pytest.mark.parametrize("alpha", [0.0, 1.0])
@torch.inference_mode()
def test_beam_matches_plain_reference(
    model: Seq2Seq, alpha: float, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(search, "CHUNK", chunk)
    src, lengths = make_src(SOURCES)
    got = beam_search(
        model,
        src,
        lengths,
        BOS,
        EOS,
        beam_size=4,
        length_penalty=alpha,
        max_len_a=1.0,
        max_len_b=2,
        nbest=4,
    )
    for src_ids, hyps in zip(SOURCES, got, strict=True):
        want = reference_beam(model, src_ids, 4, alpha, a=1.0, b=2, min_len=0)
        assert_same_hyps(hyps, want)


@torch.inference_mode()
def test_beam_score_never_worse_than_greedy(model: Seq2Seq) -> None:
    src, lengths = make_src(SOURCES)
    greedy = greedy_search(model, src, lengths, BOS, EOS)
    beam = beam_search(model, src, lengths, BOS, EOS, beam_size=5, length_penalty=0.0)
    for src_ids, g, hyps in zip(SOURCES, greedy, beam, strict=True):
        limit = max_len(src_ids, 1.5, 10)
        best = hyps[0]
        best_lp = teacher_forced_logprob(model, src_ids, best.tokens, len(best.tokens) < limit)
        greedy_lp = teacher_forced_logprob(model, src_ids, g, len(g) < limit)
        assert best.logprob == pytest.approx(best_lp, abs=1e-4)  # reported score is the model's
        assert best.score == pytest.approx(best.logprob)  # alpha 0: raw log-probability
        assert best_lp >= greedy_lp - 1e-5


@torch.inference_mode()
def test_greedy_scores_match_teacher_forcing(trained: Seq2Seq) -> None:
    src, lengths = make_src(SOURCES)
    hyps = greedy_decode(model=trained, src=src, src_lengths=lengths, bos_id=BOS, eos_id=EOS)
    for src_ids, h in zip(SOURCES, hyps, strict=True):
        ended = len(h.tokens) < max_len(src_ids, 1.5, 10)
        assert h.logprob == pytest.approx(
            teacher_forced_logprob(trained, src_ids, h.tokens, ended), abs=1e-4
        )
    # the trained model learned something: several outputs are the reversed source
    reversed_ok = sum(h.tokens == s[::-1] for s, h in zip(SOURCES, hyps, strict=True))
    assert reversed_ok >= 2


@torch.inference_mode()
def test_nbest_sorted_distinct_and_penalised(model: Seq2Seq) -> None:
    src, lengths = make_src(SOURCES)
    alpha = 0.8
    out = beam_search(model, src, lengths, BOS, EOS, beam_size=5, length_penalty=alpha, nbest=5)
    for src_ids, hyps in zip(SOURCES, out, strict=True):
        assert len(hyps) == 5
        scores = [h.score for h in hyps]
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(h.tokens) for h in hyps}) == 5
        limit = max_len(src_ids, 1.5, 10)
        for h in hyps:
            scored = len(h.tokens) + (1 if len(h.tokens) < limit else 0)
            assert h.score == pytest.approx(h.logprob / ((5 + scored) / 6) ** alpha, rel=1e-5)
    with pytest.raises(ValueError, match="nbest"):
        beam_search(model, src, lengths, BOS, EOS, beam_size=2, nbest=3)


@torch.inference_mode()
def test_max_length_respected(random_model: Seq2Seq) -> None:
    src, lengths = make_src(SOURCES)
    a, b = 0.5, 1.0
    limits = [max_len(s, a, b) for s in SOURCES]
    greedy = greedy_search(random_model, src, lengths, BOS, EOS, max_len_a=a, max_len_b=b)
    beam = beam_search(
        random_model, src, lengths, BOS, EOS, beam_size=3, max_len_a=a, max_len_b=b, nbest=3
    )
    assert all(len(g) <= n for g, n in zip(greedy, limits, strict=True))
    assert any(len(g) == n for g, n in zip(greedy, limits, strict=True))  # the limit bites
    for hyps, n in zip(beam, limits, strict=True):
        assert hyps and all(len(h.tokens) <= n for h in hyps)
    # a limit of zero gives one empty hypothesis without decoding
    empty = beam_search(random_model, src, lengths, BOS, EOS, max_len_a=0.0, max_len_b=0)
    assert empty == [[Hypothesis([], 0.0, 0.0)]] * len(SOURCES)
    assert greedy_search(random_model, src, lengths, BOS, EOS, max_len_a=0.0, max_len_b=0) == [
        []
    ] * len(SOURCES)


@torch.inference_mode()
def test_min_length_respected(trained: Seq2Seq) -> None:
    src, lengths = make_src(SOURCES)
    plain = greedy_search(trained, src, lengths, BOS, EOS)
    min_len = 6
    assert any(len(g) < min_len for g in plain)  # so the constraint changes something
    greedy = greedy_search(trained, src, lengths, BOS, EOS, min_len=min_len)
    beam = beam_search(trained, src, lengths, BOS, EOS, beam_size=3, min_len=min_len, nbest=3)
    assert all(len(g) >= min_len for g in greedy)
    assert all(len(h.tokens) >= min_len for hyps in beam for h in hyps)
    for src_ids, hyps in zip(SOURCES, beam, strict=True):
        want = reference_beam(trained, src_ids, 3, 1.0, a=1.5, b=10, min_len=min_len)
        assert_same_hyps(hyps, want)


@torch.inference_mode()
def test_result_independent_of_batch(model: Seq2Seq) -> None:
    short = [8, 9, 10]
    longer = [[4, 5, 6, 7, 8, 9, 10, 11, 12], [13, 14, 15, 16, 17, 18], [19, 18, 17, 16]]
    alone_src, alone_len = make_src([short])
    batch_src, batch_len = make_src([longer[0], longer[1], short, longer[2]])
    assert (
        greedy_search(model, alone_src, alone_len, BOS, EOS)[0]
        == (greedy_search(model, batch_src, batch_len, BOS, EOS)[2])
    )
    alone = beam_search(model, alone_src, alone_len, BOS, EOS, beam_size=4, nbest=4)[0]
    inside = beam_search(model, batch_src, batch_len, BOS, EOS, beam_size=4, nbest=4)[2]
    assert_same_hyps(inside, alone)


@torch.inference_mode()
def test_ensemble_of_one_equals_single_model(trained: Seq2Seq) -> None:
    ensemble = Ensemble([trained]).eval()
    src, lengths = make_src(SOURCES)
    assert greedy_search(ensemble, src, lengths, BOS, EOS) == greedy_search(
        trained, src, lengths, BOS, EOS
    )
    got = beam_search(ensemble, src, lengths, BOS, EOS, beam_size=3, nbest=3)
    want = beam_search(trained, src, lengths, BOS, EOS, beam_size=3, nbest=3)
    for g, w in zip(got, want, strict=True):
        assert_same_hyps(g, w)


@torch.inference_mode()
def test_ensemble_of_two_averages_probabilities(trained: Seq2Seq, random_model: Seq2Seq) -> None:
    ensemble = Ensemble([trained, random_model]).eval()
    src, lengths = make_src(SOURCES)
    prev = torch.full((len(SOURCES),), BOS)
    mem, state = ensemble.encode(src, lengths)
    got, _, attn = ensemble.step(prev, state, mem)
    parts = []
    for m in (trained, random_model):
        m_mem, m_state = m.encode(src, lengths)
        parts.append(m.step(prev, m_state, m_mem)[0].double())
    want = torch.log((parts[0].exp() + parts[1].exp()) / 2)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, parts[0].float(), atol=1e-3)
    assert not torch.allclose(got, parts[1].float(), atol=1e-3)
    torch.testing.assert_close(got.exp().sum(dim=1), torch.ones(len(SOURCES)))
    assert attn.shape == src.shape
    # decoding with the ensemble differs from decoding with either member
    ens, one, two = (
        greedy_decode(m, src, lengths, BOS, EOS) for m in (ensemble, trained, random_model)
    )
    assert [h.logprob for h in ens] != pytest.approx([h.logprob for h in one], abs=1e-3)
    assert [h.tokens for h in ens] != [h.tokens for h in two]


def test_ensemble_rejects_different_target_vocabularies() -> None:
    a = build_model(tiny_config(), VOCAB, VOCAB, PAD)
    b = build_model(tiny_config(), VOCAB, VOCAB + 5, PAD)
    with pytest.raises(ValueError, match=r"share a target vocabulary.*\[20, 25\]"):
        Ensemble([a, b])
    with pytest.raises(ValueError, match="at least one model"):
        Ensemble([])


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    data = Path(__file__).resolve().parents[1] / "data" / "demo.es-en"
    out = tmp_path_factory.mktemp("spm")
    src_lines = (data / "dev.es").read_text(encoding="utf-8").splitlines()[:300]
    tgt_lines = (data / "dev.en").read_text(encoding="utf-8").splitlines()[:300]
    (out / "src.txt").write_text("\n".join(src_lines) + "\n", encoding="utf-8")
    (out / "tgt.txt").write_text("\n".join(tgt_lines) + "\n", encoding="utf-8")
    cfg = TokenizerConfig(vocab_size=100)
    return Tokenizer.train(cfg, [out / "src.txt"], [out / "tgt.txt"], out, num_threads=1)


@pytest.mark.parametrize("beam_size", [1, 3])
def test_translate_lines_restores_input_order(tokenizer: Tokenizer, beam_size: int) -> None:
    torch.manual_seed(2)
    v = tokenizer.src_vocab_size
    model = build_model(tiny_config(init_scale=0.5), v, tokenizer.tgt_vocab_size, tokenizer.pad_id)
    lines = [
        "Y dijo Dios: Sea la luz.",
        "",
        "la tierra",
        "Y fué la tarde y la mañana el día tercero, y vió Dios que era bueno.",
        "   ",
        "agua",
        "Y llamó Dios á la luz Día.",
    ]
    decode = DecodeConfig(beam_size=beam_size, nbest=beam_size, max_tokens=40, max_len_b=5)
    sizes = np.array([len(ids) for ids in tokenizer.encode_src([x for x in lines if x.strip()])])
    assert len(list(BucketBatchSampler(sizes, sizes, 40, shuffle=False))) >= 3  # reorders
    model.train()
    got = translate_lines(model, tokenizer, lines, decode, "cpu")
    assert model.training  # the caller's mode is restored
    assert len(got) == len(lines)
    assert got[1] == [Hypothesis([], 0.0, 0.0)] and got[4] == [Hypothesis([], 0.0, 0.0)]
    model.eval()
    with torch.inference_mode():
        for line, hyps in zip(lines, got, strict=True):
            if not line.strip():
                continue
            ids = tokenizer.encode_src([line])[0]
            lengths = torch.tensor([len(ids) + 1])
            src = torch.tensor([ids + [tokenizer.eos_id]])
            if beam_size == 1:
                want = [
                    greedy_decode(
                        model,
                        src,
                        lengths,
                        tokenizer.bos_id,
                        tokenizer.eos_id,
                        max_len_b=5,
                        length_penalty=1.0,
                    )[0]
                ]
            else:
                want = beam_search(
                    model,
                    src,
                    lengths,
                    tokenizer.bos_id,
                    tokenizer.eos_id,
                    beam_size=beam_size,
                    max_len_b=5,
                    nbest=beam_size,
                )[0]
            assert_same_hyps(hyps, want)
    assert translate_lines(model, tokenizer, [], decode, "cpu") == []


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@torch.inference_mode()
def test_cuda_search_matches_cpu(trained: Seq2Seq) -> None:
    cuda_model = copy.deepcopy(trained).to("cuda")
    src, lengths = make_src(SOURCES)
    assert greedy_search(cuda_model, src.cuda(), lengths, BOS, EOS) == greedy_search(
        trained, src, lengths, BOS, EOS
    )
    got = beam_search(cuda_model, src.cuda(), lengths, BOS, EOS, beam_size=4, nbest=4)
    want = beam_search(trained, src, lengths, BOS, EOS, beam_size=4, nbest=4)
    for g, w in zip(got, want, strict=True):
        assert [h.tokens for h in g] == [h.tokens for h in w]
        assert [h.score for h in g] == pytest.approx([h.score for h in w], abs=1e-3)


class CountingModel:
    """A Searchable that counts decoder rows stepped (hypotheses x steps)."""

    def __init__(self, model: Seq2Seq) -> None:
        self.model = model
        self.rows = 0
        self.per_step: list[int] = []

    def encode(self, src: Tensor, src_lengths: Tensor) -> Any:
        return self.model.encode(src, src_lengths)

    def step(self, prev: Tensor, state: Any, memory: Any) -> Any:
        self.rows += prev.numel()
        self.per_step.append(prev.numel())
        return self.model.step(prev, state, memory)


@torch.inference_mode()
def test_first_step_runs_one_row_per_sentence(model: Seq2Seq) -> None:
    """The K beams of a sentence start identical: the first step runs B rows, then K per
    active sentence."""
    src, lengths = make_src(SOURCES)
    counting = CountingModel(model)
    beam_search(counting, src, lengths, BOS, EOS, beam_size=4)  # type: ignore[arg-type]
    assert counting.per_step[0] == len(SOURCES)
    assert all(rows % 4 == 0 for rows in counting.per_step[1:])
    assert counting.per_step[1] == 4 * len(SOURCES)


@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.0])
@pytest.mark.parametrize("nbest", [1, 3])
@torch.inference_mode()
def test_early_stop_keeps_the_nbest_and_saves_steps(
    model: Seq2Seq, alpha: float, nbest: int
) -> None:
    """Early stopping only skips steps that cannot change the n best hypotheses."""
    src, lengths = make_src(SOURCES)
    runs = {}
    for early in (False, True):
        counting = CountingModel(model)
        hyps = beam_search(
            counting, src, lengths, BOS, EOS, beam_size=5, length_penalty=alpha, nbest=nbest,
            early_stop=early,
        )  # fmt: skip
        runs[early] = (hyps, counting.rows)
    for got, want in zip(runs[True][0], runs[False][0], strict=True):
        assert_same_hyps(got, want)
    assert runs[True][1] <= runs[False][1]


@pytest.mark.parametrize(
    ("vocab", "beam_size", "chunk"), [(8000, 5, 64), (1001, 4, 64), (50, 3, 7)]
)
def test_top_extensions_equal_topk_over_all_candidates(
    vocab: int, beam_size: int, chunk: int
) -> None:
    """The chunked top-2K equals topk over every (beam, token) candidate, -inf included."""
    gen = torch.Generator().manual_seed(vocab)
    active = 6
    log_probs = torch.randn(active * beam_size, vocab, generator=gen).log_softmax(dim=1)
    log_probs[:, 3] = -math.inf  # a blocked eos
    alive = torch.randn(active, beam_size, generator=gen) * 3 - 5
    alive[0, 1:] = -math.inf  # first step: only beam 0 alive
    alive[1, :] = torch.tensor([-1.0] + [-math.inf] * (beam_size - 1))
    got = search._top_extensions(log_probs, alive, chunk=chunk)
    cand = (alive.unsqueeze(2) + log_probs.view(active, beam_size, vocab)).view(active, -1)
    want = search._top_candidates(cand, 2 * beam_size, vocab)
    assert torch.equal(got[0], want[0])
    # same candidates: each (beam, token) scores what the table says
    flat = got[1] * vocab + got[2]  # (A, 2K)
    assert torch.equal(cand.gather(1, flat), want[0])
    assert all(len(set(row)) == len(row) for row in flat.tolist())  # no candidate twice
    assert got[1].max() < beam_size and got[2].max() < vocab


@pytest.mark.parametrize(("vocab", "width", "chunk"), [(8000, 10, 64), (1001, 8, 64), (50, 6, 7)])
def test_first_step_top_extensions_of_one_row(vocab: int, width: int, chunk: int) -> None:
    """The first step's one row per sentence (K = 1) gives the top 2K of its V extensions."""
    gen = torch.Generator().manual_seed(vocab + 1)
    active = 5
    log_probs = torch.randn(active, vocab, generator=gen).log_softmax(dim=1)
    log_probs[:, 3] = -math.inf  # a blocked eos
    alive = torch.zeros(active, 1)
    score, beam, token = search._top_extensions(log_probs, alive, width, chunk=chunk)
    want = log_probs.topk(width, dim=1)
    assert torch.equal(score, want.values)
    assert torch.equal(log_probs.gather(1, token), score)  # the tokens score what they say
    assert beam.eq(0).all()


@pytest.mark.parametrize("min_len", [0, 1])
@torch.inference_mode()
def test_beam_wider_than_the_vocabulary_matches_reference(model: Seq2Seq, min_len: int) -> None:
    """K > V: the first step has fewer candidates than beams (padded to 2K at -inf: alive
    only where no real candidate is left, never finished); the search still equals the plain
    reference, whose first step keeps only the real ones."""
    beam_size = VOCAB + 3  # 23 beams, 20 tokens
    src, lengths = make_src(SOURCES)
    got = beam_search(
        model, src, lengths, BOS, EOS, beam_size=beam_size, max_len_a=1.0, max_len_b=2,
        min_len=min_len, nbest=beam_size,
    )  # fmt: skip
    for src_ids, hyps in zip(SOURCES, got, strict=True):
        want = reference_beam(model, src_ids, beam_size, 1.0, a=1.0, b=2, min_len=min_len)
        assert_same_hyps(hyps, want)

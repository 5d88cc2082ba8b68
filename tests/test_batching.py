"""BucketBatchSampler: coverage, budget, determinism, epochs, resume, sharding; cut_batches and
sort_pool against straightforward reference implementations; the epoch computed block by block
against the reference and against one pass over the whole set."""

from __future__ import annotations

import numpy as np
import pytest

from nmt import batching
from nmt.batching import BucketBatchSampler, cut_batches, cut_bounds, sort_pool, sort_pools

MAX_TOKENS = 200


@pytest.fixture(scope="module")
def lengths() -> tuple[np.ndarray, np.ndarray]:
    """1500 pairs with correlated lengths, a few empty sources and a few over-budget ones."""
    rng = np.random.default_rng(0)
    src = rng.integers(1, 40, size=1500)
    tgt = np.clip(src + rng.integers(-6, 7, size=1500), 1, None)
    src[:5] = 0
    src[5:8] = 250  # over max_tokens alone: each must form its own batch
    return src.astype(np.int64), tgt.astype(np.int64)


def sampler(
    lengths: tuple[np.ndarray, np.ndarray],
    shuffle: bool = True,
    seed: int = 1,
    max_sentences: int = 0,
    pool_factor: int = 4,
    num_replicas: int = 1,
    rank: int = 0,
) -> BucketBatchSampler:
    src, tgt = lengths
    return BucketBatchSampler(
        src,
        tgt,
        MAX_TOKENS,
        max_sentences=max_sentences,
        shuffle=shuffle,
        seed=seed,
        pool_factor=pool_factor,
        num_replicas=num_replicas,
        rank=rank,
    )


def cells(batch: list[int], lens: np.ndarray, extra: int = 1) -> int:
    return len(batch) * (int(lens[batch].max()) + extra)


@pytest.mark.parametrize("shuffle", [True, False])
def test_every_index_once_per_epoch(lengths, shuffle):
    s = sampler(lengths, shuffle=shuffle)
    for epoch in (1, 2):
        s.set_epoch(epoch)
        n = len(s)  # of the current epoch: ask before iterating it
        batches = list(s)
        assert len(batches) == n
        flat = sorted(i for b in batches for i in b)
        assert flat == list(range(len(lengths[0])))


@pytest.mark.parametrize("max_sentences", [0, 7])
def test_budget_respected(lengths, max_sentences):
    src, tgt = lengths
    batches = list(sampler(lengths, max_sentences=max_sentences))
    for b in batches:
        if len(b) > 1:
            assert cells(b, src) <= MAX_TOKENS and cells(b, tgt) <= MAX_TOKENS
        if max_sentences:
            assert len(b) <= max_sentences
    for i in (5, 6, 7):  # over-long examples are alone
        assert [i] in batches


def test_same_seed_same_batches_and_epochs_differ(lengths):
    a, b, c = sampler(lengths, seed=3), sampler(lengths, seed=3), sampler(lengths, seed=4)
    first = list(a)
    assert first == list(b)
    assert first != list(c)
    a.set_epoch(5)
    b.set_epoch(5)
    fifth = list(a)
    assert fifth == list(b)
    assert fifth != first


def test_iterating_to_the_end_moves_to_next_epoch(lengths):
    a, b = sampler(lengths), sampler(lengths)
    list(a)
    assert a.state_dict()["epoch"] == 2 and a.state_dict()["position"] == 0
    b.set_epoch(2)
    assert list(a) == list(b)


def test_eval_mode_sorted_and_deterministic(lengths):
    src, tgt = lengths
    s = sampler(lengths, shuffle=False)
    batches = list(s)
    order = [i for b in batches for i in b]
    reference = sorted(range(len(src)), key=lambda i: (src[i], tgt[i], i))
    assert order == reference
    s.set_epoch(7)
    assert list(s) == batches


def test_resume_mid_epoch_reproduces_the_rest(lengths):
    full = sampler(lengths, seed=9)
    full.set_epoch(3)
    expected = list(full) + list(full)  # epoch 3, then epoch 4

    run = sampler(lengths, seed=9)
    run.set_epoch(3)
    it = iter(run)
    seen = [next(it) for _ in range(5)]
    state = run.state_dict()
    assert state["epoch"] == 3 and state["position"] == 5

    resumed = sampler(lengths, seed=9)
    resumed.load_state_dict(state)
    resumed.set_epoch(3)  # a training loop may call this after loading: keeps the position
    rest = list(resumed)
    assert seen + rest == expected[: len(seen) + len(rest)]
    assert resumed.state_dict()["epoch"] == 4
    assert seen + rest + list(resumed) == expected


def test_shards_disjoint_with_equal_counts(lengths):
    n = 3
    whole = sampler(lengths)
    whole.set_epoch(2)
    global_batches = list(whole)
    shards = []
    for rank in range(n):
        s = sampler(lengths, num_replicas=n, rank=rank)
        s.set_epoch(2)
        n_batches = len(s)
        shards.append(list(s))
        assert len(shards[-1]) == n_batches
    assert len({len(sh) for sh in shards}) == 1
    assert len(shards[0]) == len(global_batches) // n
    indices = [i for sh in shards for b in sh for i in b]
    assert len(indices) == len(set(indices))  # disjoint
    usable = global_batches[: n * (len(global_batches) // n)]
    assert sorted(indices) == sorted(i for b in usable for i in b)
    for rank in range(n):
        assert shards[rank] == usable[rank::n]


def test_cut_batches_greedy_maximal(lengths):
    src, tgt = lengths
    order = np.random.default_rng(1).permutation(len(src))
    batches = cut_batches(order, src, tgt, MAX_TOKENS)
    assert [i for b in batches for i in b] == order.tolist()  # consecutive, order kept
    for b, nxt in zip(batches, batches[1:], strict=False):
        grown = b + nxt[:1]  # the next example would have broken the budget
        assert cells(grown, src) > MAX_TOKENS or cells(grown, tgt) > MAX_TOKENS
        if len(b) > 1:
            assert cells(b, src) <= MAX_TOKENS and cells(b, tgt) <= MAX_TOKENS


def test_sort_pool(lengths):
    src, tgt = lengths
    pool = np.random.default_rng(2).permutation(len(src))[:600]
    plain = sort_pool(pool, src, tgt, MAX_TOKENS, strip_factor=0)
    position = {int(i): k for k, i in enumerate(pool)}
    assert plain.tolist() == sorted(pool.tolist(), key=lambda i: (src[i], tgt[i], position[i]))

    stripped = sort_pool(pool, src, tgt, MAX_TOKENS, strip_factor=2)
    assert sorted(stripped.tolist()) == sorted(pool.tolist())
    # reference: strips of 2 batches' worth of cost along the (src, tgt) order
    cost = np.cumsum((np.maximum(src[plain], tgt[plain]) + 1) / MAX_TOKENS)
    strip_of = {int(i): int(c // 2) for i, c in zip(plain, cost, strict=True)}
    strips = [strip_of[int(i)] for i in stripped]
    assert strips == sorted(strips)  # strips stay in source-length order
    for k in set(strips):
        members = [int(i) for i in stripped if strip_of[int(i)] == k]
        keys = [(tgt[i], src[i]) if k % 2 == 0 else (-tgt[i], src[i]) for i in members]
        assert keys == sorted(keys)


def test_bucketing_pads_less_than_random(lengths):
    src, tgt = lengths

    def pad_fraction(batches: list[list[int]], lens: np.ndarray) -> float:
        total = sum(cells(b, lens) for b in batches)
        return 1 - sum(int(lens[b].sum()) + len(b) for b in batches) / total

    bucketed = list(sampler(lengths, pool_factor=50))
    random = cut_batches(np.random.default_rng(0).permutation(len(src)), src, tgt, MAX_TOKENS)
    for lens in (src, tgt):
        assert pad_fraction(bucketed, lens) < 0.5 * pad_fraction(random, lens)


def test_state_dict_is_plain_python(lengths):
    state = sampler(lengths).state_dict()
    assert all(isinstance(v, int | bool) for v in state.values())


# ---------------------------------------------------------------------------------------------
# the vectorized epoch (sort_pools, cut_bounds, compact batches) against the per-example loop


def reference_cut(
    order: np.ndarray, src: np.ndarray, tgt: np.ndarray, max_tokens: int, max_sentences: int = 0
) -> list[list[int]]:
    """The greedy cut as a plain loop over examples."""
    batches: list[list[int]] = []
    for i in order.tolist():
        if batches:
            grown = batches[-1] + [i]
            n = len(grown)
            if (
                n * (int(src[grown].max()) + 1) <= max_tokens
                and n * (int(tgt[grown].max()) + 1) <= max_tokens
                and not 0 < max_sentences < n
            ):
                batches[-1] = grown
                continue
        batches.append([i])
    return batches


def reference_epoch(s: BucketBatchSampler, epoch: int) -> list[list[int]]:
    """Steps 1-5 of the module docstring, one pool at a time with Python lists."""
    src, tgt = s.src_lengths, s.tgt_lengths
    rng = np.random.default_rng((s.seed, epoch))
    perm = rng.permutation(len(src))
    batches: list[list[int]] = []
    for start in range(0, len(perm), s.pool_size):
        pool = perm[start : start + s.pool_size]
        order = sort_pool(pool, src, tgt, s.max_tokens, s.max_sentences, s.strip_factor)
        batches.extend(reference_cut(order, src, tgt, s.max_tokens, s.max_sentences))
    batches = [batches[i] for i in rng.permutation(len(batches)).tolist()]
    usable = len(batches) - len(batches) % s.num_replicas
    return batches[s.rank : usable : s.num_replicas]


@pytest.mark.parametrize("block", [batching.BLOCK, 100, 1])  # 100 and 1: many blocks
@pytest.mark.parametrize(
    "max_sentences, pool_factor, num_replicas, rank",
    [(0, 4, 1, 0), (9, 1, 1, 0), (0, 50, 3, 2), (0, 0, 2, 1)],
)
def test_epoch_matches_reference(
    lengths, max_sentences, pool_factor, num_replicas, rank, block, monkeypatch
):
    monkeypatch.setattr(batching, "BLOCK", block)
    s = sampler(
        lengths,
        max_sentences=max_sentences,
        pool_factor=pool_factor,
        num_replicas=num_replicas,
        rank=rank,
    )
    for epoch in (1, 2):
        s.set_epoch(epoch)
        assert list(s) == reference_epoch(s, epoch)


def test_cut_bounds_per_pool_matches_loop(lengths):
    src, tgt = lengths
    order = np.random.default_rng(3).permutation(len(src))
    for pool_size, max_sentences in ((0, 0), (37, 0), (200, 5), (1, 0)):
        bounds = cut_bounds(order, src, tgt, MAX_TOKENS, max_sentences, pool_size=pool_size)
        got = [order[a:b].tolist() for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        step = pool_size or len(order)
        expected = [
            b
            for i in range(0, len(order), step)
            for b in reference_cut(order[i : i + step], src, tgt, MAX_TOKENS, max_sentences)
        ]
        assert got == expected
    assert cut_bounds(order[:0], src, tgt, MAX_TOKENS).tolist() == [0]


def test_resume_is_exact_with_many_blocks(lengths, monkeypatch):
    monkeypatch.setattr(batching, "BLOCK", 50)
    full = sampler(lengths, seed=5)
    full.set_epoch(2)
    expected = list(full)
    assert len(expected) > 20
    run = sampler(lengths, seed=5)
    run.set_epoch(2)
    it = iter(run)
    seen = [next(it) for _ in range(11)]
    resumed = sampler(lengths, seed=5)
    resumed.load_state_dict(run.state_dict())
    assert seen + list(resumed) == expected


def whole_epoch(s: BucketBatchSampler, epoch: int) -> list[list[int]]:
    """Steps 1-5 over the whole set at once (sort_pools and cut_bounds on every pool together,
    int64 indices): the computation before it was split into blocks."""
    rng = np.random.default_rng((s.seed, epoch))
    perm = rng.permutation(len(s.src_lengths))
    src, tgt = s.src_lengths.astype(np.int64), s.tgt_lengths.astype(np.int64)
    order = sort_pools(perm, s.pool_size, src, tgt, s.max_tokens, s.max_sentences, s.strip_factor)
    bounds = cut_bounds(order, src, tgt, s.max_tokens, s.max_sentences, pool_size=s.pool_size)
    sel = rng.permutation(len(bounds) - 1)
    usable = len(sel) - len(sel) % s.num_replicas
    flat = order.tolist()
    return [flat[bounds[b] : bounds[b + 1]] for b in sel[s.rank : usable : s.num_replicas].tolist()]


def test_epoch_in_blocks_matches_one_pass_over_several_blocks():
    """1.3M pairs: the default block size (2**19 examples) splits the epoch into three blocks,
    the last one partial; the batches are those of one pass over the whole set, and the
    lengths and order are kept in 2 and 4 bytes a pair."""
    n = 1_300_000
    assert n > 2 * batching.BLOCK
    rng = np.random.default_rng(11)
    src = rng.integers(1, 80, size=n).astype(np.uint16)
    tgt = np.clip(src.astype(np.int64) + rng.integers(-8, 9, size=n), 1, None).astype(np.uint16)
    s = BucketBatchSampler(src, tgt, max_tokens=2000, seed=4, num_replicas=2, rank=1)
    assert s.src_lengths is src  # unsigned lengths are not copied
    assert s.pool_size < batching.BLOCK
    s.set_epoch(3)
    order, _, _ = s._batches()
    assert order.dtype == np.uint32
    assert list(s) == whole_epoch(s, 3)


def test_lengths_kept_small_and_unsigned():
    s = BucketBatchSampler(np.array([3, 0, 70000]), np.array([1, 2, 3]), max_tokens=100)
    assert s.src_lengths.dtype == np.uint32 and s.tgt_lengths.dtype == np.uint16
    assert sorted(i for b in s for i in b) == [0, 1, 2]
    with pytest.raises(ValueError, match="negative length"):
        BucketBatchSampler(np.array([1, -1]), np.array([1, 1]), max_tokens=100)


@pytest.mark.parametrize("span", [1, 7, 2**40, 2**62])  # 2**62: too wide, numpy's own sort
def test_stable_argsort_matches_numpy(span):
    rng = np.random.default_rng(span % 1000)
    key = rng.integers(0, span, size=5000, dtype=np.int64)
    got = batching._stable_argsort(key.copy(), span)
    assert got.tolist() == np.argsort(key, kind="stable").tolist()

"""The Kneser-Ney n-gram baseline: a proper distribution, the reference formulas, order selection."""

from __future__ import annotations

import math
from collections import Counter, defaultdict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training.ngram import KneserNey, Stream, select_order


def _reference_prob(
    seqs: list[tuple[list[int], list[int]]], vocab: int, order: int, hist: tuple[int, ...], pos: int, w: int
) -> float:
    """Interpolated modified KN written out with dicts of tuples, independent of the hashed implementation.

    ``hist`` is (w_{t-1}, w_{t-2}, ...) padded with BOS (= vocab); contexts are (pos, w_{t-1}, ..., w_{t-j}).
    """
    bos = vocab
    # raw counts per level j: context (pos, prev_1..prev_j) -> Counter of tokens
    raw: list[dict[tuple[int, ...], Counter[int]]] = [defaultdict(Counter) for _ in range(order)]
    for toks, poss in seqs:
        for t, (tok, p) in enumerate(zip(toks, poss, strict=True)):
            prev = [toks[t - k] if t - k >= 0 else bos for k in range(1, order)]
            for j in range(order):
                raw[j][(p, *prev[:j])][tok] += 1
    # continuation counts of level j (< order-1): distinct extensions of the context seen before w
    cont: list[dict[tuple[int, ...], Counter[int]]] = [defaultdict(Counter) for _ in range(order - 1)]
    for j in range(order - 1):
        for ctx, counter in raw[j + 1].items():
            for tok in counter:
                cont[j][ctx[:-1]][tok] += 1
    uni: Counter[int] = Counter()
    for counter in raw[0].values():
        for tok in counter:
            uni[tok] += 1

    def discounts(table: dict[tuple[int, ...], Counter[int]]) -> tuple[float, float, float]:
        coc = Counter(c for counter in table.values() for c in counter.values())
        n1, n2, n3, n4 = (coc[k] for k in (1, 2, 3, 4))
        if n1 == 0 or n2 == 0:
            return (0.5, 0.5, 0.5)
        y = n1 / (n1 + 2 * n2)
        d1 = 1 - 2 * y * n2 / n1
        d2 = 2 - 3 * y * n3 / n2
        d3 = 3 - 4 * y * n4 / n3 if n3 else d2
        return (min(max(d1, 0.05), 1.0), min(max(d2, 0.05), 2.0), min(max(d3, 0.05), 3.0))

    def level(table: dict[tuple[int, ...], Counter[int]], ctx: tuple[int, ...], lower: float) -> float:
        counter = table.get(ctx)
        if not counter:
            return lower
        d = discounts(table)
        disc = {c: d[min(c, 3) - 1] for c in set(counter.values())}
        total = sum(counter.values())
        gamma = sum(disc[c] for c in counter.values())
        c = counter.get(w, 0)
        return (max(c - disc.get(c, 0.0), 0.0) + gamma * lower) / total

    prob = level({(): uni}, (), 1.0 / vocab)
    for j in range(order):
        ctx = (pos, *hist[:j])
        prob = level(raw[j] if j == order - 1 else cont[j], ctx, prob)
    return prob


def _stream(seqs: list[tuple[list[int], list[int]]]) -> Stream:
    toks = [t for s, _ in seqs for t in s]
    poss = [p for _, ps in seqs for p in ps]
    offsets = np.concatenate([[0], np.cumsum([len(s) for s, _ in seqs])])
    return Stream.from_arrays(toks, poss, offsets)


seq_strategy = st.integers(1, 12).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(0, 3), min_size=n, max_size=n), st.lists(st.integers(0, 2), min_size=n, max_size=n)
    )
)


@settings(max_examples=40, deadline=None)
@given(train=st.lists(seq_strategy, min_size=1, max_size=4), query=seq_strategy, order=st.integers(1, 4))
def test_distribution_sums_to_one_and_matches_reference(
    train: list[tuple[list[int], list[int]]], query: tuple[list[int], list[int]], order: int
) -> None:
    vocab = 5  # token 4 never appears in training: it must still get probability
    model = KneserNey.fit(_stream(train), vocab, max_order=4)
    q = _stream([query])
    probs = model.distribution(q, order)
    assert probs.shape == (len(query[0]), vocab)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert (probs > 0).all()
    toks, poss = query
    for t in range(len(toks)):
        hist = tuple(toks[t - k] if t - k >= 0 else vocab for k in range(1, order))
        for w in range(vocab):
            ref = _reference_prob(train, vocab, order, hist, poss[t], w)
            assert probs[t, w] == pytest.approx(ref, rel=1e-9, abs=1e-12)


def test_all_orders_at_once_equal_single_order() -> None:
    rng = np.random.default_rng(1)
    train = Stream.from_arrays(rng.integers(0, 6, 400), rng.integers(0, 4, 400), [0, 150, 400])
    query = Stream.from_arrays(rng.integers(0, 6, 50), rng.integers(0, 4, 50))
    model = KneserNey.fit(train, 6, max_order=5)
    together = model.log_probs_all_orders(query)
    assert sorted(together) == [1, 2, 3, 4, 5]
    for n in range(1, 6):
        np.testing.assert_allclose(together[n], model.log_prob(query, n), rtol=1e-12)


def test_repeating_stream_is_nearly_certain() -> None:
    pattern = [2, 1, 1, 0, 3, 1, 0, 0]
    tokens = pattern * 40
    positions = [i % 8 for i in range(len(tokens))]
    stream = Stream.from_arrays(tokens, positions)
    model = KneserNey.fit(stream, 4, max_order=3)
    nll = {n: float(-model.log_prob(stream, n).mean()) for n in (1, 2, 3)}
    # position alone determines the token: even order 1 is almost certain, far below uniform (log 4)
    assert nll[1] < 0.05
    assert nll[3] < 0.05
    unpositioned = Stream.from_arrays(tokens, [0] * len(tokens))
    flat = KneserNey.fit(unpositioned, 4, max_order=4)
    # without position, order 1 is the unigram (~1.2 nats); three previous tokens pin the pattern down
    assert -flat.log_prob(unpositioned, 1).mean() > 1.0
    assert -flat.log_prob(unpositioned, 4).mean() < 0.1


def test_select_order_picks_the_needed_context() -> None:
    rng = np.random.default_rng(7)

    def second_order(n: int) -> list[int]:
        # x_t = (x_{t-1} + x_{t-2}) mod 5, restarted from random seeds: needs two previous tokens
        out: list[int] = []
        while len(out) < n:
            a, b = (int(v) for v in rng.integers(0, 5, 2))
            seq = [a, b]
            for _ in range(30):
                seq.append((seq[-1] + seq[-2]) % 5)
            out += seq
        return out[:n]

    train = Stream.from_arrays(second_order(3000), [0] * 3000)
    valid = Stream.from_arrays(second_order(600), [0] * 600)
    sel = select_order(train, valid, 5, max_order=6)
    assert sel.order >= 3
    assert sel.valid_nll[sel.order] == min(sel.valid_nll.values())
    assert sel.valid_nll[3] < 0.5 * sel.valid_nll[2]
    assert sorted(sel.valid_nll) == [1, 2, 3, 4, 5, 6]


def test_sequence_starts_are_not_continuations() -> None:
    # two sequences: the first always ends on 3, the second always starts with 0 after BOS
    seqs = [([1, 2, 3], [0, 1, 2]), ([0, 1, 2], [0, 1, 2])]
    model = KneserNey.fit(_stream(seqs), 4, max_order=2)
    # at the start of the second sequence the context is BOS, not 3
    lp = model.log_prob(_stream([([0], [0])]), 2)
    ref = _reference_prob(seqs, 4, 2, (4,), 0, 0)
    assert math.exp(float(lp[0])) == pytest.approx(ref)


def test_bad_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="equal length"):
        Stream.from_arrays([1, 2], [0])
    with pytest.raises(ValueError, match="offsets"):
        Stream.from_arrays([1, 2], [0, 1], [0, 3])
    with pytest.raises(ValueError, match="tokens must be in range"):
        KneserNey.fit(Stream.from_arrays([1, 5], [0, 1]), 5)
    model = KneserNey.fit(Stream.from_arrays([1, 2], [0, 1]), 5, max_order=2)
    with pytest.raises(ValueError, match="orders must be in range"):
        model.log_prob(Stream.from_arrays([1], [0]), 3)

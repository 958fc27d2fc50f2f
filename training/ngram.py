"""Interpolated modified Kneser-Ney n-gram baseline over one token stream, conditioned on position in bar.

The symbol at step ``t`` is the stream's token ``w_t``; the history of an order-``n`` model is
``(pos_t, w_{t-1}, ..., w_{t-n+1})``: position in bar is part of the context at every order. Levels, from
the most specific down:

* level ``j`` (``j = n-1 .. 0``): ``p(w | pos_t, w_{t-1}, ..., w_{t-j})``;
* the unigram ``p(w)``, interpolated with the uniform distribution over the vocabulary.

The top level uses raw counts, lower levels continuation counts (how many distinct extensions of a
history were followed by ``w``), each level with Chen & Goodman's three discounts ``D1, D2, D3+``. Every
level interpolates with the one below, so the result is a proper distribution over the vocabulary.

A stream may carry extra conditioning ``context`` (one column per feature, e.g. the chord sounding at the
step for a melody model): the features join the history right after position, so level ``j`` of an
order-``n`` model with ``k`` features reads ``(pos_t, f1_t, ..., fk_t, w_{t-1}, ...)`` and an order counts
levels (``k + 1`` of them before the first previous token). :func:`fit_select_score` fits, picks the order on
a valid stream and scores other streams in one pass that holds one level's counts at a time, so corpora
of millions of steps (all 12 transpositions of a training split) fit in memory.

Histories are hashed to 64-bit keys (splitmix64 chaining), counted with ``np.unique`` and looked up with
``np.searchsorted``: fitting all orders up to 10 on ~350k steps takes seconds and no Python loop runs
per step. Steps before the start of a sequence read as a BOS token (``vocab_size``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

U64 = npt.NDArray[np.uint64]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

_SEED = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_POS_SALT = np.uint64(0xD6E8FEB86659FD93)


def mix(h: U64, x: npt.ArrayLike) -> U64:
    """Chain a 64-bit hash ``h`` with integers ``x`` (vectorised splitmix64 finaliser)."""
    with np.errstate(over="ignore"):
        z = (h ^ np.asarray(x).astype(np.uint64)) * _M1 + _SEED
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Stream:
    """Flat token and position arrays of many sequences, with ``offsets`` as in prepared data.

    Attributes:
        tokens: token per step (int64).
        positions: position-in-bar token per step (int64).
        offsets: ``(n_sequences + 1,)`` start of each sequence.
        context: ``(steps, k)`` conditioning features, history levels ``1..k`` (``None``: no features).
    """

    tokens: I64
    positions: I64
    offsets: I64
    context: I64 | None = None

    @classmethod
    def from_arrays(
        cls,
        tokens: npt.ArrayLike,
        positions: npt.ArrayLike,
        offsets: npt.ArrayLike | None = None,
        context: npt.ArrayLike | None = None,
    ) -> Stream:
        """From array-likes: ``offsets=None`` means one sequence; ``context`` is ``(steps,)`` or ``(steps, k)``."""
        tok = np.asarray(tokens, dtype=np.int64)
        pos = np.asarray(positions, dtype=np.int64)
        if tok.shape != pos.shape or tok.ndim != 1:
            raise ValueError(f"tokens and positions must be 1-D of equal length, got {tok.shape} and {pos.shape}")
        off = np.array([0, tok.size], dtype=np.int64) if offsets is None else np.asarray(offsets, dtype=np.int64)
        if off[0] != 0 or off[-1] != tok.size or np.any(np.diff(off) < 0):
            raise ValueError(f"offsets must rise from 0 to {tok.size}, got {off[:3]}...{off[-3:]}")
        ctx = None
        if context is not None:
            ctx = np.asarray(context, dtype=np.int64)
            ctx = ctx[:, None] if ctx.ndim == 1 else ctx
            if ctx.ndim != 2 or ctx.shape[0] != tok.size:
                raise ValueError(f"context must be (steps,) or (steps, k) with {tok.size} steps, got {ctx.shape}")
        return cls(tok, pos, off, ctx)

    def __len__(self) -> int:
        return int(self.tokens.size)

    @property
    def features(self) -> int:
        """Number of context features (history levels between position and the first previous token)."""
        return 0 if self.context is None else int(self.context.shape[1])

    def iter_history_keys(self, levels: int, bos: int) -> Iterator[U64]:
        """Hash keys of the histories at levels ``0..levels-1``, one level at a time (level 0 = position)."""
        n = self.tokens.size
        step_in_seq = np.arange(n, dtype=np.int64) - np.repeat(self.offsets[:-1], np.diff(self.offsets))
        key = mix(np.full(n, _POS_SALT, dtype=np.uint64), self.positions)
        yield key
        k = self.features
        for level in range(1, levels):
            if level <= k:
                assert self.context is not None
                key = mix(key, self.context[:, level - 1])
            else:
                j = level - k  # steps back
                prev = np.empty(n, dtype=np.int64)
                if j < n:
                    prev[j:] = self.tokens[:-j]
                prev[step_in_seq < j] = bos
                key = mix(key, prev)
            yield key

    def history_keys(self, levels: int, bos: int) -> list[U64]:
        """Hash keys of the histories at levels ``0..levels-1`` for every step (level 0 = position only)."""
        return list(self.iter_history_keys(levels, bos))


@dataclass
class _Table:
    """Counts at one level, one kind (raw or continuation), sorted for ``searchsorted`` look-up."""

    pair_keys: U64  # sorted mix(history, token)
    pair_counts: F64
    ctx_keys: U64  # sorted history keys
    ctx_total: F64  # sum of counts in the history
    ctx_gamma_num: F64  # D1*N1 + D2*N2 + D3*N3+ of the history
    discounts: tuple[float, float, float]

    @classmethod
    def build(cls, pair_keys: U64, ctx_keys: U64, counts: F64) -> _Table:
        """From unique (pair, history, count) triples."""
        order = np.argsort(pair_keys)
        pair_keys, ctx_keys, counts = pair_keys[order], ctx_keys[order], counts[order]
        d = _discounts(counts)
        disc = np.where(counts >= 3, d[2], np.where(counts == 2, d[1], d[0]))
        uctx, inv = np.unique(ctx_keys, return_inverse=True)
        total = np.bincount(inv, weights=counts, minlength=uctx.size).astype(np.float64)
        gamma = np.bincount(inv, weights=disc, minlength=uctx.size).astype(np.float64)
        return cls(pair_keys, counts, uctx, total, gamma, d)

    def lookup(self, ctx: U64, pair: U64) -> tuple[F64, F64, F64]:
        """(count of the pair, total of the history, gamma numerator of the history); zeros if unseen."""
        return (
            _find(self.pair_keys, self.pair_counts, pair),
            _find(self.ctx_keys, self.ctx_total, ctx),
            _find(self.ctx_keys, self.ctx_gamma_num, ctx),
        )

    def discount(self, counts: F64) -> F64:
        """The discount for each count (0 for unseen)."""
        d1, d2, d3 = self.discounts
        return np.where(counts >= 3, d3, np.where(counts == 2, d2, np.where(counts == 1, d1, 0.0)))


def _find(keys: U64, values: F64, query: U64) -> F64:
    if keys.size == 0:
        return np.zeros(query.shape)
    idx = np.minimum(np.searchsorted(keys, query), keys.size - 1)
    return np.where(keys[idx] == query, values[idx], 0.0)


def _discounts(counts: F64) -> tuple[float, float, float]:
    """Modified Kneser-Ney discounts (Chen & Goodman 1998) from the count-of-counts."""
    n1, n2, n3, n4 = (float(np.count_nonzero(counts == k)) for k in (1, 2, 3, 4))
    if n1 == 0 or n2 == 0:
        return (0.5, 0.5, 0.5)  # too little data for the estimate; any D in (0, 1] keeps mass for backoff
    y = n1 / (n1 + 2 * n2)
    d1 = 1 - 2 * y * n2 / n1
    d2 = 2 - 3 * y * n3 / n2 if n2 else 1.0
    d3 = 3 - 4 * y * n4 / n3 if n3 else d2
    # Small or odd corpora can push the estimates out of range; keep 0 < D <= count.
    return (float(np.clip(d1, 0.05, 1.0)), float(np.clip(d2, 0.05, 2.0)), float(np.clip(d3, 0.05, 3.0)))


@dataclass
class KneserNey:
    """An interpolated modified Kneser-Ney model usable at every order ``1..max_order``.

    Order ``n`` conditions on position and the previous ``n-1`` tokens. Fit once with :meth:`fit`; score
    any order with :meth:`log_prob` or :meth:`nll`.

    Attributes:
        vocab_size: number of symbols; the distribution covers ``0..vocab_size-1``.
        max_order: highest order fitted.
    """

    vocab_size: int
    max_order: int = 10
    raw: list[_Table] = field(default_factory=list)  # raw[j]: level j as the top level
    cont: list[_Table] = field(default_factory=list)  # cont[j]: level j below a higher level
    unigram: _Table | None = None  # continuation counts of the tokens over positions

    @classmethod
    def fit(cls, train: Stream, vocab_size: int, max_order: int = 10) -> KneserNey:
        """Count a training stream at every level up to ``max_order``.

        Args:
            train: training sequences.
            vocab_size: vocabulary size; tokens must lie in ``0..vocab_size-1``.
            max_order: highest order to support (>= 1).
        """
        if max_order < 1:
            raise ValueError(f"max_order must be >= 1, got {max_order}")
        if len(train) and (train.tokens.min() < 0 or train.tokens.max() >= vocab_size):
            raise ValueError(f"tokens must be in range 0..{vocab_size - 1}")
        model = cls(vocab_size, max_order)
        hist = train.history_keys(max_order, bos=vocab_size)
        w = train.tokens
        uniq: list[tuple[U64, I64, F64]] = []  # per level: unique pair keys, a step index of each, counts
        for j in range(max_order):
            pairs = mix(hist[j], w)
            upairs, first, counts = np.unique(pairs, return_index=True, return_counts=True)
            uniq.append((upairs, first, counts.astype(np.float64)))
            model.raw.append(_Table.build(upairs, hist[j][first], counts.astype(np.float64)))
        # continuation counts of level j: distinct level-(j+1) histories seen before each (h_j, w)
        for j in range(max_order - 1):
            _, first_hi, _ = uniq[j + 1]
            lower_pairs = mix(hist[j][first_hi], w[first_hi])
            upairs, first, counts = np.unique(lower_pairs, return_index=True, return_counts=True)
            model.cont.append(_Table.build(upairs, hist[j][first_hi][first], counts.astype(np.float64)))
        # unigram continuation: distinct positions each token was seen at
        _, first0, _ = uniq[0]
        tok0 = w[first0]
        toks, counts = np.unique(tok0, return_counts=True)
        zero = np.zeros(toks.size, dtype=np.uint64)
        model.unigram = _Table.build(mix(zero, toks), zero, counts.astype(np.float64))
        return model

    def _levels_log_probs(self, stream: Stream, targets: I64 | None, orders: Sequence[int]) -> dict[int, F64]:
        """Log-probabilities of ``targets`` (default: the stream's tokens) under each order in ``orders``."""
        if max(orders) > self.max_order or min(orders) < 1:
            raise ValueError(f"orders must be in range 1..{self.max_order}, got {list(orders)}")
        assert self.unigram is not None, "fit the model first"
        w = stream.tokens if targets is None else targets
        hist = stream.history_keys(max(orders), bos=self.vocab_size)
        zero = np.zeros(w.shape, dtype=np.uint64)
        p = self._interpolate(self.unigram, zero, mix(zero, w), np.full(w.shape, 1.0 / self.vocab_size))
        out: dict[int, F64] = {}
        for j in range(max(orders)):
            pair = mix(hist[j], w)
            if j + 1 in orders:
                out[j + 1] = np.log(self._interpolate(self.raw[j], hist[j], pair, p))
            if j < len(self.cont):
                p = self._interpolate(self.cont[j], hist[j], pair, p)
        return out

    @staticmethod
    def _interpolate(table: _Table, ctx: U64, pair: U64, lower: F64) -> F64:
        c, total, gamma_num = table.lookup(ctx, pair)
        seen = total > 0
        safe = np.where(seen, total, 1.0)
        mixed = (np.maximum(c - table.discount(c), 0.0) + gamma_num * lower) / safe
        return np.where(seen, mixed, lower)

    def log_prob(self, stream: Stream, order: int) -> F64:
        """Natural-log probability of each step's token under the order-``order`` model."""
        return self._levels_log_probs(stream, None, [order])[order]

    def log_probs_all_orders(self, stream: Stream, orders: Sequence[int] | None = None) -> dict[int, F64]:
        """Per-step log-probabilities under several orders at once (shares the lower levels)."""
        return self._levels_log_probs(stream, None, list(orders or range(1, self.max_order + 1)))

    def distribution(self, stream: Stream, order: int) -> F64:
        """Full next-token distribution ``(steps, vocab_size)`` at every step (for tests and small data)."""
        n = len(stream)
        probs = np.empty((n, self.vocab_size))
        for v in range(self.vocab_size):
            probs[:, v] = np.exp(self._levels_log_probs(stream, np.full(n, v, dtype=np.int64), [order])[order])
        return probs


@dataclass(frozen=True)
class OrderSelection:
    """Result of :func:`select_order`.

    Attributes:
        model: the fitted model (all orders).
        order: the order with the lowest validation NLL.
        valid_nll: validation NLL (nats/step) per order.
    """

    model: KneserNey
    order: int
    valid_nll: dict[int, float]


def select_order(train: Stream, valid: Stream, vocab_size: int, max_order: int = 10) -> OrderSelection:
    """Fit on ``train`` and pick the order (1..max_order) with the lowest mean NLL per step on ``valid``."""
    model = KneserNey.fit(train, vocab_size, max_order)
    lps = model.log_probs_all_orders(valid)
    valid_nll = {n: float(-lp.mean()) for n, lp in lps.items()}
    order = min(valid_nll, key=lambda n: valid_nll[n])
    log.info("n-gram order %d selected (valid NLL %s)", order, {n: round(v, 4) for n, v in valid_nll.items()})
    return OrderSelection(model, order, valid_nll)


@dataclass(frozen=True)
class Scored:
    """Result of :func:`fit_select_score`.

    Attributes:
        order: the order (number of history levels) with the lowest validation NLL.
        valid_nll: validation NLL (nats/step) per order.
        log_prob: per-step log-probability of each scored stream under the chosen order.
    """

    order: int
    valid_nll: dict[int, float]
    log_prob: dict[str, F64]


def fit_select_score(
    train: Stream, valid: Stream, scored: Mapping[str, Stream], vocab_size: int, max_order: int = 10
) -> Scored:
    """Fit on ``train``, pick the order on ``valid`` as :func:`select_order` does, and score other streams.

    Gives the same probabilities as :meth:`KneserNey.fit` followed by :meth:`KneserNey.log_prob`, but builds
    the count tables one level at a time and drops each once the scored streams have passed through it, so
    memory holds one level of counts (plus every order's log-probabilities of the scored streams), not all.

    Args:
        train: training sequences (tokens in ``0..vocab_size-1``).
        valid: validation sequences; the order with the lowest mean NLL here is chosen.
        scored: further streams to score at the chosen order, by name.
        vocab_size: vocabulary size.
        max_order: highest order tried (>= 1).
    """
    if max_order < 1:
        raise ValueError(f"max_order must be >= 1, got {max_order}")
    if len(train) and (train.tokens.min() < 0 or train.tokens.max() >= vocab_size):
        raise ValueError(f"tokens must be in range 0..{vocab_size - 1}")
    streams = {"": valid, **scored}
    if any(s.features != train.features for s in streams.values()):
        raise ValueError("scored streams must carry the same context features as the training stream")
    w = train.tokens
    levels = train.iter_history_keys(max_order, bos=vocab_size)
    hist = next(levels)
    upairs, first, counts = np.unique(mix(hist, w), return_index=True, return_counts=True)
    tok0 = w[first]
    toks, tok_counts = np.unique(tok0, return_counts=True)
    zero = np.zeros(toks.size, dtype=np.uint64)
    unigram = _Table.build(mix(zero, toks), zero, tok_counts.astype(np.float64))
    s_hist = {k: s.history_keys(max_order, bos=vocab_size) for k, s in streams.items()}
    lower: dict[str, F64] = {}
    for k, s in streams.items():
        z = np.zeros(len(s), dtype=np.uint64)
        lower[k] = KneserNey._interpolate(unigram, z, mix(z, s.tokens), np.full(len(s), 1.0 / vocab_size))
    log_probs: dict[str, dict[int, F64]] = {k: {} for k in streams}
    for j in range(max_order):
        raw = _Table.build(upairs, hist[first], counts.astype(np.float64))
        s_pair = {k: mix(s_hist[k][j], s.tokens) for k, s in streams.items()}
        for k in streams:
            log_probs[k][j + 1] = np.log(KneserNey._interpolate(raw, s_hist[k][j], s_pair[k], lower[k]))
        del raw
        if j + 1 == max_order:
            break
        hist_hi = next(levels)
        upairs, first_hi, counts = np.unique(mix(hist_hi, w), return_index=True, return_counts=True)
        # continuation counts of level j: distinct level-(j+1) histories seen before each (h_j, w)
        lower_pairs = mix(hist[first_hi], w[first_hi])
        cpairs, cfirst, ccounts = np.unique(lower_pairs, return_index=True, return_counts=True)
        cont = _Table.build(cpairs, hist[first_hi][cfirst], ccounts.astype(np.float64))
        for k in streams:
            lower[k] = KneserNey._interpolate(cont, s_hist[k][j], s_pair[k], lower[k])
        del cont, lower_pairs, cpairs, cfirst, ccounts
        hist, first = hist_hi, first_hi
    valid_nll = {n: float(-lp.mean()) for n, lp in log_probs[""].items()}
    order = min(valid_nll, key=lambda n: valid_nll[n])
    log.info("n-gram order %d selected (valid NLL %.4f)", order, valid_nll[order])
    return Scored(order, valid_nll, {k: log_probs[k][order] for k in scored})

"""Near-duplicate tunes across splits: 4-bar melody windows shared in any key.

Byte-identical files are dropped by ``prepare``; this finds the rest: the same tune transcribed twice, in
another key, with another ending or a changed bar. A window is ``bars`` whole bars of melody tokens from
one bar line (position 0) to another (the sequence end closes the last bar; a pickup before the first bar
line belongs to no window). It is written transposition-invariant: every NOTE_ON becomes its interval to the
window's first onset, HOLD and REST stay as they are, so two windows match when they have the same rhythm
and the same intervals in any key. A query tune that shares a window with the reference corpus is a
near-duplicate; :class:`Overlap` also tells how many windows and steps are shared.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from rtgen.contract import MEL_NOTE_OFFSET

I64 = npt.NDArray[np.int64]

WINDOW_BARS = 4
"""Bars per window: a phrase is idiom only rarely at this length (one bar often is)."""
MIN_ONSETS = 2
"""Windows with fewer onsets (a note held for 4 bars, silence) say nothing about the tune and are skipped."""


def _arr(x: npt.ArrayLike) -> I64:
    return np.asarray(x, dtype=np.int64)


def bar_windows(position: npt.ArrayLike, bars: int = WINDOW_BARS) -> list[tuple[int, int]]:
    """``(start, end)`` of every run of ``bars`` whole bars in one sequence, sliding by one bar."""
    p = _arr(position)
    edges = [*np.flatnonzero(p == 0).tolist(), int(p.size)]
    if edges[0] == p.size:
        return []
    if edges[-2] == p.size:
        edges.pop()
    return [(edges[k], edges[k + bars]) for k in range(len(edges) - bars)]


def window_key(melody: npt.ArrayLike) -> bytes | None:
    """Transposition-invariant key of one window of melody tokens; ``None`` with fewer than MIN_ONSETS onsets."""
    m = _arr(melody)
    onset = m >= MEL_NOTE_OFFSET
    if int(onset.sum()) < MIN_ONSETS:
        return None
    first = m[np.argmax(onset)]
    # intervals to the first onset, shifted clear of REST/HOLD (0, 1) whatever their sign
    code = np.where(onset, m - first + 1000, m).astype(np.int32)
    return hashlib.blake2b(code.tobytes(), digest_size=16).digest()


def sequence_windows(
    melody: npt.ArrayLike, position: npt.ArrayLike, bars: int = WINDOW_BARS
) -> list[tuple[int, int, bytes]]:
    """``(start, end, key)`` of the keyed windows of one sequence (windows with too few onsets left out)."""
    m = _arr(melody)
    out = []
    for a, b in bar_windows(position, bars):
        key = window_key(m[a:b])
        if key is not None:
            out.append((a, b, key))
    return out


@dataclass(frozen=True)
class Overlap:
    """How a query corpus overlaps the reference, per query sequence.

    Attributes:
        windows: keyed windows of each query sequence.
        shared: of those, how many occur in the reference (in any key).
        covered: per step of the query (flat), True where a shared window covers it.
        offsets: the query's sequence starts.
        partners: per query sequence, the reference sequences it shares windows with, most shared first.
    """

    windows: I64
    shared: I64
    covered: npt.NDArray[np.bool_]
    offsets: I64
    partners: tuple[tuple[int, ...], ...]

    def flagged(self, min_share: float = 0.0) -> npt.NDArray[np.bool_]:
        """Sequences with at least one shared window and more than ``min_share`` of their windows shared."""
        share = self.shared / np.maximum(self.windows, 1)
        return (self.shared > 0) & (share > min_share)

    def step_mask(self, sequences: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
        """Flat per-step mask of the steps of the given sequences."""
        return np.repeat(np.asarray(sequences, dtype=bool), np.diff(self.offsets))


class WindowIndex:
    """The keyed ``bars``-bar windows of a reference corpus (e.g. the train split)."""

    def __init__(
        self, melody: npt.ArrayLike, position: npt.ArrayLike, offsets: npt.ArrayLike, bars: int = WINDOW_BARS
    ) -> None:
        """Key every window of every reference sequence.

        Args:
            melody: flat melody tokens.
            position: flat position-in-bar tokens.
            offsets: ``(n_sequences + 1,)`` sequence starts, as in prepared data.
            bars: bars per window.
        """
        self.bars = bars
        m, p, off = _arr(melody), _arr(position), _arr(offsets)
        self.keys: dict[bytes, set[int]] = {}
        for i, (a, b) in enumerate(zip(off[:-1].tolist(), off[1:].tolist(), strict=True)):
            for _, _, key in sequence_windows(m[a:b], p[a:b], bars):
                self.keys.setdefault(key, set()).add(i)

    def __len__(self) -> int:
        return len(self.keys)

    def overlap(self, melody: npt.ArrayLike, position: npt.ArrayLike, offsets: npt.ArrayLike) -> Overlap:
        """Which windows of each query sequence occur in the reference."""
        m, p, off = _arr(melody), _arr(position), _arr(offsets)
        n_seq = off.size - 1
        windows, shared = np.zeros(n_seq, dtype=np.int64), np.zeros(n_seq, dtype=np.int64)
        covered = np.zeros(m.size, dtype=bool)
        partners: list[tuple[int, ...]] = []
        for i, (a, b) in enumerate(zip(off[:-1].tolist(), off[1:].tolist(), strict=True)):
            found: Counter[int] = Counter()
            for s, e, key in sequence_windows(m[a:b], p[a:b], self.bars):
                windows[i] += 1
                if key in self.keys:
                    shared[i] += 1
                    covered[a + s : a + e] = True
                    found.update(self.keys[key])
            partners.append(tuple(j for j, _ in found.most_common()))
        return Overlap(windows, shared, covered, off, tuple(partners))

"""Musical statistics over token arrays: scale consistency, chord tones, repetition, copying.

Pure functions over numpy arrays of contract tokens, so that the same code describes the test set and
the model's renders, and tests can check them on hand-made sequences. Each returns a :class:`Ratio`
(hits and total) so figures over many pieces are pooled by summing, not by averaging ratios.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from rtgen.contract import (
    CHORD_OFFSET,
    MEL_NOTE_OFFSET,
    PITCH_MIN,
    SCALES,
    STEPS_PER_BEAT,
    Chord,
    Key,
    transpose_melody,
)
from training.ngram import mix

COPY_WINDOW = 16
"""Steps per window for the copy rate (one 4/4 bar of sixteenths)."""


@dataclass(frozen=True)
class Ratio:
    """A count of hits over a total; add two to pool them.

    Attributes:
        hits: how many items satisfied the statistic.
        total: how many items were counted.
    """

    hits: int = 0
    total: int = 0

    @property
    def value(self) -> float:
        """``hits / total``, NaN when nothing was counted."""
        return self.hits / self.total if self.total else float("nan")

    def __add__(self, other: Ratio) -> Ratio:
        return Ratio(self.hits + other.hits, self.total + other.total)


def pooled(ratios: Iterable[Ratio]) -> Ratio:
    """Sum of ratios (hits and totals added)."""
    out = Ratio()
    for r in ratios:
        out = out + r
    return out


def _arr(x: npt.ArrayLike) -> npt.NDArray[np.int64]:
    return np.asarray(x, dtype=np.int64)


def onset_pitch_classes(melody: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """Pitch class of every NOTE_ON token, in order."""
    m = _arr(melody)
    return (m[m >= MEL_NOTE_OFFSET] - MEL_NOTE_OFFSET + PITCH_MIN) % 12


def find_key(melody: npt.ArrayLike) -> Key:
    """Best-fitting major or minor key: the scale holding most onsets.

    Ties (a major key and its relative minor hold the same notes) go to the key whose tonic is the most
    frequent onset pitch class, then to major, then to the lowest tonic.
    """
    hist = np.bincount(onset_pitch_classes(melody), minlength=12)
    best: tuple[tuple[int, int, int, int], Key] | None = None
    for s_index, scale in enumerate(("major", "minor")):
        for tonic in range(12):
            key = Key(tonic, scale)
            inside = int(sum(hist[pc] for pc in key.pitch_classes))
            rank = (inside, int(hist[tonic]), -s_index, -tonic)
            if best is None or rank > best[0]:
                best = (rank, key)
    assert best is not None
    return best[1]


def in_scale(melody: npt.ArrayLike) -> Ratio:
    """Onsets in the best-fitting major/minor scale of the piece, over all onsets."""
    pcs = onset_pitch_classes(melody)
    if pcs.size == 0:
        return Ratio()
    hist = np.bincount(pcs, minlength=12)
    best = max(int(sum(hist[(t + i) % 12] for i in SCALES["major"])) for t in range(12))
    return Ratio(best, int(pcs.size))  # a minor scale holds the same notes as its relative major


def strong_beats(positions: npt.ArrayLike) -> npt.NDArray[np.bool_]:
    """Steps on a quarter-note beat of the bar.

    Prepared data stores position in bar but not the time signature, so the counted beats are taken to
    be the quarter notes for data and renders alike (exact for 2/4, 3/4, 4/4; in 6/8 it also counts the
    middle eighth of each half bar).
    """
    return _arr(positions) % STEPS_PER_BEAT == 0


def chord_tone_strong(melody: npt.ArrayLike, chord_now: npt.ArrayLike, strong: npt.ArrayLike) -> Ratio:
    """Onsets on strong steps whose pitch class is a tone of the sounding chord.

    Args:
        melody: melody tokens.
        chord_now: resolved chord token sounding at each step (N.C. or CHORD).
        strong: True on counted beats (see :func:`strong_beats`).

    Onsets over N.C. are not counted (no chord sounds).
    """
    m, c, s = _arr(melody), _arr(chord_now), np.asarray(strong, dtype=bool)
    sel = np.flatnonzero((m >= MEL_NOTE_OFFSET) & s & (c >= CHORD_OFFSET))
    hits = sum(
        1 for i in sel if (int(m[i]) - MEL_NOTE_OFFSET + PITCH_MIN) % 12 in Chord.from_token(int(c[i])).pitch_classes
    )
    return Ratio(hits, int(sel.size))


def self_repetition(melody: npt.ArrayLike, positions: npt.ArrayLike, window_bars: int = 2) -> Ratio:
    """Non-overlapping ``window_bars``-bar windows whose melody tokens equal the previous window's.

    Windows start at the first bar line (position 0; a pickup before it is skipped) and run from bar
    line to bar line; the sequence end closes the last bar. Window ``k`` is compared with window ``k-1``
    token by token (equal length and equal tokens).
    """
    m, p = _arr(melody), _arr(positions)
    bar_starts = np.flatnonzero(p == 0).tolist()
    if not bar_starts:
        return Ratio()
    edges = [*bar_starts[::window_bars], m.size]
    windows = [m[a:b] for a, b in itertools.pairwise(edges)]
    hits = sum(1 for prev, cur in itertools.pairwise(windows) if np.array_equal(prev, cur))
    return Ratio(hits, max(0, len(windows) - 1))


def window_hashes(
    tokens: npt.ArrayLike, offsets: npt.ArrayLike | None = None, window: int = COPY_WINDOW
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.int64]]:
    """64-bit hashes of every ``window``-step window that lies inside one sequence.

    Returns:
        (hashes, starts): one hash per window and the flat index where it starts.
    """
    t = _arr(tokens)
    off = np.array([0, t.size]) if offsets is None else _arr(offsets)
    n_win = t.size - window + 1
    if n_win <= 0:
        return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64)
    h = np.zeros(n_win, dtype=np.uint64)
    for k in range(window):
        h = mix(h, t[k : k + n_win])
    starts = np.arange(n_win, dtype=np.int64)
    seq_end = off[np.searchsorted(off, starts, side="right")]
    ok = starts + window <= seq_end
    return h[ok], starts[ok]


class CopyIndex:
    """All ``window``-step melody windows of a corpus, in the original key and all 12 transpositions."""

    def __init__(
        self,
        melody: npt.ArrayLike,
        offsets: npt.ArrayLike | None = None,
        window: int = COPY_WINDOW,
        transpose: bool = True,
    ) -> None:
        """Hash the corpus windows.

        Args:
            melody: flat melody tokens of the corpus (e.g. the train split).
            offsets: sequence starts as in prepared data (``None``: one sequence).
            window: window length in steps.
            transpose: also index the 11 other transpositions (the model plays in any key).
        """
        self.window = window
        shifts = range(-6, 6) if transpose else (0,)
        parts = [window_hashes(transpose_melody(melody, k), offsets, window)[0] for k in shifts]
        self.keys = np.unique(np.concatenate(parts))

    def __len__(self) -> int:
        return int(self.keys.size)

    def contains(self, hashes: npt.NDArray[np.uint64]) -> npt.NDArray[np.bool_]:
        """Which hashes are in the index."""
        if self.keys.size == 0:
            return np.zeros(hashes.shape, dtype=bool)
        idx = np.minimum(np.searchsorted(self.keys, hashes), self.keys.size - 1)
        return self.keys[idx] == hashes  # type: ignore[no-any-return]

    def copy_rate(self, melody: npt.ArrayLike) -> Ratio:
        """Windows of ``melody`` (sliding by one step, with at least one onset) found verbatim in the index."""
        m = _arr(melody)
        hashes, starts = window_hashes(m, None, self.window)
        onsets = np.concatenate([[0], np.cumsum(m >= MEL_NOTE_OFFSET)])
        has_onset = onsets[starts + self.window] - onsets[starts] > 0
        return Ratio(int(self.contains(hashes[has_onset]).sum()), int(has_onset.sum()))

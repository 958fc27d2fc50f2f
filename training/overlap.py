"""Do renders sound like the data? Per-window features and the overlap of their distributions.

In the manner of Yang & Lerch, "On the evaluation of generative models in music" (2020): each piece (a test
tune, a train tune, a render) is cut into non-overlapping 8-bar windows, bar line to bar line (a pickup before
the first bar line and a last incomplete window are skipped); every window gives one value per feature; the
values of two sets are smoothed into Gaussian kernel density estimates, and their *overlap area* is the
integral of the smaller of the two densities (1: the same distribution, 0: disjoint). The train split's
overlap with the test split is the ceiling a model of that data can be held to.

The pitch-class histogram is turned into one value per window: the total-variation distance (half the L1
distance, 0..1) between the window's 12-bin histogram of onsets, rotated so that the tonic of its piece's
best-fitting key (:func:`training.stats.find_key`) is bin 0, and the test split's pooled histogram in the same
frame. So it compares tonal usage in any key, and it goes through the same KDE overlap as the other features.

Pure functions over numpy arrays of contract tokens, as :mod:`training.stats`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from rtgen.contract import CHORD_OFFSET, MEL_HOLD, MEL_NOTE_OFFSET, PITCH_MIN
from training.stats import find_key

WINDOW_BARS = 8
"""Bars per window."""
PHRASE_BARS = 4
"""Bars per phrase for the phrase self-similarity (the second half of a window against its first)."""
GRID = 2048
"""Points of the grid the densities are integrated on."""


@dataclass(frozen=True)
class Feature:
    """One per-window feature.

    Attributes:
        name: key in ``metrics.overlap.features``.
        label: what it is, for the report and the figure.
    """

    name: str
    label: str


FEATURES = (
    Feature("pitch_range", "melody pitch range (semitones) per 8 bars"),
    Feature("distinct_pitches", "distinct melody pitches per 8 bars"),
    Feature("notes_per_bar", "melody notes per bar"),
    Feature("distinct_chords", "distinct chords per 8 bars"),
    Feature("mean_interval", "mean melodic interval (semitones)"),
    Feature("pitch_class_distance", "pitch-class histogram: distance to the test set's (0..1)"),
    Feature("inter_onset", "mean inter-onset interval (sixteenths)"),
    Feature("note_length", "mean note length (sixteenths)"),
    Feature("phrase_similarity", "4-bar phrase self-similarity (share of steps equal 4 bars back)"),
)
"""The features, in report order."""
NAMES = tuple(f.name for f in FEATURES)


@dataclass(frozen=True)
class Piece:
    """Tokens of one piece: melody, resolved chord (never HOLD) and position in bar, step by step."""

    melody: npt.NDArray[np.int64]
    chord_now: npt.NDArray[np.int64]
    position: npt.NDArray[np.int64]


def windows(position: npt.ArrayLike, bars: int = WINDOW_BARS) -> list[tuple[int, int, list[int]]]:
    """Non-overlapping ``bars``-bar windows from the first bar line: ``(start, end, bar starts)`` each.

    The sequence end closes the last bar; a last window of fewer than ``bars`` bars is skipped.
    """
    p = np.asarray(position, dtype=np.int64)
    starts = np.flatnonzero(p == 0).tolist()
    edges = [*starts, p.size]
    return [(edges[k], edges[k + bars], starts[k : k + bars]) for k in range(0, len(starts) - bars + 1, bars)]


def _onsets(melody: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Steps and MIDI pitches of the NOTE_ON tokens."""
    at = np.flatnonzero(melody >= MEL_NOTE_OFFSET)
    return at, melody[at] - MEL_NOTE_OFFSET + PITCH_MIN


def note_lengths(melody: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """Steps each note sounds: its NOTE_ON and the HOLDs after it (the sequence end closes the last)."""
    m = np.asarray(melody, dtype=np.int64)
    out = []
    for i in np.flatnonzero(m >= MEL_NOTE_OFFSET).tolist():
        j = i + 1
        while j < m.size and m[j] == MEL_HOLD:
            j += 1
        out.append(j - i)
    return np.asarray(out, dtype=np.int64)


def pitch_class_histogram(melody: npt.ArrayLike, tonic: int = 0) -> npt.NDArray[np.float64]:
    """Onset counts per pitch class relative to ``tonic`` (bin 0 is the tonic), not normalised."""
    _, pitches = _onsets(np.asarray(melody, dtype=np.int64))
    return np.bincount((pitches - tonic) % 12, minlength=12).astype(np.float64)


def tonic(melody: npt.ArrayLike) -> int:
    """Tonic pitch class of the piece's best-fitting major or minor key."""
    return find_key(melody).tonic


def _nan_mean(x: npt.NDArray[np.float64] | npt.NDArray[np.int64]) -> float:
    return float(np.mean(x)) if x.size else float("nan")


def window_features(piece: Piece, reference_pch: npt.ArrayLike | None = None) -> dict[str, npt.NDArray[np.float64]]:
    """Every feature of every 8-bar window of a piece (NaN where a window has too few notes to say).

    Args:
        piece: the tokens.
        reference_pch: 12-bin pitch-class distribution (tonic first) the histogram distance is taken to; ``None``
            gives NaN for that feature (see :func:`pooled_pitch_classes`).
    """
    m, c = piece.melody, piece.chord_now
    key_tonic = tonic(m)
    ref = None if reference_pch is None else np.asarray(reference_pch, dtype=np.float64)
    if ref is not None and ref.sum() > 0:
        ref = ref / ref.sum()
    out: dict[str, list[float]] = {k: [] for k in NAMES}
    for a, b, bar_starts in windows(piece.position):
        mel = m[a:b]
        at, pitches = _onsets(mel)
        n = pitches.size
        out["pitch_range"].append(float(pitches.max() - pitches.min()) if n else float("nan"))
        out["distinct_pitches"].append(float(np.unique(pitches).size))
        out["notes_per_bar"].append(n / len(bar_starts))
        chords = c[a:b]
        out["distinct_chords"].append(float(np.unique(chords[chords >= CHORD_OFFSET]).size))
        out["mean_interval"].append(_nan_mean(np.abs(np.diff(pitches))) if n > 1 else float("nan"))
        hist = pitch_class_histogram(mel, key_tonic)
        dist = float("nan")
        if n and ref is not None:
            dist = 0.5 * float(np.abs(hist / n - ref).sum())
        out["pitch_class_distance"].append(dist)
        out["inter_onset"].append(_nan_mean(np.diff(at)) if n > 1 else float("nan"))
        out["note_length"].append(_nan_mean(note_lengths(mel)) if n else float("nan"))
        half = bar_starts[WINDOW_BARS - PHRASE_BARS] - a if len(bar_starts) > PHRASE_BARS else 0
        first, second = mel[:half], mel[half:]
        same = min(first.size, second.size)
        sim = float(np.mean(first[:same] == second[:same])) if same and first.size == second.size else float("nan")
        out["phrase_similarity"].append(sim)
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}


def pooled_pitch_classes(pieces: Iterable[Piece]) -> npt.NDArray[np.float64]:
    """The pieces' onsets pooled into one 12-bin distribution, each rotated to its piece's tonic."""
    total = np.zeros(12)
    for p in pieces:
        total += pitch_class_histogram(p.melody, tonic(p.melody))
    return total / total.sum() if total.sum() else total


def set_features(pieces: Iterable[Piece], reference_pch: npt.ArrayLike | None) -> dict[str, npt.NDArray[np.float64]]:
    """:func:`window_features` of many pieces, concatenated per feature."""
    parts = [window_features(p, reference_pch) for p in pieces]
    return {k: np.concatenate([x[k] for x in parts]) if parts else np.zeros(0) for k in NAMES}


def _bandwidth(x: npt.NDArray[np.float64], floor: float) -> float:
    """Scott's rule, at least ``floor`` (a set of equal values still gets a bump)."""
    return max(float(np.std(x)) * x.size ** (-1 / 5), floor)


def densities(
    a: npt.ArrayLike, b: npt.ArrayLike, grid: int = GRID
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Gaussian KDEs of two samples on one common grid, each normalised to integrate to 1 there.

    NaNs are dropped. The bandwidth is Scott's rule per sample, at least 1 % of the pooled range (or 0.5 when
    every value is equal), so discrete features (counts) give smooth densities.

    Returns:
        (grid points, density of ``a``, density of ``b``); the densities are zero when a sample is empty.
    """
    xa, xb = (np.asarray(v, dtype=np.float64) for v in (a, b))
    xa, xb = xa[np.isfinite(xa)], xb[np.isfinite(xb)]
    both = np.concatenate([xa, xb])
    if both.size == 0:
        return np.zeros(grid), np.zeros(grid), np.zeros(grid)
    spread = float(both.max() - both.min())
    floor = 0.01 * spread if spread > 0 else 0.5
    bws = [_bandwidth(x, floor) for x in (xa, xb) if x.size]
    pad = 4 * max(bws)
    xs = np.linspace(both.min() - pad, both.max() + pad, grid)
    dx = xs[1] - xs[0]

    def kde(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        if x.size == 0:
            return np.zeros(grid)
        bw = _bandwidth(x, floor)
        d = np.zeros(grid)
        for chunk in np.array_split(x, max(1, x.size // 512)):
            d += np.exp(-0.5 * ((xs[:, None] - chunk[None, :]) / bw) ** 2).sum(axis=1)
        return d / (d.sum() * dx)  # type: ignore[no-any-return]

    return xs, kde(xa), kde(xb)


def overlap_area(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
    """Overlapping area of the KDEs of two samples: the integral of their minimum (0..1; NaN if one is empty)."""
    xs, da, db = densities(a, b)
    if not da.any() or not db.any():
        return float("nan")
    return float(min(1.0, np.minimum(da, db).sum() * (xs[1] - xs[0])))


def summary(x: npt.ArrayLike) -> dict[str, float | int]:
    """Median, 10th and 90th percentile and count of the finite values."""
    v = np.asarray(x, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"median": float("nan"), "p10": float("nan"), "p90": float("nan"), "windows": 0}
    p10, med, p90 = np.percentile(v, [10, 50, 90])
    return {"median": float(med), "p10": float(p10), "p90": float(p90), "windows": int(v.size)}


OVERLAP_OF_CEILING = 0.9
"""Target: a feature's overlap with the test set at least this share of the train split's."""
MEDIAN_TOLERANCE = 0.10
"""Target: a feature's median within this share of the test split's."""


def compare_sets(
    test: dict[str, npt.NDArray[np.float64]], others: dict[str, dict[str, npt.NDArray[np.float64]]]
) -> dict[str, dict[str, object]]:
    """Per feature: the test set's summary, and each other set's summary, overlap with test and targets.

    Args:
        test: per-feature window values of the test split.
        others: per-feature window values of each other set by name; ``"train"`` is the ceiling.

    Returns:
        ``{feature: {"test": summary, name: summary | {"overlap", "of_ceiling", "median_off", "met"}}}``;
        ``met`` (renders only) is whether the overlap is at least :data:`OVERLAP_OF_CEILING` of train's and
        the median within :data:`MEDIAN_TOLERANCE` of the test split's.
    """
    out: dict[str, dict[str, object]] = {}
    for name in NAMES:
        row: dict[str, object] = {"test": summary(test[name])}
        med = row["test"]["median"]  # type: ignore[index]
        ceiling = overlap_area(others["train"][name], test[name]) if "train" in others else float("nan")
        for set_name, values in others.items():
            s: dict[str, object] = dict(summary(values[name]))
            ov = ceiling if set_name == "train" else overlap_area(values[name], test[name])
            s["overlap"] = ov
            off = abs(s["median"] - med) / abs(med) if med else float("nan")  # type: ignore[operator]
            s["median_off"] = off
            if set_name != "train":
                s["of_ceiling"] = ov / ceiling if ceiling else float("nan")
                s["met"] = bool(ov >= OVERLAP_OF_CEILING * ceiling and off <= MEDIAN_TOLERANCE)
            row[set_name] = s
        out[name] = row
    return out


def plot(sets: dict[str, dict[str, npt.NDArray[np.float64]]], path: Path, title: str = "") -> Path:
    """One small panel per feature: the KDE of each set's window values (``sets["test"]`` against the others).

    Args:
        sets: per-feature window values by set name; ``"test"`` is drawn against every other.
        path: PNG to write.
        title: the figure's title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 3
    rows = -(-len(FEATURES) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.6 * rows), squeeze=False)
    for ax, feature in zip(axes.flat, FEATURES, strict=False):
        for name, values in sets.items():
            if name == "test":
                continue
            xs, d_other, d_test = densities(values[feature.name], sets["test"][feature.name])
            if name == next(k for k in sets if k != "test"):
                ax.fill_between(xs, d_test, color="0.8", label="test")
            ov = overlap_area(values[feature.name], sets["test"][feature.name])
            ax.plot(xs, d_other, label=f"{name} ({ov:.2f})", linewidth=1.2)
        ax.set_title(feature.label, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, frameon=False)
    for ax in list(axes.flat)[len(FEATURES) :]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path

"""MIDI file -> token arrays of the contract (melody, velocity, chord, position, phrase).

One MIDI file becomes one sequence on the grid of ``contract.STEPS_PER_BEAT`` steps per
quarter note. Parsing uses symusic; nothing here imports torch.

Heuristics, in the order they are applied:

* **Tracks.** Tracks without notes are ignored; drum tracks (channel 10) never give a
  melody or chords. No notes at all -> ``empty``; notes only on drums -> ``no_melody``.
* **Nottingham layout** (two tracks with notes, the second *chordal* -- at least half of
  its onset groups hold two or more pitch classes -- and lower on average than the first):
  the melody is the skyline of track 0; the chords come from track 1, one chord per
  onset group (notes starting on the same step), named by ``contract.recognize_chord``.
  A chord token is written at each (re)strike, HOLD while it holds, N.C. where no chord
  sounds (the start, gaps, the end).
* **General files.** Each non-drum track gets a melody score
  ``2 x monophony + (mean pitch - 60) / 12 + 0.5 x log(1 + notes) / log(1 + most notes)``
  where monophony is the share of its onset groups that hold a single note. Block-chord
  tracks (half or more of their onset groups hold three or more pitch classes) and tracks
  with fewer than 4 notes cannot be the melody; if none is left -> ``no_melody``. The
  best track's skyline is the melody. Chords come from all the other non-drum tracks
  (or, if there are none, from the melody track's notes below the skyline when they are
  at least a quarter of its notes -- else all N.C.), one
  recognition per counted beat of the time signature with each note weighted by how long
  it sounds in the beat. A beat without notes is N.C.; a beat with a single pitch class
  keeps the previous beat's chord (a bass note under a held chord). A chord token is
  written when the beat's chord differs from the previous beat's, HOLD otherwise.
* **Skyline.** At each onset step the highest note wins; a lower note that starts while a
  higher one still sounds is ignored. A note lasts at least one step; a later accepted
  onset cuts it. Melody tokens: NOTE_ON (pitch folded into range by
  ``contract.melody_note_on``) at the onset, HOLD over the rest of the note, REST
  elsewhere. Velocity: ``contract.velocity_bin`` of the onset, carried over the following
  steps (``contract.DEFAULT_VELOCITY_BIN`` before the first onset).
* **Grid.** Times are rounded to the nearest step (half up) using ticks per quarter.
* **Bars.** Bars follow the time-signature map (4/4 if none at time 0); every change starts a
  new bar, even mid-bar. Leading bars without any note are dropped; the sequence ends where
  the last note ends (trailing silence trimmed). Bar 0 is a *pickup* (bar index -1, so
  ``phrase_token`` gives 7) when neither melody nor chords have an onset in its first half --
  the Nottingham files pad the pickup bar with silence so the pickup ends on the barline.
* Fewer than 2 bars -> ``too_short``; more than ``MAX_STEPS`` steps -> ``too_long``.

Before parsing, :func:`sniff` looks at the file's size and chunk headers only: ``zero_length`` (0 bytes),
``too_large`` (over :data:`MAX_FILE_BYTES`, never read), ``not_midi`` (no ``MThd`` header: text, images...),
``truncated`` (a chunk claims more bytes than the file has: a cut download, or a giant length field).

Skip reasons are strings: those four, ``corrupt`` (unreadable, or the parser raised), ``empty``, ``no_melody``,
``too_short``, ``too_long``, or ``error: <ExceptionType>`` for anything unexpected.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from rtgen import contract as C  # noqa: N812

log = logging.getLogger(__name__)
T = TypeVar("T")

EXTRACTOR_VERSION = 1
"""Bump when the extraction changes, so prepared data is redone."""

MIN_BARS = 2
MIN_MELODY_NOTES = 4
BLOCK_CHORD_SHARE = 0.5
MIN_ACCOMPANIMENT_SHARE = 0.25
MAX_STEPS = 1 << 18
"""Longer sequences (over 4.5 h at 120 bpm on the 16th grid) are skipped as ``too_long``."""
CHORDAL_SHARE = 0.5
MAX_FILE_BYTES = 64 << 20
"""Larger files are skipped as ``too_large`` without being read (the largest MIDI files in big corpora are a few MB)."""

IntArray = npt.NDArray[np.int64]


class SkipFile(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised inside extraction to skip a file for a counted reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Notes:
    """The notes of one track on the grid (steps), sorted by onset then pitch (descending)."""

    on: IntArray
    off: IntArray
    pitch: IntArray
    velocity: IntArray

    @property
    def size(self) -> int:
        """Number of notes."""
        return int(self.on.size)

    def onset_groups(self) -> list[tuple[int, IntArray]]:
        """(onset step, indices of the notes starting there) in time order."""
        if self.size == 0:
            return []
        starts = np.flatnonzero(np.diff(self.on, prepend=self.on[0] - 1))
        bounds = np.append(starts, self.size)
        return [(int(self.on[a]), np.arange(a, b)) for a, b in itertools.pairwise(bounds)]

    def monophony(self) -> float:
        """Share of onset groups holding a single note."""
        groups = self.onset_groups()
        return sum(1 for _, idx in groups if idx.size == 1) / max(1, len(groups))

    def chordal_share(self, min_classes: int = 2) -> float:
        """Share of onset groups holding at least ``min_classes`` pitch classes."""
        groups = self.onset_groups()
        return sum(1 for _, idx in groups if np.unique(self.pitch[idx] % 12).size >= min_classes) / max(1, len(groups))


def _to_steps(ticks: npt.NDArray[np.int64], tpq: int) -> IntArray:
    return np.floor(ticks.astype(np.float64) * C.STEPS_PER_BEAT / tpq + 0.5).astype(np.int64)


def _track_notes(arrays: dict[str, npt.NDArray[np.int64]], tpq: int) -> Notes:
    time = np.asarray(arrays["time"], dtype=np.int64)
    dur = np.maximum(np.asarray(arrays["duration"], dtype=np.int64), 0)
    pitch = np.asarray(arrays["pitch"], dtype=np.int64)
    vel = np.asarray(arrays["velocity"], dtype=np.int64)
    keep = (vel > 0) & (time >= 0)
    time, dur, pitch, vel = time[keep], dur[keep], pitch[keep], vel[keep]
    on = _to_steps(time, tpq)
    off = np.maximum(_to_steps(time + dur, tpq), on + 1)
    order = np.lexsort((-pitch, on))
    return Notes(on[order], off[order], pitch[order], vel[order])


def skyline(notes: Notes, length: int) -> tuple[IntArray, IntArray, list[tuple[int, int, int]]]:
    """Melody and velocity tokens of the highest voice of ``notes``.

    Returns:
        ``(melody, velocity, accepted)`` where ``accepted`` lists the kept notes as
        ``(onset, end, pitch)`` steps; ends are cut by the next kept onset.
    """
    accepted: list[list[int]] = []
    vels: list[int] = []
    cur_end, cur_pitch = -1, -1
    for s, idx in notes.onset_groups():
        i = int(idx[0])  # highest pitch first within the group
        p = int(notes.pitch[i])
        if s < cur_end and p < cur_pitch:
            continue
        if accepted and accepted[-1][1] > s:
            accepted[-1][1] = s
        e = int(notes.off[i])
        accepted.append([s, max(e, s + 1), p])
        vels.append(int(notes.velocity[i]))
        cur_end, cur_pitch = e, p
    melody = np.full(length, C.MEL_REST, dtype=np.int64)
    onset_bin = np.full(length, -1, dtype=np.int64)
    bins = C.velocity_bin(np.array(vels, dtype=np.int64)) if vels else np.zeros(0, dtype=np.int64)
    for (s, e, p), b in zip(accepted, np.atleast_1d(bins), strict=True):
        if s >= length:
            break
        melody[s] = C.melody_note_on(p)
        melody[s + 1 : min(e, length)] = C.MEL_HOLD
        onset_bin[s] = b
    # carry each onset's bin forward to the next onset
    last = np.where(onset_bin >= 0, np.arange(length), -1)
    np.maximum.accumulate(last, out=last)
    velocity = np.where(last >= 0, onset_bin[np.maximum(last, 0)], C.DEFAULT_VELOCITY_BIN).astype(np.int64)
    return melody, velocity, [(s, e, p) for s, e, p in accepted]


@functools.lru_cache(maxsize=4096)
def _chord_token(pitches: tuple[int, ...]) -> int:
    found = C.recognize_chord(pitches)
    return C.CHORD_NC if found is None else found.token


def chords_by_onset(notes: Notes, length: int) -> IntArray:
    """Chord tokens from a block-chord track: a token at each strike, HOLD while it holds, N.C. in gaps."""
    chord = np.full(length, C.CHORD_HOLD, dtype=np.int64)
    chord[0] = C.CHORD_NC
    sounding_until = 0
    for s, idx in notes.onset_groups():
        if s >= length:
            break
        if s > sounding_until:
            chord[sounding_until] = C.CHORD_NC
        chord[s] = _chord_token(tuple(sorted(int(p) for p in notes.pitch[idx])))
        sounding_until = int(notes.off[idx].max())
    if sounding_until < length:
        chord[sounding_until] = C.CHORD_NC
    return chord


def chords_by_beat(notes: Notes, beat_starts: IntArray, length: int) -> IntArray:
    """Chord tokens recognised per beat with duration weights; a token where the chord changes."""
    chord = np.full(length, C.CHORD_HOLD, dtype=np.int64)
    ends = np.append(beat_starts[1:], length)
    prev: int | None = None
    for b, nb in zip(beat_starts, ends, strict=True):
        overlap = np.minimum(notes.off, nb) - np.maximum(notes.on, b)
        sel = overlap > 0
        if not sel.any():
            tok = C.CHORD_NC
        else:
            found = C.recognize_chord(notes.pitch[sel], overlap[sel])
            tok = (prev if prev is not None else C.CHORD_NC) if found is None else found.token
        if tok != prev:
            chord[b] = tok
        prev = tok
    return chord


@dataclass(frozen=True)
class BarGrid:
    """Per-step bar structure from the time-signature map."""

    step_in_bar: IntArray
    bar: IntArray
    beat_steps: IntArray

    @property
    def beat_starts(self) -> IntArray:
        """Steps where a counted beat starts."""
        return np.flatnonzero(self.step_in_bar % self.beat_steps == 0)


def bar_grid(changes: list[tuple[int, C.TimeSignature]], length: int) -> BarGrid:
    """Bars from time-signature changes ``(step, ts)`` sorted by step; each change starts a bar."""
    if not changes or changes[0][0] > 0:
        changes = [(0, C.TimeSignature(4, 4)), *changes]
    step_in_bar = np.zeros(length, dtype=np.int64)
    bar = np.zeros(length, dtype=np.int64)
    beat = np.ones(length, dtype=np.int64)
    bar_base = 0
    for k, (start, ts) in enumerate(changes):
        if start >= length:
            break
        end = min(changes[k + 1][0], length) if k + 1 < len(changes) else length
        if end <= start:
            continue
        idx = np.arange(end - start)
        bs = ts.bar_steps
        step_in_bar[start:end] = idx % bs
        bar[start:end] = bar_base + idx // bs
        beat[start:end] = ts.beat_steps
        bar_base += math.ceil((end - start) / bs)
    return BarGrid(step_in_bar, bar, beat)


def _time_signatures(score: object, tpq: int) -> list[tuple[int, C.TimeSignature]]:
    by_step: dict[int, C.TimeSignature] = {}
    for ts in sorted(score.time_signatures, key=lambda t: t.time):  # type: ignore[attr-defined]
        try:
            sig = C.TimeSignature(int(ts.numerator), int(ts.denominator))
        except ValueError:
            log.debug("ignoring invalid time signature %s/%s", ts.numerator, ts.denominator)
            continue
        step = int(_to_steps(np.array([ts.time], dtype=np.int64), tpq)[0])
        by_step[step] = sig
    return sorted(by_step.items())


def _melody_score(n: Notes, most: int) -> float:
    mean_pitch = float(n.pitch.mean())
    return 2.0 * n.monophony() + (mean_pitch - 60.0) / 12.0 + 0.5 * math.log1p(n.size) / math.log1p(most)


def tokens_from_score(score: object) -> dict[str, npt.NDArray[np.int64]]:
    """Token arrays of one parsed ``symusic.Score`` (tick time).

    Returns:
        ``melody``, ``velocity``, ``chord``, ``position``, ``phrase`` and ``bar`` (the bar
        index of each step, -1 in a pickup bar), all int64 of the same length.

    Raises:
        SkipFile: with the reason (``empty``, ``no_melody``, ``too_short``).
    """
    tpq = int(score.ticks_per_quarter)  # type: ignore[attr-defined]
    if tpq <= 0:
        raise SkipFile("corrupt")
    tracks: list[tuple[bool, Notes]] = []
    for tr in score.tracks:  # type: ignore[attr-defined]
        if len(tr.notes) == 0:
            continue
        n = _track_notes(tr.notes.numpy(), tpq)
        if n.size:
            tracks.append((bool(tr.is_drum), n))
    if not tracks:
        raise SkipFile("empty")
    pitched = [n for drum, n in tracks if not drum]
    if not pitched:
        raise SkipFile("no_melody")

    nottingham = (
        len(pitched) == 2
        and pitched[1].chordal_share() >= CHORDAL_SHARE
        and pitched[1].pitch.mean() < pitched[0].pitch.mean()
    )
    chord_notes: Notes | None
    if nottingham:
        melody_notes, chord_notes = pitched
    else:
        most = max(n.size for n in pitched)
        candidates = [
            (i, _melody_score(n, most))
            for i, n in enumerate(pitched)
            if n.size >= MIN_MELODY_NOTES and n.chordal_share(3) < BLOCK_CHORD_SHARE
        ]
        if not candidates:
            raise SkipFile("no_melody")
        best = max(candidates, key=lambda c: c[1])[0]
        melody_notes = pitched[best]
        others = [n for i, n in enumerate(pitched) if i != best]
        chord_notes = _concat(others) if others else None

    length = int(max(melody_notes.off.max(), chord_notes.off.max() if chord_notes is not None else 0))
    if length > MAX_STEPS:
        raise SkipFile("too_long")
    melody, velocity, accepted = skyline(melody_notes, length)
    if not nottingham and chord_notes is None:
        below = _below_skyline(melody_notes, accepted)
        # a few double stops under a fiddle tune are not an accompaniment
        chord_notes = below if below.size >= MIN_ACCOMPANIMENT_SHARE * melody_notes.size else None
    grid = bar_grid(_time_signatures(score, tpq), length)

    if nottingham:
        assert chord_notes is not None
        chord = chords_by_onset(chord_notes, length)
    elif chord_notes is not None and chord_notes.size:
        chord = chords_by_beat(chord_notes, grid.beat_starts, length)
    else:
        chord = np.full(length, C.CHORD_HOLD, dtype=np.int64)
        chord[0] = C.CHORD_NC

    # Drop leading bars without any note.
    first_onsets = [melody_notes.on.min()]
    if chord_notes is not None and chord_notes.size:
        first_onsets.append(chord_notes.on.min())
    first = int(min(first_onsets))
    start = int(np.searchsorted(grid.bar, grid.bar[first], side="left"))
    melody, velocity, chord = melody[start:].copy(), velocity[start:].copy(), chord[start:].copy()
    step_in_bar, bar = grid.step_in_bar[start:], grid.bar[start:] - grid.bar[start]
    if melody[0] == C.MEL_HOLD:
        melody[0] = C.MEL_REST
    if chord[0] == C.CHORD_HOLD:
        chord[0] = C.CHORD_NC  # no chord onset precedes the first note, so nothing sounds yet

    if int(bar[-1]) + 1 < MIN_BARS:
        raise SkipFile("too_short")

    bar0 = bar == 0
    half = math.ceil(int(bar0.sum()) / 2)
    onset = (melody >= C.MEL_NOTE_OFFSET) | (chord >= C.CHORD_OFFSET)
    if not np.any(onset[:half] & bar0[:half]):
        bar = bar - 1  # pickup bar
    return {
        "melody": melody,
        "velocity": velocity,
        "chord": chord,
        "position": np.minimum(step_in_bar, C.MAX_BAR_STEPS - 1).astype(np.int64),
        "phrase": np.mod(bar, C.PHRASE_BARS).astype(np.int64),
        "bar": bar.astype(np.int64),
    }


def _concat(parts: list[Notes]) -> Notes:
    on = np.concatenate([n.on for n in parts])
    off = np.concatenate([n.off for n in parts])
    pitch = np.concatenate([n.pitch for n in parts])
    vel = np.concatenate([n.velocity for n in parts])
    order = np.lexsort((-pitch, on))
    return Notes(on[order], off[order], pitch[order], vel[order])


def _below_skyline(notes: Notes, accepted: list[tuple[int, int, int]]) -> Notes:
    kept = {(s, p) for s, _, p in accepted}
    mask = np.array([(int(s), int(p)) not in kept for s, p in zip(notes.on, notes.pitch, strict=True)], dtype=bool)
    return Notes(notes.on[mask], notes.off[mask], notes.pitch[mask], notes.velocity[mask])


def sniff(path: str | Path, max_bytes: int = MAX_FILE_BYTES) -> str | None:
    """The skip reason visible without parsing (size, header, chunk lengths), or ``None`` when the file may be MIDI.

    Reads at most 8 bytes per chunk header, so a huge or sparse file costs nothing.

    Returns:
        ``zero_length``, ``too_large``, ``not_midi``, ``truncated``, ``corrupt`` (cannot be read), or ``None``.
    """
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            if size == 0:
                return "zero_length"
            if size > max_bytes:
                return "too_large"
            f.seek(0)
            header = f.read(8)
            if len(header) < 8 or header[:4] != b"MThd":
                return "not_midi"
            pos = 0
            while pos + 8 <= size:
                f.seek(pos)
                _, length = struct.unpack(">4sI", f.read(8))
                pos += 8 + length
            return "truncated" if pos > size else None
    except OSError as err:
        log.debug("cannot read %s: %s", path, err)
        return "corrupt"


def extract_file(path: str | Path) -> dict[str, npt.NDArray[np.int64]] | str:
    """Token arrays of one MIDI file, or the reason it is skipped.

    Never raises for a bad file: what :func:`sniff` sees comes first, then any parser exception gives
    ``"corrupt"``, any other exception ``"error: <ExceptionType>"``.

    Args:
        path: a MIDI file.

    Returns:
        The arrays of :func:`tokens_from_score`, or a skip reason string.
    """
    return convert_file(path, tokens_from_score)


def convert_file(path: str | Path, convert: Callable[[Any], T]) -> T | str:
    """``convert(score)`` of one MIDI file's parsed score, or the reason the file is skipped (as
    :func:`extract_file`, which is this with :func:`tokens_from_score`; a :class:`SkipFile` from ``convert``
    gives its reason)."""
    reason = sniff(path)
    if reason is not None:
        return reason
    try:
        import symusic

        score = symusic.Score(str(path))
    except Exception as err:
        log.debug("cannot parse %s: %s", path, err)
        return "corrupt"
    try:
        return convert(score)
    except SkipFile as skip:
        return skip.reason
    except Exception as err:
        log.debug("extraction failed for %s", path, exc_info=True)
        return f"error: {type(err).__name__}"

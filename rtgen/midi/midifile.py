"""Standard MIDI files: the one writer behind ``render`` and the session recorder.

:func:`build_midi` turns absolute-time events per named track (plus a tempo map,
time signature, key signature and markers) into a type-1 :class:`mido.MidiFile`;
:func:`save_atomic` writes it so that a crash never leaves a half-written file.
:func:`pan_cc` and :func:`volume_cc` are the one mapping from part settings to
CC10 / CC7 values, shared by the offline and the live paths.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import mido

from rtgen.errors import RtgenError

TICKS_PER_BEAT = 480
TEMPO_TRACK_NAME = "rtgen"

TimedMessage = tuple[int, mido.Message]
"""``(absolute tick, message)``; the message's own ``time`` is ignored."""

Track = tuple[str, Iterable[TimedMessage]]
"""``(track name, events)``; events at the same tick keep the order they are given in."""

_UMASK = os.umask(0)
os.umask(_UMASK)  # read once at import: mkstemp creates 0600 files, the result should get the usual mode


def pan_cc(pan: float) -> int:
    """CC10 value for a pan position: -1 (left) -> 0, 0 (centre) -> 64, 1 (right) -> 127.

    Monotone, clamped to -1..1; each side is linear, so the centre is exactly 64 (MIDI's centre).
    """
    pan = min(1.0, max(-1.0, float(pan)))
    if pan <= 0.0:
        return round(64 * (1.0 + pan))
    return round(64 + 63 * pan)


def volume_cc(volume: float) -> int:
    """CC7 value for a part volume: 0 -> 0, 1 -> 127, linear, clamped to 0..1."""
    return round(127 * min(1.0, max(0.0, float(volume))))


def _delta_track(name: str, events: Iterable[TimedMessage], end_tick: int | None) -> mido.MidiTrack:
    track = mido.MidiTrack()
    track.append(mido.MetaMessage("track_name", name=name, time=0))
    now = 0
    # stable sort: events at one tick keep their given order (note-offs before note-ons, headers first)
    for tick, msg in sorted(events, key=lambda e: e[0]):
        tick = max(0, tick)
        # copy() without overrides skips mido's re-validation of every field (the bulk of the
        # time on a long recording); setting .time still checks the one value that changes
        placed = msg.copy()
        placed.time = tick - now
        track.append(placed)
        now = tick
    if end_tick is not None:
        track.append(mido.MetaMessage("end_of_track", time=max(0, end_tick - now)))
    return track


def build_midi(
    tracks: Sequence[Track],
    *,
    tempo_map: Sequence[tuple[int, float]] = ((0, 120.0),),
    time_signature: tuple[int, int] | None = (4, 4),
    key_signature: str | None = None,
    markers: Iterable[tuple[int, str]] = (),
    cue_markers: Iterable[tuple[int, str]] = (),
    end_tick: int | None = None,
    ticks_per_beat: int = TICKS_PER_BEAT,
) -> mido.MidiFile:
    """A type-1 MIDI file: track 0 carries the tempo map and meta events, then one track per entry of ``tracks``.

    Args:
        tracks: ``(name, [(tick, message), ...])`` per track, written in this order after track 0.
        tempo_map: ``(tick, bpm)`` tempo changes; the first should be at tick 0.
        time_signature: ``(numerator, denominator)`` at tick 0, or None for none.
        key_signature: mido key name (``"G"``, ``"Em"``) at tick 0, or None.
        markers: ``(tick, text)`` ``marker`` meta events (song-form sections such as "intro", "A"; "prime",
            "generated" around a prime).
        cue_markers: ``(tick, text)`` ``cue_marker`` meta events (chord names).
        end_tick: when given, every track ends there (or at its last event, if later).
        ticks_per_beat: resolution.

    Returns:
        The file, in memory (same inputs give the same bytes).
    """
    meta: list[TimedMessage] = []
    tempo_events = [(tick, mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm))) for tick, bpm in tempo_map]
    meta += tempo_events[:1]
    if time_signature is not None:
        num, den = time_signature
        meta.append((0, mido.MetaMessage("time_signature", numerator=num, denominator=den)))
    if key_signature is not None:
        meta.append((0, mido.MetaMessage("key_signature", key=key_signature)))
    meta += tempo_events[1:]
    meta += [(tick, mido.MetaMessage("marker", text=text)) for tick, text in markers]
    meta += [(tick, mido.MetaMessage("cue_marker", text=text)) for tick, text in cue_markers]
    mid = mido.MidiFile(type=1, ticks_per_beat=ticks_per_beat)
    mid.tracks.append(_delta_track(TEMPO_TRACK_NAME, meta, end_tick))
    for name, events in tracks:
        mid.tracks.append(_delta_track(name, events, end_tick))
    return mid


def save_atomic(mid: mido.MidiFile, path: str | Path, *, what: str = "MIDI file") -> None:
    """Write ``mid`` to ``path`` through a temporary file in the same folder and :func:`os.replace`.

    Readers see the old file or the new one, never a partial one; a failed write leaves no
    temporary file behind. Missing parent folders are created.

    Args:
        mid: the file to write.
        path: where.
        what: how the error message names the file ("session recording", ...).

    Raises:
        RtgenError: naming ``path``, when any step fails (the cause is chained).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                mid.save(file=f)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_UMASK)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as err:
        raise RtgenError(f"cannot write the {what} {path}: {err}") from err

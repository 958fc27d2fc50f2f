"""Where timed MIDI goes: MIDI out, the internal synth, the session recorder.

Every sink takes raw MIDI messages (status byte, data bytes) from the real-time
thread, at the moment they are due, with the ``perf_counter_ns`` time of sending.
``send`` is on the hot path: no file I/O, no logging per event, no allocation
beyond what the backend needs. Each sink tracks the notes it has sounding so that
``panic()`` can send a note-off for each of them before all-notes-off (CC123) and
all-sound-off (CC120) on every channel; receivers that ignore CC123 still let go.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from rtgen.errors import RtgenError

if TYPE_CHECKING:
    from rtgen.midi_io import MidiOutput
    from rtgen.synth import Synth

log = logging.getLogger(__name__)

NOTE_OFF = 0x80
NOTE_ON = 0x90
CONTROL_CHANGE = 0xB0
PROGRAM_CHANGE = 0xC0
PITCH_BEND = 0xE0
CC_ALL_SOUND_OFF = 120
CC_ALL_NOTES_OFF = 123
CHANNELS = 16


@runtime_checkable
class Sink(Protocol):
    """A destination for timed MIDI (all sinks are of this one kind)."""

    name: str

    def send(self, message: Sequence[int], time_ns: int) -> None:
        """Deliver raw MIDI bytes now; ``time_ns`` is ``time.perf_counter_ns()`` when sent."""
        ...

    def panic(self) -> None:
        """Note-offs for every note this sink knows is sounding, then CC123 + CC120 on all 16 channels."""
        ...

    def close(self) -> None:
        """Release the sink (ports, synth, files); idempotent."""
        ...


class NoteTable:
    """Which (channel, pitch) notes are sounding: a flat 16x128 table, cheap to update per message.

    A repeated note-on without a note-off leaves the note marked once: one note-off ends it on
    every receiver we care about (FluidSynth, DAWs).
    """

    __slots__ = ("_on",)

    def __init__(self) -> None:
        self._on = bytearray(CHANNELS * 128)

    def update(self, message: Sequence[int]) -> None:
        """Track a message (note-on, note-off, velocity-0 note-on, CC123/CC120 clear the channel)."""
        if len(message) < 3:
            return
        status = message[0]
        kind = status & 0xF0
        if kind == NOTE_ON:
            self._on[((status & 0x0F) << 7) | (message[1] & 0x7F)] = 1 if message[2] else 0
        elif kind == NOTE_OFF:
            self._on[((status & 0x0F) << 7) | (message[1] & 0x7F)] = 0
        elif kind == CONTROL_CHANGE and message[1] in (CC_ALL_NOTES_OFF, CC_ALL_SOUND_OFF):
            base = (status & 0x0F) << 7
            self._on[base : base + 128] = bytes(128)

    def sounding(self) -> list[tuple[int, int]]:
        """The (channel, pitch) pairs marked sounding, in channel then pitch order."""
        return [(i >> 7, i & 0x7F) for i, v in enumerate(self._on) if v]

    def clear(self) -> None:
        """Forget every note."""
        self._on[:] = bytes(len(self._on))

    def __len__(self) -> int:
        return sum(self._on)


def panic_messages(sounding: Sequence[tuple[int, int]]) -> list[list[int]]:
    """Note-offs for ``sounding`` then CC123 (all notes off) and CC120 (all sound off) on all 16 channels."""
    msgs = [[NOTE_OFF | ch, pitch, 0] for ch, pitch in sounding]
    for ch in range(CHANNELS):
        msgs.append([CONTROL_CHANGE | ch, CC_ALL_NOTES_OFF, 0])
        msgs.append([CONTROL_CHANGE | ch, CC_ALL_SOUND_OFF, 0])
    return msgs


class _ErrorCounter:
    """Counts send failures and logs the first (then every 1000th) so a dying port cannot flood the log."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.count = 0

    def hit(self, err: BaseException) -> None:
        self.count += 1
        if self.count == 1 or self.count % 1000 == 0:
            log.warning("sink %s: send failed (%d so far): %s", self.name, self.count, err)


class MidiOutSink:
    """Sends to a :class:`rtgen.midi_io.MidiOutput` (virtual or named port).

    Attributes:
        name: ``"midi:<port name>"``.
        errors: number of messages the port refused (counted, logged sparsely, never raised).
    """

    def __init__(self, output: MidiOutput, *, close_output: bool = True) -> None:
        self.output = output
        self.name = f"midi:{output.name}"
        self.notes = NoteTable()
        self._send = output.send
        self._track = self.notes.update
        self._close_output = close_output
        self._errors = _ErrorCounter(self.name)
        self._closed = False

    @property
    def errors(self) -> int:
        """Messages that failed to send."""
        return self._errors.count

    def send(self, message: Sequence[int], time_ns: int) -> None:
        """Send ``message`` to the port now and track its note state."""
        try:
            self._send(message)
        except (OSError, ValueError, TypeError) as err:  # rtmidi errors derive from OSError
            self._errors.hit(err)
            return
        self._track(message)

    def panic(self) -> None:
        """Note-offs for the sounding notes, then CC123 + CC120 on every channel."""
        if self._closed:
            return
        for msg in panic_messages(self.notes.sounding()):
            try:
                self._send(msg)
            except (OSError, ValueError) as err:
                self._errors.hit(err)
        self.notes.clear()

    def close(self) -> None:
        """Close the port (without sending anything: call :meth:`panic` first)."""
        if self._closed:
            return
        self._closed = True
        if self._close_output:
            self.output.close()


class SynthSink:
    """Plays messages on a :class:`rtgen.synth.Synth` (note on/off, CC, program change).

    Attributes:
        name: ``"synth"``.
        errors: messages the synth refused.
    """

    def __init__(self, synth: Synth, *, close_synth: bool = True, name: str = "synth") -> None:
        self.synth = synth
        self.name = name
        self.notes = NoteTable()
        self._close_synth = close_synth
        self._errors = _ErrorCounter(name)
        self._closed = False
        self._note_on = synth.note_on
        self._note_off = synth.note_off
        self._cc = synth.cc
        self._program = synth.program

    @property
    def errors(self) -> int:
        """Messages that failed."""
        return self._errors.count

    def send(self, message: Sequence[int], time_ns: int) -> None:
        """Translate one MIDI message into the matching synth call."""
        if self._closed or not message:
            return
        status = message[0]
        kind = status & 0xF0
        ch = status & 0x0F
        try:
            if kind == NOTE_ON and len(message) >= 3:
                if message[2]:
                    self._note_on(ch, message[1], message[2])
                else:
                    self._note_off(ch, message[1])
            elif kind == NOTE_OFF and len(message) >= 3:
                self._note_off(ch, message[1])
            elif kind == CONTROL_CHANGE and len(message) >= 3:
                self._cc(ch, message[1], message[2])
            elif kind == PROGRAM_CHANGE and len(message) >= 2:
                self._program(ch, message[1])
            else:
                return  # pitch bend, aftertouch, system messages: not used by rtgen's parts
        except (RtgenError, OSError, ValueError, TypeError) as err:
            self._errors.hit(err)
            return
        self.notes.update(message)

    def panic(self) -> None:
        """Note-offs for the sounding notes, then the synth's all-notes-off (CC123 + CC120 on every channel)."""
        if self._closed:
            return
        for ch, pitch in self.notes.sounding():
            self.send([NOTE_OFF | ch, pitch, 0], 0)
        try:
            self.synth.all_notes_off()  # CC123 + CC120 on all 16 channels
        except (RtgenError, OSError, ValueError) as err:
            self._errors.hit(err)
        self.notes.clear()

    def close(self) -> None:
        """Close the synth (when this sink owns it)."""
        if self._closed:
            return
        self._closed = True
        if self._close_synth:
            self.synth.close()


class RecorderSink:
    """Records the session in memory; :meth:`close` writes a type-1 Standard MIDI File.

    The file has a tempo track (tempo map from :meth:`set_tempo` calls, time signature) and one
    track per MIDI channel that carried anything, named after its part when ``track_names`` says.
    Times are converted from ``perf_counter_ns`` to ticks through the recorded tempo map, so the
    file lines up with the beat even when the tempo changed during the session. Notes still sounding
    at close get their note-off at the last recorded time; file I/O happens only in ``close``.

    Args:
        path: the ``.mid`` file to write.
        tempo: the tempo (BPM) at the start.
        start_ns: ``perf_counter_ns`` of beat 0 (default: the first recorded message).
        ticks_per_beat: MIDI file resolution.
        time_signature: ``(numerator, denominator)`` written to the tempo track.
        track_names: 0-based channel -> track name (e.g. ``{0: "melody", 1: "chords", 2: "bass"}``).
    """

    def __init__(
        self,
        path: str | Path,
        tempo: float,
        *,
        start_ns: int | None = None,
        ticks_per_beat: int = 480,
        time_signature: tuple[int, int] = (4, 4),
        track_names: Mapping[int, str] | None = None,
    ) -> None:
        if tempo <= 0:
            raise ValueError(f"tempo must be > 0 BPM, got {tempo}")
        self.path = Path(path)
        self.name = f"record:{self.path.name}"
        self.ticks_per_beat = ticks_per_beat
        self.time_signature = time_signature
        self.track_names = dict(track_names or {})
        self.events: list[tuple[int, tuple[int, ...]]] = []
        self.notes = NoteTable()
        self._start_ns = start_ns
        self._tempi: list[tuple[int | None, float]] = [(start_ns, float(tempo))]
        self._closed = False

    def send(self, message: Sequence[int], time_ns: int) -> None:
        """Remember ``message`` at ``time_ns`` (a tuple append; nothing else)."""
        if self._closed:
            return
        if self._start_ns is None:
            self._start_ns = time_ns
        self.events.append((time_ns, tuple(message)))
        self.notes.update(message)

    def set_tempo(self, tempo: float, time_ns: int) -> None:
        """Record a tempo change (BPM) taking effect at ``time_ns``."""
        if tempo <= 0:
            raise ValueError(f"tempo must be > 0 BPM, got {tempo}")
        self._tempi.append((time_ns, float(tempo)))

    def panic(self) -> None:
        """Record note-offs for the sounding notes (CC123/CC120 are left out of the file on purpose:
        they would add 32 events per panic and every player releases on the note-offs)."""
        if self._closed or self._start_ns is None:
            return
        import time

        now = time.perf_counter_ns()
        for ch, pitch in self.notes.sounding():
            self.events.append((now, (NOTE_OFF | ch, pitch, 0)))
        self.notes.clear()

    def _tick_converter(self) -> tuple[Callable[[int], int], list[tuple[int, float]]]:
        """``ns -> tick`` through the tempo map, and the map as (tick, bpm)."""
        start = self._start_ns or 0
        segments: list[tuple[int, float]] = []  # (ns from start, bpm), sorted, first at 0
        for t, bpm in self._tempi:
            rel = 0 if t is None else max(0, t - start)
            if segments and rel <= segments[-1][0]:
                # Same instant (or out of order): the later call wins.
                segments[-1] = (segments[-1][0], bpm)
            else:
                segments.append((rel, bpm))
        if not segments or segments[0][0] != 0:
            segments.insert(0, (0, self._tempi[0][1]))
        tpb = self.ticks_per_beat
        starts: list[float] = [0.0]  # tick at each segment start
        for (t0, bpm), (t1, _) in itertools.pairwise(segments):
            starts.append(starts[-1] + (t1 - t0) * bpm * tpb / 60e9)

        def to_tick(ns: int) -> int:
            rel = max(0, ns - start)
            i = len(segments) - 1
            while i > 0 and segments[i][0] > rel:
                i -= 1
            t0, bpm = segments[i]
            return round(starts[i] + (rel - t0) * bpm * tpb / 60e9)

        return to_tick, [(round(s), bpm) for s, (_, bpm) in zip(starts, segments, strict=True)]

    def close(self) -> None:
        """Write the file (type 1). Raises :class:`~rtgen.errors.RtgenError` naming the file if it cannot."""
        if self._closed:
            return
        self._closed = True
        import mido

        if self.events:
            last = max(t for t, _ in self.events)
            for ch, pitch in self.notes.sounding():
                self.events.append((last, (NOTE_OFF | ch, pitch, 0)))
            self.notes.clear()
        to_tick, tempo_map = self._tick_converter()
        mid = mido.MidiFile(type=1, ticks_per_beat=self.ticks_per_beat)
        meta = mido.MidiTrack()
        meta.append(mido.MetaMessage("track_name", name="rtgen", time=0))
        num, den = self.time_signature
        meta.append(mido.MetaMessage("time_signature", numerator=num, denominator=den, time=0))
        prev = 0
        for tick, bpm in tempo_map:
            meta.append(mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm), time=tick - prev))
            prev = tick
        mid.tracks.append(meta)
        per_channel: dict[int, list[tuple[int, int, tuple[int, ...]]]] = {}
        for order, (t, msg) in enumerate(self.events):
            if not msg or msg[0] < 0x80 or msg[0] >= 0xF0:
                continue
            per_channel.setdefault(msg[0] & 0x0F, []).append((to_tick(t), order, msg))
        for ch in sorted(per_channel):
            track = mido.MidiTrack()
            track.append(mido.MetaMessage("track_name", name=self.track_names.get(ch, f"channel {ch + 1}"), time=0))
            prev = 0
            for tick, _, msg in sorted(per_channel[ch]):
                try:
                    message = mido.Message.from_bytes(list(msg))
                except (ValueError, TypeError) as err:
                    log.debug("recorder: dropping malformed message %r: %s", msg, err)
                    continue
                track.append(message.copy(time=tick - prev))
                prev = tick
            mid.tracks.append(track)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            mid.save(self.path)
        except OSError as err:
            raise RtgenError(f"cannot write the session recording {self.path}: {err}") from err
        log.info("recorded %d events to %s", len(self.events), self.path)

"""Where timed MIDI goes: MIDI out, the internal synth, the session recorder.

Every sink takes raw MIDI messages (status byte, data bytes) from the real-time
thread, at the moment they are due, with the ``perf_counter_ns`` time of sending.
``send`` is on the hot path: no file I/O, no logging per event, no allocation
beyond what the backend needs. Each sink tracks the notes it has sounding so that
``panic()`` can send a note-off for each of them before all-notes-off (CC123) and
all-sound-off (CC120) on every channel; receivers that ignore CC123 still let go.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import tempfile
import threading
import time
from array import array
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from rtgen.contract import STEPS_PER_BEAT
from rtgen.errors import RtgenError
from rtgen.midi.messages import (
    CC_ALL_NOTES_OFF,
    CC_ALL_SOUND_OFF,
    CHANNEL_MASK,
    CONTROL_CHANGE,
    DATA_MASK,
    KIND_MASK,
    NOTE_OFF,
    NOTE_ON,
    PROGRAM_CHANGE,
    SYSTEM,
    panic_messages,
)
from rtgen.midi.notes import NoteTracker

if TYPE_CHECKING:
    from rtgen.io.ports import MidiOutput
    from rtgen.io.synth import Synth

log = logging.getLogger(__name__)


@runtime_checkable
class Sink(Protocol):
    """A destination for timed MIDI: MIDI out, the synth, the recorder, a test's list (all of this one kind).

    Attributes:
        name: for logs and the status (``midi:<port>``, ``synth``, ``record:<file>``).
        live: someone hears it as it is sent (False for a file: its timing is kept to the nanosecond anyway).
    """

    name: str
    live: bool

    @property
    def quantum_ns(self) -> int:
        """The output's own time grid (a JACK period, an audio period): a note sounds at its next step; 0: at once."""
        ...

    @property
    def overflowed(self) -> int:
        """Messages the output dropped for want of room (a stalled JACK server)."""
        ...

    @property
    def errors(self) -> int:
        """Messages the output refused."""
        ...

    def send(self, message: Sequence[int], time_ns: int) -> None:
        """Deliver raw MIDI bytes now; ``time_ns`` is ``time.perf_counter_ns()`` when sent."""
        ...

    def set_tempo(self, bpm: float, time_ns: int) -> None:
        """The tempo changes at ``time_ns`` (the recorder's tempo map; nothing for a port)."""
        ...

    def panic(self) -> None:
        """Note-offs for every note this sink knows is sounding, then CC123 + CC120 on all 16 channels."""
        ...

    def close(self) -> None:
        """Release the sink (ports, synth, files); idempotent."""
        ...


class BaseSink:
    """The common part of every sink (as mido's ``BasePort``): the closed guard, the error count, the defaults.

    Subclasses implement ``_send`` (and ``_panic``, ``_close``); a failure they catch goes to :meth:`_failed`,
    which counts it and logs the first (then every 1000th), so a dying port cannot flood the log.
    """

    live = True

    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False
        self._error_count = 0

    @property
    def quantum_ns(self) -> int:
        """Sends sound at once (see :class:`Sink`)."""
        return 0

    @property
    def overflowed(self) -> int:
        """Nothing dropped for want of room."""
        return 0

    @property
    def errors(self) -> int:
        """Messages that failed to send."""
        return self._error_count

    def _failed(self, err: BaseException) -> None:
        self._error_count += 1
        if self._error_count == 1 or self._error_count % 1000 == 0:
            log.warning("sink %s: send failed (%d so far): %s", self.name, self._error_count, err)

    def send(self, message: Sequence[int], time_ns: int) -> None:
        """Deliver ``message`` now (nothing once closed)."""
        if not self.closed:
            self._send(message, time_ns)

    def set_tempo(self, bpm: float, time_ns: int) -> None:
        """A port keeps no tempo."""

    def panic(self) -> None:
        """Release what this sink has sounding (nothing once closed)."""
        if not self.closed:
            self._panic()

    def close(self) -> None:
        """Close once; later calls do nothing."""
        if not self.closed:
            self.closed = True
            self._close()

    def _send(self, message: Sequence[int], time_ns: int) -> None:
        raise NotImplementedError

    def _panic(self) -> None:
        """Nothing sounds."""

    def _close(self) -> None:
        """Nothing to release."""


class NullSink(BaseSink):
    """A sink that drops everything (the benchmarks' loop without an output)."""

    def __init__(self) -> None:
        super().__init__("null")

    def _send(self, message: Sequence[int], time_ns: int) -> None:
        """Drop ``message``."""


class MidiOutSink(BaseSink):
    """Sends to a :class:`rtgen.io.ports.MidiOutput` (virtual or named port).

    Attributes:
        name: ``"midi:<port name>"``.
        errors: number of messages the port refused (counted, logged sparsely, never raised).
    """

    def __init__(self, output: MidiOutput, *, close_output: bool = True) -> None:
        super().__init__(f"midi:{output.name}")
        self.output = output
        self.notes = NoteTracker()
        self._port_send = output.send
        self._track = self.notes.track
        self._close_output = close_output

    @property
    def quantum_ns(self) -> int:
        """The JACK period when the port is on JACK (its messages go out at the next period), else 0."""
        return self.output.period_ns

    @property
    def overflowed(self) -> int:
        """Messages the port dropped because a stalled JACK server had no room for them."""
        return self.output.overflowed

    def _send(self, message: Sequence[int], time_ns: int) -> None:
        try:
            sent = self._port_send(message)
        except (OSError, ValueError, TypeError) as err:  # rtmidi errors derive from OSError
            self._failed(err)
            return
        if sent is not False:  # a dropped note-off leaves its note in the book: the next panic releases it
            self._track(message)

    def _panic(self) -> None:
        """Note-offs for the sounding notes, then CC123 + CC120 on every channel."""
        for msg in panic_messages(self.notes.sounding()):
            try:
                self._port_send(msg)
            except (OSError, ValueError) as err:
                self._failed(err)
        self.notes.clear()

    def _close(self) -> None:
        """Close the port (without sending anything: call :meth:`panic` first)."""
        if self._close_output:
            self.output.close()


class SynthSink(BaseSink):
    """Plays messages on a :class:`rtgen.io.synth.Synth` (note on/off, CC, program change).

    Attributes:
        name: ``"synth"``.
        errors: messages the synth refused.
    """

    def __init__(self, synth: Synth, *, close_synth: bool = True, name: str = "synth") -> None:
        super().__init__(name)
        self.synth = synth
        self.notes = NoteTracker()
        self._close_synth = close_synth
        self._note_on = synth.note_on
        self._note_off = synth.note_off
        self._cc = synth.cc
        self._program = synth.program

    @property
    def quantum_ns(self) -> int:
        """The synth's audio period: a note sounds at the start of the next one."""
        return self.synth.period_ns

    def _send(self, message: Sequence[int], time_ns: int) -> None:
        """Translate one MIDI message into the matching synth call."""
        if not message:
            return
        status = message[0]
        kind = status & KIND_MASK
        ch = status & CHANNEL_MASK
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
            self._failed(err)
            return
        self.notes.track(message)

    def _panic(self) -> None:
        """Note-offs for the sounding notes, then the synth's all-notes-off (CC123 + CC120 on every channel)."""
        for ch, pitch in self.notes.sounding():
            self._send([NOTE_OFF | ch, pitch, 0], 0)
        try:
            self.synth.all_notes_off()  # CC123 + CC120 on all 16 channels
        except (RtgenError, OSError, ValueError) as err:
            self._failed(err)
        self.notes.clear()

    def _close(self) -> None:
        """Close the synth (when this sink owns it)."""
        if self._close_synth:
            self.synth.close()


# Recorder records: two int64 per event in a preallocated array ('q'): the time in ns, then
# (source << 32) | (length << 24) | (status << 16) | (data1 << 8) | data2; a tempo record carries
# round(bpm * 1e6) in the low 32 bits instead of a message, a locate record the transport's step.
_SOURCE_PARTS = 0
_SOURCE_PLAYER = 1
_SOURCE_TEMPO = 2
_SOURCE_LOCATE = 3
_BPM_SCALE = 1_000_000
PLAYER_TRACK = "player"
_UNDECODED: Any = object()


class RecorderSink(BaseSink):
    """Records the session, both sides: the generated parts and the player's input (a file: not ``live``).

    :meth:`close` writes a type-1 Standard MIDI File (through :mod:`rtgen.midi.midifile`, atomically):
    track 0 has the tempo map (from :meth:`set_tempo`) and the time signature, then one track per
    MIDI channel the parts used, named by ``track_names``, then a ``"player"`` track with what
    :meth:`record_input` got (kept apart from the parts even on a shared channel). Times are
    converted from ``perf_counter_ns`` to ticks through the recorded tempo map, so the file lines
    up with the beat even when the tempo changed. Notes still sounding at close get a real
    note-off at the last recorded time; CC123/CC120 are left out of the file (every note has its
    note-off there, and all-notes-off would only add noise).

    Memory stays bounded however long the session: :meth:`send` and :meth:`record_input` write
    two integers into a preallocated buffer; a full buffer goes through a queue to a writer thread
    that appends it to a spool file next to ``path`` (or in the temp folder) and hands the buffer
    back. The real-time thread never does file I/O and never waits. ``close`` reads the spool back.

    The file's grid is the transport's: :meth:`locate` says which step of the transport starts
    when (the live loop calls it at the first step it records, and again after each Start,
    Continue or Song Position of a followed clock). The first located step's bar line is the
    file's bar 1, or a later bar line when something was played before it: the player's notes
    during the wait for a DAW's Start become a pickup of whole bars (at the tempo of that first
    step), so nothing is lost and every step sits on the file's own 16th grid. After a later
    locate, step ``s`` goes to the tick ``s`` steps from the transport's step 0, as the DAW shows
    it; when that place has already gone by (a new Start, a loop back) the take goes on at the
    next tick with the same place in the bar. Without a locate, ``start_ns`` (or the first
    recorded message) is tick 0.

    Threads: ``send``, ``record_input``, ``set_tempo``, ``locate`` and ``panic`` belong to one
    thread (the real-time thread, which also drains the input queue). ``close`` may be called from
    any thread once that thread has stopped calling them (the daemon detaches the sink first); it
    is idempotent. To start recording mid-session, add a new recorder to the sinks and locate it
    at the next step; note-offs of notes that began before it are left out.

    Args:
        path: the ``.mid`` file to write.
        tempo: the tempo (BPM) at the start.
        start_ns: ``perf_counter_ns`` of tick 0 when nothing is located (default: the first recorded message).
        ticks_per_beat: MIDI file resolution.
        time_signature: ``(numerator, denominator)`` written to the tempo track.
        track_names: 0-based channel -> track name (e.g. ``{0: "melody", 1: "chords", 2: "bass"}``).
        buffer_events: events per in-memory buffer (16 bytes each).
        buffers: buffers preallocated (one fills while the writer thread spools the others).
        spool_dir: where the spool file goes (default: next to ``path``, else the temp folder).

    Attributes:
        notes: the generated notes sounding (a :class:`~rtgen.midi.notes.NoteTracker`).
        player_notes: the player's notes sounding.
        buffers_allocated: buffers created so far (stays at ``buffers`` unless the writer fell behind).
        spooled_events: events written to the spool file so far.
        tempo: the latest tempo of the tempo map (BPM).
    """

    live = False

    def __init__(
        self,
        path: str | Path,
        tempo: float,
        *,
        start_ns: int | None = None,
        ticks_per_beat: int = 480,
        time_signature: tuple[int, int] = (4, 4),
        track_names: Mapping[int, str] | None = None,
        buffer_events: int = 8192,
        buffers: int = 4,
        spool_dir: str | Path | None = None,
    ) -> None:
        if tempo <= 0:
            raise ValueError(f"tempo must be > 0 BPM, got {tempo}")
        if buffer_events < 1 or buffers < 1:
            raise ValueError(f"buffer_events and buffers must be >= 1, got {buffer_events} and {buffers}")
        self.path = Path(path)
        super().__init__(f"record:{self.path.name}")
        self.ticks_per_beat = ticks_per_beat
        self.time_signature = time_signature
        self.track_names = dict(track_names or {})
        self.notes = NoteTracker()
        self.player_notes = NoteTracker()
        self.buffers_allocated = 0
        self.spooled_events = 0
        self._tempo0 = self.tempo = float(tempo)
        self._start_ns = start_ns
        self._buffer_slots = 2 * buffer_events
        self._pool_size = buffers
        self._free: queue.SimpleQueue[array[int]] = queue.SimpleQueue()
        for _ in range(buffers - 1):
            self._free.put(self._new_buffer())
        self._buf = self._new_buffer()
        self._n = 0  # slots used in self._buf
        self._full: queue.SimpleQueue[array[int] | None] = queue.SimpleQueue()
        self._spool_dir = Path(spool_dir) if spool_dir is not None else None
        self._spool: BinaryIO | None = None
        self._spool_path: Path | None = None
        self._unspooled: list[array[int]] = []  # buffers the writer could not spool (kept, not lost)
        self._close_lock = threading.Lock()
        self._writer = threading.Thread(target=self._write_loop, name=f"rtgen-{self.name}", daemon=True)
        self._writer.start()

    # --- real-time thread ------------------------------------------------------------------
    def _new_buffer(self) -> array[int]:
        self.buffers_allocated += 1
        return array("q", bytes(8 * self._buffer_slots))

    def _append(self, time_ns: int, word: int) -> None:
        buf = self._buf
        i = self._n
        buf[i] = time_ns
        buf[i + 1] = word
        i += 2
        if i == self._buffer_slots:
            self._full.put(buf)  # SimpleQueue.put never blocks
            try:
                self._buf = self._free.get_nowait()
            except queue.Empty:
                self._buf = self._new_buffer()  # the writer fell behind: one more buffer, never a wait
            i = 0
        self._n = i

    def _record(self, message: Sequence[int], time_ns: int, source: int, notes: NoteTracker) -> None:
        n = len(message)
        if self.closed or n == 0 or n > 3:
            return
        status = message[0]
        if status < NOTE_OFF or status >= SYSTEM:
            return  # system messages (clock, sysex) have no place in the file's parts
        kind = status & KIND_MASK
        d1 = message[1] & DATA_MASK if n > 1 else 0
        d2 = message[2] & DATA_MASK if n > 2 else 0
        if kind == NOTE_ON and d2:
            notes.on(status & CHANNEL_MASK, d1)
        elif kind in (NOTE_OFF, NOTE_ON):
            if not notes.release(status & CHANNEL_MASK, d1):
                return  # a note that began before the recording (or was already released)
        elif kind == CONTROL_CHANGE and d1 in (CC_ALL_NOTES_OFF, CC_ALL_SOUND_OFF):
            return
        if self._start_ns is None:
            self._start_ns = time_ns
        self._append(time_ns, (source << 32) | (n << 24) | (status << 16) | (d1 << 8) | d2)

    def send(self, message: Sequence[int], time_ns: int) -> None:
        """Record a generated message at ``time_ns`` (two integers into the buffer; nothing else)."""
        self._record(message, time_ns, _SOURCE_PARTS, self.notes)

    def record_input(self, message: Sequence[int], time_ns: int) -> None:
        """Record a message of the player's MIDI input (its own ``"player"`` track in the file)."""
        self._record(message, time_ns, _SOURCE_PLAYER, self.player_notes)

    def set_tempo(self, tempo: float, time_ns: int) -> None:
        """Record a tempo change (BPM) taking effect at ``time_ns``."""
        if tempo <= 0:
            raise ValueError(f"tempo must be > 0 BPM, got {tempo}")
        if self.closed:
            return
        self.tempo = float(tempo)
        self._append(time_ns, (_SOURCE_TEMPO << 32) | min(0xFFFFFFFF, round(tempo * _BPM_SCALE)))

    def locate(self, step: int, time_ns: int) -> None:
        """The transport's song position ``step`` (a 16th since its step 0) starts at ``time_ns``.

        The file's grid follows (see the class docstring): two integers into the buffer, nothing else.
        """
        if step < 0:
            raise ValueError(f"song position must be >= 0 steps, got {step}")
        if self.closed:
            return
        if self._start_ns is None:
            self._start_ns = time_ns
        self._append(time_ns, (_SOURCE_LOCATE << 32) | min(0xFFFFFFFF, step))

    def panic(self) -> None:
        """Record note-offs now for the generated notes sounding (CC123/CC120 stay out of the file)."""
        if self.closed or self._start_ns is None:
            return
        now = time.perf_counter_ns()
        for ch, pitch in self.notes.sounding():
            self.send((NOTE_OFF | ch, pitch, 0), now)

    # --- writer thread ---------------------------------------------------------------------
    def _open_spool(self) -> BinaryIO:
        folders = [self._spool_dir] if self._spool_dir is not None else [self.path.parent, None]
        err: OSError | None = None
        for folder in folders:
            try:
                if folder is not None:
                    folder.mkdir(parents=True, exist_ok=True)
                fd, name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".spool", dir=folder)
            except OSError as e:
                err = e
                continue
            self._spool_path = Path(name)
            return os.fdopen(fd, "w+b")
        assert err is not None
        raise err

    def _write_loop(self) -> None:
        failed = False
        while True:
            buf = self._full.get()
            if buf is None:
                return
            if not failed:
                try:
                    if self._spool is None:
                        self._spool = self._open_spool()
                    self._spool.write(memoryview(buf))
                except OSError as err:
                    # a failed write may have left part of the buffer: the spool is trusted up to
                    # spooled_events, and everything from here on stays in memory, in order
                    failed = True
                    log.warning("recorder %s: cannot spool to disk (%s); keeping the session in memory", self.name, err)
            if failed:
                self._unspooled.append(buf)
                continue
            self.spooled_events += len(buf) // 2
            if self._free.qsize() < self._pool_size:
                self._free.put(buf)  # extra buffers from a burst are let go: the pool never ratchets up

    # --- closing ---------------------------------------------------------------------------
    def _records(self) -> npt.NDArray[np.int64]:
        """Every record in order (spool, buffers the spool refused, the buffer being filled): (N, 2)."""
        parts: list[npt.NDArray[np.int64]] = []
        if self._spool is not None:
            self._spool.flush()
            self._spool.seek(0)
            parts.append(np.fromfile(self._spool, dtype=np.int64, count=2 * self.spooled_events))
        parts += [np.frombuffer(b, dtype=np.int64) for b in self._unspooled]
        parts.append(np.frombuffer(self._buf, dtype=np.int64)[: self._n].copy())
        return np.concatenate(parts).reshape(-1, 2)

    def _tick_map(
        self, tempi: list[tuple[int, float]], locates: list[tuple[int, int]], first_note_ns: int | None
    ) -> tuple[Callable[[npt.NDArray[np.int64]], npt.NDArray[np.int64]], list[tuple[int, float]]]:
        """``ns -> tick`` (vectorised) through the tempo map and the locates, and the map as (tick, bpm).

        The map is a list of anchors (ns, tick, bpm): from an anchor on, ticks run at its tempo. The first is
        the origin (the first locate, else the start); before it, ticks run back at its tempo (clamped at 0).
        ``first_note_ns`` is the earliest note-on: the pickup before the first locate holds it.
        """
        tpb = self.ticks_per_beat
        per_ns = tpb / 60e9  # ticks per ns per BPM
        num, den = self.time_signature
        bar_ticks = tpb * num * 4 / den
        step_ticks = tpb / STEPS_PER_BEAT
        origin_ns = locates[0][0] if locates else (self._start_ns or 0)
        segments: list[tuple[int, float]] = [(origin_ns, self._tempo0)]  # (ns, bpm), sorted
        for t, bpm in tempi:
            if t <= segments[-1][0]:
                segments[-1] = (segments[-1][0], bpm)  # same instant (or earlier): the later call wins
            else:
                segments.append((t, bpm))
        bpm0 = segments[0][1]
        origin_tick = 0.0
        base = 0.0  # the tick of the transport's step 0
        if locates:
            step0 = locates[0][1]
            phase = (step0 * step_ticks) % bar_ticks  # the first step's place in its bar
            before = 0.0 if first_note_ns is None else max(0.0, (origin_ns - first_note_ns) * bpm0 * per_ns)
            # a note less than half a step early for the first bar line (humanized) goes to tick 0, not a bar early
            pickup_bars = max(0, math.ceil((before - phase - step_ticks / 2) / bar_ticks))
            origin_tick = pickup_bars * bar_ticks + phase
            base = origin_tick - step0 * step_ticks
        anchors = [(origin_ns, origin_tick, bpm0)]
        # the later changes in time order; at one instant a locate places the tick before a tempo changes the rate
        changes = sorted(
            [(t, 0, float(step)) for t, step in locates[1:]] + [(t, 1, bpm) for t, bpm in segments[1:]],
            key=lambda c: (c[0], c[1]),
        )
        for t, kind, value in changes:
            ns, tick, bpm = anchors[-1]
            natural = tick + (t - ns) * bpm * per_ns
            if kind == 1:
                anchors.append((t, natural, value))
                continue
            wanted = base + value * step_ticks
            if wanted < natural - step_ticks / 2:  # that place has gone by: the same place in a later bar
                shift = math.ceil((natural - step_ticks / 2 - wanted) / bar_ticks) * bar_ticks
                base += shift
                wanted += shift
            anchors.append((t, wanted, bpm))
        seg_ns = np.array([a[0] for a in anchors], dtype=np.int64)
        seg_tick = np.array([a[1] for a in anchors])
        seg_bpm = np.array([a[2] for a in anchors])

        def to_ticks(ns: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
            i = np.maximum(np.searchsorted(seg_ns, ns, side="right") - 1, 0)
            ticks = seg_tick[i] + (ns - seg_ns[i]) * seg_bpm[i] * per_ns
            return np.maximum(np.rint(ticks), 0).astype(np.int64)

        tempo_map: list[tuple[int, float]] = [(0, bpm0)]
        for _, tick, bpm in anchors[1:]:
            at = max(round(tick), tempo_map[-1][0])
            if bpm == tempo_map[-1][1]:
                continue
            if at == tempo_map[-1][0]:
                tempo_map[-1] = (at, bpm)
            else:
                tempo_map.append((at, bpm))
        return to_ticks, tempo_map

    def close(self) -> None:
        """Write the file (type 1) and remove the spool; idempotent, callable from any thread.

        Raises:
            RtgenError: naming the file, when it cannot be written.
        """
        with self._close_lock:
            if self.closed:
                return
            self.closed = True
            self._full.put(None)
            self._writer.join()
            try:
                self._write_file()
            finally:
                if self._spool is not None:
                    self._spool.close()
                if self._spool_path is not None:
                    with contextlib.suppress(OSError):
                        self._spool_path.unlink()
                self._unspooled.clear()

    def _write_file(self) -> None:
        import mido

        from rtgen.midi.midifile import build_midi, save_atomic

        records = self._records()
        times, words = records[:, 0], records[:, 1]
        source = words >> 32
        is_tempo = source == _SOURCE_TEMPO
        tempi = [
            (int(t), int(w & 0xFFFFFFFF) / _BPM_SCALE) for t, w in zip(times[is_tempo], words[is_tempo], strict=True)
        ]
        is_locate = source == _SOURCE_LOCATE
        locates = [(int(t), int(w & 0xFFFFFFFF)) for t, w in zip(times[is_locate], words[is_locate], strict=True)]
        keep = ~(is_tempo | is_locate)
        times, words, source = times[keep], words[keep], source[keep]
        status = (words >> 16) & 0xFF
        is_on = ((status & KIND_MASK) == NOTE_ON) & ((words & DATA_MASK) > 0)
        first_note_ns = int(times[is_on].min()) if is_on.any() else None
        if len(times):
            last = int(times.max())
            closing = [(_SOURCE_PARTS, ch, p) for ch, p in self.notes.sounding()]
            closing += [(_SOURCE_PLAYER, ch, p) for ch, p in self.player_notes.sounding()]
            if closing:
                extra = np.array(
                    [(src << 32) | (3 << 24) | ((NOTE_OFF | ch) << 16) | (p << 8) for src, ch, p in closing]
                )
                times = np.concatenate([times, np.full(len(extra), last, dtype=np.int64)])
                words = np.concatenate([words, extra])
                source = np.concatenate([source, extra >> 32])
            self.notes.clear()
            self.player_notes.clear()
        to_ticks, tempo_map = self._tick_map(tempi, locates, first_note_ns)
        ticks = to_ticks(times).tolist()
        parts: dict[int, list[tuple[int, mido.Message]]] = {}
        player: list[tuple[int, mido.Message]] = []
        decoded: dict[int, mido.Message | None] = {}  # a session repeats few distinct messages: decode each once
        for tick, word, src in zip(ticks, words.tolist(), source.tolist(), strict=True):
            body = word & 0xFFFFFFFF
            msg = decoded.get(body, _UNDECODED)
            if msg is _UNDECODED:
                data = [(body >> 16) & 0xFF, (body >> 8) & 0x7F, body & 0x7F][: body >> 24]
                try:
                    msg = mido.Message.from_bytes(data)
                except (ValueError, TypeError) as err:
                    log.debug("recorder: dropping malformed message %r: %s", data, err)
                    msg = None
                decoded[body] = msg
            if msg is None:
                continue
            if src == _SOURCE_PLAYER:
                player.append((tick, msg))
            else:
                parts.setdefault((body >> 16) & 0x0F, []).append((tick, msg))
        tracks = [(self.track_names.get(ch, f"channel {ch + 1}"), parts[ch]) for ch in sorted(parts)]
        if player:
            tracks.append((PLAYER_TRACK, player))
        mid = build_midi(
            tracks, tempo_map=tempo_map, time_signature=self.time_signature, ticks_per_beat=self.ticks_per_beat
        )
        save_atomic(mid, self.path, what="session recording")
        log.info("recorded %d events to %s", len(ticks), self.path)

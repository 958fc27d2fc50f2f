"""Timed MIDI events, a note-off book per channel, and the sinks they go to.

The real-time thread owns one :class:`Scheduler`. It pushes the voiced events of
the next step (``step start + step_offset * step + ms_offset``), sends whatever is
due to every sink, and keeps a book of sounding notes per channel so that stop,
panic, tempo/instrument changes, model swaps and shutdown can release exactly
the notes that are sounding (then all-notes-off as a last resort).
"""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from rtgen.io.sinks import Sink
from rtgen.midi.messages import CHANNEL_MASK, CHANNELS, KIND_MASK, NOTE_OFF, NOTE_ON, all_notes_off
from rtgen.midi.notes import NoteTracker
from rtgen.timing.clock import LatenessHistogram, LatenessStats

if TYPE_CHECKING:
    from rtgen.arrange.voicing import NoteEvent

log = logging.getLogger(__name__)


NoteListener = Callable[[str | None, int, int, int], None]
"""Called as ``(part, channel, pitch, velocity)`` for every note-on actually sent."""


class Scheduler:
    """A time-ordered event queue that sends to all sinks at the right time.

    Attributes:
        book: the notes sent and not yet released (:class:`~rtgen.midi.notes.NoteTracker`, counted:
            a note doubled on one channel needs two note-offs before the book lets it go).

    Args:
        sinks: where messages go (MIDI out, synth, recorder, ...).
        now_ns: the time source for stamping sends (``perf_counter_ns`` by default).
        on_note: optional listener for note-ons actually sent (OSC feedback).
        keep_history: record every send error (actual minus scheduled) for benchmarks.
        drop_late_ns: a note-on this late (after a stall) is not played, and its own note-off goes with it:
            a note that comes in tens of milliseconds late sounds like a mistake, a missing one is hardly
            heard. Note-offs and controls are always sent, however late. ``None``: never drop.
    """

    def __init__(
        self,
        sinks: Sequence[Sink],
        *,
        now_ns: Callable[[], int] = time.perf_counter_ns,
        on_note: NoteListener | None = None,
        keep_history: bool = False,
        drop_late_ns: int | None = None,
    ) -> None:
        self.sinks: list[Sink] = list(sinks)
        self.now_ns = now_ns
        self.on_note = on_note
        self.book = NoteTracker()
        self._queue: list[tuple[int, int, tuple[int, ...], str | None]] = []
        self._seq = 0
        # latest scheduled time per (channel, pitch): keeps on/off order per key even when humanize
        # would move a note-off before its own note-on
        self._last_key_time: dict[int, int] = {}
        self.errors = LatenessStats(
            late_threshold_ns=1_000_000, keep_history=keep_history, histogram=LatenessHistogram()
        )
        self.drop_late_ns = drop_late_ns
        self.sent = 0
        self.dropped_late = 0  # note-ons not played because they came too late
        self._dropped_keys: dict[int, int] = {}  # (channel, pitch) -> note-offs still owed to dropped note-ons
        self.dropped_offs = 0
        self.sink_errors = 0
        self.channels_used: set[int] = set()

    # --- scheduling ---------------------------------------------------------
    def add(self, time_ns: int, message: Sequence[int], part: str | None = None) -> None:
        """Queue ``message`` (raw MIDI bytes) to be sent at ``time_ns``."""
        msg = tuple(int(b) for b in message)
        kind = msg[0] & KIND_MASK
        if kind in (NOTE_ON, NOTE_OFF) and len(msg) >= 2:
            key = ((msg[0] & CHANNEL_MASK) << 7) | msg[1]
            last = self._last_key_time.get(key)
            if last is not None and time_ns < last:
                time_ns = last
            self._last_key_time[key] = time_ns
        self._seq += 1
        heapq.heappush(self._queue, (time_ns, self._seq, msg, part))

    def add_notes(self, events: Iterable[NoteEvent], step_start_ns: int, step_ns: float) -> None:
        """Queue voiced note events of one step that starts at ``step_start_ns``."""
        for ev in events:
            t = step_start_ns + round(ev.step_offset * step_ns + ev.ms_offset * 1_000_000)
            if ev.on and ev.velocity > 0:
                msg: tuple[int, ...] = (NOTE_ON | ev.channel, ev.pitch, min(127, max(1, ev.velocity)))
            else:
                msg = (NOTE_OFF | ev.channel, ev.pitch, 0)
            self.add(t, msg, ev.part)

    def next_time(self) -> int | None:
        """Time of the earliest queued event, or None."""
        return self._queue[0][0] if self._queue else None

    def pending(self) -> int:
        """Number of queued events."""
        return len(self._queue)

    def send_due(self, now_ns: int | None = None) -> int:
        """Send every queued event whose time has come. Returns how many were sent."""
        queue = self._queue
        if now_ns is None:
            now_ns = self.now_ns()
        n = 0
        drop = self.drop_late_ns
        while queue and queue[0][0] <= now_ns:
            t, _, msg, part = heapq.heappop(queue)
            sent_at = self.now_ns()
            kind = msg[0] & KIND_MASK
            if kind == NOTE_ON and msg[2] > 0:
                if drop is not None and sent_at - t > drop:
                    self.dropped_late += 1
                    key = ((msg[0] & CHANNEL_MASK) << 7) | msg[1]
                    self._dropped_keys[key] = self._dropped_keys.get(key, 0) + 1
                    continue
            elif kind in (NOTE_OFF, NOTE_ON) and self._dropped_keys and self._owed_off(msg):
                continue
            if self._dispatch(msg, part, sent_at):
                self.errors.add(sent_at - t)
                n += 1
        if not queue:
            self._last_key_time.clear()
        return n

    def _owed_off(self, msg: tuple[int, ...]) -> bool:
        """This note-off belongs to a dropped note-on (swallow it)."""
        key = ((msg[0] & CHANNEL_MASK) << 7) | msg[1]
        owed = self._dropped_keys.get(key, 0)
        if owed <= 0:
            return False
        if owed == 1:
            del self._dropped_keys[key]
        else:
            self._dropped_keys[key] = owed - 1
        return True

    # --- immediate sends ----------------------------------------------------
    def send_now(self, message: Sequence[int], part: str | None = None, *, exclude: Sink | None = None) -> bool:
        """Send ``message`` to every sink (but ``exclude``) right now, through the note-off book."""
        return self._dispatch(tuple(int(b) for b in message), part, self.now_ns(), exclude)

    def _dispatch(self, msg: tuple[int, ...], part: str | None, now: int, exclude: Sink | None = None) -> bool:
        status = msg[0]
        kind = status & KIND_MASK
        channel = status & CHANNEL_MASK
        if kind == NOTE_ON and msg[2] > 0:
            self.book.on(channel, msg[1])
            self.channels_used.add(channel)
            if self.on_note is not None:
                self.on_note(part, channel, msg[1], msg[2])
        elif kind in (NOTE_OFF, NOTE_ON) and not self.book.off(channel, msg[1]):
            self.dropped_offs += 1
            return False
        for sink in self.sinks:
            if sink is exclude:
                continue
            try:
                sink.send(msg, now)
            except Exception as err:  # a failing sink must not stop the music on the others
                self.sink_errors += 1
                if self.sink_errors <= 5 or self.sink_errors % 1000 == 0:
                    log.warning(
                        "sink %s failed to send %s (%d errors so far): %s", sink.name, msg, self.sink_errors, err
                    )
        self.sent += 1
        return True

    # --- releasing notes ----------------------------------------------------
    def clear_pending(self) -> int:
        """Drop every queued event (their note-ons must not sound any more). Returns how many."""
        n = len(self._queue)
        self._queue.clear()
        self._last_key_time.clear()
        self._dropped_keys.clear()
        return n

    def release_all(self, channels: Iterable[int] | None = None) -> int:
        """Drop pending events and send a note-off now for every sounding note.

        Args:
            channels: only these channels (pending events of other channels stay queued).

        Returns:
            The number of note-offs sent.
        """
        if channels is None:
            self.clear_pending()
            wanted = set(range(CHANNELS))
        else:
            wanted = set(channels)
            kept = [e for e in self._queue if (e[2][0] & CHANNEL_MASK) not in wanted or (e[2][0] & KIND_MASK) > NOTE_ON]
            heapq.heapify(kept)
            self._queue = kept
            for key in [k for k in self._dropped_keys if (k >> 7) in wanted]:
                del self._dropped_keys[key]
        n = 0
        for channel, pitch in self.book.notes():
            if channel in wanted:
                while self.book.get(channel, pitch) > 0:
                    self._dispatch((NOTE_OFF | channel, pitch, 0), None, self.now_ns())
                n += 1
        return n

    def stop(self) -> int:
        """Stop: note-offs for every sounding note now, then CC123 (all notes off) on used channels."""
        n = self.release_all()
        for channel in sorted(self.channels_used):
            self._dispatch(all_notes_off(channel), None, self.now_ns())
        return n

    def panic(self) -> int:
        """Panic: release everything, then each sink's own panic (CC123 + CC120 on all channels)."""
        n = self.release_all()
        for sink in self.sinks:
            try:
                sink.panic()
            except Exception as err:
                log.warning("sink %s failed to panic: %s", sink.name, err)
        return n

    def close(self) -> None:
        """Stop, then close every sink (errors are logged, never raised)."""
        self.stop()
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as err:
                log.warning("sink %s failed to close: %s", sink.name, err)

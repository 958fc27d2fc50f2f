"""Hearing the player: the input polled by the loop, its notes, its controls, and the clock it carries.

The player's port is polled (never called back: on JACK rtmidi's thread is the server's real-time thread,
which must never wait for the GIL), fast while it matters and slowly while nobody plays (each poll is a
wake-up). Channel messages go to the tracker (held notes, chords, mapped controls) and, in a listening
mode, their onsets to the next reactive step; system messages go to the clock source.
"""

from __future__ import annotations

import logging

from rtgen.config import PART_NAMES
from rtgen.input.tracker import LEARNED
from rtgen.live.commands import CueBand, Panic, SetMode, SetSwing
from rtgen.live.state import LoopState
from rtgen.midi.messages import SYSTEM

log = logging.getLogger(__name__)

POLL_NS = 1_000_000  # the player's input is polled this often (at most this much added to its latency)
IDLE_POLL_NS = 20_000_000  # ... and this often while nobody plays in autonomous mode (each poll is a wake-up)
# ... and while the player plays along in autonomous mode, where nothing answers their notes at once: the
# recording's time of a note is its poll's (a JACK period already puts up to 5.3 ms between key and poll)
AUTONOMOUS_POLL_NS = 4_000_000
PLAYER_ACTIVE_NS = 4_000_000_000  # the player counts as playing this long after their last channel message
ONSETS_KEPT = 8  # only the latest onsets matter to the next step


class Listening(LoopState):
    """The loop's room for the player's input (see the module docstring)."""

    def _poll(self, now: int) -> None:
        """Drain the clock source's news, the player's input (notes, controls, clock) and the command queue."""
        source = self.source
        due = source.next_poll_ns
        if due is not None and now >= due:
            for ev in source.poll(now, ready=not self.playing or self._step_start is None):
                self._clock_event(ev.kind, ev.step, ev.t_ns)
        q = self.input_queue
        if q is not None:
            for t_ns, msg in q.drain():
                self._input(t_ns, msg)
        self._drain()

    def _poll_interval(self, now: int) -> int:
        """How often to look at the input now: fast while it matters, slower while nobody plays (CPU)."""
        if not self.poll_ns:
            return self.source.idle_poll_ns if not self.playing else 0
        if not self.source.leads or self.thru or self.mode != "autonomous":
            return self.poll_ns
        active = now - self._last_input_ns < PLAYER_ACTIVE_NS
        return max(self.poll_ns, AUTONOMOUS_POLL_NS if active else IDLE_POLL_NS)

    def _input(self, t_ns: int, msg: tuple[int, ...]) -> None:
        status = msg[0] if msg else 0
        if status >= SYSTEM:
            for ev in self.source.feed(msg, t_ns):
                self._clock_event(ev.kind, ev.step, ev.t_ns)
            return
        self._last_input_ns = t_ns
        tracker = self.tracker
        if tracker is None:
            return
        if self.recorder is not None:
            self.recorder.record_input(msg, t_ns)
        if self.thru:
            self.scheduler.send_now(msg, part="player", exclude=self.recorder)
        for control in tracker.feed(t_ns, msg):
            self._control(control.name, control.value)
        onsets = tracker.take_onsets()
        if onsets and self.performer.mode != "autonomous":
            for onset in onsets:
                self._learn_feel(onset.t_ns)
            self._onsets.extend(onsets)
            del self._onsets[:-ONSETS_KEPT]
            if self.performer.conductor.interrupt():
                self._interrupt_answer()

    def _interrupt_answer(self) -> None:
        """The player plays over rtgen's answer: every note rtgen has sounding is released at once."""
        self._discard_pending()
        channels = [self.parts.get(p).channel - 1 for p in PART_NAMES]
        self.scheduler.release_all(channels)
        self.performer.release_all()
        self._plan_next(self._step_start)

    def _control(self, name: str, value: float | str) -> None:
        """A mapped CC from the player's controller (or MIDI learn's news)."""
        if name == LEARNED:  # the CC is mapped already; a failing callback must not stop the loop
            try:
                self._learned(str(value))
            except Exception:
                self.command_errors += 1
                log.exception("MIDI learn: telling about %s failed", value)
        elif name == "panic":
            self._apply(Panic())
        elif name.startswith("band_"):
            self._apply(CueBand(name.removeprefix("band_")))
        elif name == "mode":
            self._apply(SetMode(str(value)))
        elif name == "swing":
            self._apply(SetSwing(float(value)))
        elif name in ("temperature", "top_p", "density"):
            self.box.set_later(**{name: float(value)})

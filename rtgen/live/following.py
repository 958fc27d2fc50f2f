"""Following a clock: the events of a followed source (a DAW's MIDI clock, a Link session) move the loop.

``start``/``continue`` release what sounds and play from the source's position, ``stop`` releases
everything, ``locate`` moves the transport, and ``step`` says when the next step starts. A recording made
while following is located at the first step after each of these (its bar 1 is the bar of the Start's first
tick, or of Link's first bar line; a Continue goes on at the transport's position) and keeps the followed
tempo map, so its bars line up with the DAW's.
"""

from __future__ import annotations

import logging

from rtgen import contract as ct
from rtgen.live.state import LoopState

log = logging.getLogger(__name__)

TEMPO_MAP_BEATS = 1 / 64  # a recording's steps stay this close (in beats) to a followed clock's in its tempo map
TEMPO_CHANGE = 0.01  # a followed tempo this much (relative) off the map's is the source's own change, not jitter


class Following(LoopState):
    """The loop's room for a followed clock's events (see the module docstring)."""

    def _clock_event(self, kind: str, step: int, t_ns: int) -> None:
        """An event of the followed clock."""
        if kind != "step":
            self._tempo_anchor = None  # the recording's tempo map starts a segment at the next step
            self._forget_cues()
        if kind in ("start", "continue"):
            self._discard_pending()
            self.scheduler.release_all()
            self.performer.release_all()
            if kind == "start":
                self._restart = True
            self.transport.locate(step)
            self.playing = True
            self._step_start = None
            self._plan_next(None)
            log.info("transport: %s at step %d", kind, step)
        elif kind == "stop":
            self._discard_pending()
            self.playing = False
            released = self.scheduler.stop()
            self.performer.release_all()
            self._step_start = None
            log.info("transport: stop at step %d, %d notes released", step, released)
        elif kind == "locate":
            self._discard_pending()
            self.transport.locate(step)
            if self.playing:
                self._plan_next(None)
        elif kind == "step" and self.playing:
            if step != self.transport.next_step and (self.pending is None or self.pending.pos.step != step):
                self._discard_pending()
                self.transport.locate(step)
                self._plan_next(None)
                self._tempo_anchor = None  # the grid jumped (Link after a stall): the recording is located again
            self._step_start = t_ns
            self._follow_tempo(step, t_ns)

    def _follow_tempo(self, step: int, t_ns: int) -> None:
        """Keep the recording's tempo map on the grid of the followed clock.

        The first step after a start, a continue, a locate or a jump locates the recording (its grid follows
        the transport's) and starts a segment at the followed tempo. Later, the map's last segment starts at
        an earlier step. When the time it gives this step is more than :data:`TEMPO_MAP_BEATS` off, a new
        segment starts at this step, on its own tick, at the followed tempo. When the source's tempo has
        changed by more than :data:`TEMPO_CHANGE` (a DAW's or a session's tempo change) that is all; else the
        old segment gets the tempo it really had, once the map has been off for half a step of time: a
        step's time is when the loop polled its tick, and the ticks that came while the loop was held up are
        read at once, late, with the next ones on time again (one late poll is not a tempo). The file's bars
        line up with what was played in a DAW, and the jitter of the ticks stays out of the map.
        """
        rec = self.recorder
        if rec is None:
            return
        bpm = self.source.tempo_bpm
        anchor = self._tempo_anchor
        if anchor is None or step <= anchor[0] or t_ns <= anchor[1]:
            rec.locate(step, t_ns)
            rec.set_tempo(float(bpm or rec.tempo), t_ns)
            self._tempo_off = None
            self._tempo_told = bpm is not None
            self._tempo_anchor = (step, t_ns)
            return
        beats = (step - anchor[0]) / ct.STEPS_PER_BEAT
        elapsed_min = (t_ns - anchor[1]) / 60e9
        if abs(elapsed_min * rec.tempo - beats) <= TEMPO_MAP_BEATS:
            self._tempo_off = None
            return
        played = beats / elapsed_min
        if bpm is None or not self._tempo_told or abs(bpm - rec.tempo) <= TEMPO_CHANGE * rec.tempo:
            if self._tempo_off is None:
                self._tempo_off = t_ns
            if t_ns - self._tempo_off < self._step_ns() / 2:
                return
            rec.set_tempo(played, anchor[1])  # the segment's own start: its tempo is replaced
        self._tempo_off = None
        rec.locate(step, t_ns)  # this step on its own tick (the map has it within a fraction of a step)
        rec.set_tempo(float(bpm or played), t_ns)
        self._tempo_told = bpm is not None
        self._tempo_anchor = (step, t_ns)

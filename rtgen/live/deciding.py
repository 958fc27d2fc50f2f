"""Deciding steps: one step ahead, or reactively when the player's notes for it are known.

* A step the conductor does not make *reactive* is decided one step ahead (:meth:`Deciding._plan_next`);
  with a leading clock its events are queued at their exact times at once.
* A *reactive* step (accompany, improvise, listening in call-and-response) waits at its grid time for the
  player (:meth:`Deciding._wait_or_decide`): it is decided at once when the player's onset for it arrives,
  else when the conductor's reactive window has run out, and its on-grid events go out right away.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

from rtgen import contract as ct
from rtgen.generation.conductor import NOBODY, Heard, Plan
from rtgen.live.state import LoopState, Pending

if TYPE_CHECKING:
    from rtgen.generation.engine import Step

log = logging.getLogger(__name__)


class Deciding(LoopState):
    """The loop's room for deciding steps (see the module docstring)."""

    def _plan_next(self, start: int | None) -> None:
        """Decide the next step now, unless the conductor wants to hear the player first."""
        self.pending = None
        if not self.playing:
            return
        pos = self.transport.peek()
        plan = self.performer.plan(pos)
        if plan.reactive:
            return
        before = self.engine.snapshot()
        step = self._decide(self.next_k, plan, NOBODY)
        if step is None:
            return
        queued = start is not None
        if start is not None:
            self.scheduler.add_notes(self._last_events, start, self._step_ns())
        self.pending = Pending(self.next_k, pos, step, self._last_events, queued, before)

    def _replan(self) -> None:
        """Decide the next step again after a change that discarded the one decided ahead."""
        if self.playing and self.pending is None and self._waiting is None:
            self._plan_next(self._step_start if self.source.leads else None)

    def _discard_pending(self) -> None:
        """Forget a step decided ahead (its events must not sound): engine and transport go back before it."""
        pending = self.pending
        self.pending = None
        self._waiting = None
        if pending is None:
            return
        if pending.before is not None:
            with contextlib.suppress(ValueError):  # the model changed in between: nothing to go back to
                self.engine.restore(pending.before)
        self.transport.locate(pending.pos.step)

    def _wait_or_decide(self, plan: Plan, start: int, now: int) -> None:
        """A reactive step has reached its grid time: wait for the player within the window, or decide now.

        With the player's feel learned (``accompany.adapt_window``) the step waits only as long as this
        player's notes land late, and not at all when the player holds a note struck at least a beat ago and
        their notes land on the grid (no onset is due).
        """
        self._waiting = plan
        window = int(plan.window_ms * 1_000_000)
        feel = self.feel
        if feel is not None and window:
            window = feel.held_wait_ns(window) if self._holding_long(start) else feel.wait_ns(window)
        self._decide_by = start + window
        if now >= self._decide_by or self._onset_for_step():
            self._decide_waiting(now)

    def _holding_long(self, start: int) -> bool:
        """The player holds a note (or the pedal does) and struck nothing in the beat before ``start``.

        A beat within half a step: the note and the step's start are stamped when the input is read, through
        JACK on its period, so a note struck exactly a beat before can look a little less than a beat old.
        """
        tracker = self.tracker
        if tracker is None or tracker.melody_note() is None or tracker.last_onset_ns is None:
            return False
        step_ns = self._step_ns()
        return tracker.last_onset_ns <= start - (self.transport.peek().beat_steps - 0.5) * step_ns

    def _learn_feel(self, t_ns: int) -> None:
        """Tell the player's feel where an onset landed: its offset from the nearest grid step known.

        The grid steps known are the last step started and the next one (its start once known: rtgen's
        deadline, a followed clock's tick; else one step after the last). An onset further than half a step
        from both (after a stop or a locate) says nothing about the player's timing.
        """
        feel = self.feel
        last, nxt = self._last_start, self._step_start
        if feel is None or (last is None and nxt is None):
            return
        step_ns = self._step_ns()
        if nxt is None and last is not None:
            nxt = last + int(step_ns)
        offset = min((t_ns - t for t in (last, nxt) if t is not None), key=abs)
        if abs(offset) <= step_ns / 2:
            feel.observe(int(offset))

    def _onset_for_step(self) -> bool:
        """An onset of the player belongs to the waiting step (arrived at most half a step before its start)."""
        if not self._onsets or self._step_start is None:
            return False
        return self._onsets[-1].t_ns >= self._step_start - self._step_ns() / 2

    def _decide_waiting(self, now: int) -> None:
        """Decide the waiting reactive step on what the player did; its events go out at once."""
        plan = self._waiting
        start = self._step_start
        assert plan is not None and start is not None
        self._waiting = None
        self.reactive_decisions += 1
        if self._onset_for_step():
            self.early_decisions += 1
        step = self._decide(self.next_k, plan, self._heard(now))
        if step is not None:
            self.scheduler.add_notes(self._last_events, start, self._step_ns())
            self.scheduler.send_due(self.clock.source.now_ns())
        self._started(step, start)

    def _heard(self, now: int) -> Heard:
        """What the player did for the step being decided (quantised: every onset not yet given to a step; of two
        hands, the melody's onset is the top line's and the left hand's chord is heard apart)."""
        tracker = self.tracker
        if tracker is None:
            return NOBODY
        chord = tracker.chord_token(now)
        chord_tok = ct.CHORD_HOLD if chord == self._last_player_chord else chord
        self._last_player_chord = chord
        left = tracker.left_chord_token(now)
        struck = ct.CHORD_HOLD if left in (ct.CHORD_NC, self._last_left_chord) else left
        self._last_left_chord = left  # a chord struck again after the hand was lifted counts as struck
        poly = tracker.take_frame()
        if self._onsets:
            first = self._onsets[0].t_ns
            self._onsets.clear()
            onset = tracker.melody_onset
            if onset is not None and onset.t_ns >= first:
                return Heard(ct.melody_note_on(onset.pitch), onset.velocity, chord_tok, left, struck, poly,
                             pitch=onset.pitch)  # fmt: skip
        line = tracker.melody_note()
        melody = ct.MEL_HOLD if line is not None else ct.MEL_REST
        return Heard(melody, None, chord_tok, left, struck, poly, pitch=line)

    def _decide(self, k: int, plan: Plan, heard: Heard) -> Step | None:
        """Engine + voicer for clock step ``k`` at the transport's next position; events in ``_last_events``."""
        pos = self.transport.advance()
        if self.pending_model is not None and pos.position == 0:
            self._swap_model_now()
        if self._restart:
            self._restart = False
            self.engine.reset()
        params = self.params
        arranger = self.arranger
        section_start = section_end = False
        if arranger.section is not None or arranger.cued is not None:
            steered = arranger.steer(pos, plan, heard, params)
            if self.mode == "autonomous":  # a player's part is never replaced by the section's memory
                plan, heard, params = steered
            cue = arranger.cue_for(pos)
            if cue is not None:
                section_start, section_end = cue.start, cue.end
                if cue.start and pos.position == 0:
                    self.engine.lookback_floor = self.engine.index  # a new section does not copy the last one
        try:
            step, events = self.performer.perform(
                pos, params, heard, plan, section_start=section_start, section_end=section_end
            )
            if arranger.section is not None:
                arranger.played(pos, step)
        except Exception as err:
            self.engine_errors += 1
            if self.engine_errors <= 3:
                log.exception("engine step %d failed (%d so far); skipping it", k, self.engine_errors)
            if self.feedback is not None:
                self.feedback.error(f"engine step failed: {err}")
            self._last_events = []
            return None
        self._last_events = events
        return step

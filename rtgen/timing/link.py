"""Follow an Ableton Link session on the step grid: its tempo, its bar phase and its start/stop.

:class:`LinkFollower` owns the Link peer (the ``linkpython-extern`` binding of Ableton's own
library: no protocol of ours). The real-time loop asks it two things, the way it asks
:class:`~rtgen.timing.midiclock.ClockFollower`: when to look again (:attr:`LinkFollower.next_poll_ns`)
and, when that time has come, what happened (:meth:`LinkFollower.poll` returns the same
:class:`~rtgen.timing.midiclock.ClockEvent` s: ``start``, ``stop`` and ``step`` with the step's start
time). The loop plays a step at that time exactly as it plays a step of its own clock.

The grid on Link's timeline: step ``L`` is Link beat ``L / steps_per_beat``; the quantum is one
bar of the meter (``bar_steps / steps_per_beat`` quarter notes), so rtgen's bar lines fall where
the session's phase is 0. The piece's step 0 is the bar line it started on.

Time: Link's clock counts microseconds (on Linux ``CLOCK_MONOTONIC_RAW``, which is neither the
base nor exactly the rate of ``time.perf_counter_ns``'s ``CLOCK_MONOTONIC``: NTP slews one and not
the other). :class:`ClockMap` measures the offset between the two at every capture from a
``perf_counter`` / ``micros`` / ``perf_counter`` sandwich, so it never drifts.

Cost: one capture of the session state per step (at :data:`LEAD_NS` before the step, so a tempo
change from a peer is honoured up to that instant), about 1-2 µs with the clock map; while
stopped, one every :data:`IDLE_POLL_NS` to hear a start.

Start/stop sync (``[clock] link_start_stop``, on by default): nothing plays before the session's
transport plays; rtgen starts on the first bar line at or after the session's start time (Link's
"quantized launch": a peer that maps beat 0 to its start begins there as well), and stops at the
session's stop time. ``/rtgen/play`` and ``/rtgen/stop`` start and stop the session. Without it,
rtgen plays from the next bar line of the session at start-up and starts and stops on its own.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

from rtgen.contract import STEPS_PER_BEAT
from rtgen.errors import RtgenError
from rtgen.timing.midiclock import NS_PER_MINUTE, ClockEvent

log = logging.getLogger(__name__)

LEAD_NS: Final = 4_000_000
"""Each step's start time is taken from a capture this long before it."""
IDLE_POLL_NS: Final = 5_000_000
"""While stopped (or while a step announced is still to start), look at the session this often."""
START_GRACE_NS: Final = 15_000_000
"""A session start heard up to this late still plays its first bar line (late) instead of waiting a bar."""
JOIN_LEAD_NS: Final = 20_000_000
"""Joining a session that plays already, the first bar line must be at least this far ahead."""
PLAY_LEAD_NS: Final = 100_000_000
"""``/rtgen/play`` starts the session's transport this far ahead: every peer has time to start on it."""
LATE_JUMP_NS: Final = 50_000_000
"""A step this far in the past (a stall, or a peer that moved the beat) is not played: rtgen relocates."""
WIDE_SANDWICH_NS: Final = 100_000
"""A clock-map sandwich wider than this was preempted (the daemon's take two calls of about 1 µs)."""
KEEP_OFFSET_NS: Final = 1_000_000_000
"""For this long after an accepted measurement a wide one is ignored: the two clocks' rates differ by NTP's slew
(at most 500 ppm, 0.5 ms a second), so a recent narrow offset is still within a microsecond or so."""
_BEAT_EPS: Final = 1e-6  # beats: a bar line this close before a time counts as at it (µs rounding)


class ClockMap:
    """Link's clock against ``perf_counter_ns``: ``link_ns = perf_ns + offset_ns``.

    Args:
        micros: Link's clock (``link.Link.clock().micros``).
        now_ns: the daemon's clock.
        tries: sandwiches per measurement; the narrowest wins (a preempted one is wide).
    """

    def __init__(
        self, micros: Callable[[], int], now_ns: Callable[[], int] = time.perf_counter_ns, *, tries: int = 2
    ) -> None:
        self._micros = micros
        self._now_ns = now_ns
        self._tries = max(1, tries)
        self.offset_ns = 0
        self.width_ns = 0
        """Width of the last accepted sandwich: the uncertainty of :attr:`offset_ns` is half of it plus 0.5 µs."""
        self.rejected = 0
        """Measurements not taken because every sandwich was wide (preempted) and the last offset was recent."""
        self._accepted_ns: int | None = None
        self.measure()

    def measure(self) -> int:
        """Measure the offset again; returns it."""
        best_width = -1
        best = self.offset_ns
        micros, now_ns = self._micros, self._now_ns
        for _ in range(self._tries):
            a = now_ns()
            m = micros()
            b = now_ns()
            width = b - a
            if best_width < 0 or width < best_width:
                best_width = width
                best = m * 1000 + 500 - (a + b) // 2  # micros() truncates: its true instant is 0.5 µs later on average
        now = b
        if best_width > WIDE_SANDWICH_NS and self._accepted_ns is not None and now - self._accepted_ns < KEEP_OFFSET_NS:
            self.rejected += 1  # preempted inside every sandwich: the last offset is far better than this one
            return self.offset_ns
        self.offset_ns = best
        self.width_ns = best_width
        self._accepted_ns = now
        return best

    def to_link_us(self, perf_ns: int) -> int:
        """A ``perf_counter_ns`` time on Link's clock (µs)."""
        return (perf_ns + self.offset_ns) // 1000

    def to_perf_ns(self, link_us: int) -> int:
        """A Link clock time (µs) as ``perf_counter_ns``."""
        return link_us * 1000 - self.offset_ns


class LinkFollower:
    """Joins the Link session and says when each step starts, and when the music starts and stops.

    Args:
        bpm: the tempo proposed to the session if rtgen is its first peer.
        bar_steps: steps in one bar of the meter (the quantum is ``bar_steps / steps_per_beat`` beats).
        steps_per_beat: grid steps per quarter note (one Link beat).
        start_stop_sync: follow (and lead) the session's start/stop.
        now_ns: the daemon's clock (``time.perf_counter_ns``).

    Raises:
        ValueError: a non-positive tempo, bar or grid.
    """

    def __init__(
        self,
        bpm: float,
        bar_steps: int,
        *,
        steps_per_beat: int = STEPS_PER_BEAT,
        start_stop_sync: bool = True,
        now_ns: Callable[[], int] = time.perf_counter_ns,
    ) -> None:
        if not bpm > 0:
            raise ValueError(f"tempo must be > 0, got {bpm}")
        if bar_steps < 1 or steps_per_beat < 1:
            raise ValueError(f"bar_steps and steps_per_beat must be >= 1, got {bar_steps}, {steps_per_beat}")
        self.steps_per_beat = steps_per_beat
        self.bar_steps = bar_steps
        self.quantum = bar_steps / steps_per_beat
        self.start_stop_sync = start_stop_sync
        self._now_ns = now_ns
        self._bpm = float(bpm)
        self._tempo: float | None = None
        self._link: Any | None = None
        self._map: ClockMap | None = None
        self._running = False  # we told the loop "start" and not yet "stop"
        self._local_playing = True  # without start/stop sync: /rtgen/play and /rtgen/stop
        self._origin = 0  # Link step of the piece's step 0
        self._next = 0  # Link step to announce next
        self._next_poll = 0
        self._peers = 0
        self.captures = 0
        """Session-state captures so far."""
        self.capture_max_ns = 0
        """The slowest capture (session state, clock map, reads), in ns."""
        self.capture_total_ns = 0
        self.relocations = 0
        """Times the grid was re-found (a stall, or a peer that moved the beat)."""

    # --- lifetime ----------------------------------------------------------------------------
    def open(self) -> None:
        """Create the Link peer and join the session (multicast on every network interface).

        Raises:
            RtgenError: the binding is not installed.
        """
        try:
            import link
        except ImportError as err:
            raise RtgenError(
                "clock.source = link needs the Ableton Link binding: pip install linkpython-extern"
            ) from err
        peer = link.Link(self._bpm)
        peer.startStopSyncEnabled = self.start_stop_sync
        clock = peer.clock()
        self._map = ClockMap(clock.micros, self._now_ns)
        peer.enabled = True
        self._link = peer
        self._next_poll = self._now_ns()
        log.info(
            "link: joined the session (quantum %g beats, start/stop sync %s)",
            self.quantum,
            "on" if self.start_stop_sync else "off",
        )

    def close(self) -> None:
        """Leave the session (idempotent)."""
        peer = self._link
        self._link = None
        if peer is not None:
            peer.enabled = False

    # --- what the loop reads -------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """True between the ``start`` and the ``stop`` told to the loop."""
        return self._running

    @property
    def tempo_bpm(self) -> float | None:
        """The session's tempo at the last capture (None before the first)."""
        return self._tempo

    @property
    def step_ns(self) -> float:
        """One step at the session's tempo, in ns (the proposed tempo before the first capture)."""
        return NS_PER_MINUTE / ((self._tempo or self._bpm) * self.steps_per_beat)

    @property
    def peers(self) -> int:
        """Other peers in the session at the last capture."""
        return self._peers

    @property
    def next_poll_ns(self) -> int:
        """When :meth:`poll` has something to do next (``perf_counter_ns``)."""
        return self._next_poll

    def stats(self) -> dict[str, Any]:
        """JSON-ready state for ``/rtgen/status``: peers, tempo, playing, and what the captures cost."""
        n = self.captures
        return {
            "peers": self._peers,
            "tempo": self._tempo,
            "playing": self._running,
            "start_stop_sync": self.start_stop_sync,
            "quantum": self.quantum,
            "captures": n,
            "capture_mean_us": round(self.capture_total_ns / n / 1000, 2) if n else None,
            "capture_max_us": round(self.capture_max_ns / 1000, 2),
            "relocations": self.relocations,
            "clock_offset_width_us": self._map.width_ns / 1000 if self._map is not None else None,
            "clock_offset_rejected": self._map.rejected if self._map is not None else 0,
        }

    def feed(self, message: Sequence[int], t_ns: int) -> list[ClockEvent]:
        """MIDI clock and transport messages are not followed when Link is the clock: nothing happens."""
        return []

    # --- the real-time loop's call -------------------------------------------------------------
    def poll(self, now_ns: int, *, ready: bool = True) -> list[ClockEvent]:
        """Look at the session when :attr:`next_poll_ns` has come.

        Args:
            now_ns: the current ``perf_counter_ns``.
            ready: the loop has started the last step announced (or is stopped): the next may be announced.

        Returns:
            ``start`` (the piece's next step) then ``step`` (that step, its start time); ``step`` for each
            step after; ``stop`` when the session stops (or the grid jumped: a ``step`` with another number).
        """
        if now_ns < self._next_poll or self._link is None:
            return []
        if not self._running and not self.start_stop_sync and not self._local_playing:
            self._next_poll = now_ns + IDLE_POLL_NS  # stopped on our own: nothing to hear from the session
            return []
        t0 = self._now_ns()
        state = self._capture()
        events = self._step_events(state, now_ns, ready)
        spent = self._now_ns() - t0
        self.capture_total_ns += spent
        if spent > self.capture_max_ns:
            self.capture_max_ns = spent
        return events

    def _capture(self) -> Any:
        peer = self._link
        assert peer is not None and self._map is not None
        self._map.measure()
        state = peer.captureSessionState()
        self.captures += 1
        tempo = state.tempo()
        if tempo != self._tempo:
            if self._tempo is not None:
                log.info("link: tempo %.2f", tempo)
            self._tempo = tempo
        peers = peer.numPeers()
        if peers != self._peers:
            log.info("link: %d peer%s in the session", peers, "" if peers == 1 else "s")
            self._peers = peers
        return state

    def _step_events(self, state: Any, now_ns: int, ready: bool) -> list[ClockEvent]:
        playing = bool(state.isPlaying()) if self.start_stop_sync else self._local_playing
        if not self._running:
            if not playing:
                self._next_poll = now_ns + IDLE_POLL_NS
                return []
            return self._start(state, now_ns)
        if not playing:
            stop_ns = self._perf(state.timeForIsPlaying()) if self.start_stop_sync else now_ns
            if stop_ns <= now_ns:
                return self._stop(now_ns)
            if stop_ns <= self._time_of(state, self._next):  # the next step is not played: stop on time
                self._next_poll = stop_ns
                return []
        if not ready:
            self._next_poll = now_ns + IDLE_POLL_NS
            return []
        k = self._next
        t = self._time_of(state, k)
        if t < now_ns - LATE_JUMP_NS or t > now_ns + LEAD_NS + 2 * self.step_ns:
            k = self._relocate(state, now_ns)
            t = self._time_of(state, k)
        self._next = k + 1
        self._next_poll = self._time_of(state, k + 1) - LEAD_NS
        return [ClockEvent("step", k - self._origin, t)]

    def _start(self, state: Any, now_ns: int) -> list[ClockEvent]:
        earliest = now_ns + JOIN_LEAD_NS
        if self.start_stop_sync:
            start_ns = self._perf(state.timeForIsPlaying())
            if start_ns >= now_ns - START_GRACE_NS:  # a start just now (heard late) or ahead: from its bar line
                earliest = start_ns
        k = self._bar_line_at_or_after(state, earliest)
        self._origin = k
        self._running = True
        t = self._time_of(state, k)
        self._next = k + 1
        self._next_poll = self._time_of(state, k + 1) - LEAD_NS
        log.info("link: playing from the bar line in %.0f ms (tempo %.2f)", (t - now_ns) / 1e6, self._tempo or 0)
        return [ClockEvent("start", 0, now_ns), ClockEvent("step", 0, t)]

    def _stop(self, now_ns: int) -> list[ClockEvent]:
        self._running = False
        self._next_poll = now_ns + IDLE_POLL_NS
        log.info("link: the session stopped")
        return [ClockEvent("stop", self._next - self._origin, now_ns)]

    def _relocate(self, state: Any, now_ns: int) -> int:
        """The grid moved under us: the first step at or after ``now + LEAD`` (same bar phase for the piece)."""
        self.relocations += 1
        k = self._step_at_or_after(state, now_ns + LEAD_NS)
        if k < self._origin:
            self._origin = k - (k - self._origin) % self.bar_steps
        log.warning("link: the grid moved (a stall or a peer's jump): resuming %d steps on", k - self._next)
        return k

    # --- grid arithmetic ---------------------------------------------------------------------------
    def _perf(self, link_us: int) -> int:
        assert self._map is not None
        return self._map.to_perf_ns(int(link_us))

    def _time_of(self, state: Any, k: int) -> int:
        """Start of Link step ``k`` as ``perf_counter_ns``."""
        return self._perf(state.timeAtBeat(k / self.steps_per_beat, self.quantum))

    def _step_at_or_after(self, state: Any, t_ns: int) -> int:
        assert self._map is not None
        beat = state.beatAtTime(self._map.to_link_us(t_ns), self.quantum)
        return math.ceil(beat * self.steps_per_beat - _BEAT_EPS)

    def _bar_line_at_or_after(self, state: Any, t_ns: int) -> int:
        k = self._step_at_or_after(state, t_ns)
        return -(-k // self.bar_steps) * self.bar_steps

    # --- proposals to the session (from the real-time thread, between steps) ----------------------
    def propose_tempo(self, bpm: float, now_ns: int) -> None:
        """Propose ``bpm`` to the session from now (every peer follows; the next capture shows it)."""
        peer = self._link
        if peer is None or self._map is None:
            self._bpm = float(bpm)
            return
        state = peer.captureSessionState()
        state.setTempo(float(bpm), self._map.to_link_us(now_ns))
        peer.commitSessionState(state)
        self._next_poll = min(self._next_poll, now_ns)  # the next step's time from the new tempo
        log.info("link: proposed tempo %.2f", bpm)

    def request_start(self, now_ns: int) -> None:
        """Start: with start/stop sync the session's transport (on a bar line, in phase); else rtgen alone."""
        if not self.start_stop_sync:
            self._local_playing = True
            self._next_poll = now_ns
            return
        peer = self._link
        if peer is None or self._map is None:
            return
        state = peer.captureSessionState()
        if not state.isPlaying():
            at = self._map.to_link_us(now_ns + PLAY_LEAD_NS)
            state.setIsPlayingAndRequestBeatAtTime(True, at, 0.0, self.quantum)
            peer.commitSessionState(state)
        self._next_poll = now_ns

    def request_stop(self, now_ns: int) -> None:
        """Stop now (the loop has released its notes): with start/stop sync, the session's transport too."""
        self._running = False
        self._next_poll = now_ns + IDLE_POLL_NS
        if not self.start_stop_sync:
            self._local_playing = False
            return
        peer = self._link
        if peer is None or self._map is None:
            return
        state = peer.captureSessionState()
        if state.isPlaying():
            state.setIsPlaying(False, self._map.to_link_us(now_ns))
            peer.commitSessionState(state)

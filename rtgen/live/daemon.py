"""The real-time daemon: wiring of the stages, and the one real-time loop that runs them.

Data path (docs/internals.md §6)::

    MIDI in ─► polled port ─► PlayerTracker ─┐       clock source: StepClock | ClockFollower | LinkFollower
                                            ▼                       │
    OSC / CC ─► params, typed commands ─► Player loop ◄─────────────┘
                                            │  Transport (position) ─► Performer
                                            │     (conductor ─► engine ─► voicer)
                                            ▼
                                        Scheduler ─► MIDI out, synth, recorder, OSC feedback

One real-time thread (the main thread, so signals reach it directly) runs
:meth:`Player.run`: it sleeps until the next due event, step start or reactive
deadline (then spins the last millisecond), drains the player's input and the
command queue, sends what is due, and decides steps:

* a step the conductor does not make *reactive* is decided one step ahead and its
  events are queued at their exact times;
* a *reactive* step (accompany, improvise, listening in call-and-response) is
  decided when the player's notes for it are known: at its grid time plus the
  reactive window, or at once when the player's onset arrives inside it; its
  on-grid events go out right away (within the inference time of the decision).

Other threads never touch the engine, the voicer or the sinks: OSC handlers swap
the immutable :class:`~rtgen.generation.engine.Params` (a plain attribute assignment) or put a
typed command on a :class:`queue.SimpleQueue`; rtmidi's thread only enqueues input.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import os
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rtgen import contract as ct
from rtgen import logs
from rtgen.config import MODES, PART_NAMES, Config, PartConfig, PartsConfig
from rtgen.errors import AudioError, PortError, RtgenError, SoundfontError
from rtgen.generation.conductor import NOBODY, Heard, Plan, make_conductor
from rtgen.io.scheduler import Scheduler, SinkLike
from rtgen.io.sinks import CONTROL_CHANGE, PROGRAM_CHANGE
from rtgen.live import loaders
from rtgen.midi.midifile import pan_cc, volume_cc
from rtgen.patterns.styles import style_names
from rtgen.timing.clock import (
    FakeTime,
    LatenessHistogram,
    RealTime,
    SpinTuner,
    StepClock,
    realtime_loop,
)
from rtgen.timing.link import IDLE_POLL_NS as LINK_IDLE_POLL_NS
from rtgen.timing.link import LinkFollower
from rtgen.timing.transport import Position, Transport

if TYPE_CHECKING:
    from rtgen.arrange.performer import Performer
    from rtgen.arrange.voicing import NoteEvent, Voicer
    from rtgen.control.osc import Feedback, OscServer
    from rtgen.control.web.server import WebServer
    from rtgen.generation.engine import Engine, EngineState, Params, Step
    from rtgen.generation.model import Model, StepBinding
    from rtgen.input.tracker import InputQueue, PlayerTracker
    from rtgen.io.ports import JackWatch, MidiInput
    from rtgen.io.sinks import RecorderSink
    from rtgen.timing.midiclock import ClockFollower

log = logging.getLogger(__name__)

START_LEAD_NS = 100_000_000  # the first step starts this long after start-up: room for the first inference
MAX_WAIT_NS = 250_000_000  # wake at least this often, even with nothing due
MIDI_CLOCK = 0xF8
POLL_NS = 1_000_000  # the player's input is polled this often (at most this much added to its latency)
IDLE_POLL_NS = 20_000_000  # ... and this often while nobody plays in autonomous mode (each poll is a wake-up)
PLAYER_ACTIVE_NS = 4_000_000_000  # the player counts as playing this long after their last channel message
TEMPO_MAP_BEATS = 1 / 64  # a recording's steps stay this close (in beats) to a followed clock's in its tempo map
SKIP_AHEAD_NS = 1_000_000_000  # a stall longer than this is not caught up step by step: the loop jumps to now
COARSE_OUTPUT_NS = 1_000_000  # outputs this coarse play a note at their next period, however late in one it came
COARSE_SPIN_NS = 200_000  # ... so the loop spins only this long before a deadline for them (holding the GIL then)
JACK_RETRY_S = 0.5  # while the JACK server is gone, look for it again this often
JACK_REOPEN_S = 10.0  # the server is back: keep trying to reopen the ports this long, then give up and exit
JACK_STUCK_S = 2.0  # an output whose waiting messages the server has not taken for this long is reopened


class _StalePortsError(Exception):
    """Reopened ports that libjack will never let the server run (see :mod:`rtgen.io.rtmidijack`)."""


class NullSink:
    """A sink that drops everything (benchmarks)."""

    name = "null"

    def send(self, message: Sequence[int], time_ns: int) -> None:
        """Drop ``message``."""

    def panic(self) -> None:
        """Nothing to silence."""

    def close(self) -> None:
        """Nothing to close."""


# --- typed commands (any thread -> the real-time thread) -----------------------------------------
@dataclass(frozen=True)
class Play:
    """Start playing from the top of a fresh piece (internal clock)."""


@dataclass(frozen=True)
class Stop:
    """Stop: every sounding note released now."""


@dataclass(frozen=True)
class Panic:
    """Release everything, then all-notes-off and all-sound-off on every channel; keep playing."""


@dataclass(frozen=True)
class SetTempo:
    """Tempo in BPM from the next undecided step on."""

    bpm: float


@dataclass(frozen=True)
class SetPart:
    """Change one part's program, volume or pan (None = unchanged)."""

    part: str
    program: int | None = None
    volume: float | None = None
    pan: float | None = None


@dataclass(frozen=True)
class SetStyle:
    """Play a part in another style (see :mod:`rtgen.patterns.styles`): its notes are released now, the style starts at
    its next onset."""

    part: str
    style: str


@dataclass(frozen=True)
class SetPartEnabled:
    """Mute or unmute a part: muting releases its notes now (real note-offs) and drops its notes decided ahead."""

    part: str
    enabled: bool


@dataclass(frozen=True)
class SetSeed:
    """Re-seed: a fresh piece from the next step (bar lines stay where the transport has them)."""

    seed: int


@dataclass(frozen=True)
class SetSwing:
    """Swing amount 0..0.75."""

    swing: float


@dataclass(frozen=True)
class SetMode:
    """Switch to another conductor (mode); nothing is left sounding from parts the new mode does not play."""

    mode: str


@dataclass(frozen=True)
class SwapModel:
    """A loaded model to switch to at the next bar line, with its binding to the engine made ahead."""

    model: Model
    steps: StepBinding | None = None


@dataclass(frozen=True)
class UseSoundfont:
    """Switch the synth to a soundfont already loaded (off the real-time thread)."""

    synth: Any
    sfid: int
    path: Path


@dataclass(frozen=True)
class SetSection:
    """Cue the song-form section ``name``: it starts at the next phrase boundary (or bar line, ``[form] cue``)."""

    name: str


@dataclass(frozen=True)
class RecordStart:
    """Start recording into a new recorder sink."""

    sink: RecorderSink


@dataclass(frozen=True)
class RecordStop:
    """Stop recording; ``done`` gets the detached recorder (to be closed off the real-time thread)."""

    done: Callable[[RecorderSink | None], None] | None = None


Command = (
    Play | Stop | Panic | SetTempo | SetPart | SetStyle | SetPartEnabled | SetSeed | SetSwing | SetMode | SwapModel
    | UseSoundfont | RecordStart | RecordStop | SetSection
)  # fmt: skip


@dataclass
class _Pending:
    """A step decided ahead: its position, engine result, events, and the engine state before it."""

    k: int
    pos: Position
    step: Step
    events: list[NoteEvent]
    queued: bool  # events already in the scheduler (internal clock)
    before: EngineState | None


class Player:
    """The real-time loop. Everything here runs on one thread; others only call the thread-safe methods.

    Args:
        engine: the generation engine (owned by this loop from now on).
        voicer: turns steps into note events.
        scheduler: timed events, note-off book, sinks.
        clock: step deadlines at the tempo (the internal clock source; with ``follower`` only its tempo is used).
        params: the initial generation parameters.
        parts: the initial parts (channels, programs, volumes, pans).
        feedback: OSC feedback (beat, chord, note), or None.
        mode: the initial mode (see :mod:`rtgen.generation.conductor`).
        config: the whole configuration (accompany / call-and-response / input settings), or None for defaults.
        tracker: the player's input tracker (None: nobody to listen to).
        input_queue: the player's messages: a polled :class:`~rtgen.io.ports.MidiInput` (the daemon's), or an
            :class:`~rtgen.input.tracker.InputQueue` fed by a callback; drained on every loop iteration.
        follower: follow an external MIDI clock (steps start on its ticks; nothing plays before Start), or an
            Ableton Link session (:class:`~rtgen.timing.link.LinkFollower`: steps start on its grid).
        clock_out: sinks that get 24-ppqn clock, Start, Stop and SPP (lead a DAW).
        thru: echo the player's channel messages to the live sinks.
    """

    def __init__(
        self,
        engine: Engine,
        voicer: Voicer,
        scheduler: Scheduler,
        clock: StepClock,
        params: Params,
        parts: PartsConfig,
        *,
        feedback: Feedback | None = None,
        mode: str = "autonomous",
        config: Config | None = None,
        tracker: PlayerTracker | None = None,
        input_queue: InputQueue | MidiInput | None = None,
        follower: ClockFollower | LinkFollower | None = None,
        clock_out: Sequence[SinkLike] = (),
        thru: bool = False,
    ) -> None:
        from rtgen.arrange.form import Arranger
        from rtgen.arrange.performer import Performer

        self.config = config or Config()
        self.engine = engine
        self.voicer = voicer
        self.scheduler = scheduler
        self.clock = clock
        self.params = params  # swapped by other threads, read once per step here
        self._params_lock = threading.Lock()  # serialises the threads that set params (never the real-time one)
        self._param_changes: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self._param_worker: threading.Thread | None = None
        self.parts = parts
        self.feedback = feedback
        self.tracker = tracker
        self.input_queue = input_queue
        self.follower = follower
        self.link = follower if isinstance(follower, LinkFollower) else None
        self.clock_out = list(clock_out)
        self.thru = thru
        self.transport = Transport(params.time_signature)
        self.performer: Performer = Performer(engine, voicer, self._conductor(mode), parts)
        self.commands: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self.wake = threading.Event()
        self.stop_requested = threading.Event()
        self.playing = follower is None  # following a MIDI clock, nothing plays before Start
        self.swing = float(getattr(voicer, "swing", 0.0))
        self.next_k = 0  # the clock step whose start comes next
        self.pending: _Pending | None = None
        self.current: Step | None = None
        self.bar = 0
        self.beat = 0
        self.chord_name = "N.C."
        self.engine_errors = 0
        self.pending_model: Model | None = None
        self.pending_steps: StepBinding | None = None
        self.model_name = getattr(getattr(engine, "model", None), "name", "?")
        self.on_model_swapped: Callable[[Model], None] | None = None
        self.recorder: RecorderSink | None = None
        self.reactive_decisions = 0
        self.command_errors = 0
        self.spin_tuner: SpinTuner | None = None  # the loop's, while it runs
        # the finest time grid of the outputs (a JACK period, an audio buffer; 0: they send at once): from
        # COARSE_OUTPUT_NS up, spinning up to a millisecond to send sooner moves no note and only burns CPU
        self.output_quantum_ns = 0
        self.fixed_spin_ns: int | None = None  # the spin while the outputs are coarse (no tuner then)
        self.skipped_steps = 0  # steps jumped over after a long stall (the bar lines stay on the grid)
        self.early_decisions = 0  # reactive steps decided by the player's onset before the window ran out
        self._onsets: list[Any] = []  # the player's onsets not yet given to a step
        self._last_player_chord = ct.CHORD_NC
        self._restart = False
        self._step_start: int | None = None  # start of step next_k once known (MIDI clock: its tick)
        self._waiting: Plan | None = None  # a reactive step waiting for the player
        self._decide_by = 0
        self._ticks: deque[int] = deque()  # clock-out tick times
        self._clock_running = False
        self._midi_step_ns = clock.step_ns
        self.poll_ns = POLL_NS if input_queue is not None else 0
        self._tempo_anchor: tuple[int, int] | None = None  # (step, time) where the recording's tempo segment starts
        self._last_input_ns = -PLAYER_ACTIVE_NS  # the player's latest channel message (fast polling after it)
        form = self.config.form
        self.arranger = Arranger(seed=int(getattr(engine, "seed", 0)), vary=form.vary, cue=form.cue)
        self.section: str | None = None  # the song-form section playing (None until one is cued)
        self.section_bar = 0  # the bar it started on (0-based)

    @property
    def mode(self) -> str:
        """The current mode."""
        return self.performer.mode

    def _conductor(self, mode: str) -> Any:
        cfg = self.config
        return make_conductor(mode, cfg.accompany, cfg.call_response, cfg.improvise)

    # --- thread-safe control (any thread) ------------------------------------------------------
    def command(self, cmd: Command, *, urgent: bool = False) -> None:
        """Queue a command for the real-time thread (``urgent`` wakes it now instead of at the next event)."""
        self.commands.put(cmd)
        if urgent:
            self.wake.set()

    def request_stop(self) -> None:
        """Ask the loop to finish (signal-safe): it releases every note and returns."""
        self.stop_requested.set()
        self.wake.set()

    def set_params(self, **changes: Any) -> None:
        """Swap in a new immutable Params with ``changes`` (read at the next step); not on the real-time thread.

        The masks of the new parameters are built here, on the caller's thread, before they are published.
        """
        with self._params_lock:
            params = dataclasses.replace(self.params, **changes)
            prepare = getattr(self.engine, "prepare", None)
            if prepare is not None:
                prepare(params)
            self.params = params

    def _set_params_later(self, **changes: Any) -> None:
        """:meth:`set_params` from the real-time thread: the work is handed to a helper thread."""
        self._param_changes.put(changes)
        if self._param_worker is None or not self._param_worker.is_alive():
            self._param_worker = threading.Thread(target=self._apply_param_changes, name="rtgen-params", daemon=True)
            self._param_worker.start()

    def _apply_param_changes(self) -> None:
        while True:
            changes = self._param_changes.get()
            while True:  # a fader sweep: only the latest value of each control matters
                try:
                    changes.update(self._param_changes.get_nowait())
                except queue.Empty:
                    break
            try:
                self.set_params(**changes)
            except Exception:  # a bad value must not kill the worker
                log.exception("could not apply %s", changes)

    @property
    def spin_ns(self) -> int | None:
        """How long the loop spins before a deadline now (None: it has not run, or never spins)."""
        return self.spin_tuner.spin_ns if self.spin_tuner is not None else self.fixed_spin_ns

    # --- the loop ------------------------------------------------------------------------------
    def run(self, duration_s: float = 0.0, *, start_ns: int | None = None) -> None:
        """Play until :meth:`request_stop` or ``duration_s`` seconds (0 = no limit), then release all notes."""
        clock = self.clock
        source = clock.source
        spin_ns = getattr(source, "spin_ns", 0)
        fake = isinstance(source, FakeTime)
        coarse = self.output_quantum_ns >= COARSE_OUTPUT_NS
        if coarse:
            spin_ns = min(spin_ns, COARSE_SPIN_NS)
        self.fixed_spin_ns = spin_ns if coarse else None
        tuner = SpinTuner(high_ns=max(spin_ns, 200_000)) if spin_ns and not fake and not coarse else None
        self.spin_tuner = tuner
        # before the clock starts: in a big process (a test suite, a host) a full collection takes a second
        gc.collect()
        gc.freeze()  # objects made so far live for the whole run: keep the collector from walking them
        t0 = clock.start(start_ns if start_ns is not None else source.now_ns() + START_LEAD_NS)
        end_ns = t0 + int(duration_s * 1e9) if duration_s > 0 else None
        sched = self.scheduler
        if self.playing and self.follower is None:
            self._step_start = t0
            self._start_clock_out(t0)
            self._plan_next(t0)
        try:
            now = source.now_ns()
            while not self.stop_requested.is_set():
                target = self._next_target(end_ns)
                if fake:
                    now = source.wait_until(target)
                elif (poll := self._poll_interval(now)) and target - (now := source.now_ns()) > poll + spin_ns:
                    self.wake.wait(poll / 1e9)  # nothing due yet: only look at the input
                    self.wake.clear()
                    woke = source.now_ns()
                    if tuner is not None:
                        tuner.observe(woke - now - poll)
                        spin_ns = tuner.spin_ns
                    now = woke
                else:
                    now = source.now_ns()
                    sleep_ns = min(target - now - spin_ns, MAX_WAIT_NS)
                    if sleep_ns > 0:
                        self.wake.wait(sleep_ns / 1e9)
                        self.wake.clear()
                        woke = source.now_ns()
                        if tuner is not None:
                            tuner.observe(woke - now - sleep_ns)
                            spin_ns = tuner.spin_ns
                    now = source.now_ns()
                    if target - now <= spin_ns:
                        while now < target:
                            now = source.now_ns()
                if end_ns is not None and now >= end_ns:
                    break
                sched.send_due(now)  # first: what is due goes out before anything else is looked at
                self._send_ticks(now)
                self._poll(now)
                self._advance(now)
        finally:
            self._drain_final()
            self._stop_clock_out()
            sched.stop()
            gc.unfreeze()

    def _next_target(self, end_ns: int | None) -> int:
        target = self.clock.source.now_ns() + MAX_WAIT_NS
        nt = self.scheduler.next_time()
        if nt is not None and nt < target:
            target = nt
        if self._waiting is not None:
            target = min(target, self._decide_by)
        elif self.playing and self._step_start is not None:
            target = min(target, self._step_start)
        if self._ticks:
            target = min(target, self._ticks[0])
        if self.link is not None and self.playing and self._step_start is None:
            target = min(target, self.link.next_poll_ns)  # the capture that announces the next step
        if end_ns is not None and end_ns < target:
            target = end_ns
        return target

    def _advance(self, now: int) -> None:
        """Start the next step when its time has come; decide a waiting reactive step when it may."""
        if self._waiting is not None:
            if now >= self._decide_by or self._onset_for_step():
                self._decide_waiting(now)
            return
        start = self._step_start
        if not self.playing or start is None or now < start:
            return
        if self.follower is None and now - start > SKIP_AHEAD_NS:
            start = self._skip_ahead(now, start)
        self.clock.stats.add(now - start)
        pending = self.pending
        if pending is not None and pending.k == self.next_k:
            if not pending.queued:  # MIDI clock: the step's tick has come, queue on it
                self.scheduler.add_notes(pending.events, start, self._step_ns())
                self.scheduler.send_due(now)
            self.pending = None
            self._started(pending.step, start)
            return
        plan = self.performer.plan(self.transport.peek())
        if plan.reactive:
            self._waiting = plan
            self._decide_by = start + int(plan.window_ms * 1_000_000)
            if now >= self._decide_by or self._onset_for_step():
                self._decide_waiting(now)
            return
        step = self._decide(self.next_k, plan, NOBODY)  # a prepared step failed or was discarded
        if step is not None:
            self.scheduler.add_notes(self._last_events, start, self._step_ns())
            self.scheduler.send_due(now)
            self._started(step, start)
        else:
            self._started(None, start)

    def _skip_ahead(self, now: int, start: int) -> int:
        """After a long stall (a suspended laptop, a frozen machine) resume at the step due now.

        Whatever sounded before the stall is released; the steps in between are not computed (that would
        be a burst of silent work); the transport moves past them, so bar lines and the clock grid stay
        where they were. Returns the new step start.
        """
        missed = int((now - start) // self._step_ns())
        self._discard_pending()
        self.scheduler.release_all()
        self._release_voicer()
        for _ in range(missed):
            self.transport.advance()
        self.next_k += missed
        self.skipped_steps += missed
        self._ticks.clear()
        log.warning("stalled for %.0f ms: skipped %d steps, resuming on the grid", (now - start) / 1e6, missed)
        self._step_start = self.clock.deadline(self.next_k)
        return self._step_start

    def _onset_for_step(self) -> bool:
        """An onset of the player belongs to the waiting step (arrived at most half a step before its start)."""
        if not self._onsets or self._step_start is None:
            return False
        return self._onsets[-1].t_ns >= self._step_start - self._step_ns() / 2

    def _decide_waiting(self, now: int) -> None:
        plan = self._waiting
        start = self._step_start
        assert plan is not None and start is not None
        self._waiting = None
        self.reactive_decisions += 1
        if now < self._decide_by:
            self.early_decisions += 1
        step = self._decide(self.next_k, plan, self._heard(now))
        if step is not None:
            self.scheduler.add_notes(self._last_events, start, self._step_ns())
            self.scheduler.send_due(self.clock.source.now_ns())
        self._started(step, start)

    def _heard(self, now: int) -> Heard:
        """What the player did for the step being decided (quantised: every onset not yet given to a step)."""
        tracker = self.tracker
        if tracker is None:
            return NOBODY
        chord = tracker.chord_token(now)
        chord_tok = ct.CHORD_HOLD if chord == self._last_player_chord else chord
        self._last_player_chord = chord
        if self._onsets:
            last = self._onsets[-1]
            self._onsets.clear()
            return Heard(ct.melody_note_on(last.pitch), last.velocity, chord_tok)
        melody = ct.MEL_HOLD if tracker.melody_note() is not None else ct.MEL_REST
        return Heard(melody, None, chord_tok)

    def _step_ns(self) -> float:
        if self.follower is not None:
            return self.follower.step_ns
        return self.clock.step_ns

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

    def _started(self, step: Step | None, start: int) -> None:
        """Step ``next_k`` has started at ``start``: feedback, then plan the one after."""
        if step is not None:
            self._tick(step)
        self.next_k += 1
        self._drain()  # commands that came in during this step apply to the next one
        if self.follower is None:
            nxt = self.clock.deadline(self.next_k)
            self._step_start = nxt
            self._queue_ticks(nxt)
            self._plan_next(nxt)
        else:
            self._step_start = None  # the next tick says when
            self._plan_next(None)

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
        self.pending = _Pending(self.next_k, pos, step, self._last_events, queued, before)

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

    def _tick(self, step: Step) -> None:
        """A step has started: state for status and OSC feedback (beat, chord)."""
        self.current = step
        self.bar = step.bar
        beat_steps = max(1, step.beat_steps)
        self.beat = step.position // beat_steps
        fb = self.feedback
        section = self.arranger.section
        if section is not None and (section != self.section or self.arranger.occurrence_bar != self.section_bar):
            self.section, self.section_bar = section, self.arranger.occurrence_bar
            log.info("section %s from bar %d", section, self.section_bar + 1)
            if fb is not None and fb.subscribers:
                fb.section(section, self.section_bar + 1)
        name = step.chord_name
        if fb is not None and fb.subscribers:
            if step.position % beat_steps == 0:
                fb.beat(step.bar + 1, self.beat + 1)
            if name != self.chord_name:
                fb.chord(name)
        self.chord_name = name

    # --- the player's input ----------------------------------------------------------------------
    def _poll(self, now: int) -> None:
        """Drain the player's input (notes, controls, clock), the Link session's news and the command queue."""
        link = self.link
        if link is not None and now >= link.next_poll_ns:
            for ev in link.poll(now, ready=not self.playing or self._step_start is None):
                self._clock_event(ev.kind, ev.step, ev.t_ns)
        q = self.input_queue
        if q is not None:
            for t_ns, msg in q.drain():
                self._input(t_ns, msg)
        self._drain()

    def _poll_interval(self, now: int) -> int:
        """How often to look at the input now: fast while it matters, slower while nobody plays (CPU)."""
        if not self.poll_ns:
            # stopped on Link: listen for the session's start without spinning up to every poll
            return LINK_IDLE_POLL_NS if self.link is not None and not self.playing else 0
        if self.follower is not None or self.thru or self.mode != "autonomous":
            return self.poll_ns
        return self.poll_ns if now - self._last_input_ns < PLAYER_ACTIVE_NS else max(self.poll_ns, IDLE_POLL_NS)

    def _input(self, t_ns: int, msg: tuple[int, ...]) -> None:
        status = msg[0] if msg else 0
        if status < 0xF0:
            self._last_input_ns = t_ns
        if status >= 0xF0:
            if self.follower is not None and status in (0xF8, 0xFA, 0xFB, 0xFC, 0xF2):
                for ev in self.follower.feed(msg, t_ns):
                    self._clock_event(ev.kind, ev.step, ev.t_ns)
            return
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
            self._onsets.extend(onsets)
            del self._onsets[:-8]  # bounded: only the latest onsets matter to the next step
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
        """A mapped CC from the player's controller."""
        if name == "panic":
            self._apply(Panic())
        elif name == "mode":
            self._apply(SetMode(str(value)))
        elif name == "swing":
            self._apply(SetSwing(float(value)))
        elif name in ("temperature", "top_p", "density"):
            self._set_params_later(**{name: float(value)})

    def _clock_event(self, kind: str, step: int, t_ns: int) -> None:
        """An event of the followed MIDI clock."""
        if kind != "step":
            self._tempo_anchor = None  # the recording's tempo map starts a segment at the next step
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
            self._step_start = t_ns
            self._follow_tempo(step, t_ns)

    def _follow_tempo(self, step: int, t_ns: int) -> None:
        """Keep the recording's tempo map on the grid of a followed clock (MIDI clock, Link).

        The map's last segment starts at an earlier step. When the time it gives this step is more than
        :data:`TEMPO_MAP_BEATS` off, that segment gets the tempo it really had (this step lands on its beat)
        and a new one starts here at the followed tempo. The file's bars line up with what was played in a
        DAW, and the jitter of the ticks stays out of the map.
        """
        rec, follower = self.recorder, self.follower
        if rec is None or follower is None:
            return
        bpm = follower.tempo_bpm
        anchor = self._tempo_anchor
        if anchor is None or step <= anchor[0] or t_ns <= anchor[1]:
            rec.set_tempo(float(bpm or rec.tempo), t_ns)
            self._tempo_anchor = (step, t_ns)
            return
        beats = (step - anchor[0]) / ct.STEPS_PER_BEAT
        elapsed_min = (t_ns - anchor[1]) / 60e9
        if abs(elapsed_min * rec.tempo - beats) <= TEMPO_MAP_BEATS:
            return
        played = beats / elapsed_min
        rec.set_tempo(played, anchor[1])  # the segment's own start: its tempo is replaced
        rec.set_tempo(float(bpm or played), t_ns)
        self._tempo_anchor = (step, t_ns)

    # --- clock out -------------------------------------------------------------------------------
    def _start_clock_out(self, t0: int) -> None:
        if not self.clock_out:
            return
        from rtgen.timing.midiclock import start_messages

        for msg in start_messages(self.transport.next_step):
            self._send_clock(msg, self.clock.source.now_ns())
        self._clock_running = True
        self._queue_ticks(t0)  # the first clock after Start is the first step's downbeat

    def _stop_clock_out(self) -> None:
        if not self.clock_out or not self._clock_running:
            return
        from rtgen.timing.midiclock import stop_message

        self._ticks.clear()
        self._send_clock(stop_message(), self.clock.source.now_ns())
        self._clock_running = False

    def _queue_ticks(self, start: int) -> None:
        """Clock-out ticks of the step that starts at ``start`` (queued one step ahead)."""
        if not self._clock_running:
            return
        from rtgen.timing.midiclock import ticks_for_step

        self._ticks.extend(ticks_for_step(start, self.clock.step_ns))

    def _send_ticks(self, now: int) -> None:
        ticks = self._ticks
        while ticks and ticks[0] <= now:
            ticks.popleft()
            self._send_clock((MIDI_CLOCK,), now)

    def _send_clock(self, msg: Sequence[int], now: int) -> None:
        for sink in self.clock_out:
            try:
                sink.send(msg, now)
            except Exception as err:  # a failing port must not stop the music
                log.debug("clock out to %s failed: %s", sink.name, err)

    # --- commands --------------------------------------------------------------------------------
    def _swap_model_now(self) -> None:
        model, steps = self.pending_model, self.pending_steps
        self.pending_model = self.pending_steps = None
        if model is None:
            return
        now = self.clock.source.now_ns()
        # the old model's notes end on the bar line its successor starts on (this step is decided ahead)
        bar = self._step_start if self._step_start is not None and self._step_start > now else now
        self.scheduler.add_notes(self.performer.release_all(), bar, self._step_ns())
        # only references change here: the binding was made by the loader, and the old model's
        # sessions are torn down by the reaper once the engine lets go of it
        loaders.retire(self.engine.model)
        self.engine.swap_model(model, steps)
        self.model_name = model.name
        log.info("switched to model %s (%s)", model.name, model.path)
        if self.on_model_swapped is not None:
            self.on_model_swapped(model)

    def _release_voicer(self) -> None:
        # the scheduler's book has already sent the offs; this only resets the voicer's own state
        try:
            self.performer.release_all()
        except Exception as err:  # pragma: no cover - defensive
            log.warning("voicer release failed: %s", err)

    def _drain(self) -> None:
        while True:
            try:
                cmd = self.commands.get_nowait()
            except queue.Empty:
                return
            try:
                self._apply(cmd)
            except Exception as err:
                self.command_errors += 1
                if self.command_errors <= 5 or self.command_errors % 1000 == 0:
                    log.exception("command %r failed (%d so far)", cmd, self.command_errors)
                if self.feedback is not None:
                    self.feedback.error(f"{type(cmd).__name__}: {err}")

    def _drain_final(self) -> None:
        try:
            self._drain()
        except Exception:  # pragma: no cover - shutdown must go on
            log.exception("draining commands at shutdown failed")

    def _apply(self, cmd: Command) -> None:
        sched = self.scheduler
        match cmd:
            case Play():
                if self.link is not None:
                    if not self.playing:
                        self.link.request_start(self.clock.source.now_ns())
                elif not self.playing and self.follower is None:
                    self.playing = True
                    self._restart = True
                    self.transport.locate(0)
                    start = self.clock.deadline(self.next_k)
                    self._step_start = start
                    self._start_clock_out(start)
                    self._plan_next(start)
            case Stop():
                if self.playing:
                    self._discard_pending()
                    self.playing = False
                    sched.stop()
                    self._release_voicer()
                    self._stop_clock_out()
                if self.link is not None:
                    self.link.request_stop(self.clock.source.now_ns())
            case Panic():
                self._discard_pending()
                sched.panic()
                self._release_voicer()
                self._replan()
            case SetTempo(bpm=bpm):
                if self.link is not None:  # the session's tempo: every peer follows, and so do we at the next step
                    self.link.propose_tempo(float(bpm), self.clock.source.now_ns())
                    return
                at = self.next_k + (1 if self.pending is not None and self.pending.queued else 0)
                self.clock.set_tempo(float(bpm), at)
                if self.follower is None and self.playing:
                    self._step_start = self.clock.deadline(self.next_k)
                for sink in sched.sinks:
                    set_tempo = getattr(sink, "set_tempo", None)
                    if set_tempo is not None:
                        set_tempo(float(bpm), self.clock.deadline(at))
            case SetPart(part=part, program=program, volume=volume, pan=pan):
                changes = {k: v for k, v in (("program", program), ("volume", volume), ("pan", pan)) if v is not None}
                self._set_parts(_replace_part(self.parts, part, **changes))
                ch = self.parts.get(part).channel - 1
                if program is not None:
                    sched.send_now((PROGRAM_CHANGE | ch, program))
                if volume is not None:
                    sched.send_now((CONTROL_CHANGE | ch, 7, volume_cc(volume)))
                if pan is not None:
                    sched.send_now((CONTROL_CHANGE | ch, 10, pan_cc(pan)))
            case SetStyle(part=part, style=style):
                allowed = style_names(part)
                if style not in allowed:
                    raise ValueError(f"unknown {part} style {style!r}; allowed: {', '.join(allowed)}")
                if self.parts.get(part).style != style:
                    self._silence_part(part)
                    self._set_parts(_replace_part(self.parts, part, style=style))
            case SetPartEnabled(part=part, enabled=enabled):
                if self.parts.get(part).enabled != enabled:
                    if not enabled:
                        self._silence_part(part)
                    self._set_parts(_replace_part(self.parts, part, enabled=enabled))
                    if enabled:  # its program, volume and pan may never have been sent (a part off at start-up)
                        self._send_part_setup(self.parts.get(part))
            case SetSeed(seed=seed):
                self._discard_pending()
                sched.release_all()
                self._release_voicer()
                self.engine.reset(int(seed))
                self.performer.voicer.reseed(int(seed))  # humanize, the styles' choices and the drummer
                self._replan()
            case SetSwing(swing=swing):
                self.swing = float(swing)
                if hasattr(self.voicer, "swing"):
                    self.voicer.swing = self.swing
            case SetMode(mode=mode):
                if mode not in MODES:
                    raise ValueError(f"unknown mode {mode!r}; allowed: {', '.join(MODES)}")
                if mode == self.mode:
                    return
                if mode in ("accompany", "call-and-response") and not self.engine.can_harmonise:
                    self.engine.model.require_harmony(mode)
                self._discard_pending()
                sched.release_all()
                self._release_voicer()
                self.performer.set_conductor(self._conductor(mode))
                self._onsets.clear()
                log.info("mode %s", mode)
                self._replan()
            case SwapModel(model=model, steps=steps):
                loaders.retire(self.pending_model, self.pending_steps)  # replaced before its bar line
                self.pending_model, self.pending_steps = model, steps
            case UseSoundfont(synth=synth, sfid=sfid, path=path):
                # pointers only (~150 us), keeping each channel's program; nothing is released or re-decided:
                # sounding voices end on the old font's samples (FluidSynth frees it after them)
                synth.use_soundfont(sfid, path)
                log.info("soundfont switched to %s", path)
            case SetSection(name=name):
                bar = self.arranger.cue(name, self.transport.peek())
                log.info("section %s cued for bar %d", name, bar + 1)
            case RecordStart(sink=sink):
                if self.recorder is not None:
                    raise RtgenError(f"already recording to {self.recorder.path}; /rtgen/record/stop first")
                self.recorder = sink
                self._tempo_anchor = None
                sched.sinks.append(sink)
            case RecordStop(done=done):
                rec = self.recorder
                self.recorder = None
                if rec is not None and rec in sched.sinks:
                    sched.sinks.remove(rec)
                if done is not None:
                    done(rec)
            case _:
                raise ValueError(f"unknown command {cmd!r}")

    def _replan(self) -> None:
        """Decide the next step again after a change that discarded the one decided ahead."""
        if self.playing and self.pending is None and self._waiting is None:
            self._plan_next(self._step_start if self.follower is None else None)

    def _set_parts(self, parts: PartsConfig) -> None:
        self.parts = parts
        offs = self.performer.set_parts(parts)  # note-offs for notes on channels that changed
        if offs:
            self.scheduler.add_notes(offs, self.clock.source.now_ns(), self._step_ns())

    def _silence_part(self, part: str) -> None:
        """Release ``part``'s notes now with real note-offs; its note-ons decided ahead never sound.

        The scheduler drops the queued notes of the part's channel (the step decided ahead included) and sends
        a note-off for each of its sounding notes; the voicer forgets them (a part sharing the channel too).
        """
        ch = self.parts.get(part).channel - 1
        self.scheduler.release_all([ch])
        pending = self.pending
        if pending is not None and not pending.queued:
            pending.events = [e for e in pending.events if e.channel != ch]
        for name in PART_NAMES:
            if self.parts.get(name).channel - 1 == ch:
                self.performer.voicer.silence(name)  # already released by the scheduler: nothing to send

    def _send_part_setup(self, part: PartConfig) -> None:
        ch = part.channel - 1
        self.scheduler.send_now((PROGRAM_CHANGE | ch, part.program))
        self.scheduler.send_now((CONTROL_CHANGE | ch, 7, volume_cc(part.volume)))
        self.scheduler.send_now((CONTROL_CHANGE | ch, 10, pan_cc(part.pan)))

    def send_parts_setup(self) -> None:
        """Program change (for drums: the kit), volume (CC7) and pan (CC10) for every part: at start-up, on the RT
        thread."""
        for name in PART_NAMES:
            part = self.parts.get(name)
            if part.enabled:
                self._send_part_setup(part)

    @property
    def tempo(self) -> float:
        """The tempo being played (the followed clock's estimate when following one)."""
        if self.follower is not None and self.follower.tempo_bpm is not None:
            return float(self.follower.tempo_bpm)
        return self.clock.tempo


def _replace_part(parts: PartsConfig, name: str, **changes: Any) -> PartsConfig:
    current = parts.get(name)
    return dataclasses.replace(parts, **{name: dataclasses.replace(current, **changes)})


class Daemon:
    """``rtgen run``: opens the model, inputs, outputs, OSC server and status line, then plays.

    Start-up fails fast with :class:`~rtgen.errors.RtgenError` subclasses whose
    messages say what to do (unknown port -> the ports there are; missing soundfont
    -> where we looked; no audio device -> warn and keep playing to MIDI).

    Args:
        config: the validated configuration (CLI overrides already applied).
        status: optional status reporter (TTY line / JSON log), see :mod:`rtgen.live.status`.
    """

    def __init__(self, config: Config, *, status: Any | None = None) -> None:
        self.config = config
        self.status_reporter = status
        self.sinks: list[SinkLike] = []
        self.osc: OscServer | None = None
        self.web: WebServer | None = None
        self.player: Player | None = None
        self.synth: Any | None = None
        self.realtime = False
        self.synth_sink: Any | None = None
        self.model: Model | None = None
        self.midi_name: str | None = None
        self.midi_sinks: list[SinkLike] = []
        self.input: Any | None = None
        self.input_name: str | None = None
        self.link: LinkFollower | None = None
        self.started_ns = 0
        self._loader = loaders.BackgroundLoader()  # model and soundfont loads, one at a time, newest wins
        self._closers: list[threading.Thread] = []
        self.jack: str | None = None  # "ok" / "gone" while the JACK server is watched, None otherwise
        self.jack_losses = 0
        self._closing = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._jack_period_ns = 0  # the watched server's period (0: not on JACK, or not watched)
        self._fatal: RtgenError | None = None  # why the supervisor ended the run (raised by run())
        self._signal_fds: tuple[int, int] | None = None
        self._signal_thread: threading.Thread | None = None
        self._previous_handlers: dict[int, Any] = {}

    # --- start-up ----------------------------------------------------------------------------
    def open(self) -> None:
        """Load the model and open every input and output; raises RtgenError with a fix on failure."""
        from rtgen.arrange.voicing import Voicer
        from rtgen.generation.engine import Engine, Params
        from rtgen.generation.model import Model

        cfg = self.config
        if cfg.web.enabled and not cfg.osc.enabled:
            raise RtgenError(
                "[web] enabled needs [osc] enabled = true: the page sends the OSC commands and reads the OSC "
                "feedback (drop --no-osc)"
            )
        try:
            self.model = Model.load(cfg.model_path)
            mode = cfg.daemon.mode
            if mode in ("accompany", "call-and-response"):
                self.model.require_harmony(mode)
            self._open_outputs()
            gen = cfg.generation
            params = Params.from_config(gen)
            engine = Engine(self.model, params, seed=gen.seed)
            voicer = Voicer(cfg.parts, swing=gen.swing, humanize_ms=gen.humanize_ms, seed=gen.seed)
            clock = StepClock(gen.tempo, time_source=RealTime())
            feedback = None
            if cfg.osc.enabled:
                from rtgen.control.osc import OscServer

                self.osc = OscServer(cfg.osc.host, cfg.osc.port, self)
                feedback = self.osc.feedback
            if cfg.web.enabled:
                self.web = _open_web(cfg, self)
            drop_ms = self.config.daemon.late_drop_ms
            sched = Scheduler(
                self.sinks,
                on_note=self._on_note if feedback is not None else None,
                drop_late_ns=int(drop_ms * 1_000_000) if drop_ms > 0 else None,
            )
            tracker, in_queue, midi_follower = self._open_input()
            follower: ClockFollower | LinkFollower | None = midi_follower
            if cfg.clock.source == "link":
                follower = self.link = self._open_link(params)
            clock_out: list[SinkLike] = []
            if cfg.clock.send:
                if follower is not None:
                    log.warning("clock.send ignored: rtgen follows a MIDI clock (it cannot lead and follow)")
                else:
                    clock_out = list(self.midi_sinks)
                    if not clock_out:
                        log.warning("clock.send: there is no MIDI output to send the clock to")
            self.player = Player(
                engine, voicer, sched, clock, params, cfg.parts, feedback=feedback, mode=mode, config=cfg,
                tracker=tracker, input_queue=in_queue, follower=follower, clock_out=clock_out,
                thru=cfg.input.thru and tracker is not None,
            )  # fmt: skip
            self.player.recorder = self._initial_recorder
            self._catch_signals()
        except BaseException:
            self.close()
            raise

    def _open_input(self) -> tuple[PlayerTracker | None, MidiInput | None, ClockFollower | None]:
        """The player's MIDI input (virtual ``rtgen:in`` or a named port), its tracker and clock follower."""
        cfg = self.config
        need = cfg.input.enabled or cfg.clock.source == "midi" or cfg.daemon.mode != "autonomous"
        if not need:
            return None, None, None
        if not cfg.input.enabled:
            raise RtgenError(
                f"mode {cfg.daemon.mode} / clock {cfg.clock.source} needs the MIDI input, but [input] enabled = false"
            )
        from rtgen.input.tracker import PlayerTracker
        from rtgen.io.ports import open_input
        from rtgen.timing.midiclock import ClockFollower

        # rtmidi's thread wakes the loop: without it a tick or a note waits for the next due event (up to 250 ms)
        try:
            # polled, not called back: rtmidi's thread is JACK's real-time thread, which must never wait for
            # the GIL (a synchronous server stalls every client then); the loop polls every millisecond
            self.input = open_input(
                cfg.midi.backend, cfg.input.port or None, None, cfg.midi.client_name,
                cfg.input.virtual_port_name, clock=cfg.clock.source == "midi",
            )  # fmt: skip
        except PortError:
            if cfg.input.port or cfg.daemon.mode != "autonomous" or cfg.clock.source == "midi":
                raise  # a port the user named must exist, and a play-along mode needs one
            log.warning("no MIDI input (no virtual port on this backend); playing without listening")
            return None, None, None
        self.input_name = self.input.name
        tracker = PlayerTracker.from_config(cfg)
        follower = ClockFollower() if cfg.clock.source == "midi" else None
        return tracker, self.input, follower

    def _open_link(self, params: Params) -> LinkFollower:
        """Join the Ableton Link session (quantum: one bar of the meter)."""
        cfg = self.config
        link = LinkFollower(
            cfg.generation.tempo, params.time_signature.bar_steps, start_stop_sync=cfg.clock.link_start_stop
        )
        link.open()
        return link

    @property
    def _initial_recorder(self) -> RecorderSink | None:
        from rtgen.io.sinks import RecorderSink

        return next((s for s in self.sinks if isinstance(s, RecorderSink)), None)

    def _recorder(self, path: Path) -> RecorderSink:
        from rtgen.io.sinks import RecorderSink

        cfg = self.config
        ts = cfg.generation.parsed_time_signature()
        names = {cfg.parts.get(n).channel - 1: n for n in PART_NAMES}
        tempo = self.player.tempo if self.player is not None else cfg.generation.tempo
        return RecorderSink(path, tempo, time_signature=(ts.numerator, ts.denominator), track_names=names)

    def _open_outputs(self) -> None:
        from rtgen.io.sinks import MidiOutSink

        cfg = self.config
        midi_error: PortError | None = None
        if cfg.midi.enabled:
            from rtgen.io.ports import open_output

            try:
                out = open_output(
                    cfg.midi.backend, cfg.midi.out or None, cfg.midi.client_name, cfg.midi.virtual_port_name
                )
            except PortError as err:
                if cfg.midi.out or not cfg.synth.enabled:
                    raise  # a port the user named must exist; and without the synth there is nothing left
                midi_error = err  # no MIDI system for a virtual port: the synth may still play
            else:
                self.midi_name = out.name
                sink = MidiOutSink(out)
                self.sinks.append(sink)
                self.midi_sinks.append(sink)
        if cfg.synth.enabled:
            self._open_synth()
        if midi_error is not None:
            if self.synth is None:
                raise RtgenError(f"no output left to play to: MIDI: {midi_error}; synth: no audio device (see above)")
            log.warning("no MIDI output (%s); playing through the synth only", midi_error)
        if cfg.daemon.record:
            self.sinks.append(self._recorder(cfg.resolve(cfg.daemon.record)))
        live = [s for s in self.sinks if not s.name.startswith("record:")]
        if not live:
            raise RtgenError(
                "no output left to play to: MIDI out is disabled and the synth is off or has no audio device; "
                "enable one (--synth with a working --audio-driver, or MIDI out with [midi] enabled = true)"
            )

    def _open_synth(self) -> None:
        from rtgen.io.sinks import SynthSink
        from rtgen.io.synth import Synth, find_soundfont

        cfg = self.config.synth
        sf = find_soundfont(self.config.resolve(cfg.soundfont) if cfg.soundfont else None)  # SoundfontError
        synth = Synth(sf, sample_rate=cfg.sample_rate, gain=cfg.gain, reverb=cfg.reverb, chorus=cfg.chorus)
        try:
            synth.start_audio(cfg.audio_driver or None)
        except AudioError as err:
            synth.close()
            rest = "playing to MIDI only" if self.midi_name else "no synth"
            log.warning("no audio device for the synth (%s); %s", err, rest)
            if self.status_reporter is not None:
                self.status_reporter.event("warning", message=f"no audio device: {err}; {rest}")
            return
        self.synth = synth
        self.synth_sink = SynthSink(synth)
        self.sinks.append(self.synth_sink)

    def _on_note(self, part: str | None, channel: int, pitch: int, velocity: int) -> None:
        fb = self.osc.feedback if self.osc is not None else None
        if fb is not None and fb.subscribers and part != "player":
            fb.note(part or f"channel{channel + 1}", pitch, velocity)

    # --- running -----------------------------------------------------------------------------
    def run(self) -> int:
        """Play until SIGINT/SIGTERM or ``daemon.duration``; returns 0. The recording is written on the way out.

        Raises:
            PortError: the JACK server died and came back, but the MIDI ports could not be reopened
                (everything is released and closed first).
        """
        if self.player is None:
            self.open()
        player = self.player
        assert player is not None
        try:
            if self.osc is not None:
                self.osc.start()
            if self.web is not None:
                self.web.start()
            self._start_supervisor()
            player.output_quantum_ns = self._output_quantum_ns()
            if self.status_reporter is not None:
                self.status_reporter.start(self)
            player.send_parts_setup()
            self.started_ns = time.perf_counter_ns()
            log.info(
                "playing: model %s, mode %s, tempo %.1f, clock %s, input %s, outputs %s, OSC %s",
                player.model_name,
                player.mode,
                player.clock.tempo,
                self.config.clock.source,
                self.input_name or "off",
                ", ".join(s.name for s in self.sinks),
                f"{self.config.osc.host}:{self.osc.port}" if self.osc is not None else "off",
            )
            # rtmidi calls back on JACK's own real-time thread, which needs the GIL: with Python's default 5 ms
            # switch interval a spinning loop makes it miss JACK cycles (a synchronous server then stalls)
            with realtime_loop(self.config.daemon.realtime_priority) as self.realtime, logs.off_thread():
                player.run(self.config.daemon.duration)
        finally:
            self.close()
        if self._fatal is not None:
            raise self._fatal
        return 0

    # --- signals: SIGINT/SIGTERM stop the loop, however often and whenever they come ---------------
    def _catch_signals(self) -> None:
        """From now until :meth:`close`, SIGINT and SIGTERM ask the loop to stop (main thread only).

        The handler runs on the main thread, which is the real-time loop's, between any two bytecodes,
        possibly while the loop holds the lock of its wake-up event: it only writes the signal number to a
        pipe. A helper thread reads it and calls :meth:`Player.request_stop`.
        """
        if threading.current_thread() is not threading.main_thread() or self._signal_fds is not None:
            return
        r, w = os.pipe()
        os.set_blocking(w, False)
        self._signal_fds = (r, w)
        self._signal_thread = threading.Thread(target=self._stop_on_signals, args=(r,), name="rtgen-signals")
        self._signal_thread.daemon = True
        self._signal_thread.start()
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous_handlers[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: object) -> None:
        fds = self._signal_fds
        if fds is not None:
            with contextlib.suppress(OSError):  # a full pipe: a stop is on its way already
                os.write(fds[1], bytes((signum,)))

    def _stop_on_signals(self, fd: int) -> None:
        stopping = False
        while True:
            try:
                data = os.read(fd, 64)
            except OSError:
                return
            for signum in data:
                if signum == 0:  # close() is done with us
                    return
                name = signal.Signals(signum).name
                if stopping:
                    log.info("%s again: already stopping", name)
                    continue
                stopping = True
                log.info("%s: stopping (every note released, the recording written)", name)
                player = self.player
                if player is not None:
                    player.request_stop()

    def _release_signals(self) -> None:
        for sig, handler in self._previous_handlers.items():
            signal.signal(sig, handler)
        self._previous_handlers = {}
        fds = self._signal_fds
        if fds is None:
            return
        with contextlib.suppress(OSError):
            os.write(fds[1], b"\0")
        if self._signal_thread is not None:
            self._signal_thread.join(timeout=2)
            self._signal_thread = None
        self._signal_fds = None
        for fd in fds:
            os.close(fd)

    # --- JACK supervision: a server that dies and comes back ----------------------------------------
    def _jack_ports(self) -> list[Any]:
        """The MidiOutput/MidiInput objects of ours that live on JACK (output first, as opened)."""
        ports: list[Any] = [getattr(s, "output", None) for s in self.midi_sinks]
        ports.append(self.input)
        return [p for p in ports if p is not None and getattr(p, "backend", None) == "jack"]

    def _output_quantum_ns(self) -> int:
        """The finest time grid of the live outputs: MIDI on JACK and the synth play at period starts."""
        quanta = []
        for sink in self.sinks:
            if sink is self.synth_sink and self.synth is not None:
                quanta.append(self.synth.period_ns)
            elif sink in self.midi_sinks:
                jack = getattr(getattr(sink, "output", None), "backend", None) == "jack"
                quanta.append(self._jack_period_ns if jack else 0)
            elif not sink.name.startswith("record:"):  # a file keeps the send times: 100 us do not matter there
                quanta.append(0)
        return min(quanta, default=0)

    def _start_supervisor(self) -> None:
        """Watch the JACK server from a thread of its own when a MIDI port is on JACK."""
        if not self._jack_ports():
            return
        from rtgen.io.ports import JackWatch

        try:
            watch = JackWatch.open(f"{self.config.midi.client_name}-watch")
        except PortError as err:
            log.warning("cannot watch the JACK server (%s): if it dies, rtgen will not notice", err)
            return
        if watch is None:
            log.warning("cannot watch the JACK server (no client could open): if it dies, rtgen will not notice")
            return
        self.jack = "ok"
        self._jack_period_ns = watch.period_ns()
        self._supervisor = threading.Thread(target=self._supervise, args=(watch,), name="rtgen-jack", daemon=True)
        self._supervisor.start()

    def _supervise(self, watch: JackWatch) -> None:
        """The supervisor thread: notice the server's loss, wait for it, reopen the ports; never the RT thread.

        A port the server stopped serving (a stale libjack futex, a stuck client) is handled as a loss:
        closed and opened again.
        """
        current: JackWatch | None = watch
        stale = self._stale_ports(self._jack_ports())
        if stale is not None:  # reopening at start-up met the same race again under a polling peer: say it only
            log.warning("jack: %s; if the port stays silent, restart rtgen", stale)
        trouble = None
        try:
            while current is not None:
                while trouble is None and not current.lost.wait(0.1):
                    if self._closing.is_set():
                        current.close()
                        return
                    trouble = self._stuck_output()
                current = self._jack_lost(current, trouble)
                trouble = None
        except Exception:  # pragma: no cover - the music goes on without supervision
            log.exception("the JACK supervisor failed; a server that dies again will not be noticed")

    @staticmethod
    def _stale_ports(ports: list[Any]) -> str | None:
        """Why a just-opened port will never be served (libjack gave it a departed client's futex), or None."""
        for port in ports:
            jack = port.jack
            if jack is not None and jack.futex_is_current() is False:
                return f"libjack gave {port.name} a departed client's futex (a jack2 race), so the server cannot run it"
        return None

    def _stuck_output(self) -> str | None:
        """Why an output is stuck (the server has taken none of its waiting messages for a while), or None."""
        now = time.monotonic()
        for port in self._jack_ports():
            jack = port.jack
            waited = jack.waiting_s(now) if jack is not None else 0.0  # an input waits for nothing: 0
            if waited >= JACK_STUCK_S:
                return f"the server has taken no MIDI from {port.name} for {waited:.1f} s"
        return None

    def _jack_tell(self, state: str, text: str, *, error: bool = False) -> None:
        """Log ``text``; OSC ``/rtgen/jack s`` (and ``/rtgen/error s``) to subscribers; a JSON status event."""
        self.jack = state
        if error:
            log.error("%s", text)
        else:
            log.warning("%s", text)
        if self.osc is not None:
            self.osc.feedback.broadcast("/rtgen/jack", [state])
            if error or state == "gone":
                self.osc.feedback.error(text)
        if self.status_reporter is not None:
            self.status_reporter.event("jack", state=state, message=text)

    def _jack_lost(self, watch: JackWatch, trouble: str | None = None) -> JackWatch | None:
        """The server is gone (or ``trouble`` with our ports): release the notes, free our clients, wait, reopen.

        Returns:
            The new watch, or None (closing, or the ports cannot be reopened).
        """
        from rtgen.io.ports import JackWatch

        server = os.environ.get("JACK_DEFAULT_SERVER", "default")
        player = self.player
        self.jack_losses += 1
        playing_on = "; the synth plays on" if self.synth is not None else ""
        kept = f"tempo, mode, parts and position kept{playing_on}"
        if trouble is None:
            self._jack_tell("gone", f"jack: server {server!r} gone, retrying ({kept})")
        else:
            self._jack_tell("stuck", f"jack: {trouble}; reopening the ports ({kept})")
        closers = [port.detach() for port in self._jack_ports()]  # from now on sends drop, reads are empty
        if player is not None:
            player.command(Panic(), urgent=True)  # the note-offs reach the synth and the recording
        watch.close()
        for close in closers:  # every client of ours must be gone before libjack may open a new one
            close()
        waited = time.monotonic()
        idle_told = False
        while True:
            if self._closing.wait(JACK_RETRY_S):
                return None
            new = JackWatch.open(watch.name)
            if new is not None and not new.cycling():
                new.close()  # a server that runs no cycles would hold python-rtmidi's opens (and the GIL)
                new = None
                if not idle_told:
                    idle_told = True
                    log.warning(
                        "jack: server %r is there but runs no cycles (a client of it is stuck?); waiting", server
                    )
            if new is None:
                if time.monotonic() - waited >= 30:
                    waited = time.monotonic()
                    log.warning("jack: still waiting for server %r", server)
                continue
            try:
                names = self._reopen_ports()
            except _StalePortsError as err:
                new.close()  # with every client closed libjack forgets the stale futex; try again
                log.warning("jack: %s; opening the ports again", err)
                continue
            except PortError as err:
                new.close()
                self._fatal = PortError(
                    f"the JACK server {server!r} came back, but rtgen cannot reopen its MIDI ports: {err}"
                )
                self._jack_tell("failed", str(self._fatal), error=True)
                if player is not None:
                    player.request_stop()
                return None
            break
        if player is not None:
            for name in PART_NAMES:  # the peers on the new server have heard no program or volume
                part = player.parts.get(name)
                if part.enabled:
                    player.command(SetPart(name, program=part.program, volume=part.volume, pan=part.pan))
        self._jack_tell("ok", f"jack: server {server!r} back, ports reopened ({', '.join(names)})")
        return new

    def _reopen_ports(self) -> list[str]:
        """Open our JACK ports again as at start-up and put them in place of the dead ones; their names.

        Retries for :data:`JACK_REOPEN_S` (a port named with ``--midi-out``/``--midi-in`` may come later).

        Raises:
            PortError: a port still cannot be opened (the last reason).
        """
        from rtgen.io.ports import MidiInput, MidiOutput, open_input, open_output

        cfg = self.config
        deadline = time.monotonic() + JACK_REOPEN_S
        while True:
            fresh: list[tuple[Any, Any]] = []
            try:
                for port in self._jack_ports():
                    if isinstance(port, MidiOutput):
                        new_out = open_output("jack", cfg.midi.out or None, cfg.midi.client_name,
                                              cfg.midi.virtual_port_name)  # fmt: skip
                        fresh.append((port, new_out))
                    elif isinstance(port, MidiInput):
                        new_in = open_input("jack", cfg.input.port or None, None, cfg.midi.client_name,
                                            cfg.input.virtual_port_name, clock=cfg.clock.source == "midi")  # fmt: skip
                        fresh.append((port, new_in))
                    # at once: the server stalls behind a stale client, and the next open would wait with the GIL
                    stale = self._stale_ports([fresh[-1][1]])
                    if stale is not None:
                        for _, new in fresh:
                            new.close()
                        raise _StalePortsError(stale)
            except PortError as err:
                for _, new in fresh:
                    new.close()
                if time.monotonic() >= deadline or self._closing.is_set():
                    raise
                log.info("jack: cannot reopen the ports yet (%s); retrying", err)
                self._closing.wait(JACK_RETRY_S)
                continue
            for port, new in fresh:
                port.attach(new)
            return [new.name for _, new in fresh]

    def close(self) -> None:
        """Release every note, close inputs and sinks (the recording is written), stop OSC (idempotent)."""
        self._closing.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout=10)  # it may be closing dead JACK clients (about a second each)
            self._supervisor = None
        if self.status_reporter is not None:
            try:
                self.status_reporter.stop(self)
            except Exception:  # pragma: no cover
                log.exception("status reporter failed to stop")
        if self.input is not None:
            try:
                self.input.close()
            except Exception as err:
                log.warning("closing the MIDI input failed: %s", err)
            self.input = None
        self._loader.close()  # a running load ends first: the synth is not deleted under it
        if self.player is not None:
            self.player.scheduler.close()  # closes every sink, the recorder (written safely) included
            self.player = None
        else:
            for sink in self.sinks:
                try:
                    sink.close()
                except Exception as err:
                    log.warning("closing %s failed: %s", sink.name, err)
        for t in self._closers:
            t.join(timeout=30)
        self._closers = []
        self.sinks = []
        self.midi_sinks = []
        if self.web is not None:
            self.web.close()
            self.web = None
        if self.osc is not None:
            self.osc.close()
            self.osc = None
        if self.link is not None:
            self.link.close()
            self.link = None
        self._release_signals()

    # --- Controller (called from the OSC thread) ---------------------------------------------
    def _p(self) -> Player:
        if self.player is None:
            raise RtgenError("the daemon is not running")
        return self.player

    def play(self) -> None:
        """Start playing."""
        self._p().command(Play(), urgent=True)

    def stop(self) -> None:
        """Stop playing (notes released now)."""
        self._p().command(Stop(), urgent=True)

    def panic(self) -> None:
        """Release everything."""
        self._p().command(Panic(), urgent=True)

    def set_tempo(self, bpm: float) -> None:
        """Tempo from the next step on (following Link: proposed to the session)."""
        if self.config.clock.source == "midi":
            raise ValueError("the tempo follows the MIDI clock (clock.source = midi); change it in the DAW")
        self._p().command(SetTempo(bpm))

    def set_params(self, **changes: Any) -> None:
        """Swap generation parameters."""
        self._p().set_params(**changes)

    def set_mode(self, mode: str) -> None:
        """Switch mode (the model must have a harmoniser for accompany and call-and-response)."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; allowed: {', '.join(MODES)}")
        player = self._p()
        if mode in ("accompany", "call-and-response") and not player.engine.can_harmonise:
            player.engine.model.require_harmony(mode)
        if mode != "autonomous" and player.tracker is None:
            raise ValueError(f"mode {mode} listens to a player, but the MIDI input is off ([input] enabled)")
        player.command(SetMode(mode), urgent=True)

    def set_instrument(self, part: str, program: int) -> None:
        """Program change for a part."""
        self._p().command(SetPart(part, program=program), urgent=True)

    def set_volume(self, part: str, volume: float) -> None:
        """CC7 for a part."""
        self._p().command(SetPart(part, volume=volume), urgent=True)

    def set_pan(self, part: str, pan: float) -> None:
        """CC10 for a part."""
        self._p().command(SetPart(part, pan=pan), urgent=True)

    def set_style(self, part: str, style: str) -> None:
        """Play ``part`` in ``style``: its notes are released at once, the style starts at its next onset."""
        allowed = style_names(part)
        if style not in allowed:
            raise ValueError(f"unknown {part} style {style!r}; allowed: {', '.join(allowed)}")
        self._p().command(SetStyle(part, style), urgent=True)

    def set_part_enabled(self, part: str, enabled: bool) -> None:
        """Mute (False) or unmute (True) a part; muting releases its notes at once with real note-offs."""
        self._p().command(SetPartEnabled(part, bool(enabled)), urgent=True)

    def set_key(self, key: str) -> None:
        """Key lock (or "off")."""
        from rtgen.contract import Key

        self._p().set_params(key=None if key.strip().lower() == "off" else Key.parse(key))

    def set_seed(self, seed: int) -> None:
        """Re-seed (restarts the piece at the next step)."""
        self._p().command(SetSeed(seed))

    def set_swing(self, swing: float) -> None:
        """Swing amount."""
        self._p().command(SetSwing(swing))

    def set_section(self, name: str) -> None:
        """Cue a song-form section (raises ValueError for a name that is not allowed)."""
        from rtgen.arrange.form import check_section_name

        self._p().command(SetSection(check_section_name(name)))

    def record_start(self, path: str) -> None:
        """Start recording both sides to ``path`` (a .mid file, written safely when recording stops)."""
        player = self._p()
        if player.recorder is not None:
            raise ValueError(f"already recording to {player.recorder.path}; send /rtgen/record/stop first")
        target = self.config.resolve(path)
        if target.suffix.lower() not in (".mid", ".midi"):
            raise ValueError(f"the recording must be a .mid file, got {target.name!r}")
        if target.parent.exists() and not target.parent.is_dir():
            raise ValueError(f"cannot record into {target.parent}: not a folder")
        player.command(RecordStart(self._recorder(target)), urgent=True)

    def record_stop(self, reply: Callable[[str], None] | None = None) -> None:
        """Stop recording; the file is written in the background (temporary file, then rename)."""

        def done(rec: RecorderSink | None) -> None:  # on the real-time thread: hand the writing to a thread
            if rec is None:
                if reply is not None:
                    reply("/rtgen/record/stop: not recording")
                return
            t = threading.Thread(target=_close_recorder, args=(rec, reply), name="rtgen-recorder", daemon=True)
            self._closers.append(t)
            t.start()

        self._p().command(RecordStop(done), urgent=True)

    def swap_model(self, path: str, reply: Callable[[str], None] | None = None) -> None:
        """Load and check ``path`` (a folder, relative to the config file, or a model name) on the loader
        thread; the RT thread switches at the next bar line.

        Loads run one at a time; a request still waiting is replaced by a newer one (its ``reply`` is told).
        A folder that fails to load is refused with the reason (``reply``, the log, ``/rtgen/error``) and
        the current model keeps playing.
        """
        player = self._p()
        target = self.config.model_folder(path)

        def fail(text: str) -> None:
            log.error("%s", text)
            if self.osc is not None:
                self.osc.feedback.error(text)
            if reply is not None:
                reply(text)

        def load() -> None:
            from rtgen.generation.model import Model

            try:
                model = Model.load(target)
                if player.mode in ("accompany", "call-and-response"):
                    model.require_harmony(player.mode)
                steps = player.engine.bind(model)  # here, not at the bar line on the RT thread
                steps.warm_up()
            except Exception as err:
                fail(f"/rtgen/model: cannot load {target}: {err}; keeping {player.model_name}")
                return
            player.command(SwapModel(model, steps))

        def superseded() -> None:
            if reply is not None:
                reply(f"/rtgen/model: {target} not loaded: a newer /rtgen/model request replaced it")

        self._loader.submit("model", load, superseded)

    def swap_soundfont(self, path: str, reply: Callable[[str], None] | None = None) -> None:
        """Load another soundfont on the loader thread; the RT thread switches to it between two sends.

        Loads run one at a time (a newer request replaces one still waiting) and never hold the playing
        synth's lock; the old font is freed off the RT thread.
        """
        player = self._p()
        synth = self.synth

        def fail(text: str) -> None:
            log.error("%s", text)
            if self.osc is not None:
                self.osc.feedback.error(text)
            if reply is not None:
                reply(text)

        if synth is None:
            fail("/rtgen/soundfont: the internal synth is not running (start with --synth and an audio device)")
            return
        target = self.config.resolve(path)

        def work() -> None:
            from rtgen.io.synth import find_soundfont

            try:
                sf = find_soundfont(target)
                sfid = synth.load_soundfont(sf)  # the slow part, off the real-time thread
            except (SoundfontError, OSError) as err:
                fail(f"/rtgen/soundfont: {err}")
                return
            player.command(UseSoundfont(synth, sfid, sf))  # switched on the RT thread, between two sends

        def superseded() -> None:
            if reply is not None:
                reply(f"/rtgen/soundfont: {target} not loaded: a newer /rtgen/soundfont request replaced it")

        self._loader.submit("soundfont", work, superseded)

    def status(self) -> dict[str, Any]:
        """The full state as JSON-ready data (read without locks: a snapshot may be a step stale)."""
        p = self._p()
        params = p.params
        stats = p.clock.stats
        sends = p.scheduler.errors
        histogram = sends.histogram
        assert histogram is not None  # the scheduler's stats keep one
        parts = {
            n: {
                "channel": p.parts.get(n).channel,
                "program": p.parts.get(n).program,
                "volume": p.parts.get(n).volume,
                "pan": p.parts.get(n).pan,
                "enabled": p.parts.get(n).enabled,
                "style": p.parts.get(n).style,
            }
            for n in PART_NAMES
        }
        tracker = p.tracker
        conductor = p.performer.conductor
        cued = p.arranger.cued  # read once: the real-time thread may start the section meanwhile
        return {
            "playing": p.playing,
            "mode": p.mode,
            "answering": bool(getattr(conductor, "answering", False)),
            "tempo": p.tempo,
            "clock": self.config.clock.source,
            "link": p.link.stats() if p.link is not None else None,
            "clock_out": bool(p.clock_out),
            "bar": p.bar + 1,
            "beat": p.beat + 1,
            "chord": p.chord_name,
            "section": p.section,
            "section_bar": p.section_bar + 1 if p.section is not None else None,
            "section_cued": cued[0] if cued is not None else None,
            "section_cued_bar": cued[1] + 1 if cued is not None else None,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "density": params.density,
            "key": params.key.name if params.key is not None else "off",
            "swing": p.swing,
            "seed": getattr(p.engine, "seed", None),
            "model": p.model_name,
            "can_accompany": bool(p.engine.can_harmonise),
            "realtime": self.realtime,
            "parts": parts,
            "input": self.input_name,
            "player_sounding": list(tracker.sounding()) if tracker is not None else [],
            "recording": str(p.recorder.path) if p.recorder is not None else None,
            "steps": stats.steps,
            "late_steps": stats.late_steps,
            "max_late_us": stats.max_late_ns / 1000,
            "schedule_error_us": {
                **LatenessHistogram.percentiles_us(histogram.counts),
                "max": sends.max_late_ns / 1000,
            },
            "schedule_error_histogram": list(histogram.counts),
            "midi_overflowed": sum(getattr(s, "overflowed", 0) for s in p.scheduler.sinks),
            "dropped_late_notes": p.scheduler.dropped_late,
            "skipped_steps": p.skipped_steps,
            "output_quantum_us": p.output_quantum_ns / 1000,
            "spin_us": p.spin_ns / 1000 if p.spin_ns is not None else None,
            "worst_wakeup_us": p.spin_tuner.worst_ns / 1000 if p.spin_tuner is not None else None,
            "reactive_steps": p.reactive_decisions,
            "reactive_on_onset": p.early_decisions,  # of those, decided on the player's note before the window's end
            "sent": p.scheduler.sent,
            "sounding": p.scheduler.book.count(),
            "outputs": [s.name for s in p.scheduler.sinks],
            "osc_errors": self.osc.control.errors if self.osc is not None else 0,
            "engine_errors": p.engine_errors,
            "command_errors": p.command_errors,
            "input_received": getattr(self.input, "received", 0),
            "jack": self.jack,
            "jack_losses": self.jack_losses,
        }


def _open_web(cfg: Config, daemon: Daemon) -> WebServer:
    """The web control surface, on the OSC server's feedback (checked in :meth:`Daemon.open`)."""
    from rtgen.control.web.server import WebServer

    assert daemon.osc is not None

    try:
        return WebServer(cfg.web.host, cfg.web.port, daemon, daemon.osc.feedback)
    except OSError as err:
        raise PortError(str(err)) from err


def _close_recorder(rec: RecorderSink, reply: Callable[[str], None] | None = None) -> None:
    """Write a detached recording (off the real-time thread); errors are logged and replied, never raised."""
    try:
        rec.close()
    except Exception as err:
        log.error("cannot write the recording %s: %s", rec.path, err)
        if reply is not None:
            reply(f"/rtgen/record/stop: {err}")
        return
    log.info("recording written to %s", rec.path)

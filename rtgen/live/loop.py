"""The live loop: the one real-time thread that waits, advances the music step by step and polls the player.

Data path (docs/internals.md §6)::

    MIDI in ─► polled port ─► PlayerTracker ─┐        clock source: internal | MIDI clock | Link
                                            ▼                       │
    OSC / CC ─► params box, typed commands ─► LiveLoop ◄─────────────┘
                                            │  Transport (position) ─► Performer
                                            │     (conductor ─► engine ─► voicer)
                                            ▼
                                        Scheduler ─► MIDI out, synth, recorder, OSC feedback

:meth:`LiveLoop.run` sleeps until the next due event, step start or reactive deadline (then spins the last
fraction of a millisecond), sends what is due, polls the player's input and the command queue, and
advances: a step starts at its time, decided ahead or reactively (:mod:`rtgen.live.deciding`). Other
threads never touch the engine, the voicer or the sinks: they swap the params box's immutable value or put
a typed command on the queue; rtmidi's thread only enqueues input. "The player" is the musician at the
keyboard; this loop is rtgen's side.
"""

from __future__ import annotations

import gc
import logging
import queue
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rtgen import contract as ct
from rtgen.arrange.chorale import DRAWS as CHORALE_DRAWS
from rtgen.arrange.chorale import PART as CHORALE_PART
from rtgen.arrange.chorale import ChoraleVoicer
from rtgen.arrange.form import Arranger
from rtgen.arrange.performer import Performer
from rtgen.config import PART_NAMES, Config, PartsConfig, needs_poly
from rtgen.generation.conductor import NOBODY, Conductor, make_conductor
from rtgen.input.feel import PlayerFeel
from rtgen.live.clockout import ClockOut
from rtgen.live.deciding import Deciding
from rtgen.live.following import Following
from rtgen.live.handlers import Handling
from rtgen.live.listening import PLAYER_ACTIVE_NS, POLL_NS, Listening
from rtgen.live.params import ParamsBox
from rtgen.timing.clock import SpinTuner, StepClock
from rtgen.timing.source import ClockSource, InternalClock
from rtgen.timing.transport import Transport

if TYPE_CHECKING:
    from rtgen.arrange.voicing import Voicer
    from rtgen.control.osc import Feedback
    from rtgen.generation.engine import Engine, Params, Step
    from rtgen.generation.poly import PolyModel
    from rtgen.input.tracker import InputQueue, PlayerTracker
    from rtgen.io.ports import MidiInput
    from rtgen.io.scheduler import Scheduler
    from rtgen.io.sinks import Sink
    from rtgen.live.commands import Command

log = logging.getLogger(__name__)

START_LEAD_NS = 100_000_000  # the first step starts this long after start-up: room for the first inference
MAX_WAIT_NS = 250_000_000  # wake at least this often, even with nothing due
SKIP_AHEAD_NS = 1_000_000_000  # a stall longer than this is not caught up step by step: the loop jumps to now
COARSE_OUTPUT_NS = 1_000_000  # outputs this coarse play a note at their next period, however late in one it came
COARSE_SPIN_NS = 200_000  # ... so the loop spins only this long before a deadline for them (holding the GIL then)


class LiveLoop(Deciding, Listening, Following, Handling):
    """The real-time loop. Everything here runs on one thread; others only call the thread-safe methods.

    Args:
        engine: the generation engine (owned by this loop from now on).
        voicer: turns steps into note events.
        scheduler: timed events, note-off book, sinks.
        clock: the time base (now, lateness) and rtgen's own tempo.
        params: the initial generation parameters.
        parts: the initial parts (channels, programs, volumes, pans).
        source: when steps start (default: ``clock`` leads); a followed MIDI clock or Link session plays
            nothing before its Start (:mod:`rtgen.timing.source`).
        feedback: OSC feedback (beat, chord, note), or None.
        mode: the initial mode (see :mod:`rtgen.generation.conductor`).
        config: the whole configuration (accompany / call-and-response / input settings), or None for defaults.
        tracker: the player's input tracker (None: nobody to listen to).
        input_queue: the player's messages: a polled :class:`~rtgen.io.ports.MidiInput` (the daemon's), or an
            :class:`~rtgen.input.tracker.InputQueue` fed by a callback; drained on every loop iteration.
        clock_out: sinks that get 24-ppqn clock, Start, Stop and SPP (lead a DAW).
        thru: echo the player's channel messages to the live sinks.
        poly: the polyphonic model of the modes that play one (duet, chorale; the chorale style), or None until one
            is loaded.
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
        source: ClockSource | None = None,
        feedback: Feedback | None = None,
        mode: str = "autonomous",
        config: Config | None = None,
        tracker: PlayerTracker | None = None,
        input_queue: InputQueue | MidiInput | None = None,
        clock_out: Sequence[Sink] = (),
        thru: bool = False,
        poly: PolyModel | None = None,
    ) -> None:
        self.config = config or Config()
        self.engine = engine
        self.voicer = voicer
        self.scheduler = scheduler
        self.clock = clock
        self.source = source if source is not None else InternalClock(clock)
        self.box = ParamsBox(engine, params)  # swapped by other threads, read once per step here
        self.parts = parts
        self.feedback = feedback
        self.tracker = tracker
        self.feel = PlayerFeel(margin_ns=POLL_NS) if self.config.accompany.adapt_window else None
        self.input_queue = input_queue
        self.clock_out = ClockOut(clock_out)
        self.thru = thru
        self.transport = Transport(params.time_signature)
        self.poly_model = poly
        self.performer = Performer(engine, voicer, self._conductor(mode), parts)
        self._voices_for(mode)
        self.commands: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self.wake = threading.Event()
        self.stop_requested = threading.Event()
        self.playing = self.source.starts_playing  # a followed clock: nothing plays before its Start
        self.swing = voicer.swing
        self.next_k = 0  # the clock step whose start comes next
        self.pending = None
        self.current: Step | None = None
        self.bar = 0
        self.beat = 0
        self.chord_name = "N.C."
        self.engine_errors = 0
        self.pending_model = None
        self.pending_steps = None
        self.model_name = engine.model.name
        self.on_model_swapped = None
        self.on_cc_changed = None
        self._learn_done = None
        self.recorder = None
        self.reactive_decisions = 0
        self.command_errors = 0
        self.spin_tuner = None  # the loop's, while it runs
        # the finest time grid of the outputs (a JACK period, an audio buffer; 0: they send at once): from
        # COARSE_OUTPUT_NS up, spinning up to a millisecond to send sooner moves no note and only burns CPU
        self.output_quantum_ns = 0
        self.fixed_spin_ns = None  # the spin while the outputs are coarse (no tuner then)
        self.skipped_steps = 0  # steps jumped over after a long stall (the bar lines stay on the grid)
        self.early_decisions = 0  # reactive steps decided with the player's onset for them
        self._onsets = []  # the player's onsets not yet given to a step
        self._last_player_chord = ct.CHORD_NC
        self._last_left_chord = ct.CHORD_NC
        self._last_events = []
        self._restart = False
        self._step_start = None
        self._last_start = None
        self._waiting = None
        self._decide_by = 0
        self.poll_ns = POLL_NS if input_queue is not None else 0
        self._tempo_anchor = None  # (step, time) where the recording was located or its tempo segment starts
        self._tempo_off = None
        self._tempo_told = False
        self._last_input_ns = -PLAYER_ACTIVE_NS  # the player's latest channel message (fast polling after it)
        form = self.config.form
        self.arranger = Arranger(seed=engine.seed, vary=form.vary, cue=form.cue)
        self.section = None  # the song-form section playing (None until one is cued)
        self.section_bar = 0  # the bar it started on (0-based)

    def _conductor(self, mode: str) -> Conductor:
        cfg = self.config
        return make_conductor(mode, cfg.accompany, cfg.call_response, cfg.improvise, self.poly_model,
                              seed=self.engine.seed)  # fmt: skip

    def _voices_for(self, mode: str) -> None:
        """Give the performer what ``mode`` (and the chords part's style) sings with beyond the rule voicer: in
        chorale mode, or with the ``chorale`` style, a fresh chorale voicer on the polyphonic model (a new piece,
        its key unknown); else none."""
        poly = self.poly_model
        if poly is None or not needs_poly(mode, self.parts):
            self.performer.chorale = None
            return
        stepper = poly.stepper(self.engine.seed, CHORALE_DRAWS)
        stepper.warm_up()  # onnxruntime's first run is slow: here, not on the first beat the player plays
        self.performer.chorale = ChoraleVoicer(stepper, low_pitch=poly.low_pitch,
                                               n_pitches=poly.n_pitches, step_beats=poly.step_beats,
                                               centred_key=poly.centred_key,
                                               channel=self.parts.get(CHORALE_PART).channel - 1)  # fmt: skip

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
        """Swap in new parameters with ``changes`` (read at the next step); not on the real-time thread."""
        self.box.set(**changes)

    @property
    def spin_ns(self) -> int | None:
        """How long the loop spins before a deadline now (None: it has not run, or never spins)."""
        return self.spin_tuner.spin_ns if self.spin_tuner is not None else self.fixed_spin_ns

    @property
    def tempo(self) -> float:
        """The tempo being played (the followed clock's estimate when following one)."""
        bpm = self.source.tempo_bpm
        return float(bpm) if bpm is not None else self.clock.tempo

    # --- the loop ------------------------------------------------------------------------------
    def run(self, duration_s: float = 0.0, *, start_ns: int | None = None) -> None:
        """Play until :meth:`request_stop` or ``duration_s`` seconds (0 = no limit), then release all notes."""
        time_source = self.clock.source
        spin_ns = time_source.spin_ns
        coarse = self.output_quantum_ns >= COARSE_OUTPUT_NS
        if coarse:
            spin_ns = min(spin_ns, COARSE_SPIN_NS)
        self.fixed_spin_ns = spin_ns if coarse else None
        tuner = SpinTuner(high_ns=max(spin_ns, 200_000)) if spin_ns and not coarse else None
        self.spin_tuner = tuner
        # before the clock starts: in a big process (a test suite, a host) a full collection takes a second
        gc.collect()
        gc.freeze()  # objects made so far live for the whole run: keep the collector from walking them
        t0 = self.clock.start(start_ns if start_ns is not None else time_source.now_ns() + START_LEAD_NS)
        end_ns = t0 + int(duration_s * 1e9) if duration_s > 0 else None
        if self.playing:  # a leading clock starts with the loop
            self._step_start = t0
            self.clock_out.start(self.transport.next_step, t0, self.clock.step_ns, time_source.now_ns())
            self._plan_next(t0)
        try:
            self._loop(end_ns, spin_ns, tuner)
        finally:
            self._drain_final()
            self.clock_out.stop(time_source.now_ns())
            self.scheduler.stop()
            gc.unfreeze()

    def _loop(self, end_ns: int | None, spin_ns: int, tuner: SpinTuner | None) -> None:
        source = self.clock.source
        simulated = source.simulated
        now = source.now_ns()
        while not self.stop_requested.is_set():
            target = self._next_target(end_ns)
            if simulated:
                now = source.wait_until(target)
            else:
                poll = self._poll_interval(now)
                now = source.now_ns()
                polling = bool(poll) and target - now > poll + spin_ns  # nothing due yet: only look at the input
                sleep_ns = poll if polling else min(target - now - spin_ns, MAX_WAIT_NS)
                if sleep_ns > 0:
                    self.wake.wait(sleep_ns / 1e9)
                    self.wake.clear()
                    woke = source.now_ns()
                    if tuner is not None:
                        tuner.observe(woke - now - sleep_ns)
                        spin_ns = tuner.spin_ns
                    now = woke
                if not polling and target - now <= spin_ns:
                    while now < target:
                        now = source.now_ns()
            if end_ns is not None and now >= end_ns:
                break
            self.scheduler.send_due(now)  # first: what is due goes out before anything else is looked at
            self.clock_out.send_due(now)
            self._poll(now)
            self._advance(now)

    def _next_target(self, end_ns: int | None) -> int:
        target = self.clock.source.now_ns() + MAX_WAIT_NS
        nt = self.scheduler.next_time()
        if nt is not None and nt < target:
            target = nt
        if self._waiting is not None:
            target = min(target, self._decide_by)
        elif self.playing and self._step_start is not None:
            target = min(target, self._step_start)
        tick = self.clock_out.next_tick
        if tick is not None:
            target = min(target, tick)
        due = self.source.next_poll_ns
        if due is not None and self.playing and self._step_start is None:
            target = min(target, due)  # the capture that announces the next step
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
        if self.source.leads and now - start > SKIP_AHEAD_NS:
            start = self._skip_ahead(now, start)
        self.clock.stats.add(now - start)
        pending = self.pending
        if self._tempo_anchor is None and self.recorder is not None and self.source.leads:
            # a recording's first step (rtgen leads; a followed clock's step event locates it)
            step_no = pending.pos.step if pending is not None and pending.k == self.next_k else self.transport.next_step
            self.recorder.locate(step_no, start)
            self._tempo_anchor = (step_no, start)
        if pending is not None and pending.k == self.next_k:
            if not pending.queued:  # a followed clock: the step's tick has come, queue on it
                self.scheduler.add_notes(pending.events, start, self._step_ns())
                self.scheduler.send_due(now)
            self.pending = None
            self._started(pending.step, start)
            return
        plan = self.performer.plan(self.transport.peek())
        if plan.reactive:
            self._wait_or_decide(plan, start, now)
            return
        step = self._decide(self.next_k, plan, NOBODY)  # a prepared step failed or was discarded
        if step is not None:
            self.scheduler.add_notes(self._last_events, start, self._step_ns())
            self.scheduler.send_due(now)
        self._started(step, start)

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
        self.clock_out.clear()
        log.warning("stalled for %.0f ms: skipped %d steps, resuming on the grid", (now - start) / 1e6, missed)
        self._step_start = self.source.deadline(self.next_k)
        return self._step_start

    def _started(self, step: Step | None, start: int) -> None:
        """Step ``next_k`` has started at ``start``: feedback, then plan the one after."""
        self._last_start = start
        if step is not None:
            self._tick(step)
        self.next_k += 1
        self._drain()  # commands that came in during this step apply to the next one
        if self.source.leads:
            nxt = self.source.deadline(self.next_k)
            self._step_start = nxt
            self.clock_out.queue_step(nxt, self.clock.step_ns)
            self._plan_next(nxt)
        else:
            self._step_start = None  # the next step event says when
            self._plan_next(None)

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

    def send_parts_setup(self) -> None:
        """Program change (for drums: the kit), volume (CC7) and pan (CC10) for every enabled part: at start-up,
        on the RT thread."""
        for name in PART_NAMES:
            part = self.parts.get(name)
            if part.enabled:
                self._send_part_setup(part)

"""What the live loop's rooms share: its fields and the calls they make on each other, declared once.

:class:`~rtgen.live.loop.LiveLoop` is put together from a few rooms, one job each: deciding steps
(:mod:`~rtgen.live.deciding`), hearing the player (:mod:`~rtgen.live.listening`), following a clock
(:mod:`~rtgen.live.following`) and applying commands (:mod:`~rtgen.live.handlers`). Each room is a mixin
of :class:`LoopState`, which declares (for the type checker and the reader) every field the loop keeps
and every method one room calls in another. Everything here runs on the loop's one thread.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    from rtgen.arrange.form import Arranger
    from rtgen.arrange.performer import Performer
    from rtgen.arrange.voicing import NoteEvent, Voicer
    from rtgen.config import CcConfig, Config, PartsConfig
    from rtgen.control.osc import Feedback
    from rtgen.generation.conductor import Conductor, Plan
    from rtgen.generation.engine import Engine, EngineState, Params, Step
    from rtgen.generation.model import Model, StepBinding
    from rtgen.generation.poly import PolyModel
    from rtgen.input.feel import PlayerFeel
    from rtgen.input.tracker import InputQueue, Onset, PlayerTracker
    from rtgen.io.ports import MidiInput
    from rtgen.io.scheduler import Scheduler
    from rtgen.io.sinks import RecorderSink
    from rtgen.live.clockout import ClockOut
    from rtgen.live.commands import Command
    from rtgen.live.params import ParamsBox
    from rtgen.timing.clock import SpinTuner, StepClock
    from rtgen.timing.source import ClockSource
    from rtgen.timing.transport import Position, Transport


@dataclass
class Pending:
    """A step decided ahead: its position, engine result, events, and the engine state before it."""

    k: int
    pos: Position
    step: Step
    events: list[NoteEvent]
    queued: bool  # events already in the scheduler (a leading clock)
    before: EngineState | None


class LoopState:
    """The live loop's fields and cross-room calls (see the module docstring); no behaviour of its own."""

    config: Config
    engine: Engine
    voicer: Voicer
    scheduler: Scheduler
    clock: StepClock  # the time base: now, lateness statistics; its tempo when rtgen leads
    source: ClockSource  # when steps start: rtgen's own clock, a MIDI clock or a Link session
    box: ParamsBox
    parts: PartsConfig
    feedback: Feedback | None
    tracker: PlayerTracker | None
    feel: PlayerFeel | None  # how late the player's notes land (None: reactive steps wait their whole window)
    input_queue: InputQueue | MidiInput | None
    clock_out: ClockOut
    thru: bool
    transport: Transport
    performer: Performer
    poly_model: PolyModel | None  # the polyphonic model duet and chorale play (set by another thread before use)
    arranger: Arranger
    commands: queue.SimpleQueue[Command]
    wake: threading.Event
    stop_requested: threading.Event
    playing: bool
    swing: float
    next_k: int
    pending: Pending | None
    current: Step | None
    bar: int
    beat: int
    chord_name: str
    section: str | None
    section_bar: int
    engine_errors: int
    command_errors: int
    pending_model: Model | None
    pending_steps: StepBinding | None
    model_name: str
    on_model_swapped: Callable[[Model], None] | None
    on_cc_changed: Callable[[CcConfig], None] | None  # MIDI learn changed the mapping (called here: only enqueue)
    _learn_done: Callable[[int], None] | None
    recorder: RecorderSink | None
    reactive_decisions: int
    early_decisions: int
    skipped_steps: int
    spin_tuner: SpinTuner | None
    output_quantum_ns: int
    fixed_spin_ns: int | None
    poll_ns: int
    _onsets: list[Onset]
    _last_player_chord: int
    _last_left_chord: int
    _last_events: list[NoteEvent]
    _restart: bool
    _step_start: int | None  # start of step next_k once known (a followed clock: its tick)
    _last_start: int | None  # start of the last step started (the grid the player's onsets are measured on)
    _waiting: Plan | None  # a reactive step waiting for the player
    _decide_by: int
    _tempo_anchor: tuple[int, int] | None
    _tempo_off: int | None  # since when the recording's tempo map has been off the followed clock's steps
    _tempo_told: bool  # the recording's tempo segment has the source's tempo (not a guess before it told one)
    _last_input_ns: int

    @property
    def params(self) -> Params:
        """The parameters in force (the box's value)."""
        return self.box.value

    @property
    def mode(self) -> str:
        """The current mode."""
        return self.performer.mode

    def _step_ns(self) -> float:
        """One step now, in nanoseconds (the followed clock's when following one)."""
        return self.source.step_ns

    # --- calls between rooms (each defined in one room; see the module docstring) -------------------
    def _plan_next(self, start: int | None) -> None:
        raise NotImplementedError

    def _discard_pending(self) -> None:
        raise NotImplementedError

    def _replan(self) -> None:
        raise NotImplementedError

    def _release_voicer(self) -> None:
        raise NotImplementedError

    def _drain(self) -> None:
        raise NotImplementedError

    def _apply(self, cmd: Command) -> None:
        raise NotImplementedError

    def _clock_event(self, kind: str, step: int, t_ns: int) -> None:
        raise NotImplementedError

    def _swap_model_now(self) -> None:
        raise NotImplementedError

    def _started(self, step: Step | None, start: int) -> None:
        raise NotImplementedError

    def _conductor(self, mode: str) -> Conductor:
        raise NotImplementedError

    def _voices_for(self, mode: str) -> None:
        raise NotImplementedError

    def _learned(self, name: str) -> None:
        raise NotImplementedError

    def _learn_feel(self, t_ns: int) -> None:
        raise NotImplementedError

    def _forget_cues(self) -> None:
        raise NotImplementedError

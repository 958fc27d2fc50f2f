"""Applying commands on the loop's thread: one handler per command type.

Commands arrive on the loop's queue (:mod:`rtgen.live.commands`) and are applied between two steps; a
handler that raises is counted, logged (sparsely) and answered on ``/rtgen/error``; the music goes on.
Every change that could leave a note hanging releases it with a real note-off first.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
from collections.abc import Callable
from typing import Any

from rtgen.config import PART_NAMES, PartConfig, PartsConfig, check_mode, needs_poly
from rtgen.errors import RtgenError
from rtgen.generation.conductor import Band
from rtgen.live import loaders
from rtgen.live.commands import (
    Command,
    CueBand,
    Learn,
    Panic,
    Play,
    RecordStart,
    RecordStop,
    SetMode,
    SetPart,
    SetPartEnabled,
    SetSection,
    SetSeed,
    SetSplit,
    SetStyle,
    SetSwing,
    SetTempo,
    Stop,
    SwapModel,
    Unlearn,
    UseSoundfont,
)
from rtgen.live.state import LoopState
from rtgen.midi.messages import CC_PAN, CC_VOLUME, CONTROL_CHANGE, PROGRAM_CHANGE
from rtgen.midi.midifile import pan_cc, volume_cc
from rtgen.patterns.styles import check_style

log = logging.getLogger(__name__)


class Handling(LoopState):
    """The loop's room for commands (see the module docstring)."""

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
        handler = _HANDLERS.get(type(cmd))
        if handler is None:
            raise ValueError(f"unknown command {cmd!r}")
        handler(self, cmd)

    # --- transport ---------------------------------------------------------------------------------
    def _on_play(self, cmd: Play) -> None:
        if self.playing:
            return
        now = self.clock.source.now_ns()
        if not self.source.request_start(now):
            return  # the followed source starts the music (Link: on its next bar; MIDI clock: the DAW)
        self.playing = True
        self._restart = True
        self._tempo_anchor = None  # a recording goes on at step 0's place in a bar
        self.transport.locate(0)
        start = self.source.deadline(self.next_k)
        self._step_start = start
        self.clock_out.start(self.transport.next_step, start, self.clock.step_ns, now)
        self._plan_next(start)

    def _on_stop(self, cmd: Stop) -> None:
        now = self.clock.source.now_ns()
        if self.playing:
            self._discard_pending()
            self.playing = False
            self.scheduler.stop()
            self._release_voicer()
            self.clock_out.stop(now)
            self._forget_cues()
        self.source.request_stop(now)

    def _on_panic(self, cmd: Panic) -> None:
        self._discard_pending()
        self.scheduler.panic()
        self._release_voicer()
        self._replan()

    def _on_tempo(self, cmd: SetTempo) -> None:
        bpm = float(cmd.bpm)
        at = self.next_k + (1 if self.pending is not None and self.pending.queued else 0)
        if not self.source.set_tempo(bpm, at, self.clock.source.now_ns()):
            return  # proposed to a session: every peer follows, and so do we at the next step
        if self.playing:
            self._step_start = self.source.deadline(self.next_k)
        for sink in self.scheduler.sinks:
            sink.set_tempo(bpm, self.source.deadline(at))

    # --- parts ---------------------------------------------------------------------------------------
    def _on_part(self, cmd: SetPart) -> None:
        changes = {
            k: v for k, v in (("program", cmd.program), ("volume", cmd.volume), ("pan", cmd.pan)) if v is not None
        }
        self._set_parts(replace_part(self.parts, cmd.part, **changes))
        ch = self.parts.get(cmd.part).channel - 1
        sched = self.scheduler
        if cmd.program is not None:
            sched.send_now((PROGRAM_CHANGE | ch, cmd.program))
        if cmd.volume is not None:
            sched.send_now((CONTROL_CHANGE | ch, CC_VOLUME, volume_cc(cmd.volume)))
        if cmd.pan is not None:
            sched.send_now((CONTROL_CHANGE | ch, CC_PAN, pan_cc(cmd.pan)))

    def _on_style(self, cmd: SetStyle) -> None:
        check_style(cmd.part, cmd.style)
        if self.parts.get(cmd.part).style == cmd.style:
            return
        parts = replace_part(self.parts, cmd.part, style=cmd.style)
        if needs_poly(self.mode, parts) and self.poly_model is None:
            raise RtgenError("the chorale style sings with the polyphonic model, not loaded: set it with /rtgen/style")
        self._silence_part(cmd.part)
        self._set_parts(parts)
        if (self.performer.chorale is None) == needs_poly(self.mode, parts):
            self._voices_for(self.mode)

    def _on_part_enabled(self, cmd: SetPartEnabled) -> None:
        if self.parts.get(cmd.part).enabled == cmd.enabled:
            return
        if not cmd.enabled:
            self._silence_part(cmd.part)
        self._set_parts(replace_part(self.parts, cmd.part, enabled=cmd.enabled))
        if cmd.enabled:  # its program, volume and pan may never have been sent (a part off at start-up)
            self._send_part_setup(self.parts.get(cmd.part))

    # --- the music -------------------------------------------------------------------------------------
    def _on_seed(self, cmd: SetSeed) -> None:
        self._discard_pending()
        self.scheduler.release_all()
        self._release_voicer()
        self.engine.reset(int(cmd.seed))
        self.performer.voicer.reseed(int(cmd.seed))  # humanize, the styles' choices and the drummer
        self._replan()

    def _on_swing(self, cmd: SetSwing) -> None:
        self.swing = float(cmd.swing)
        self.voicer.swing = self.swing

    def _on_split(self, cmd: SetSplit) -> None:
        tracker = self.tracker
        if tracker is None:
            raise RtgenError("the split sorts the player's hands, but the input is off ([input] enabled)")
        tracker.set_split(cmd.split)
        log.info("hands: %s", "the top line is the melody" if cmd.split is None else f"split at {cmd.split}")

    def _on_mode(self, cmd: SetMode) -> None:
        mode = check_mode(cmd.mode)
        if mode == self.mode:
            return
        if needs_poly(mode, self.parts) and self.poly_model is None:
            raise RtgenError(f"mode {mode} plays a polyphonic model and none is loaded: switch with /rtgen/mode")
        conductor = self._conductor(mode)
        if conductor.needs_harmoniser and not self.engine.can_harmonise:
            self.engine.model.require_harmony(mode)
        self._discard_pending()
        self.scheduler.release_all()
        self._release_voicer()
        self.performer.set_conductor(conductor)
        self._voices_for(mode)
        self._onsets.clear()
        if self.tracker is not None:
            self.tracker.take_frame()  # the new mode hears the player's polyphony from now on
        log.info("mode %s", mode)
        self._replan()

    def _on_section(self, cmd: SetSection) -> None:
        bar = self.arranger.cue(cmd.name, self.transport.peek())
        log.info("section %s cued for bar %d", cmd.name, bar + 1)

    def _on_cue_band(self, cmd: CueBand) -> None:
        band = self.performer.conductor
        if not isinstance(band, Band):  # the mode changed since it was sent, or a CC in another mode: told, not raised
            log.info("band: %s ignored in mode %s", cmd.control, self.mode)
            if self.feedback is not None:
                self.feedback.error(f"{cmd.control} is an arranger control of band mode; the mode is {self.mode}")
            return
        bar = band.cue(cmd.control, self.transport.peek())
        log.info("band: %s cued for bar %d", cmd.control, bar + 1)

    # --- swaps -------------------------------------------------------------------------------------------
    def _on_swap_model(self, cmd: SwapModel) -> None:
        loaders.retire(self.pending_model, self.pending_steps)  # replaced before its bar line
        self.pending_model, self.pending_steps = cmd.model, cmd.steps

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

    def _on_soundfont(self, cmd: UseSoundfont) -> None:
        # pointers only (~150 us), keeping each channel's program; nothing is released or re-decided:
        # sounding voices end on the old font's samples (FluidSynth frees it after them)
        cmd.synth.use_soundfont(cmd.sfid, cmd.path)
        log.info("soundfont switched to %s", cmd.path)

    # --- recording ---------------------------------------------------------------------------------------
    def _on_record_start(self, cmd: RecordStart) -> None:
        if self.recorder is not None:
            raise RtgenError(f"already recording to {self.recorder.path}; /rtgen/record/stop first")
        self.recorder = cmd.sink
        self._tempo_anchor = None
        self.scheduler.sinks.append(cmd.sink)

    def _on_record_stop(self, cmd: RecordStop) -> None:
        rec = self.recorder
        self.recorder = None
        if rec is not None and rec in self.scheduler.sinks:
            self.scheduler.sinks.remove(rec)
        if cmd.done is not None:
            cmd.done(rec)

    # --- MIDI learn ---------------------------------------------------------------------------------------
    def _on_learn(self, cmd: Learn) -> None:
        tracker = self.tracker
        if tracker is None:
            raise RtgenError("MIDI learn needs the player's input, which is off ([input] enabled)")
        tracker.learn(cmd.name)
        self._learn_done = cmd.done
        log.info("MIDI learn: move a controller for %s", cmd.name)

    def _on_unlearn(self, cmd: Unlearn) -> None:
        tracker = self.tracker
        if tracker is None:
            raise RtgenError("MIDI learn needs the player's input, which is off ([input] enabled)")
        if tracker.learning == cmd.name:
            tracker.learn(None)
            self._learn_done = None
        mapping = tracker.mapping
        if getattr(mapping.config, cmd.name) != 0:
            tracker.set_mapping(mapping.mapped(cmd.name, 0))
        self._cc_changed(cmd.name, 0)

    def _learned(self, name: str) -> None:
        """The tracker mapped the armed control ``name`` to the CC just moved."""
        tracker = self.tracker
        assert tracker is not None
        number = getattr(tracker.mapping.config, name)
        done, self._learn_done = self._learn_done, None
        try:
            if done is not None:
                done(number)
        finally:
            self._cc_changed(name, number)

    def _cc_changed(self, name: str, number: int) -> None:
        """Tell the subscribers and whoever saves the mapping (both only enqueue)."""
        if number:
            log.info("MIDI learn: %s on CC %d", name, number)
        else:
            log.info("MIDI learn: %s unmapped", name)
        if self.feedback is not None:
            self.feedback.learned(name, number)
        if self.on_cc_changed is not None and self.tracker is not None:
            self.on_cc_changed(self.tracker.mapping.config)

    # --- helpers -----------------------------------------------------------------------------------------
    def _forget_cues(self) -> None:
        """The transport stopped or moved: the band's cued bars mean nothing any more."""
        band = self.performer.conductor
        if isinstance(band, Band):
            band.forget_cues()

    def _release_voicer(self) -> None:
        # the scheduler's book has already sent the offs; this only resets the voicer's own state
        try:
            self.performer.release_all()
        except Exception as err:  # pragma: no cover - defensive
            log.warning("voicer release failed: %s", err)

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
        self.scheduler.send_now((CONTROL_CHANGE | ch, CC_VOLUME, volume_cc(part.volume)))
        self.scheduler.send_now((CONTROL_CHANGE | ch, CC_PAN, pan_cc(part.pan)))


_HANDLERS: dict[type, Callable[[Handling, Any], None]] = {
    Play: Handling._on_play,
    Stop: Handling._on_stop,
    Panic: Handling._on_panic,
    SetTempo: Handling._on_tempo,
    SetPart: Handling._on_part,
    SetStyle: Handling._on_style,
    SetPartEnabled: Handling._on_part_enabled,
    SetSeed: Handling._on_seed,
    SetSwing: Handling._on_swing,
    SetMode: Handling._on_mode,
    SetSection: Handling._on_section,
    SwapModel: Handling._on_swap_model,
    UseSoundfont: Handling._on_soundfont,
    RecordStart: Handling._on_record_start,
    RecordStop: Handling._on_record_stop,
    Learn: Handling._on_learn,
    Unlearn: Handling._on_unlearn,
    SetSplit: Handling._on_split,
    CueBand: Handling._on_cue_band,
}
"""Each command type's handler (one per type of :data:`~rtgen.live.commands.Command`)."""


def replace_part(parts: PartsConfig, name: str, **changes: Any) -> PartsConfig:
    """``parts`` with part ``name`` changed."""
    current = parts.get(name)
    return dataclasses.replace(parts, **{name: dataclasses.replace(current, **changes)})

"""The performer: one wiring of conductor + engine + voicer, shared by the daemon, render, bench and evaluate.

For each step the transport gives the position and the input stage says what the
player did (:class:`~rtgen.generation.conductor.Heard`); the conductor's plan says which parts
are observed, sampled and voiced; the engine decides the tokens; the voicer turns
them into note events for the parts rtgen plays. A part that stops being voiced (a
mode change, the player interrupting an answer) gets its note-offs in the same
step's events, so nothing is left hanging.

Pure: no clocks, no I/O. :func:`accompany_offline` runs the daemon's accompany path
on a tune (the human melody as the player) for ``rtgen-train evaluate``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from rtgen import contract as ct
from rtgen.arrange.chorale import PART as CHORALE_PART
from rtgen.arrange.chorale import ChoraleVoicer
from rtgen.arrange.voicing import NoteEvent, Voicer
from rtgen.config import PART_NAMES, Config, GenerationConfig, PartsConfig, field_range
from rtgen.generation.conductor import NOBODY, Conductor, Duet, Heard, Plan, make_conductor, needs_harmoniser
from rtgen.generation.duet import PolyNotes
from rtgen.generation.engine import Engine, Params, Step
from rtgen.generation.model import Model
from rtgen.patterns.styles import CHORALE
from rtgen.timing.transport import Position


class Performer:
    """Plays one step at a time under a conductor.

    Args:
        engine: the generation engine.
        voicer: the voicer (its parts are the configured ones; the performer mutes what the plan leaves out).
        conductor: who plays (see :mod:`rtgen.generation.conductor`).
        parts: the configured parts (channels, programs, on/off).
    """

    def __init__(self, engine: Engine, voicer: Voicer, conductor: Conductor, parts: PartsConfig) -> None:
        self.engine = engine
        self.voicer = voicer
        self.conductor = conductor
        self.parts = parts
        self._voiced: frozenset[str] = frozenset(PART_NAMES)
        self.fit = conductor.fit
        engine.follow_harmony = conductor.mode == "call-and-response"  # it answers, then harmonises again
        self.chorale: ChoraleVoicer | None = None  # sings under the player where a plan says ``chorale``
        self._adjusted_cache: tuple[Params, tuple[float, float], Params] | None = None

    @property
    def mode(self) -> str:
        """The conductor's mode."""
        return self.conductor.mode

    def set_conductor(self, conductor: Conductor) -> list[NoteEvent]:
        """Switch mode; returns note-offs for parts the new mode does not voice (apply them now)."""
        old = self.conductor
        poly_offs = self._poly_events(PolyNotes(old.release())) if isinstance(old, Duet) else []
        self.conductor = conductor
        self.fit = conductor.fit
        self.engine.follow_harmony = conductor.mode == "call-and-response"
        return poly_offs + self._voice_only(conductor.plan(Position(0, 0, 0)).voiced)

    def set_parts(self, parts: PartsConfig) -> list[NoteEvent]:
        """New part settings (instrument, channel, on/off); returns note-offs for parts that changed."""
        before = self.parts.get(CHORALE_PART)
        self.parts = parts
        events = self.voicer.set_parts(self._effective(self._voiced))
        chorale = self.chorale
        if chorale is not None:
            now = parts.get(CHORALE_PART)
            if (before.channel, before.enabled) != (now.channel, now.enabled):
                events += chorale.release_all()
            chorale.channel = now.channel - 1
        return events

    def plan(self, pos: Position) -> Plan:
        """The conductor's plan for ``pos``."""
        return self.conductor.plan(pos)

    def _adjusted(self, params: Params, plan: Plan) -> Params:
        """``params`` at the plan's temperature and density scales (cached: a plan keeps its scales for many steps)."""
        scales = (plan.temperature_scale, plan.density_scale)
        cached = self._adjusted_cache
        if cached is not None and cached[0] is params and cached[1] == scales:
            return cached[2]
        lo, hi = field_range(GenerationConfig, "density")
        out = dataclasses.replace(params, temperature=max(0.05, params.temperature * scales[0]),
                                  density=min(hi, max(lo, params.density * scales[1])))  # fmt: skip
        self._adjusted_cache = (params, scales, out)
        return out

    def _effective(self, voiced: frozenset[str]) -> PartsConfig:
        changes = {
            name: dataclasses.replace(self.parts.get(name), enabled=False)
            for name in PART_NAMES
            if name not in voiced and self.parts.get(name).enabled
        }
        return dataclasses.replace(self.parts, **changes) if changes else self.parts

    def _voice_only(self, voiced: frozenset[str]) -> list[NoteEvent]:
        if voiced == self._voiced:
            return []
        self._voiced = voiced
        return self.voicer.set_parts(self._effective(voiced))

    def release_all(self) -> list[NoteEvent]:
        """Note-offs for everything the voicers (the chorale's, a duet's answer) have sounding."""
        events = self.voicer.release_all()
        if self.chorale is not None:
            events += self.chorale.release_all()
        conductor = self.conductor
        if isinstance(conductor, Duet):
            events += self._poly_events(PolyNotes(conductor.release()))
        return events

    def _poly_events(self, notes: PolyNotes) -> list[NoteEvent]:
        """A duet answer's notes on the chords part's channel: the part that plays rtgen's polyphony (voicings, and
        the harmony of call-and-response's answer), so the answer sounds as one instrument beside the player."""
        part = self.parts.chords
        if not part.enabled and not notes.offs:
            return []
        ch = part.channel - 1
        events = [NoteEvent(0.0, 0.0, False, "chords", ch, p, 0) for p in notes.offs]
        if part.enabled:
            events += [NoteEvent(0.0, 0.0, True, "chords", ch, p, notes.velocity) for p in notes.ons]
        return events

    def perform(self, pos: Position, params: Params, heard: Heard = NOBODY, plan: Plan | None = None, *,
                section_start: bool = False, section_end: bool = False,
                ending: bool = False) -> tuple[Step, list[NoteEvent]]:  # fmt: skip
        """Decide and voice one step.

        Args:
            pos: the step's position (from the transport).
            params: the parameters in force.
            heard: what the player did at this step (quantised).
            plan: the plan, if the caller already asked the conductor for it.
            section_start: the step lies in the first bar of a song-form section (see :mod:`rtgen.arrange.form`).
            section_end: the step lies in the last bar before another section or the end; both go to
                :meth:`~rtgen.arrange.voicing.Voicer.voice` (the drummer's fill into the next section).
            ending: the step lies in the piece's last bar (the bass ends on the root, held).

        Returns:
            The engine's step and the note events of the voiced parts (offs first), relative to the step's start.
        """
        plan = plan if plan is not None else self.conductor.plan(pos)
        if plan.key is not None and params.key is None:
            params = dataclasses.replace(params, key=plan.key)
        if plan.temperature_scale != 1.0 or plan.density_scale != 1.0:
            params = self._adjusted(params, plan)
        self.voicer.drummer.variation = plan.variation
        step = self.engine.step(params, at=pos, steer=plan.steering(heard, self.fit))
        self.conductor.heard(pos, heard)
        offs = self._voice_only(plan.voicing(heard))
        fill, ending = section_end or plan.fill, ending or plan.ending
        events = self.voicer.voice(step, params, section_start=section_start, section_end=fill, ending=ending)
        chorale = self.chorale
        if chorale is not None:
            sings = self._sings(plan, heard, step)
            if sings is not None:
                events = events + chorale.voice(pos, sings, params.temperature)
            elif chorale.sounding:  # the mode or the style changed, or the part was switched off
                events = events + chorale.release_all()
        conductor = self.conductor
        if isinstance(conductor, Duet):
            notes = conductor.play(pos, params)
            if notes:
                events = events + self._poly_events(notes)
        return step, offs + events if offs else events

    def _sings(self, plan: Plan, heard: Heard, step: Step) -> Heard | None:
        """What the chorale voicer sings under at this step (the soprano, as heard), or None when it is silent:
        in chorale mode the player's melody; with the chords part in the ``chorale`` style wherever rtgen plays
        that part, the melody of the step (the player's where it is observed, else rtgen's own)."""
        part = self.parts.get(CHORALE_PART)
        if not part.enabled:
            return None
        if plan.chorale:
            return heard
        if part.style != CHORALE or CHORALE_PART not in plan.voicing(heard):
            return None
        if plan.observe_melody:
            return heard
        return Heard(melody=step.melody_token, pitch=ct.melody_pitch(step.melody_token))


def positions_from_bars(
    position: Sequence[int] | npt.ArrayLike, beat_steps: int = ct.STEPS_PER_BEAT, *, first_bar: int | None = None
) -> list[Position]:
    """Transport positions for a tune given its step-in-bar array (a bar starts where it is 0).

    Args:
        position: step in bar of every step (as in prepared data).
        beat_steps: steps per counted beat.
        first_bar: the number of the first bar (prepared data numbers a pickup bar -1, its phrase token 7);
            default: -1 when the tune starts mid-bar, else 0.
    """
    pos = np.asarray(position, dtype=np.int64)
    starts = [i for i in range(pos.size) if pos[i] == 0 or i == 0]
    ends = [*starts[1:], pos.size]
    out: list[Position] = []
    if first_bar is None:
        first_bar = -1 if pos.size and pos[0] != 0 else 0
    bar = first_bar
    for s, e in zip(starts, ends, strict=True):
        bar_steps = max(e - s, int(pos[e - 1]) + 1) if pos[s] != 0 else e - s
        for i in range(s, e):
            out.append(Position(i, bar, int(pos[i]), bar_steps, beat_steps))
        bar += 1
    return out


def _first_bar(phrase: Sequence[int] | npt.ArrayLike | None) -> int | None:
    """The first bar's number from prepared data's phrase tokens (7 = a pickup bar, numbered -1)."""
    if phrase is None:
        return None
    ph = np.asarray(phrase, dtype=np.int64).ravel()
    if ph.size == 0:
        return None
    return -1 if int(ph[0]) == ct.PHRASE_BARS - 1 else int(ph[0])


def accompany_offline(
    model: Model,
    config: Config,
    melody: Sequence[int] | npt.ArrayLike,
    velocity_bins: Sequence[int] | npt.ArrayLike | None,
    position: Sequence[int] | npt.ArrayLike,
    *,
    seed: int = 0,
    beat_steps: int = ct.STEPS_PER_BEAT,
    mode: str = "accompany",
    phrase: Sequence[int] | npt.ArrayLike | None = None,
    left: Sequence[int] | npt.ArrayLike | None = None,
) -> npt.NDArray[np.int64]:
    """The daemon's accompany path on a whole tune: the melody is the player, the model accompanies.

    Args:
        model: a model with a harmoniser (contract v2).
        config: the daemon's configuration (``[generation]`` parameters, ``[accompany]``); its key lock applies.
        melody: the player's melody tokens, one per step (as quantised live: NOTE_ON / HOLD / REST).
        velocity_bins: velocity bins per step, or None.
        position: step in bar of every step.
        seed: the sampler's seed.
        beat_steps: steps per counted beat (the voicer's bass pattern; not needed for the chords).
        mode: the conductor (``accompany``; others for comparisons).
        phrase: prepared data's bar-in-phrase tokens, to number the bars as the data does (a pickup bar
            is bar -1); default: bars counted from the first full bar.
        left: the chord the player's left hand holds at each step (a CHORD token, N.C. where none is clear),
            as :meth:`rtgen.input.tracker.PlayerTracker.left_chord_token` hears it live; default: no left hand.

    Returns:
        The resolved chord token (N.C. or a chord) sounding at each step.
    """
    if needs_harmoniser(mode):
        model.require_harmony(mode)
    mel = np.asarray(melody, dtype=np.int64).ravel()
    vel = None if velocity_bins is None else np.asarray(velocity_bins, dtype=np.int64).ravel()
    params = Params.from_config(config.generation)
    performer = Performer(
        Engine(model, params, seed=seed),
        Voicer(config.parts, seed=seed),
        make_conductor(mode, config.accompany, config.call_response, config.improvise),
        config.parts,
    )
    lh = None if left is None else np.asarray(left, dtype=np.int64).ravel()
    out = np.empty(mel.size, dtype=np.int64)
    for i, pos in enumerate(positions_from_bars(position, beat_steps, first_bar=_first_bar(phrase))):
        tok = int(mel[i])
        v = ct.bin_velocity(int(vel[i])) if vel is not None and tok >= ct.MEL_NOTE_OFFSET else None
        heard = Heard(melody=tok, velocity=v, left=ct.CHORD_NC if lh is None else int(lh[i]))
        step, _ = performer.perform(pos, params, heard)
        out[i] = step.chord_now
    return out


def improvise_offline(
    model: Model,
    config: Config,
    chord: Sequence[int] | npt.ArrayLike,
    position: Sequence[int] | npt.ArrayLike,
    *,
    seed: int = 0,
    beat_steps: int = ct.STEPS_PER_BEAT,
    phrase: Sequence[int] | npt.ArrayLike | None = None,
) -> npt.NDArray[np.int64]:
    """The daemon's improvise path on a whole tune: its chords are the player's, the model plays the melody.

    Args:
        model: the model.
        config: the daemon's configuration (``[generation]``, ``[improvise]``).
        chord: the player's chord tokens per step (HOLD / N.C. / CHORD), as recognised live.
        position: step in bar of every step.
        seed: the sampler's seed.
        beat_steps: steps per counted beat.
        phrase: prepared data's bar-in-phrase tokens (see :func:`accompany_offline`).

    Returns:
        The melody token the model played at each step.
    """
    ch = np.asarray(chord, dtype=np.int64).ravel()
    params = Params.from_config(config.generation)
    performer = Performer(
        Engine(model, params, seed=seed),
        Voicer(config.parts, seed=seed),
        make_conductor("improvise", config.accompany, config.call_response, config.improvise),
        config.parts,
    )
    out = np.empty(ch.size, dtype=np.int64)
    for i, pos in enumerate(positions_from_bars(position, beat_steps, first_bar=_first_bar(phrase))):
        step, _ = performer.perform(pos, params, Heard(chord=int(ch[i])))
        out[i] = step.melody_token
    return out

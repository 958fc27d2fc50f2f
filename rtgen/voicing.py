"""Voicing: turn engine steps into note events for the melody, chords and bass parts.

* melody: a note-on at each NOTE_ON (velocity from the step x the part's
  ``velocity_scale``), held through HOLD, released at REST or the next NOTE_ON.
* chords: each chord token strikes a close voicing between ``CHORD_LOW`` and
  ``CHORD_HIGH`` (re-strikes included), voice-led: of all inversions and octave
  placements, the one that moves least from the previous voicing. N.C. releases.
* bass: the root of the sounding chord between ``BASS_LOW`` and ``BASS_HIGH``,
  struck on chord changes and on each downbeat; in bars with an even number of
  beats (2/4, 4/4, 6/8, 12/8) the fifth on the middle beat while the chord holds.

Timing: events carry a grid offset in steps and a wall-clock offset in ms.
``swing`` delays every second sixteenth (odd positions in the bar) by
``swing`` steps: 0 is straight, 1/3 is a triplet feel, 0.5 dotted-sixteenth
feel, at most 0.75. ``humanize_ms`` adds a seeded Gaussian offset (sd =
``humanize_ms``, clipped to ±2 sd), one draw per part and step, shared by the
offs and ons of that part at that step, so a release always stays before the
re-strike that follows it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from rtgen import contract as ct
from rtgen.config import PART_NAMES, PartConfig, PartsConfig
from rtgen.engine import Params, Step
from rtgen.notes import NoteTracker

CHORD_LOW = 52  # E3
CHORD_HIGH = 72  # C5
CHORD_CENTRE = 62.0
BASS_LOW = 40  # E2
BASS_HIGH = 52  # E3
CHORD_VELOCITY = 70
BASS_VELOCITY = 84
DOWNBEAT_ACCENT = 8


@dataclass(frozen=True)
class NoteEvent:
    """One note-on or note-off, timed relative to the start of the voiced step.

    Attributes:
        step_offset: grid time in steps relative to the step's start (swing moves it).
        ms_offset: extra wall-clock offset in ms (humanize), may be negative.
        on: True for note-on, False for note-off.
        part: ``"melody"``, ``"chords"`` or ``"bass"``.
        channel: 0-based MIDI channel.
        pitch: MIDI pitch.
        velocity: MIDI velocity (0 for note-offs).
    """

    step_offset: float
    ms_offset: float
    on: bool
    part: str
    channel: int
    pitch: int
    velocity: int


def _clip_pitch(pitch: int) -> int:
    while pitch < 0:
        pitch += 12
    while pitch > 127:
        pitch -= 12
    return pitch


def _velocity(base: float, scale: float) -> int:
    return min(127, max(1, round(base * scale)))


@functools.lru_cache(maxsize=512)
def chord_voicings(chord: ct.Chord, low: int = CHORD_LOW, high: int = CHORD_HIGH) -> tuple[tuple[int, ...], ...]:
    """Every close-position voicing (each inversion, each octave) of ``chord`` within ``low..high``.

    Returns:
        Ascending pitch tuples, sorted by lowest pitch then inversion (deterministic).
    """
    pcs = [(chord.root + i) % 12 for i in chord.intervals]
    out: list[tuple[int, ...]] = []
    for inv in range(len(pcs)):
        order = pcs[inv:] + pcs[:inv]
        for bottom in range(low, low + 12):
            if bottom % 12 != order[0]:
                continue
            notes = [bottom]
            for pc in order[1:]:
                nxt = notes[-1] + 1
                while nxt % 12 != pc:
                    nxt += 1
                notes.append(nxt)
            octave = 0
            while notes[-1] + octave <= high:
                out.append(tuple(n + octave for n in notes))
                octave += 12
    return tuple(sorted(out))


@functools.lru_cache(maxsize=4096)
def voice_lead(chord: ct.Chord, previous: tuple[int, ...] | None) -> tuple[int, ...]:
    """The voicing of ``chord`` that moves least from ``previous`` (or sits nearest the centre).

    Movement is the sum over voices of the distance to the nearest previous voice, both
    ways (so chords of different sizes compare fairly). Ties go to the lower voicing.
    """
    candidates = chord_voicings(chord)
    if not previous:
        return min(candidates, key=lambda v: (abs(sum(v) / len(v) - CHORD_CENTRE), v))
    prev = previous

    # plain Python: a dozen candidates of 3-4 notes is faster than numpy's per-call overhead
    def cost(v: tuple[int, ...]) -> tuple[int, tuple[int, ...]]:
        there = sum(min(abs(a - b) for b in prev) for a in v)
        back = sum(min(abs(a - b) for a in v) for b in prev)
        return (there + back, v)

    return min(candidates, key=cost)


def bass_pitch(pitch_class: int, octave: int = 0) -> int:
    """The pitch of ``pitch_class`` in the bass register (``BASS_LOW`` up to below ``BASS_HIGH``)."""
    return _clip_pitch(BASS_LOW + (pitch_class - BASS_LOW) % 12 + 12 * octave)


class Voicer:
    """Turns :class:`~rtgen.engine.Step` objects into :class:`NoteEvent` lists and tracks sounding notes.

    Args:
        parts: channels, octaves, velocity scales and on/off per part.
        swing: 0..0.75, delay of every second sixteenth in steps.
        humanize_ms: standard deviation of the random timing offset in ms (0 = none).
        seed: seed of the humanize generator.
    """

    def __init__(self, parts: PartsConfig, *, swing: float = 0.0, humanize_ms: float = 0.0, seed: int = 0) -> None:
        self.parts = parts
        self.swing = swing
        self.humanize_ms = humanize_ms
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        # one tracker per part: the voicer releases a part's own notes, even on a shared channel
        self._sounding: dict[str, NoteTracker] = {name: NoteTracker() for name in PART_NAMES}
        self._voicing: tuple[int, ...] | None = None  # last chord voicing (for voice leading)
        self._chord_struck: int = ct.CHORD_NC  # chord the chords part is sounding
        self._bass_chord: int = ct.CHORD_NC  # chord whose root/fifth the bass is sounding

    def reset(self, seed: int | None = None) -> list[NoteEvent]:
        """Release everything and start again (re-seeding humanize; ``None`` keeps the seed)."""
        offs = self.release_all()
        if seed is not None:
            self.seed = seed
        self.rng = np.random.default_rng(self.seed)
        self._voicing = None
        return offs

    @property
    def sounding(self) -> dict[str, list[tuple[int, int]]]:
        """Copy of the notes sounding per part, as ``(channel, pitch)``."""
        return {k: v.sounding() for k, v in self._sounding.items()}

    def _jitter(self) -> float:
        if self.humanize_ms <= 0:
            return 0.0
        sd = self.humanize_ms
        return min(2 * sd, max(-2 * sd, float(self.rng.normal(0.0, sd))))

    def _offs(self, part: str, step_offset: float, ms: float) -> list[NoteEvent]:
        notes = self._sounding[part]
        events = [NoteEvent(step_offset, ms, False, part, ch, p, 0) for ch, p in notes.sounding()]
        notes.clear()
        return events

    def _ons(self, part: str, cfg: PartConfig, pitches: list[int], velocity: int, step_offset: float,
             ms: float) -> list[NoteEvent]:  # fmt: skip
        ch = cfg.channel - 1
        events = []
        notes = self._sounding[part]
        for p in pitches:
            if (ch, p) in notes:
                continue  # a voicing never doubles a key on one channel
            notes.on(ch, p)
            events.append(NoteEvent(step_offset, ms, True, part, ch, p, velocity))
        return events

    def voice(self, step: Step, params: Params) -> list[NoteEvent]:
        """Note events for one step: note-offs first, then note-ons.

        Args:
            step: the engine's step.
            params: the parameters in force (for the meter of the bar; see ``step.bar_steps``).

        Returns:
            The events of this step (possibly none).
        """
        step_offset = self.swing if step.position % 2 == 1 else 0.0
        offs: list[NoteEvent] = []
        ons: list[NoteEvent] = []

        # --- melody ---
        cfg = self.parts.melody
        tok = step.melody_token
        if cfg.enabled and tok != ct.MEL_HOLD and (tok >= ct.MEL_NOTE_OFFSET or self._sounding["melody"]):
            ms = self._jitter()
            offs += self._offs("melody", step_offset, ms)
            pitch = ct.melody_pitch(tok)
            if pitch is not None:
                p = _clip_pitch(pitch + 12 * cfg.octave)
                ons += self._ons("melody", cfg, [p], _velocity(step.velocity, cfg.velocity_scale), step_offset, ms)

        downbeat = step.position == 0
        # --- chords ---
        cfg = self.parts.chords
        if cfg.enabled:
            restart = downbeat and step.chord_now != ct.CHORD_NC and not self._sounding["chords"]
            if step.chord_token != ct.CHORD_HOLD or restart:
                ms = self._jitter()
                offs += self._offs("chords", step_offset, ms)
                self._chord_struck = step.chord_now
                if step.chord_now != ct.CHORD_NC:
                    chord = ct.Chord.from_token(step.chord_now)
                    self._voicing = voice_lead(chord, self._voicing)
                    pitches = [_clip_pitch(p + 12 * cfg.octave) for p in self._voicing]
                    vel = _velocity(CHORD_VELOCITY + (DOWNBEAT_ACCENT if downbeat else 0), cfg.velocity_scale)
                    ons += self._ons("chords", cfg, pitches, vel, step_offset, ms)

        # --- bass ---
        cfg = self.parts.bass
        if cfg.enabled:
            beats = max(1, step.bar_steps // max(1, step.beat_steps))
            middle = beats >= 2 and beats % 2 == 0 and step.position == (beats // 2) * step.beat_steps
            change = step.chord_now != self._bass_chord
            if step.chord_now == ct.CHORD_NC:
                if self._sounding["bass"]:
                    offs += self._offs("bass", step_offset, self._jitter())
                self._bass_chord = ct.CHORD_NC
            elif change or downbeat or middle or (step.chord_token != ct.CHORD_HOLD and not self._sounding["bass"]):
                chord = ct.Chord.from_token(step.chord_now)
                pc = chord.root
                if middle and not change:
                    fifth = [i for i in chord.intervals if i in (6, 7, 8)]
                    pc = (chord.root + (fifth[0] if fifth else 0)) % 12
                ms = self._jitter()
                offs += self._offs("bass", step_offset, ms)
                vel = _velocity(BASS_VELOCITY + (DOWNBEAT_ACCENT if downbeat else 0), cfg.velocity_scale)
                ons += self._ons("bass", cfg, [bass_pitch(pc, cfg.octave)], vel, step_offset, ms)
                self._bass_chord = step.chord_now
        return offs + ons

    def release_all(self) -> list[NoteEvent]:
        """Note-offs (at offset 0) for every sounding note of every part; the parts fall silent."""
        events: list[NoteEvent] = []
        for part in PART_NAMES:
            events += self._offs(part, 0.0, 0.0)
        self._chord_struck = ct.CHORD_NC
        self._bass_chord = ct.CHORD_NC
        return events

    def set_parts(self, parts: PartsConfig) -> list[NoteEvent]:
        """Switch to new part settings; returns note-offs for parts whose channel, octave or on/off changed."""
        events: list[NoteEvent] = []
        for part in PART_NAMES:
            old, new = self.parts.get(part), parts.get(part)
            if (old.channel, old.octave, old.enabled) != (new.channel, new.octave, new.enabled):
                events += self._offs(part, 0.0, 0.0)
                if part == "bass":
                    self._bass_chord = ct.CHORD_NC
                if part == "chords":
                    self._chord_struck = ct.CHORD_NC
        self.parts = parts
        return events

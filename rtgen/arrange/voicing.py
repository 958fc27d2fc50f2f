"""Voicing: turn engine steps into note events for the melody, chords, bass and drum parts.

* melody: a note-on at each NOTE_ON (velocity from the step x the part's
  ``velocity_scale``), held through HOLD, released at REST or the next NOTE_ON.
* chords: close voicings between ``CHORD_LOW`` and ``CHORD_HIGH``, voice-led: of
  all inversions and octave placements, the one that moves least from the previous
  voicing. How they are played is the part's style (:mod:`rtgen.patterns.styles`): block
  (each chord token strikes the voicing, re-strikes included, held), arpeggio,
  strum (each string 10-25 ms after the one before, down strokes on the beats, up
  strokes between), waltz or jig stabs. N.C. releases.
* bass: a note of the sounding chord between ``BASS_LOW`` and ``BASS_HIGH``: the
  root on chord changes and on each downbeat, and what the bass style adds (the
  fifth on the middle beat of an even bar, the waltz's alternating root and fifth,
  a walking line with an approach note on the last beat).
* drums: the :class:`~rtgen.patterns.drums.Drummer` on its own channel (10), following the
  transport position and the density; each hit lasts one step.

Every note-on gets its own note-off: a part releases what it has sounding before it
strikes again (a key struck again is released first).

Timing: events carry a grid offset in steps and a wall-clock offset in ms.
``swing`` delays every second sixteenth (odd positions in the bar) by
``swing`` steps: 0 is straight, 1/3 is a triplet feel, 0.5 dotted-sixteenth
feel, at most 0.75. ``humanize_ms`` adds a seeded Gaussian offset (sd =
``humanize_ms``, clipped to ±2 sd), one draw per part and step, shared by the
offs and ons of that part at that step, so a release always stays before the
re-strike that follows it (a strum adds its spread to the note-ons only).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np

from rtgen import contract as ct
from rtgen.config import PART_NAMES, PartConfig, PartsConfig
from rtgen.generation.engine import Params, Step
from rtgen.midi.notes import NoteTracker
from rtgen.patterns.drums import Drummer
from rtgen.patterns.styles import CHORALE, BassStyle, ChordStyle, check_style, styles

CHORD_LOW = 52  # E3
CHORD_HIGH = 72  # C5
CHORD_CENTRE = 62.0
BASS_LOW = 40  # E2
BASS_HIGH = 52  # E3
CHORD_VELOCITY = 70
BASS_VELOCITY = 84
DOWNBEAT_ACCENT = 8
STRUM_SPAN_MS = 45.0  # a strum's first to last string at most


@dataclass(frozen=True)
class NoteEvent:
    """One note-on or note-off, timed relative to the start of the voiced step.

    Attributes:
        step_offset: grid time in steps relative to the step's start (swing moves it).
        ms_offset: extra wall-clock offset in ms (humanize), may be negative.
        on: True for note-on, False for note-off.
        part: ``"melody"``, ``"chords"``, ``"bass"`` or ``"drums"``.
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
    """Turns :class:`~rtgen.generation.engine.Step` objects into :class:`NoteEvent` lists and tracks sounding notes.

    Args:
        parts: channels, octaves, velocity scales, styles and on/off per part.
        swing: 0..0.75, delay of every second sixteenth in steps.
        humanize_ms: standard deviation of the random timing offset in ms (0 = none).
        seed: seed of the humanize generator, the styles' choices and the drummer.
    """

    def __init__(self, parts: PartsConfig, *, swing: float = 0.0, humanize_ms: float = 0.0, seed: int = 0) -> None:
        self.parts = parts
        self.swing = swing
        self.humanize_ms = humanize_ms
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self._style_rng = np.random.default_rng([seed, 17])  # strum spreads, approach notes
        self.library = styles()
        self.drummer = Drummer(seed, parts.drums.style)
        # one tracker per part: the voicer releases a part's own notes, even on a shared channel
        self._sounding: dict[str, NoteTracker] = {name: NoteTracker() for name in PART_NAMES}
        self._voicing: tuple[int, ...] | None = None  # last chord voicing (for voice leading)
        self._chord_struck: int = ct.CHORD_NC  # chord the chords part is sounding
        self._bass_chord: int = ct.CHORD_NC  # chord whose root/fifth the bass is sounding
        self._release_at: int | None = None  # step index at which a pattern's stab ends
        self._arp: tuple[int, ...] = ()  # the arpeggio's notes in playing order
        self._arp_next = 0
        self._style_cache: dict[tuple[str, str, int, int], tuple[ChordStyle, BassStyle]] = {}

    def reset(self, seed: int | None = None) -> list[NoteEvent]:
        """Release everything and start again (re-seeding humanize; ``None`` keeps the seed)."""
        offs = self.release_all()
        self.reseed(self.seed if seed is None else seed)
        self.drummer.reset()
        self._voicing = None
        return offs

    def reseed(self, seed: int) -> None:
        """Draw humanize, the styles' choices and the drums from ``seed`` from the next step on."""
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self._style_rng = np.random.default_rng([seed, 17])
        self.drummer.reseed(seed)

    @property
    def sounding(self) -> dict[str, list[tuple[int, int]]]:
        """Copy of the notes sounding per part, as ``(channel, pitch)``."""
        return {k: v.sounding() for k, v in self._sounding.items()}

    def styles_for(self, bar_steps: int, beat_steps: int) -> tuple[ChordStyle, BassStyle]:
        """The chords and bass styles that play in a bar of this meter (``auto`` and fallbacks resolved)."""
        key = (self.parts.chords.style, self.parts.bass.style, bar_steps, beat_steps)
        found = self._style_cache.get(key)
        if found is None:
            chords = self.library.chord_style(key[0], (bar_steps, beat_steps))
            found = (chords, self.library.bass_style(key[1], chords))
            self._style_cache[key] = found
        return found

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
             ms: float, spread_ms: float = 0.0) -> list[NoteEvent]:  # fmt: skip
        ch = cfg.channel - 1
        events: list[NoteEvent] = []
        notes = self._sounding[part]
        for p in pitches:
            if (ch, p) in notes:
                continue  # a voicing never doubles a key on one channel
            notes.on(ch, p)
            events.append(NoteEvent(step_offset, ms + spread_ms * len(events), True, part, ch, p, velocity))
        return events

    def voice(self, step: Step, params: Params, *, section_start: bool = False, section_end: bool = False,
              ending: bool = False) -> list[NoteEvent]:  # fmt: skip
        """Note events for one step: note-offs first, then note-ons.

        Args:
            step: the engine's step.
            params: the parameters in force (the density drives the drummer; see ``step.bar_steps`` for the meter).
            section_start: the step lies in the first bar of a song-form section: the drummer counts its
                phrases from there.
            section_end: the step lies in the last bar of a section: the drummer plays a fill in it (and a
                crash on the next downbeat).
            ending: the step lies in the piece's last bar: the bass plays each chord's root where it starts
                and holds it (no walk, no fifth), so the piece ends on the root, in every style.

        Returns:
            The events of this step (possibly none).
        """
        if section_start:
            self.drummer.start_phrase(step.bar)
        if section_end:
            self.drummer.cue_fill(step.bar)
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

        chords_style, bass_style = self.styles_for(step.bar_steps, step.beat_steps)
        if self.parts.chords.enabled:
            self._voice_chords(step, chords_style, step_offset, offs, ons)
        if self.parts.bass.enabled:
            self._voice_bass(step, bass_style, step_offset, offs, ons, ending=ending)
        cfg = self.parts.drums
        if cfg.enabled:
            hits = self.drummer.hits(step.bar, step.position, step.bar_steps, step.beat_steps, params.density)
            if hits or self._sounding["drums"]:
                ms = self._jitter()
                offs += self._offs("drums", step_offset, ms)
                ch = cfg.channel - 1
                notes = self._sounding["drums"]
                for key, vel in hits:
                    notes.on(ch, key)
                    ons.append(NoteEvent(step_offset, ms, True, "drums", ch, key, _velocity(vel, cfg.velocity_scale)))
        return offs + ons

    def _voice_chords(self, step: Step, style: ChordStyle, step_offset: float, offs: list[NoteEvent],
                      ons: list[NoteEvent]) -> None:  # fmt: skip
        cfg = self.parts.chords
        downbeat = step.position == 0
        now = step.chord_now
        if style.kind == CHORALE:  # the chorale voicer sings the part (the performer's)
            if self._sounding["chords"]:
                offs += self._offs("chords", step_offset, 0.0)
            return
        if style.kind == "block" or now == ct.CHORD_NC:
            restart = downbeat and now != ct.CHORD_NC and not self._sounding["chords"]
            if step.chord_token != ct.CHORD_HOLD or restart or (now == ct.CHORD_NC and self._sounding["chords"]):
                ms = self._jitter()
                offs += self._offs("chords", step_offset, ms)
                self._chord_struck = now
                self._release_at = None
                if now != ct.CHORD_NC:
                    self._voicing = voice_lead(ct.Chord.from_token(now), self._voicing)
                    pitches = [_clip_pitch(p + 12 * cfg.octave) for p in self._voicing]
                    vel = _velocity(CHORD_VELOCITY + (DOWNBEAT_ACCENT if downbeat else 0), cfg.velocity_scale)
                    ons += self._ons("chords", cfg, pitches, vel, step_offset, ms)
            return
        meter = (step.bar_steps, step.beat_steps)
        changed = now != self._chord_struck
        if changed:
            self._chord_struck = now
            self._voicing = voice_lead(ct.Chord.from_token(now), self._voicing)
        voicing = [_clip_pitch(p + 12 * cfg.octave) for p in self._voicing or ()]
        accent = DOWNBEAT_ACCENT if downbeat else 0
        if style.kind == "pattern":
            hit = step.position in style.hits.get(meter, ())
            due = self._release_at is not None and step.index >= self._release_at
            if (hit or changed or due) and self._sounding["chords"]:
                ms = self._jitter()
                offs += self._offs("chords", step_offset, ms)
                self._release_at = None
            else:
                ms = self._jitter() if hit else 0.0
            if hit:
                vel = _velocity(CHORD_VELOCITY - 6 + accent, cfg.velocity_scale)
                ons += self._ons("chords", cfg, voicing, vel, step_offset, ms)
                self._release_at = step.index + style.length
        elif style.kind == "strum":
            hits = style.hits.get(meter, ())
            if step.position in hits or changed:
                ms = self._jitter()
                offs += self._offs("chords", step_offset, ms)
                lo, hi = style.spread_ms
                # the whole stroke within STRUM_SPAN_MS, so it ends before the next sixteenth up to ~330 BPM
                spread = min(float(self._style_rng.uniform(lo, hi)), STRUM_SPAN_MS / max(1, len(voicing) - 1))
                if step.position in style.up.get(meter, ()) and not changed:
                    strings = sorted(voicing, reverse=True)[: style.up_strings]
                    vel = _velocity(CHORD_VELOCITY - 14, cfg.velocity_scale)
                else:
                    strings = sorted(voicing)
                    vel = _velocity(CHORD_VELOCITY + accent, cfg.velocity_scale)
                ons += self._ons("chords", cfg, strings, vel, step_offset, ms, spread)
        else:  # arpeggio
            if changed or downbeat:
                ms = self._jitter()
                offs += self._offs("chords", step_offset, ms)
                self._arp = _arpeggio(voicing, style.order)
                self._arp_next = 0
            elif step.position % style.rate == 0:
                ms = self._jitter()
            else:
                return
            if not self._arp:
                return
            pitch = self._arp[self._arp_next % len(self._arp)]
            self._arp_next += 1
            notes = self._sounding["chords"]
            ch = cfg.channel - 1
            if (ch, pitch) in notes:  # let the others ring; this one is struck again
                notes.off(ch, pitch)
                offs.append(NoteEvent(step_offset, ms, False, "chords", ch, pitch, 0))
            vel = _velocity(CHORD_VELOCITY - 4 + accent, cfg.velocity_scale)
            ons += self._ons("chords", cfg, [pitch], vel, step_offset, ms)

    def _voice_bass(self, step: Step, style: BassStyle, step_offset: float, offs: list[NoteEvent],
                    ons: list[NoteEvent], *, ending: bool = False) -> None:  # fmt: skip
        cfg = self.parts.bass
        now = step.chord_now
        if now == ct.CHORD_NC:
            if self._sounding["bass"]:
                offs += self._offs("bass", step_offset, self._jitter())
            self._bass_chord = ct.CHORD_NC
            return
        downbeat = step.position == 0
        change = now != self._bass_chord
        tone = style.pattern((step.bar_steps, step.beat_steps)).get(step.position)
        if ending:  # the last bar: the root on its downbeat and where a chord starts, held to the end
            tone = "root" if downbeat else None
        if change or tone is not None or (step.chord_token != ct.CHORD_HOLD and not self._sounding["bass"]):
            chord = ct.Chord.from_token(now)
            pitch = self._bass_tone(chord, "root" if change or tone is None else tone, step.bar, cfg.octave)
            ms = self._jitter()
            offs += self._offs("bass", step_offset, ms)
            vel = _velocity(BASS_VELOCITY + (DOWNBEAT_ACCENT if downbeat else 0), cfg.velocity_scale)
            ons += self._ons("bass", cfg, [pitch], vel, step_offset, ms)
            self._bass_chord = now

    def _bass_tone(self, chord: ct.Chord, tone: str, bar: int, octave: int) -> int:
        """The bass pitch of ``tone`` of ``chord``."""
        fifth = next((i for i in chord.intervals if i in (6, 7, 8)), 0)
        if tone == "fifth" or (tone == "alt" and bar % 2 == 1):
            return bass_pitch(chord.root + fifth, octave)
        if tone == "third":
            third = next((i for i in chord.intervals if i in (3, 4)), fifth)
            return bass_pitch(chord.root + third, octave)
        if tone == "approach":
            # the engine has not chosen the next chord yet: lead into the root the next bar starts on
            # if the chord holds, by a chromatic step from below or a scale step from above
            target = bass_pitch(chord.root, octave)
            lo, hi = BASS_LOW + 12 * octave, BASS_HIGH + 12 * octave
            prefer = (-1, 2, 1, -2) if self._style_rng.random() < 0.6 else (2, -1, 1, -2)
            return next((target + d for d in prefer if lo <= target + d < hi), target)
        return bass_pitch(chord.root, octave)

    def release_all(self) -> list[NoteEvent]:
        """Note-offs (at offset 0) for every sounding note of every part; the parts fall silent."""
        events: list[NoteEvent] = []
        for part in PART_NAMES:
            events += self._offs(part, 0.0, 0.0)
        self._forget_state(PART_NAMES)
        return events

    def _forget_state(self, parts: tuple[str, ...] | list[str]) -> None:
        if "chords" in parts:
            self._chord_struck = ct.CHORD_NC
            self._release_at = None
            self._arp = ()
        if "bass" in parts:
            self._bass_chord = ct.CHORD_NC

    def silence(self, part: str) -> list[NoteEvent]:
        """Note-offs (at offset 0) for ``part``'s sounding notes; the part starts afresh at its next onset.

        The daemon calls this after its scheduler has already released the part's notes (the offs are
        then its to drop); render and tests send them.
        """
        events = self._offs(part, 0.0, 0.0)
        self._forget_state([part])
        return events

    def set_parts(self, parts: PartsConfig) -> list[NoteEvent]:
        """Switch to new part settings; returns note-offs for parts whose channel, octave, style or on/off changed."""
        events: list[NoteEvent] = []
        for part in PART_NAMES:
            old, new = self.parts.get(part), parts.get(part)
            if (old.channel, old.octave, old.enabled, old.style) != (new.channel, new.octave, new.enabled, new.style):
                events += self.silence(part)
        if parts.drums.style != self.drummer.style:
            self.drummer.set_style(parts.drums.style)
        self.parts = parts
        return events

    def set_style(self, part: str, style: str) -> list[NoteEvent]:
        """Play ``part`` in ``style`` from now on; returns the note-offs of what the part had sounding.

        Raises:
            ValueError: an unknown style for the part (the allowed ones are named).
        """
        check_style(part, style)
        current = self.parts.get(part)
        return self.set_parts(dataclasses.replace(self.parts, **{part: dataclasses.replace(current, style=style)}))


def _arpeggio(voicing: list[int], order: str) -> tuple[int, ...]:
    """The notes of an arpeggio over ``voicing`` (its lowest note doubled an octave up when that stays in range)."""
    up = sorted(voicing)
    if up and up[0] + 12 <= CHORD_HIGH and up[0] + 12 not in up:
        up.append(up[0] + 12)
    if order == "down":
        return tuple(reversed(up))
    if order == "updown":
        return tuple(up + up[-2:0:-1])
    return tuple(up)

"""The chorale voicer: alto, tenor and bass under the player's melody, from a polyphonic model.

The player's melody is the soprano. On each beat (the chorale model's frames are quarter notes: one model step
per beat) the voicer clamps the soprano into the model and samples the frame under it; the frame's pitches
below the soprano become the voices (:func:`pick_voices`). A voice that keeps its pitch from one beat to the
next is held, not struck again. The beat is decided the moment the player's note for it arrives (the daemon's
reactive step, as in accompany); a note struck while the voices are silent brings them in at once, on any step.

The model runs in C: its training pieces were all transposed to C major or C minor. The player's key is
estimated as they play (:func:`rtgen.generation.keys.estimate_key`, Temperley's profiles, on the soprano's
sounding beats per pitch class); the soprano is moved into the model's key and register
(:meth:`ChoraleVoicer.transposition`) and the voices sampled there are moved back.

The sampler is a rejection sampler: each beat draws :data:`DRAWS` candidate frames from the same state in one
graph call (the batch: about 1.6 times the cost of one draw) and plays the first that breaks no rule of four-part
writing (:func:`faults`: fewer than three voices under the soprano, parallel fifths or octaves with the beat
before, voice overlap, more than an octave between upper voices, a voice out of its range), so what sounds is
the model's distribution given that the beat is well formed; when none is clean, the one with the fewest faults.
The model's state goes on from the candidate that sounds.

Fewer than three voices after every draw: the voices there sound (two: alto and bass; one: bass). More than
three: alto and tenor are the two highest, bass the lowest; the ones between tenor and bass are left out.

Pure: no clock, no I/O; the daemon's performer calls :meth:`ChoraleVoicer.voice` once per grid step, and
:func:`chorale_offline` runs the same path on a whole melody (``rtgen-train chorale-eval``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

from rtgen import contract as ct
from rtgen.arrange.voiceleading import Voicing, out_of_range, overlaps, parallels, spaced
from rtgen.arrange.voicing import NoteEvent
from rtgen.generation.keys import estimate_key

if TYPE_CHECKING:
    from rtgen.generation.conductor import Heard
    from rtgen.timing.transport import Position

DRAWS = 8
"""Candidates drawn per beat (the stepper's rows, one graph call): the first clean one plays (:func:`faults`)."""
MODEL_SOPRANO_MEAN = 83.0
"""The mean soprano pitch of the JSB training pieces as the model saw them (transposed up into C: MIDI 83, B5)."""
RESET_BEATS = 4
"""Beats of silence after which the next note starts a new chorale (fresh model state)."""
PART = "chords"
"""The part whose channel, program and volume the voices play on."""

Voices = tuple[int | None, int | None, int | None]
"""Alto, tenor, bass (MIDI pitches; None for a silent voice)."""
SILENT: Voices = (None, None, None)


class Stepper(Protocol):
    """What the voicer needs of a polyphonic model's stepper (:class:`rtgen.generation.poly.PolyStepper`)."""

    rows: int

    def reset(self) -> None:
        """Zero state."""
        ...

    def draw(self, clamp: npt.NDArray[np.float32] | None = None, observed: npt.NDArray[np.bool_] | None = None,
             pos: int = 0, temperature: float = 1.0) -> npt.NDArray[np.float32]:  # fmt: skip
        """``(rows, P)`` candidates for the next frame (observed pitches set to clamp's values)."""
        ...

    def take(self, row: int) -> None:
        """The stream goes on from candidate ``row``."""
        ...


def pick_voices(pitches: Sequence[int] | npt.ArrayLike, soprano: int) -> Voices:
    """Alto, tenor and bass from a sampled frame's pitches below ``soprano`` (see the module docstring).

    Args:
        pitches: the frame's MIDI pitches (any order; the soprano and anything above it are ignored).
        soprano: the soprano's MIDI pitch.
    """
    below = sorted((int(p) for p in np.asarray(pitches).ravel() if p < soprano), reverse=True)
    if len(below) >= 3:
        return (below[0], below[1], below[-1])
    if len(below) == 2:
        return (below[0], None, below[1])
    if len(below) == 1:
        return (None, None, below[0])
    return SILENT


def _count(v: Voices) -> int:
    return sum(p is not None for p in v)


def _moved(voices: Voices, by: int) -> Voices:
    a, t, b = (None if p is None else min(127, max(0, p + by)) for p in voices)
    return (a, t, b)


def faults(before: Voicing, now: Voicing) -> int:
    """How badly the beat ``now`` (soprano, alto, tenor, bass) breaks the rules of four-part writing after
    ``before``: two for each missing lower voice, one for each parallel fifth or octave, voice overlap, spacing
    over an octave in the upper voices and voice out of its range (:mod:`rtgen.arrange.voiceleading`)."""
    n = 2 * sum(p is None for p in now[1:]) + out_of_range(now) + spaced(now)
    if before[0] is not None and any(p is not None for p in before[1:]):
        fifths, octaves = parallels(before, now)
        n += fifths + octaves + overlaps(before, now)
    return n


class ChoraleVoicer:
    """Three lower voices under the player's soprano (see the module docstring).

    Args:
        stepper: the polyphonic model's stepper (one voice stream, owned by this voicer).
        low_pitch: the MIDI pitch of the model's pitch index 0.
        n_pitches: the model's pitches.
        step_beats: the length of one model frame in beats (the chorale model: 1.0).
        centred_key: the model was trained in C major / C minor (transpose into C); False: play as heard.
        channel: the 0-based MIDI channel of the voices.
    """

    def __init__(self, stepper: Stepper, *, low_pitch: int, n_pitches: int, step_beats: float = 1.0,
                 centred_key: bool = True, channel: int = 1) -> None:  # fmt: skip
        self.stepper = stepper
        self.low_pitch = low_pitch
        self.n_pitches = n_pitches
        self.step_beats = step_beats
        self.centred_key = centred_key
        self.channel = channel
        self.weights = np.zeros(12, dtype=np.float64)  # soprano's sounding beats per pitch class (the key)
        self._clamp = np.zeros(n_pitches, dtype=np.float32)
        self._observed = np.zeros(n_pitches, dtype=bool)
        self.reset()

    def reset(self) -> None:
        """A new piece: fresh model state, key unknown, nothing sounding (call :meth:`release_all` first)."""
        self.stepper.reset()
        self.weights[:] = 0.0
        self.key: ct.Key | None = None
        self.shift = 0  # model pitch = player's pitch + shift
        self._sum = 0.0
        self._n = 0
        self.voices: Voices = SILENT
        self.soprano: int | None = None
        self.last: Voicing = (None, *SILENT)  # the last beat decided, soprano first (None after a release)
        self.silent_beats = 0
        self.beats = 0  # model steps taken
        self.redraws = 0  # candidates passed over before the one played (a sequential sampler's extra draws)
        self.short = 0  # beats where no candidate was clean (the one with the fewest faults played)
        self.velocity = 80

    # --- the model, in the player's key --------------------------------------------------------------
    def transposition(self, soprano: int) -> int:
        """The shift (semitones) from the player's pitches to the model's, updated with ``soprano``'s beat.

        The key is re-estimated from the soprano's beats so far; when it changes (or on the first note) the
        shift moves the key's tonic to C (any octave) choosing the octave that brings the soprano's mean so
        far nearest the model's (:data:`MODEL_SOPRANO_MEAN`). Between key changes the shift stays, so the
        model's register does not jump while the melody moves.
        """
        self.weights[soprano % 12] += 1.0
        self._sum += soprano
        self._n += 1
        if not self.centred_key:
            return 0
        key = estimate_key(self.weights, "temperley")
        if key is not None and key != self.key:
            self.key = key
            base = -key.tonic % 12  # 0..11 up to the C above
            mean = self._sum / self._n
            octaves = round((MODEL_SOPRANO_MEAN - mean - base) / 12)
            self.shift = base + 12 * octaves
        return self.shift

    def decide(self, soprano: int, temperature: float = 1.0, pos: int = 0) -> Voices:
        """One model step under ``soprano``: the voices (in the player's pitches) of the first candidate that breaks
        no rule of four-part writing (:func:`faults`), else of the one with the fewest faults."""
        shift = self.transposition(soprano)
        index = soprano + shift - self.low_pitch
        if not 0 <= index < self.n_pitches:  # a soprano beyond the model's pitches: fold it by octaves
            index = index % 12 + (self.n_pitches - 12 if index >= self.n_pitches else 0)
        model_soprano = index + self.low_pitch
        back = soprano - model_soprano
        self._clamp.fill(0.0)
        self._clamp[index] = 1.0
        self._observed.fill(False)
        self._observed[index:] = True  # the soprano, and nothing above it
        before = self.last
        frames = self.stepper.draw(self._clamp, self._observed, pos=pos, temperature=temperature)
        best: Voices = SILENT
        best_faults = best_row = -1
        for row in range(frames.shape[0]):  # in order: the first clean candidate is a rejection sampler's draw
            drawn = pick_voices(np.flatnonzero(frames[row]) + self.low_pitch, model_soprano)
            voices = _moved(drawn, back)
            n = faults(before, (soprano, *voices))
            if best_faults < 0 or n < best_faults:
                best, best_faults, best_row = voices, n, row
                if n == 0:
                    break
        self.redraws += best_row
        self.short += best_faults > 0
        self.stepper.take(best_row)
        self.beats += 1
        self.last = (soprano, *best)
        return best

    # --- the live path -------------------------------------------------------------------------------
    def voice(self, pos: Position, heard: Heard, temperature: float = 1.0) -> list[NoteEvent]:
        """The voices' note events at one grid step (offs first, relative to the step's start).

        A beat with the soprano sounding (or a note struck while the voices are silent) takes one model step;
        a beat without it releases the voices; other steps hold them. A held melody without a pitch (a model's
        HOLD token) is the soprano heard before.
        """
        pitch = (heard.pitch if heard.pitch is not None else self.soprano) if heard.active else None
        if heard.onset and heard.velocity is not None:
            self.velocity = min(127, max(1, heard.velocity))
        self.soprano = pitch
        frame_steps = max(1, round(self.step_beats * pos.beat_steps))  # the model's frame on the grid (a beat)
        on_beat = pos.position % frame_steps == 0
        entering = heard.onset and all(p is None for p in self.voices)
        if pitch is None:
            if not on_beat:
                return []
            self.silent_beats += 1
            if self.silent_beats == RESET_BEATS and self.beats:
                self.stepper.reset()  # the next note starts a new chorale (the key stays: the same player)
            return self._move(SILENT)
        if not (on_beat or entering):
            return []
        self.silent_beats = 0
        return self._move(self.decide(pitch, temperature))

    def _move(self, voices: Voices) -> list[NoteEvent]:
        old = {p for p in self.voices if p is not None}
        new = {p for p in voices if p is not None}
        self.voices = voices
        if voices == SILENT:
            self.last = (None, *SILENT)
        ch = self.channel
        events = [NoteEvent(0.0, 0.0, False, PART, ch, p, 0) for p in sorted(old - new)]
        events += [NoteEvent(0.0, 0.0, True, PART, ch, p, self.velocity) for p in sorted(new - old, reverse=True)]
        return events

    @property
    def sounding(self) -> bool:
        """A voice sounds."""
        return self.voices != SILENT

    def release_all(self) -> list[NoteEvent]:
        """Note-offs for the voices sounding; they fall silent (the model's state and the key stay)."""
        return self._move(SILENT)


def chorale_offline(voicer: ChoraleVoicer, sopranos: Sequence[int | None], temperature: float = 1.0,
                    beat_steps: int = 1) -> list[Voices]:  # fmt: skip
    """The daemon's chorale path on a whole melody given one soprano pitch per beat (None: a rest).

    Each beat is heard as the loop hears it (an onset where the pitch changes or follows a rest, held where it
    repeats: a piano roll cannot tell a repeated note from a held one) and voiced by
    :meth:`ChoraleVoicer.voice`; returns the voices sounding on each beat.
    """
    from rtgen.generation.conductor import Heard
    from rtgen.timing.transport import Position

    out: list[Voices] = []
    prev: int | None = None
    bar_steps = 4 * beat_steps
    for i, s in enumerate(sopranos):
        if s is None:
            heard = Heard()
        elif s != prev:
            heard = Heard(melody=ct.melody_note_on(s), velocity=None, pitch=s)
        else:
            heard = Heard(melody=ct.MEL_HOLD, pitch=s)
        prev = s
        step = i * beat_steps
        voicer.voice(Position(step, step // bar_steps, step % bar_steps, bar_steps, beat_steps), heard, temperature)
        out.append(voicer.voices)
    return out

"""Duet: the player plays a phrase with both hands; after a silence rtgen answers it polyphonically.

The player is heard whole (:meth:`rtgen.input.tracker.PlayerTracker.take_frame`: every key down and every note the
pedal holds). Their steps are gathered into frames on the polyphonic model's own grid (``step_beats``: a quarter
note for the shipped ``chorale`` model), aligned to the bar: a pitch belongs to a frame when it sounds at the
frame's first step (struck there or held into it) or during more than half of its steps, as the benchmark's frames
sample the sounding notes on the beat (a passing note between two beats is not a frame of its own; a frame with
only short notes off its beat keeps the longest of them).

The model is fed the phrase as it is heard, one frame as each closes (one graph call a beat, so the answer's first
step has no backlog to work through). A model trained on pieces all moved to C (``centred_key``, as the chorale
model) hears the phrase moved to C from the key it is in (the parameters' key lock, else
:func:`rtgen.generation.keys.estimate_key` of the phrase so far, each pitch weighted by the steps it sounds); when
that estimate moves, the model starts again on the phrase's last :data:`MAX_FED_FRAMES` frames in the new key.
When the player falls silent for ``[call_response] silence_beats`` (the call-and-response silence), rtgen answers
from the next frame boundary on, one frame sampled per model step and moved back into the phrase's key; a pitch
that continues from one frame to the next is held, not struck again. The answer lasts as long as
the phrase (rounded up to whole frames, at least one bar and at most :data:`MAX_ANSWER_BARS` bars), or
``[call_response] answer_bars`` bars when that is set, at the mean loudness of the phrase's onsets; it stops at
once when the player plays again (the loop releases its notes) and ends with every note released.

Pure: no clocks, no I/O. The performer turns :class:`PolyNotes` into note events on the chords part's channel
(the part that plays rtgen's polyphony: voicings, and the harmony of call-and-response's answer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from rtgen import contract as ct
from rtgen.config import CallResponseConfig
from rtgen.generation.keys import estimate_key
from rtgen.generation.poly import HELD, ONSET
from rtgen.input.tracker import StepFrame
from rtgen.timing.transport import Position

if TYPE_CHECKING:
    from rtgen.generation.engine import Params
    from rtgen.generation.poly import PolyModel

MAX_ANSWER_BARS = 8
"""An answer as long as the phrase lasts at most this many bars (``answer_bars`` sets any length up to 64)."""
MAX_FED_FRAMES = 32
"""The phrase's frames fed again when its key estimate moves (bounds the work of one step)."""
DEFAULT_VELOCITY = 80
"""The answer's loudness when the phrase had no onset velocity to go by."""


@dataclass(frozen=True, slots=True)
class PolyNotes:
    """What the answer does at one step: pitches released, then pitches struck (MIDI), at ``velocity``."""

    offs: tuple[int, ...] = ()
    ons: tuple[int, ...] = ()
    velocity: int = 0

    def __bool__(self) -> bool:
        return bool(self.offs or self.ons)


NO_NOTES = PolyNotes()


def frame_pitches(steps: list[StepFrame]) -> frozenset[int]:
    """The pitches of one model frame from the player's step frames in it (see the module docstring).

    Args:
        steps: the player's frames of the model frame's grid steps, in order (the first is its first step).
    """
    if not steps:
        return frozenset()
    counts: dict[int, int] = {}
    for step in steps:
        for p in step.sounding:
            counts[p] = counts.get(p, 0) + 1
    first = steps[0].sounding
    half = len(steps) / 2
    out = frozenset(p for p, n in counts.items() if n > half or p in first)
    if not out and counts:  # only short notes off the beat: the longest of them stand for the frame
        most = max(counts.values())
        out = frozenset(p for p, n in counts.items() if n == most)
    return out


def shift_to_c(key: ct.Key | None) -> int:
    """Semitones that move ``key`` to C major / C minor by the shorter way (-6..5; 0 for None)."""
    if key is None:
        return 0
    return (-key.tonic + 6) % 12 - 6


def frame_steps(model_step_beats: float, pos: Position) -> int:
    """Grid steps in one model frame at ``pos``'s meter (at least one)."""
    return max(1, round(model_step_beats * max(1, pos.beat_steps)))


class DuetAnswer:
    """Duet's listening and answering (the mode's conductor, :class:`rtgen.generation.conductor.Duet`, is this with
    the conductor's plans): the player plays a phrase with both hands; after a silence rtgen answers with a
    polyphonic model.

    Args:
        model: the polyphonic model that answers (see :class:`rtgen.generation.poly.PolyModel`).
        config: the silence that ends a phrase and the answer's length (call-and-response's settings).
        seed: the model's random draws (None: fresh entropy).

    Attributes:
        answering: rtgen answers now (from the phrase's silence until the answer ends or the player plays).
        answers: answers started so far.
        key: the key of the last phrase answered (None before any; a key lock wins over it).
        answered: the frames of the last phrase answered (MIDI pitches), one per model step.
    """

    def __init__(self, model: PolyModel, config: CallResponseConfig | None = None, seed: int | None = None) -> None:
        cfg = config or CallResponseConfig()
        self.model = model
        self.silence_beats = cfg.silence_beats
        self.answer_bars = cfg.answer_bars
        self._stepper = model.stepper(seed)
        self._stepper.warm_up()  # onnxruntime's first run is slow: not on the answer's first step
        self._low = model.low_pitch
        self._n = model.n_pitches
        self._sounding: frozenset[int] = frozenset()
        self._shift = 0  # semitones the phrase moves into the model's key (the answer moves back)
        self._velocity = DEFAULT_VELOCITY
        self._lock: ct.Key | None = None  # the parameters' key lock, as the last step had it
        self._buf = np.zeros(self._n, dtype=np.float32)
        self.answers = 0
        self.key: ct.Key | None = None
        self.answered: tuple[frozenset[int], ...] = ()
        self.reset()

    def reset(self) -> None:
        """Listen from scratch (notes the answer has sounding stay booked: see :meth:`release`)."""
        self.answering = False
        self._started = False
        self._frames: list[frozenset[int]] = []  # the phrase's frames so far
        self._struck: list[frozenset[int]] = []  # ... the pitches of each struck in it (a three-state model's onsets)
        self._frame_pos: list[int] = []  # ... and their positions in bar, in frames
        self._steps: list[StepFrame] = []  # the player's steps of the frame being heard
        self._weights = [0.0] * 12
        self._velocities: list[int] = []
        self.silence_steps = 0
        self.answer_left = 0  # frames of the answer still to play
        self._fed = 0  # frames of the phrase the model has been fed
        self._fed_shift: int | None = None  # ... moved by this many semitones (None: nothing fed yet)

    @property
    def phrase(self) -> list[frozenset[int]]:
        """The frames of the phrase heard so far (MIDI pitches), one per model step."""
        return list(self._frames)

    def _model_pos(self, pos: Position, fs: int) -> int:
        """The position in bar the model hears at ``pos`` (0 for a model without one)."""
        bar = self.model.bar_steps
        return (pos.position // fs) % bar if bar > 0 else 0

    # -- listening -------------------------------------------------------------------------------------------

    def hear(self, pos: Position, frame: StepFrame) -> None:
        """What the player sounded at ``pos`` (once per step while listening): gather the phrase into model frames;
        after its silence, answer."""
        if self.answering:
            return
        fs = frame_steps(self.model.step_beats, pos)
        if pos.position % fs == 0 and self._steps:
            self._close_frame()
        if frame.sounding or self._frames or self._steps:
            if not self._steps:
                self._frame_pos.append(self._model_pos(pos, fs))
            self._steps.append(frame)
        if frame.velocity:
            self._velocities.append(frame.velocity)
        if frame.sounding:
            self.silence_steps = 0
            return
        if not self._frames and not any(s.sounding for s in self._steps):
            self._steps.clear()  # silence before any phrase
            self._frame_pos.clear()
            return
        self.silence_steps += 1
        if self.silence_steps >= math.ceil(self.silence_beats * max(1, pos.beat_steps)):
            self._close_frame()
            while self._frames and not self._frames[-1]:
                self._frames.pop()  # the silence ends the phrase; it is not part of it
                self._struck.pop()
                self._frame_pos.pop()
            if self._frames:
                self.answering = True
                self._started = False
            else:
                self.reset()

    def _close_frame(self) -> None:
        if not self._steps:
            return
        pitches = frame_pitches(self._steps)
        struck: set[int] = set()
        for step in self._steps:
            struck.update(step.onsets)
            for p in step.sounding:
                self._weights[p % 12] += 1.0
        self._steps = []
        self._frames.append(pitches)
        self._struck.append(pitches & struck)
        if pitches:
            self._feed(self._lock if self._lock is not None else estimate_key(self._weights))

    def _feed(self, key: ct.Key | None) -> None:
        """Feed the model the phrase's frames not fed yet, up to its last sounding one (a silence may be its end),
        moved into the model's key from ``key``; when that move changes, the model starts again on the phrase's
        last :data:`MAX_FED_FRAMES` frames."""
        shift = shift_to_c(key) if self.model.centred_key else 0
        frames = self._frames
        end = len(frames)
        while end and not frames[end - 1]:
            end -= 1
        stepper = self._stepper
        if shift != self._fed_shift:
            stepper.reset()
            self._fed_shift = shift
            self._fed = max(0, end - MAX_FED_FRAMES)
        buf = self._buf
        three = self.model.states == 3
        for i in range(self._fed, end):
            buf[:] = 0.0
            for p in frames[i]:
                j = p + shift - self._low
                if 0 <= j < self._n:  # a three-state model hears a pitch struck in the frame as an onset
                    buf[j] = (ONSET if p in self._struck[i] else HELD) if three else 1.0
            stepper.feed(buf, pos=self._frame_pos[i])
        self._fed = max(self._fed, end)

    def interrupt(self) -> bool:
        """The player plays while rtgen answers: the answer ends now and a new phrase starts (the caller releases
        the notes, then :meth:`release` forgets them)."""
        if not self.answering:
            return False
        self.reset()
        return True

    # -- the answer ------------------------------------------------------------------------------------------

    def play(self, pos: Position, params: Params) -> PolyNotes:
        """The answer's notes at ``pos`` (called once per step, after :meth:`hear`).

        A frame's notes start on its first step; pitches that continue into the next frame are held. When the
        answer is over (or was interrupted) the notes still sounding are released here.
        """
        fs = frame_steps(self.model.step_beats, pos)
        self._lock = params.key
        if not self.answering:
            return self._end() if self._sounding else NO_NOTES
        if pos.position % fs != 0:
            return NO_NOTES
        if not self._started:
            self._start(pos, fs, params)
        elif self.answer_left <= 0:
            self.reset()
            return self._end()
        self.answer_left -= 1
        out = self._stepper.step(pos=self._model_pos(pos, fs), temperature=params.temperature)
        shift = self._shift
        pitches = frozenset(p for j in np.flatnonzero(out).tolist() if 0 <= (p := self._low + j - shift) <= 127)
        old = self._sounding
        self._sounding = pitches
        offs, ons = old - pitches, pitches - old
        if self.model.states == 3:  # an onset of a pitch that sounds already is struck again (off, then on)
            again = frozenset(self._low + j - shift for j in np.flatnonzero(out == ONSET).tolist()) & old
            offs, ons = offs | again, ons | again
        return PolyNotes(tuple(sorted(offs)), tuple(sorted(ons)), self._velocity)

    def _start(self, pos: Position, fs: int, params: Params) -> None:
        """Move the phrase to the model's key, feed it, and decide the answer's length and loudness."""
        self._started = True
        self.answers += 1
        self.answered = tuple(self._frames)
        estimated = estimate_key(self._weights)
        self.key = params.key if params.key is not None else estimated
        self._feed(self.key)  # fed as heard: only a key lock set since, or a frame closed by the silence, is left
        self._shift = self._fed_shift or 0
        bar_frames = max(1, pos.bar_steps // fs)
        if self.answer_bars > 0:
            frames = self.answer_bars * bar_frames
        else:
            frames = min(max(len(self._frames), bar_frames), MAX_ANSWER_BARS * bar_frames)
        self.answer_left = frames
        vel = self._velocities
        self._velocity = round(sum(vel) / len(vel)) if vel else DEFAULT_VELOCITY

    def _end(self) -> PolyNotes:
        offs, self._sounding = self._sounding, frozenset()
        return PolyNotes(tuple(sorted(offs)), (), 0)

    def release(self) -> tuple[int, ...]:
        """Forget the answer's sounding notes (the caller has released them, or releases these now)."""
        return self._end().offs

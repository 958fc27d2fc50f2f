"""The generation engine: tokens and parameters in, one :class:`Step` out per grid step.

Pure: no I/O, no threads, no clocks. The same engine drives the real-time daemon,
``rtgen render`` and the tests. Each :meth:`Engine.step`:

1. builds the step's inputs from the previous step (``contract.COMMON_INPUTS``;
   position and phrase from the time signature and the step counter; lookback
   tokens from its own history of raw tokens and bar starts);
2. runs the chord model, masks its logits (key lock) and samples the chord token,
   or takes the observed one; resolves the sounding chord;
3. runs the note model with that chord, masks (key lock, pitch range, density,
   HOLD only while a note sounds) and samples the melody token and velocity bin,
   or takes the observed ones;
4. keeps the new tokens and recurrent states for the next step.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from rtgen import contract as ct
from rtgen.config import GenerationConfig
from rtgen.contract import Key, TimeSignature
from rtgen.generation.model import Model, StepBinding
from rtgen.generation.sampling import mask_bias, sample, sample_split
from rtgen.timing.transport import Position, Transport

FloatArray = npt.NDArray[np.float64]

_HISTORY = 8192
"""Ring-buffer length for the lookback history: >= (max lookback + 1) bars of the longest bar (9 x 512)."""

_BIN_VELOCITY = tuple(ct.bin_velocity(b) for b in range(ct.NUM_VELOCITY_BINS))
"""MIDI velocity of each velocity bin (a table: ``ct.bin_velocity`` costs a few numpy calls per step)."""


def _contains_table() -> npt.NDArray[np.bool_]:
    """(12, CHORD_VOCAB_SIZE): chord token holds pitch class (HOLD and N.C. hold nothing)."""
    table = np.zeros((12, ct.CHORD_VOCAB_SIZE), dtype=bool)
    for tok in range(ct.CHORD_OFFSET, ct.CHORD_VOCAB_SIZE):
        for pc in ct.Chord.from_token(tok).pitch_classes:
            table[pc, tok] = True
    return table


_CONTAINS = _contains_table()
_HOLD_ONLY = np.full(ct.CHORD_VOCAB_SIZE, -np.inf)
_HOLD_ONLY[ct.CHORD_HOLD] = 0.0


@dataclass(frozen=True)
class Params:
    """Generation parameters; swapped atomically by the daemon, never mutated.

    Attributes:
        temperature: logits are divided by this (lower = safer).
        top_p: nucleus sampling mass in (0, 1].
        density: multiplies the odds of a melody onset (0 = no new notes at all).
        key: key/scale lock for melody and chords, or ``None``.
        pitch_low: lowest melody pitch allowed (MIDI).
        pitch_high: highest melody pitch allowed (MIDI).
        time_signature: the meter; a change takes effect at the next bar line.
    """

    temperature: float = GenerationConfig.temperature
    top_p: float = GenerationConfig.top_p
    density: float = 1.0
    key: Key | None = None
    pitch_low: int = ct.PITCH_MIN
    pitch_high: int = ct.PITCH_MAX
    time_signature: TimeSignature = field(default_factory=TimeSignature)

    @classmethod
    def from_config(cls, gen: GenerationConfig) -> Params:
        """Parameters from the ``[generation]`` config section."""
        return cls(
            temperature=gen.temperature,
            top_p=gen.top_p,
            density=gen.density,
            key=gen.parsed_key(),
            pitch_low=gen.pitch_low,
            pitch_high=gen.pitch_high,
            time_signature=gen.parsed_time_signature(),
        )


@dataclass(frozen=True)
class Steer:
    """How one step is steered: what is observed (the player's), and what the conductor asks of what is sampled.

    Attributes:
        melody: an observed melody token (the player's); ``None`` samples it.
        velocity: MIDI velocity of an observed onset (default: the model's most likely bin).
        chord: an observed chord token; ``None`` samples it.
        harmonise: with an observed ``melody`` and no ``chord``, choose the chord with the harmoniser,
            which hears the melody up to this step (needs a contract-v2 model); otherwise the chord model
            guesses it from the past. The chord changes only on a strong beat or on a counted beat with a
            melody onset (harmonic rhythm as in the data, about one change per bar).
        fit: with ``harmonise``, a log-odds bonus for the chords that contain the pitch class of an
            onset at this step.
        hold: with ``harmonise``, a log-odds bonus for keeping the sounding chord (harmonic rhythm).
        weak_hold: with ``harmonise``, a further bonus for keeping it on a beat that is not strong (the data
            changes chord there less often than on strong beats).
        tone_fit: on a strong beat, a log-odds bonus for sampled melody onsets on tones of the sounding
            chord (improvising over a player's chords lands on them as a musician would).
        enter: a sampled melody that is silent starts a note at this step (an answer comes in on time).
        guide: with ``harmonise``, a chord token the choice is drawn toward (the chord the player's left hand
            holds), by the log-odds bonus ``guide_bonus``; on a counted beat where it differs from the sounding
            chord the chord is decided again (the left hand changed chord).
        guide_bonus: the log-odds bonus for ``guide`` (0: no guide).
    """

    melody: int | None = None
    velocity: int | None = None
    chord: int | None = None
    harmonise: bool = False
    fit: float = 0.0
    tone_fit: float = 0.0
    hold: float = 0.0
    weak_hold: float = 0.0
    enter: bool = False
    guide: int | None = None
    guide_bonus: float = 0.0


FREE = Steer()
"""Nothing observed, nothing asked: the models play the step by themselves."""


@dataclass(frozen=True)
class Step:
    """What the engine produced (or observed) at one grid step.

    Attributes:
        index: step number since start/reset.
        bar: bar number (0-based).
        position: step in bar.
        chord_token: raw token sampled/observed at this step (HOLD / N.C. / CHORD).
        chord_now: resolved chord sounding at this step (N.C. or a CHORD token).
        melody_token: raw melody token (REST / HOLD / NOTE_ON).
        velocity: MIDI velocity of the onset (meaningful on NOTE_ON).
        bar_steps: steps in the current bar (from the time signature in force).
        beat_steps: steps per counted beat in the current bar.
    """

    index: int
    bar: int
    position: int
    chord_token: int
    chord_now: int
    melody_token: int
    velocity: int
    bar_steps: int = 16
    beat_steps: int = ct.STEPS_PER_BEAT

    @property
    def pitch(self) -> int | None:
        """MIDI pitch of a NOTE_ON, else ``None``."""
        return ct.melody_pitch(self.melody_token)

    @property
    def chord_name(self) -> str:
        """Name of the sounding chord (``N.C.`` or e.g. ``Am7``)."""
        return ct.chord_token_name(self.chord_now)


@dataclass(frozen=True)
class _Masks:
    """Additive logit biases for one set of parameters."""

    chord: FloatArray  # HOLD allowed
    chord_no_hold: FloatArray  # the sounding chord is outside the key lock: change it
    chord_allowed: npt.NDArray[np.bool_]
    melody_sounding: FloatArray  # a note sounds: HOLD allowed
    melody_silent: FloatArray  # nothing sounds: HOLD is folded into REST
    melody_enter: FloatArray  # nothing sounds and a note must start (an answer's first step)
    chord_wake: FloatArray  # N.C. has lasted: a chord must start (neither HOLD nor N.C.)


WAKE_BARS = 2  # a sampled part silent this long starts again on the next counted beat (the melody, the chords)
MASK_CACHE_SIZE = 256  # mask sets kept (a fader sweep of density makes one per value)


def _mask_key(params: Params) -> tuple[object, ...]:
    return (params.key, params.pitch_low, params.pitch_high, params.density)


def _build_masks(params: Params) -> _Masks:
    chord_allowed = ct.scale_chord_mask(params.key)
    chord = mask_bias(chord_allowed)
    chord_no_hold = chord.copy()
    chord_no_hold[ct.CHORD_HOLD] = -np.inf

    allowed = ct.scale_melody_mask(params.key)
    pitches = np.arange(ct.PITCH_MIN, ct.PITCH_MAX + 1)
    allowed[ct.MEL_NOTE_OFFSET :] &= (pitches >= params.pitch_low) & (pitches <= params.pitch_high)
    if params.density <= 0:
        allowed[ct.MEL_NOTE_OFFSET :] = False
        extra = None
    else:
        extra = np.zeros(ct.MELODY_VOCAB_SIZE)
        extra[ct.MEL_NOTE_OFFSET :] = math.log(params.density)
    melody_sounding = mask_bias(allowed, extra)
    melody_silent = melody_sounding.copy()
    melody_silent[ct.MEL_HOLD] = -np.inf
    melody_enter = melody_silent.copy()
    if allowed[ct.MEL_NOTE_OFFSET :].any():  # with no note allowed (density 0, an empty range) silence it is
        melody_enter[ct.MEL_REST] = -np.inf
    chord_wake = chord_no_hold.copy()
    if chord_allowed[ct.CHORD_OFFSET :].any():  # a key lock that allows no chord: silence it is
        chord_wake[ct.CHORD_NC] = -np.inf
    return _Masks(chord, chord_no_hold, chord_allowed, melody_sounding, melody_silent, melody_enter, chord_wake)


class Engine:
    """Step-by-step generation with one :class:`~rtgen.generation.model.Model`.

    Args:
        model: the loaded model pair.
        params: the parameters used when :meth:`step` is not given any.
        seed: seed of the sampling generator (same seed, same inputs ⇒ same tokens).
    """

    def __init__(self, model: Model, params: Params, seed: int = 0) -> None:
        self.model = model
        self.params = params
        self.seed = seed
        self._pending_model: Model | None = None
        self._pending_steps: StepBinding | None = None
        self._mask_cache: dict[tuple[object, ...], _Masks] = {}
        self._last_params: Params | None = None
        self._last_masks: _Masks | None = None
        # Preallocated (1,) int64 feeds, updated in place every step.
        self._feeds: dict[str, npt.NDArray[np.int64]] = {
            name: np.zeros((1, ct.NUM_LOOKBACKS) if name.startswith("lookback_") else 1, dtype=np.int64)
            for name in (*ct.NOTE_MODEL_INPUTS[:-1], "melody_now", "sounding_now")
        }
        self._fit_cache: dict[float, FloatArray] = {}
        self.follow_harmony = False  # run the harmoniser on every step, also when it does not choose
        self._tone_cache: dict[tuple[int, float], FloatArray] = {}
        self._hist_melody = np.zeros(_HISTORY, dtype=np.int64)
        self._hist_chord = np.zeros(_HISTORY, dtype=np.int64)
        # The feeds above are bound once to both graphs; the states live in the binding.
        self._steps = StepBinding(model, self._feeds)
        self.reset(seed)

    # --- state -----------------------------------------------------------------
    def reset(self, seed: int | None = None) -> None:
        """Start again from step 0 with a fresh state (and re-seed; ``None`` keeps the seed)."""
        if seed is not None:
            self.seed = seed
        self.rng = np.random.default_rng(self.seed)
        if self._pending_model is not None:
            self._use_pending_model()
        self._steps.reset()
        self.index = 0
        self.lookback_floor = 0  # lookback inputs see nothing before this step (a new song-form section)
        self._bar = 0
        self._bar_start = 0
        self._last_bar = -1
        self._set_time_signature(self.params.time_signature)
        self._transport = Transport(self.params.time_signature)  # used when the caller gives no position
        self._bars: deque[tuple[int, int]] = deque(maxlen=max(ct.LOOKBACK_BARS) + 1)  # (start, length)
        self._prev_melody = ct.MEL_REST
        self._prev_sounding = ct.MEL_REST
        self._prev_vel_bin = ct.DEFAULT_VELOCITY_BIN
        self._prev_chord = ct.CHORD_NC
        self._prev_chord_now = ct.CHORD_NC
        self._melody_quiet = 0  # steps since a melody note last sounded
        self._chords_quiet = 0  # steps since a chord last sounded

    def _set_time_signature(self, ts: TimeSignature) -> None:
        # bar_steps goes through Fraction: compute it once per meter change, not several times per step.
        self._ts = ts
        self._bar_len = ts.bar_steps
        self._beat_len = ts.beat_steps

    def _use_pending_model(self) -> None:
        pending, steps = self._pending_model, self._pending_steps
        assert pending is not None
        self.model, self._pending_model, self._pending_steps = pending, None, None
        # Normally bound in swap_model already (binding costs a few hundred µs: not in a step).
        self._steps = steps if steps is not None and steps.model is pending else StepBinding(pending, self._feeds)

    @property
    def _chord_state(self) -> npt.NDArray[np.float32]:
        return self._steps.chord_state

    @property
    def _note_state(self) -> npt.NDArray[np.float32]:
        return self._steps.note_state

    def bind(self, model: Model) -> StepBinding:
        """Bind ``model`` to this engine's input arrays, for :meth:`swap_model` (safe on another thread)."""
        return StepBinding(model, self._feeds)  # fresh zero states

    def swap_model(self, model: Model, steps: StepBinding | None = None) -> None:
        """Switch to ``model`` at the next step, starting from a fresh recurrent state.

        The token history (previous melody/chord) carries over, so the new model
        continues from where the music is. ``steps`` is its :meth:`bind` made ahead
        (off the real-time thread); without it the binding is made here.
        """
        self._pending_steps = steps if steps is not None and steps.model is model else self.bind(model)
        self._pending_model = model

    @property
    def time_signature(self) -> TimeSignature:
        """The time signature of the current bar."""
        return self._ts

    @property
    def bar(self) -> int:
        """Bar of the last step."""
        return self._bar

    @property
    def can_harmonise(self) -> bool:
        """The model has a harmoniser (it can choose a chord for a melody it hears)."""
        return self.model.can_harmonise

    # --- what-if queries -------------------------------------------------------
    def snapshot(self) -> EngineState:
        """A cheap copy of everything a step changes (states, previous tokens, sampler, bar book)."""
        st = self._steps
        return EngineState(
            chord_state=st.chord_state.copy(),
            note_state=st.note_state.copy(),
            harmony_state=st.harmony_state.copy(),
            scalars=(self.index, self._bar, self._bar_start, self._last_bar, self._prev_melody,
                     self._prev_sounding, self._prev_vel_bin, self._prev_chord, self._prev_chord_now,
                     self._melody_quiet, self._chords_quiet),
            bars=tuple(self._bars),
            rng=self.rng.bit_generator.state,
            model=self.model,
            transport=copy.copy(self._transport),
        )  # fmt: skip

    def restore(self, snap: EngineState) -> None:
        """Go back to a :meth:`snapshot` (the history ring is rewritten by the steps that follow)."""
        if snap.model is not self.model:
            raise ValueError("cannot restore a snapshot taken with another model")
        st = self._steps
        st.chord_state[...] = snap.chord_state
        st.note_state[...] = snap.note_state
        st.harmony_state[...] = snap.harmony_state
        (self.index, self._bar, self._bar_start, self._last_bar, self._prev_melody, self._prev_sounding,
         self._prev_vel_bin, self._prev_chord, self._prev_chord_now, self._melody_quiet,
         self._chords_quiet) = snap.scalars  # fmt: skip
        self._bars.clear()
        self._bars.extend(snap.bars)
        self.rng.bit_generator.state = snap.rng
        self._transport = copy.copy(snap.transport)

    def _tone_bias(self, chord: int, fit: float) -> FloatArray:
        key = (chord, fit)
        bias = self._tone_cache.get(key)
        if bias is None:
            if len(self._tone_cache) > 512:
                self._tone_cache.clear()
            pcs = (np.arange(ct.PITCH_MIN, ct.PITCH_MAX + 1)) % 12
            bias = np.zeros(ct.MELODY_VOCAB_SIZE)
            bias[ct.MEL_NOTE_OFFSET :] = np.where(_CONTAINS[pcs, chord], fit, 0.0)
            self._tone_cache[key] = bias
        return bias

    def _feed_harmony(self, melody: int) -> int | None:
        """Run the harmoniser on this step's melody token (its state follows every step); the onset's pitch."""
        f = self._feeds
        f["melody_now"][0] = melody
        f["sounding_now"][0] = (
            melody if melody >= ct.MEL_NOTE_OFFSET else (self._prev_sounding if melody == ct.MEL_HOLD else ct.MEL_REST)
        )
        self._steps.run_harmony()
        return ct.melody_pitch(melody)

    def _fit_bias(self, fit: float) -> FloatArray:
        table = self._fit_cache.get(fit)
        if table is None:
            if len(self._fit_cache) > 16:
                self._fit_cache.clear()
            table = self._fit_cache[fit] = np.where(_CONTAINS, fit, 0.0)
        return table

    # --- masks -----------------------------------------------------------------
    def prepare(self, params: Params) -> None:
        """Build the masks for ``params`` now, on the calling thread, so that the step using them need not.

        For the thread that sets new parameters while another one steps the engine: the cache is
        only written here (one writer at a time: callers serialise), the stepping thread only reads it.
        """
        key = _mask_key(params)
        if key in self._mask_cache:
            return
        masks = _build_masks(params)
        if len(self._mask_cache) >= MASK_CACHE_SIZE:
            with contextlib.suppress(RuntimeError, StopIteration):  # the stepping thread added one meanwhile
                self._mask_cache.pop(next(iter(self._mask_cache)), None)  # the oldest
        self._mask_cache[key] = masks

    def _masks(self, params: Params) -> _Masks:
        if params is self._last_params and self._last_masks is not None:
            return self._last_masks
        masks = self._mask_cache.get(_mask_key(params))
        if masks is None:  # not prepared (offline use, or a caller that did not): build it here
            masks = _build_masks(params)
            if len(self._mask_cache) < MASK_CACHE_SIZE:  # never evicts here: that is prepare()'s job
                self._mask_cache[_mask_key(params)] = masks
        self._last_params, self._last_masks = params, masks
        return masks

    # --- one step --------------------------------------------------------------
    def step(self, params: Params | None = None, *, at: Position | None = None, steer: Steer = FREE) -> Step:
        """Produce the next step: observe what ``steer`` gives, sample the rest (chord first, then melody).

        Args:
            params: parameters for this step (and the following ones); ``None`` keeps the current.
            at: the step's position, from the transport; ``None`` counts steps under ``params.time_signature``
                (offline use).
            steer: what is observed and how the sampling is steered (see :class:`Steer`).

        Returns:
            The step, with resolved chord and MIDI velocity.
        """
        if params is not None:
            self.params = params
        p = self.params
        if self._pending_model is not None:
            self._use_pending_model()
        index = self.index
        at = self._place(at, p)
        masks = self._masks(p)
        self._set_inputs(at)
        sounding = self._prev_sounding != ct.MEL_REST
        melody = steer.melody
        if melody is not None:
            melody = _check_token(melody, ct.MELODY_VOCAB_SIZE, "melody")
            if melody == ct.MEL_HOLD and not sounding:
                melody = ct.MEL_REST
        # chord first (or, accompanying, the chord for the melody heard at this step), then the melody on it
        chord_tok, harmonised = self._choose_chord(p, masks, at, melody, steer)
        chord_now = self._prev_chord_now if chord_tok == ct.CHORD_HOLD else chord_tok
        self._feeds["chord_now"][0] = chord_now
        mel_logits, vel_logits = self._steps.run_note()
        if melody is None:
            mel_tok = self._sample_melody(p, masks, at, mel_logits[0], sounding, chord_now, steer)
        else:
            mel_tok = melody
        vel = self._velocity(p, mel_tok, vel_logits, steer.velocity, sampled=melody is None)
        if not harmonised and self.follow_harmony and self._steps.can_harmonise:
            self._feed_harmony(mel_tok)  # keep the harmoniser's state current for a later accompaniment
        self._prev_melody = mel_tok
        self._prev_chord = chord_tok
        self._prev_chord_now = chord_now
        self._melody_quiet = 0 if self._prev_sounding != ct.MEL_REST else self._melody_quiet + 1
        self._chords_quiet = 0 if chord_now != ct.CHORD_NC else self._chords_quiet + 1
        self._hist_melody[index % _HISTORY] = mel_tok
        self._hist_chord[index % _HISTORY] = chord_tok
        self.index = index + 1
        return Step(
            index=index,
            bar=at.bar,
            position=at.position,
            chord_token=chord_tok,
            chord_now=chord_now,
            melody_token=mel_tok,
            velocity=vel,
            bar_steps=at.bar_steps,
            beat_steps=at.beat_steps,
        )

    def _place(self, at: Position | None, p: Params) -> Position:
        """The step's position (counted here when none is given); a new bar is remembered for the lookback."""
        index = self.index
        if at is None:
            if p.time_signature != self._transport.time_signature:
                self._transport.set_time_signature(p.time_signature)
            at = self._transport.advance()
            self._ts = self._transport.time_signature
        else:
            self._ts = p.time_signature
        if at.bar != self._last_bar or index == 0:
            # a new bar (the transport's): its start and length feed the lookback inputs
            self._last_bar = at.bar
            self._bar_start = index - at.position
            self._bars.append((self._bar_start, at.bar_steps))
        self._bar = at.bar
        self._bar_len, self._beat_len = at.bar_steps, at.beat_steps
        return at

    def _set_inputs(self, at: Position) -> None:
        """The graphs' inputs: the previous tokens, the position, and the same step 1, 2, 4 and 8 bars back."""
        position = at.position
        f = self._feeds
        f["prev_melody"][0] = self._prev_melody
        f["prev_sounding"][0] = self._prev_sounding
        f["prev_velocity"][0] = self._prev_vel_bin
        f["prev_chord"][0] = self._prev_chord
        f["prev_chord_now"][0] = self._prev_chord_now
        f["position"][0] = ct.position_token(position)
        f["phrase"][0] = ct.phrase_token(at.bar)
        lb_mel, lb_ch = f["lookback_melody"][0], f["lookback_chord"][0]
        bars, hist_mel, hist_ch = self._bars, self._hist_melody, self._hist_chord
        n_bars = len(bars)
        floor = max(0, self.lookback_floor)
        for j, k in enumerate(ct.LOOKBACK_BARS):
            if n_bars > k:
                start, length = bars[-1 - k]
                if position < length and start + position >= floor:  # a pickup bar lacks its first steps
                    src = (start + position) % _HISTORY
                    lb_mel[j] = hist_mel[src]
                    lb_ch[j] = hist_ch[src]
                    continue
            lb_mel[j] = ct.MEL_REST
            lb_ch[j] = ct.CHORD_NC

    def _choose_chord(
        self, p: Params, masks: _Masks, at: Position, melody: int | None, steer: Steer
    ) -> tuple[int, bool]:
        """The chord token of this step (observed, harmonised, or sampled), and whether the harmoniser chose it."""
        chord_logits = self._steps.run_chord()
        if steer.chord is not None:
            return _check_token(steer.chord, ct.CHORD_VOCAB_SIZE, "chord"), False
        held_ok = self._prev_chord_now == ct.CHORD_NC or bool(masks.chord_allowed[self._prev_chord_now])
        bias: FloatArray | None = masks.chord if held_ok else masks.chord_no_hold
        if self._prev_chord_now == ct.CHORD_NC and self._wakes(self._chords_quiet, at):
            bias = masks.chord_wake  # the chords have rested long enough: one starts on this beat
        harmonised = steer.harmonise and melody is not None
        if harmonised:
            assert melody is not None
            held = self._prev_chord_now
            onset = self._feed_harmony(melody)
            guide = steer.guide if steer.guide_bonus > 0 and (steer.guide or 0) >= ct.CHORD_OFFSET else None
            # the chord may change on a strong beat, or on a beat where the player strikes a note or changes chord
            decide = at.strong or (at.on_beat and (onset is not None or guide not in (None, held))) or not held_ok
            if not decide:
                chord_logits = _HOLD_ONLY
                bias = None
            else:
                z = self._steps.harmony_logits[0].astype(np.float64) + masks.chord
                z[ct.CHORD_HOLD] = -np.inf  # the harmoniser names the chord that sounds; HOLD is decided here
                if steer.fit > 0 and onset is not None:
                    z += self._fit_bias(steer.fit)[onset % 12]
                hold = steer.hold if at.strong else steer.hold + steer.weak_hold
                if hold > 0 and np.isfinite(z[held]):
                    z[held] += hold
                if guide is not None and np.isfinite(z[guide]):  # a left-hand chord outside a key lock stays out
                    z[guide] += steer.guide_bonus
                chord_logits = z
                bias = None
        fallback = ct.CHORD_HOLD if held_ok else ct.CHORD_NC
        if harmonised:
            chord_tok = sample(chord_logits, self.rng, temperature=p.temperature, top_p=p.top_p, fallback=fallback)
        else:  # whether the chord changes as the model says; to which chord at the temperature
            chord_tok = sample_split(
                chord_logits, self.rng, head=ct.CHORD_OFFSET, temperature=p.temperature, top_p=p.top_p, bias=bias,
                fallback=fallback,
            )  # fmt: skip
        if harmonised and chord_tok == self._prev_chord_now:
            chord_tok = ct.CHORD_HOLD
        return chord_tok, harmonised

    def _sample_melody(self, p: Params, masks: _Masks, at: Position, mel_logits: FloatArray, sounding: bool,
                       chord_now: int, steer: Steer) -> int:  # fmt: skip
        """A melody token sampled on the chord sounding now (what the masks and ``steer`` allow)."""
        if not sounding:
            # HOLD after REST means REST: give HOLD's probability to REST instead of dropping it.
            mel_logits = mel_logits.astype(np.float64)
            mel_logits[ct.MEL_REST] = np.logaddexp(mel_logits[ct.MEL_REST], mel_logits[ct.MEL_HOLD])
        enter = steer.enter or (not sounding and self._wakes(self._melody_quiet, at))
        mel_bias = masks.melody_sounding if sounding else masks.melody_enter if enter else masks.melody_silent
        if steer.tone_fit > 0 and chord_now >= ct.CHORD_OFFSET and at.strong:
            mel_bias = mel_bias + self._tone_bias(chord_now, steer.tone_fit)
        # whether a note starts as the model says; which note at the temperature
        return sample_split(
            mel_logits, self.rng, head=ct.MEL_NOTE_OFFSET, temperature=p.temperature, top_p=p.top_p, bias=mel_bias,
            fallback=ct.MEL_HOLD if sounding else ct.MEL_REST,
        )  # fmt: skip

    @staticmethod
    def _wakes(quiet_steps: int, at: Position) -> bool:
        """A sampled part quiet for :data:`WAKE_BARS` bars starts again on this step (a counted beat)."""
        return quiet_steps >= WAKE_BARS * at.bar_steps and at.on_beat

    def _velocity(
        self, p: Params, mel_tok: int, vel_logits: npt.NDArray[np.floating[Any]], velocity: int | None, *, sampled: bool
    ) -> int:
        """The MIDI velocity of this step (an onset's: observed, sampled, or the most likely bin), remembered."""
        if mel_tok < ct.MEL_NOTE_OFFSET:
            if mel_tok == ct.MEL_REST:
                self._prev_sounding = ct.MEL_REST
            return int(_BIN_VELOCITY[self._prev_vel_bin])
        if velocity is not None:
            vel_bin = int(ct.velocity_bin(int(velocity)))
            vel = int(np.clip(velocity, 1, 127))
        else:
            if sampled:
                vel_bin = sample(vel_logits, self.rng, temperature=p.temperature, top_p=p.top_p)
            else:
                vel_bin = int(np.argmax(vel_logits[0]))
            vel = int(_BIN_VELOCITY[vel_bin])
        self._prev_vel_bin = vel_bin
        self._prev_sounding = mel_tok
        return vel

    def feed(self, at: Position | None, melody: int, chord: int, velocity: int | None = None,
             params: Params | None = None) -> Step:  # fmt: skip
        """The models hear a step that was played (every token observed, nothing sampled)."""
        return self.step(params, at=at, steer=Steer(melody=melody, velocity=velocity, chord=chord))

    def query(self, at: Position | None = None, params: Params | None = None, steer: Steer = FREE) -> Step:
        """Decide the next step: sample what ``steer`` does not give; see :meth:`step`."""
        return self.step(params, at=at, steer=steer)

    def peek(self, at: Position | None = None, params: Params | None = None, steer: Steer = FREE) -> Step:
        """What :meth:`query` would decide, leaving the engine as it was (a what-if on a snapshot)."""
        snap = self.snapshot()
        try:
            return self.step(params, at=at, steer=steer)
        finally:
            self.restore(snap)

    def prime(
        self,
        melody: Sequence[int] | npt.ArrayLike,
        velocity: Sequence[int] | npt.ArrayLike | None,
        chord: Sequence[int] | npt.ArrayLike,
        params: Params | None = None,
    ) -> list[Step]:
        """Feed observed token sequences through the models (e.g. the start of a tune).

        Args:
            melody: melody tokens, one per step.
            velocity: velocity *bins* per step (as in prepared data), or ``None`` for the default bin.
            chord: chord tokens, one per step (same length as ``melody``).
            params: parameters to use (default: the current ones).

        Returns:
            The observed steps, in order.
        """
        mel = np.asarray(melody, dtype=np.int64).ravel()
        ch = np.asarray(chord, dtype=np.int64).ravel()
        if mel.size != ch.size:
            raise ValueError(f"prime: melody has {mel.size} steps but chord has {ch.size}")
        vel = (
            np.full(mel.size, ct.DEFAULT_VELOCITY_BIN, dtype=np.int64)
            if velocity is None
            else np.asarray(velocity, dtype=np.int64).ravel()
        )
        if vel.size != mel.size:
            raise ValueError(f"prime: velocity has {vel.size} steps but melody has {mel.size}")
        steps = []
        for i in range(mel.size):
            v = ct.bin_velocity(int(np.clip(vel[i], 0, ct.NUM_VELOCITY_BINS - 1)))
            steps.append(self.step(params, steer=Steer(melody=int(mel[i]), velocity=v, chord=int(ch[i]))))
            params = None
        return steps


@dataclass(frozen=True)
class EngineState:
    """A snapshot of an :class:`Engine` (see :meth:`Engine.snapshot`)."""

    chord_state: npt.NDArray[np.float32]
    note_state: npt.NDArray[np.float32]
    harmony_state: npt.NDArray[np.float32]
    scalars: tuple[int, ...]
    bars: tuple[tuple[int, int], ...]
    rng: Mapping[str, Any]
    model: Model
    transport: Transport


def _check_token(token: int, size: int, what: str) -> int:
    t = int(token)
    if not 0 <= t < size:
        raise ValueError(f"observed {what} token must be in range 0..{size - 1}, got {t}")
    return t

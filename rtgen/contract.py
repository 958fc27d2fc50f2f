"""The token contract: the single source of truth shared by the daemon and training.

Time is a grid of ``STEPS_PER_BEAT`` steps per quarter note. Each step carries one
token per feature, each from its own vocabulary:

* melody: ``REST``, ``HOLD`` or ``NOTE_ON(pitch)`` for pitch in ``PITCH_MIN..PITCH_MAX``;
* velocity: one of ``NUM_VELOCITY_BINS`` bins, meaningful on ``NOTE_ON`` steps only;
* chord: ``HOLD``, ``N.C.`` or ``CHORD(root, quality)`` (12 roots x ``QUALITIES``);
* conditioning: position in bar (step index) and position in an 8-bar phrase.

"Resolved" tokens never say ``HOLD``: the sounding melody token (``REST`` or a
``NOTE_ON``) and the sounding chord (``N.C.`` or a chord). Both models see the
previous step's raw and resolved tokens; the note model also sees the chord
sounding at the current step (chord first, then melody).

This module imports numpy only, and training imports it (never the reverse).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Final

import numpy as np
import numpy.typing as npt

CONTRACT_VERSION: Final = 2
"""v2 adds the harmoniser graph (``harmony.onnx``): p(chord_t | melody_<=t, chord_<t), for accompaniment.
v1 model folders still load and play autonomously and over observed chords; they cannot accompany."""
COMPATIBLE_VERSIONS: Final = (1, 2)

STEPS_PER_BEAT: Final = 4
"""Grid steps per quarter note (4 = sixteenth notes)."""

# --- melody vocabulary -------------------------------------------------------
PITCH_MIN: Final = 48  # C3
PITCH_MAX: Final = 96  # C7
NUM_PITCHES: Final = PITCH_MAX - PITCH_MIN + 1
MEL_REST: Final = 0
MEL_HOLD: Final = 1
MEL_NOTE_OFFSET: Final = 2
MELODY_VOCAB_SIZE: Final = MEL_NOTE_OFFSET + NUM_PITCHES

# --- velocity vocabulary -----------------------------------------------------
NUM_VELOCITY_BINS: Final = 8
DEFAULT_VELOCITY_BIN: Final = 5
_VEL_EDGES = np.linspace(0, 128, NUM_VELOCITY_BINS + 1)  # bin b covers [edge_b, edge_b+1)

# --- chord vocabulary --------------------------------------------------------
CHORD_HOLD: Final = 0
CHORD_NC: Final = 1
CHORD_OFFSET: Final = 2

QUALITIES: Final[tuple[tuple[str, tuple[int, ...]], ...]] = (
    ("", (0, 4, 7)),
    ("m", (0, 3, 7)),
    ("dim", (0, 3, 6)),
    ("aug", (0, 4, 8)),
    ("7", (0, 4, 7, 10)),
    ("maj7", (0, 4, 7, 11)),
    ("m7", (0, 3, 7, 10)),
    ("m7b5", (0, 3, 6, 10)),
    ("dim7", (0, 3, 6, 9)),
    ("6", (0, 4, 7, 9)),
    ("m6", (0, 3, 7, 9)),
    ("sus2", (0, 2, 7)),
    ("sus4", (0, 5, 7)),
    ("7sus4", (0, 5, 7, 10)),
)
"""Chord qualities as (name suffix, intervals above the root)."""
NUM_QUALITIES: Final = len(QUALITIES)
CHORD_VOCAB_SIZE: Final = CHORD_OFFSET + 12 * NUM_QUALITIES

# --- conditioning ------------------------------------------------------------
MAX_BAR_STEPS: Final = 48
"""Position-in-bar vocabulary size; longer bars clamp to the last position."""
PHRASE_BARS: Final = 8
"""Bars per phrase for the phrase-position conditioning."""
LOOKBACK_BARS: Final = (1, 2, 4, 8)
"""Lookback conditioning: the raw melody and chord tokens at the same position this many bars ago.

Folk and dance tunes repeat bars, phrases and whole parts (AABB); a GRU forgets what
happened 8 bars ago, so both models see it directly (as in Magenta's Lookback RNN).
Steps with nothing that far back see REST / N.C.
"""
NUM_LOOKBACKS: Final = len(LOOKBACK_BARS)

NOTE_NAMES: Final = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
_NAME_TO_PC: Final = {
    "C": 0, "B#": 0, "C#": 1, "DB": 1, "D": 2, "D#": 3, "EB": 3, "E": 4, "FB": 4,
    "F": 5, "E#": 5, "F#": 6, "GB": 6, "G": 7, "G#": 8, "AB": 8, "A": 9, "A#": 10,
    "BB": 10, "B": 11, "CB": 11,
}  # fmt: skip

# --- ONNX graph interface ----------------------------------------------------
# Every input is int64 of shape (B,), except "lookback_*" (int64, (B, NUM_LOOKBACKS))
# and "state" (float32, (layers, B, hidden)).
COMMON_INPUTS: Final = (
    "prev_melody",  # raw melody token at t-1
    "prev_sounding",  # resolved melody token at t-1 (REST or NOTE_ON)
    "prev_velocity",  # velocity bin of the last onset
    "prev_chord",  # raw chord token at t-1
    "prev_chord_now",  # resolved chord at t-1 (N.C. or CHORD)
    "position",  # step in bar at t, clamped to MAX_BAR_STEPS-1
    "phrase",  # bar in phrase at t
    "lookback_melody",  # (B, NUM_LOOKBACKS) raw melody token at t - k bars, k in LOOKBACK_BARS
    "lookback_chord",  # (B, NUM_LOOKBACKS) raw chord token at t - k bars
)
CHORD_MODEL_INPUTS: Final = (*COMMON_INPUTS, "state")
CHORD_MODEL_OUTPUTS: Final = ("chord_logits", "state_out")
NOTE_MODEL_INPUTS: Final = (*COMMON_INPUTS, "chord_now", "state")
NOTE_MODEL_OUTPUTS: Final = ("melody_logits", "velocity_logits", "state_out")
HARMONY_MODEL_INPUTS: Final = (
    "prev_melody",
    "prev_sounding",
    "prev_velocity",
    "position",
    "phrase",
    "lookback_melody",
    "melody_now",  # raw melody token at t: the player's note (NOTE_ON), HOLD or REST
    "sounding_now",  # resolved melody token at t (REST or the NOTE_ON sounding)
    "state",
)
HARMONY_MODEL_OUTPUTS: Final = ("harmony_logits", "state_out")
"""The harmoniser: p(chord sounding at t | melody_<=t, position), over resolved chord tokens (never HOLD).

It hears the melody up to and including step t -- an accompanist must not guess the note on the beat when it
can hear it -- and, unlike the chord model, never its own chord history: trained on human melodies, it sees live
exactly what it saw in training (a chord model fed its own past drifts away from the human harmony it learnt).
"""


# --- melody ------------------------------------------------------------------
def melody_note_on(pitch: int) -> int:
    """Token for a note-on at ``pitch``, folded by octaves into the pitch range."""
    return MEL_NOTE_OFFSET + fold_pitch(pitch) - PITCH_MIN


def fold_pitch(pitch: int) -> int:
    """Move ``pitch`` by whole octaves into ``PITCH_MIN..PITCH_MAX``."""
    while pitch < PITCH_MIN:
        pitch += 12
    while pitch > PITCH_MAX:
        pitch -= 12
    return pitch


def melody_pitch(token: int) -> int | None:
    """MIDI pitch of a NOTE_ON token, ``None`` for REST and HOLD."""
    if token < MEL_NOTE_OFFSET:
        return None
    if token >= MELODY_VOCAB_SIZE:
        raise ValueError(f"melody token must be in range 0..{MELODY_VOCAB_SIZE - 1}, got {token}")
    return PITCH_MIN + token - MEL_NOTE_OFFSET


def parse_note(name: str) -> int:
    """The MIDI pitch of a note name with its octave, middle C being ``C4`` (60): ``"F#3"`` is 54, ``"Bb2"`` 46.

    Raises:
        ValueError: not a letter A-G, an optional ``#``/``b`` and an octave -1..9, or outside MIDI's 0..127.
    """
    m = re.fullmatch(r"\s*([A-Ga-g])([#b]?)(-?\d)\s*", name)
    if m is None:
        raise ValueError(f"cannot parse note {name!r}: expected a letter A-G, optional #/b and an octave, such as C4")
    pitch = _NAME_TO_PC[(m.group(1) + m.group(2)).upper()] + 12 * (int(m.group(3)) + 1)
    if m.group(1).upper() == "B" and m.group(2) == "#":
        pitch += 12  # B#3 sounds as C4
    elif m.group(1).upper() == "C" and m.group(2) == "b":
        pitch -= 12  # Cb4 sounds as B3
    if not 0 <= pitch <= 127:
        raise ValueError(f"note {name!r} is outside MIDI's range C-1..G9")
    return pitch


def note_name(pitch: int) -> str:
    """The name of MIDI ``pitch`` with its octave, middle C (60) being ``C4``; the inverse of :func:`parse_note`."""
    return f"{NOTE_NAMES[pitch % 12]}{pitch // 12 - 1}"


# --- velocity ----------------------------------------------------------------
def velocity_bin(velocity: int | npt.ArrayLike) -> npt.NDArray[np.int64] | int:
    """Bin index of a MIDI velocity (1..127); works on scalars and arrays."""
    v = np.clip(np.asarray(velocity), 1, 127)
    b = np.clip(np.searchsorted(_VEL_EDGES, v, side="right") - 1, 0, NUM_VELOCITY_BINS - 1)
    return int(b) if b.ndim == 0 else b.astype(np.int64)


def bin_velocity(bin_index: int) -> int:
    """Representative MIDI velocity (bin centre) for a velocity bin."""
    if not 0 <= bin_index < NUM_VELOCITY_BINS:
        raise ValueError(f"velocity bin must be in range 0..{NUM_VELOCITY_BINS - 1}, got {bin_index}")
    return int(np.clip(round((_VEL_EDGES[bin_index] + _VEL_EDGES[bin_index + 1]) / 2), 1, 127))


# --- chords ------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Chord:
    """A chord symbol: root pitch class and an index into ``QUALITIES``."""

    root: int
    quality: int

    def __post_init__(self) -> None:
        if not 0 <= self.root < 12:
            raise ValueError(f"chord root must be in range 0..11, got {self.root}")
        if not 0 <= self.quality < NUM_QUALITIES:
            raise ValueError(f"chord quality must be in range 0..{NUM_QUALITIES - 1}, got {self.quality}")

    @property
    def token(self) -> int:
        """The chord vocabulary token."""
        return CHORD_OFFSET + self.root * NUM_QUALITIES + self.quality

    @property
    def name(self) -> str:
        """Chord symbol such as ``Am7``, ``D7`` or ``G``."""
        return NOTE_NAMES[self.root] + QUALITIES[self.quality][0]

    @property
    def intervals(self) -> tuple[int, ...]:
        """Intervals above the root, in semitones."""
        return QUALITIES[self.quality][1]

    @property
    def pitch_classes(self) -> frozenset[int]:
        """Pitch classes of the chord tones."""
        return frozenset((self.root + i) % 12 for i in self.intervals)

    def transpose(self, semitones: int) -> Chord:
        """The same quality with the root moved by ``semitones``."""
        return Chord((self.root + semitones) % 12, self.quality)

    @classmethod
    def from_token(cls, token: int) -> Chord:
        """Inverse of :attr:`token`; raises ``ValueError`` for HOLD and N.C."""
        if not CHORD_OFFSET <= token < CHORD_VOCAB_SIZE:
            raise ValueError(f"chord token must be in range {CHORD_OFFSET}..{CHORD_VOCAB_SIZE - 1}, got {token}")
        root, quality = divmod(token - CHORD_OFFSET, NUM_QUALITIES)
        return cls(root, quality)

    @classmethod
    def parse(cls, name: str) -> Chord:
        """Parse a chord symbol (``"Am7"``, ``"F#dim"``, ``"Bb"``); inverse of :attr:`name`."""
        m = re.fullmatch(r"\s*([A-Ga-g])([#b]?)(.*?)\s*", name)
        if m is None:
            raise ValueError(f"cannot parse chord {name!r}: expected a root A-G, optional #/b and a quality")
        root = _NAME_TO_PC[(m.group(1) + m.group(2)).upper()]
        suffix = m.group(3)
        for q, (qname, _) in enumerate(QUALITIES):
            if qname == suffix:
                return cls(root, q)
        allowed = ", ".join(repr(q[0]) for q in QUALITIES)
        raise ValueError(f"unknown chord quality {suffix!r} in {name!r}; allowed: {allowed}")


def chord_token_name(token: int) -> str:
    """Readable name of a chord token: ``HOLD``, ``N.C.`` or the symbol."""
    if token == CHORD_HOLD:
        return "HOLD"
    if token == CHORD_NC:
        return "N.C."
    return Chord.from_token(token).name


# Template matrix: one row per chord token (offset removed), 12 pitch-class columns.
_TEMPLATES = np.zeros((12 * NUM_QUALITIES, 12), dtype=np.float64)
for _r in range(12):
    for _q, (_, _iv) in enumerate(QUALITIES):
        for _i in _iv:
            _TEMPLATES[_r * NUM_QUALITIES + _q, (_r + _i) % 12] = 1.0
_ROOTS = np.repeat(np.arange(12), NUM_QUALITIES)
_SIZES = _TEMPLATES.sum(axis=1)


def recognize_chord(pitches: npt.ArrayLike, weights: npt.ArrayLike | None = None) -> Chord | None:
    """Name the chord sounding in a set of pitches by pitch-class template matching.

    Args:
        pitches: MIDI pitches sounding together (any octave, any order).
        weights: optional weight per pitch (e.g. duration); defaults to 1.

    Returns:
        The best-matching chord, or ``None`` if fewer than two pitch classes sound
        (a single note or silence is not a chord).

    Score = matched weight - 0.6 x unmatched weight - 0.4 x missing template tones,
    with a small bonus when the lowest pitch is the root and a smaller one for
    simpler (shorter) templates, so exact matches and root position win ties.
    """
    p = np.asarray(pitches, dtype=np.int64).ravel()
    if p.size == 0:
        return None
    w = np.ones(p.size) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    hist = np.zeros(12)
    np.add.at(hist, p % 12, w)
    if np.count_nonzero(hist) < 2:
        return None
    hist = hist / hist.max()
    present = (hist > 0).astype(np.float64)
    matched = _TEMPLATES @ hist
    unmatched = hist.sum() - matched
    missing = _SIZES - _TEMPLATES @ present
    bass = int(p[np.argmin(p)] % 12)
    score = matched - 0.6 * unmatched - 0.4 * missing + 0.3 * (bass == _ROOTS) - 0.01 * _SIZES
    best = int(np.argmax(score))
    return Chord(int(_ROOTS[best]), best % NUM_QUALITIES)


# --- transposition -----------------------------------------------------------
def _melody_table(semitones: int) -> npt.NDArray[np.int64]:
    table = np.arange(MELODY_VOCAB_SIZE, dtype=np.int64)
    for tok in range(MEL_NOTE_OFFSET, MELODY_VOCAB_SIZE):
        table[tok] = melody_note_on(PITCH_MIN + tok - MEL_NOTE_OFFSET + semitones)
    return table


def _chord_table(semitones: int) -> npt.NDArray[np.int64]:
    table = np.arange(CHORD_VOCAB_SIZE, dtype=np.int64)
    for tok in range(CHORD_OFFSET, CHORD_VOCAB_SIZE):
        table[tok] = Chord.from_token(tok).transpose(semitones).token
    return table


MELODY_TRANSPOSE: Final = np.stack([_melody_table(k - 6) for k in range(12)])
"""``MELODY_TRANSPOSE[k + 6]`` maps melody tokens up by ``k`` semitones (k in -6..5)."""
CHORD_TRANSPOSE: Final = np.stack([_chord_table(k - 6) for k in range(12)])
"""``CHORD_TRANSPOSE[k + 6]`` maps chord tokens up by ``k`` semitones (k in -6..5)."""


def transpose_melody(tokens: npt.ArrayLike, semitones: int) -> npt.NDArray[np.int64]:
    """Transpose melody tokens (vectorised); pitches leaving the range fold by octaves."""
    t = np.asarray(tokens, dtype=np.int64)
    if -6 <= semitones <= 5:
        return MELODY_TRANSPOSE[semitones + 6][t]
    # Outside the table's -6..5 the direction matters (+6 is not -6 for a melody): shift, then fold.
    pitch = t - MEL_NOTE_OFFSET + PITCH_MIN + semitones
    pitch = np.where(pitch < PITCH_MIN, PITCH_MIN + (pitch - PITCH_MIN) % 12, pitch)
    pitch = np.where(pitch > PITCH_MAX, PITCH_MAX - (PITCH_MAX - pitch) % 12, pitch)
    return np.where(t >= MEL_NOTE_OFFSET, pitch - PITCH_MIN + MEL_NOTE_OFFSET, t).astype(np.int64)


def transpose_chords(tokens: npt.ArrayLike, semitones: int) -> npt.NDArray[np.int64]:
    """Transpose chord tokens (vectorised); HOLD and N.C. are unchanged."""
    return CHORD_TRANSPOSE[_shift_index(semitones)][np.asarray(tokens, dtype=np.int64)]


def _shift_index(semitones: int) -> int:
    return (semitones + 6) % 12


# --- resolving HOLD ----------------------------------------------------------
def resolve_holds(tokens: npt.ArrayLike, hold: int, initial: int) -> npt.NDArray[np.int64]:
    """Replace each HOLD by the last non-HOLD token before it (``initial`` at the start).

    Works on one sequence (1-D) at a time, vectorised.
    """
    t = np.asarray(tokens, dtype=np.int64)
    idx = np.where(t != hold, np.arange(t.size), -1)
    np.maximum.accumulate(idx, out=idx)
    out = np.where(idx >= 0, t[np.maximum(idx, 0)], initial)
    return out.astype(np.int64)


def previous(tokens: npt.ArrayLike, initial: int) -> npt.NDArray[np.int64]:
    """Shift a sequence right by one step, filling the first step with ``initial``."""
    t = np.asarray(tokens, dtype=np.int64)
    return np.concatenate([np.array([initial], dtype=np.int64), t[:-1]])


def lookback_sources(position: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """For each step, the index of the step at the same position ``k`` bars earlier.

    Args:
        position: step-in-bar of each step of one sequence (a bar starts where it is 0).

    Returns:
        ``(T, NUM_LOOKBACKS)`` indices into the sequence, ``-1`` where there is none
        (before the start, or a shorter bar that lacks the position).
    """
    pos = np.asarray(position, dtype=np.int64)
    starts_mask = pos == 0
    if pos.size and not starts_mask[0]:
        starts_mask = starts_mask.copy()
        starts_mask[0] = True  # a sequence that starts mid-bar: its first partial bar counts as a bar
    bar = np.cumsum(starts_mask) - 1
    starts = np.flatnonzero(starts_mask)
    ends = np.append(starts[1:], pos.size)
    out = np.full((pos.size, NUM_LOOKBACKS), -1, dtype=np.int64)
    if pos.size == 0:
        return out
    for j, k in enumerate(LOOKBACK_BARS):
        src_bar = bar - k
        sb = np.maximum(src_bar, 0)
        src = starts[sb] + pos - pos[starts[sb]]
        ok = (src_bar >= 0) & (src >= starts[sb]) & (src < ends[sb])
        out[:, j] = np.where(ok, src, -1)
    return out


def lookback_tokens(
    melody: npt.ArrayLike, chord: npt.ArrayLike, position: npt.ArrayLike
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """``(lookback_melody, lookback_chord)``, each ``(T, NUM_LOOKBACKS)``, for one sequence."""
    mel = np.asarray(melody, dtype=np.int64)
    ch = np.asarray(chord, dtype=np.int64)
    src = lookback_sources(position)
    safe = np.maximum(src, 0)
    lb_mel = np.where(src >= 0, mel[safe] if mel.size else 0, MEL_REST)
    lb_ch = np.where(src >= 0, ch[safe] if ch.size else 0, CHORD_NC)
    return lb_mel.astype(np.int64), lb_ch.astype(np.int64)


def step_inputs(
    melody: npt.ArrayLike,
    velocity: npt.ArrayLike,
    chord: npt.ArrayLike,
    position: npt.ArrayLike | None = None,
) -> dict[str, npt.NDArray[np.int64]]:
    """Teacher-forcing inputs for one sequence, keyed by ONNX input name.

    Returns ``prev_melody``, ``prev_sounding``, ``prev_velocity``, ``prev_chord``,
    ``prev_chord_now``, ``chord_now``, ``melody_now`` and ``sounding_now``; with ``position`` (the step-in-bar array)
    also ``lookback_melody`` and ``lookback_chord`` of shape ``(T, NUM_LOOKBACKS)``.
    ``position`` and ``phrase`` themselves come from the data.
    """
    mel = np.asarray(melody, dtype=np.int64)
    vel = np.asarray(velocity, dtype=np.int64)
    ch = np.asarray(chord, dtype=np.int64)
    sounding = resolve_holds(mel, MEL_HOLD, MEL_REST)
    onset = mel >= MEL_NOTE_OFFSET
    # velocity carried from the last onset
    vel_onset = np.where(onset, vel, -1)
    idx = np.where(onset, np.arange(mel.size), -1)
    np.maximum.accumulate(idx, out=idx)
    carried = np.where(idx >= 0, vel_onset[np.maximum(idx, 0)], DEFAULT_VELOCITY_BIN)
    chord_now = resolve_holds(ch, CHORD_HOLD, CHORD_NC)
    feeds = {
        "prev_melody": previous(mel, MEL_REST),
        "prev_sounding": previous(sounding, MEL_REST),
        "prev_velocity": previous(carried, DEFAULT_VELOCITY_BIN),
        "prev_chord": previous(ch, CHORD_NC),
        "prev_chord_now": previous(chord_now, CHORD_NC),
        "chord_now": chord_now,
        "melody_now": mel.copy(),
        "sounding_now": sounding,
    }
    if position is not None:
        feeds["lookback_melody"], feeds["lookback_chord"] = lookback_tokens(mel, ch, position)
    return feeds


# --- time: bars, positions, phrases ------------------------------------------
@dataclass(frozen=True, slots=True)
class TimeSignature:
    """A time signature such as 4/4 or 6/8."""

    numerator: int = 4
    denominator: int = 4

    def __post_init__(self) -> None:
        if self.numerator < 1 or self.numerator > 32:
            raise ValueError(f"time signature numerator must be in range 1..32, got {self.numerator}")
        if self.denominator not in (1, 2, 4, 8, 16, 32):
            raise ValueError(f"time signature denominator must be one of 1, 2, 4, 8, 16, 32, got {self.denominator}")

    @property
    def bar_steps(self) -> int:
        """Grid steps in one bar (at least 1)."""
        return max(1, int(Fraction(self.numerator * 4 * STEPS_PER_BEAT, self.denominator)))

    @property
    def beat_steps(self) -> int:
        """Steps per counted beat: dotted quarter in compound meters (6/8, 9/8, 12/8), else the denominator note."""
        if self.denominator == 8 and self.numerator % 3 == 0 and self.numerator > 3:
            return 3 * STEPS_PER_BEAT // 2
        return max(1, 4 * STEPS_PER_BEAT // self.denominator)

    def strong_steps(self) -> npt.NDArray[np.bool_]:
        """Boolean mask over the steps of a bar: True on counted beats."""
        mask = np.zeros(self.bar_steps, dtype=bool)
        mask[:: self.beat_steps] = True
        return mask

    @classmethod
    def parse(cls, text: str) -> TimeSignature:
        """Parse ``"6/8"``."""
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if m is None:
            raise ValueError(f"cannot parse time signature {text!r}: expected N/D such as 4/4 or 6/8")
        return cls(int(m.group(1)), int(m.group(2)))

    def __str__(self) -> str:
        return f"{self.numerator}/{self.denominator}"


def strong_positions(bar_steps: int, beat_steps: int) -> tuple[int, ...]:
    """Steps in a bar that carry a strong beat: the downbeat, and the middle of the bar when it is a counted
    beat of a bar of at least 12 steps (beats 1 and 3 of 4/4, 1 and 4 of 6/8, 1 and 3 of 12/8; 1 of 2/4,
    3/4 and 9/8)."""
    half = bar_steps // 2
    if bar_steps >= 12 and bar_steps % 2 == 0 and beat_steps > 0 and half % beat_steps == 0:
        return (0, half)
    return (0,)


def position_token(step_in_bar: int) -> int:
    """Position-in-bar token for a step index within its bar."""
    return min(max(step_in_bar, 0), MAX_BAR_STEPS - 1)


def phrase_token(bar: int) -> int:
    """Bar-in-phrase token; ``bar`` counts from the first full bar (a pickup bar is -1)."""
    return bar % PHRASE_BARS


# --- keys and scales ---------------------------------------------------------
SCALES: Final = {
    "major": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10),
    "dorian": (0, 2, 3, 5, 7, 9, 10),
    "mixolydian": (0, 2, 4, 5, 7, 9, 10),
    "harmonic minor": (0, 2, 3, 5, 7, 8, 11),
    "pentatonic": (0, 2, 4, 7, 9),
    "minor pentatonic": (0, 3, 5, 7, 10),
    "blues": (0, 3, 5, 6, 7, 10),
}


@dataclass(frozen=True, slots=True)
class Key:
    """A tonic and a scale, e.g. ``Key.parse("D major")``."""

    tonic: int
    scale: str = "major"

    def __post_init__(self) -> None:
        if not 0 <= self.tonic < 12:
            raise ValueError(f"key tonic must be in range 0..11, got {self.tonic}")
        if self.scale not in SCALES:
            raise ValueError(f"unknown scale {self.scale!r}; allowed: {', '.join(SCALES)}")

    @property
    def pitch_classes(self) -> frozenset[int]:
        """Pitch classes of the scale."""
        return frozenset((self.tonic + i) % 12 for i in SCALES[self.scale])

    @property
    def name(self) -> str:
        """``"D major"``."""
        return f"{NOTE_NAMES[self.tonic]} {self.scale}"

    def contains_chord(self, chord: Chord) -> bool:
        """True when every chord tone is in the scale."""
        return chord.pitch_classes <= self.pitch_classes

    @classmethod
    def parse(cls, text: str) -> Key:
        """Parse ``"D major"``, ``"E minor"``, ``"F# dorian"``, ``"Am"`` or ``"G"``."""
        m = re.fullmatch(r"\s*([A-Ga-g])([#b]?)\s*(.*?)\s*", text)
        if m is None:
            raise ValueError(
                f"cannot parse key {text!r}: expected a tonic and a scale such as 'D major'; "
                f"scales: {', '.join(SCALES)}"
            )
        tonic = _NAME_TO_PC[(m.group(1) + m.group(2)).upper()]
        scale = m.group(3).lower() or "major"
        scale = {"m": "minor", "maj": "major", "min": "minor"}.get(scale, scale)
        if scale not in SCALES:
            raise ValueError(f"unknown scale {m.group(3)!r} in key {text!r}; allowed: {', '.join(SCALES)}")
        return cls(tonic, scale)


def scale_melody_mask(key: Key | None) -> npt.NDArray[np.bool_]:
    """Allowed melody tokens under a key lock (REST and HOLD always allowed)."""
    mask = np.ones(MELODY_VOCAB_SIZE, dtype=bool)
    if key is not None:
        pcs = np.array(sorted(key.pitch_classes))
        pitches = np.arange(PITCH_MIN, PITCH_MAX + 1)
        mask[MEL_NOTE_OFFSET:] = np.isin(pitches % 12, pcs)
    return mask


def scale_chord_mask(key: Key | None) -> npt.NDArray[np.bool_]:
    """Allowed chord tokens under a key lock: chords whose tones all lie in the scale."""
    mask = np.ones(CHORD_VOCAB_SIZE, dtype=bool)
    if key is not None:
        pcs = np.zeros(12)
        pcs[list(key.pitch_classes)] = 1
        outside = _TEMPLATES @ (1 - pcs)
        mask[CHORD_OFFSET:] = outside == 0
    return mask


def contract_summary() -> dict[str, object]:
    """The contract as JSON-ready data, written into each model's ``meta.json``."""
    return {
        "version": CONTRACT_VERSION,
        "steps_per_beat": STEPS_PER_BEAT,
        "pitch_min": PITCH_MIN,
        "pitch_max": PITCH_MAX,
        "melody_vocab_size": MELODY_VOCAB_SIZE,
        "velocity_bins": NUM_VELOCITY_BINS,
        "chord_vocab_size": CHORD_VOCAB_SIZE,
        "qualities": [q[0] for q in QUALITIES],
        "max_bar_steps": MAX_BAR_STEPS,
        "phrase_bars": PHRASE_BARS,
        "lookback_bars": list(LOOKBACK_BARS),
        "chord_inputs": list(CHORD_MODEL_INPUTS),
        "chord_outputs": list(CHORD_MODEL_OUTPUTS),
        "note_inputs": list(NOTE_MODEL_INPUTS),
        "note_outputs": list(NOTE_MODEL_OUTPUTS),
        "harmony_inputs": list(HARMONY_MODEL_INPUTS),
        "harmony_outputs": list(HARMONY_MODEL_OUTPUTS),
    }

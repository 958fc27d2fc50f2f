"""Four-part voice leading, counted simply: the figures ``--mode chorale`` is measured by (beside Bach's own).

A *voicing* is one beat's soprano, alto, tenor and bass as MIDI pitches (``None`` for a voice that does not
sound). From a piano-roll frame, the voices are its pitches from the top: the top note is the soprano, the
next two alto and tenor, the lowest the bass (:func:`voicing_from_pitches`; chorale mode voices its model's
frames the same way, :func:`rtgen.arrange.chorale.pick_voices`). A frame of unordered pitches cannot say
which voice sang which note, so:

- a *beat change* is a pair of consecutive beats, both with all four voices, where at least one voice moves;
- a *parallel fifth* (*octave*) is a pair of voices a perfect fifth (an octave or unison) apart, modulo 12,
  on both beats of a change, both voices moving in the same direction;
- a *crossing* (in a sorted frame no voice is ever above the one above it) is counted as *overlap*, the
  crossing that sorted voices can show: on a change a voice moves above where the voice above it was a beat
  before, or below where the voice below it was;
- *spacing* is a beat with more than an octave between soprano and alto or between alto and tenor;
- *out of range* is a voice outside its range in :data:`RANGES`;
- *soprano as a chord tone*: the soprano's pitch class is a tone of the chord the lower voices spell
  (:func:`rtgen.contract.recognize_chord` of alto, tenor and bass). The benchmark roll carries no bar lines,
  so every beat (each quarter-note frame) counts as strong.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from rtgen.contract import recognize_chord

VOICE_NAMES = ("soprano", "alto", "tenor", "bass")
Voicing = tuple[int | None, int | None, int | None, int | None]
"""One beat: soprano, alto, tenor, bass (MIDI pitches, None where the voice is silent)."""

RANGES: dict[str, tuple[int, int]] = {
    "soprano": (60, 79),  # C4..G5
    "alto": (55, 74),  # G3..D5
    "tenor": (48, 67),  # C3..G4
    "bass": (40, 60),  # E2..C4
}
"""The usual SATB ranges of four-part writing (Kostka & Payne, *Tonal Harmony*, ch. 5: soprano C4-G5, alto
G3-D5, tenor C3-G4, bass E2-C4), inclusive MIDI pitches."""

FIFTH = 7
OCTAVE = 0


def voicing_from_pitches(pitches: Iterable[int]) -> Voicing:
    """The voices of a frame's pitches: top = soprano, the next two alto and tenor, the lowest the bass.

    With more than four pitches the ones between tenor and bass are left out; with fewer, the missing voices
    are None from the tenor up (three pitches: soprano, alto, bass; two: soprano, bass).
    """
    p = sorted(set(pitches), reverse=True)
    if not p:
        return (None, None, None, None)
    if len(p) == 1:
        return (p[0], None, None, None)
    if len(p) == 2:
        return (p[0], None, None, p[1])
    if len(p) == 3:
        return (p[0], p[1], None, p[2])
    return (p[0], p[1], p[2], p[-1])


def _full(v: Voicing) -> bool:
    return all(x is not None for x in v)


def parallels(a: Voicing, b: Voicing) -> tuple[int, int]:
    """Parallel fifths and parallel octaves (or unisons) from beat ``a`` to beat ``b``: pairs of voices sounding
    on both beats, the same perfect interval apart (modulo 12) on both, both moving the same way."""
    fifths = octaves = 0
    for i in range(4):
        for j in range(i + 1, 4):
            a_hi, a_lo, b_hi, b_lo = a[i], a[j], b[i], b[j]
            if a_hi is None or a_lo is None or b_hi is None or b_lo is None:
                continue
            move_hi, move_lo = b_hi - a_hi, b_lo - a_lo
            if move_hi == 0 or move_lo == 0 or (move_hi > 0) != (move_lo > 0):
                continue
            before, after = (a_hi - a_lo) % 12, (b_hi - b_lo) % 12
            if before == after == FIFTH:
                fifths += 1
            elif before == after == OCTAVE:
                octaves += 1
    return fifths, octaves


def overlaps(a: Voicing, b: Voicing) -> int:
    """Voice overlaps from beat ``a`` to ``b``: a voice moving above where the voice above it was, or below
    where the voice below it was (adjacent voices sounding on both beats)."""
    n = 0
    for i in range(3):
        upper_before, lower_before, upper_now, lower_now = a[i], a[i + 1], b[i], b[i + 1]
        if upper_before is None or lower_before is None or upper_now is None or lower_now is None:
            continue
        n += lower_now > upper_before or upper_now < lower_before
    return n


def spaced(v: Voicing) -> bool:
    """More than an octave between soprano and alto, or between alto and tenor."""
    s, a, t = v[0], v[1], v[2]
    return (s is not None and a is not None and s - a > 12) or (a is not None and t is not None and a - t > 12)


def out_of_range(v: Voicing) -> int:
    """Voices outside their :data:`RANGES`."""
    return sum(p is not None and not RANGES[n][0] <= p <= RANGES[n][1] for n, p in zip(VOICE_NAMES, v, strict=True))


@dataclass(frozen=True)
class VoiceLeading:
    """Voice-leading figures of a sequence of beats (see the module docstring for each definition).

    Attributes:
        beats: beats counted.
        full_beats: beats with all four voices.
        three_under: share of the beats with a soprano that have at least three voices sounding under it.
        changes: beat changes.
        parallel_fifths: per 100 beat changes.
        parallel_octaves: per 100 beat changes.
        crossings: voice overlaps per 100 beat changes.
        spacing: share of full beats (in %) with more than an octave between soprano and alto or alto and tenor.
        out_of_range: share (in %) of the sounding lower voices (alto, tenor, bass) outside :data:`RANGES`.
        out_of_range_by_voice: the same per voice (soprano included, for the player's line).
        soprano_chord_tone: share (in %) of beats whose lower voices spell a chord where the soprano is one of
            its tones.
    """

    beats: int
    full_beats: int
    three_under: float
    changes: int
    parallel_fifths: float
    parallel_octaves: float
    crossings: float
    spacing: float
    out_of_range: float
    out_of_range_by_voice: dict[str, float]
    soprano_chord_tone: float

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready figures."""
        return asdict(self)


@dataclass
class Counts:
    """Raw counts behind :class:`VoiceLeading` (they add up over pieces: :meth:`add`, then :meth:`figures`)."""

    beats: int = 0
    with_soprano: int = 0
    three_under: int = 0
    full_beats: int = 0
    changes: int = 0
    fifths: int = 0
    octaves: int = 0
    crossings: int = 0
    spaced: int = 0
    lower_voices: int = 0
    lower_out: int = 0
    chord_beats: int = 0
    chord_tone: int = 0

    def __post_init__(self) -> None:
        self.voice_count = dict.fromkeys(VOICE_NAMES, 0)
        self.voice_out = dict.fromkeys(VOICE_NAMES, 0)

    def add(self, voicings: Sequence[Voicing]) -> Counts:
        """Count one piece (or one stretch of playing: consecutive beats); returns self."""
        prev: Voicing | None = None
        for v in voicings:
            self._beat(v)
            if prev is not None and _full(prev) and _full(v) and prev != v:
                self._change(prev, v)
            prev = v
        return self

    def _beat(self, v: Voicing) -> None:
        self.beats += 1
        s = v[0]
        if s is not None:
            self.with_soprano += 1
            if sum(x is not None for x in v[1:]) >= 3:
                self.three_under += 1
        for name, pitch in zip(VOICE_NAMES, v, strict=True):
            if pitch is None:
                continue
            lo, hi = RANGES[name]
            out = not lo <= pitch <= hi
            self.voice_count[name] += 1
            self.voice_out[name] += out
            if name != "soprano":
                self.lower_voices += 1
                self.lower_out += out
        if _full(v):
            self.full_beats += 1
            self.spaced += spaced(v)
        lower = [x for x in v[1:] if x is not None]
        chord = recognize_chord(lower) if s is not None and len(lower) >= 2 else None
        if chord is not None and s is not None:
            self.chord_beats += 1
            self.chord_tone += s % 12 in chord.pitch_classes

    def _change(self, a: Voicing, b: Voicing) -> None:
        self.changes += 1
        fifths, octaves = parallels(a, b)
        self.fifths += fifths
        self.octaves += octaves
        self.crossings += overlaps(a, b)

    def figures(self) -> VoiceLeading:
        """The figures of everything counted."""

        def per(n: int, d: int, scale: float = 100.0) -> float:
            return round(scale * n / d, 3) if d else 0.0

        return VoiceLeading(
            beats=self.beats,
            full_beats=self.full_beats,
            three_under=per(self.three_under, self.with_soprano),
            changes=self.changes,
            parallel_fifths=per(self.fifths, self.changes),
            parallel_octaves=per(self.octaves, self.changes),
            crossings=per(self.crossings, self.changes),
            spacing=per(self.spaced, self.full_beats),
            out_of_range=per(self.lower_out, self.lower_voices),
            out_of_range_by_voice={n: per(self.voice_out[n], self.voice_count[n]) for n in VOICE_NAMES},
            soprano_chord_tone=per(self.chord_tone, self.chord_beats),
        )


def voice_leading(pieces: Iterable[Sequence[Voicing]]) -> VoiceLeading:
    """The figures of several pieces (each a sequence of beats; no change is counted across two pieces)."""
    counts = Counts()
    for piece in pieces:
        counts.add(piece)
    return counts.figures()

"""A two-handed phrase for the duet tests: a melody over chords, 2 bars of 4/4 in D major."""

from __future__ import annotations

from rtgen.input.tracker import SILENT_FRAME, StepFrame

D_MAJOR = frozenset({2, 4, 6, 7, 9, 11, 1})
CHORDS = ((0, 2, (50, 54, 57)), (2, 2, (43, 47, 50)), (4, 2, (45, 49, 52)), (6, 2, (50, 54, 57)))  # D G A D
TUNE = ((0, 66), (1, 69), (2, 71), (3, 69), (4, 67), (5, 66), (6, 64), (7, 62))  # a quarter note each
NOTES: tuple[tuple[float, float, int], ...] = tuple(
    sorted([(float(b), float(d), p) for b, d, ps in CHORDS for p in ps] + [(float(b), 0.9, p) for b, p in TUNE])
)
"""``(start beat, length in beats, MIDI pitch)`` of every note (the tune's notes a little detached)."""
BEATS = 8


def phrase_frames(steps_per_beat: int = 4) -> list[StepFrame]:
    """The phrase as the tracker hands it to the loop, one :class:`StepFrame` per grid step."""
    out = []
    for k in range(BEATS * steps_per_beat):
        t = k / steps_per_beat
        onsets = tuple(sorted(p for b, _, p in NOTES if b == t))
        sounding = tuple(sorted(p for b, d, p in NOTES if b <= t < b + d))
        out.append(StepFrame(onsets, sounding, 90 if onsets else 0) if sounding else SILENT_FRAME)
    return out

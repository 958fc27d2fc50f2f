"""The player heard whole: every sounding note, the sustain pedal included, per grid step (issue 18)."""

from __future__ import annotations

from rtgen.input.tracker import SILENT_FRAME, PlayerTracker, StepFrame

MS = 1_000_000
C3, G3, C, E, G, B = 48, 55, 60, 64, 67, 71
PEDAL = 64


def on(pitch: int, velocity: int = 100) -> tuple[int, ...]:
    return (0x90, pitch, velocity)


def off(pitch: int) -> tuple[int, ...]:
    return (0x80, pitch, 0)


def pedal(down: bool) -> tuple[int, ...]:
    return (0xB0, PEDAL, 127 if down else 0)


def test_two_hands_are_heard_whole_not_as_the_top_line() -> None:
    tracker = PlayerTracker()
    for i, p in enumerate((C3, G3, E, G)):
        tracker.feed(i * MS, on(p, 60 + i))
    assert tracker.melody_note() == G  # the melody is still the top line ...
    frame = tracker.take_frame()  # ... but the frame holds both hands
    assert frame == StepFrame((C3, G3, E, G), (C3, G3, E, G), 63)
    assert tracker.take_frame() == StepFrame((), (C3, G3, E, G), 0)  # held on: no onset
    tracker.feed(10 * MS, off(G3))
    assert tracker.take_frame().sounding == (C3, E, G)


def test_pedal_holds_released_keys_until_it_lifts() -> None:
    tracker = PlayerTracker()
    tracker.feed(0, pedal(True))
    tracker.feed(1 * MS, on(C3))
    tracker.feed(2 * MS, on(E))
    tracker.feed(50 * MS, off(C3))
    tracker.feed(60 * MS, off(E))
    assert tracker.held == frozenset() and tracker.sustained == frozenset({C3, E})
    assert tracker.take_frame() == StepFrame((C3, E), (C3, E), 100)
    tracker.feed(100 * MS, on(G))  # a new key under the pedal joins the sounding set
    assert tracker.take_frame() == StepFrame((G,), (C3, E, G), 100)
    tracker.feed(150 * MS, off(G))
    tracker.feed(200 * MS, pedal(False))  # the pedal lifts: everything released ends at once
    assert tracker.sustained == frozenset() and tracker.is_silent
    assert tracker.take_frame() is SILENT_FRAME


def test_a_key_struck_again_under_the_pedal_is_a_new_onset() -> None:
    tracker = PlayerTracker()
    tracker.feed(0, pedal(True))
    tracker.feed(1 * MS, on(C, 70))
    tracker.feed(40 * MS, off(C))
    assert tracker.take_frame().onsets == (C,)
    assert tracker.take_frame() == StepFrame((), (C,), 0)  # sustained: sounding, not struck
    tracker.feed(100 * MS, on(C, 90))  # struck again while the pedal holds it
    assert tracker.take_frame() == StepFrame((C,), (C,), 90)
    assert [o.pitch for o in tracker.take_onsets()] == [C, C]
    tracker.feed(120 * MS, pedal(False))
    assert tracker.sounding() == (C,) and tracker.held == frozenset({C})  # its key is down again: it sounds on
    tracker.feed(130 * MS, off(C))
    assert tracker.is_silent


def test_a_short_note_sounds_in_its_step_and_the_pedal_lifting_mid_step_keeps_it() -> None:
    tracker = PlayerTracker()
    tracker.feed(0, on(B))
    tracker.feed(20 * MS, off(B))  # struck and released within one step
    assert tracker.take_frame() == StepFrame((B,), (B,), 100)
    assert tracker.take_frame() is SILENT_FRAME
    tracker.feed(200 * MS, pedal(True))
    tracker.feed(201 * MS, on(C))
    tracker.feed(202 * MS, off(C))
    tracker.feed(210 * MS, pedal(False))  # lifted within the same step: C still sounded there
    assert tracker.take_frame() == StepFrame((C,), (C,), 100)
    assert tracker.take_frame() is SILENT_FRAME


def test_all_notes_off_ends_the_pedal_notes_but_the_step_keeps_what_was_struck() -> None:
    tracker = PlayerTracker()
    tracker.feed(0, pedal(True))
    tracker.feed(1 * MS, on(C))
    tracker.feed(2 * MS, off(C))
    tracker.feed(3 * MS, on(E))
    tracker.feed(4 * MS, (0xB0, 123, 0))
    assert tracker.is_silent
    assert tracker.take_frame() == StepFrame((C, E), (C, E), 100)
    assert tracker.take_frame() is SILENT_FRAME
    tracker.reset()
    tracker.feed(5 * MS, on(G))
    tracker.reset()  # a reset forgets the step's onsets too
    assert tracker.take_frame() is SILENT_FRAME

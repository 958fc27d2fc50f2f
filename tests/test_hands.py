"""Two hands in accompany mode, end to end: a player plays a tune over left-hand block chords into ``rtgen run``.

As in ``tests/test_playalong.py`` (whose player, recorder and daemon fixtures these tests share): the daemon
follows the player's MIDI clock, so every message of the player lands on a known step; rtgen's chords are read
from its recorded output at the middle of each beat.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import pytest
import test_playalong
from test_daemon import Peer
from test_playalong import (
    CHORDS,
    CLOCK,
    MELODY,
    START,
    STOP,
    Events,
    Keyboard,
    Message,
    clock_schedule,
    finish,
    load_tune,
    note_ons,
    sounding_at,
    start_recording,
    status,
    token_pcs,
    wait_status,
)

from rtgen import contract as ct
from rtgen.bench.harness import sounding_notes

pytestmark = pytest.mark.jack

# test_playalong's fixtures: a JACK server of each test's own, the shipped model, the daemon
jack_server, model_dir, start_daemon = test_playalong.jack_server, test_playalong.model_dir, test_playalong.start_daemon

BPM = 150.0
STEPS_PER_BEAT = 4
C_MAJOR = (48, 52, 55)
ISSUE_TUNE = (60, 60, 67, 67, 69, 69, 67, None, 65, 65, 64, 64, 62, 62, 60, None)
"""Issue #19's right hand, one note a beat (None: the right hand rests and the left hand strikes its C alone)."""


REST = -1
"""In the right hand's pitches per step: the note held ends (a rest begins)."""


def hands_schedule(
    right: Sequence[int | None], left: Sequence[tuple[int, ...] | None], velocity: Sequence[int] | None = None
) -> dict[int, list[Message]]:
    """The player's messages at each step from what each hand does there.

    ``right``: a pitch to strike, :data:`REST` to release the note held, None to go on as before; ``left``: the
    pitches of a chord to strike, ``()`` to release the chord held, None to go on. A hand releases what it holds
    just before it strikes again; on even steps the left hand's notes go out before the right hand's, on odd
    steps after them (the tracker must not care). Everything ends after the last step.
    """
    out: dict[int, list[Message]] = {}
    held_r: int | None = None
    held_l: tuple[int, ...] = ()
    for s in range(len(right) + 1):
        end = s == len(right)
        r = REST if end else right[s]
        lh = () if end else left[s]
        offs: list[Message] = []
        on_r: list[Message] = []
        on_l: list[Message] = []
        if r is not None:
            if held_r is not None:
                offs.append((0x80, held_r, 0))
            held_r = None if r == REST else r
            if held_r is not None:
                on_r.append((0x90, held_r, 80 if velocity is None else int(velocity[s])))
        if lh is not None:
            offs += [(0x80, p, 0) for p in held_l]
            held_l = lh
            on_l += [(0x90, p, 70) for p in lh]
        msgs = offs + (on_l + on_r if s % 2 == 0 else on_r + on_l)
        if msgs:
            out[s] = msgs
    return out


def tune_schedule(tune: dict[str, Any]) -> dict[int, list[Message]]:
    """:func:`hands_schedule` of a tune from :func:`test_playalong.load_tune`: its melody in the right hand, its
    human chords in the left (struck where the data strikes them, voiced under C3)."""
    right: list[int | None] = [
        REST if t == ct.MEL_REST else None if t == ct.MEL_HOLD else ct.melody_pitch(t) for t in tune["melody"].tolist()
    ]
    left: list[tuple[int, ...] | None] = [
        None if t == ct.CHORD_HOLD else tuple(sorted(36 + pc for pc in token_pcs(t))) for t in tune["chord"].tolist()
    ]
    return hands_schedule(right, left, [ct.bin_velocity(int(v)) for v in tune["velocity"]])


def perform(d: Any, by_step: dict[int, list[Message]], steps: int,
            during: Any = None) -> tuple[Events, list[int], Keyboard]:  # fmt: skip
    """Play ``by_step`` on a 24-ppqn clock at :data:`BPM` into daemon ``d``; returns rtgen's output, the step ticks'
    send times and the player. ``during(step_ticks)`` runs on this thread while the player plays."""
    rec = start_recording(d)
    kb = Keyboard(d)
    try:
        t0 = time.perf_counter_ns() + 600_000_000
        ticks = clock_schedule(t0 + 20_000_000, BPM, (steps + 1) * 6)
        schedule: list[tuple[int, Message]] = [(t0, (START,))]
        for i, t in enumerate(ticks):
            schedule.append((t, (CLOCK,)))
            if i % 6 == 0:
                schedule.extend((t, m) for m in by_step.get(i // 6, []))
        schedule.append((ticks[-1] + (ticks[1] - ticks[0]), (STOP,)))
        kb.play(schedule)
        if during is not None:
            during(ticks[::6])
        kb.join(steps * 0.1 + 10)
        rec.wait_until(lambda ev: not sounding_notes([m for _, m in ev]), timeout=2.0)
        rec.settle(0.3)
        events = rec.snapshot()
    finally:
        rec.close()
        kb.close()
    step_ticks = [t for t, m in kb.sent if m == (CLOCK,)][::6]
    assert len(step_ticks) == steps + 1
    return events, step_ticks, kb


def wait_until_ns(t_ns: int) -> None:
    while time.perf_counter_ns() < t_ns:
        time.sleep(0.002)


def test_two_hands_issue_19_the_left_hands_c_major_under_the_tune(start_daemon: Any) -> None:
    beats = len(ISSUE_TUNE)
    steps = beats * STEPS_PER_BEAT
    right: list[int | None] = [None] * steps
    left: list[tuple[int, ...] | None] = [None] * steps
    for b, p in enumerate(ISSUE_TUNE):
        right[b * STEPS_PER_BEAT] = REST if p is None else p
        left[b * STEPS_PER_BEAT] = C_MAJOR if p is not None else (48,)  # a lone C where the right hand rests
    d = start_daemon("--mode", "accompany", "--clock", "midi")
    peer = Peer(d.osc_port)
    seen: dict[int, dict[str, Any]] = {}

    def during(step_ticks: list[int]) -> None:
        beat_ns = step_ticks[STEPS_PER_BEAT] - step_ticks[0]
        for b in (4, 7, 12, 15):  # the A, the lone left-hand C, the D, the lone C again
            wait_until_ns(step_ticks[b * STEPS_PER_BEAT] + beat_ns // 2)
            seen[b] = status(peer)

    try:
        d.wait_playing()
        assert status(peer)["split"] == "auto", "auto by default"
        events, step_ticks, _ = perform(d, hands_schedule(right, left), steps, during)
        peer.send("/rtgen/split", "C4")
        state = wait_status(peer, "split", "C4")
        finish(d)
    finally:
        peer.close()
    assert state["split"] == "C4", state
    beat_ns = step_ticks[STEPS_PER_BEAT] - step_ticks[0]
    played = []
    for b, p in enumerate(ISSUE_TUNE):
        t = step_ticks[b * STEPS_PER_BEAT] + beat_ns // 2
        pcs = frozenset(q % 12 for q in sounding_at(events, t, CHORDS))
        played.append((p, pcs))
    named = [(p, ct.Chord.parse("C").name if pcs == {0, 4, 7} else sorted(pcs)) for p, pcs in played]
    print(f"rtgen's chords under the tune over the left hand's C major: {named}")
    # a tune note struck on a beat is heard with the left hand's chord struck with it: C major under every one,
    # the A and the D included (the tune alone gets F and G there); the lone C keeps the chord ringing
    off = [(b, p, sorted(pcs)) for b, (p, pcs) in enumerate(played) if pcs != {0, 4, 7}]
    assert len(off) <= 1 and all(b == 0 for b, _, _ in off), f"not C major under (beat, note, pcs): {off}"
    assert {0, 4, 7} == played[4][1] == played[5][1], "under the A over the player's C E G: C major, not F"
    # rtgen accompanies: it never plays the player's tune back
    assert not note_ons([m for _, m in events], MELODY)
    # live, the top line is the melody and the left hand's C struck alone never is
    assert seen[4]["player_melody"] == 69 and seen[12]["player_melody"] == 62, seen
    assert seen[7]["player_melody"] is None and seen[7]["player_sounding"] == [48], seen[7]
    assert seen[15]["player_melody"] is None, seen[15]


def test_two_hands_a_nottingham_tune_over_its_own_chords(start_daemon: Any) -> None:
    """The left hand plays the tune's human chords (struck where the data strikes them, voiced under C3), the
    right hand its melody: rtgen's chords are the left hand's, and hold the melody's notes as often as they do."""
    bars = 4
    tune = load_tune(bars)
    melody, chord, position = tune["melody"], tune["chord"], tune["position"]
    steps = melody.size
    human = ct.resolve_holds(chord, ct.CHORD_HOLD, ct.CHORD_NC)
    by_step = tune_schedule(tune)
    d = start_daemon("--mode", "accompany", "--clock", "midi")
    events, step_ticks, _ = perform(d, by_step, steps)
    finish(d)
    step_ns = step_ticks[1] - step_ticks[0]
    counted = [s for s in range(steps) if position[s] in (0, 8) and melody[s] >= ct.MEL_NOTE_OFFSET]
    assert len(counted) >= 6
    agree = hit = human_hit = 0
    for s in counted:
        live = frozenset(p % 12 for p in sounding_at(events, step_ticks[s] + step_ns // 2, CHORDS))
        ref = token_pcs(int(human[s]))
        pc = (ct.melody_pitch(int(melody[s])) or 0) % 12
        agree += live == ref
        hit += pc in live
        human_hit += pc in ref
    n = len(counted)
    print(f"two hands, {n} counted steps: rtgen's chord is the left hand's at {agree}/{n}; holds the melody's note "
          f"at {hit}/{n} (the left hand's chords: {human_hit}/{n})")  # fmt: skip
    assert agree >= n - 1, (agree, n)
    assert hit >= human_hit - 1, (hit, human_hit)
    assert not note_ons([m for _, m in events], MELODY)

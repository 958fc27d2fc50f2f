"""Duet end to end on real JACK ports: a two-handed phrase into ``rtgen run --mode duet``, its answer recorded.

The player (a JACK client of its own, test_playalong's Keyboard) plays a melody over chords for two bars, then
is silent; rtgen answers with the shipped chorale model on the chords part; the player plays again and the
answer stops. Every time compared is this process's ``perf_counter_ns`` (send times, the recorder's arrivals).
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import test_playalong
from duet_phrase import D_MAJOR, NOTES
from test_daemon import Peer
from test_playalong import CHORDS, Events, Keyboard, finish, start_recording, wait_status

from rtgen.bench.harness import PERIOD_NS, note_ons, sounding_notes

pytestmark = pytest.mark.jack

jack_server, model_dir, start_daemon = test_playalong.jack_server, test_playalong.model_dir, test_playalong.start_daemon

BEAT_NS = 500_000_000  # 120 BPM
BAR_NS = 4 * BEAT_NS


def two_hands(
    t0: int, beat_ns: int = BEAT_NS, notes: tuple[tuple[float, float, int], ...] = NOTES, pedal_beats: float = 0.0
) -> Events:
    """The phrase's notes as timed messages from ``t0`` (sorted; a note-off before a note-on at one time); with
    ``pedal_beats``, every key is let go after a sixteenth and the sustain pedal holds the notes that long."""
    out: Events = []
    for b, d, p in notes:
        out.append((t0 + int(b * beat_ns), (0x90, p, 90)))
        length = min(d, 0.25) if pedal_beats else d
        out.append((t0 + int((b + length) * beat_ns) - 20_000_000, (0x80, p, 0)))
    if pedal_beats:
        out += [(t0 - 10_000_000, (0xB0, 64, 127)), (t0 + int(pedal_beats * beat_ns), (0xB0, 64, 0))]
    return sorted(out, key=lambda e: (e[0], e[1][0] != 0x80))


def chords_sounding(events: Events, t_ns: int) -> set[int]:
    """The chords part's pitches sounding at ``t_ns`` (real note-offs only)."""
    return {p for ch, p in sounding_notes([m for t, m in events if t <= t_ns]) if ch == CHORDS}


def test_duet_answers_a_two_handed_phrase_with_chords_and_stops_when_the_player_plays(start_daemon: Any) -> None:
    d = start_daemon("--mode", "duet", "--model", "chorale", tempo=120.0)  # a melody --model is refused for duet
    kb = Keyboard(d)  # before the recorder: no client of this process opens while it records
    rec = start_recording(d)
    try:
        t0 = time.perf_counter_ns() + 300_000_000
        kb.play(two_hands(t0))
        kb.join(15)
        phrase_end = kb.sent[-1][0]
        # the whole answer: rtgen plays, then falls silent for a beat
        assert rec.wait_until(lambda ev: bool(note_ons([m for t, m in ev if t > phrase_end])), timeout=5), d.output()
        rec.wait_until(
            lambda ev: (
                sounding_notes([m for _, m in ev]) == set() and max(t for t, _ in ev) < time.perf_counter_ns() - BEAT_NS
            ),
            timeout=15,
        )
        answer = [(t, m) for t, m in rec.snapshot() if t > phrase_end]
        # a second phrase (the first bar, staccato under the pedal, held 2 beats past the last key); the player plays
        # again once rtgen is sounding its answer
        t1 = time.perf_counter_ns() + 100_000_000
        kb.play(two_hands(t1, notes=tuple(n for n in NOTES if n[0] < 4), pedal_beats=5.25))
        kb.join(10)
        phrase2_end = kb.sent[-1][0]  # the pedal lifts
        last_key = max(t for t, m in kb.sent if m[0] == 0x80)
        assert rec.wait_until(lambda ev: bool(sounding_notes([m for t, m in ev if t > phrase2_end])), timeout=5), (
            "no second answer"
        )
        time.sleep(0.3)
        t_int = kb.send(0x90, 62, 90)
        time.sleep(0.3)
        kb.send(0x80, 62, 0)
        rec.settle(0.5)
        events = rec.snapshot()
        finish(d)
    finally:
        rec.close()
        kb.close()
    ons = [(t, m) for t, m in answer if note_ons([m])]
    assert ons and all(m[0] & 0x0F == CHORDS for _, m in ons), "the answer plays on the chords part only"
    first = min(t for t, _ in ons)
    last_off = max(t for t, m in answer if m[0] & 0xF0 in (0x80, 0x90))
    delay = first - phrase_end
    beats = [first + i * BEAT_NS + BEAT_NS // 2 for i in range(int((last_off - first) // BEAT_NS))]
    sizes = [len(chords_sounding(answer, t)) for t in beats]
    chord_beats = sum(n >= 2 for n in sizes)
    pcs = [m[1] % 12 for _, m in ons]
    in_key = sum(pc in D_MAJOR for pc in pcs) / len(pcs)
    bound = t_int + 2 * 2 * PERIOD_NS  # a note in, the release out: two JACK periods, with 2x margin
    released = [t for t, m in events if t_int <= t <= bound + BEAT_NS and not note_ons([m]) and m[0] & 0xE0 == 0x80]
    print(
        f"duet: answer starts {delay / 1e6:.0f} ms after the phrase's last note-off, {len(beats)} beats, "
        f"{chord_beats}/{len(beats)} beats with 2+ notes (sizes {sizes}), {in_key:.0%} of {len(pcs)} onsets in "
        f"D major; the interruption released everything {(max(released) - t_int) / 1e6:.2f} ms after the "
        f"player's note ({len(released)} note-offs)"
    )
    assert 0 < delay <= BAR_NS, delay
    assert phrase2_end - last_key >= 2 * BEAT_NS - 50_000_000
    assert not note_ons([m for t, m in events if last_key < t <= phrase2_end]), "answered while the pedal held notes"
    assert len(beats) >= 4, beats
    assert chord_beats > 0.5 * len(beats), sizes
    assert in_key >= 0.8, pcs
    assert released, "the interruption released nothing"
    assert sounding_notes([m for t, m in events if t <= bound]) == set(), "still sounding after the interruption"
    assert not note_ons([m for t, m in events if t_int < t <= t_int + 500_000_000]), "rtgen went on answering"
    assert sounding_notes([m for _, m in events]) == set(), "a note without its note-off"


def test_duet_switches_live_over_osc_and_back_mid_answer_with_no_stuck_note(start_daemon: Any) -> None:
    """Started with ``--model chorale`` (a polyphonic model): the engine plays the default model until duet."""
    d = start_daemon("--model", "chorale", tempo=120.0)
    kb = Keyboard(d)  # before the recorder: no client of this process opens while it records
    rec = start_recording(d)
    peer = Peer(d.osc_port)
    try:
        # the autonomous mode plays the default model first (its first note-on may precede the recorder)
        assert rec.wait_until(lambda ev: bool(note_ons([m for _, m in ev])), timeout=10), d.output()
        peer.send("/rtgen/mode", "duet")
        assert wait_status(peer, "mode", "duet", timeout=10)["mode"] == "duet", d.output()
        t0 = time.perf_counter_ns() + 200_000_000
        kb.play(two_hands(t0, notes=tuple(n for n in NOTES if n[0] < 4)))
        kb.join(10)
        end = kb.sent[-1][0]
        assert rec.wait_until(lambda ev: bool(sounding_notes([m for t, m in ev if t > end])), timeout=5), d.output()
        peer.send("/rtgen/mode", "accompany")  # mid-answer
        assert wait_status(peer, "mode", "accompany")["mode"] == "accompany"
        time.sleep(0.3)
        finish(d)
        rec.settle(0.3)
        events = rec.snapshot()
    finally:
        peer.close()
        rec.close()
        kb.close()
    assert note_ons([m for t, m in events if t < t0]), "autonomous played the default model before duet"
    assert sounding_notes([m for _, m in events]) == set(), "a mode switch left a note sounding"
    assert "Traceback" not in d.output()

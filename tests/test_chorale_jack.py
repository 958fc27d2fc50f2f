"""Chorale mode end to end on real JACK ports: a JSB test-split soprano played into ``rtgen run --mode chorale``.

The player (test_hands' helpers, on a 24-ppqn MIDI clock the daemon follows) plays Bach's soprano, one frame a
beat; rtgen's alto, tenor and bass are read from its recorded output in the middle of each beat and counted as
``rtgen-train chorale-eval`` counts them offline.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import test_playalong
from conftest import REPO, SHARED_DATA, require
from test_daemon import Daemon, Peer
from test_hands import REST, STEPS_PER_BEAT, hands_schedule, perform
from test_playalong import CHORDS, MELODY, Keyboard, finish, note_ons, sounding_at, start_recording, wait_status

from rtgen.arrange.voiceleading import voice_leading
from rtgen.bench.harness import is_note_off, sounding_notes

pytestmark = pytest.mark.jack

jack_server, start_daemon = test_playalong.jack_server, test_playalong.start_daemon

JSB = SHARED_DATA / "poly_music" / "JSB_Chorales.mat"
CHORALE_MODEL = REPO / "exported_models" / "chorale"
PIECE = 0  # the test split's first chorale
BEATS = 32


@pytest.fixture(scope="module")
def model_dir() -> Path:
    """The shipped chorale model (``--model`` of test_daemon's daemon)."""
    require((CHORALE_MODEL / "meta.json").is_file(), f"the shipped chorale model at {CHORALE_MODEL}")
    return CHORALE_MODEL


def bach_soprano() -> list[int | None]:
    """The first :data:`BEATS` beats of a JSB test-split chorale's soprano, in a singer's register."""
    require(JSB.is_file(), f"the polyphonic benchmark at {JSB}")
    from training.chorale_eval import placement, sopranos
    from training.poly_data import load_rolls

    roll = load_rolls(JSB)["test"][PIECE][:BEATS]
    return sopranos(roll, placement(roll, 0))


def test_chorale_sings_three_voices_under_a_bach_soprano(start_daemon: Any) -> None:
    soprano = bach_soprano()
    steps = BEATS * STEPS_PER_BEAT
    right: list[int | None] = [None] * steps
    for b, p in enumerate(soprano):  # a repeated pitch is held (the roll cannot tell), a new one struck
        if b == 0 or p != soprano[b - 1]:
            right[b * STEPS_PER_BEAT] = REST if p is None else p
    d = start_daemon("--mode", "chorale", "--clock", "midi")
    events, step_ticks, _ = perform(d, hands_schedule(right, [None] * steps), steps)
    finish(d)
    beat_ns = step_ticks[STEPS_PER_BEAT] - step_ticks[0]
    voicings = []
    for b, s in enumerate(soprano):
        lower = sorted(sounding_at(events, step_ticks[b * STEPS_PER_BEAT] + beat_ns // 2, CHORDS), reverse=True)
        voicings.append((s, *(lower + [None] * 3)[:3]) if len(lower) <= 3 else (s, lower[0], lower[1], lower[-1]))
    figures = voice_leading([voicings])
    print(f"chorale on JACK, {BEATS} beats of JSB test chorale {PIECE}: {figures}")
    msgs = [m for _, m in events]
    # three voices under the soprano on (nearly) every beat, all below it
    assert figures.three_under >= 90.0, voicings
    assert all(p < s for s, *lower in voicings if s is not None for p in lower if p is not None), voicings
    # the voice leading of the offline figures (at most a point or two per 100 changes over the test split),
    # with room for one short piece: 32 beats have about 30 changes, so each fault is over 3 points
    assert figures.parallel_fifths + figures.parallel_octaves <= 10.0, voicings
    assert figures.crossings <= 10.0, voicings
    assert figures.spacing <= 10.0 and figures.out_of_range <= 5.0, voicings
    # rtgen never plays the player's melody back; every note it struck was released with a real note-off
    assert not note_ons(msgs, MELODY)
    ons = sum(1 for m in msgs if note_ons([m]))
    offs = sum(1 for m in msgs if is_note_off(m))
    assert ons >= 3 * BEATS // 2 and offs == ons, (ons, offs)
    assert sounding_notes(msgs) == set()


def test_mode_switches_into_and_out_of_chorale_leave_no_note_sounding(
    jack_server: str, shipped_model_dir: Path, tmp_path: Path
) -> None:
    """Started in accompany (the default model), switched to chorale over OSC (its model, ``[model] poly``, loaded
    then), played, switched back while the voices sound; then accompany with the chords part in the chorale style,
    and back to block chords: the voices sing under the player's note, and nothing stays sounding."""
    d = Daemon(jack_server, shipped_model_dir, tmp_path, "--mode", "accompany")
    try:
        _switch_and_play(d)
    finally:
        d.stop()


def _switch_and_play(d: Daemon) -> None:
    kb = Keyboard(d)  # before the recorder: no client of this process opens while it records
    rec = start_recording(d)
    peer = Peer(d.osc_port)
    try:
        peer.send("/rtgen/mode", "chorale")
        assert wait_status(peer, "mode", "chorale", timeout=10)["mode"] == "chorale", d.output()
        kb.send(0x90, 72, 90)
        assert rec.wait_until(lambda ev: len(note_ons([m for _, m in ev], CHORDS)) >= 3, timeout=5), d.output()
        peer.send("/rtgen/mode", "accompany")
        assert wait_status(peer, "mode", "accompany")["mode"] == "accompany"
        kb.send(0x80, 72, 0)
        time.sleep(0.3)
        # accompany with the chords part in the chorale style: the model's voices under the player's note
        peer.send("/rtgen/style", "chords", "chorale")
        time.sleep(0.5)
        before = len(rec.snapshot())
        kb.send(0x90, 74, 90)
        assert rec.wait_until(lambda ev: len(note_ons([m for _, m in ev[before:]], CHORDS)) >= 3, timeout=5), d.output()
        chords = note_ons([m for _, m in rec.snapshot()[before:]], CHORDS)
        assert all(m[1] < 74 for m in chords), chords
        peer.send("/rtgen/style", "chords", "block")
        time.sleep(0.3)
        kb.send(0x80, 74, 0)
        time.sleep(0.3)
        finish(d)
        rec.settle(0.3)
        events = rec.snapshot()
    finally:
        peer.close()
        rec.close()
        kb.close()
    assert sounding_notes([m for _, m in events]) == set(), "a mode switch left a note sounding"
    assert "Traceback" not in d.output()

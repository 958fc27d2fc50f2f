"""rtgen.input: the player's MIDI in (queue, tracker, CC mapping), the run CLI's input options, and real JACK ports."""

from __future__ import annotations

import argparse
import threading
import time

import pytest
import rtmidi

from rtgen.commands import run as run_cmd
from rtgen.config import MODES, CcConfig, GenerationConfig, config_from_dict, load_config
from rtgen.contract import CHORD_NC, Chord
from rtgen.errors import ConfigError
from rtgen.input.tracker import (
    CONTINUOUS_CONTROLS,
    CONTROL_RANGES,
    LEFT_RING_NS,
    Control,
    InputQueue,
    Onset,
    PlayerTracker,
    mode_for_cc,
    nearest_step,
    scale_cc,
)
from rtgen.io import ports as midi_io

MS = 1_000_000
C, E, G = 60, 64, 67


def on(pitch: int, velocity: int = 100, channel: int = 0) -> tuple[int, ...]:
    return (0x90 | channel, pitch, velocity)


def off(pitch: int, channel: int = 0) -> tuple[int, ...]:
    return (0x80 | channel, pitch, 0)


def cc(number: int, value: int, channel: int = 0) -> tuple[int, ...]:
    return (0xB0 | channel, number, value)


# -- chords and the settle window --------------------------------------------------------------------------------


def test_rolled_chord_is_one_chord_after_the_settle_window() -> None:
    tracker = PlayerTracker(settle_ms=40.0)
    feeds = {0: on(C), 15 * MS: on(E), 30 * MS: on(G)}
    seen: list[Chord | None] = []
    for now in range(0, 101 * MS, MS // 2):
        if now in feeds:
            assert tracker.feed(now, feeds[now]) == []
        chord = tracker.chord(now)
        if not seen or seen[-1] != chord:
            seen.append(chord)
        if now < 70 * MS:  # 30 ms (last note) + 40 ms settle
            assert chord is None, f"partial chord {chord} at {now / MS} ms"
    assert seen == [None, Chord.parse("C")]
    assert tracker.chord_token(100 * MS) == Chord.parse("C").token
    assert tracker.sounding() == (C, E, G)


def test_chord_change_keeps_the_previous_chord_until_settled_and_after_the_hands_lift() -> None:
    tracker = PlayerTracker(settle_ms=30.0)
    assert tracker.chord_token(0) == CHORD_NC
    for i, p in enumerate((C, E, G)):
        tracker.feed(i * MS, on(p))
    assert tracker.chord(100 * MS) == Chord.parse("C")
    # Move to A minor: release G, add A (A C E), struck 10 ms apart.
    tracker.feed(200 * MS, off(G))
    tracker.feed(210 * MS, on(69))
    assert tracker.chord(220 * MS) == Chord.parse("C")  # unsettled: the old chord stays
    assert tracker.chord(240 * MS) == Chord.parse("Am")
    for p in (C, E, 69):
        tracker.feed(300 * MS, off(p))
    assert tracker.is_silent and tracker.last_release_ns == 300 * MS
    assert tracker.chord(1000 * MS) == Chord.parse("Am")  # still ringing for the listener
    tracker.feed(1100 * MS, on(72))  # one pitch class is not a chord
    assert tracker.chord(2000 * MS) == Chord.parse("Am")
    tracker.reset()
    assert tracker.chord(3000 * MS) is None and tracker.chord_token(3000 * MS) == CHORD_NC


def test_zero_settle_recognises_immediately() -> None:
    tracker = PlayerTracker(settle_ms=0.0)
    tracker.feed(0, on(C))
    tracker.feed(1, on(G))
    assert tracker.chord(1) is not None and tracker.chord(1).root == 0  # type: ignore[union-attr]


# -- notes, pedal, channels ------------------------------------------------------------------------------------


def test_sustain_pedal_keeps_released_notes_until_it_lifts() -> None:
    tracker = PlayerTracker(settle_ms=10.0)
    tracker.feed(0, cc(64, 127))
    assert tracker.pedal
    for i, p in enumerate((C, E, G)):
        tracker.feed(i * MS, on(p))
    for p in (C, E, G):
        tracker.feed(5 * MS, off(p))
    assert tracker.held == frozenset()
    assert tracker.sounding() == (C, E, G) and not tracker.is_silent
    assert tracker.last_release_ns is None
    assert tracker.chord(100 * MS) == Chord.parse("C")  # recognised from sustained notes only
    assert tracker.melody_note() == G
    tracker.feed(200 * MS, on(E))  # re-struck while sustained, then the pedal lifts: E is still held
    tracker.feed(300 * MS, cc(64, 10))
    assert not tracker.pedal
    assert tracker.sounding() == (E,) and tracker.held == frozenset({E})
    # the chord's top G was the melody until the pedal lifted; E struck again under it is harmony
    assert tracker.melody_note() is None and tracker.harmony() == (E,)
    tracker.feed(400 * MS, off(E))
    assert tracker.sounding() == () and tracker.is_silent and tracker.last_release_ns == 400 * MS
    assert tracker.melody_note() is None


def test_pedal_threshold_and_velocity_zero_note_on_is_off() -> None:
    tracker = PlayerTracker()
    tracker.feed(0, cc(64, 63))
    assert not tracker.pedal
    tracker.feed(0, cc(64, 64))
    assert tracker.pedal
    tracker.feed(0, cc(64, 0))
    tracker.feed(1, on(C))
    tracker.feed(2, (0x90, C, 0))
    assert tracker.is_silent and tracker.last_release_ns == 2


def test_all_notes_off_from_the_player_clears_everything() -> None:
    tracker = PlayerTracker()
    tracker.feed(0, cc(64, 127))
    tracker.feed(1, on(C))
    tracker.feed(2, on(E))
    tracker.feed(3, off(C))
    tracker.feed(4, cc(123, 0))
    assert tracker.sounding() == () and tracker.melody_note() is None and tracker.last_release_ns == 4


@pytest.mark.parametrize(
    ("channel", "expected"),
    [(0, (60, 61, 62)), (1, (60,)), (2, (61,)), (16, (62,))],
)
def test_channel_filter_and_omni(channel: int, expected: tuple[int, ...]) -> None:
    tracker = PlayerTracker(channel=channel)
    for ch, p in ((0, 60), (1, 61), (15, 62)):
        tracker.feed(0, on(p, channel=ch))
        tracker.feed(0, cc(64, 127, channel=ch))  # pedal on one channel only counts when listened to
    assert tracker.sounding() == expected
    assert tracker.filtered == (0 if channel == 0 else 4)
    assert tracker.pedal


def test_channel_filter_applies_to_controllers() -> None:
    tracker = PlayerTracker(channel=2)
    assert tracker.feed(0, cc(1, 127, channel=0)) == []
    assert tracker.feed(0, cc(1, 127, channel=1)) == [Control("temperature", 3.0)]
    with pytest.raises(ValueError, match=r"0\.\.16"):
        PlayerTracker(channel=17)


def test_melody_note_follows_a_single_line_and_rests_with_it() -> None:
    tracker = PlayerTracker()
    assert tracker.melody_note() is None
    for t, p in enumerate((C, E, G, E)):  # one note at a time, each released before the next
        tracker.feed(t * 100 * MS, on(p, 90))
        assert tracker.melody_note() == p and tracker.melody_onset == Onset(t * 100 * MS, p, 90)
        tracker.feed(t * 100 * MS + 90 * MS, off(p))
        assert tracker.melody_note() is None
    assert tracker.harmony() == () and tracker.left_chord(400 * MS) is None
    assert tracker.melody_onset == Onset(300 * MS, E, 90)  # kept after the note ends: a short note is still heard
    assert tracker.last_onset_ns == 300 * MS


def test_legato_steps_take_the_line_up_and_down() -> None:
    tracker = PlayerTracker()
    tracker.feed(0, on(G))
    tracker.feed(100 * MS, on(G + 2))  # up, before G is released
    tracker.feed(110 * MS, off(G))
    assert tracker.melody_note() == G + 2
    tracker.feed(200 * MS, on(G))  # a step down, struck alone while A is still down
    assert tracker.melody_note() == G
    tracker.feed(210 * MS, off(G + 2))
    tracker.feed(300 * MS, on(E))  # a third down: still legato
    assert tracker.melody_note() == E
    tracker.feed(400 * MS, on(C - 12))  # far below the held line: the left hand's
    assert tracker.melody_note() == E and tracker.harmony() == (C - 12,)  # G, left by the line, is neither


def test_the_top_of_notes_struck_together_is_the_melody_whatever_their_order() -> None:
    for order in ((48, 52, 55, C), (C, 48, 52, 55), (52, C, 55, 48)):
        tracker = PlayerTracker()
        for i, p in enumerate(order):
            tracker.feed(i * MS, on(p))
        assert tracker.melody_note() == C, order
        assert tracker.melody_onset is not None and tracker.melody_onset.pitch == C
        assert tracker.harmony() == (48, 52, 55)
        assert tracker.left_chord(10 * MS) == Chord.parse("C")
        assert tracker.left_chord_token(10 * MS) == Chord.parse("C").token


def test_an_inner_voice_never_steals_the_line() -> None:
    tracker = PlayerTracker()
    for p in (48, 52, 55, G + 12):  # left hand C major, right hand G5
        tracker.feed(0, on(p))
    tracker.feed(300 * MS, on(C + 12))  # an inner voice a fifth under the held G: harmony
    assert tracker.melody_note() == G + 12
    tracker.feed(400 * MS, off(G + 12))  # the line ends: the inner voice still held does not take it
    assert tracker.melody_note() is None and C + 12 in tracker.harmony()
    tracker.feed(500 * MS, on(81))  # above every held key: the tune again
    assert tracker.melody_note() == 81


def test_a_lone_left_hand_note_never_becomes_the_melody() -> None:
    tracker = PlayerTracker()
    beat = 500 * MS
    for b, tune in enumerate((C, C, G, G)):  # the left hand strikes C major on every beat with the tune's note
        t = b * beat
        for p in (tune, 48, 52, 55):
            tracker.feed(t + MS, on(p))
        assert tracker.melody_note() == tune
        for p in (tune, 48, 52, 55):
            tracker.feed(t + beat - 20 * MS, off(p))
    t = 4 * beat
    tracker.feed(t, on(48))  # the left hand alone on a beat, the right hand resting
    assert tracker.melody_note() is None and tracker.melody_onset is not None and tracker.melody_onset.pitch == G
    assert tracker.harmony() == (48,) and tracker.left_chord(t) == Chord.parse("C")  # a bass note under it
    tracker.feed(t + 100 * MS, on(55))  # the left hand's top note, alone, is no melody either
    assert tracker.melody_note() is None and tracker.left_chord(t + 100 * MS) == Chord.parse("C")
    tracker.feed(t + 200 * MS, on(60))  # the tune comes back above the left hand
    assert tracker.melody_note() == 60


def test_the_left_hands_chord_rings_briefly_then_needs_two_pitch_classes() -> None:
    tracker = PlayerTracker()
    c_major, a_minor = Chord.parse("C"), Chord.parse("Am")
    for p in (72, 48, 52, 55):
        tracker.feed(0, on(p))
    assert tracker.left_chord(0) == c_major
    for p in (48, 52, 55):
        tracker.feed(500 * MS, off(p))
    assert tracker.harmony() == () and tracker.left_chord(500 * MS + LEFT_RING_NS) == c_major  # it rings
    tracker.feed(550 * MS, on(45))  # struck again a little late, a note at a time
    assert tracker.left_chord(550 * MS) == c_major
    tracker.feed(551 * MS, on(48))
    assert tracker.left_chord(551 * MS) == a_minor
    for p in (45, 48):
        tracker.feed(1000 * MS, off(p))
    assert tracker.left_chord(1000 * MS + LEFT_RING_NS + 1) is None  # the left hand rests: no chord
    tracker.feed(3000 * MS, on(48))  # back after the rest with one note: no chord from before the rest
    assert tracker.left_chord(3000 * MS) is None
    tracker.feed(3001 * MS, on(55))
    assert tracker.left_chord(3001 * MS) == Chord(0, c_major.quality)
    tracker.feed(3500 * MS, cc(123, 0))
    assert tracker.left_chord(3500 * MS + LEFT_RING_NS + 1) is None


def test_a_legato_step_that_was_a_chords_first_note_goes_back() -> None:
    tracker = PlayerTracker()
    tracker.feed(0, on(G))
    tracker.feed(300 * MS, on(E))  # alone for now: a step down
    assert tracker.melody_note() == E
    tracker.feed(305 * MS, on(C))  # ... but a chord under the held G
    assert tracker.melody_note() == G and tracker.melody_onset == Onset(0, G, 100)
    assert tracker.harmony() == (C, E)


def test_a_fixed_split_gives_each_hand_its_notes() -> None:
    tracker = PlayerTracker()
    tracker.set_split(60)
    tracker.feed(0, on(55))  # under the split, alone: the left hand's
    assert tracker.melody_note() is None and tracker.harmony() == (55,)
    tracker.feed(1 * MS, on(48))
    tracker.feed(2 * MS, on(52))
    tracker.feed(100 * MS, on(G))
    tracker.feed(200 * MS, on(C))  # at the split: the right hand's, its latest note is the melody
    assert tracker.melody_note() == C and tracker.harmony() == (48, 52, 55)
    tracker.feed(300 * MS, off(C))
    assert tracker.melody_note() == G  # the right hand's latest note still down
    assert tracker.left_chord(300 * MS) == Chord.parse("C")
    tracker.set_split(None)  # back to the skyline: the sounding notes are sorted again at once
    assert tracker.melody_note() == G and tracker.harmony() == (48, 52, 55)
    tracker.set_split(50)
    assert tracker.melody_note() == G and tracker.harmony() == (48,)
    with pytest.raises(ValueError, match=r"0\.\.127"):
        tracker.set_split(128)


def test_split_from_the_config() -> None:
    cfg = config_from_dict({"input": {"split": "F#3"}})
    assert cfg.input.parsed_split() == 54 and PlayerTracker.from_config(cfg).split == 54
    assert PlayerTracker.from_config(config_from_dict({})).split is None


def test_take_onsets_consumes_each_onset_once_and_history_is_bounded() -> None:
    tracker = PlayerTracker(history=4)
    tracker.feed(10, on(C, 90))
    tracker.feed(20, on(E, 80))
    tracker.feed(25, off(C))
    assert tracker.take_onsets() == [Onset(10, C, 90), Onset(20, E, 80)]
    assert tracker.take_onsets() == []
    tracker.feed(30, on(G, 70))
    assert tracker.take_onsets() == [Onset(30, G, 70)]
    for i in range(6):
        tracker.feed(100 + i, on(40 + i, 50))
    taken = tracker.take_onsets()
    assert [o.pitch for o in taken] == [42, 43, 44, 45]  # the bounded history dropped the oldest
    assert list(tracker.onsets) == taken


# -- controllers -------------------------------------------------------------------------------------------------


def test_scale_cc_ranges_curves_and_clamping() -> None:
    for name in CONTINUOUS_CONTROLS:
        lo, hi = CONTROL_RANGES[name]
        values = [scale_cc(name, v) for v in range(128)]
        assert values[0] == pytest.approx(lo) and values[127] == pytest.approx(hi)
        assert all(lo <= v <= hi for v in values)
        assert values == sorted(values)  # monotonic
        assert scale_cc(name, -20) == values[0] and scale_cc(name, 999) == values[127]
    assert scale_cc("temperature", 64) == pytest.approx(GenerationConfig().temperature)  # the default mid-wheel
    assert scale_cc("density", 64) == pytest.approx(1.0)
    assert scale_cc("density", 32) == pytest.approx(0.5)
    assert scale_cc("top_p", 127) == 1.0 and scale_cc("swing", 127) == 0.75
    # Geometric halves: equal steps are equal ratios.
    t = [scale_cc("temperature", v) for v in (16, 32, 48)]
    assert t[1] / t[0] == pytest.approx(t[2] / t[1])
    with pytest.raises(ValueError, match="temperature"):
        scale_cc("volume", 3)


def test_every_mapped_cc_becomes_a_control() -> None:
    tracker = PlayerTracker(cc=CcConfig(temperature=1, top_p=71, density=74, swing=20, mode=85, panic=102))
    assert tracker.feed(0, cc(1, 64)) == [Control("temperature", pytest.approx(GenerationConfig().temperature))]
    assert tracker.feed(0, cc(71, 0)) == [Control("top_p", pytest.approx(0.05))]
    assert tracker.feed(0, cc(74, 127)) == [Control("density", pytest.approx(4.0))]
    assert tracker.feed(0, cc(20, 127)) == [Control("swing", pytest.approx(0.75))]
    assert tracker.feed(0, cc(85, 40)) == [Control("mode", "accompany")]
    assert tracker.feed(0, cc(102, 127)) == [Control("panic", 1.0)]
    assert tracker.feed(0, cc(7, 100)) == []  # unmapped
    assert tracker.bad == 0


def test_unmapped_controls_do_nothing_and_a_mapping_onto_64_is_a_knob() -> None:
    tracker = PlayerTracker(cc=CcConfig(temperature=0, top_p=0, density=0, swing=64, mode=0, panic=0))
    assert tracker.feed(0, cc(1, 127)) == []
    assert tracker.feed(0, cc(64, 127)) == [Control("swing", 0.75)]
    assert not tracker.pedal


def test_garbage_is_counted_never_raised() -> None:
    tracker = PlayerTracker()
    garbage: list[object] = [
        (),
        (0xB0, 1),  # too short
        (0xB0, 1, 200),  # data byte out of range
        (0xB0, 130, 5),
        (0x90, 60, 100, 5),  # too long
        (0x90, -1, 100),
        (0x40, 60, 100),  # data byte as status
        (0xC0,),  # program change without its program
        (300, 1, 2),
        ("x", 1, 2),
        (0x90, "a", 3),
        None,
        [0x90, None, 3],
    ]
    for message in garbage:
        assert tracker.feed(0, message) == []  # type: ignore[arg-type]
    assert tracker.bad == len(garbage)
    assert tracker.sounding() == () and tracker.take_onsets() == []
    # Valid messages we do not use, and system messages, are not "bad".
    for message in [(0xC0, 5), (0xD0, 40), (0xE0, 0, 64), (0xA0, 60, 10), (0xF8,), (0xFA,), (0xF0, 1, 2, 0xF7)]:
        assert tracker.feed(0, message) == []
    assert tracker.bad == len(garbage)
    tracker.feed(1, [0x90, 60, 100])  # a list, as rtmidi hands it over
    assert tracker.sounding() == (60,)


def test_mode_cc_emits_only_when_the_range_changes() -> None:
    tracker = PlayerTracker()
    out = []
    for v in (0, 5, 31, 32, 33, 63, 64, 95, 96, 127, 100, 90):
        out += tracker.feed(0, cc(85, v))
    assert out == [
        Control("mode", "autonomous"),
        Control("mode", "accompany"),
        Control("mode", "improvise"),
        Control("mode", "call-and-response"),
        Control("mode", "improvise"),
    ]
    assert [c.value for c in out[:4]] == list(MODES[:4])
    assert [mode_for_cc(v) for v in (0, 31, 32, 63, 64, 95, 96, 127, 500, -3)] == [
        "autonomous",
        "autonomous",
        "accompany",
        "accompany",
        "improvise",
        "improvise",
        "call-and-response",
        "call-and-response",
        "call-and-response",
        "autonomous",
    ]


def test_mode_extra_cc_reaches_band_duet_and_chorale() -> None:
    tracker = PlayerTracker()
    out = []
    for v in (0, 42, 43, 85, 86, 127, 20):
        out += tracker.feed(0, cc(86, v))
    out += tracker.feed(0, cc(85, 40))  # back to a first-four mode with the other knob
    assert [c.value for c in out] == ["band", "duet", "chorale", "band", "accompany"]
    assert [mode_for_cc(v, extra=True) for v in (0, 42, 43, 85, 86, 127, 999)] == [
        "band", "band", "duet", "duet", "chorale", "chorale", "chorale",
    ]  # fmt: skip


def test_panic_emits_once_per_rising_edge_through_64() -> None:
    tracker = PlayerTracker()
    values = (0, 63, 64, 100, 127, 70, 63, 10, 64, 127, 0, 127)
    fired = [bool(tracker.feed(0, cc(102, v))) for v in values]
    assert fired == [False, False, True, False, False, False, False, False, True, False, False, True]
    tracker.reset()
    assert tracker.feed(0, cc(102, 127)) == [Control("panic", 1.0)]


# -- helpers and the queue ---------------------------------------------------------------------------------------


def test_nearest_step() -> None:
    step = 125 * MS
    assert nearest_step(1000 * MS, 1000 * MS, step) == (0, 0)
    assert nearest_step(1000 * MS + 10 * MS, 1000 * MS, step) == (0, 10 * MS)
    assert nearest_step(1000 * MS + 120 * MS, 1000 * MS, step) == (1, -5 * MS)
    assert nearest_step(1000 * MS + 2 * step + step // 2, 1000 * MS, step) == (3, -(step // 2))  # half-way: later
    assert nearest_step(1000 * MS - 30 * MS, 1000 * MS, step) == (0, -30 * MS)
    assert nearest_step(1000 * MS - 100 * MS, 1000 * MS, step) == (-1, 25 * MS)
    with pytest.raises(ValueError, match="positive"):
        nearest_step(0, 0, 0)


def test_input_queue_from_another_thread_keeps_order_and_wakes_the_loop() -> None:
    woke = threading.Event()
    q = InputQueue(on_arrival=woke.set)
    assert q.drain() == []
    n = 1000

    def producer() -> None:
        for i in range(n):
            q([0x90, i % 128, 1 + i % 127], i)

    thread = threading.Thread(target=producer)
    thread.start()
    assert woke.wait(5)
    thread.join(5)
    assert q.received == n and len(q) == n
    first = q.drain(limit=300)
    rest = q.drain(limit=10_000)
    got = first + rest
    assert len(first) == 300 and len(got) == n and q.drain() == []
    assert [t for t, _ in got] == list(range(n))
    assert got[5] == (5, (0x90, 5, 6)) and isinstance(got[5][1], tuple)


# -- CLI options ------------------------------------------------------------------------------------------------


def _run_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="rtgen")
    sub = parser.add_subparsers(dest="command", required=True)
    run_cmd.register(sub)
    return parser.parse_args(["run", *argv])


def test_run_cli_input_and_clock_options() -> None:
    base = load_config(None)
    cfg = run_cmd.build_config(_run_args("--config", "/dev/null"))
    assert cfg.input == base.input and cfg.clock == base.clock and cfg.accompany == base.accompany
    cfg = run_cmd.build_config(
        _run_args(
            "--config",
            "/dev/null",
            "--midi-in",
            "Keystation",
            "--in-channel",
            "3",
            "--thru",
            "--clock",
            "midi",
            "--clock-out",
            "--reactive-window",
            "20",
            "--mode",
            "call-and-response",
        )
    )
    assert cfg.input.port == "Keystation" and cfg.input.channel == 3 and cfg.input.thru and cfg.input.enabled
    assert cfg.clock.source == "midi" and cfg.clock.send
    assert cfg.accompany.reactive_window_ms == 20.0
    assert cfg.daemon.mode == "call-and-response"
    assert run_cmd.build_config(_run_args("--config", "/dev/null", "--no-input")).input.enabled is False


@pytest.mark.parametrize(
    ("argv", "key"),
    [(("--in-channel", "17"), "input.channel"), (("--reactive-window", "80"), "accompany.reactive_window_ms")],
)
def test_run_cli_bad_values_name_the_key(argv: tuple[str, ...], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        run_cmd.build_config(_run_args("--config", "/dev/null", *argv))


def test_run_cli_rejects_unknown_clock_source(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _run_args("--clock", "smpte")
    assert "internal" in capsys.readouterr().err


# -- real ports ------------------------------------------------------------------------------------------------


@pytest.mark.jack
def test_tracker_hears_a_real_jack_keyboard(jack_server: str) -> None:
    from rtgen.bench.harness import jack_connect, wait_for_port

    woke = threading.Event()
    q = InputQueue(on_arrival=woke.set)
    tracker = PlayerTracker(settle_ms=40.0)
    sender = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, name="rtgen-inkeys")
    sender.open_virtual_port("out")
    try:
        with midi_io.open_input("jack", None, q, client_name="rtgen-intest", port_name="in") as inp:
            assert inp.virtual and inp.name == "rtgen-intest:in"
            wait_for_port("rtgen-intest:in")
            wait_for_port("rtgen-inkeys:out")
            jack_connect("rtgen-inkeys:out", "rtgen-intest:in")
            before = time.perf_counter_ns()
            for message in (cc(64, 127), on(C, 90), on(E, 91), on(G, 92), off(C), cc(1, 127)):
                sender.send_message(list(message))
                time.sleep(0.015)
            deadline = time.monotonic() + 10
            while q.received < 6 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert woke.is_set()
            events = q.drain()
    finally:
        sender.close_port()
        sender.delete()
    after = time.perf_counter_ns()
    assert [m for _, m in events] == [cc(64, 127), on(C, 90), on(E, 91), on(G, 92), off(C), cc(1, 127)]
    times = [t for t, _ in events]
    assert before <= times[0] and times == sorted(times) and times[-1] <= after
    controls = [c for t, m in events for c in tracker.feed(t, m)]
    assert controls == [Control("temperature", 3.0)]
    assert tracker.held == frozenset({E, G}) and tracker.sounding() == (C, E, G)  # C kept by the pedal
    assert tracker.melody_note() == G
    onsets = tracker.take_onsets()
    assert [(o.pitch, o.velocity) for o in onsets] == [(C, 90), (E, 91), (G, 92)]
    assert [o.t_ns for o in onsets] == times[1:4]
    assert tracker.chord(times[3] + 40 * MS - 1) is None  # the last change (G) has not settled yet
    assert tracker.chord(times[3] + 40 * MS) == Chord.parse("C")


def test_a_steps_melody_onset_is_the_top_lines_whatever_came_first() -> None:
    """The loop's ``_heard`` on a tracker fed two hands: the melody's onset, never a left-hand note's."""
    from types import SimpleNamespace

    from rtgen import contract as ct
    from rtgen.live.deciding import Deciding

    tracker = PlayerTracker()
    loop = SimpleNamespace(tracker=tracker, _onsets=[], _last_player_chord=CHORD_NC, _last_left_chord=CHORD_NC)

    def step(t: int, *msgs: tuple[int, ...]) -> tuple[int, int | None, int]:
        for m in msgs:
            tracker.feed(t, m)
        loop._onsets.extend(tracker.take_onsets())
        heard = Deciding._heard(loop, t + MS)  # type: ignore[arg-type]
        return heard.melody, heard.velocity, heard.left

    c_major = Chord.parse("C").token
    assert step(0, on(48, 60), on(52, 60), on(55, 60), on(C, 90)) == (ct.melody_note_on(C), 90, c_major)
    assert step(500 * MS, off(48), off(52), off(55), on(48, 60), on(52, 60), on(55, 60)) == (ct.MEL_HOLD, None, c_major)
    lone = step(1000 * MS, off(C), off(48), off(52), off(55), on(48, 60))  # the left hand's C alone: no melody
    assert lone == (ct.MEL_REST, None, c_major)
    g_major = Chord.parse("G").token  # the tune first, the left hand's new chord after it
    assert step(1500 * MS, off(48), on(G, 80), on(43), on(47), on(50)) == (ct.melody_note_on(G), 80, g_major)

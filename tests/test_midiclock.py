"""MIDI clock in and out: transport semantics, jitter-robust tempo, SPP encoding round trips."""

from __future__ import annotations

import random

import pytest

from rtgen.midi.messages import CLOCK, CONTINUE, SONG_POSITION, START, STOP
from rtgen.timing.midiclock import (
    ClockEvent,
    ClockFollower,
    spp,
    start_messages,
    stop_message,
    ticks_for_step,
)

MS = 1_000_000
T0 = 1_000_000_000


def tick_ns(bpm: float) -> float:
    return 60e9 / (bpm * 24)


def clock_times(bpms: list[float], rng: random.Random | None = None, jitter_ns: int = 0, t0: int = T0) -> list[int]:
    """Arrival times of one tick per entry of ``bpms`` (the tempo of the interval after it)."""
    times = []
    t = float(t0)
    for bpm in bpms:
        j = rng.uniform(-jitter_ns, jitter_ns) if rng is not None else 0.0
        times.append(round(t + j))
        t += tick_ns(bpm)
    return times


def feed_ticks(f: ClockFollower, times: list[int]) -> list[ClockEvent]:
    events: list[ClockEvent] = []
    for t in times:
        events += f.feed([CLOCK], t)
    return events


def steps(events: list[ClockEvent]) -> list[ClockEvent]:
    return [e for e in events if e.kind == "step"]


def test_jittered_100_bpm_clock_gives_100_bpm_steps_and_estimate() -> None:
    rng = random.Random(1234)
    times = clock_times([100.0] * (24 * 16), rng, 2 * MS)
    f = ClockFollower()
    assert f.tempo_bpm is None
    assert f.feed([START], T0 - 3 * MS) == [ClockEvent("start", 0, T0 - 3 * MS)]
    events: list[ClockEvent] = []
    for k, t in enumerate(times):
        events += f.feed([CLOCK], t)
        if k >= 24:  # one beat of ticks: the estimate must hold from here on
            assert f.tempo_bpm == pytest.approx(100.0, rel=0.01), k
            assert f.step_ns == pytest.approx(150e6, rel=0.01)
    got = steps(events)
    assert [e.step for e in got] == list(range(64))
    assert [e.t_ns for e in got] == times[::6]
    for k in range(len(got) - 16):
        mean_step = (got[k + 16].t_ns - got[k].t_ns) / 16
        assert 60e9 / (mean_step * 4) == pytest.approx(100.0, rel=0.01), k
    assert f.position == 64 and f.ticks == 24 * 16


def test_tempo_change_is_followed_within_a_beat() -> None:
    rng = random.Random(99)
    before = 24 * 4
    f = ClockFollower()
    f.feed([START], T0 - MS)
    times = clock_times([100.0] * before + [130.0] * (24 * 4), rng, 2 * MS)
    feed_ticks(f, times[: before + 1])  # the last 100 BPM tick ends the old tempo
    assert f.tempo_bpm == pytest.approx(100.0, rel=0.01)
    for k, t in enumerate(times[before + 1 :], start=1):
        f.feed([CLOCK], t)
        if k >= 24:
            assert f.tempo_bpm == pytest.approx(130.0, rel=0.02), k


def test_a_big_tempo_jump_is_followed_within_a_beat_too() -> None:
    rng = random.Random(5)
    before = 24 * 4
    f = ClockFollower()
    f.feed([START], T0 - MS)
    times = clock_times([100.0] * before + [60.0] * (24 * 3), rng, 2 * MS)
    feed_ticks(f, times[: before + 1])
    for k, t in enumerate(times[before + 1 :], start=1):
        f.feed([CLOCK], t)
        if k >= 24:
            assert f.tempo_bpm == pytest.approx(60.0, rel=0.02), k


def test_no_step_before_start_but_the_tempo_is_measured() -> None:
    f = ClockFollower()
    times = clock_times([120.0] * 48)
    assert feed_ticks(f, times) == []
    assert not f.running and f.ticks == 0 and f.position == 0
    assert f.tempo_bpm == pytest.approx(120.0, rel=1e-6)
    assert f.predict_ns(0) is None
    t_start = times[-1] + 5 * MS
    assert f.feed([START], t_start) == [ClockEvent("start", 0, t_start)]
    assert f.running
    first = times[-1] + round(tick_ns(120.0))
    assert f.feed([CLOCK], first) == [ClockEvent("step", 0, first)]
    # the fit restarted on Start; the old estimate stands meanwhile
    assert f.tempo_bpm == pytest.approx(120.0, rel=1e-6)


def test_stop_halts_and_keeps_the_position() -> None:
    f = ClockFollower()
    f.feed([START], T0 - MS)
    times = clock_times([120.0] * 80)
    got = steps(feed_ticks(f, times[:20]))  # ticks 0..19: steps 0..3
    assert [e.step for e in got] == [0, 1, 2, 3]
    assert f.feed([STOP], times[19] + MS) == [ClockEvent("stop", 4, times[19] + MS)]
    assert not f.running
    assert feed_ticks(f, times[20:]) == []
    assert f.ticks == 20 and f.position == 4
    assert f.feed([STOP], times[-1] + MS) == []  # already stopped


def test_continue_resumes_mid_step_where_stop_left_it() -> None:
    f = ClockFollower()
    f.feed([START], T0 - MS)
    times = clock_times([120.0] * 40)
    feed_ticks(f, times[:8])  # ticks 0..7
    f.feed([STOP], times[7] + MS)
    assert f.feed([CONTINUE], times[20] - MS) == [ClockEvent("continue", 2, times[20] - MS)]
    got = feed_ticks(f, times[20:26])  # ticks 8..13: step 2 on tick 12, the fifth one
    assert got == [ClockEvent("step", 2, times[24])]


def test_continue_after_spp_resumes_at_the_spp_position() -> None:
    f = ClockFollower()
    f.feed([START], T0 - MS)
    times = clock_times([110.0] * 120)
    feed_ticks(f, times[:30])
    f.feed([STOP], times[29] + MS)
    assert f.feed([SONG_POSITION, 37, 0], times[40]) == [ClockEvent("locate", 37, times[40])]
    assert f.position == 37 and f.ticks == 37 * 6 and not f.running
    assert feed_ticks(f, times[41:50]) == []  # SPP while stopped only relocates
    assert f.feed([CONTINUE], times[50] - MS) == [ClockEvent("continue", 37, times[50] - MS)]
    got = steps(feed_ticks(f, times[50:]))
    assert [e.step for e in got] == list(range(37, 37 + 12))
    assert [e.t_ns for e in got] == times[50::6]


def test_spp_while_running_relocates_from_the_next_tick() -> None:
    f = ClockFollower()
    f.feed([START], T0 - MS)
    times = clock_times([120.0] * 30)
    feed_ticks(f, times[:9])
    f.feed(spp(300), times[9] - MS)
    got = steps(feed_ticks(f, times[9:]))
    assert got[0] == ClockEvent("step", 300, times[9])
    assert [e.step for e in got] == [300, 301, 302, 303]


@pytest.mark.parametrize("fault", ["doubled", "dropped", "bunched"])
def test_a_faulty_tick_does_not_move_the_estimate(fault: str) -> None:
    rng = random.Random(7)
    times = clock_times([100.0] * (24 * 6), rng, 2 * MS)
    k = 24 * 3 + 11  # mid-window, where an unrejected fault pulls a least-squares slope most
    if fault == "doubled":
        times.insert(k + 1, times[k] + MS // 2)
    elif fault == "dropped":
        del times[k]
    else:  # two ticks in one USB packet: one late, the next on time
        times[k] = times[k + 1] - 100_000
    f = ClockFollower()
    f.feed([START], T0 - MS)
    for i, t in enumerate(times):
        f.feed([CLOCK], t)
        if i >= 24:
            assert f.tempo_bpm == pytest.approx(100.0, rel=0.02), i
    assert f.outliers >= 1


def test_a_stall_that_bunches_ticks_at_one_time_leaves_a_tempo() -> None:
    """A listener stalled for a beat reads the ticks that came meanwhile all at once, with one time: twelve
    zero intervals are half a window of them, which once made the median 0 a "tempo jump" (and tempo_bpm a
    division by zero). A tempo is never made of intervals of no length."""
    times = clock_times([100.0] * (24 * 4))
    stall = times[48:72]
    times[48:72] = [stall[-1]] * len(stall)
    f = ClockFollower()
    f.feed([START], T0 - MS)
    for t in times:
        f.feed([CLOCK], t)
        bpm = f.tempo_bpm
        assert bpm is None or 0 < bpm < 1000, bpm
        assert f.step_ns > 0
    assert f.tempo_bpm == pytest.approx(100.0, rel=0.02)


def test_steps_per_beat_sets_the_ticks_per_step() -> None:
    f = ClockFollower(steps_per_beat=2)
    assert f.ticks_per_step == 12
    f.feed([START], T0 - MS)
    got = steps(feed_ticks(f, clock_times([120.0] * 48)))
    assert [e.step for e in got] == [0, 1, 2, 3]
    f.feed([STOP], T0 * 2)
    f.feed(spp(5), T0 * 2)  # five sixteenths = 30 ticks: the next 8th-note step is 3
    assert f.ticks == 30 and f.position == 3
    with pytest.raises(ValueError, match="steps_per_beat must divide 24"):
        ClockFollower(steps_per_beat=5)


def test_predict_ns_extrapolates_from_the_last_tick() -> None:
    f = ClockFollower()
    f.feed([START], T0 - MS)
    assert f.predict_ns(4) is None  # no tick yet
    times = clock_times([125.0] * 50)  # tick = 20 ms
    feed_ticks(f, times[:49])
    assert f.predict_ns(9) == pytest.approx(times[48] + 6 * 20 * MS, abs=2)
    assert f.predict_ns(12) == pytest.approx(T0 + 72 * 20 * MS, abs=2)
    f.feed([STOP], times[48] + MS)
    assert f.predict_ns(12) is None


def test_predict_ns_under_jitter_is_within_the_jitter() -> None:
    rng = random.Random(3)
    times = clock_times([100.0] * (24 * 4 + 13), rng, 2 * MS)
    f = ClockFollower()
    f.feed([START], T0 - MS)
    feed_ticks(f, times[:-13])
    predicted = f.predict_ns(18)  # tick 108: twelve ticks after the last one fed
    assert predicted is not None
    assert abs(predicted - times[108]) < 5 * MS


def test_malformed_and_other_messages_are_dropped_or_ignored() -> None:
    f = ClockFollower()
    assert f.feed([], T0) == []
    assert f.feed([SONG_POSITION, 5], T0) == []
    assert f.feed([SONG_POSITION, 0x80, 0], T0) == []
    assert f.dropped == 3
    assert f.position == 0
    assert f.feed([0xFE], T0) == []  # active sensing
    assert f.dropped == 3
    f.feed([START], T0)
    assert f.feed([CONTINUE], T0) == []  # already running
    f.reset()
    assert not f.running and f.tempo_bpm is None and f.position == 0


def test_clock_out_messages() -> None:
    assert start_messages(0) == [[START]]
    assert start_messages(37) == [[SONG_POSITION, 37, 0], [CONTINUE]]
    assert spp(128) == [SONG_POSITION, 0, 1]
    assert spp(16383) == [SONG_POSITION, 0x7F, 0x7F]
    assert stop_message() == [STOP]
    assert ticks_for_step(1000, 150e6) == [1000 + 25_000_000 * k for k in range(6)]
    assert ticks_for_step(0, 100.0) == [0, 17, 33, 50, 67, 83]


def test_clock_out_values_are_validated() -> None:
    with pytest.raises(ValueError, match=r"song position must be in range 0\.\.16383, got 16384"):
        spp(16384)
    with pytest.raises(ValueError, match=r"song position must be in range 0\.\.16383, got -1"):
        start_messages(-1)
    with pytest.raises(TypeError, match="song position must be an int, got float"):
        spp(1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="step_ns must be > 0"):
        ticks_for_step(0, 0.0)


def test_every_song_position_round_trips_through_the_follower() -> None:
    f = ClockFollower()
    for pos in range(16384):
        assert f.feed(spp(pos), T0) == [ClockEvent("locate", pos, T0)]
        assert f.ticks == 6 * pos


@pytest.mark.parametrize("position", [0, 1, 100, 16383 - 20])
def test_sender_output_drives_a_follower(position: int) -> None:
    step_ns = 60e9 / (128.0 * 4)
    start = 5 * T0
    f = ClockFollower()
    events: list[ClockEvent] = []
    for msg in start_messages(position):
        events += f.feed(msg, start - MS)
    assert [e.kind for e in events] == (["start"] if position == 0 else ["locate", "continue"])
    assert events[-1].step == position
    starts = [start + round(k * step_ns) for k in range(16)]
    for s in starts:
        events += feed_ticks(f, ticks_for_step(s, step_ns))
    got = steps(events)
    assert [e.step for e in got] == list(range(position, position + 16))
    assert [e.t_ns for e in got] == starts
    assert f.tempo_bpm == pytest.approx(128.0, rel=1e-4)
    assert f.predict_ns(position + 16) == pytest.approx(start + round(16 * step_ns), abs=2)
    assert f.feed(stop_message(), starts[-1] + round(step_ns)) == [
        ClockEvent("stop", position + 16, starts[-1] + round(step_ns))
    ]

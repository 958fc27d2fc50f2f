"""Scheduler, note-off book and the real-time loop, with a fake clock and a recording sink."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from rtgen.arrange.voicing import NoteEvent
from rtgen.config import PartsConfig
from rtgen.io.scheduler import Scheduler
from rtgen.io.sinks import BaseSink
from rtgen.live.commands import Play, SetPart, SetTempo, Stop
from rtgen.live.loop import LiveLoop
from rtgen.timing.clock import FakeTime, StepClock


class RecordingSink(BaseSink):
    """Keeps every (time, message) it is sent."""

    def __init__(self, hook: object = None) -> None:
        super().__init__("recording")
        self.events: list[tuple[int, tuple[int, ...]]] = []
        self.panics = 0
        self.hook = hook

    def _send(self, message: Sequence[int], time_ns: int) -> None:
        self.events.append((time_ns, tuple(message)))
        if callable(self.hook):
            self.hook(time_ns, tuple(message))

    def _panic(self) -> None:
        self.panics += 1


def sounding(events: list[tuple[int, tuple[int, ...]]]) -> set[tuple[int, int]]:
    """Notes still sounding after ``events``: real note-offs only (CC123/CC120 release nothing)."""
    on: dict[tuple[int, int], int] = {}
    for _, m in events:
        kind, key = m[0] & 0xF0, (m[0] & 0x0F, m[1])
        if kind == 0x90 and m[2] > 0:
            on[key] = on.get(key, 0) + 1
        elif (kind == 0x80 or (kind == 0x90 and m[2] == 0)) and on.get(key, 0) > 0:
            on[key] -= 1
    return {k for k, v in on.items() if v > 0}


def ev(step_offset: float, on: bool, pitch: int, ms: float = 0.0, channel: int = 0) -> NoteEvent:
    return NoteEvent(
        step_offset=step_offset,
        ms_offset=ms,
        on=on,
        part="melody",
        channel=channel,
        pitch=pitch,
        velocity=90 if on else 0,
    )


def test_events_go_out_in_time_order_at_their_exact_times() -> None:
    ft = FakeTime()
    sink = RecordingSink()
    s = Scheduler([sink], now_ns=ft.now_ns)
    s.add_notes([ev(0, True, 60), ev(0.5, True, 64, ms=2.0), ev(1.0, False, 60)], step_start_ns=1000, step_ns=100e6)
    s.add(1000, (0xC0, 5))
    while s.next_time() is not None:
        ft.wait_until(s.next_time())
        s.send_due()
    assert sink.events == [
        (1000, (0x90, 60, 90)),
        (1000, (0xC0, 5)),
        (1000 + 52_000_000, (0x90, 64, 90)),
        (1000 + 100_000_000, (0x80, 60, 0)),
    ]
    assert s.errors.max_late_ns == 0
    assert s.book.notes() == [(0, 64)]


def test_a_note_off_never_overtakes_its_note_on() -> None:
    ft = FakeTime()
    sink = RecordingSink()
    s = Scheduler([sink], now_ns=ft.now_ns)
    s.add_notes([ev(0, True, 60, ms=20.0)], 0, 100e6)
    s.add_notes([ev(0, False, 60, ms=-30.0)], 0, 100e6)  # humanize would put the off 50 ms before the on
    ft.wait_until(10**9)
    s.send_due()
    assert [m for _, m in sink.events] == [(0x90, 60, 90), (0x80, 60, 0)]
    assert s.book.count() == 0


def test_redundant_note_offs_are_dropped() -> None:
    sink = RecordingSink()
    s = Scheduler([sink])
    s.send_now((0x80, 60, 0))
    assert sink.events == []
    assert s.dropped_offs == 1


def test_stop_releases_every_sounding_note_then_all_notes_off() -> None:
    ft = FakeTime()
    sink = RecordingSink()
    s = Scheduler([sink], now_ns=ft.now_ns)
    s.add_notes([ev(0, True, 60), ev(0, True, 67, channel=2), ev(4, False, 60)], 0, 100e6)
    s.add_notes([ev(1, True, 72)], 0, 100e6)  # pending: must never sound
    s.send_due(0)
    s.stop()
    msgs = [m for _, m in sink.events]
    assert (0x90, 72, 90) not in msgs
    assert msgs[2:] == [(0x80, 60, 0), (0x82, 67, 0), (0xB0, 123, 0), (0xB2, 123, 0)]
    assert s.pending() == 0
    assert sounding(sink.events) == set()


def test_the_stuck_note_check_counts_real_note_offs_only() -> None:
    struck_twice = [(0, (0x90, 60, 100)), (0, (0x90, 60, 100)), (1, (0x80, 60, 0))]
    all_off = [(2, (0xB0, 123, 0)), (2, (0xB0, 120, 0))]
    assert sounding(struck_twice + all_off) == {(0, 60)}  # CC123/CC120 release nothing
    assert sounding([*struck_twice, (3, (0x90, 60, 0)), *all_off]) == set()


def test_stop_sends_a_note_off_for_each_strike_of_a_doubled_note() -> None:
    sink = RecordingSink()
    s = Scheduler([sink])
    s.send_now((0x90, 60, 100), "melody")
    s.send_now((0x90, 60, 90), "chords")  # the same key from two parts on one channel
    assert s.book.get(0, 60) == 2 and s.book.count() == 1
    assert s.stop() == 1
    assert [m for _, m in sink.events][2:] == [(0x80, 60, 0), (0x80, 60, 0), (0xB0, 123, 0)]
    assert sounding(sink.events) == set() and s.book.count() == 0


def test_release_of_some_channels_keeps_the_others() -> None:
    sink = RecordingSink()
    s = Scheduler([sink])
    s.send_now((0x90, 60, 100))
    s.send_now((0x91, 62, 100))
    s.add(10**18, (0x81, 62, 0))
    s.add(10**18, (0x80, 60, 0))
    assert s.release_all(channels=[1]) == 1
    assert s.pending() == 1
    assert s.book.notes() == [(0, 60)]


def test_panic_calls_every_sink() -> None:
    a, b = RecordingSink(), RecordingSink()
    s = Scheduler([a, b])
    s.send_now((0x90, 60, 100))
    s.panic()
    assert a.panics == b.panics == 1
    assert a.events[-1] == (a.events[-1][0], (0x80, 60, 0))


def test_a_failing_sink_does_not_stop_the_others() -> None:
    class Broken(RecordingSink):
        def send(self, message: Sequence[int], time_ns: int) -> None:
            raise OSError("port gone")

    good = RecordingSink()
    s = Scheduler([Broken(), good])
    s.send_now((0x90, 60, 100))
    assert s.sink_errors == 1
    assert good.events[0][1] == (0x90, 60, 100)


@pytest.fixture(scope="module")
def random_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model_factory import make_random_model

    return make_random_model(tmp_path_factory.mktemp("model") / "random")


def make_loop(model_dir: Path, tempo: float, sink: RecordingSink, ft: FakeTime, seed: int = 3) -> LiveLoop:
    from rtgen.arrange.voicing import Voicer
    from rtgen.generation.engine import Engine, Params
    from rtgen.generation.model import Model

    params = Params()
    sched = Scheduler([sink], now_ns=ft.now_ns)
    clock = StepClock(tempo, time_source=ft)
    return LiveLoop(
        Engine(Model.load(model_dir), params, seed=seed),
        Voicer(PartsConfig(), seed=seed),
        sched,
        clock,
        params,
        PartsConfig(),
    )


def test_loop_plays_three_parts_on_the_grid_and_leaves_nothing_sounding(random_model: Path) -> None:
    ft = FakeTime()
    sink = RecordingSink()
    loop = make_loop(random_model, 240.0, sink, ft)
    loop.run(4.0, start_ns=0)
    step = 62_500_000
    ons = [(t, m) for t, m in sink.events if m[0] & 0xF0 == 0x90 and m[2] > 0]
    assert {m[0] & 0x0F for _, m in ons} == {0, 1, 2, 9}  # drums on channel 10
    assert all(t % step == 0 for t, _ in ons)  # no swing, no humanize: exactly on the grid
    assert loop.clock.stats.steps == 64
    assert sounding(sink.events) == set()
    assert loop.scheduler.errors.max_late_ns == 0


def test_loop_is_deterministic_for_a_seed(random_model: Path) -> None:
    runs = []
    for _ in range(2):
        ft = FakeTime()
        sink = RecordingSink()
        make_loop(random_model, 300.0, sink, ft, seed=11).run(2.0, start_ns=0)
        runs.append(sink.events)
    assert runs[0] == runs[1]


def test_seed_command_reseeds_every_part_the_drums_too(random_model: Path) -> None:
    from rtgen.live.commands import SetSeed

    runs = []
    for seed, command in ((11, None), (3, SetSeed(11)), (3, None)):
        ft = FakeTime()
        sink = RecordingSink()
        loop = make_loop(random_model, 300.0, sink, ft, seed=seed)
        if command is not None:
            loop.command(command)
        loop.run(2.0, start_ns=0)
        runs.append([(t, m) for t, m in sink.events if m[0] & 0xF0 == 0x90 and m[2] > 0])
    # the command comes in after the first step went out: from the second step on (50 ms) it is seed 11's
    drums = [[(t, m) for t, m in run if m[0] & 0x0F == 9 and t >= 50_000_000] for run in runs]
    assert drums[0] and drums[1] == drums[0] != drums[2]


def test_tempo_command_changes_the_grid_from_the_next_step(random_model: Path) -> None:
    ft = FakeTime()
    sink = RecordingSink()
    loop = make_loop(random_model, 120.0, sink, ft)
    sent = []

    def hook(t: int, m: tuple[int, ...]) -> None:
        if t >= 1_000_000_000 and not sent:
            sent.append(t)
            loop.command(SetTempo(240.0))

    sink.hook = hook
    loop.run(3.0, start_ns=0)
    # at 120 BPM steps are 125 ms; the command arrives during step 8 (t = 1 s) and applies from step 9
    assert loop.clock.deadline(9) == 9 * 125_000_000
    assert loop.clock.deadline(10) == 9 * 125_000_000 + 62_500_000
    ons = sorted({t for t, m in sink.events if m[0] & 0xF0 == 0x90 and m[2] > 0})
    assert all(t % 125_000_000 == 0 for t in ons if t <= 9 * 125_000_000)
    assert all((t - 9 * 125_000_000) % 62_500_000 == 0 for t in ons if t >= 9 * 125_000_000)
    assert sounding(sink.events) == set()


def test_stop_play_and_instrument_commands(random_model: Path) -> None:
    done: list[str] = []

    class ScriptedTime(FakeTime):
        def wait_until(self, deadline_ns: int, *, max_sleep_ns: int | None = None) -> int:
            t = super().wait_until(deadline_ns, max_sleep_ns=max_sleep_ns)
            if t >= 500_000_000 and "stop" not in done:
                done.append("stop")
                loop.command(Stop())
                loop.command(SetPart("chords", program=40))
            elif t >= 1_500_000_000 and "play" not in done:
                done.append("play")
                loop.command(Play())
            return t

    ft = ScriptedTime()
    sink = RecordingSink()
    loop = make_loop(random_model, 240.0, sink, ft)
    loop.run(3.0, start_ns=0)
    msgs = [m for _, m in sink.events]
    assert (0xC1, 40) in msgs  # chords are on channel 2 (0-based 1)
    i_stop = msgs.index((0xC1, 40))
    assert sounding(sink.events[:i_stop]) == set()  # stop released everything before the program change
    later_ons = [t for t, m in sink.events[i_stop:] if m[0] & 0xF0 == 0x90 and m[2] > 0]
    assert later_ons and min(later_ons) >= 1_500_000_000  # silent while stopped, playing again after play
    assert sounding(sink.events) == set()


def test_after_a_stall_late_note_ons_are_dropped_with_their_own_note_offs() -> None:
    ft = FakeTime()
    sink = RecordingSink()
    s = Scheduler([sink], now_ns=ft.now_ns, drop_late_ns=20_000_000)
    s.add_notes([ev(0, True, 60), ev(2, False, 60)], 0, 100e6)  # on time: sounds, released at 200 ms
    s.send_due(0)
    s.add_notes(
        [ev(1, True, 64), ev(3, False, 64), ev(1, True, 60, channel=1), ev(1.5, False, 60, channel=1)], 0, 100e6
    )
    ft.advance(150_000_000)  # a 150 ms stall: the notes due at 100 ms are 50 ms late
    s.send_due()
    ft.wait_until(10**9)
    s.send_due()
    msgs = [m for _, m in sink.events]
    assert msgs == [(0x90, 60, 90), (0x80, 60, 0)]  # the late ones never sounded, and no stray note-off went out
    assert s.dropped_late == 2 and s.dropped_offs == 0
    assert s.book.count() == 0 and sounding(sink.events) == set()


def test_a_dropped_note_does_not_cut_the_same_key_already_sounding() -> None:
    ft = FakeTime()
    sink = RecordingSink()
    s = Scheduler([sink], now_ns=ft.now_ns, drop_late_ns=20_000_000)
    s.add_notes([ev(0, True, 60), ev(9, False, 60)], 0, 100e6)
    s.send_due(0)
    s.add_notes([ev(3, True, 60), ev(5, False, 60)], 0, 100e6)  # the same key again, dropped after a stall
    ft.advance(400_000_000)
    s.send_due()
    assert s.book.get(0, 60) == 1  # still held: the dropped note's own note-off (at 500 ms) is swallowed
    ft.wait_until(600_000_000)
    s.send_due()
    assert s.book.get(0, 60) == 1
    ft.wait_until(10**9)
    s.send_due()
    assert [m for _, m in sink.events] == [(0x90, 60, 90), (0x80, 60, 0)] and s.book.count() == 0


def test_a_long_stall_resumes_on_the_grid_without_a_burst(random_model: Path) -> None:
    """A 3 s freeze at 240 BPM: the loop jumps to the step due now (bar lines kept), nothing is left sounding."""

    class StallOnce(FakeTime):
        stalled = False

        def wait_until(self, deadline_ns: int, *, max_sleep_ns: int | None = None) -> int:
            t = super().wait_until(deadline_ns, max_sleep_ns=max_sleep_ns)
            if t >= 1_000_000_000 and not self.stalled:
                self.stalled = True
                self.advance(3_030_000_000)
            return self.t

    ft = StallOnce()
    sink = RecordingSink()
    loop = make_loop(random_model, 240.0, sink, ft)
    loop.scheduler.drop_late_ns = 20_000_000
    loop.run(6.0, start_ns=0)
    step = 62_500_000
    ons = sorted(t for t, m in sink.events if m[0] & 0xF0 == 0x90 and m[2] > 0)
    assert loop.skipped_steps == 48  # 3.03 s at 62.5 ms per step
    assert not [t for t in ons if 1_000_000_000 < t < 4_000_000_000]  # nothing played in the freeze
    late = [t for t in ons if t > 4_000_000_000]
    assert late and all(t % step == 0 for t in late)  # back on the original grid
    assert loop.clock.stats.steps == 96 - 48
    assert loop.next_k == 96  # every step of the 6 s counted: the bar lines did not move
    assert loop.transport.next_step == 96 + (loop.pending is not None)  # (the next one decided ahead)
    assert sounding(sink.events) == set()


def test_a_controller_sweep_from_the_loop_is_applied_off_it_and_coalesced(random_model: Path) -> None:
    """CC74 sweeps arrive on the real-time thread: the params (and their masks) are made on a helper thread."""
    import time

    loop = make_loop(random_model, 120.0, RecordingSink(), FakeTime())
    for i in range(100):
        loop._control("density", 0.2 + i / 100)
    deadline = time.monotonic() + 10
    while loop.params.density != pytest.approx(1.19) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert loop.params.density == pytest.approx(1.19)
    from rtgen.generation.engine import _mask_key

    assert _mask_key(loop.params) in loop.engine._mask_cache  # built before it was published


def test_the_input_is_polled_fast_while_it_matters_and_slowly_while_nobody_plays(random_model: Path) -> None:
    from rtgen.live.commands import SetMode
    from rtgen.live.listening import AUTONOMOUS_POLL_NS, IDLE_POLL_NS, PLAYER_ACTIVE_NS, POLL_NS

    loop = make_loop(random_model, 120.0, RecordingSink(), FakeTime())
    assert loop._poll_interval(0) == 0  # no input at all: nothing to poll
    loop.poll_ns = POLL_NS
    t = 10 * PLAYER_ACTIVE_NS
    assert loop._poll_interval(t) == IDLE_POLL_NS  # autonomous, nobody playing
    loop._input(t, (0xB0, 1, 64))  # a knob turns
    assert POLL_NS < loop._poll_interval(t + 1) == AUTONOMOUS_POLL_NS < IDLE_POLL_NS  # nothing answers at once
    assert loop._poll_interval(t + PLAYER_ACTIVE_NS + 1) == IDLE_POLL_NS
    loop._input(t, (0xFE,))  # active sensing is not a player
    assert loop._poll_interval(t + PLAYER_ACTIVE_NS + 1) == IDLE_POLL_NS
    loop._apply(SetMode("accompany"))
    assert loop._poll_interval(t + PLAYER_ACTIVE_NS + 1) == POLL_NS  # listening modes always poll fast
    loop._apply(SetMode("autonomous"))
    loop.thru = True
    assert loop._poll_interval(t + 1) == POLL_NS  # the player's notes pass through: as soon as they come

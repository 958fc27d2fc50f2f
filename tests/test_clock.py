"""The step clock: absolute deadlines, tempo changes at step boundaries, lateness counting."""

from __future__ import annotations

import time

import pytest

from rtgen.timing.clock import HISTOGRAM_EDGES_NS, FakeTime, LatenessHistogram, RealTime, StepClock


def test_deadlines_are_exact_sums_from_t0() -> None:
    clock = StepClock(110.0, time_source=FakeTime())
    t0 = clock.start(1_000)
    step = 60e9 / (110.0 * 4)
    for k in (0, 1, 7, 1000, 1_000_000):
        assert clock.deadline(k) == t0 + round(k * step)


def test_no_drift_over_ten_minutes_of_steps() -> None:
    ft = FakeTime()
    clock = StepClock(120.0, time_source=ft)
    clock.start(0)
    steps = 10 * 60 * 8  # 10 minutes of sixteenths at 120 BPM
    for k in range(steps + 1):
        clock.wait_step(k)
    assert ft.now_ns() == 600_000_000_000  # exactly 10 minutes: nothing accumulated
    assert clock.stats.steps == steps + 1
    assert clock.stats.late_steps == 0


def test_tempo_change_takes_effect_at_the_step_boundary_without_a_jump() -> None:
    clock = StepClock(120.0, time_source=FakeTime())
    clock.start(0)
    assert clock.deadline(4) == 500_000_000
    clock.set_tempo(240.0, at_step=4)
    assert clock.deadline(4) == 500_000_000  # the boundary itself does not move
    assert clock.deadline(5) == 500_000_000 + 62_500_000
    assert clock.deadline(12) == 500_000_000 + 8 * 62_500_000
    clock.set_tempo(60.0, at_step=8)
    assert clock.deadline(8) == 750_000_000
    assert clock.deadline(9) == 750_000_000 + 250_000_000


def test_tempo_change_in_the_past_is_refused() -> None:
    clock = StepClock(120.0, time_source=FakeTime())
    clock.start(0)
    clock.set_tempo(100.0, at_step=10)
    with pytest.raises(ValueError, match="past"):
        clock.set_tempo(90.0, at_step=9)
    with pytest.raises(ValueError, match="positive"):
        clock.set_tempo(0.0, at_step=12)


def test_lateness_is_counted() -> None:
    ft = FakeTime()
    clock = StepClock(120.0, time_source=ft, late_threshold_ns=1_000_000)
    clock.start(0)
    assert clock.wait_step(0) == 0
    ft.advance(clock.deadline(1) + 3_000_000)  # a slow step: we are 3 ms past step 1's deadline
    assert clock.wait_step(1) == 3_000_000
    assert clock.wait_step(2) == 0
    stats = clock.stats.as_dict()
    assert stats["late_steps"] == 1
    assert stats["max_late_us"] == 3000.0
    assert stats["steps"] == 3


def test_the_lateness_histogram_gives_upper_bounds_over_any_window() -> None:
    h = LatenessHistogram()
    assert LatenessHistogram.percentiles_us(h.counts) == {"p50": 0.0, "p99": 0.0, "count": 0}
    for late_ns in [-5_000] * 10 + [40_000] * 89 + [310_000]:  # early ones fall in the first bucket
        h.add(late_ns)
    before = list(h.counts)
    assert LatenessHistogram.percentiles_us(before) == {"p50": 50.0, "p99": 50.0, "count": 100}
    for _ in range(98):
        h.add(300_000)  # on an edge: its own bucket
    h.add(2_500_000)
    h.add(5_000_000_000)  # past the last edge
    window = [a - b for a, b in zip(h.counts, before, strict=True)]
    assert LatenessHistogram.percentiles_us(window) == {"p50": 300.0, "p99": 4000.0, "count": 100}
    assert LatenessHistogram.percentiles_us(window, (100.0,))["p100"] == float("inf")
    assert 300_000 in HISTOGRAM_EDGES_NS and 1_000_000 in HISTOGRAM_EDGES_NS


def test_real_wait_never_wakes_before_the_deadline() -> None:
    rt = RealTime(spin_ns=500_000)
    for _ in range(20):
        deadline = time.perf_counter_ns() + 2_000_000
        woke = rt.wait_until(deadline)
        assert woke >= deadline


def test_realtime_priority_is_per_thread_and_released() -> None:
    import os
    import threading

    from rtgen.timing.clock import release_realtime, request_realtime

    seen: dict[str, object] = {}

    def worker() -> None:
        seen["off"] = request_realtime(0)
        seen["policy_off"] = os.sched_getscheduler(0)
        seen["granted"] = request_realtime(5)
        seen["policy_on"] = os.sched_getscheduler(0)
        release_realtime()
        seen["policy_after"] = os.sched_getscheduler(0)

    from conftest import require

    require(os.geteuid() == 0, "root (real-time scheduling; CI runs as root)")
    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen["off"] is False and seen["policy_off"] == os.SCHED_OTHER
    assert seen["granted"] is True and seen["policy_on"] == os.SCHED_FIFO
    assert seen["policy_after"] == os.SCHED_OTHER
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the test's own thread was never touched


def test_the_spin_tuner_learns_the_wakeup_latency_and_backs_off_at_once() -> None:
    from rtgen.timing.clock import SpinTuner

    tuner = SpinTuner(low_ns=200_000, high_ns=1_000_000, window=100)
    assert tuner.spin_ns == 1_000_000  # starts safe
    for i in range(100):
        tuner.observe(50_000 + i * 500)  # a quiet machine: wake-ups at most ~100 us late
    assert tuner.spin_ns == 2 * 99_500 + 100_000
    for _ in range(100):
        tuner.observe(10_000)
    assert tuner.spin_ns == 200_000  # never below the floor
    tuner.observe(-5_000)  # woken early by a command: says nothing about latency
    assert tuner.spin_ns == 200_000
    tuner.observe(250_000)  # one wake-up later than the spin: back to the safe value at once
    assert tuner.spin_ns == 1_000_000 and tuner.worst_ns == 250_000


def test_helper_threads_are_promoted_below_the_loop() -> None:
    """GIL holders run SCHED_FIFO 1, so no normal process preempts them while the loop waits for the GIL."""
    import os
    import threading

    from conftest import require

    from rtgen.timing.clock import promote_threads

    require(os.geteuid() == 0, "root (real-time scheduling; CI runs as root)")
    stop = threading.Event()
    helper = threading.Thread(target=stop.wait, daemon=True)
    helper.start()
    try:
        assert promote_threads(1) >= 1
        assert helper.native_id is not None
        assert os.sched_getscheduler(helper.native_id) == os.SCHED_FIFO
        assert os.sched_getparam(helper.native_id).sched_priority == 1
        assert os.sched_getscheduler(0) != os.SCHED_FIFO  # the calling thread is left alone
    finally:
        stop.set()
        helper.join()
        for t in threading.enumerate():  # the rest of the session runs as before
            if t.native_id is not None:
                os.sched_setscheduler(t.native_id, os.SCHED_OTHER, os.sched_param(0))

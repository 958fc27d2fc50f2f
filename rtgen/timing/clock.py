"""A drift-free step clock on ``time.perf_counter_ns()``.

Deadlines are absolute: step ``k`` starts at ``anchor_ns + (k - anchor_step) * step_ns``
where the anchor moves only when the tempo changes (to the step boundary where the
new tempo takes effect). Nothing is ever accumulated from sleeps, so the schedule
cannot drift against the wall clock. Waiting sleeps until shortly before the
deadline (``spin_ns``) and spins the rest, because ``time.sleep`` overshoots by
up to a millisecond or more on a loaded machine.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import threading
import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final

from rtgen.contract import STEPS_PER_BEAT

log = logging.getLogger(__name__)

NS_PER_S = 1_000_000_000


class RealTime:
    """``time.perf_counter_ns`` with sleep-then-spin waiting.

    Args:
        spin_ns: how long before a deadline to stop sleeping and start spinning.
    """

    simulated = False

    def __init__(self, spin_ns: int = 1_000_000) -> None:
        self.spin_ns = spin_ns

    def now_ns(self) -> int:
        """Current ``perf_counter_ns``."""
        return time.perf_counter_ns()

    def wait_until(self, deadline_ns: int, *, max_sleep_ns: int | None = None) -> int:
        """Sleep, then spin until ``deadline_ns`` (or at most ``max_sleep_ns`` from now).

        Returns:
            ``perf_counter_ns`` at wake-up.
        """
        now = time.perf_counter_ns()
        if max_sleep_ns is not None:
            deadline_ns = min(deadline_ns, now + max_sleep_ns)
        remaining = deadline_ns - now - self.spin_ns
        if remaining > 0:
            time.sleep(remaining / NS_PER_S)
        now = time.perf_counter_ns()
        while now < deadline_ns:
            now = time.perf_counter_ns()
        return now


class FakeTime:
    """A clock for tests: ``wait_until`` jumps straight to the deadline.

    Args:
        start_ns: the initial time.
    """

    simulated = True  # waiting costs nothing: the loop jumps from deadline to deadline
    spin_ns = 0

    def __init__(self, start_ns: int = 0) -> None:
        self.t = start_ns
        self.waits: list[int] = []

    def now_ns(self) -> int:
        """The fake current time."""
        return self.t

    def wait_until(self, deadline_ns: int, *, max_sleep_ns: int | None = None) -> int:
        """Advance to ``deadline_ns`` (never backwards) and return the new time."""
        if max_sleep_ns is not None:
            deadline_ns = min(deadline_ns, self.t + max_sleep_ns)
        self.waits.append(deadline_ns)
        self.t = max(self.t, deadline_ns)
        return self.t

    def advance(self, ns: int) -> None:
        """Move time forward by ``ns`` (e.g. to simulate a slow step)."""
        self.t += ns


class SpinTuner:
    """How long before a deadline to stop sleeping and spin, learnt from how late this machine wakes up.

    A sleep ends late by the scheduler's wake-up latency (tens of microseconds on a quiet machine
    with real-time priority, milliseconds on a loaded VM); spinning for longer than that only burns
    CPU. The tuner keeps ``spin_ns`` at twice the latest window's worst overshoot plus a margin,
    within ``[low_ns, high_ns]``, and jumps back to ``high_ns`` at the first wake-up that overshoots it.

    Args:
        low_ns: the shortest spin.
        high_ns: the longest spin (and the start).
        window: wake-ups per re-estimate.
    """

    def __init__(self, low_ns: int = 200_000, high_ns: int = 1_000_000, window: int = 256) -> None:
        self.low_ns = low_ns
        self.high_ns = high_ns
        self.window = window
        self.spin_ns = high_ns
        self.worst_ns = 0  # worst overshoot seen in all
        self._window_max = 0
        self._count = 0

    def observe(self, overshoot_ns: int) -> None:
        """One sleep ended ``overshoot_ns`` after the time asked (negative: woken early; ignored)."""
        if overshoot_ns < 0:
            return
        if overshoot_ns > self.worst_ns:
            self.worst_ns = overshoot_ns
        if overshoot_ns >= self.spin_ns:
            self.spin_ns = self.high_ns
            self._window_max = self._count = 0
            return
        if overshoot_ns > self._window_max:
            self._window_max = overshoot_ns
        self._count += 1
        if self._count >= self.window:
            wanted = 2 * self._window_max + 100_000
            self.spin_ns = max(self.low_ns, min(self.high_ns, wanted))
            self._window_max = self._count = 0


def _histogram_edges_ns() -> tuple[int, ...]:
    fine = range(25_000, 2_000_001, 25_000)  # 25 µs buckets to 2 ms: the targets (300 µs, 1 ms) are edges
    coarse = (4_000_000 << k for k in range(9))  # then doubling to 1.024 s
    return (0, *fine, *coarse)


HISTOGRAM_EDGES_NS: Final = _histogram_edges_ns()
"""Upper edges of :class:`LatenessHistogram`'s buckets (ns); bucket 0 holds every time at or before 0, the last
bucket everything above the last edge."""


class LatenessHistogram:
    """Counts of lateness in fixed buckets (:data:`HISTOGRAM_EDGES_NS`): percentiles over any window.

    Adding is one bisect on a fixed tuple, no allocation (the real-time thread adds); the counts since
    start are cumulative, so two snapshots of :attr:`counts` give the percentiles of the time between them.
    """

    def __init__(self) -> None:
        self.counts = [0] * (len(HISTOGRAM_EDGES_NS) + 1)

    def add(self, late_ns: int) -> None:
        """Count one time ``late_ns`` after its deadline."""
        self.counts[bisect_left(HISTOGRAM_EDGES_NS, late_ns)] += 1

    @staticmethod
    def percentiles_us(counts: Sequence[int], qs: Sequence[float] = (50.0, 99.0)) -> dict[str, float]:
        """The percentiles ``qs`` of ``counts`` (a snapshot, or the difference of two) as their buckets' upper
        edges in µs (an upper bound: a p99 of 300 means 99 % were at most 300 µs late), with ``count``.
        Past the last edge the figure is ``inf``."""
        total = sum(counts)
        out: dict[str, float] = {}
        for q in qs:
            need = q / 100 * total
            running = 0
            edge = math.inf
            for i, c in enumerate(counts):
                running += c
                if c and running >= need:
                    edge = HISTOGRAM_EDGES_NS[i] / 1000 if i < len(HISTOGRAM_EDGES_NS) else math.inf
                    break
            out[f"p{q:g}"] = edge if total else 0.0
        out["count"] = total
        return out


@dataclass
class LatenessStats:
    """How late the clock woke up for its step deadlines."""

    late_threshold_ns: int = 1_000_000
    steps: int = 0
    late_steps: int = 0
    max_late_ns: int = 0
    total_late_ns: int = 0
    history: list[int] = field(default_factory=list)
    keep_history: bool = False
    histogram: LatenessHistogram | None = None

    def add(self, late_ns: int) -> None:
        """Record one wake-up ``late_ns`` after its deadline (negative = early)."""
        self.steps += 1
        self.total_late_ns += late_ns
        if late_ns > self.max_late_ns:
            self.max_late_ns = late_ns
        if late_ns > self.late_threshold_ns:
            self.late_steps += 1
        if self.histogram is not None:
            self.histogram.add(late_ns)
        if self.keep_history:
            self.history.append(late_ns)

    def as_dict(self) -> dict[str, float | int]:
        """JSON-ready summary."""
        return {
            "steps": self.steps,
            "late_steps": self.late_steps,
            "late_threshold_us": self.late_threshold_ns / 1000,
            "max_late_us": self.max_late_ns / 1000,
            "mean_late_us": (self.total_late_ns / self.steps / 1000) if self.steps else 0.0,
        }


class StepClock:
    """Absolute step deadlines at a tempo, with tempo changes at step boundaries.

    Args:
        tempo: beats per minute (quarter notes).
        steps_per_beat: grid steps per beat.
        time_source: :class:`RealTime` (default) or :class:`FakeTime`.
        late_threshold_ns: a wake-up later than this counts as a late step.
    """

    def __init__(
        self,
        tempo: float,
        *,
        steps_per_beat: int = STEPS_PER_BEAT,
        time_source: RealTime | FakeTime | None = None,
        late_threshold_ns: int = 1_000_000,
    ) -> None:
        if not tempo > 0:
            raise ValueError(f"tempo must be positive, got {tempo!r}")
        self.source: RealTime | FakeTime = time_source if time_source is not None else RealTime()
        self.steps_per_beat = steps_per_beat
        self._tempo = float(tempo)
        self._anchor_step = 0
        self._anchor_ns = 0
        self._pending_tempo: float | None = None
        self._pending_step = 0
        self.stats = LatenessStats(late_threshold_ns=late_threshold_ns)
        self.started = False

    @property
    def tempo(self) -> float:
        """The tempo in force at the anchor (the latest applied tempo)."""
        return self._tempo

    @property
    def step_ns(self) -> float:
        """Duration of one step at the current tempo, in (fractional) nanoseconds."""
        return 60 * NS_PER_S / (self._tempo * self.steps_per_beat)

    def start(self, t0_ns: int | None = None) -> int:
        """Fix step 0 at ``t0_ns`` (default: now). Returns ``t0_ns``."""
        self._anchor_ns = self.source.now_ns() if t0_ns is None else t0_ns
        self._anchor_step = 0
        self.started = True
        return self._anchor_ns

    def now_ns(self) -> int:
        """Current time of the clock's time source."""
        return self.source.now_ns()

    def deadline(self, step: int) -> int:
        """Absolute start time of ``step`` in ns (from the anchor: no accumulated error)."""
        return self._anchor_ns + round((step - self._anchor_step) * 60 * NS_PER_S / (self._tempo * self.steps_per_beat))

    def set_tempo(self, tempo: float, at_step: int) -> None:
        """Change the tempo from the start of ``at_step`` on (that step's deadline does not move).

        Args:
            tempo: new beats per minute.
            at_step: the first step played at the new tempo; must not be before the anchor.
        """
        if not tempo > 0:
            raise ValueError(f"tempo must be positive, got {tempo!r}")
        if at_step < self._anchor_step:
            raise ValueError(f"cannot change tempo in the past (step {at_step} < {self._anchor_step})")
        self._anchor_ns = self.deadline(at_step)
        self._anchor_step = at_step
        self._tempo = float(tempo)

    def wait_step(self, step: int) -> int:
        """Wait for the start of ``step``; records lateness. Returns how late we woke, in ns."""
        deadline = self.deadline(step)
        woke = self.source.wait_until(deadline)
        late = woke - deadline
        self.stats.add(late)
        return late


def request_realtime(priority: int) -> bool:
    """Ask the OS to run the calling thread with real-time (SCHED_FIFO) priority, as JACK does.

    Args:
        priority: 1..99; 0 leaves the thread as it is.

    Returns:
        True when granted. Without the privilege (no root, no ``rtprio`` limit in
        /etc/security/limits.conf, or not Linux) the thread keeps normal priority and
        the instrument still plays; it is only less protected against a busy machine.
    """
    if priority <= 0 or not hasattr(os, "sched_setscheduler"):
        return False
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(min(priority, 99)))
    except (OSError, ValueError) as err:
        log.info("real-time priority %d not granted (%s); timing may suffer on a busy machine", priority, err)
        return False
    log.info("real-time thread priority SCHED_FIFO %d", priority)
    return True


def promote_threads(priority: int = 1) -> int:
    """Run this process's other Python threads SCHED_FIFO ``priority`` (below the real-time loop's).

    Every Python thread needs the GIL, so one that holds it is on the real-time loop's critical path:
    preempted by some other process while it holds it, it makes the loop wait a whole time slice
    (milliseconds) for the GIL. At the lowest real-time priority such a thread is never preempted by
    normal processes, while the loop (and JACK) still preempt it. Threads started later inherit the
    policy of the thread that starts them. Returns how many threads were promoted.
    """
    if priority <= 0 or not hasattr(os, "sched_setscheduler"):
        return 0
    me = threading.get_native_id()
    n = 0
    for t in threading.enumerate():
        tid = t.native_id
        if tid is None or tid == me:
            continue
        try:
            os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(priority))
        except (OSError, ValueError):
            continue
        n += 1
    return n


SWITCH_INTERVAL_S: Final = 0.0002
"""How long the loop may hold the GIL while another thread (rtmidi's JACK callback, OSC) waits, and how long
another thread may hold it while the loop waits (Python's default is 5 ms: a whole step at 300 BPM is 50)."""


@contextlib.contextmanager
def realtime_loop(priority: int) -> Iterator[bool]:
    """Run the calling thread as the real-time loop while the block runs, as the daemon does.

    The thread asks for SCHED_FIFO ``priority`` (:func:`request_realtime`), every other Python thread runs
    SCHED_FIFO 1 (:func:`promote_threads`), and the GIL switch interval is :data:`SWITCH_INTERVAL_S`. All
    three come back afterwards. Yields whether real-time scheduling was granted.
    """
    realtime = request_realtime(priority)
    if realtime:
        promote_threads(1)  # the OSC and helper threads hold the GIL too: see promote_threads
    switch = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    try:
        yield realtime
    finally:
        sys.setswitchinterval(switch)
        if realtime:
            release_realtime()


def release_realtime() -> None:
    """Return the calling thread to normal (SCHED_OTHER) scheduling."""
    if hasattr(os, "sched_setscheduler"):
        try:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        except (OSError, ValueError) as err:  # pragma: no cover - lowering priority is always allowed
            log.debug("could not leave real-time scheduling: %s", err)

"""Follow a DAW's MIDI clock (24 ppqn) on the step grid, and make the messages to lead one.

Pure: no I/O, no threads, no clock reads. The caller stamps every incoming message with
``time.perf_counter_ns()`` and feeds it to :class:`ClockFollower`, which answers with
:class:`ClockEvent` s; the clock-out helpers turn a step's start time and length into
the ``0xF8`` tick times and transport messages to send.

On the contract grid (``STEPS_PER_BEAT`` = 4) one step is a sixteenth: 6 clock ticks,
and exactly one Song Position Pointer unit ("MIDI beat").

Transport follows the MIDI spec: Start sets the song position to 0 and the first
``0xF8`` after it is tick 0; Continue resumes from the current position (after an SPP,
or where Stop left it) and the next ``0xF8`` is that position's tick; Stop halts. Ticks
arriving while stopped are not counted, but they still feed the tempo estimate.

Tempo is the least-squares slope of tick time against tick index over the last beat of
ticks, updated in O(1) per tick from running sums (exact integer arithmetic, no
per-tick allocation beyond the returned list). An interval further than half an
interval from the median of the recent raw intervals (a dropped, doubled or bunched
tick, or a gap) is replaced by the estimated interval before it enters the fit: the
threshold is symmetric around the median so symmetric jitter is not biased, and
judging against the median of *raw* intervals lets a big tempo jump win once it
holds for half a beat, at which point the window restarts.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Sequence
from typing import Final, Literal, NamedTuple

from rtgen.contract import STEPS_PER_BEAT
from rtgen.midi.messages import CLOCK, CONTINUE, DATA_MASK, SONG_POSITION, START, STOP

PPQN: Final = 24
"""MIDI clock ticks per quarter note."""
TICKS_PER_STEP: Final = PPQN // STEPS_PER_BEAT
TICKS_PER_MIDI_BEAT: Final = 6
"""An SPP unit is a sixteenth note: 6 ticks, whatever the step grid."""
MAX_SONG_POSITION: Final = 0x3FFF

NS_PER_MINUTE: Final = 60_000_000_000

ClockEventKind = Literal["start", "continue", "stop", "locate", "step"]


class ClockEvent(NamedTuple):
    """Something the clock follower saw.

    Attributes:
        kind: ``"start"``, ``"continue"``, ``"stop"``, ``"locate"`` (SPP) or ``"step"``.
        step: for ``"step"`` the index of the step starting now (0-based from the song
            start); for the others the next step to play (the position).
        t_ns: arrival time of the message that caused it.
    """

    kind: ClockEventKind
    step: int
    t_ns: int


class ClockFollower:
    """Turns incoming MIDI clock and transport messages into steps and a tempo estimate.

    Args:
        steps_per_beat: grid steps per quarter note; must divide 24.
        window_ticks: intervals in the tempo fit (24 = one beat).
        default_bpm: tempo :attr:`step_ns` reports before any estimate exists.

    Raises:
        ValueError: on a ``steps_per_beat`` that does not divide 24, a window shorter than
            one step or a non-positive default tempo.
    """

    def __init__(
        self, steps_per_beat: int = STEPS_PER_BEAT, *, window_ticks: int = PPQN, default_bpm: float = 120.0
    ) -> None:
        if steps_per_beat < 1 or PPQN % steps_per_beat:
            raise ValueError(f"steps_per_beat must divide {PPQN} (1, 2, 3, 4, 6, 8, 12, 24), got {steps_per_beat}")
        tps = PPQN // steps_per_beat
        if window_ticks < TICKS_PER_MIDI_BEAT:
            raise ValueError(f"window_ticks must be >= {TICKS_PER_MIDI_BEAT}, got {window_ticks}")
        if not default_bpm > 0:
            raise ValueError(f"default_bpm must be > 0, got {default_bpm}")
        self.steps_per_beat = steps_per_beat
        self.ticks_per_step = tps
        self.default_bpm = default_bpm
        self._window = window_ticks + 1  # samples in the fit
        self._min_samples = TICKS_PER_MIDI_BEAT + 1
        # tempo fit: ring of virtual tick times (outlier intervals replaced), running sums
        self._vt = [0] * self._window
        self._head = 0
        self._n = 0
        self._s0 = 0  # sum of v_j
        self._s1 = 0  # sum of j * v_j, j = 0 oldest
        self._offset = 0  # real time minus virtual time of the newest sample
        self._prev_ns: int | None = None
        # raw intervals: ring plus a sorted copy for the median
        self._iv = [0] * window_ticks
        self._iv_sorted: list[int] = []
        self._iv_head = 0
        self._est: float | None = None  # tick interval from the current window
        self._fallback: float | None = None  # last good estimate, used while the window refills
        # transport
        self._running = False
        self._ticks = 0
        self._last_tick_index = 0
        self._last_tick_ns: int | None = None
        self.dropped = 0
        """Malformed messages ignored."""
        self.outliers = 0
        """Tick intervals replaced in the tempo fit."""

    # --- state ---------------------------------------------------------------
    @property
    def running(self) -> bool:
        """True between Start/Continue and Stop."""
        return self._running

    @property
    def ticks(self) -> int:
        """Song position in clock ticks: the index the next counted ``0xF8`` gets."""
        return self._ticks

    @property
    def position(self) -> int:
        """Index of the next step to start."""
        return -(-self._ticks // self.ticks_per_step)

    @property
    def tick_ns(self) -> float | None:
        """Estimated clock tick interval in ns, or None before enough ticks."""
        return self._est if self._est is not None else self._fallback

    @property
    def tempo_bpm(self) -> float | None:
        """Estimated tempo in quarter notes per minute, or None before enough ticks.

        After Start/Continue/SPP the fit restarts; until it has a step's worth of ticks
        the previous estimate stands.
        """
        tick = self.tick_ns
        return None if tick is None else NS_PER_MINUTE / (tick * PPQN)

    @property
    def step_ns(self) -> float:
        """Estimated step length in ns (from ``default_bpm`` before any estimate)."""
        tick = self.tick_ns
        if tick is None:
            return NS_PER_MINUTE / (self.default_bpm * self.steps_per_beat)
        return tick * self.ticks_per_step

    def predict_ns(self, step: int) -> int | None:
        """Predicted arrival time of the tick that starts ``step``.

        Extrapolates from the last counted tick at the estimated tempo (a past step gives
        a past time).

        Returns:
            The time in ``perf_counter_ns`` units, or None when stopped, before the first
            tick after Start/Continue/SPP, or without a tempo estimate.
        """
        tick = self.tick_ns
        if not self._running or self._last_tick_ns is None or tick is None:
            return None
        return self._last_tick_ns + round((step * self.ticks_per_step - self._last_tick_index) * tick)

    def reset(self) -> None:
        """Forget everything: stopped at position 0, no tempo estimate."""
        self._reset_fit()
        self._fallback = None
        self._running = False
        self._ticks = 0
        self._last_tick_ns = None

    # --- input ---------------------------------------------------------------
    def feed(self, message: Sequence[int], t_ns: int) -> list[ClockEvent]:
        """Take one system-realtime or transport message.

        Args:
            message: the message bytes (``0xF8``, ``0xFA``, ``0xFB``, ``0xFC`` or
                ``0xF2 lsb msb``); anything else is ignored, malformed ones are counted in
                :attr:`dropped`.
            t_ns: its arrival time (``time.perf_counter_ns()``).

        Returns:
            The events it caused, in order (often none).
        """
        if not message:
            self.dropped += 1
            return []
        status = message[0]
        if status == CLOCK:
            self._observe_tick(t_ns)
            if not self._running:
                return []
            i = self._ticks
            self._ticks = i + 1
            self._last_tick_index = i
            self._last_tick_ns = t_ns
            if i % self.ticks_per_step:
                return []
            return [ClockEvent("step", i // self.ticks_per_step, t_ns)]
        if status == START:
            self._transport(0)
            self._running = True
            return [ClockEvent("start", 0, t_ns)]
        if status == CONTINUE:
            if self._running:
                return []
            self._transport(self._ticks)
            self._running = True
            return [ClockEvent("continue", self.position, t_ns)]
        if status == STOP:
            if not self._running:
                return []
            self._running = False
            return [ClockEvent("stop", self.position, t_ns)]
        if status == SONG_POSITION:
            if len(message) < 3 or not 0 <= message[1] <= DATA_MASK or not 0 <= message[2] <= DATA_MASK:
                self.dropped += 1
                return []
            # The spec wants SPP only while stopped; a DAW that sends it while running
            # (loop jumps) still means "the next tick is this position's".
            self._transport((message[1] | message[2] << 7) * TICKS_PER_MIDI_BEAT)
            return [ClockEvent("locate", self.position, t_ns)]
        return []

    # --- internals -----------------------------------------------------------
    def _transport(self, ticks: int) -> None:
        self._ticks = ticks
        self._last_tick_ns = None
        if self._est is not None:
            self._fallback = self._est
        self._reset_fit()

    def _reset_fit(self) -> None:
        self._clear_window()
        self._prev_ns = None
        self._iv_sorted.clear()
        self._iv_head = 0

    def _clear_window(self) -> None:
        self._head = self._n = self._s0 = self._s1 = 0
        self._est = None

    def _observe_tick(self, t: int) -> None:
        prev = self._prev_ns
        self._prev_ns = t
        if prev is None:
            self._offset = t
            self._add_sample(0)
            return
        d = t - prev
        sorted_iv = self._iv_sorted
        if len(sorted_iv) == len(self._iv):
            h = self._iv_head
            del sorted_iv[bisect_left(sorted_iv, self._iv[h])]
            self._iv[h] = d
            self._iv_head = (h + 1) % len(self._iv)
        else:
            self._iv[len(sorted_iv)] = d
        insort(sorted_iv, d)
        n_iv = len(sorted_iv)
        median = sorted_iv[n_iv >> 1] if n_iv >= 3 else None
        ref = median if median is not None else self._fallback
        if ref is not None and 2 * abs(d - ref) > ref:
            self.outliers += 1
            replacement = self._est if self._est is not None else ref
            self._offset += d - round(replacement)
        self._add_sample(t - self._offset)
        est = self._est
        if median and est is not None and n_iv >= len(self._iv) >> 1 and 4 * abs(median - est) > est:
            # the raw intervals have moved on: a tempo jump, not an outlier (ticks read at once after a stall
            # of the listener have no interval between them: never a tempo)
            self._fallback = float(median)
            self._clear_window()
            self._offset = t
            self._add_sample(0)

    def _add_sample(self, v: int) -> None:
        n = self._n
        w = self._window
        if n < w:
            self._vt[(self._head + n) % w] = v
            self._s0 += v
            self._s1 += n * v
            n += 1
            self._n = n
        else:
            h = self._head
            old = self._vt[h]
            self._vt[h] = v
            self._head = (h + 1) % w
            self._s1 += (w - 1) * v - (self._s0 - old)
            self._s0 += v - old
        if n >= self._min_samples:
            # least-squares slope of v_j against j = 0..n-1
            self._est = 6 * (2 * self._s1 - (n - 1) * self._s0) / (n * (n * n - 1))


# --- clock out ---------------------------------------------------------------
def _check_position(position_steps: int) -> int:
    if isinstance(position_steps, bool) or not isinstance(position_steps, int):
        raise TypeError(f"song position must be an int, got {type(position_steps).__name__}")
    if not 0 <= position_steps <= MAX_SONG_POSITION:
        raise ValueError(f"song position must be in range 0..{MAX_SONG_POSITION}, got {position_steps}")
    return position_steps


def ticks_for_step(step_start_ns: int, step_ns: float, ticks_per_step: int = TICKS_PER_STEP) -> list[int]:
    """The ``0xF8`` send times of one step: the first on the step start, then evenly spaced.

    Args:
        step_start_ns: when the step starts.
        step_ns: the step's length.
        ticks_per_step: clock ticks per step (6 on the contract grid).

    Returns:
        ``ticks_per_step`` times, rounded to the ns.

    Raises:
        ValueError: if ``step_ns`` or ``ticks_per_step`` is not positive.
    """
    if not step_ns > 0:
        raise ValueError(f"step_ns must be > 0, got {step_ns}")
    if ticks_per_step < 1:
        raise ValueError(f"ticks_per_step must be >= 1, got {ticks_per_step}")
    tick = step_ns / ticks_per_step
    return [step_start_ns + round(k * tick) for k in range(ticks_per_step)]


def spp(position_steps: int) -> list[int]:
    """Song Position Pointer message for a position in steps (= MIDI beats, sixteenths).

    Raises:
        TypeError: if the position is not an int.
        ValueError: if it is outside 0..16383.
    """
    pos = _check_position(position_steps)
    return [SONG_POSITION, pos & DATA_MASK, pos >> 7]


def start_messages(position_steps: int) -> list[list[int]]:
    """Messages that start a follower at a position: Start at 0, else SPP then Continue.

    Send them, then the first ``0xF8`` of the position's step at its start time.

    Raises:
        TypeError: if the position is not an int.
        ValueError: if it is outside 0..16383.
    """
    if _check_position(position_steps) == 0:
        return [[START]]
    return [spp(position_steps), [CONTINUE]]


def stop_message() -> list[int]:
    """The Stop message."""
    return [STOP]

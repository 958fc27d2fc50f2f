"""The transport: musical position (step, bar, beat, meter) and whether the music is playing.

The transport owns the position; everything else is told it. A clock source
(the internal :class:`~rtgen.timing.clock.StepClock`, or an external MIDI clock through
:class:`~rtgen.timing.midiclock.ClockFollower`) says *when* the next step is due; the
transport says *which* step it is: its bar, its place in the bar and the meter in
force. A failed engine step, a re-seed or a mode change therefore cannot shift a bar
line, and a Song Position Pointer or a Continue relocates every part at once.

A time-signature change takes effect at the next bar line. Pure: no clocks, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from rtgen.contract import TimeSignature, strong_positions


@dataclass(frozen=True, slots=True)
class Position:
    """Where one grid step sits in the music.

    Attributes:
        step: song position in steps since the start (0-based; a MIDI Song Position Pointer unit).
        bar: bar number, 0-based.
        position: step within the bar.
        bar_steps: steps in this bar (meter in force).
        beat_steps: steps per counted beat in this bar.
    """

    step: int
    bar: int
    position: int
    bar_steps: int = 16
    beat_steps: int = 4

    @property
    def beat(self) -> int:
        """Counted beat within the bar, 0-based."""
        return self.position // max(1, self.beat_steps)

    @property
    def on_beat(self) -> bool:
        """The step starts a counted beat."""
        return self.position % max(1, self.beat_steps) == 0

    @property
    def strong(self) -> bool:
        """The step carries a strong beat (see :func:`rtgen.contract.strong_positions`)."""
        return self.position in strong_positions(self.bar_steps, self.beat_steps)


class Transport:
    """Counts steps into bars and beats under a (changeable) time signature.

    Args:
        time_signature: the meter from the first bar.
    """

    def __init__(self, time_signature: TimeSignature | None = None) -> None:
        self._ts = time_signature or TimeSignature()
        self._pending_ts: TimeSignature | None = None
        self.playing = False
        self._set_meter(self._ts)
        self._step = 0
        self._bar = 0
        self._bar_start = 0

    def _set_meter(self, ts: TimeSignature) -> None:
        self._ts = ts
        self._bar_len = ts.bar_steps
        self._beat_len = ts.beat_steps

    @property
    def time_signature(self) -> TimeSignature:
        """The meter of the current bar."""
        return self._ts

    @property
    def next_step(self) -> int:
        """Song position (in steps) of the step :meth:`advance` returns next."""
        return self._step

    def set_time_signature(self, ts: TimeSignature) -> None:
        """Change the meter from the next bar line on (at once when standing at a bar line)."""
        if self._step == self._bar_start:
            self._set_meter(ts)
            self._pending_ts = None
        else:
            self._pending_ts = ts

    def locate(self, step: int) -> None:
        """Jump to song position ``step`` (bars counted in the current meter from step 0)."""
        if step < 0:
            raise ValueError(f"song position must be >= 0 steps, got {step}")
        if self._pending_ts is not None:
            self._set_meter(self._pending_ts)
            self._pending_ts = None
        self._step = step
        self._bar, offset = divmod(step, self._bar_len)
        self._bar_start = step - offset

    def peek(self) -> Position:
        """The position of the next step, without moving."""
        bar, start = self._bar, self._bar_start
        bar_len, beat_len = self._bar_len, self._beat_len
        if self._step - start >= bar_len:
            bar += 1
            start = self._step
            if self._pending_ts is not None:
                bar_len, beat_len = self._pending_ts.bar_steps, self._pending_ts.beat_steps
        return Position(self._step, bar, self._step - start, bar_len, beat_len)

    def advance(self) -> Position:
        """The position of the next step; the transport moves past it."""
        if self._step - self._bar_start >= self._bar_len:
            self._bar += 1
            self._bar_start = self._step
            if self._pending_ts is not None:
                self._set_meter(self._pending_ts)
                self._pending_ts = None
        pos = Position(self._step, self._bar, self._step - self._bar_start, self._bar_len, self._beat_len)
        self._step += 1
        return pos

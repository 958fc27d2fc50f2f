"""Leading a DAW: 24-ppqn MIDI clock, Start, Stop and Song Position sent on the internal clock's grid."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence

from rtgen.io.sinks import Sink
from rtgen.midi.messages import CLOCK
from rtgen.timing.midiclock import start_messages, stop_message, ticks_for_step

log = logging.getLogger(__name__)


class ClockOut:
    """The clock the loop sends to ``sinks`` (none: it leads nobody and costs nothing).

    The ticks of a step are queued when the step's start is known (one step ahead); the loop sends
    those due at each wake-up and wakes for the next one (:attr:`next_tick`).
    """

    def __init__(self, sinks: Sequence[Sink] = ()) -> None:
        self.sinks = list(sinks)
        self.running = False
        self._ticks: deque[int] = deque()

    @property
    def next_tick(self) -> int | None:
        """When the next queued tick is due."""
        return self._ticks[0] if self._ticks else None

    def start(self, position_steps: int, first_step_ns: int, step_ns: float, now_ns: int) -> None:
        """Song Position and Start now; the first tick is the downbeat of the step at ``first_step_ns``."""
        if not self.sinks:
            return
        for msg in start_messages(position_steps):
            self._send(msg, now_ns)
        self.running = True
        self.queue_step(first_step_ns, step_ns)

    def stop(self, now_ns: int) -> None:
        """Stop now (queued ticks dropped)."""
        if not self.running:
            return
        self._ticks.clear()
        self._send(stop_message(), now_ns)
        self.running = False

    def queue_step(self, start_ns: int, step_ns: float) -> None:
        """The ticks of the step that starts at ``start_ns``."""
        if self.running:
            self._ticks.extend(ticks_for_step(start_ns, step_ns))

    def clear(self) -> None:
        """Drop the queued ticks (the loop skipped ahead after a stall)."""
        self._ticks.clear()

    def send_due(self, now_ns: int) -> None:
        """Send every tick due by ``now_ns``."""
        ticks = self._ticks
        while ticks and ticks[0] <= now_ns:
            ticks.popleft()
            self._send((CLOCK,), now_ns)

    def _send(self, msg: Sequence[int], now_ns: int) -> None:
        for sink in self.sinks:
            try:
                sink.send(msg, now_ns)
            except Exception as err:  # a failing port must not stop the music
                log.debug("clock out to %s failed: %s", sink.name, err)

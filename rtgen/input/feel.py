"""The player's feel: how early or late their notes land against the grid, learned as they play.

A reactive step (accompany) waits past its grid time for the player's note. A fixed window has to cover the
loosest player, so a tight one (a sequencer, a player locked to a click) pays its whole length on every step
they do not strike. :class:`PlayerFeel` keeps the offsets of the player's latest onsets from their nearest grid
step and says how long a step needs to wait for this player: as late as their notes land (the larger of a high
quantile of the offsets and the median plus a multiple of their median absolute deviation, never past the
latest heard; one stray late note does not widen it) plus a margin, never more than the configured window, and
the whole window until it has heard enough notes to know.
"""

from __future__ import annotations

import math
from collections import deque

HISTORY = 32  # onsets the estimate looks at: a few bars, so it follows a player who loosens or tightens up
MIN_ONSETS = 8  # before this many, the player is unknown: wait the whole window
QUANTILE = 0.95  # of the offsets: with 32 onsets the second latest, so one stray late note is not followed
SPREAD = 4.5  # median absolute deviations past the median (3 sigma of a normal spread): a few notes already say
# how wide the player's spread is, where a high quantile of them may still miss its tail
MARGIN_NS = 1_000_000  # the loop passes its input poll interval (an onset is stamped up to that late)


class PlayerFeel:
    """A robust running bound on how late the player's onsets land against the grid (see the module docstring).

    Args:
        history: how many recent onsets the estimate looks at.
        min_onsets: how many it needs before it shortens the wait.
        quantile: the share of the onsets heard (0..1] that the bound covers at least, counted from the earliest.
        margin_ns: added to the bound for a step's wait (the input's polling granularity).

    Raises:
        ValueError: a count below 1, ``min_onsets`` above ``history``, ``quantile`` outside (0, 1] or a negative
            margin.
    """

    def __init__(
        self, *, history: int = HISTORY, min_onsets: int = MIN_ONSETS, quantile: float = QUANTILE,
        margin_ns: int = MARGIN_NS,
    ) -> None:  # fmt: skip
        if history < 1 or not 1 <= min_onsets <= history:
            raise ValueError(f"history must be >= 1 and min_onsets in 1..history, got {history} and {min_onsets}")
        if not 0.0 < quantile <= 1.0:
            raise ValueError(f"quantile must be in (0, 1], got {quantile}")
        if margin_ns < 0:
            raise ValueError(f"margin_ns must be >= 0, got {margin_ns}")
        self._offsets: deque[int] = deque(maxlen=history)
        self._min = min_onsets
        self._quantile = quantile
        self.margin_ns = margin_ns
        self._late: int | None = None

    def observe(self, offset_ns: int) -> None:
        """One onset of the player, ``offset_ns`` from its nearest grid step (negative: early)."""
        offsets = self._offsets
        offsets.append(offset_ns)
        if len(offsets) < self._min:
            return
        ordered = sorted(offsets)  # at most HISTORY ints, once per note
        n = len(ordered)
        median = ordered[n // 2]
        mad = sorted(abs(o - median) for o in ordered)[n // 2]
        tail = ordered[max(0, math.ceil(self._quantile * n) - 1)]
        self._late = max(0, min(ordered[-1], max(tail, median + int(SPREAD * mad))))

    def reset(self) -> None:
        """Forget the player (another player, or a new grid): the whole window again until it has heard enough."""
        self._offsets.clear()
        self._late = None

    @property
    def onsets(self) -> int:
        """How many onsets the estimate is built on now."""
        return len(self._offsets)

    @property
    def late_ns(self) -> int | None:
        """How late past its grid step the player's note lands (the bound, >= 0), or None before enough notes."""
        return self._late

    def wait_ns(self, window_ns: int) -> int:
        """How long a step waits past its grid time for this player's note: at most ``window_ns``."""
        late = self._late
        return window_ns if late is None else min(window_ns, late + self.margin_ns)

    def held_wait_ns(self, window_ns: int) -> int:
        """:meth:`wait_ns` for a step the player holds through a long note: no margin, decided as soon as the
        player's timing says no onset is due (at once for a player whose notes land on the grid or early)."""
        late = self._late
        return window_ns if late is None else min(window_ns, late)

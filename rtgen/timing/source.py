"""Clock sources: the one interface the live loop plays on, with the internal clock, MIDI clock in and Link.

The loop never asks which source it has. A source either *leads* (the internal clock: step ``k`` starts at
:meth:`ClockSource.deadline`, known ahead, so the loop queues a step's notes in advance) or *follows* (a DAW's
MIDI clock, an Ableton Link session: the source announces each step with a ``step`` event when its time
comes, and ``start``/``stop``/``continue``/``locate`` events move the transport). Followed events come from
two doors: :meth:`ClockSource.feed` for the system messages of the player's MIDI input, and
:meth:`ClockSource.poll` for a session the loop must look at (Link), at :attr:`ClockSource.next_poll_ns`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from rtgen.midi.messages import CLOCK_MESSAGES
from rtgen.timing.clock import StepClock
from rtgen.timing.link import IDLE_POLL_NS as LINK_IDLE_POLL_NS
from rtgen.timing.link import LinkFollower
from rtgen.timing.midiclock import ClockEvent, ClockFollower


class ClockSource(Protocol):
    """What the live loop asks of the time it plays on (see the module docstring).

    Attributes:
        name: ``internal``, ``midi`` or ``link`` (the config's ``clock.source``).
        leads: step times are known ahead (:meth:`deadline`); False: each step is announced by an event.
        starts_playing: the music starts with the loop (False: it waits for the source's Start).
        idle_poll_ns: how often to look at the source while stopped with no input to poll (0: never).
        tempo_refusal: why the tempo cannot be set here (None: it can).
    """

    name: str
    leads: bool
    starts_playing: bool
    idle_poll_ns: int
    tempo_refusal: str | None

    @property
    def step_ns(self) -> float:
        """Duration of one step now, in nanoseconds."""
        ...

    @property
    def tempo_bpm(self) -> float | None:
        """The tempo now (None while a followed clock has not told it yet)."""
        ...

    @property
    def next_poll_ns(self) -> int | None:
        """When :meth:`poll` wants to be called next (None: it has nothing to poll)."""
        ...

    def deadline(self, step: int) -> int:
        """Start time of ``step`` (a leading source only)."""
        ...

    def set_tempo(self, bpm: float, at_step: int, now_ns: int) -> bool:
        """Change the tempo from ``at_step``; True when it applies here at once (False: proposed to others)."""
        ...

    def request_start(self, now_ns: int) -> bool:
        """Play was asked for: True when the loop starts on its own grid now (False: a start event will come)."""
        ...

    def request_stop(self, now_ns: int) -> None:
        """Stop was asked for (a session is told; a leading or MIDI clock needs nothing)."""
        ...

    def feed(self, message: Sequence[int], t_ns: int) -> list[ClockEvent]:
        """A system message of the player's MIDI input, received at ``t_ns``: the events it makes."""
        ...

    def poll(self, now_ns: int, *, ready: bool) -> list[ClockEvent]:
        """Look at the source (``ready``: the loop waits for its next step): the events that came."""
        ...

    def stats(self) -> dict[str, Any] | None:
        """The source's own figures for the status (None: it has none)."""
        ...


class InternalClock:
    """rtgen's own clock: a :class:`~rtgen.timing.clock.StepClock` that leads (and may lead a DAW by clock out)."""

    name = "internal"
    leads = True
    starts_playing = True
    idle_poll_ns = 0
    tempo_refusal: str | None = None

    def __init__(self, clock: StepClock) -> None:
        self.clock = clock

    @property
    def step_ns(self) -> float:
        """One step at the clock's tempo."""
        return self.clock.step_ns

    @property
    def tempo_bpm(self) -> float:
        """The clock's tempo."""
        return self.clock.tempo

    @property
    def next_poll_ns(self) -> None:
        """Nothing to poll."""
        return None

    def deadline(self, step: int) -> int:
        """The step's absolute deadline."""
        return self.clock.deadline(step)

    def set_tempo(self, bpm: float, at_step: int, now_ns: int) -> bool:
        """The clock changes tempo from ``at_step`` (that step's deadline stays)."""
        self.clock.set_tempo(bpm, at_step)
        return True

    def request_start(self, now_ns: int) -> bool:
        """The loop starts at once."""
        return True

    def request_stop(self, now_ns: int) -> None:
        """Nothing to tell anyone."""

    def feed(self, message: Sequence[int], t_ns: int) -> list[ClockEvent]:
        """Incoming clock messages are not followed."""
        return []

    def poll(self, now_ns: int, *, ready: bool) -> list[ClockEvent]:
        """Nothing to poll."""
        return []

    def stats(self) -> None:
        """No figures of its own (the loop's lateness is the clock's)."""
        return None


class _Followed(Protocol):
    """What a followed clock tells (a :class:`~rtgen.timing.midiclock.ClockFollower`, a ``LinkFollower``)."""

    @property
    def step_ns(self) -> float:
        """One step at the followed tempo."""
        ...

    @property
    def tempo_bpm(self) -> float | None:
        """The followed tempo, once known."""
        ...


class _Following:
    """The part every followed source shares: steps are announced, never known ahead; the tempo is theirs."""

    leads = False
    starts_playing = False

    def __init__(self, follower: _Followed) -> None:
        self._followed = follower

    @property
    def step_ns(self) -> float:
        """One step at the followed tempo."""
        return self._followed.step_ns

    @property
    def tempo_bpm(self) -> float | None:
        """The followed tempo (None until the source has told it)."""
        return self._followed.tempo_bpm

    def deadline(self, step: int) -> int:
        """Not known ahead: a followed source announces each step when it comes."""
        raise ValueError(f"a followed clock announces its steps; step {step} has no deadline")

    def stats(self) -> dict[str, Any] | None:
        """No figures of its own."""
        return None


class MidiClockIn(_Following):
    """A DAW's MIDI clock on the player's input: nothing plays before its Start; the tempo is the DAW's.

    Args:
        follower: turns 24-ppqn ticks, Start/Stop/Continue and Song Position into step events.
    """

    name = "midi"
    idle_poll_ns = 0
    tempo_refusal: str | None = "the tempo follows the MIDI clock (clock.source = midi); change it in the DAW"

    def __init__(self, follower: ClockFollower) -> None:
        super().__init__(follower)
        self.follower = follower

    @property
    def next_poll_ns(self) -> None:
        """Nothing to poll: the clock comes on the input."""
        return None

    def set_tempo(self, bpm: float, at_step: int, now_ns: int) -> bool:
        """Refused: the DAW sets the tempo."""
        assert self.tempo_refusal is not None
        raise ValueError(self.tempo_refusal)

    def request_start(self, now_ns: int) -> bool:
        """The DAW's Start starts the music."""
        return False

    def request_stop(self, now_ns: int) -> None:
        """Nothing to tell the DAW."""

    def feed(self, message: Sequence[int], t_ns: int) -> list[ClockEvent]:
        """Clock, Start, Continue, Stop and Song Position messages move the transport."""
        if message and message[0] in CLOCK_MESSAGES:
            return self.follower.feed(message, t_ns)
        return []

    def poll(self, now_ns: int, *, ready: bool) -> list[ClockEvent]:
        """Nothing to poll."""
        return []


class LinkClock(_Following):
    """An Ableton Link session: its tempo, its bar phase and (with start/stop sync) its transport.

    Args:
        follower: the session (opened by the caller, who closes it).
    """

    name = "link"
    idle_poll_ns = LINK_IDLE_POLL_NS
    tempo_refusal: str | None = None

    def __init__(self, follower: LinkFollower) -> None:
        super().__init__(follower)
        self.follower = follower

    @property
    def next_poll_ns(self) -> int:
        """The capture that announces the next step (or the idle poll while stopped)."""
        return self.follower.next_poll_ns

    def set_tempo(self, bpm: float, at_step: int, now_ns: int) -> bool:
        """Proposed to the session: every peer follows, rtgen too at its next step."""
        self.follower.propose_tempo(bpm, now_ns)
        return False

    def request_start(self, now_ns: int) -> bool:
        """Asks the session to start (with start/stop sync every peer starts on the next bar)."""
        self.follower.request_start(now_ns)
        return False

    def request_stop(self, now_ns: int) -> None:
        """Asks the session to stop."""
        self.follower.request_stop(now_ns)

    def feed(self, message: Sequence[int], t_ns: int) -> list[ClockEvent]:
        """MIDI clock on the input is not followed."""
        return []

    def poll(self, now_ns: int, *, ready: bool) -> list[ClockEvent]:
        """The session's news since the last poll."""
        return self.follower.poll(now_ns, ready=ready)

    def stats(self) -> dict[str, Any]:
        """Peers, tempo and phase of the session."""
        return self.follower.stats()

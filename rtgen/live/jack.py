"""JACK supervision: a server that dies and comes back, and ports the server stopped serving.

A thread of its own (never the real-time one) watches the JACK server through a port-less client. When the
server goes (or one of our ports is stuck: an output whose waiting messages the server has not taken, a
client on a departed client's futex), every note is released, every JACK client of ours is closed, and
once a server answers again the ports are opened as at start-up and put in place of the dead ones: tempo,
mode, parts and position are kept, and the peers hear the parts' programs and volumes again.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from typing import TYPE_CHECKING, Protocol

from rtgen.config import PART_NAMES
from rtgen.errors import PortError
from rtgen.io.ports import JackWatch, MidiInput, MidiOutput, open_input, open_output
from rtgen.live.commands import Panic, SetPart

if TYPE_CHECKING:
    from rtgen.config import Config
    from rtgen.control.osc import OscServer
    from rtgen.errors import RtgenError
    from rtgen.io.sinks import MidiOutSink
    from rtgen.io.synth import Synth
    from rtgen.live.loop import LiveLoop
    from rtgen.live.status import StatusReporter

log = logging.getLogger(__name__)

JACK_RETRY_S = 0.5  # while the JACK server is gone, look for it again this often
JACK_REOPEN_S = 10.0  # the server is back: keep trying to reopen the ports this long, then give up and exit
JACK_STUCK_S = 2.0  # an output whose waiting messages the server has not taken for this long is reopened
JACK_UNSERVED_S = 1.0  # a port whose client's wake-up has stayed untaken this long (~190 cycles) is reopened
JACK_OPEN_CHECK_S = 0.2  # a just-opened client must take a wake-up within this long (~37 cycles at 256/48k)
JACK_REOPEN_TRIES = 6  # reopens in a row that meet the client race again before rtgen keeps what it has (and says so)

JackPort = MidiOutput | MidiInput


class JackHost(Protocol):
    """What the supervisor reads and sets of the daemon (:class:`rtgen.live.daemon.Daemon`)."""

    config: Config
    loop: LiveLoop | None
    input: MidiInput | None
    osc: OscServer | None
    status_reporter: StatusReporter | None
    closing: threading.Event
    fatal: RtgenError | None

    @property
    def midi_sinks(self) -> list[MidiOutSink]:
        """The MIDI outputs."""
        ...

    @property
    def synth(self) -> Synth | None:
        """The internal synth, when it plays."""
        ...


class StalePortsError(Exception):
    """Reopened ports that libjack will never let the server run (see :mod:`rtgen.io.rtmidijack`)."""


class JackSupervisor:
    """Watches the JACK server of ``daemon``'s ports (see the module docstring).

    Attributes:
        state: ``ok``, ``gone``, ``stuck`` or ``failed`` while the server is watched, None otherwise.
        losses: how often the server (or a port of ours) was lost.
    """

    def __init__(self, daemon: JackHost) -> None:
        self.daemon = daemon
        self.state: str | None = None
        self.losses = 0
        self._thread: threading.Thread | None = None

    def ports(self) -> list[JackPort]:
        """Our MIDI ports on JACK (output first, as opened)."""
        d = self.daemon
        ports: list[JackPort | None] = [s.output for s in d.midi_sinks]
        ports.append(d.input)
        return [p for p in ports if p is not None and p.backend == "jack"]

    def start(self) -> None:
        """Watch from a thread of its own when a MIDI port is on JACK."""
        if not self.ports():
            return
        try:
            watch = JackWatch.open(f"{self.daemon.config.midi.client_name}-watch")
        except PortError as err:
            log.warning("cannot watch the JACK server (%s): if it dies, rtgen will not notice", err)
            return
        if watch is None:
            log.warning("cannot watch the JACK server (no client could open): if it dies, rtgen will not notice")
            return
        self.state = "ok"
        self._thread = threading.Thread(target=self._supervise, args=(watch,), name="rtgen-jack", daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> None:
        """Wait for the thread to end (the daemon's closing event is set)."""
        if self._thread is not None:
            self._thread.join(timeout=timeout)
            self._thread = None

    def _supervise(self, watch: JackWatch) -> None:
        """The supervisor thread: notice the server's loss, wait for it, reopen the ports."""
        closing = self.daemon.closing
        current: JackWatch | None = watch
        trouble = stale_ports(self.ports())  # a client that came and went while ours opened: reopen at once
        waiting_since: dict[str, float] = {}
        try:
            while current is not None:
                while trouble is None and not current.lost.wait(0.1):
                    if closing.is_set():
                        current.close()
                        return
                    trouble = self._stuck_output() or self._unserved_port(waiting_since)
                current = self._lost(current, trouble)
                trouble = None
                waiting_since.clear()
        except Exception:  # pragma: no cover - the music goes on without supervision
            log.exception("the JACK supervisor failed; a server that dies again will not be noticed")

    def _stuck_output(self) -> str | None:
        """Why an output is stuck (the server has taken none of its waiting messages for a while), or None."""
        now = time.monotonic()
        for port in self.ports():
            jack = port.jack
            waited = jack.waiting_s(now) if jack is not None else 0.0  # an input waits for nothing: 0
            if waited >= JACK_STUCK_S:
                return f"the server has taken no MIDI from {port.name} for {waited:.1f} s"
        return None

    def _unserved_port(self, waiting_since: dict[str, float]) -> str | None:
        """Why a port is never run by the server (its client's wake-up stays untaken), or None.

        Sampled every 0.1 s: a client that runs takes its wake-up within microseconds of each cycle, so
        :data:`JACK_UNSERVED_S` of samples that all find it waiting is a client whose thread waits elsewhere
        (see :meth:`~rtgen.io.rtmidijack.RtmidiJack.wake_pending`): an input that hears nothing, however its
        peer plays. Nobody playing changes nothing: the server wakes every client every cycle.
        ``waiting_since`` maps a client to the first sample of its current run of waiting ones.
        """
        now = time.monotonic()
        for port in self.ports():
            jack = port.jack
            if jack is None or not jack.wake_pending():
                if jack is not None:
                    waiting_since.pop(jack.client_name, None)
                continue
            since = waiting_since.setdefault(jack.client_name, now)
            if now - since >= JACK_UNSERVED_S:
                return (
                    f"the server has not run {port.name} for {now - since:.1f} s (its JACK client waits on another "
                    "futex: a jack2 race with a client that came and went)"
                )
        return None

    def tell(self, state: str, text: str, *, error: bool = False) -> None:
        """Log ``text``; OSC ``/rtgen/jack s`` (and ``/rtgen/error s``) to subscribers; a JSON status event."""
        self.state = state
        if error:
            log.error("%s", text)
        else:
            log.warning("%s", text)
        d = self.daemon
        if d.osc is not None:
            d.osc.feedback.broadcast("/rtgen/jack", [state])
            if error or state == "gone":
                d.osc.feedback.error(text)
        if d.status_reporter is not None:
            d.status_reporter.event("jack", state=state, message=text)

    def _lost(self, watch: JackWatch, trouble: str | None = None) -> JackWatch | None:
        """The server is gone (or ``trouble`` with our ports): release the notes, free our clients, wait, reopen.

        Returns:
            The new watch, or None (closing, or the ports cannot be reopened).
        """
        d = self.daemon
        server = os.environ.get("JACK_DEFAULT_SERVER", "default")
        loop = d.loop
        self.losses += 1
        playing_on = "; the synth plays on" if d.synth is not None else ""
        kept = f"tempo, mode, parts and position kept{playing_on}"
        if trouble is None:
            self.tell("gone", f"jack: server {server!r} gone, retrying ({kept})")
        else:
            self.tell("stuck", f"jack: {trouble}; reopening the ports ({kept})")
        # the same server: its peers stay, and what a patchbay (or the user) connected is connected again
        links = {id(p): p.jack.connections() for p in self.ports() if trouble is not None and p.jack is not None}
        closers = [port.detach() for port in self.ports()]  # from now on sends drop, reads are empty
        if loop is not None:
            loop.command(Panic(), urgent=True)  # the note-offs reach the synth and the recording
        watch.close()
        for close in closers:  # every client of ours must be gone before libjack may open a new one
            close()
        waited = time.monotonic()
        idle_told = False
        tries = 0
        # a poller's period is not ours: a random first delay keeps the reopen off its beat
        delay = JACK_RETRY_S if trouble is None else random.uniform(0.05, 0.3)
        while True:
            if d.closing.wait(delay):
                return None
            delay = JACK_RETRY_S
            new = JackWatch.open(watch.name)
            if new is not None and not new.cycling():
                new.close()  # a server that runs no cycles would hold python-rtmidi's opens (and the GIL)
                new = None
                if not idle_told:
                    idle_told = True
                    log.warning(
                        "jack: server %r is there but runs no cycles (a client of it is stuck?); waiting", server
                    )
            if new is None:
                if time.monotonic() - waited >= 30:
                    waited = time.monotonic()
                    log.warning("jack: still waiting for server %r", server)
                continue
            tries += 1
            try:
                names = self._reopen_ports(check=tries < JACK_REOPEN_TRIES)
            except StalePortsError as err:
                new.close()  # with every client closed libjack forgets the stale futex; try again
                delay = random.uniform(0.5, 1.5) * JACK_RETRY_S * 2 ** min(tries - 1, 3)  # a random back-off
                log.info("jack: %s; opening the ports again in %.1f s", err, delay)
                continue
            except PortError as err:
                new.close()
                d.fatal = PortError(
                    f"the JACK server {server!r} came back, but rtgen cannot reopen its MIDI ports: {err}"
                )
                self.tell("failed", str(d.fatal), error=True)
                if loop is not None:
                    loop.request_stop()
                return None
            break
        for port in self.ports():
            peers = links.get(id(port))
            if peers and port.jack is not None:
                lost = port.jack.connect(peers)
                if lost:
                    log.info("jack: %s could not be connected again to %s", port.name, ", ".join(lost))
        if loop is not None:
            for name in PART_NAMES:  # the peers on the new server have heard no program or volume
                part = loop.parts.get(name)
                if part.enabled:
                    loop.command(SetPart(name, program=part.program, volume=part.volume, pan=part.pan))
        if tries >= JACK_REOPEN_TRIES:
            self.tell("ok", f"jack: ports reopened ({', '.join(names)}), but the JACK client race met them {tries} "
                            "times in a row: if rtgen does not hear the player, restart it", error=True)  # fmt: skip
        elif trouble is None:
            self.tell("ok", f"jack: server {server!r} back, ports reopened ({', '.join(names)})")
        else:
            self.tell("ok", f"jack: ports reopened ({', '.join(names)}), connections kept")
        return new

    def _reopen_ports(self, *, check: bool = True) -> list[str]:
        """Open our JACK ports again as at start-up and put them in place of the dead ones; their names.

        Retries for :data:`JACK_REOPEN_S` (a port named with ``--midi-out``/``--midi-in`` may come later).
        With ``check``, each new client must be run by the server (:func:`unserved_after_open`), or every
        new client is closed again and :class:`StalePortsError` raised.

        Raises:
            PortError: a port still cannot be opened (the last reason).
        """
        d = self.daemon
        cfg = d.config
        deadline = time.monotonic() + JACK_REOPEN_S
        while True:
            fresh: list[tuple[JackPort, JackPort]] = []
            try:
                for port in self.ports():
                    if isinstance(port, MidiOutput):
                        new_out = open_output("jack", cfg.midi.out or None, cfg.midi.client_name,
                                              cfg.midi.virtual_port_name)  # fmt: skip
                        fresh.append((port, new_out))
                    else:
                        new_in = open_input("jack", cfg.input.port or None, None, cfg.midi.client_name,
                                            cfg.input.virtual_port_name, clock=cfg.clock.source == "midi")  # fmt: skip
                        fresh.append((port, new_in))
                    # at once: the server stalls behind a stale client, and the next open would wait with the GIL
                    stale = stale_ports([fresh[-1][1]]) or unserved_after_open(fresh[-1][1])
                    if stale is not None and check:
                        for _, new in fresh:
                            new.close()
                        raise StalePortsError(stale)
            except PortError as err:
                for _, new in fresh:
                    new.close()
                if time.monotonic() >= deadline or d.closing.is_set():
                    raise
                log.info("jack: cannot reopen the ports yet (%s); retrying", err)
                d.closing.wait(JACK_RETRY_S)
                continue
            for port, new in fresh:
                _attach(port, new)
            return [new.name for _, new in fresh]


def _attach(port: JackPort, new: JackPort) -> None:
    """``port`` goes on through ``new``'s client (opened as ``port`` was, so of its kind)."""
    if isinstance(port, MidiOutput):
        assert isinstance(new, MidiOutput)
        port.attach(new)
    else:
        assert isinstance(new, MidiInput)
        port.attach(new)


def stale_ports(ports: list[JackPort]) -> str | None:
    """Why a just-opened port will never be served (libjack gave it a departed client's futex), or None."""
    for port in ports:
        jack = port.jack
        if jack is not None and jack.futex_is_current() is False:
            return f"libjack gave {port.name} a departed client's futex (a jack2 race), so the server cannot run it"
    return None


def unserved_after_open(port: JackPort) -> str | None:
    """Why a just-opened port is not run by the server (no wake-up taken in :data:`JACK_OPEN_CHECK_S`), or None."""
    jack = port.jack
    if jack is None:
        return None
    deadline = time.monotonic() + JACK_OPEN_CHECK_S
    while jack.wake_pending():
        if time.monotonic() >= deadline:
            return f"the server cannot run the reopened {port.name} (its JACK client waits on another futex)"
        time.sleep(0.005)
    return None

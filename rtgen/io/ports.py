"""MIDI ports through python-rtmidi: backends, port listing, output and input.

A *backend* is an rtmidi API named as in the config (``auto``, ``alsa``, ``jack``,
``coremidi``, ``winmm``). ``open_output(backend, None)`` creates a virtual port
(on JACK it appears as ``rtgen:out``); ``open_output(backend, "fluid")`` connects
to the one existing port whose name contains ``fluid`` (case-insensitive).
Everything that can go wrong at start-up raises :class:`~rtgen.errors.PortError`
with a message that lists what there is (ports, compiled backends) and what to try.

Input arrives on rtmidi's own thread; :func:`open_input`'s callback must only
enqueue (``queue.SimpleQueue.put``), never block.

When a JACK server dies its clients cannot be reused: :meth:`MidiOutput.detach` and
:meth:`MidiInput.detach` take the dead client out from under the real-time thread (sends
are dropped, reads return nothing), :meth:`~MidiOutput.attach` puts a freshly opened one
in its place, and :class:`JackWatch` notices the loss and the server's return.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import rtmidi

from rtgen.errors import PortError
from rtgen.io.native import captured_stderr
from rtgen.io.rtmidijack import SIZE_PREFIX, RtmidiJack, ShutdownCallback, close_client, load_libjack
from rtgen.midi.messages import CHANNELS, all_notes_off

log = logging.getLogger(__name__)

BACKENDS: dict[str, int] = {
    "auto": rtmidi.API_UNSPECIFIED,
    "alsa": rtmidi.API_LINUX_ALSA,
    "jack": rtmidi.API_UNIX_JACK,
    "coremidi": rtmidi.API_MACOSX_CORE,
    "winmm": rtmidi.API_WINDOWS_MM,
}
"""Config names of the MIDI backends mapped to rtmidi API constants (``auto`` = the platform's default)."""

_API_NAMES = {api: name for name, api in BACKENDS.items()}

InputCallback = Callable[[list[int], int], None]
"""``callback(message_bytes, perf_counter_ns)``: called on rtmidi's thread; must only enqueue."""


def compiled_backends() -> list[str]:
    """Config names of the backends this python-rtmidi build was compiled with (e.g. ``["alsa", "jack"]``)."""
    return [_API_NAMES[api] for api in rtmidi.get_compiled_api() if api in _API_NAMES]


def _why_unavailable(backend: str, err: BaseException | None = None) -> str:
    """A one-line reason and fix for a backend that cannot open a client."""
    compiled = ", ".join(compiled_backends()) or "none"
    if backend == "alsa" and sys.platform.startswith("linux") and not os.path.exists("/dev/snd/seq"):
        return "ALSA sequencer not available (/dev/snd/seq missing; load snd-seq or use --backend jack)"
    if backend == "jack":
        server = os.environ.get("JACK_DEFAULT_SERVER", "default")
        return (
            f"JACK server {server!r} not running (start one, e.g. `jackd -d dummy -r 48000 -p 256 &`, "
            f"or set JACK_DEFAULT_SERVER; compiled backends: {compiled})"
        )
    if backend not in compiled_backends() and backend != "auto":
        return f"backend {backend!r} is not compiled into python-rtmidi (compiled: {compiled})"
    detail = f": {err}" if err else ""
    return f"backend {backend!r} cannot open a MIDI client{detail} (compiled: {compiled})"


def _check_backend(backend: str) -> int:
    if backend not in BACKENDS:
        raise PortError(f"unknown MIDI backend {backend!r}; allowed: {', '.join(BACKENDS)}")
    if backend != "auto" and BACKENDS[backend] not in rtmidi.get_compiled_api():
        raise PortError(_why_unavailable(backend))
    return BACKENDS[backend]


def _candidates(backend: str) -> list[str]:
    """Backends to try for ``backend``: itself, or for ``auto`` every compiled one in rtmidi's order."""
    _check_backend(backend)
    return compiled_backends() if backend == "auto" else [backend]


def _make_client(kind: type[Any], backend: str, client_name: str) -> tuple[Any, str]:
    """An rtmidi MidiIn/MidiOut on ``backend`` (``auto``: the first compiled backend that starts)."""
    reasons: list[str] = []
    for name in _candidates(backend):
        with captured_stderr():
            try:
                return kind(BACKENDS[name], name=client_name), name
            except rtmidi.RtMidiError as err:
                reasons.append(f"{name}: {_why_unavailable(name, err)}")
                log.debug("MIDI backend %s cannot start: %s", name, err)
    if backend == "auto":
        raise PortError("no MIDI backend can start: " + "; ".join(reasons))
    raise PortError(reasons[0].split(": ", 1)[1])


def backend_status(backend: str) -> tuple[bool, str]:
    """Whether ``backend`` can open a client here, and the reason when it cannot.

    Returns:
        ``(True, "")`` or ``(False, reason_with_fix)``; never raises.
    """
    try:
        client, _ = _make_client(rtmidi.MidiOut, backend, "rtgen-probe")
    except PortError as err:
        return False, str(err)
    client.delete()
    return True, ""


def list_ports(backend: str) -> dict[str, list[str]]:
    """MIDI ports visible through ``backend``: ``{"inputs": [...], "outputs": [...]}``.

    *inputs* are ports we can read from (sources), *outputs* ports we can send to.

    Raises:
        PortError: the backend is unknown, not compiled, or cannot start (the message says why).
    """
    midi_in, _ = _make_client(rtmidi.MidiIn, backend, "rtgen-list")
    try:
        midi_out, _ = _make_client(rtmidi.MidiOut, backend, "rtgen-list")
    except PortError:
        midi_in.delete()
        raise
    try:
        return {"inputs": list(midi_in.get_ports()), "outputs": list(midi_out.get_ports())}
    finally:
        midi_in.delete()
        midi_out.delete()


def _match_port(ports: Sequence[str], match: str, kind: str, backend: str) -> int:
    needle = match.lower()
    exact = [i for i, p in enumerate(ports) if p.lower() == needle]
    hits = exact or [i for i, p in enumerate(ports) if needle in p.lower()]
    listing = ", ".join(repr(p) for p in ports) or "(none)"
    if not hits:
        raise PortError(
            f"no MIDI {kind} port matches {match!r} on backend {backend}; available {kind} ports: {listing} "
            f"(see `rtgen ports`, or leave midi.out empty for a virtual port)"
        )
    if len(hits) > 1:
        names = ", ".join(repr(ports[i]) for i in hits)
        raise PortError(f"{match!r} matches several MIDI {kind} ports on backend {backend}: {names}; be more specific")
    return hits[0]


class MidiOutput:
    """An open MIDI output port (virtual or connected to an existing port).

    On JACK a send never waits: a message the server has no room for (its cycles stopped for
    our client) is dropped and counted in :attr:`overflowed`, where python-rtmidi alone would
    spin with the GIL held until there is room (see :mod:`rtgen.io.rtmidijack`).

    Attributes:
        name: the port's name (``"rtgen:out"`` style for virtual ports, the matched name otherwise).
        backend: the backend it was opened on (``auto`` resolved).
        virtual: True for a port we created.
        dropped: messages dropped while detached (the MIDI server was gone).
        overflowed: messages dropped because the JACK client's ring buffer was full.
        period_ns: the JACK server's period when on JACK (a message goes out at the next one), else 0.
    """

    def __init__(self, midi_out: Any, name: str, backend: str, virtual: bool) -> None:
        self._out = midi_out
        self._send: Callable[[Sequence[int]], bool | None] = midi_out.send_message
        self._jack = RtmidiJack.of(midi_out) if backend == "jack" else None
        self.period_ns = self._jack.period_ns() if self._jack is not None else 0
        # held for one send, and by detach/attach while they swap the client: the client is never
        # closed while the real-time thread is inside it
        self._lock = threading.Lock()
        self.name = name
        self.backend = backend
        self.virtual = virtual
        self.dropped = 0
        self.overflowed = 0

    def send(self, message: Sequence[int]) -> bool:
        """Send one raw MIDI message (status byte, data bytes) now; False if it was dropped (see above)."""
        with self._lock:
            jack = self._jack
            if jack is not None and jack.room() < len(message) + SIZE_PREFIX:
                self.overflowed += 1
                return False
            return self._send(message) is not False

    def _drop(self, message: Sequence[int]) -> bool:
        self.dropped += 1
        return False

    @property
    def jack(self) -> RtmidiJack | None:
        """The JACK internals of the client (None off JACK, detached, or on an unknown python-rtmidi)."""
        return self._jack

    def detach(self) -> Callable[[], None]:
        """Take the client away (its server died, or stopped serving it): from now on messages are dropped.

        Returns:
            A function that closes the detached client; call it off the real-time thread (on a dead
            JACK server it takes about a second) and before any new client is opened.
        """
        with self._lock:
            out, jack = self._out, self._jack
            self._out = None
            self._jack = None
            if out is not None:
                self._send = self._drop
        return lambda: _close_output(out, jack)

    def attach(self, other: MidiOutput) -> None:
        """Send through ``other``'s client from now on (a port reopened after :meth:`detach`); ``other`` is emptied."""
        with other._lock:
            out, send, jack = other._out, other._send, other._jack
            other._out = None
            other._jack = None
            other._send = _closed_send
        with self._lock:
            self._out = out
            self._send = send
            self._jack = jack
        self.period_ns = other.period_ns

    def close(self) -> None:
        """Close the port and the client; sends nothing itself (use the sink's ``panic`` first)."""
        with self._lock:
            out, jack = self._out, self._jack
            self._out = None
            self._jack = None
            self._send = _closed_send
        if jack is not None:
            jack.close()
        elif out is not None:
            try:
                out.close_port()
            finally:
                out.delete()

    @property
    def closed(self) -> bool:
        """The port has been closed (or detached)."""
        return self._out is None

    def __enter__(self) -> MidiOutput:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MidiOutput({self.name!r}, backend={self.backend!r}, virtual={self.virtual})"


def _closed_send(message: Sequence[int]) -> None:
    raise PortError("MIDI output port is closed")


def _close_output(client: Any, jack: RtmidiJack | None) -> None:
    """Close an rtmidi MidiOut whose JACK server died or stuck, without stopping the other threads.

    RtMidi's ``closePort`` waits a full second for a dead server's process callback, and
    python-rtmidi holds the GIL meanwhile: the real-time loop would stop for that second.
    :meth:`RtmidiJack.close` does the waiting through ctypes, GIL released. Every client of a dead
    server must be closed before libjack opens another one (it keeps one state per process, tied to
    the server it first met).
    """
    if jack is not None:
        jack.close()
    else:
        close_client(client)


def open_output(
    backend: str, match: str | None = None, client_name: str = "rtgen", port_name: str = "out"
) -> MidiOutput:
    """Open a MIDI output.

    Args:
        backend: one of :data:`BACKENDS` (``auto`` tries the compiled backends in rtmidi's order).
        match: ``None`` or empty for a virtual port ``client_name:port_name``; else a case-insensitive
            substring of exactly one existing output port (an exact name wins over substrings).
        client_name: the MIDI client name (JACK client / ALSA client).
        port_name: the virtual port's name, or our local port name when connecting.

    Raises:
        PortError: backend unknown, not compiled or not running; no port or several ports match
            (the message lists the available output ports).
    """
    midi_out, resolved = _make_client(rtmidi.MidiOut, backend, client_name)
    try:
        with captured_stderr():
            if not match:
                try:
                    midi_out.open_virtual_port(port_name)
                except (rtmidi.RtMidiError, NotImplementedError) as err:
                    raise PortError(
                        f"cannot create a virtual MIDI port on backend {resolved} ({err}); "
                        f"connect to an existing port with --midi-out NAME instead (see `rtgen ports`)"
                    ) from err
                name = f"{client_name}:{port_name}"
                virtual = True
            else:
                ports = list(midi_out.get_ports())
                index = _match_port(ports, match, "output", resolved)
                try:
                    midi_out.open_port(index, port_name)
                except rtmidi.RtMidiError as err:
                    raise PortError(f"cannot open MIDI output port {ports[index]!r}: {err}") from err
                name = ports[index]
                virtual = False
    except BaseException:
        midi_out.delete()
        raise
    log.info("MIDI output %s open on %s", name, resolved)
    return MidiOutput(midi_out, name, resolved, virtual)


class MidiInput:
    """An open MIDI input: messages go to the callback given to :func:`open_input`, or, opened without
    one, wait in rtmidi's own queue for :meth:`drain` (the real-time loop polls it)."""

    def __init__(self, midi_in: Any, name: str, backend: str, virtual: bool) -> None:
        self._in = midi_in
        self._get = midi_in.get_message
        self._jack = RtmidiJack.of(midi_in) if backend == "jack" else None
        self._lock = threading.Lock()  # as MidiOutput's: held by one drain, and while detach/attach swap
        self._injected: list[tuple[int, ...]] = []
        self.name = name
        self.backend = backend
        self.virtual = virtual
        self.received = 0

    def drain(self, limit: int = 256) -> list[tuple[int, tuple[int, ...]]]:
        """Take up to ``limit`` waiting ``(perf_counter_ns, message)`` pairs (polled mode); never blocks.

        The time is when the poll found them: with a 1 ms poll, at most 1 ms after their arrival.
        ``limit`` bounds the work of one call, so a flood of input is spread over several loop iterations.
        """
        out: list[tuple[int, tuple[int, ...]]] = []
        with self._lock:
            if self._injected:
                now = time.perf_counter_ns()
                out.extend((now, m) for m in self._injected)
                self._injected = []
            if self._in is None:
                return out
            get = self._get
            now = 0
            for _ in range(limit - len(out)):
                event = get()
                if event is None:
                    break
                if not now:
                    now = time.perf_counter_ns()
                out.append((now, tuple(event[0])))
        self.received += len(out)
        return out

    def detach(self) -> Callable[[], None]:
        """Take the client away (its server died): :meth:`drain` returns nothing from now on.

        The next drain returns all-notes-off (CC123) on every channel once: the player's note-offs
        cannot arrive any more, and the listener must not hear their notes held for ever.

        Returns:
            A function that closes the detached client (off the real-time thread; see :meth:`MidiOutput.detach`).
        """
        with self._lock:
            midi_in, jack = self._in, self._jack
            self._in = None
            self._jack = None
            if midi_in is not None:
                self._injected = [all_notes_off(ch) for ch in range(CHANNELS)]
        return lambda: jack.close() if jack is not None else close_client(midi_in)

    def attach(self, other: MidiInput) -> None:
        """Read from ``other``'s client from now on (a port reopened after :meth:`detach`); ``other`` is emptied."""
        with other._lock:
            midi_in, jack = other._in, other._jack
            other._in = None
            other._jack = None
        with self._lock:
            self._in = midi_in
            self._jack = jack
            if midi_in is not None:
                self._get = midi_in.get_message

    def close(self) -> None:
        """Stop the callback and close the port."""
        with self._lock:
            midi_in, jack = self._in, self._jack
            self._in = None
            self._jack = None
        if jack is not None:
            jack.close()
        elif midi_in is not None:
            try:
                midi_in.cancel_callback()
                midi_in.close_port()
            finally:
                midi_in.delete()

    @property
    def jack(self) -> RtmidiJack | None:
        """The JACK internals of the client (None off JACK, detached, or on an unknown python-rtmidi)."""
        return self._jack

    def __enter__(self) -> MidiInput:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MidiInput({self.name!r}, backend={self.backend!r}, virtual={self.virtual})"


def open_input(
    backend: str,
    match: str | None,
    callback: InputCallback | None,
    client_name: str = "rtgen",
    port_name: str = "in",
    *,
    clock: bool = False,
) -> MidiInput:
    """Open a MIDI input whose messages are handed to ``callback(message, perf_counter_ns)``.

    The callback runs on rtmidi's thread: it must only enqueue. Sysex and active sensing are
    ignored; MIDI clock/transport only when ``clock`` is True.

    Args:
        backend: one of :data:`BACKENDS`.
        match: ``None`` for a virtual input port ``client_name:port_name``, else a case-insensitive
            substring of exactly one existing input (source) port.
        callback: receives the raw bytes and the arrival time on ``time.perf_counter_ns``; None opens the port in
            polled mode (see :meth:`MidiInput.drain`): nothing runs on rtmidi's thread, which on JACK is the
            server's real-time thread and must never wait for Python's GIL.
        client_name: the MIDI client name.
        port_name: the virtual port's name, or our local port name when connecting.
        clock: pass MIDI clock and transport messages through.

    Raises:
        PortError: as :func:`open_output`, listing the input ports.
    """
    midi_in, resolved = _make_client(rtmidi.MidiIn, backend, client_name)
    now = time.perf_counter_ns

    def on_message(event: tuple[list[int], float], data: object = None) -> None:
        assert callback is not None
        callback(event[0], now())

    try:
        midi_in.ignore_types(sysex=True, timing=not clock, active_sense=True)
        if callback is not None:
            midi_in.set_callback(on_message)
        with captured_stderr():
            if not match:
                try:
                    midi_in.open_virtual_port(port_name)
                except (rtmidi.RtMidiError, NotImplementedError) as err:
                    raise PortError(
                        f"cannot create a virtual MIDI input on backend {resolved} ({err}); "
                        f"connect to an existing port by name instead (see `rtgen ports`)"
                    ) from err
                name, virtual = f"{client_name}:{port_name}", True
            else:
                ports = list(midi_in.get_ports())
                index = _match_port(ports, match, "input", resolved)
                try:
                    midi_in.open_port(index, port_name)
                except rtmidi.RtMidiError as err:
                    raise PortError(f"cannot open MIDI input port {ports[index]!r}: {err}") from err
                name, virtual = ports[index], False
    except BaseException:
        midi_in.delete()
        raise
    log.info("MIDI input %s open on %s", name, resolved)
    return MidiInput(midi_in, name, resolved, virtual)


_JACK_NO_START_SERVER = 0x01  # JackOptions.JackNoStartServer


class JackWatch:
    """A JACK client without ports whose only job is to notice that the server went away.

    rtmidi's JACK backend does not report a dead server: its clients keep a stale copy of the
    port graph and its sends go into a ring buffer nobody reads. libjack does tell a client that
    asked (``jack_on_shutdown``), within milliseconds of a killed or stopped server; :attr:`lost`
    is then set (on libjack's notification thread).

    The watch goes through the copy of libjack python-rtmidi loaded (its wheel bundles one): libjack
    keeps one set of per-process globals for all clients, and once the server has died every client
    of this process (this one and rtmidi's) must be closed before a new one is opened, or libjack
    frees them under their owners, or (a client left open) maps the dead server's semaphores into
    the new one and wedges it. :meth:`open` is also the cheap "is the server back?" test.

    Attributes:
        lost: set when the server has shut down (or died).
        name: the client name asked for.
    """

    def __init__(self, lib: ctypes.CDLL, client: int, name: str) -> None:
        self._lib = lib
        self._client: int | None = client
        self.name = name
        self.lost = threading.Event()
        self._callback = ShutdownCallback(self._on_shutdown)  # referenced here: libjack keeps only the pointer
        lib.jack_on_shutdown(client, self._callback, None)

    def _on_shutdown(self, arg: object) -> None:
        self.lost.set()

    @classmethod
    def open(cls, name: str = "rtgen-watch") -> JackWatch | None:
        """A watch on the JACK server (``$JACK_DEFAULT_SERVER``), or None when no server is running.

        Never starts a server. libjack's complaints about a missing server are logged at DEBUG.

        Raises:
            PortError: libjack cannot be loaded.
        """
        lib = load_libjack()
        status = ctypes.c_int(0)
        with captured_stderr("libjack"):
            client = lib.jack_client_open(name.encode(), _JACK_NO_START_SERVER, ctypes.byref(status))
        if not client:
            log.debug("no JACK server (status 0x%x)", status.value)
            return None
        return cls(lib, client, name)

    def cycling(self, within_s: float = 0.5) -> bool:
        """The server runs its cycles (its frame time moves within ``within_s``); False once closed."""
        client = self._client
        if client is None:
            return False
        first = int(self._lib.jack_last_frame_time(client))
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            time.sleep(0.01)
            if self._client is None:
                return False
            if int(self._lib.jack_last_frame_time(client)) != first:
                return True
        return False

    def close(self) -> None:
        """Close the client (idempotent; quick even when the server is gone)."""
        client = self._client
        self._client = None
        if client is not None:
            self._lib.jack_client_close(client)

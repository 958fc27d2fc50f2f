"""A private JACK server and MIDI recording client for the tests.

This machine has no ALSA sequencer, but JACK's dummy backend runs in user space
and python-rtmidi speaks JACK, so the tests start their own named server
(``jackd -n rtgen-test-<pid> --no-realtime -S -t 5000 -d dummy -r 48000 -p 256``), point
every client at it through ``JACK_DEFAULT_SERVER`` and stop it afterwards.

Typical use (the ``jack_server`` fixture in ``conftest.py`` does the first part)::

    server = JackServer.start()
    try:
        out = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, name="sender")
        out.open_virtual_port("out")
        with MidiRecorder("sender:out") as rec:
            out.send_message([0x90, 60, 100])
            rec.wait_for_count(1)
    finally:
        server.stop()

The period is 256 frames (5.33 ms at 48 kHz): at 64 or 128 frames the dummy driver
xruns on two cores and its frame clock drifts. rtmidi's JACK backend writes at the
start of the next period, so any time measured through JACK is quantised to it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

SAMPLE_RATE = 48000
PERIOD_FRAMES = 256
PERIOD_NS = PERIOD_FRAMES * 1_000_000_000 // SAMPLE_RATE  # 5.33 ms
MIDI_TYPE = "8 bit raw midi"

_client_counter = itertools.count(1)


def jackd_path() -> str | None:
    """Path of the ``jackd`` executable, or ``None`` when JACK is not installed."""
    return shutil.which("jackd")


def jack_tools_available() -> bool:
    """``jack_lsp`` and ``jack_connect`` (Debian ``jackd2`` / ``jack-tools``) are on PATH."""
    return shutil.which("jack_lsp") is not None and shutil.which("jack_connect") is not None


def jack_env(server: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """An environment for a subprocess that must talk to JACK server ``server`` (and never start one)."""
    env = dict(os.environ if base is None else base)
    env["JACK_DEFAULT_SERVER"] = server
    env["JACK_NO_START_SERVER"] = "1"
    return env


def daemon_env(server: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for ``python -m rtgen run --backend jack ...`` started as a subprocess in a test.

    Points JACK clients at ``server``, makes the repository importable and keeps
    Python's output unbuffered so the test can read the daemon's log as it happens.
    """
    env = jack_env(server, base)
    repo = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def daemon_command(*args: str) -> list[str]:
    """The argv to start the daemon CLI with the current interpreter: ``[python, -m, rtgen, *args]``."""
    return [sys.executable, "-m", "rtgen", *args]


@dataclass(frozen=True)
class JackPort:
    """One port as ``jack_lsp -t -p`` reports it."""

    name: str
    type: str
    properties: tuple[str, ...]

    @property
    def is_midi(self) -> bool:
        """A JACK MIDI port."""
        return "midi" in self.type

    @property
    def is_output(self) -> bool:
        """The port produces data (a source you can record from)."""
        return "output" in self.properties

    @property
    def is_input(self) -> bool:
        """The port consumes data (a destination you can send to)."""
        return "input" in self.properties


def jack_ports(server: str | None = None, timeout: float = 20.0) -> list[JackPort]:
    """All ports of ``server`` (default: ``$JACK_DEFAULT_SERVER``) with their type and direction.

    Raises:
        RuntimeError: ``jack_lsp`` failed (no server running, or the tool is missing).
    """
    server = server or os.environ.get("JACK_DEFAULT_SERVER", "default")
    try:
        proc = subprocess.run(
            ["jack_lsp", "-t", "-p"], env=jack_env(server), capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as err:
        ours = _RUNNING.get(server)
        log = ours.log_tail() if ours is not None else "(not a server of this suite)"
        text = f"JACK server {server!r} gave jack_lsp no answer in {timeout:.0f} s (a client of it stuck?); its log:"
        raise RuntimeError(f"{text}\n{log}") from err
    if proc.returncode != 0:
        raise RuntimeError(f"jack_lsp failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    ports: list[JackPort] = []
    name: str | None = None
    ptype = ""
    props: tuple[str, ...] = ()
    for line in proc.stdout.splitlines():
        if not line.strip():
            continue
        if not line.startswith(("\t", " ")):
            if name is not None:
                ports.append(JackPort(name, ptype, props))
            name, ptype, props = line.strip(), "", ()
            continue
        text = line.strip()
        if text.startswith("properties:"):
            props = tuple(p.strip() for p in text.split(":", 1)[1].split(",") if p.strip())
        else:
            ptype = text
    if name is not None:
        ports.append(JackPort(name, ptype, props))
    return ports


def jack_port_names(server: str | None = None, *, midi: bool | None = None, output: bool | None = None) -> list[str]:
    """Names of the ports of ``server``, optionally only MIDI (``midi=True``) and/or only outputs/inputs."""
    names = []
    for port in jack_ports(server):
        if midi is not None and port.is_midi != midi:
            continue
        if output is not None and port.is_output != output:
            continue
        names.append(port.name)
    return names


def wait_for_port(name: str, timeout: float = 10.0, server: str | None = None) -> JackPort:
    """Wait until the JACK port ``name`` exists and return it.

    Raises:
        TimeoutError: it did not appear; the message lists the ports there are.
    """
    deadline = time.monotonic() + timeout
    ports: list[JackPort] = []
    while True:
        try:
            ports = jack_ports(server)
        except RuntimeError:
            ports = []
        for port in ports:
            if port.name == name:
                return port
        if time.monotonic() >= deadline:
            listing = ", ".join(p.name for p in ports) or "(none)"
            raise TimeoutError(f"JACK port {name!r} did not appear within {timeout:.1f} s; ports: {listing}")
        time.sleep(0.05)


def jack_connect(source: str, destination: str, server: str | None = None) -> None:
    """Connect two JACK ports (``jack_connect``); raises RuntimeError with jack's message on failure."""
    env = jack_env(server) if server else dict(os.environ)
    proc = subprocess.run(
        ["jack_connect", source, destination], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"jack_connect {source} {destination} failed: {proc.stderr.strip() or proc.stdout.strip()}")


_RUNNING: dict[str, JackServer] = {}  # the servers this suite started, by name (for their logs in a failure)


class JackServer:
    """A private ``jackd`` with the dummy backend; use :meth:`start` and :meth:`stop` (or ``with``)."""

    def __init__(self, name: str, proc: subprocess.Popen[bytes], log_path: Path) -> None:
        self.name = name
        self.proc = proc
        self.log_path = log_path

    @classmethod
    def start(
        cls,
        name: str | None = None,
        *,
        rate: int = SAMPLE_RATE,
        period: int = PERIOD_FRAMES,
        timeout: float = 15.0,
        log_dir: Path | None = None,
        sync: bool = True,
        client_timeout_ms: int = 5000,
        extra: Sequence[str] = (),
    ) -> JackServer:
        """Start ``jackd -n NAME --no-realtime -S -t 5000 -d dummy -r RATE -p PERIOD`` and wait until it is ready.

        ``sync`` (``-S``) makes the server wait for every client each cycle. In the default
        asynchronous mode a client that misses its cycle on a loaded two-core machine makes the
        reader see the previous cycle's buffer again: measured here under load 6, 10-70 of 10,000
        MIDI messages were duplicated or lost without ``-S`` and none with it. The long client
        timeout keeps a slow (non-real-time, GIL-bound) Python client from being kicked out.

        Raises:
            RuntimeError: jackd is missing, exited, or did not become ready within ``timeout``
                (the message carries the end of its log).
        """
        exe = jackd_path()
        if exe is None:
            raise RuntimeError("jackd not found; install it: sudo apt-get install -y --no-install-recommends jackd2")
        name = name or f"rtgen-test-{os.getpid()}"
        from rtgen.io.jackshm import reclaim_dead_servers

        reclaim_dead_servers()  # jackd2 never frees the registry slots of killed servers of other names
        log_dir = log_dir or Path(os.environ.get("TMPDIR", "/tmp"))
        log_path = log_dir / f"{name}.jackd.log"
        log = log_path.open("wb")
        mode = ["-S"] if sync else []
        cmd = [
            exe,
            "-n",
            name,
            "--no-realtime",
            *mode,
            "-t",
            str(client_timeout_ms),
            *extra,
            "-d",
            "dummy",
            "-r",
            str(rate),
            "-p",
            str(period),
        ]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=jack_env(name))
        log.close()
        server = cls(name, proc, log_path)
        _RUNNING[name] = server
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"jackd exited with {proc.returncode}: {server.log_tail()}")
            check = subprocess.run(["jack_lsp"], env=jack_env(name), capture_output=True, timeout=10, check=False)
            if check.returncode == 0:
                return server
            if time.monotonic() >= deadline:
                server.stop()
                raise RuntimeError(f"jackd {name} not ready after {timeout:.0f} s: {server.log_tail()}")
            time.sleep(0.1)

    def log_tail(self, chars: int = 2000) -> str:
        """The end of jackd's output (for failure messages)."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate jackd (SIGTERM, then SIGKILL) and remove its log."""
        _RUNNING.pop(self.name, None)
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        with contextlib.suppress(OSError):
            self.log_path.unlink()

    def __enter__(self) -> JackServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


Message = tuple[int, ...]


class MidiRecorder:
    """An rtmidi JACK input client connected to ``source`` that records ``(perf_counter_ns, message)``.

    A thread of ours polls rtmidi's queue every 0.2 ms and stamps what it finds. No Python callback runs
    on JACK's thread: that callback needs the GIL, and when this process opens or closes another JACK
    client (which holds the GIL while it waits for the server) a synchronous server waits for the
    callback, the callback for the GIL: a deadlock until the server's client timeout, seen here as a
    JACK server that stops answering. Use as a context manager; ``source`` is a full JACK port name.
    """

    def __init__(self, source: str, *, client_name: str | None = None, timeout: float = 10.0) -> None:
        self.source = source
        self.client_name = client_name or f"rtgen-rec-{os.getpid()}-{next(_client_counter)}"
        self.timeout = timeout
        self.events: list[tuple[int, Message]] = []
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._midi_in: object | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> MidiRecorder:
        import rtmidi

        wait_for_port(self.source, self.timeout)
        midi_in = rtmidi.MidiIn(rtmidi.API_UNIX_JACK, name=self.client_name)
        midi_in.ignore_types(sysex=False, timing=False, active_sense=True)
        midi_in.open_virtual_port("in")
        self._midi_in = midi_in
        self._thread = threading.Thread(target=self._poll, args=(midi_in,), name="midi-recorder", daemon=True)
        self._thread.start()
        try:
            # Our client name may have been uniquified by JACK; find our port by listing.
            own = wait_for_port(f"{self.client_name}:in", self.timeout)
            jack_connect(self.source, own.name)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Disconnect and close the JACK client."""
        midi_in = self._midi_in
        self._midi_in = None
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if midi_in is not None:
            midi_in.close_port()  # type: ignore[attr-defined]
            midi_in.delete()  # type: ignore[attr-defined]

    def _poll(self, midi_in: Any) -> None:
        get = midi_in.get_message
        while not self._stop.is_set():
            event = get()
            if event is None:
                time.sleep(0.0002)
                continue
            now = time.perf_counter_ns()
            with self._cond:
                self.events.append((now, tuple(event[0])))
                while (event := get()) is not None:  # a burst that arrived together
                    self.events.append((now, tuple(event[0])))
                self._cond.notify_all()

    # -- reading ------------------------------------------------------------------------------------------------

    def snapshot(self) -> list[tuple[int, Message]]:
        """A copy of everything received so far."""
        with self._lock:
            return list(self.events)

    def messages(self) -> list[Message]:
        """Messages received so far, without times."""
        return [m for _, m in self.snapshot()]

    def clear(self) -> None:
        """Forget what was received so far."""
        with self._lock:
            self.events.clear()

    def wait_until(self, predicate: Callable[[list[tuple[int, Message]]], bool], timeout: float = 10.0) -> bool:
        """Wait until ``predicate(events)`` is true (re-checked on every message); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.events):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
            return True

    def wait_for_count(self, n: int, timeout: float = 10.0) -> bool:
        """Wait until at least ``n`` messages arrived."""
        return self.wait_until(lambda ev: len(ev) >= n, timeout)

    def settle(self, quiet: float = 0.2, timeout: float = 10.0) -> None:
        """Wait until nothing arrived for ``quiet`` seconds (or ``timeout`` passed)."""
        deadline = time.monotonic() + timeout
        last = -1
        while time.monotonic() < deadline:
            n = len(self.snapshot())
            if n == last:
                return
            last = n
            time.sleep(quiet)


def note_ons(messages: Sequence[Message], channel: int | None = None) -> list[Message]:
    """Note-ons with velocity > 0 (optionally on a 0-based ``channel``)."""
    return [
        m
        for m in messages
        if len(m) == 3 and m[0] & 0xF0 == 0x90 and m[2] > 0 and (channel is None or m[0] & 0x0F == channel)
    ]


def is_note_off(m: Message) -> bool:
    """A note-off (0x8n, or 0x9n with velocity 0)."""
    return len(m) == 3 and (m[0] & 0xF0 == 0x80 or (m[0] & 0xF0 == 0x90 and m[2] == 0))


def sounding_notes(messages: Sequence[Message]) -> set[tuple[int, int]]:
    """(channel, pitch) pairs still sounding after ``messages``, counting real note-offs only.

    Each note-on needs its own note-off (a doubled note needs two). CC123/CC120 release
    nothing here: rtgen promises a note-off for every note-on, and a check that let
    all-notes-off stand in for them could never fail, since stop always sends one.
    """
    sounding: dict[tuple[int, int], int] = {}
    for m in messages:
        if len(m) != 3:
            continue
        key = (m[0] & 0x0F, m[1])
        if m[0] & 0xF0 == 0x90 and m[2] > 0:
            sounding[key] = sounding.get(key, 0) + 1
        elif is_note_off(m) and sounding.get(key, 0) > 0:
            sounding[key] -= 1
    return {k for k, v in sounding.items() if v > 0}

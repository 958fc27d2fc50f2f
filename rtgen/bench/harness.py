"""The JACK harness of the bench and the tests: a private server, its ports, recorders, the daemon as a subprocess.

This machine has no ALSA sequencer, but JACK's dummy backend runs in user space and python-rtmidi
speaks JACK, so the bench and the tests start their own named server, point every client at it
through ``JACK_DEFAULT_SERVER`` and stop it afterwards. Two kinds, by :class:`JackServer`'s parameters:

- the tests' (the default): ``jackd -n NAME --no-realtime -S -t 5000 -d dummy -r 48000 -p 256``;
- the bench's (``realtime=True, sync=False``): ``jackd -n NAME -R -P 70 -d dummy -r 48000 -p 256``, or
  the tests' kind when SCHED_FIFO is refused (:attr:`JackServer.mode` says which ran).

Two recorders: :class:`JackRecorder` (JACK-Client: every event with its JACK frame time, what the bench
measures) and :class:`MidiRecorder` (rtmidi, polled from a thread of ours: every event with its
``perf_counter_ns``, what the tests assert on). Typical use in a test (the ``jack_server`` fixture of
``tests/conftest.py`` does the first part)::

    server = JackServer("rtgen-test").start()
    try:
        out = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, name="sender")
        out.open_virtual_port("out")
        with MidiRecorder("sender:out") as rec:
            out.send_message([0x90, 60, 100])
            rec.wait_for_count(1)
    finally:
        server.close()

The period is 256 frames (5.33 ms at 48 kHz): at 64 or 128 frames the dummy driver xruns on two
cores and its frame clock drifts. rtmidi's JACK backend writes at the start of the next period, so
any time measured through JACK is quantised to it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from rtgen.bench.measure import has_realtime_thread
from rtgen.errors import JackError, RtgenError
from rtgen.midi.messages import CHANNEL_MASK, KIND_MASK, NOTE_OFF, NOTE_ON
from rtgen.midi.notes import NoteTracker

SAMPLE_RATE = 48_000
PERIOD_FRAMES = 256
PERIOD_NS = PERIOD_FRAMES * 1_000_000_000 // SAMPLE_RATE  # 5.33 ms
MIDI_TYPE = "8 bit raw midi"
REALTIME_PRIORITY = 70  # jackd -P: above the daemon's loop (10), as a real-time audio server runs

Message = tuple[int, ...]

_client_counter = itertools.count(1)


# --- environments ---------------------------------------------------------------------------------------------


def jackd_path() -> str | None:
    """Path of the ``jackd`` executable, or ``None`` when JACK is not installed."""
    return shutil.which("jackd")


def jack_tools_available() -> bool:
    """``jack_lsp`` and ``jack_connect`` (Debian ``jackd2`` / ``jack-tools``) are on PATH."""
    return shutil.which("jack_lsp") is not None and shutil.which("jack_connect") is not None


def jack_env(server: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """An environment whose JACK clients talk to ``server`` and never start one (``base``: default os.environ)."""
    env = dict(os.environ if base is None else base)
    env["JACK_DEFAULT_SERVER"] = server
    env["JACK_NO_START_SERVER"] = "1"
    return env


@contextlib.contextmanager
def jack_clients_env(server: str) -> Iterator[None]:
    """Point this process's JACK clients (rtmidi) at ``server`` for the duration of the block."""
    keys = ("JACK_DEFAULT_SERVER", "JACK_NO_START_SERVER")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(jack_env(server))
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def daemon_env(server: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for ``python -m rtgen run --backend jack ...`` started as a subprocess.

    Points JACK clients at ``server``, makes this ``rtgen`` importable (its checkout first on
    ``PYTHONPATH``) and keeps Python's output unbuffered so the caller can read the daemon's log as
    it happens.
    """
    import rtgen

    env = jack_env(server, base)
    root = str(Path(rtgen.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def daemon_command(*args: str) -> list[str]:
    """The argv to start the daemon CLI with the current interpreter: ``[python, -m, rtgen, *args]``."""
    return [sys.executable, "-m", "rtgen", *args]


# --- ports ----------------------------------------------------------------------------------------------------


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


_RUNNING: dict[str, JackServer] = {}  # the servers this process started, by name (for their logs in a failure)


def jack_ports(server: str | None = None, timeout: float = 20.0) -> list[JackPort]:
    """All ports of ``server`` (default: ``$JACK_DEFAULT_SERVER``) with their type and direction.

    Raises:
        JackError: ``jack_lsp`` failed or got no answer (no server running, a stuck client, the tool missing).
    """
    server = server or os.environ.get("JACK_DEFAULT_SERVER", "default")
    try:
        proc = subprocess.run(
            ["jack_lsp", "-t", "-p"], env=jack_env(server), capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as err:
        ours = _RUNNING.get(server)
        log = ours.log_tail() if ours is not None else "(not a server of this process)"
        text = f"JACK server {server!r} gave jack_lsp no answer in {timeout:.0f} s (a client of it stuck?); its log:"
        raise JackError(f"{text}\n{log}") from err
    if proc.returncode != 0:
        raise JackError(f"jack_lsp failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
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
        except JackError:
            ports = []
        for port in ports:
            if port.name == name:
                return port
        if time.monotonic() >= deadline:
            listing = ", ".join(p.name for p in ports) or "(none)"
            raise TimeoutError(f"JACK port {name!r} did not appear within {timeout:.1f} s; ports: {listing}")
        time.sleep(0.05)


def jack_connect(source: str, destination: str, server: str | None = None) -> None:
    """Connect two JACK ports (``jack_connect``).

    Raises:
        JackError: with jack's message.
    """
    env = jack_env(server) if server else dict(os.environ)
    proc = subprocess.run(
        ["jack_connect", source, destination], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    if proc.returncode != 0:
        raise JackError(f"jack_connect {source} {destination} failed: {proc.stderr.strip() or proc.stdout.strip()}")


# --- the server -----------------------------------------------------------------------------------------------


class JackServer:
    """A private ``jackd`` with the dummy backend: :meth:`start`, then :meth:`close` (or ``with``).

    Args:
        name: the server's name (default ``rtgen-test-PID``).
        rate: sample rate.
        period: frames per period.
        log_dir: where ``NAME.jackd.log`` goes (default the temporary folder).
        realtime: ask for SCHED_FIFO (``-R -P 70``), as the bench does; where jackd runs without a
            real-time thread, fall back to a synchronous non-real-time server (``fallback_reason`` says why).
        sync: ``-S``, the server waits for every client each cycle. In the default asynchronous mode a
            client that misses its cycle on a loaded two-core machine makes the reader see the previous
            cycle's buffer again: measured here under load 6, 10-70 of 10,000 MIDI messages were duplicated
            or lost without ``-S`` and none with it.
        client_timeout_ms: ``-t`` of a non-real-time server: long, so a slow (GIL-bound) Python client is
            not kicked out.
        extra: more jackd options, before the driver's.

    Attributes:
        mode: ``"realtime"``, ``"sync-nonrealtime"`` or ``"nonrealtime"`` once started.
        fallback_reason: why a real-time server was asked for and not used (else None).
        proc: the jackd process once started.
    """

    def __init__(
        self,
        name: str | None = None,
        rate: int = SAMPLE_RATE,
        period: int = PERIOD_FRAMES,
        log_dir: Path | None = None,
        *,
        realtime: bool = False,
        sync: bool = True,
        client_timeout_ms: int = 5000,
        extra: Sequence[str] = (),
    ) -> None:
        self.name = name or f"rtgen-test-{os.getpid()}"
        self.rate = rate
        self.period = period
        self.realtime = realtime
        self.sync = sync
        self.client_timeout_ms = client_timeout_ms
        self.extra = tuple(extra)
        self.log_path = (log_dir or Path(tempfile.gettempdir())) / f"{self.name}.jackd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.mode = ""
        self.fallback_reason: str | None = None

    def start(self, timeout: float = 15.0) -> JackServer:
        """Start the server and wait until clients can connect; returns itself.

        Raises:
            JackError: jackd is missing, exited, or was not ready within ``timeout`` (the message has its log).
        """
        exe = jackd_path()
        if exe is None:
            raise JackError("jackd not found (apt-get install -y --no-install-recommends jackd2)")
        from rtgen.io.jackshm import reclaim_dead_servers

        reclaim_dead_servers()  # jackd2 never frees the registry slots of killed servers of other names
        _RUNNING[self.name] = self
        driver = ["-d", "dummy", "-r", str(self.rate), "-p", str(self.period)]
        sync = ["-S"] if self.sync else []
        if self.realtime:
            try:
                self._launch([exe, "-n", self.name, "-R", "-P", str(REALTIME_PRIORITY), *sync, *self.extra, *driver],
                             timeout)  # fmt: skip
                assert self.proc is not None
                # jackd keeps running when SCHED_FIFO is refused (it logs "Cannot use real-time scheduling")
                if has_realtime_thread(self.proc.pid):
                    self.mode = "realtime"
                    return self
                self.fallback_reason = "jackd -R runs without a real-time thread: " + self.log_tail(300)
            except JackError as err:
                self.fallback_reason = str(err)
            self.stop()
            sync = ["-S"]  # a non-real-time server under a real-time daemon: none of it may miss a cycle
        timeout_ms = ["-t", str(self.client_timeout_ms)]
        self._launch([exe, "-n", self.name, "--no-realtime", *sync, *timeout_ms, *self.extra, *driver], timeout)
        self.mode = "sync-nonrealtime" if sync else "nonrealtime"
        return self

    def _launch(self, cmd: list[str], timeout: float) -> None:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=jack_env(self.name)
            )
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self.proc.poll() is not None:
                raise JackError(f"{' '.join(cmd)} exited with {self.proc.returncode}: {self.log_tail(1500)}")
            if time.monotonic() >= deadline:
                self.stop()
                raise JackError(f"{' '.join(cmd)} not ready after {timeout:.0f} s: {self.log_tail(1500)}")
            time.sleep(0.1)

    def _ready(self) -> bool:
        if shutil.which("jack_lsp") is not None:
            lsp = subprocess.run(["jack_lsp"], env=jack_env(self.name), capture_output=True, timeout=10, check=False)
            return lsp.returncode == 0
        import rtmidi

        from rtgen.io.ports import captured_stderr

        with captured_stderr(), jack_clients_env(self.name):
            try:
                rtmidi.MidiOut(rtmidi.API_UNIX_JACK, name=f"{self.name}-ready").delete()
            except rtmidi.RtMidiError:
                return False
        return True

    def log_tail(self, chars: int = 2000) -> str:
        """The end of jackd's output (for failure messages)."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:].strip()
        except OSError:
            return "(no log)"

    def xruns(self) -> dict[str, Any]:
        """XRuns the server logged so far: late driver cycles, and clients that had not finished their cycle."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return {"driver": 0, "clients": {}}
        late: dict[str, int] = {}
        for m in re.finditer(r"JackEngine::XRun: client = (\S+) was not finished", text):
            client = m.group(1).removeprefix(self.name + "-")
            late[client] = late.get(client, 0) + 1
        return {"driver": text.count("JackTimedDriver::Process XRun"), "clients": late}

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate jackd (SIGTERM, then SIGKILL); idempotent. The log stays (see :meth:`close`)."""
        _RUNNING.pop(self.name, None)
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def close(self) -> None:
        """Stop the server and remove its log."""
        self.stop()
        with contextlib.suppress(OSError):
            self.log_path.unlink()

    def __enter__(self) -> JackServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- what was played ------------------------------------------------------------------------------------------


def is_note_on(m: Sequence[int]) -> bool:
    """A note-on with velocity > 0."""
    return len(m) == 3 and m[0] & KIND_MASK == NOTE_ON and m[2] > 0


def is_note_off(m: Sequence[int]) -> bool:
    """A note-off (0x8n, or 0x9n with velocity 0)."""
    return len(m) == 3 and (m[0] & KIND_MASK == NOTE_OFF or (m[0] & KIND_MASK == NOTE_ON and m[2] == 0))


def note_ons(messages: Sequence[Message], channel: int | None = None) -> list[Message]:
    """Note-ons with velocity > 0 (optionally on a 0-based ``channel``)."""
    return [m for m in messages if is_note_on(m) and (channel is None or m[0] & CHANNEL_MASK == channel)]


def track_notes(messages: Iterable[Sequence[int]]) -> NoteTracker:
    """The notes still sounding after ``messages``, counting real note-offs only (one per note-on)."""
    book = NoteTracker()
    for m in messages:
        if is_note_on(m):
            book.on(m[0] & CHANNEL_MASK, m[1])
        elif is_note_off(m):
            book.off(m[0] & CHANNEL_MASK, m[1])
    return book


def sounding_notes(messages: Sequence[Message]) -> set[tuple[int, int]]:
    """(channel, pitch) pairs still sounding after ``messages``, counting real note-offs only.

    Each note-on needs its own note-off (a doubled note needs two). CC123/CC120 release
    nothing here: rtgen promises a note-off for every note-on, and a check that let
    all-notes-off stand in for them could never fail, since stop always sends one.
    """
    return set(track_notes(messages).sounding())


# --- recorders ------------------------------------------------------------------------------------------------


class JackRecorder:
    """A JACK client (JACK-Client) with one MIDI input that keeps every event's frame time (and its arrival).

    The process callback runs on JACK's thread in this process; it only appends to lists (this
    process's main thread just waits meanwhile).

    Attributes:
        events: ``(JACK frame time, message)`` of everything received.
        arrivals_ns: ``perf_counter_ns`` of the process cycle that got each event.
        first_note_on_ns: that of the first note-on (None until one came; a caller may reset it).
        xruns_ns: ``perf_counter_ns`` when the server reported each xrun (any client's).
    """

    def __init__(self, server: str, name: str) -> None:
        try:
            import jack
        except ImportError as err:  # pragma: no cover - a dependency of rtgen
            raise RtgenError("the JACK-Client package is missing: pip install JACK-Client") from err
        self.client = jack.Client(name, servername=server, no_start_server=True)
        self.port = self.client.midi_inports.register("in")
        self.rate = self.client.samplerate
        self.period = self.client.blocksize
        self.events: list[tuple[int, bytes]] = []
        self.arrivals_ns: list[int] = []
        self.first_note_on_ns: int | None = None
        self.xruns_ns: list[int] = []
        self.client.set_process_callback(self.process)
        self.client.set_xrun_callback(lambda _delay_us: self.xruns_ns.append(time.perf_counter_ns()))
        self.client.activate()

    @property
    def port_name(self) -> str:
        """The full name of the recording port (``client:in``)."""
        return str(self.port.name)

    def process(self, frames: int) -> None:
        """JACK's process callback (on its thread): keep this cycle's events. A subclass may extend it."""
        base = self.client.last_frame_time
        now = time.perf_counter_ns()
        for offset, data in self.port.incoming_midi_events():
            msg = bytes(data)
            if self.first_note_on_ns is None and is_note_on(msg):
                self.first_note_on_ns = now
            self.events.append((base + offset, msg))
            self.arrivals_ns.append(now)

    def note_on_frames(self, since: int = 0) -> np.ndarray:
        """JACK frame times of every note-on received (from event number ``since`` on)."""
        return np.array([f for f, m in self.events[since:] if is_note_on(m)], dtype=np.int64)

    def midi_output_ports(self) -> list[str]:
        """Names of the MIDI output ports on the server."""
        return [p.name for p in self.client.get_ports(is_midi=True, is_output=True)]

    def close(self) -> None:
        """Deactivate and close the client."""
        self.client.deactivate()
        self.client.close()


@contextlib.contextmanager
def recorded_server(
    name: str, work: Path, rate: int = SAMPLE_RATE, period: int = PERIOD_FRAMES
) -> Iterator[tuple[JackServer, JackRecorder]]:
    """The bench's real-time JACK server ``name`` (logs in ``work``) with a :class:`JackRecorder` on it.

    Both are closed at the end (the recorder first); the recorder's events stay readable after.
    """
    server = JackServer(name, rate, period, work, realtime=True, sync=False)
    try:
        server.start()
        recorder = JackRecorder(name, f"{name}-rec")
        try:
            yield server, recorder
        finally:
            recorder.close()
    finally:
        server.close()


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


# --- the daemon -----------------------------------------------------------------------------------------------


class DaemonProcess:
    """``python -m rtgen run --backend jack ARGS`` as a subprocess on JACK server ``server``.

    Args:
        server: the JACK server's name.
        model_dir: the model folder.
        client: the daemon's JACK client name (``[midi] client_name``).
        work: where its config (``daemon.toml``) and its log (``daemon.log``) go.
        duration: ``--duration``: a stray daemon stops by itself (:meth:`stop` ends it first).
        args: more ``rtgen run`` options (mode, clock, ports, ...).
        config_text: more TOML for its config file.

    Attributes:
        proc: the process; spawned_ns: ``perf_counter_ns`` just before it was spawned; env: its environment.
    """

    def __init__(
        self, server: str, model_dir: Path, client: str, work: Path, duration: float,
        args: Sequence[str] = (), config_text: str = "",
    ) -> None:  # fmt: skip
        self.client = client
        config = work / "daemon.toml"
        config.write_text(f'[midi]\nclient_name = "{client}"\n' + config_text)
        self.log_path = work / "daemon.log"
        self.env = daemon_env(server)
        cmd = daemon_command(
            "run", "--config", str(config), "--model", str(model_dir), "--backend", "jack", *args,
            "--duration", str(duration),
        )  # fmt: skip
        self.spawned_ns = time.perf_counter_ns()
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env
            )
        # JACK renames a second client of the same name (CLIENT-01), and the daemon's input is its second client
        self.port_re = re.compile(rf"^{re.escape(client)}(-\d+)?:(in|out)$")

    def log_tail(self, chars: int = 1500) -> str:
        """The end of the daemon's output."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:].strip()
        except OSError:
            return "(no log)"

    def find_port(self, kind: str, timeout: float, ports: Callable[[], list[str]]) -> str:
        """The daemon's ``in`` or ``out`` port among ``ports()``, waiting for it to appear.

        Raises:
            RtgenError: the daemon exited, or the port did not appear within ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while True:
            names = list(ports())
            for name in names:
                m = self.port_re.match(name)
                if m is not None and m.group(2) == kind:
                    return name
            if self.proc.poll() is not None:
                raise RtgenError(f"the daemon exited with {self.proc.returncode}: {self.log_tail()}")
            if time.monotonic() >= deadline:
                raise RtgenError(f"the daemon's {kind} port did not appear in {timeout:.0f} s; ports: {names}")
            time.sleep(0.1)

    def wait_first_note(self, recorder: JackRecorder, timeout: float) -> float:
        """Milliseconds from the daemon's spawn to the first note-on at ``recorder``.

        Raises:
            RtgenError: the daemon exited, or played nothing within ``timeout`` (with its log).
        """
        deadline = time.monotonic() + timeout
        while recorder.first_note_on_ns is None:
            if self.proc.poll() is not None:
                raise RtgenError(f"the daemon exited with {self.proc.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise RtgenError(f"no note from the daemon in {timeout:.0f} s: {self.log_tail()}")
            time.sleep(0.005)
        return (recorder.first_note_on_ns - self.spawned_ns) / 1e6

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGINT, wait; SIGKILL if it does not exit. Returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

"""The daemon as a musician meets it, measured through JACK: grid, first note, CPU, memory.

:func:`bench_jack_grid` starts the bench's own JACK server, a recording client of its own (the
``JACK-Client`` binding: every MIDI event with its JACK frame time), then the real daemon
(``rtgen run``, a subprocess, autonomous mode on the internal clock, output connected to the
recorder from its first note). From the recording:

- ``jack_grid_dev_us``: each note-on's deviation from the ideal grid, in JACK frame time (a
  least-squares line through onset time against step number: the grid's phase and the drift
  between the daemon's clock and JACK's are fitted, what is left is jitter). rtmidi writes every
  message at the start of the next JACK period, so half a period is the floor of the spread.
- ``first_note_ms``: the daemon's process start (just before it is spawned) to the first note-on at
  the recorder (both ``perf_counter_ns``, the system's monotonic clock): the median of
  ``first_note_starts`` starts (the grid run's and quick ones after it), each kept in
  ``jack_grid.first_note_runs_ms`` (the first may be a cold start: files not in the page cache).
- ``cpu_percent_120bpm``: the daemon's CPU time (all its threads, ``/proc/PID/stat``) over the wall
  time of the steady part of the run, at 120 BPM by default.
- ``uss_mb``: the daemon's private memory (Private_Clean + Private_Dirty) at the end of the run.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from rtgen.bench.runner import JACK_PERIOD, JACK_RATE, BenchJackServer, _Daemon, percentiles_us
from rtgen.errors import RtgenError

GRID_ARGS = ("--no-synth", "--no-osc", "--mode", "autonomous", "--clock", "internal", "--quiet")
STEPS_PER_BEAT = 4


class JackRecorder:
    """A JACK client with one MIDI input that keeps every event's frame time (and note-ons' arrival).

    The process callback runs on JACK's thread in this process; it only appends to a list (this
    process's main thread just waits meanwhile).
    """

    def __init__(self, server: str, name: str) -> None:
        try:
            import jack
        except ImportError as err:  # pragma: no cover - a dependency of rtgen
            raise RtgenError("the JACK-Client package is missing: pip install JACK-Client") from err
        self._jack = jack
        self.client = jack.Client(name, servername=server, no_start_server=True)
        self.port = self.client.midi_inports.register("in")
        self.rate = self.client.samplerate
        self.period = self.client.blocksize
        self.events: list[tuple[int, bytes]] = []
        self.arrivals_ns: list[int] = []  # perf_counter_ns of the process cycle that got each event
        self.first_note_on_ns: int | None = None
        self.xruns_ns: list[int] = []  # perf_counter_ns when the server reported each xrun (any client's)
        self._lock = threading.Lock()
        self.client.set_process_callback(self._process)
        self.client.set_xrun_callback(lambda _delay_us: self.xruns_ns.append(time.perf_counter_ns()))
        self.client.activate()

    @property
    def port_name(self) -> str:
        """The full name of the recording port (``client:in``)."""
        return str(self.port.name)

    def _process(self, frames: int) -> None:
        base = self.client.last_frame_time
        now = time.perf_counter_ns()
        for offset, data in self.port.incoming_midi_events():
            msg = bytes(data)
            if self.first_note_on_ns is None and len(msg) == 3 and msg[0] & 0xF0 == 0x90 and msg[2] > 0:
                self.first_note_on_ns = now
            self.events.append((base + offset, msg))
            self.arrivals_ns.append(now)

    def note_on_frames(self, since: int = 0) -> np.ndarray:
        """JACK frame times of every note-on received (from event number ``since`` on)."""
        ons = [f for f, m in self.events[since:] if len(m) == 3 and m[0] & 0xF0 == 0x90 and m[2] > 0]
        return np.array(ons, dtype=np.int64)

    def midi_output_ports(self) -> list[str]:
        """Names of the MIDI output ports on the server."""
        return [p.name for p in self.client.get_ports(is_midi=True, is_output=True)]

    def close(self) -> None:
        """Deactivate and close the client."""
        self.client.deactivate()
        self.client.close()


def grid_deviation_us(frames: np.ndarray, rate: int, step_us: float) -> np.ndarray:
    """|Deviation| of onset times (JACK frames) from the best-fitting grid of ``step_us``, in microseconds."""
    t = frames.astype(np.float64) * 1e6 / rate
    k = np.round((t - t[0]) / step_us)
    slope, intercept = np.polyfit(k, t, 1)
    return np.abs(t - (intercept + slope * k))


@contextlib.contextmanager
def recorded_server(name: str, rate: int, period: int, work: Path) -> Iterator[tuple[BenchJackServer, JackRecorder]]:
    """The bench's own JACK server ``name`` (logs in ``work``) with a :class:`JackRecorder` on it, both closed
    at the end (the recorder first); the recorder's events stay readable after."""
    server = BenchJackServer(name, rate, period, work)
    try:
        server.start()
        recorder = JackRecorder(name, f"{name}-rec")
        try:
            yield server, recorder
        finally:
            recorder.close()
    finally:
        server.close()


def _grid_figures(onsets: np.ndarray, rate: int, tempo: float) -> dict[str, float]:
    """p50/p99/max of the onsets' grid deviation (sixteenths at ``tempo``), in microseconds."""
    step_us = 60e6 / (tempo * STEPS_PER_BEAT)
    dev = grid_deviation_us(onsets, rate, step_us) if onsets.size >= 3 else np.zeros(0)
    return percentiles_us((dev * 1000).astype(np.int64))


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _uss_mb(pid: int) -> float:
    kb = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            kb += int(line.split()[1])
    return round(kb / 1024, 1)


def bench_jack_grid(
    model_dir: Path, seconds: float = 20.0, tempo: float = 120.0, *, rate: int = JACK_RATE,
    period: int = JACK_PERIOD, startup_timeout: float = 60.0, settle_s: float = 2.0, first_note_starts: int = 5,
) -> dict[str, Any]:  # fmt: skip
    """Run the daemon for ``seconds`` at ``tempo`` into a JACK recorder; see the module docstring.

    Raises:
        RtgenError: the JACK server, the recorder or the daemon failed (with their logs).
    """
    name = f"rtgen-grid-{os.getpid()}"
    settings: dict[str, Any] = {
        "seconds": seconds, "tempo": tempo, "mode": "autonomous", "clock": "internal",
        "jack_rate": rate, "jack_period_frames": period, "model": str(model_dir),
    }  # fmt: skip
    with (
        tempfile.TemporaryDirectory(prefix="rtgen-grid-") as tmp,
        recorded_server(name, rate, period, Path(tmp)) as (server, recorder),
    ):
        settings["jack_mode"] = server.mode
        args = (*GRID_ARGS, "--tempo", str(tempo), "--midi-out", recorder.port_name)
        config = "[input]\nenabled = true\n"
        daemon = _Daemon(name, model_dir, f"{name}-daemon", Path(tmp), seconds + startup_timeout, args, config)
        try:
            first_notes = [_wait_first_note(recorder, daemon, startup_timeout)]
            time.sleep(settle_s)
            cpu0, wall0 = _cpu_seconds(daemon.proc.pid), time.perf_counter()
            time.sleep(seconds)
            cpu1, wall1 = _cpu_seconds(daemon.proc.pid), time.perf_counter()
            uss = _uss_mb(daemon.proc.pid)
            settings["daemon_threads"] = len(os.listdir(f"/proc/{daemon.proc.pid}/task"))
        finally:
            settings["daemon_exit_code"] = daemon.stop()
        ons = recorder.note_on_frames()
        events = len(recorder.events)
        for i in range(1, first_note_starts):
            recorder.first_note_on_ns = None
            quick = _Daemon(name, model_dir, f"{name}-start{i}", Path(tmp), startup_timeout, args, config)
            try:
                first_notes.append(_wait_first_note(recorder, quick, startup_timeout))
            finally:
                quick.stop()
        settings["jack_xruns"] = server.xruns()
    settings["first_note_runs_ms"] = [round(ms, 1) for ms in first_notes]
    first_note_ms = float(np.median(first_notes))
    onsets = np.unique(ons)  # a chord is one onset: its notes share the step
    settings.update(onsets=int(onsets.size), note_ons=int(ons.size), events=events)
    return {
        "jack_grid_dev_us": _grid_figures(onsets, recorder.rate, tempo),
        "jack_period_us": round(recorder.period * 1e6 / recorder.rate, 1),
        "first_note_ms": round(first_note_ms, 1),
        "cpu_percent_120bpm": round(100.0 * (cpu1 - cpu0) / (wall1 - wall0), 2),
        "uss_mb": uss,
        "jack_grid": settings,
    }


def _wait_first_note(recorder: JackRecorder, daemon: _Daemon, timeout: float) -> float:
    """Milliseconds from the daemon's spawn to its first note-on at ``recorder``."""
    deadline = time.monotonic() + timeout
    while recorder.first_note_on_ns is None:
        if daemon.proc.poll() is not None:
            raise RtgenError(f"the daemon exited with {daemon.proc.returncode}: {daemon.log_tail()}")
        if time.monotonic() > deadline:
            raise RtgenError(f"no note from the daemon in {timeout:.0f} s: {daemon.log_tail()}")
        time.sleep(0.005)
    return (recorder.first_note_on_ns - daemon.spawned_ns) / 1e6


def _free_udp_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _OscLoad:
    """A controller that hammers the daemon: status requests, temperature and density changes, at ``rate``/s.

    Also subscribes a second socket to the daemon's feedback and counts what comes back on both.
    """

    def __init__(self, port: int, rate: float, seed: int = 0) -> None:
        import socket

        from pythonosc.osc_message_builder import OscMessageBuilder

        self._builder = OscMessageBuilder
        self.target = ("127.0.0.1", port)
        self.rate = rate
        self.sent = 0
        self.replies = 0
        self.feedback = 0
        self._rng = np.random.default_rng(seed)
        self._stop = threading.Event()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.fb = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.fb.bind(("127.0.0.1", 0))
        self.fb.settimeout(0.2)
        self._threads = [
            threading.Thread(target=self._count, args=(self.sock, "replies"), daemon=True),
            threading.Thread(target=self._count, args=(self.fb, "feedback"), daemon=True),
        ]

    def message(self, address: str, *args: Any) -> bytes:
        """One OSC datagram."""
        b = self._builder(address)
        for a in args:
            b.add_arg(a)
        return bytes(b.build().dgram)

    def _count(self, sock: Any, what: str) -> None:
        while not self._stop.is_set():
            try:
                sock.recv(65536)
            except OSError:
                continue
            setattr(self, what, getattr(self, what) + 1)

    def run(self, seconds: float) -> float:
        """Subscribe, then send for ``seconds``; returns the achieved rate (messages/s)."""
        for t in self._threads:
            t.start()
        self.sock.sendto(self.message("/rtgen/subscribe", "127.0.0.1", int(self.fb.getsockname()[1])), self.target)
        gap = 1.0 / self.rate
        t0 = time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < seconds:
            kind = self.sent % 3
            if kind == 0:
                data = self.message("/rtgen/status")
            elif kind == 1:
                data = self.message("/rtgen/temperature", float(self._rng.uniform(0.5, 1.5)))
            else:
                data = self.message("/rtgen/density", float(self._rng.uniform(0.5, 2.0)))
            self.sock.sendto(data, self.target)
            self.sent += 1
            ahead = self.sent * gap - elapsed
            if ahead > 0:
                time.sleep(ahead)
        return self.sent / (time.perf_counter() - t0)

    def status(self, timeout: float = 5.0) -> dict[str, Any]:
        """Ask ``/rtgen/status`` on a fresh socket and return the parsed state."""
        import json
        import socket

        from pythonosc.osc_message import OscMessage

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            s.settimeout(timeout)
            s.sendto(self.message("/rtgen/status"), self.target)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                msg = OscMessage(s.recv(65536))
                if msg.address == "/rtgen/status":
                    return dict(json.loads(msg.params[0]))
        raise RtgenError("the daemon did not answer /rtgen/status")

    def close(self) -> None:
        """Stop the counting threads and close the sockets."""
        self._stop.set()
        for t in self._threads:
            if t.is_alive():
                t.join(1)
        self.sock.close()
        self.fb.close()


def bench_osc_load(
    model_dir: Path, seconds: float = 30.0, tempo: float = 400.0, rate_per_s: float = 600.0, *,
    jack_rate: int = JACK_RATE, period: int = JACK_PERIOD, startup_timeout: float = 60.0,
) -> dict[str, Any]:  # fmt: skip
    """The daemon at ``tempo`` with OSC feedback on and a controller sending ``rate_per_s`` messages.

    Other Python threads (the OSC server, feedback, status replies) compete for the GIL with the
    real-time loop; the figure is the daemon's own count of late steps (``/rtgen/status``) and the
    onsets' grid deviation at a JACK recorder.
    """
    name = f"rtgen-load-{os.getpid()}"
    result: dict[str, Any] = {"tempo": tempo, "seconds": seconds, "osc_rate_asked": rate_per_s}
    port = _free_udp_port()
    with (
        tempfile.TemporaryDirectory(prefix="rtgen-load-") as tmp,
        recorded_server(name, jack_rate, period, Path(tmp)) as (server, recorder),
    ):
        result["jack_mode"] = server.mode
        args = (
            "--no-synth", "--mode", "autonomous", "--clock", "internal", "--quiet", "--tempo", str(tempo),
            "--midi-out", recorder.port_name, "--osc-port", str(port),
        )  # fmt: skip
        daemon = _Daemon(name, model_dir, f"{name}-daemon", Path(tmp), seconds + startup_timeout, args)
        load = _OscLoad(port, rate_per_s)
        try:
            deadline = time.monotonic() + startup_timeout
            while recorder.first_note_on_ns is None:
                if daemon.proc.poll() is not None or time.monotonic() > deadline:
                    raise RtgenError(f"the daemon did not start playing: {daemon.log_tail()}")
                time.sleep(0.01)
            before = load.status()
            result["osc_rate"] = round(load.run(seconds), 1)
            after = load.status()
            result.update(
                osc_sent=load.sent, status_replies=load.replies, feedback_messages=load.feedback,
                steps=after["steps"] - before["steps"], late_steps=after["late_steps"] - before["late_steps"],
                max_late_us=after["max_late_us"], dropped_late_notes=after.get("dropped_late_notes"),
                osc_errors=after["osc_errors"], realtime=after["realtime"],
            )  # fmt: skip
        finally:
            load.close()
            result["daemon_exit_code"] = daemon.stop()
    result["jack_grid_dev_us"] = _grid_figures(np.unique(recorder.note_on_frames()), recorder.rate, tempo)
    return result

"""Performance measurements: one engine step, and the real clock + scheduler loop.

``inference_us``: one engine step (chord model + note model + sampling + masks), one
onnxruntime thread, after a warm-up. ``schedule_error_us``: actual send time minus
deadline for every event of the real real-time loop (real clock, real engine, real
voicer) at 300 BPM sixteenths into a null sink. Plus late steps, CPU % of the
process during the loop, private memory and the machine.

``reactive_latency_us``: the real daemon (``rtgen run --mode accompany --clock midi``, a
subprocess) on the bench's own real-time JACK server, driven by a probe client that sends a
MIDI clock and melody notes on beats 1 and 3: time from sending a note to the arrival of the
first chord or bass note-on the daemon plays in answer (see :func:`bench_reactive`).
"""

from __future__ import annotations

import bisect
import contextlib
import gc
import json
import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rtgen.config import AccompanyConfig, PartsConfig
from rtgen.errors import RtgenError
from rtgen.io.scheduler import Scheduler
from rtgen.timing.clock import LatenessStats, StepClock, release_realtime, request_realtime

TARGET_P99_US = 300.0


def percentiles_us(samples_ns: list[int] | np.ndarray) -> dict[str, float]:
    """p50/p99/max (and count) of nanosecond samples, in microseconds."""
    a = np.asarray(samples_ns, dtype=np.float64) / 1000.0
    if a.size == 0:
        return {"p50": 0.0, "p99": 0.0, "max": 0.0, "count": 0}
    return {
        "p50": round(float(np.percentile(a, 50)), 1),
        "p99": round(float(np.percentile(a, 99)), 1),
        "max": round(float(a.max()), 1),
        "count": int(a.size),
    }


def private_memory_mb() -> float | None:
    """Private_Clean + Private_Dirty of this process in MB (None where /proc is missing)."""
    try:
        text = Path("/proc/self/smaps_rollup").read_text()
    except OSError:
        return None
    kb = 0
    for line in text.splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            kb += int(line.split()[1])
    return round(kb / 1024, 1)


def machine() -> dict[str, Any]:
    """Platform, Python, CPU count, onnxruntime version."""
    import onnxruntime

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "onnxruntime": onnxruntime.__version__,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def bench_inference(
    model_dir: Path, steps: int = 2000, warmup: int = 200, seed: int = 0, realtime_priority: int = 10
) -> dict[str, float]:
    """Time ``steps`` engine steps (after ``warmup``) with one thread, as the daemon's loop runs them.

    Like the loop: SCHED_FIFO ``realtime_priority`` where allowed (0: normal scheduling) and the heap frozen,
    so another process or a full collection does not land in the figure; ``realtime`` says which it was.
    """
    from rtgen.generation.engine import Engine, Params
    from rtgen.generation.model import Model

    engine = Engine(Model.load(model_dir, threads=1), Params(), seed=seed)
    for _ in range(warmup):
        engine.step()
    times = np.empty(steps, dtype=np.int64)
    clock = time.perf_counter_ns
    gc.collect()
    gc.freeze()
    realtime = request_realtime(realtime_priority)
    try:
        for i in range(steps):
            t = clock()
            engine.step()
            times[i] = clock() - t
    finally:
        if realtime:
            release_realtime()
        gc.unfreeze()
    return {**percentiles_us(times), "realtime": realtime}


def bench_schedule(
    model_dir: Path, seconds: float = 60.0, tempo: float = 300.0, seed: int = 0, realtime_priority: int = 10
) -> dict[str, Any]:
    """Run the real-time loop for ``seconds`` at ``tempo`` (sixteenths) into a null sink.

    The loop asks for SCHED_FIFO ``realtime_priority`` as the daemon does (``realtime`` in the result says
    whether it was granted).
    """
    from rtgen.arrange.voicing import Voicer
    from rtgen.generation.engine import Engine, Params
    from rtgen.generation.model import Model
    from rtgen.io.sinks import NullSink
    from rtgen.live.loop import LiveLoop

    params = Params()
    sched = Scheduler([NullSink()], keep_history=True)
    clock = StepClock(tempo)
    clock.stats = LatenessStats(late_threshold_ns=clock.stats.late_threshold_ns, keep_history=True)
    player = LiveLoop(
        Engine(Model.load(model_dir, threads=1), params, seed=seed),
        Voicer(PartsConfig(), seed=seed),
        sched,
        clock,
        params,
        PartsConfig(),
    )
    realtime = request_realtime(realtime_priority)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    real0, mono0 = time.time_ns(), time.perf_counter_ns()
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    try:
        player.run(seconds)
    finally:
        if realtime:
            release_realtime()
    cpu = time.process_time() - cpu0
    wall = time.perf_counter() - wall0
    real1, mono1 = time.time_ns(), time.perf_counter_ns()
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    errors = np.asarray(sched.errors.history, dtype=np.float64)
    edge = max(1, min(200, errors.size // 10))
    # Drift: how far the send-time error moved from the start to the end of the run (deadlines are
    # absolute, so a drifting schedule shows up here); and the performance counter against the wall clock.
    drift_us = float(np.median(errors[-edge:]) - np.median(errors[:edge])) / 1000 if errors.size else 0.0
    return {
        "realtime": realtime,
        "schedule_drift_us": round(drift_us, 1),
        "perf_counter_vs_wall_clock_us": round(((mono1 - mono0) - (real1 - real0)) / 1000, 1),
        "tempo": tempo,
        "seconds": round(wall, 2),
        "schedule_error_us": percentiles_us(sched.errors.history),
        "step_wakeup_late_us": percentiles_us(clock.stats.history),
        "events": sched.sent,
        "steps": clock.stats.steps,
        "late_steps": clock.stats.late_steps,
        "late_events": sched.errors.late_steps,
        "late_threshold_us": clock.stats.late_threshold_ns / 1000,
        "cpu_percent": round(100.0 * cpu / wall, 1) if wall > 0 else 0.0,
        "spin_us": player.spin_tuner.spin_ns / 1000 if player.spin_tuner is not None else None,
        "worst_wakeup_us": player.spin_tuner.worst_ns / 1000 if player.spin_tuner is not None else None,
        "involuntary_context_switches": ru1.ru_nivcsw - ru0.ru_nivcsw,
    }


# --- reactive latency through JACK ----------------------------------------------------------------------------

JACK_RATE = 48_000
JACK_PERIOD = 256
REACTIVE_TEMPO = 240.0
PPQN = 24
TICKS_PER_BAR = 4 * PPQN  # the daemon's default 4/4
PROBE_EVERY_TICKS = 2 * PPQN  # beats 1 and 3: the bass strikes on the downbeat and the middle of the bar
WARMUP_BARS = 1
PROBE_PITCHES = (60, 62, 64, 65, 67, 69, 71, 72)
SCHED_FIFO, SCHED_RR = 1, 2


def reactive_target_us(period_frames: int = JACK_PERIOD, rate: int = JACK_RATE) -> float:
    """The issue's target for the reactive latency: two JACK periods + 1 ms, in microseconds."""
    return round(2 * period_frames * 1e6 / rate + 1000.0, 1)


def thread_policies(pid: int) -> list[int]:
    """Scheduling policy of every thread of ``pid`` (0 other, 1 FIFO, 2 RR); empty where /proc is missing."""
    policies = []
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        policies.append(int(fields[38]))  # field 41 of stat(5); the split starts at field 3
    return policies


def has_realtime_thread(pid: int) -> bool:
    """Some thread of ``pid`` runs SCHED_FIFO or SCHED_RR."""
    return any(p in (SCHED_FIFO, SCHED_RR) for p in thread_policies(pid))


def jack_env(server: str) -> dict[str, str]:
    """An environment whose JACK clients talk to ``server`` and never start one."""
    env = dict(os.environ)
    env["JACK_DEFAULT_SERVER"] = server
    env["JACK_NO_START_SERVER"] = "1"
    return env


class BenchJackServer:
    """The bench's own ``jackd`` (dummy backend): real-time (``-R -P 70``) if allowed, else synchronous ``-S``.

    ``mode`` is ``"realtime"`` or ``"sync-nonrealtime"``; ``fallback_reason`` says why real-time was not used.
    """

    def __init__(
        self, name: str, rate: int = JACK_RATE, period: int = JACK_PERIOD, log_dir: Path | None = None,
        *, sync: bool = False,
    ) -> None:  # fmt: skip
        self.name = name
        self.sync = sync  # -S: every client is waited for each cycle (none misses one, so no MIDI is lost)
        self.rate = rate
        self.period = period
        self.log_path = (log_dir or Path(tempfile.gettempdir())) / f"{name}.jackd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.mode = ""
        self.fallback_reason: str | None = None

    def start(self, timeout: float = 15.0) -> BenchJackServer:
        """Start the server and wait until clients can connect.

        Raises:
            RtgenError: jackd is missing or did not start in either mode (the message has its log).
        """
        exe = shutil.which("jackd")
        if exe is None:
            raise RtgenError("jackd not found (apt-get install -y --no-install-recommends jackd2)")
        from rtgen.io.jackshm import reclaim_dead_servers

        reclaim_dead_servers()  # jackd2 never frees the registry slots of killed servers of other names
        driver = ["-d", "dummy", "-r", str(self.rate), "-p", str(self.period)]
        sync = ["-S"] if self.sync else []
        try:
            self._launch([exe, "-n", self.name, "-R", "-P", "70", *sync, *driver], timeout)
            assert self.proc is not None
            # jackd keeps running when SCHED_FIFO is refused (it logs "Cannot use real-time scheduling")
            if has_realtime_thread(self.proc.pid):
                self.mode = "realtime"
                return self
            self.fallback_reason = "jackd -R runs without a real-time thread: " + self._log_tail(300)
        except RtgenError as err:
            self.fallback_reason = str(err)
        self.stop()
        self._launch([exe, "-n", self.name, "--no-realtime", "-S", "-t", "5000", *driver], timeout)
        self.mode = "sync-nonrealtime"
        return self

    def _launch(self, cmd: list[str], timeout: float) -> None:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=jack_env(self.name)
            )
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self.proc.poll() is not None:
                raise RtgenError(f"{' '.join(cmd)} exited with {self.proc.returncode}: {self._log_tail()}")
            if time.monotonic() >= deadline:
                raise RtgenError(f"{' '.join(cmd)} not ready after {timeout:.0f} s: {self._log_tail()}")
            time.sleep(0.1)

    def _ready(self) -> bool:
        lsp = shutil.which("jack_lsp")
        if lsp is not None:
            env = jack_env(self.name)
            return subprocess.run([lsp], env=env, capture_output=True, timeout=10, check=False).returncode == 0
        import rtmidi

        from rtgen.io.ports import captured_stderr

        with captured_stderr(), _jack_clients_env(self.name):
            try:
                rtmidi.MidiOut(rtmidi.API_UNIX_JACK, name=f"{self.name}-ready").delete()
            except rtmidi.RtMidiError:
                return False
        return True

    def _log_tail(self, chars: int = 1500) -> str:
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
        """Terminate jackd (SIGTERM, then SIGKILL); idempotent."""
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


@contextlib.contextmanager
def _jack_clients_env(server: str) -> Iterator[None]:
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


def _sleep_until(t_ns: int, spin_ns: int = 300_000) -> None:
    """Sleep, then spin on perf_counter_ns for the last ``spin_ns`` (short: the daemon shares the two cores)."""
    clock = time.perf_counter_ns
    while (left := t_ns - clock()) > spin_ns:
        time.sleep((left - spin_ns) / 1e9)
    while clock() < t_ns:
        pass


REACTIVE_ARGS = ("--no-synth", "--no-osc", "--mode", "accompany", "--clock", "midi", "--quiet")


class _Daemon:
    """``python -m rtgen run --backend jack ...`` (by default ``--mode accompany --clock midi``) as a subprocess."""

    def __init__(
        self, server: str, model_dir: Path, client: str, work: Path, duration: float,
        args: Sequence[str] = REACTIVE_ARGS, config_text: str = "",
    ) -> None:  # fmt: skip
        import rtgen

        self.client = client
        config = work / "daemon.toml"
        config.write_text(f'[midi]\nclient_name = "{client}"\n' + config_text)
        self.log_path = work / "daemon.log"
        self.env = env = jack_env(server)
        root = str(Path(rtgen.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["PYTHONUNBUFFERED"] = "1"
        cmd = [
            sys.executable, "-m", "rtgen", "run", "--config", str(config), "--model", str(model_dir),
            "--backend", "jack", *args, "--duration", str(duration),
        ]  # fmt: skip
        self.spawned_ns = time.perf_counter_ns()
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        # JACK renames a second client of the same name (CLIENT-01), and the daemon's input is its second client
        self.port_re = re.compile(rf"^{re.escape(client)}(-\d+)?:(in|out)$")

    def log_tail(self, chars: int = 1500) -> str:
        """The end of the daemon's output."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:].strip()
        except OSError:
            return "(no log)"

    def find_port(self, kind: str, timeout: float, ports: Callable[[], list[str]]) -> str:
        """The daemon's ``in`` or ``out`` port among ``ports()``, waiting for it to appear."""
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


def bench_reactive(
    model_dir: Path, seconds: float = 32.0, tempo: float = REACTIVE_TEMPO, *, rate: int = JACK_RATE,
    period: int = JACK_PERIOD, startup_timeout: float = 60.0,
) -> dict[str, Any]:  # fmt: skip
    """Reactive latency of the real daemon in accompany mode, measured through the bench's own JACK server.

    A probe client sends a 24-ppqn MIDI clock at ``tempo`` and, right after the tick of beats 1 and 3 of
    every bar after the first, a melody note; the latency of a probe is the arrival of the first note-on on
    the chords or bass channel after it, minus its send time (both ``perf_counter_ns`` in this process).

    Returns:
        ``reactive_latency_us`` ({p50, p99, max, n}, or None with ``reactive_latency_skipped``),
        ``jack_period_us`` and ``reactive`` (the settings and counts).

    Raises:
        RtgenError: the JACK server or the daemon failed (with their logs).
    """
    period_us = round(period * 1e6 / rate, 1)
    settings: dict[str, Any] = {
        "seconds": seconds, "tempo": tempo, "probe_beats": [1, 3], "warmup_bars": WARMUP_BARS,
        "jack_rate": rate, "jack_period_frames": period, "model": str(model_dir),
        "reactive_window_ms": AccompanyConfig().reactive_window_ms,
    }  # fmt: skip
    result: dict[str, Any] = {"reactive_latency_us": None, "jack_period_us": period_us, "reactive": settings}
    if shutil.which("jackd") is None:
        result["reactive_latency_skipped"] = "jackd not found (apt-get install -y --no-install-recommends jackd2)"
        return result
    from rtgen.generation.model import Model

    if not Model.load(model_dir, threads=1).can_harmonise:
        result["reactive_latency_skipped"] = (
            f"model {model_dir} has no harmony.onnx, so it cannot accompany; pass --reactive-model with one that has"
        )
        return result
    name = f"rtgen-bench-{os.getpid()}"
    with tempfile.TemporaryDirectory(prefix="rtgen-bench-") as tmp:
        server = BenchJackServer(name, rate, period, Path(tmp))
        try:
            server.start()
            settings["jack_mode"] = server.mode
            settings["jack_fallback_reason"] = server.fallback_reason
            duration = seconds + startup_timeout + 30.0  # a stray daemon stops by itself; we SIGINT it first
            daemon = _Daemon(name, model_dir, f"{name}-daemon", Path(tmp), duration)
            try:
                with _jack_clients_env(name):
                    sends, arrivals, daemon_rt = _probe(name, daemon, seconds, tempo, startup_timeout)
            finally:
                settings["daemon_exit_code"] = daemon.stop()
            settings["daemon_realtime_thread"] = daemon_rt
            settings["jack_xruns"] = server.xruns()
        finally:
            server.close()
    parts = PartsConfig()
    channels = {parts.chords.channel - 1, parts.bass.channel - 1}
    latencies, missed = _match(sends, arrivals, channels)
    stats = percentiles_us(latencies)
    result["reactive_latency_us"] = {"p50": stats["p50"], "p99": stats["p99"], "max": stats["max"], "n": stats["count"]}
    settings.update(probes=len(sends), unanswered=missed, answer_channels=sorted(c + 1 for c in channels))
    return result


def receive_main(argv: list[str] | None = None) -> None:
    """The probe's MIDI input, in a child process: ``SERVER CLIENT SOURCE``.

    Prints ``ready`` once connected to ``SOURCE``, records ``[perf_counter_ns, message]`` of everything it
    sends until a line arrives on stdin, then prints them as one JSON line. Its own process, so that
    rtmidi's callback (on JACK's thread, needing the GIL) never waits behind the sender's timing loop:
    the main thread here only blocks on stdin.
    """
    server, name, source = argv if argv is not None else sys.argv[1:4]
    os.environ.update(jack_env(server))
    import rtmidi

    from rtgen.io.ports import captured_stderr

    arrivals: list[tuple[int, list[int]]] = []
    clock = time.perf_counter_ns

    def on_message(event: tuple[list[int], float], data: object = None) -> None:
        arrivals.append((clock(), event[0]))

    with captured_stderr():
        midi_in = rtmidi.MidiIn(rtmidi.API_UNIX_JACK, name=name)
    try:
        midi_in.ignore_types(sysex=True, timing=True, active_sense=True)
        midi_in.set_callback(on_message)
        midi_in.open_port(list(midi_in.get_ports()).index(source), "in")
        print("ready", flush=True)
        sys.stdin.readline()
        midi_in.cancel_callback()
        print(json.dumps(arrivals), flush=True)
    finally:
        midi_in.close_port()
        midi_in.delete()


def _probe(
    server: str, daemon: _Daemon, seconds: float, tempo: float, startup_timeout: float
) -> tuple[list[int], list[Any], bool]:
    """Clock + probe notes into the daemon; returns the send times, the arrivals and whether it ran real-time."""
    import rtmidi

    from rtgen.io.ports import captured_stderr

    clock = time.perf_counter_ns
    with captured_stderr():
        midi_out = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, name=f"{server}-probe-out")
        lister = rtmidi.MidiIn(rtmidi.API_UNIX_JACK, name=f"{server}-probe-list")
    sends: list[int] = []
    realtime = False
    receiver: subprocess.Popen[str] | None = None
    try:
        try:
            source = daemon.find_port("out", startup_timeout, lister.get_ports)
        finally:
            lister.delete()  # an idle client is one more for JACK to run each cycle
        target = daemon.find_port("in", startup_timeout, midi_out.get_ports)
        midi_out.open_port(list(midi_out.get_ports()).index(target), "out")
        code = "import sys; from rtgen.bench.runner import receive_main; receive_main()"
        receiver = subprocess.Popen(
            [sys.executable, "-c", code, server, f"{server}-probe-in", source],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=daemon.env, text=True,
        )  # fmt: skip
        assert receiver.stdin is not None and receiver.stdout is not None
        if receiver.stdout.readline().strip() != "ready":
            raise RtgenError(f"the probe's MIDI input could not connect to {source} (exit {receiver.poll()})")
        time.sleep(0.5)  # connections made, the daemon's player loop running
        daemon_rt = has_realtime_thread(daemon.proc.pid)
        tick_ns = 60e9 / (tempo * PPQN)
        n_ticks = int((seconds + WARMUP_BARS * 4 * 60.0 / tempo) * 1e9 / tick_ns)
        realtime = request_realtime(10)
        midi_out.send_message([0xFA])
        t0 = clock() + 20_000_000
        off_at: dict[int, list[int]] = {}
        for i in range(n_ticks):
            _sleep_until(t0 + int(i * tick_ns))
            midi_out.send_message([0xF8])
            if i >= WARMUP_BARS * TICKS_PER_BAR and i % PROBE_EVERY_TICKS == 0:
                pitch = PROBE_PITCHES[len(sends) % len(PROBE_PITCHES)]
                t_send = clock()
                midi_out.send_message([0x90, pitch, 100])
                sends.append(t_send)
                off_at[i + PPQN // 2] = [0x80, pitch, 0]  # half a beat later
            off = off_at.pop(i, None)
            if off is not None:
                midi_out.send_message(off)
        midi_out.send_message([0xFC])
        if realtime:
            release_realtime()
            realtime = False
        time.sleep(0.3)  # answers still on their way
        receiver.stdin.write("stop\n")
        receiver.stdin.flush()
        line = receiver.stdout.readline()
        if not line:
            raise RtgenError(f"the probe's MIDI input exited with {receiver.wait(5)} before reporting")
        arrivals = json.loads(line)
    finally:
        if realtime:
            release_realtime()
        if receiver is not None:
            try:
                receiver.wait(5)
            except subprocess.TimeoutExpired:
                receiver.kill()
                receiver.wait(5)
        midi_out.close_port()
        midi_out.delete()
    return sends, arrivals, daemon_rt


def _match(sends: list[int], arrivals: list[tuple[int, list[int]]], channels: set[int]) -> tuple[list[int], int]:
    """Latency of each probe: its first answering note-on before the next probe; and how many got none."""
    ons = [t for t, m in arrivals if len(m) == 3 and m[0] & 0xF0 == 0x90 and m[2] > 0 and m[0] & 0x0F in channels]
    latencies: list[int] = []
    missed = 0
    for k, t_send in enumerate(sends):
        limit = sends[k + 1] if k + 1 < len(sends) else None
        j = bisect.bisect_left(ons, t_send)
        if j < len(ons) and (limit is None or ons[j] < limit):
            latencies.append(ons[j] - t_send)
        else:
            missed += 1
    return latencies, missed


@contextlib.contextmanager
def busy_core() -> Iterator[int]:
    """A second process that keeps one core busy (a spinning Python loop) for the duration; yields its pid."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL)
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait(5)


def _skipped(what: str, err: Exception) -> dict[str, Any]:
    return {f"{what}_skipped": f"{type(err).__name__}: {err}"}


def run_bench(
    model_dir: Path,
    seconds: float = 60.0,
    inference_steps: int = 2000,
    *,
    reactive_seconds: float = 32.0,
    reactive_model: Path | None = None,
    jack_seconds: float = 20.0,
    load_seconds: float = 30.0,
    swap_seconds: float = 20.0,
    web_seconds: float = 15.0,
    soundfonts: Sequence[Path] = (),
    busy: bool = True,
) -> dict[str, Any]:
    """The full benchmark as JSON-ready data (a phase given 0 seconds is left out, with the reason).

    Phases: inference; the schedule at 300 BPM (with a second process keeping one core busy unless
    ``busy`` is False); the daemon through JACK at 120 BPM (grid, first note, CPU, memory); the daemon
    under an OSC load at 400 BPM; the reactive latency; soundfont swaps while playing; the daemon at 400 BPM
    with its web page's feed taken and with the page open in headless Chromium (:mod:`rtgen.bench.webpage`).
    """
    inference = bench_inference(model_dir, steps=inference_steps)
    if busy:
        with busy_core():
            schedule = bench_schedule(model_dir, seconds=seconds)
    else:
        schedule = bench_schedule(model_dir, seconds=seconds)
    schedule["busy_core"] = busy
    memory = private_memory_mb()  # before the reactive run: its JACK clients are not part of the engine's cost
    result: dict[str, Any] = {
        "model": str(model_dir),
        "inference_us": inference,
        "schedule_error_us": schedule.pop("schedule_error_us"),
        "schedule": schedule,
        "late_steps": schedule["late_steps"],
        "cpu_percent": schedule["cpu_percent"],
        "private_memory_mb": memory,
    }
    period_us = round(JACK_PERIOD * 1e6 / JACK_RATE, 1)
    if jack_seconds > 0:
        from rtgen.bench.jackrun import bench_jack_grid

        try:
            result.update(bench_jack_grid(model_dir, seconds=jack_seconds))
        except RtgenError as err:
            result.update(jack_grid_dev_us=None, **_skipped("jack_grid", err))
    else:
        result.update(jack_grid_dev_us=None, jack_grid_skipped="--jack-seconds 0")
    if load_seconds > 0:
        from rtgen.bench.jackrun import bench_osc_load

        try:
            result["osc_load"] = bench_osc_load(model_dir, seconds=load_seconds)
        except RtgenError as err:
            result.update(osc_load=None, **_skipped("osc_load", err))
    else:
        result.update(osc_load=None, osc_load_skipped="--load-seconds 0")
    if reactive_seconds > 0:
        reactive = bench_reactive(reactive_model or model_dir, seconds=reactive_seconds)
    else:
        reactive = {"reactive_latency_us": None, "reactive_latency_skipped": "--reactive-seconds 0"}
    result.update(reactive)
    result["jack_period_us"] = result.get("jack_period_us", period_us)
    if swap_seconds > 0:
        result.update(bench_soundfont_swaps(model_dir, list(soundfonts), seconds=swap_seconds))
    else:
        result.update(soundfont_swap_schedule_error_us=None, soundfont_swap_skipped="--swap-seconds 0")
    if web_seconds > 0:
        from rtgen.bench.webpage import bench_web_page

        try:
            result["web_page"] = bench_web_page(model_dir, seconds=web_seconds)
        except RtgenError as err:
            result.update(web_page=None, **_skipped("web_page", err))
    else:
        result.update(web_page=None, web_page_skipped="--web-seconds 0")
    result["targets"] = targets(result)
    result["machine"] = machine()
    result["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return result


def bench_soundfont_swaps(model_dir: Path, soundfonts: list[Path], seconds: float = 20.0) -> dict[str, Any]:
    """Schedule error while the internal synth loads another soundfont mid-play (see :mod:`rtgen.bench.swaps`)."""
    fonts = soundfonts or _system_soundfonts()
    if len(fonts) < 2:
        return {
            "soundfont_swap_schedule_error_us": None,
            "soundfont_swap_skipped": f"two soundfonts needed, found {[str(f) for f in fonts]}",
        }
    from rtgen.bench.swaps import measure_soundfont_swaps

    swaps = measure_soundfont_swaps(
        fonts[:2], seconds=seconds, bpm=300.0, swaps=max(2, int(seconds)), model_dir=model_dir
    )
    # the same rig without a swap: what the synth's own note-ons cost (FluidR3's 20-130 us each, in a row)
    still = measure_soundfont_swaps(fonts[1::-1], seconds=seconds / 2, bpm=300.0, swaps=0, model_dir=model_dir)
    return {
        "soundfont_swap_schedule_error_us": swaps.get("schedule_error_us"),
        "soundfont_swap": swaps,
        "soundfont_still_schedule_error_us": still.get("schedule_error_us"),
        "soundfont_still": still,
    }


def _system_soundfonts() -> list[Path]:
    """Distinct ``.sf2`` files of the usual system folder, the smallest first (Debian: TimGM6mb, FluidR3)."""
    folder = Path("/usr/share/sounds/sf2")
    seen: dict[Path, Path] = {}
    with contextlib.suppress(OSError):
        for p in sorted(folder.glob("*.sf2")):
            seen.setdefault(p.resolve(), p)
    return sorted(seen.values(), key=lambda p: p.stat().st_size)


TARGETS = {
    "inference_p99_us": TARGET_P99_US,
    "schedule_error_p99_us": TARGET_P99_US,
    "cpu_percent_120bpm": 3.0,
    "uss_mb": 120.0,
    "first_note_ms": 1000.0,
}


def targets(result: dict[str, Any]) -> dict[str, Any]:
    """Each target of issue #7 beside whether this run met it (None: not measured)."""
    period_us = float(result["jack_period_us"])

    def p99(key: str) -> float | None:
        value = result.get(key)
        return float(value["p99"]) if isinstance(value, dict) and value.get("count", value.get("n", 0)) else None

    def ok(value: float | None, limit: float) -> bool | None:
        return None if value is None else value <= limit

    out: dict[str, Any] = dict(TARGETS)
    out["jack_grid_dev_p99_us"] = round(period_us / 2 + 1000.0, 1)
    out["reactive_latency_p99_us"] = round(2 * period_us + 1000.0, 1)
    swap = result.get("soundfont_swap_schedule_error_us")
    load = result.get("osc_load") or {}
    page = (result.get("web_page") or {}).get("browser") or {}
    out.update(
        inference_ok=ok(p99("inference_us"), TARGET_P99_US),
        schedule_error_ok=ok(p99("schedule_error_us"), TARGET_P99_US),
        jack_grid_dev_ok=ok(p99("jack_grid_dev_us"), out["jack_grid_dev_p99_us"]),
        reactive_latency_ok=ok(p99("reactive_latency_us"), out["reactive_latency_p99_us"]),
        cpu_ok=ok(result.get("cpu_percent_120bpm"), 3.0),
        uss_ok=ok(result.get("uss_mb"), 120.0),
        first_note_ok=ok(result.get("first_note_ms"), 1000.0),
        soundfont_swap_ok=ok(float(swap["p99"]) if swap else None, TARGET_P99_US),
        osc_load_late_steps_ok=(load.get("late_steps") == 0) if load else None,
        web_page_ok=ok(page["schedule_error_us"]["p99"], TARGET_P99_US) if page else None,
    )
    return out

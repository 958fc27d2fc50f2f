"""Reactive latency through JACK (a phase of ``rtgen bench``).

``reactive_latency_us``: the real daemon (``rtgen run --mode accompany --clock midi``, a
subprocess) on the bench's own real-time JACK server, driven by a probe client that sends a
MIDI clock and melody notes on beats 1 and 3: time from sending a note to the arrival of the
first chord or bass note-on the daemon plays in answer (see :func:`bench_reactive`).
"""

from __future__ import annotations

import bisect
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rtgen.bench.harness import (
    PERIOD_FRAMES,
    SAMPLE_RATE,
    DaemonProcess,
    JackServer,
    is_note_on,
    jack_clients_env,
    jack_env,
    jackd_path,
)
from rtgen.bench.measure import has_realtime_thread, percentiles_us, sleep_until
from rtgen.config import AccompanyConfig, PartsConfig
from rtgen.errors import RtgenError
from rtgen.midi.messages import CHANNEL_MASK, CLOCK, NOTE_OFF, NOTE_ON, START, STOP
from rtgen.timing.clock import release_realtime, request_realtime

REACTIVE_TEMPO = 240.0
PPQN = 24
TICKS_PER_BAR = 4 * PPQN  # the daemon's default 4/4
PROBE_EVERY_TICKS = 2 * PPQN  # beats 1 and 3: the bass strikes on the downbeat and the middle of the bar
WARMUP_BARS = 1
PROBE_PITCHES = (60, 62, 64, 65, 67, 69, 71, 72)


def reactive_target_us(period_frames: int = PERIOD_FRAMES, rate: int = SAMPLE_RATE) -> float:
    """The issue's target for the reactive latency: two JACK periods + 1 ms, in microseconds."""
    return round(2 * period_frames * 1e6 / rate + 1000.0, 1)


REACTIVE_ARGS = ("--no-synth", "--no-osc", "--mode", "accompany", "--clock", "midi", "--quiet")


def bench_reactive(
    model_dir: Path, seconds: float = 32.0, tempo: float = REACTIVE_TEMPO, *, rate: int = SAMPLE_RATE,
    period: int = PERIOD_FRAMES, startup_timeout: float = 60.0,
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
    if jackd_path() is None:
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
        server = JackServer(name, rate, period, Path(tmp), realtime=True, sync=False)
        try:
            server.start()
            settings["jack_mode"] = server.mode
            settings["jack_fallback_reason"] = server.fallback_reason
            duration = seconds + startup_timeout + 30.0  # a stray daemon stops by itself; we SIGINT it first
            daemon = DaemonProcess(name, model_dir, f"{name}-daemon", Path(tmp), duration, REACTIVE_ARGS)
            try:
                with jack_clients_env(name):
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
    server: str, daemon: DaemonProcess, seconds: float, tempo: float, startup_timeout: float
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
        code = "import sys; from rtgen.bench.reactive import receive_main; receive_main()"
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
        midi_out.send_message([START])
        t0 = clock() + 20_000_000
        off_at: dict[int, list[int]] = {}
        for i in range(n_ticks):
            sleep_until(t0 + int(i * tick_ns))
            midi_out.send_message([CLOCK])
            if i >= WARMUP_BARS * TICKS_PER_BAR and i % PROBE_EVERY_TICKS == 0:
                pitch = PROBE_PITCHES[len(sends) % len(PROBE_PITCHES)]
                t_send = clock()
                midi_out.send_message([NOTE_ON, pitch, 100])
                sends.append(t_send)
                off_at[i + PPQN // 2] = [NOTE_OFF, pitch, 0]  # half a beat later
            off = off_at.pop(i, None)
            if off is not None:
                midi_out.send_message(off)
        midi_out.send_message([STOP])
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
    ons = [t for t, m in arrivals if is_note_on(m) and m[0] & CHANNEL_MASK in channels]
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

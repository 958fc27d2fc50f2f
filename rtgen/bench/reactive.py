"""Reactive latency and chords on the beat through JACK (two phases of ``rtgen bench``).

Both run the real daemon (``rtgen run --mode accompany --clock midi``, a subprocess) on the bench's own
real-time JACK server, driven by a client that sends a MIDI clock and melody notes:

* ``reactive_latency_us``: a probe note on beats 1 and 3, timed from its send to the arrival of the first
  chord or bass note-on the daemon plays in answer (:func:`bench_reactive`);
* ``accompany_grid_us``: a chorale melody played tight and loose; each step's first chord or bass note-on
  timed from the beat's clock tick (:func:`bench_accompany_grid`);
* ``chorale_latency_us``: the same probes into ``--mode chorale``, timed to the first of the voices the daemon
  sings under them (:func:`bench_chorale_reactive`).
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import json
import os
import random
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
STEP_TICKS = PPQN // 4  # a 16th step of the daemon's grid


def reactive_target_us(period_frames: int = PERIOD_FRAMES, rate: int = SAMPLE_RATE) -> float:
    """The issue's target for the reactive latency: two JACK periods + 1 ms, in microseconds."""
    return round(2 * period_frames * 1e6 / rate + 1000.0, 1)


REACTIVE_ARGS = ("--no-synth", "--no-osc", "--mode", "accompany", "--clock", "midi", "--quiet")
ANSWER_PARTS = ("chords", "bass")  # the daemon's answer: the first note-on on one of their channels

GRID_TEMPO = 120.0
GRID_JITTER_MS = 15.0  # the loose player: each note uniformly this much early or late
GRID_LEARN_BARS = 3  # the tune's first bars are not measured: the daemon learns the player's feel from them
GRID_RELEASE_NS = 30_000_000  # the player lifts each note this long before the next one's beat
# The Old Hundredth (Genevan Psalter, 1551; Bach harmonised it), in G, ``(pitch, beats)``: each line a half
# note, six quarters and a whole note held through a bar (4 lines of 3 bars of 4/4)
OLD_HUNDREDTH = (
    (67, 2), (67, 1), (66, 1), (64, 1), (62, 1), (67, 1), (69, 1), (71, 4),
    (71, 2), (71, 1), (71, 1), (69, 1), (67, 1), (72, 1), (71, 1), (69, 4),
    (67, 2), (69, 1), (71, 1), (69, 1), (67, 1), (64, 1), (66, 1), (67, 4),
    (74, 2), (71, 1), (67, 1), (69, 1), (72, 1), (71, 1), (69, 1), (67, 4),
)  # fmt: skip


def _unavailable(model_dir: Path) -> str | None:
    """Why the daemon cannot accompany through the bench's JACK server here, or None."""
    if jackd_path() is None:
        return "jackd not found (apt-get install -y --no-install-recommends jackd2)"
    from rtgen.generation.model import Model

    if not Model.load(model_dir, threads=1).can_harmonise:
        return f"model {model_dir} has no harmony.onnx, so it cannot accompany; pass --reactive-model with one that has"
    return None


def _through_jack(
    model_dir: Path, schedule: list[tuple[int, list[int]]], seconds: float, settings: dict[str, Any], *,
    rate: int, period: int, startup_timeout: float, args: tuple[str, ...] = REACTIVE_ARGS, config_text: str = "",
) -> tuple[list[tuple[int, list[int]]], list[Any], str]:  # fmt: skip
    """The daemon in accompany mode on the bench's own real-time JACK server, played ``schedule`` (see :func:`_play`).

    Adds the server's mode, xruns and the daemon's exit code to ``settings``. Returns what was sent when, the
    arrivals of the daemon's output and the daemon's log.
    """
    name = f"rtgen-bench-{os.getpid()}"
    with tempfile.TemporaryDirectory(prefix="rtgen-bench-") as tmp:
        server = JackServer(name, rate, period, Path(tmp), realtime=True, sync=False)
        try:
            server.start()
            settings["jack_mode"] = server.mode
            settings["jack_fallback_reason"] = server.fallback_reason
            duration = seconds + startup_timeout + 30.0  # a stray daemon stops by itself; we SIGINT it first
            daemon = DaemonProcess(name, model_dir, f"{name}-daemon", Path(tmp), duration, args, config_text)
            try:
                with jack_clients_env(name):
                    sent, arrivals, daemon_rt = _play(name, daemon, schedule, startup_timeout)
            finally:
                settings["daemon_exit_code"] = daemon.stop()
            settings["daemon_realtime_thread"] = daemon_rt
            settings["jack_xruns"] = server.xruns()
            log = daemon.log_path.read_text(errors="replace")
        finally:
            server.close()
    return sent, arrivals, log


def _answer_channels() -> set[int]:
    parts = PartsConfig()
    return {getattr(parts, name).channel - 1 for name in ANSWER_PARTS}


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
    why = _unavailable(model_dir)
    if why is not None:
        result["reactive_latency_skipped"] = why
        return result
    sent, arrivals, _ = _through_jack(
        model_dir, _probe_schedule(seconds, tempo), seconds, settings, rate=rate, period=period,
        startup_timeout=startup_timeout,
    )  # fmt: skip
    channels = _answer_channels()
    sends = [t for t, m in sent if is_note_on(m)]
    latencies, missed = _match(sends, arrivals, channels)
    stats = percentiles_us(latencies)
    result["reactive_latency_us"] = {"p50": stats["p50"], "p99": stats["p99"], "max": stats["max"], "n": stats["count"]}
    settings.update(probes=len(sends), unanswered=missed, answer_channels=sorted(c + 1 for c in channels))
    return result


CHORALE_ARGS = ("--no-synth", "--no-osc", "--mode", "chorale", "--clock", "midi", "--quiet")


def bench_chorale_reactive(
    poly_model_dir: Path, seconds: float = 16.0, tempo: float = REACTIVE_TEMPO, *, rate: int = SAMPLE_RATE,
    period: int = PERIOD_FRAMES, startup_timeout: float = 60.0,
) -> dict[str, Any]:  # fmt: skip
    """Reactive latency of the real daemon in chorale mode (note in, voices out), through the bench's JACK server.

    The probes of :func:`bench_reactive` (a note right after the tick of beats 1 and 3, released half a beat
    later) are the soprano: the voices fall silent on the beat after each release, so every probe brings them in
    afresh, all of them struck; a probe's latency is the arrival of the first voice's note-on (the chords part's
    channel) minus the probe's send time.

    Returns:
        ``chorale_latency_us`` ({p50, p99, max, n}) and ``chorale_reactive`` (the settings and counts).

    Raises:
        RtgenError: the JACK server or the daemon failed (with their logs).
    """
    from rtgen.arrange.chorale import DRAWS
    from rtgen.arrange.chorale import PART as CHORALE_PART

    settings: dict[str, Any] = {
        "seconds": seconds, "tempo": tempo, "probe_beats": [1, 3], "warmup_bars": WARMUP_BARS,
        "jack_rate": rate, "jack_period_frames": period, "model": str(poly_model_dir), "candidates_per_beat": DRAWS,
        "reactive_window_ms": AccompanyConfig().reactive_window_ms,
    }  # fmt: skip
    result: dict[str, Any] = {"chorale_latency_us": None, "chorale_reactive": settings}
    if jackd_path() is None:
        result["chorale_reactive_skipped"] = "jackd not found (apt-get install -y --no-install-recommends jackd2)"
        return result
    sent, arrivals, _ = _through_jack(
        poly_model_dir, _probe_schedule(seconds, tempo), seconds, settings, rate=rate, period=period,
        startup_timeout=startup_timeout, args=CHORALE_ARGS,
    )  # fmt: skip
    channels = {getattr(PartsConfig(), CHORALE_PART).channel - 1}
    sends = [t for t, m in sent if is_note_on(m)]
    latencies, missed = _match(sends, arrivals, channels)
    stats = percentiles_us(latencies)
    result["chorale_latency_us"] = {"p50": stats["p50"], "p99": stats["p99"], "max": stats["max"], "n": stats["count"]}
    settings.update(probes=len(sends), unanswered=missed, answer_channels=sorted(c + 1 for c in channels))
    return result


def bench_accompany_grid(
    model_dir: Path, seconds: float = 40.0, tempo: float = GRID_TEMPO, *, jitter_ms: float = GRID_JITTER_MS,
    fixed: bool = False, rate: int = SAMPLE_RATE, period: int = PERIOD_FRAMES, startup_timeout: float = 60.0,
) -> dict[str, Any]:  # fmt: skip
    """When the daemon's chords come after the beat in accompany mode, for a tight and a loose player.

    A sequencer sends a 24-ppqn MIDI clock at ``tempo`` and, after a bar of clock alone, plays the Old
    Hundredth (:data:`OLD_HUNDREDTH`, looped) into the daemon: once exactly on its beats (``tight``), once
    with every note uniformly up to ``jitter_ms`` early or late (``jittered``; the clock stays exact), each on a
    fresh JACK server and daemon. A step's figure is the arrival of its first chords or bass note-on minus the
    send time of the step's clock tick (the beat), from the tune's bar ``GRID_LEARN_BARS + 1`` on, overall and
    for the steps the player strikes and those they hold through or rest on. ``fixed`` runs each player a
    second time with ``accompany.adapt_window = false`` (the whole window on every step the player does not
    strike), right after the adaptive run, for a comparison in the same stretch of time.

    Returns:
        ``accompany_grid_us`` ({tight, jittered}: {p50, p99, max, n, struck, held, notes, decided_on_note,
        reactive_steps}; or None with ``accompany_grid_skipped``), ``accompany_grid_fixed_us`` when ``fixed``,
        and ``accompany_grid`` (the settings and each run's JACK figures).

    Raises:
        RtgenError: the JACK server or the daemon failed (with their logs).
    """
    settings: dict[str, Any] = {
        "seconds": seconds, "tempo": tempo, "jitter_ms": jitter_ms, "tune": "Old Hundredth", "warmup_bars":
        WARMUP_BARS, "unmeasured_tune_bars": GRID_LEARN_BARS, "jack_rate": rate, "jack_period_frames": period,
        "model": str(model_dir), "reactive_window_ms": AccompanyConfig().reactive_window_ms, "runs": {},
        "answer_channels": sorted(c + 1 for c in _answer_channels()),
    }  # fmt: skip
    result: dict[str, Any] = {"accompany_grid_us": None, "accompany_grid": settings}
    why = _unavailable(model_dir)
    if why is not None:
        result["accompany_grid_skipped"] = why
        return result
    windows = ("adaptive", "fixed") if fixed else ("adaptive",)
    figures: dict[str, dict[str, Any]] = {w: {} for w in windows}
    for player, jitter in (("tight", 0.0), ("jittered", jitter_ms)):
        schedule, struck = _player_schedule(seconds, tempo, jitter * 1e6, seed=len(player))
        for window in windows:
            run: dict[str, Any] = {}
            settings["runs"][f"{player}_{window}"] = run
            config_text = "[accompany]\nadapt_window = false\n" if window == "fixed" else ""
            sent, arrivals, log = _through_jack(
                model_dir, schedule, seconds, run, rate=rate, period=period, startup_timeout=startup_timeout,
                args=(*REACTIVE_ARGS, "--log-json"), config_text=config_text,
            )  # fmt: skip
            figures[window][player] = {
                **_grid_figures(sent, arrivals, struck, first_step=(WARMUP_BARS + GRID_LEARN_BARS) * 16),
                "notes": sum(1 for _, m in sent if is_note_on(m)),
                **_decisions(log),
            }
    result["accompany_grid_us"] = figures["adaptive"]
    if fixed:
        result["accompany_grid_fixed_us"] = figures["fixed"]
    return result


def _player_schedule(
    seconds: float, tempo: float, jitter_ns: float, seed: int
) -> tuple[list[tuple[int, list[int]]], set[int]]:
    """The grid run's clock and tune (see :func:`bench_accompany_grid`); and the steps (16ths) it strikes."""
    tick_ns = 60e9 / (tempo * PPQN)
    n_ticks = int((seconds + WARMUP_BARS * 4 * 60.0 / tempo) * 1e9 / tick_ns)
    schedule: list[tuple[int, list[int]]] = [(round(i * tick_ns), [CLOCK]) for i in range(n_ticks)]
    rng = random.Random(seed)
    struck: set[int] = set()
    tick = WARMUP_BARS * TICKS_PER_BAR
    for pitch, beats in itertools.cycle(OLD_HUNDREDTH):
        if tick >= n_ticks:
            break
        end = tick + beats * PPQN
        schedule.append((max(0, round(tick * tick_ns + rng.uniform(-jitter_ns, jitter_ns))), [NOTE_ON, pitch, 90]))
        schedule.append((round(end * tick_ns) - GRID_RELEASE_NS, [NOTE_OFF, pitch, 0]))
        struck.add(tick // STEP_TICKS)
        tick = end
    schedule.sort(key=lambda e: e[0])  # stable: a note on a tick goes out right after it, as a sequencer sends
    return schedule, struck


def _grid_figures(
    sent: list[tuple[int, list[int]]], arrivals: list[tuple[int, list[int]]], struck: set[int], first_step: int
) -> dict[str, Any]:
    """Each step's first answer after its tick, from ``first_step`` on: overall, struck and held (µs)."""
    steps = [t for t, m in sent if m == [CLOCK]][::STEP_TICKS]
    channels = _answer_channels()
    first: dict[int, int] = {}
    for t, m in arrivals:
        if is_note_on(m) and m[0] & CHANNEL_MASK in channels:
            k = bisect.bisect_right(steps, t) - 1
            if k >= first_step and k not in first:
                first[k] = t - steps[k]
    by_kind: dict[str, list[int]] = {"struck": [], "held": []}
    for k, offset in first.items():
        by_kind["struck" if k in struck else "held"].append(offset)

    def stats(samples: list[int]) -> dict[str, Any]:
        p = percentiles_us(samples)
        return {"p50": p["p50"], "p99": p["p99"], "max": p["max"], "n": p["count"]}

    return {**stats(list(first.values())), "struck": stats(by_kind["struck"]), "held": stats(by_kind["held"])}


def _decisions(log: str) -> dict[str, Any]:
    """The daemon's reactive steps and those decided with the player's note for them (its JSON ``stop`` line)."""
    for line in reversed(log.splitlines()):
        if line.startswith("{") and '"stop"' in line:
            with contextlib.suppress(ValueError):
                stop = json.loads(line)
                return {"reactive_steps": stop.get("reactive_steps"), "decided_on_note": stop.get("reactive_on_onset")}
    return {"reactive_steps": None, "decided_on_note": None}


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


def _play(
    server: str, daemon: DaemonProcess, schedule: list[tuple[int, list[int]]], startup_timeout: float
) -> tuple[list[tuple[int, list[int]]], list[Any], bool]:
    """Start, then ``schedule`` (``(ns after the start, message)`` in time order), then Stop into the daemon.

    Returns:
        What was sent when (``perf_counter_ns`` just before each send), the arrivals at the probe's input
        (``[perf_counter_ns, message]``) and whether the daemon ran a real-time thread.
    """
    import rtmidi

    from rtgen.io.ports import captured_stderr

    clock = time.perf_counter_ns
    with captured_stderr():
        midi_out = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, name=f"{server}-probe-out")
        lister = rtmidi.MidiIn(rtmidi.API_UNIX_JACK, name=f"{server}-probe-list")
    sent: list[tuple[int, list[int]]] = []
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
        realtime = request_realtime(10)
        midi_out.send_message([START])
        t0 = clock() + 20_000_000
        for offset, message in schedule:
            sleep_until(t0 + offset)
            sent.append((clock(), message))
            midi_out.send_message(message)
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
    return sent, arrivals, daemon_rt


def _probe_schedule(seconds: float, tempo: float) -> list[tuple[int, list[int]]]:
    """The reactive run's clock, with a probe note right after the ticks of beats 1 and 3 (off half a beat later)."""
    tick_ns = 60e9 / (tempo * PPQN)
    n_ticks = int((seconds + WARMUP_BARS * 4 * 60.0 / tempo) * 1e9 / tick_ns)
    schedule: list[tuple[int, list[int]]] = []
    off_at: dict[int, list[int]] = {}
    probes = 0
    for i in range(n_ticks):
        t = round(i * tick_ns)
        schedule.append((t, [CLOCK]))
        if i >= WARMUP_BARS * TICKS_PER_BAR and i % PROBE_EVERY_TICKS == 0:
            pitch = PROBE_PITCHES[probes % len(PROBE_PITCHES)]
            probes += 1
            schedule.append((t, [NOTE_ON, pitch, 100]))
            off_at[i + PPQN // 2] = [NOTE_OFF, pitch, 0]  # half a beat later
        off = off_at.pop(i, None)
        if off is not None:
            schedule.append((t, off))
    return schedule


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

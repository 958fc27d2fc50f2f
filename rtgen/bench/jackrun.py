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
- ``jack_grid.cpu_percent``: the daemon's CPU time (all its threads, ``/proc/PID/stat``) over the wall
  time of the steady part of the run, at 120 BPM by default (without OSC; the daemon as a user starts it
  is :mod:`rtgen.bench.cpu`'s).
- ``uss_mb``: the daemon's private memory (Private_Clean + Private_Dirty) at the end of the run.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from rtgen.bench.harness import PERIOD_FRAMES, SAMPLE_RATE, DaemonProcess, recorded_server
from rtgen.bench.measure import cpu_percent_over, free_udp_port, grid_figures, process_private_mb
from rtgen.bench.oscload import OscLoad

GRID_ARGS = ("--no-synth", "--no-osc", "--mode", "autonomous", "--clock", "internal", "--quiet")


def bench_jack_grid(
    model_dir: Path, seconds: float = 20.0, tempo: float = 120.0, *, rate: int = SAMPLE_RATE,
    period: int = PERIOD_FRAMES, startup_timeout: float = 60.0, settle_s: float = 2.0, first_note_starts: int = 5,
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
        recorded_server(name, Path(tmp), rate, period) as (server, recorder),
    ):
        settings["jack_mode"] = server.mode
        args = (*GRID_ARGS, "--tempo", str(tempo), "--midi-out", recorder.port_name)
        config = "[input]\nenabled = true\n"
        daemon = DaemonProcess(name, model_dir, f"{name}-daemon", Path(tmp), seconds + startup_timeout, args, config)
        try:
            first_notes = [daemon.wait_first_note(recorder, startup_timeout)]
            time.sleep(settle_s)
            settings["cpu_percent"] = cpu_percent_over(daemon.proc.pid, seconds)
            uss = process_private_mb(daemon.proc.pid)
            settings["daemon_threads"] = len(os.listdir(f"/proc/{daemon.proc.pid}/task"))
        finally:
            settings["daemon_exit_code"] = daemon.stop()
        ons = recorder.note_on_frames()
        events = len(recorder.events)
        for i in range(1, first_note_starts):
            recorder.first_note_on_ns = None
            quick = DaemonProcess(name, model_dir, f"{name}-start{i}", Path(tmp), startup_timeout, args, config)
            try:
                first_notes.append(quick.wait_first_note(recorder, startup_timeout))
            finally:
                quick.stop()
        settings["jack_xruns"] = server.xruns()
    settings["first_note_runs_ms"] = [round(ms, 1) for ms in first_notes]
    first_note_ms = float(np.median(first_notes))
    onsets = np.unique(ons)  # a chord is one onset: its notes share the step
    settings.update(onsets=int(onsets.size), note_ons=int(ons.size), events=events)
    return {
        "jack_grid_dev_us": grid_figures(onsets, recorder.rate, tempo),
        "jack_period_us": round(recorder.period * 1e6 / recorder.rate, 1),
        "first_note_ms": round(first_note_ms, 1),
        "uss_mb": uss,
        "jack_grid": settings,
    }


def bench_osc_load(
    model_dir: Path, seconds: float = 30.0, tempo: float = 400.0, rate_per_s: float = 600.0, *,
    jack_rate: int = SAMPLE_RATE, period: int = PERIOD_FRAMES, startup_timeout: float = 60.0,
) -> dict[str, Any]:  # fmt: skip
    """The daemon at ``tempo`` with OSC feedback on and a controller sending ``rate_per_s`` messages.

    Other Python threads (the OSC server, feedback, status replies) compete for the GIL with the
    real-time loop; the figure is the daemon's own count of late steps (``/rtgen/status``) and the
    onsets' grid deviation at a JACK recorder.
    """
    name = f"rtgen-load-{os.getpid()}"
    result: dict[str, Any] = {"tempo": tempo, "seconds": seconds, "osc_rate_asked": rate_per_s}
    port = free_udp_port()
    with (
        tempfile.TemporaryDirectory(prefix="rtgen-load-") as tmp,
        recorded_server(name, Path(tmp), jack_rate, period) as (server, recorder),
    ):
        result["jack_mode"] = server.mode
        args = (
            "--no-synth", "--mode", "autonomous", "--clock", "internal", "--quiet", "--tempo", str(tempo),
            "--midi-out", recorder.port_name, "--osc-port", str(port),
        )  # fmt: skip
        daemon = DaemonProcess(name, model_dir, f"{name}-daemon", Path(tmp), seconds + startup_timeout, args)
        load = OscLoad(port, rate_per_s)
        try:
            daemon.wait_first_note(recorder, startup_timeout)
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
    result["jack_grid_dev_us"] = grid_figures(np.unique(recorder.note_on_frames()), recorder.rate, tempo)
    return result

"""Performance measurements: one engine step, and the real clock + scheduler loop.

``inference_us``: one engine step (chord model + note model + sampling + masks), one
onnxruntime thread, after a warm-up. ``schedule_error_us``: actual send time minus
deadline for every event of the real real-time loop (real clock, real engine, real
voicer) at 300 BPM sixteenths into a null sink. Plus late steps, CPU % of the
process during the loop, private memory and the machine.
"""

from __future__ import annotations

import os
import platform
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np

from rtgen.clock import LatenessStats, StepClock, release_realtime, request_realtime
from rtgen.config import PartsConfig
from rtgen.scheduler import Scheduler

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


def bench_inference(model_dir: Path, steps: int = 2000, warmup: int = 200, seed: int = 0) -> dict[str, float]:
    """Time ``steps`` engine steps (after ``warmup``) with one thread."""
    from rtgen.engine import Engine, Params
    from rtgen.model import Model

    engine = Engine(Model.load(model_dir, threads=1), Params(), seed=seed)
    for _ in range(warmup):
        engine.step()
    times = np.empty(steps, dtype=np.int64)
    clock = time.perf_counter_ns
    for i in range(steps):
        t = clock()
        engine.step()
        times[i] = clock() - t
    return percentiles_us(times)


def bench_schedule(
    model_dir: Path, seconds: float = 60.0, tempo: float = 300.0, seed: int = 0, realtime_priority: int = 10
) -> dict[str, Any]:
    """Run the real-time loop for ``seconds`` at ``tempo`` (sixteenths) into a null sink.

    The loop asks for SCHED_FIFO ``realtime_priority`` as the daemon does (``realtime`` in the result says
    whether it was granted).
    """
    from rtgen.daemon import NullSink, Player
    from rtgen.engine import Engine, Params
    from rtgen.model import Model
    from rtgen.voicing import Voicer

    params = Params()
    sched = Scheduler([NullSink()], keep_history=True)
    clock = StepClock(tempo)
    clock.stats = LatenessStats(late_threshold_ns=clock.stats.late_threshold_ns, keep_history=True)
    player = Player(
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
        "involuntary_context_switches": ru1.ru_nivcsw - ru0.ru_nivcsw,
    }


def run_bench(model_dir: Path, seconds: float = 60.0, inference_steps: int = 2000) -> dict[str, Any]:
    """The full benchmark as JSON-ready data."""
    inference = bench_inference(model_dir, steps=inference_steps)
    schedule = bench_schedule(model_dir, seconds=seconds)
    return {
        "model": str(model_dir),
        "inference_us": inference,
        "schedule_error_us": schedule.pop("schedule_error_us"),
        "schedule": schedule,
        "late_steps": schedule["late_steps"],
        "cpu_percent": schedule["cpu_percent"],
        "private_memory_mb": private_memory_mb(),
        "targets": {
            "inference_p99_us": TARGET_P99_US,
            "schedule_error_p99_us": TARGET_P99_US,
            "inference_ok": inference["p99"] <= TARGET_P99_US,
        },
        "machine": machine(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }

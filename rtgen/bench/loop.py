"""One engine step, and the real clock + scheduler loop into a null sink (phases of ``rtgen bench``).

``inference_us``: one engine step (chord model + note model + sampling + masks), one
onnxruntime thread, after a warm-up. ``schedule_error_us``: actual send time minus
deadline for every event of the real real-time loop (real clock, real engine, real
voicer) at 300 BPM sixteenths into a null sink. Plus late steps and the CPU % of the
process during the loop.
"""

from __future__ import annotations

import gc
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from rtgen.bench.measure import percentiles_us
from rtgen.config import PartsConfig
from rtgen.io.scheduler import Scheduler
from rtgen.timing.clock import LatenessStats, StepClock, release_realtime, request_realtime


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
    return time_steps(lambda _: engine.step(), steps, realtime_priority)


def time_steps(step: Callable[[int], object], steps: int, realtime_priority: int = 10) -> dict[str, Any]:
    """Percentiles (us) of ``steps`` calls ``step(i)``, as the daemon's loop runs them: SCHED_FIFO
    ``realtime_priority`` where allowed (0: normal scheduling; ``realtime`` says which) and the heap frozen."""
    times = np.empty(steps, dtype=np.int64)
    clock = time.perf_counter_ns
    gc.collect()
    gc.freeze()
    realtime = request_realtime(realtime_priority)
    try:
        for i in range(steps):
            t = clock()
            step(i)
            times[i] = clock() - t
    finally:
        if realtime:
            release_realtime()
        gc.unfreeze()
    return {**percentiles_us(times), "realtime": realtime}


def bench_poly_step(
    model_dir: Path, steps: int = 2000, warmup: int = 100, seed: int = 0, realtime_priority: int = 10
) -> dict[str, Any]:
    """Time ``steps`` steps of a polyphonic model (one graph call each, the frame sampled in the graph), half
    of them with a soprano clamped as ``--mode chorale`` clamps the player's note; threads and scheduling as in
    :func:`bench_inference`."""
    from rtgen.generation.poly import PolyModel

    stepper = PolyModel.load(model_dir, threads=1).stepper(seed)
    gen = np.random.default_rng(seed)
    clamps = [stepper.soprano_clamp(int(p)) for p in gen.integers(60, 80, 16)]
    for _ in range(warmup):
        stepper.step()

    def step(i: int) -> None:
        if i % 2:
            stepper.step(*clamps[i % len(clamps)])
        else:
            stepper.step()

    return time_steps(step, steps, realtime_priority)


def bench_duet_answer(
    model_dir: Path, answers: int = 20, phrase_bars: int = 8, seed: int = 0, realtime_priority: int = 10
) -> dict[str, Any]:
    """Time duet's steps as the loop decides them (:meth:`~rtgen.generation.duet.Duet.heard` and
    :meth:`~rtgen.generation.duet.Duet.play`) over ``answers`` answers to a two-handed phrase of ``phrase_bars``
    bars (four-note frames on the beat, C major).

    ``listen``: the phrase's steps where a frame closes (the model fed it; when the key estimate moves, fed the
    phrase again); ``start``: the answer's first frame; ``frame``: its other frames (one graph call each). Threads
    and scheduling as in :func:`bench_inference`.
    """
    from rtgen.generation.conductor import Duet, Heard
    from rtgen.generation.engine import Params
    from rtgen.generation.poly import PolyModel
    from rtgen.input.tracker import SILENT_FRAME, StepFrame
    from rtgen.timing.transport import Position

    duet = Duet(PolyModel.load(model_dir, threads=1), seed=seed)
    params = Params()
    chords = ((48, 60, 64, 67), (53, 60, 65, 69), (55, 62, 67, 71), (48, 55, 64, 72))
    phrase = []
    for beat in range(4 * phrase_bars):
        notes = chords[(beat // 2) % len(chords)]
        phrase += [StepFrame(notes, notes, 90)] + [StepFrame((), notes, 0)] * 3
    out: dict[str, list[int]] = {"listen": [], "start": [], "frame": []}
    clock = time.perf_counter_ns
    gc.collect()
    gc.freeze()
    realtime = request_realtime(realtime_priority)
    k = 0
    try:
        for _ in range(answers):
            for f in phrase:
                pos = Position(k, k // 16, k % 16)
                t = clock()
                duet.heard(pos, Heard(poly=f))
                duet.play(pos, params)
                dt = clock() - t
                if pos.on_beat and k % len(phrase):
                    out["listen"].append(dt)
                k += 1
            while True:
                pos = Position(k, k // 16, k % 16)
                was, n = duet.answering, duet.answers
                t = clock()
                if not was:
                    duet.heard(pos, Heard(poly=SILENT_FRAME))
                duet.play(pos, params)
                dt = clock() - t
                k += 1
                if duet.answers > n:
                    out["start"].append(dt)
                elif duet.answering and pos.on_beat:
                    out["frame"].append(dt)
                if was and not duet.answering:
                    break
    finally:
        if realtime:
            release_realtime()
        gc.unfreeze()
    return {**{name: percentiles_us(times) for name, times in out.items()}, "phrase_bars": phrase_bars,
            "realtime": realtime}  # fmt: skip


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
    loop = LiveLoop(
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
        loop.run(seconds)
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
        "spin_us": loop.spin_tuner.spin_ns / 1000 if loop.spin_tuner is not None else None,
        "worst_wakeup_us": loop.spin_tuner.worst_ns / 1000 if loop.spin_tuner is not None else None,
        "involuntary_context_switches": ru1.ru_nivcsw - ru0.ru_nivcsw,
    }

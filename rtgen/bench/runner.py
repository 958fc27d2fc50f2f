"""``rtgen bench``: every phase in turn, composed into one JSON-ready result with its targets.

The phases, each its own module: :mod:`rtgen.bench.loop` (one engine step; the real clock + scheduler
loop), :mod:`rtgen.bench.jackrun` (the daemon through JACK: grid, first note, CPU, memory; under an OSC
load), :mod:`rtgen.bench.cpu` (the daemon's CPU as a user starts it), :mod:`rtgen.bench.reactive` (the
reactive latency), :mod:`rtgen.bench.swaps` (soundfont swaps while playing) and :mod:`rtgen.bench.webpage`
(the daemon with its web page open). They share :mod:`rtgen.bench.harness` (the JACK server, recorders, the
daemon as a subprocess) and :mod:`rtgen.bench.measure` (figures, /proc readings, the machine); this module is
on top of them all.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rtgen.bench.cpu import bench_cpu
from rtgen.bench.harness import PERIOD_FRAMES, SAMPLE_RATE
from rtgen.bench.jackrun import bench_jack_grid, bench_osc_load
from rtgen.bench.loop import bench_duet_answer, bench_inference, bench_poly_step, bench_schedule
from rtgen.bench.measure import TARGET_P99_US, busy_core, machine, private_memory_mb
from rtgen.bench.reactive import bench_accompany_grid, bench_chorale_reactive, bench_reactive
from rtgen.bench.swaps import bench_soundfont_swaps
from rtgen.bench.webpage import bench_web_page
from rtgen.errors import RtgenError
from rtgen.library import SHIPPED_MODELS_DIR


def _phase(
    what: str, seconds: float, option: str, missing: dict[str, Any], measure: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """What a phase adds to the result: its figures, or ``missing`` and ``WHAT_skipped`` with the reason
    (given 0 seconds, or failed with an :class:`RtgenError`: no JACK, no browser, a daemon that did not play)."""
    if seconds <= 0:
        return {**missing, f"{what}_skipped": f"{option} 0"}
    try:
        return measure()
    except RtgenError as err:
        return {**missing, f"{what}_skipped": f"{type(err).__name__}: {err}"}


def run_bench(
    model_dir: Path,
    seconds: float = 60.0,
    inference_steps: int = 2000,
    *,
    reactive_seconds: float = 32.0,
    reactive_model: Path | None = None,
    grid_seconds: float = 40.0,
    grid_fixed: bool = False,
    jack_seconds: float = 20.0,
    cpu_seconds: float = 4.0,
    load_seconds: float = 30.0,
    swap_seconds: float = 20.0,
    web_seconds: float = 15.0,
    soundfonts: Sequence[Path] = (),
    busy: bool = True,
    poly_model: Path | None = None,
    chorale_seconds: float = 16.0,
) -> dict[str, Any]:
    """The full benchmark as JSON-ready data (a phase given 0 seconds is left out, with the reason).

    Phases: inference; the schedule at 300 BPM (with a second process keeping one core busy unless
    ``busy`` is False); the daemon through JACK at 120 BPM (grid, first note, CPU, memory); the daemon as a
    user starts it at 60, 120 and 240 BPM, the player idle and playing (CPU, :mod:`rtgen.bench.cpu`); the daemon
    under an OSC load at 400 BPM; the reactive latency; chords on the beat for a tight and a loose player
    (``grid_fixed``: also with the old fixed reactive window); one step of the polyphonic model ``poly_model``
    (default the shipped ``chorale``; ``inference_steps`` steps), duet's steps with it (hearing the phrase,
    answering it) and chorale mode's reactive latency on it; soundfont swaps while playing; the daemon at 400 BPM
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
    period_us = round(PERIOD_FRAMES * 1e6 / SAMPLE_RATE, 1)
    result.update(
        _phase("jack_grid", jack_seconds, "--jack-seconds", {"jack_grid_dev_us": None},
               lambda: bench_jack_grid(model_dir, seconds=jack_seconds))
    )  # fmt: skip
    result.update(
        _phase("cpu", cpu_seconds, "--cpu-seconds", {"cpu": None, "cpu_percent_120bpm": None},
               lambda: bench_cpu(model_dir, window_s=cpu_seconds))
    )  # fmt: skip
    result.update(
        _phase("osc_load", load_seconds, "--load-seconds", {"osc_load": None},
               lambda: {"osc_load": bench_osc_load(model_dir, seconds=load_seconds)})
    )  # fmt: skip
    if reactive_seconds > 0:
        reactive = bench_reactive(reactive_model or model_dir, seconds=reactive_seconds)
    else:
        reactive = {"reactive_latency_us": None, "reactive_latency_skipped": "--reactive-seconds 0"}
    result.update(reactive)
    result["jack_period_us"] = result.get("jack_period_us", period_us)
    result.update(
        _phase("accompany_grid", grid_seconds, "--grid-seconds", {"accompany_grid_us": None},
               lambda: bench_accompany_grid(reactive_model or model_dir, seconds=grid_seconds, fixed=grid_fixed))
    )  # fmt: skip
    poly = poly_model or (SHIPPED_MODELS_DIR / "chorale")
    result.update(
        _phase("poly_step", inference_steps, "--steps", {"poly_step_us": None},
               lambda: {"poly_step_us": bench_poly_step(poly, steps=inference_steps), "poly_model": str(poly)})
    )  # fmt: skip
    result.update(
        _phase("duet_answer", inference_steps, "--steps", {"duet_answer_us": None},
               lambda: {"duet_answer_us": bench_duet_answer(poly, answers=max(1, min(20, inference_steps // 100)))})
    )  # fmt: skip
    result.update(
        _phase("chorale_reactive", chorale_seconds, "--chorale-seconds", {"chorale_latency_us": None},
               lambda: bench_chorale_reactive(poly, seconds=chorale_seconds))
    )  # fmt: skip
    if swap_seconds > 0:
        result.update(bench_soundfont_swaps(model_dir, list(soundfonts), seconds=swap_seconds))
    else:
        result.update(soundfont_swap_schedule_error_us=None, soundfont_swap_skipped="--swap-seconds 0")
    result.update(
        _phase("web_page", web_seconds, "--web-seconds", {"web_page": None},
               lambda: {"web_page": bench_web_page(model_dir, seconds=web_seconds)})
    )  # fmt: skip
    result["targets"] = targets(result)
    result["machine"] = machine()
    result["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return result


TARGETS = {
    "inference_p99_us": TARGET_P99_US,
    "schedule_error_p99_us": TARGET_P99_US,
    "cpu_percent_120bpm": 3.0,
    "uss_mb": 120.0,
    "first_note_ms": 1000.0,
    "poly_step_p99_us": 1000.0,
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
    out["accompany_grid_tight_p99_us"] = out["reactive_latency_p99_us"]
    out["chorale_latency_p99_us"] = out["reactive_latency_p99_us"]
    grid = result.get("accompany_grid_us") or {}
    swap = result.get("soundfont_swap_schedule_error_us")
    load = result.get("osc_load") or {}
    page = (result.get("web_page") or {}).get("browser") or {}
    out.update(
        inference_ok=ok(p99("inference_us"), TARGET_P99_US),
        schedule_error_ok=ok(p99("schedule_error_us"), TARGET_P99_US),
        jack_grid_dev_ok=ok(p99("jack_grid_dev_us"), out["jack_grid_dev_p99_us"]),
        reactive_latency_ok=ok(p99("reactive_latency_us"), out["reactive_latency_p99_us"]),
        chorale_latency_ok=ok(p99("chorale_latency_us"), out["chorale_latency_p99_us"]),
        accompany_grid_tight_ok=ok(
            grid["tight"]["p99"] if grid.get("tight", {}).get("n") else None, out["accompany_grid_tight_p99_us"]
        ),
        cpu_ok=ok(result.get("cpu_percent_120bpm"), 3.0),
        uss_ok=ok(result.get("uss_mb"), 120.0),
        first_note_ok=ok(result.get("first_note_ms"), 1000.0),
        poly_step_ok=ok(p99("poly_step_us"), 1000.0),
        soundfont_swap_ok=ok(float(swap["p99"]) if swap else None, TARGET_P99_US),
        osc_load_late_steps_ok=(load.get("late_steps") == 0) if load else None,
        web_page_ok=ok(page["schedule_error_us"]["p99"], TARGET_P99_US) if page else None,
    )
    return out

"""``rtgen bench``: inference latency, schedule error and reactive latency through JACK, written as JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``bench`` subcommand."""
    p = subparsers.add_parser(
        "bench",
        help="measure inference latency, schedule error and reactive latency (JSON)",
        description="Time one engine step (chord + note + sampling + masks, one thread) over >= 2,000 steps, "
        "then run the real clock + scheduler loop at 300 BPM sixteenths into a null sink and measure "
        "send time minus deadline (targets: p99 <= 300 us for both). Then start a private real-time JACK "
        "server, run the daemon in accompany mode on a MIDI clock from a probe client and time each probe "
        "note to the first chord or bass note-on it answers with (target: p99 <= 2 JACK periods + 1 ms).",
    )
    p.add_argument("--out", type=Path, help="write the JSON here (default: print it)")
    p.add_argument("--seconds", type=float, default=60.0, help="length of the schedule run (default 60)")
    p.add_argument("--steps", type=int, default=2000, help="inference steps after warm-up (default 2000)")
    p.add_argument(
        "--reactive-seconds",
        type=float,
        default=32.0,
        help="length of the reactive latency run through JACK (default 32: 64 probes at 240 BPM; 0 skips it)",
    )
    p.add_argument("--model", type=Path, help="model folder (default: model.path from config.toml)")
    p.add_argument(
        "--reactive-model", type=Path, help="model for the reactive run; it must have a harmoniser (default: --model)"
    )
    p.add_argument("--config", type=Path, help="config file (default: ./config.toml if present)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print a one-line summary."""
    from rtgen.bench import run_bench
    from rtgen.config import default_config_path, load_config
    from rtgen.errors import ConfigError

    if args.seconds <= 0 or args.steps < 1 or args.reactive_seconds < 0:
        raise ConfigError("--seconds must be > 0, --steps >= 1 and --reactive-seconds >= 0")
    model = args.model
    if model is None:
        model = load_config(args.config if args.config is not None else default_config_path()).model_path
    result = run_bench(
        Path(model),
        seconds=args.seconds,
        inference_steps=args.steps,
        reactive_seconds=args.reactive_seconds,
        reactive_model=args.reactive_model,
    )
    text = json.dumps(result, indent=2)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    else:
        print(text)
    inf, sch, rea = result["inference_us"], result["schedule_error_us"], result["reactive_latency_us"]
    if rea is not None:
        reactive = (
            f"reactive latency p50 {rea['p50']} / p99 {rea['p99']} / max {rea['max']} us (n {rea['n']}, "
            f"JACK {result['reactive']['jack_mode']}, period {result['jack_period_us']} us)"
        )
    else:
        reactive = f"reactive latency skipped: {result['reactive_latency_skipped']}"
    print(
        f"rtgen bench: inference p50 {inf['p50']} / p99 {inf['p99']} / max {inf['max']} us; "
        f"schedule error p50 {sch['p50']} / p99 {sch['p99']} / max {sch['max']} us; "
        f"{reactive}; late steps {result['late_steps']}; CPU {result['cpu_percent']} %; "
        f"private memory {result['private_memory_mb']} MB" + (f"; wrote {args.out}" if args.out else "")
    )
    return 0

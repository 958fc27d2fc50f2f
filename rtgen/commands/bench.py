"""``rtgen bench``: inference latency, schedule error and reactive latency through JACK, written as JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rtgen.config import CONFIG_HELP


def register(subparsers: Any) -> None:
    """Add the ``bench`` subcommand."""
    p = subparsers.add_parser(
        "bench",
        help="measure inference, schedule error, JACK grid, CPU, memory, first note, reactive latency (JSON)",
        description="Time one engine step (one thread) over >= 2,000 steps; run the real clock + scheduler "
        "loop at 300 BPM sixteenths into a null sink while a second process keeps one core busy; then, on "
        "the bench's own real-time JACK server, run the daemon at 120 BPM into a JACK recorder (grid "
        "deviation in JACK frame time, first note, CPU, private memory), as a user starts it at 60/120/240 BPM "
        "with the player idle and playing (CPU), at 400 BPM under 600 OSC "
        "messages/s, and in accompany mode on a MIDI clock from a probe (reactive latency); swap "
        "soundfonts while playing; finally play at 400 BPM with the web page closed, its feed taken by a "
        "WebSocket client, and open in headless Chromium. Prints a table and writes JSON; targets are in the "
        "JSON's `targets`.",
    )
    p.add_argument("--json", "--out", dest="out", type=Path, metavar="PATH", help="write the JSON here")
    p.add_argument("--seconds", type=float, default=60.0, help="length of the schedule run (default 60)")
    p.add_argument("--steps", type=int, default=2000, help="inference steps after warm-up (default 2000)")
    p.add_argument(
        "--reactive-seconds",
        type=float,
        default=32.0,
        help="length of the reactive latency run through JACK (default 32: 64 probes at 240 BPM; 0 skips it)",
    )
    p.add_argument(
        "--grid-seconds",
        type=float,
        default=40.0,
        help="each accompany run of a tight and a loose player: chords after the beat (default 40; 0 skips them)",
    )
    p.add_argument(
        "--poly-model", metavar="NAME|DIR", help="the polyphonic model of the poly_step phase (default: chorale)"
    )
    p.add_argument(
        "--grid-fixed", action="store_true", help="also run each player with the fixed reactive window (a comparison)"
    )
    p.add_argument(
        "--chorale-seconds",
        type=float,
        default=16.0,
        help="chorale mode's reactive latency run through JACK (default 16: 32 probes at 240 BPM; 0 skips it)",
    )
    p.add_argument("--jack-seconds", type=float, default=20.0, help="daemon run at 120 BPM through JACK (0 skips)")
    p.add_argument(
        "--cpu-seconds", type=float, default=4.0,
        help="each CPU window of the daemon as a user starts it, at 60/120/240 BPM, idle and playing (0 skips)",
    )  # fmt: skip
    p.add_argument("--load-seconds", type=float, default=30.0, help="daemon run under OSC load (0 skips)")
    p.add_argument("--swap-seconds", type=float, default=20.0, help="soundfont swaps while playing (0 skips)")
    p.add_argument(
        "--web-seconds",
        type=float,
        default=15.0,
        help="each window of the 400 BPM run with the web page closed, its feed taken, and open in Chromium (0 skips)",
    )
    p.add_argument(
        "--soundfont", type=Path, action="append", default=[], help="soundfonts to swap between (default: system)"
    )
    p.add_argument("--no-busy", dest="busy", action="store_false", help="no second busy process in the schedule run")
    p.add_argument("--model", metavar="NAME|DIR", help="model name or folder (default: the config's model.path)")
    p.add_argument(
        "--reactive-model", metavar="NAME|DIR", help="model for the reactive run, with a harmoniser (default: --model)"
    )
    p.add_argument("--config", type=Path, help=CONFIG_HELP)
    p.set_defaults(func=run)


def _fmt(value: Any) -> str:
    if isinstance(value, dict):
        return f"{value['p50']:g} / {value['p99']:g} / {value['max']:g}"
    if isinstance(value, str):
        return value
    return "-" if value is None else f"{value:g}"


def _window(web: dict[str, Any], name: str) -> dict[str, Any] | None:
    """A web-phase window's schedule error, or None (not measured)."""
    window = web.get(name)
    return window["schedule_error_us"] if window else None


def _late(web: dict[str, Any]) -> str | None:
    """The late steps of the web phase's three windows (the host's own stalls show in all of them)."""
    if not web:
        return None
    return " / ".join(str(web[w]["late_steps"]) if w in web else "-" for w in ("none", "socket", "browser"))


def _cpu_rows(cpu: dict[str, Any] | None) -> list[tuple[str, Any, str, None]]:
    """One row per tempo of the CPU phase: idle / playing medians."""
    if not cpu:
        return []
    return [
        (f"  CPU at {tempo} BPM, idle / playing (%)", f"{v['idle']:g} / {v['playing']:g}", "-", None)
        for tempo, v in cpu["by_tempo"].items()
    ]


def table(result: dict[str, Any]) -> str:
    """The figures against their targets, one line each."""
    t = result["targets"]
    load = result.get("osc_load") or {}
    web = result.get("web_page") or {}
    grid = result.get("accompany_grid_us") or {}
    fixed = result.get("accompany_grid_fixed_us") or {}
    rows = [
        ("inference (us, p50/p99/max)", result["inference_us"], f"p99 <= {t['inference_p99_us']:g}", t["inference_ok"]),
        ("schedule error, 300 BPM, busy core (us)", result["schedule_error_us"],
         f"p99 <= {t['schedule_error_p99_us']:g}", t["schedule_error_ok"]),
        ("JACK grid deviation (us)", result.get("jack_grid_dev_us"), f"p99 <= {t['jack_grid_dev_p99_us']:g}",
         t["jack_grid_dev_ok"]),
        ("reactive latency (us)", result.get("reactive_latency_us"), f"p99 <= {t['reactive_latency_p99_us']:g}",
         t["reactive_latency_ok"]),
        ("chorale: note in, voices out (us)", result.get("chorale_latency_us"),
         f"p99 <= {t['chorale_latency_p99_us']:g}", t["chorale_latency_ok"]),
        ("chords after the beat, tight player (us)", grid.get("tight"), f"p99 <= {t['accompany_grid_tight_p99_us']:g}",
         t["accompany_grid_tight_ok"]),
        ("  a player +-15 ms around the beat (us)", grid.get("jittered"), "-", None),
        ("  tight, the fixed window (us)", fixed.get("tight"), "-", None),
        ("  +-15 ms, the fixed window (us)", fixed.get("jittered"), "-", None),
        ("CPU at 120 BPM, idle (% of a core)", result.get("cpu_percent_120bpm"), "<= 3", t["cpu_ok"]),
        *_cpu_rows(result.get("cpu")),
        ("private memory (MB)", result.get("uss_mb"), "<= 120", t["uss_ok"]),
        ("first note (ms)", result.get("first_note_ms"), "<= 1000", t["first_note_ok"]),
        ("schedule error, soundfont swaps (us)", result.get("soundfont_swap_schedule_error_us"), "p99 <= 300",
         t["soundfont_swap_ok"]),
        ("  the same synth without a swap (us)", result.get("soundfont_still_schedule_error_us"), "-", None),
        ("late steps, 400 BPM + 600 OSC msg/s", load.get("late_steps"), "0", t["osc_load_late_steps_ok"]),
        ("schedule error, 400 BPM, no web page (us)", _window(web, "none"), "-", None),
        ("  the page's WebSocket feed taken (us)", _window(web, "socket"), "-", None),
        ("  the page open in Chromium (us)", _window(web, "browser"), "p99 <= 300", t["web_page_ok"]),
        ("  late steps: no page / feed / page open", _late(web), "-", None),
    ]  # fmt: skip
    width = max(len(r[0]) for r in rows)
    lines = [f"{'':{width}}  {'value':>28}  {'target':>14}  met"]
    for name, value, target, met in rows:
        mark = {True: "yes", False: "NO", None: "-"}[met]
        lines.append(f"{name:{width}}  {_fmt(value):>28}  {target:>14}  {mark}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark, print the table and write (or print) the JSON."""
    from rtgen.bench.runner import run_bench
    from rtgen.config import default_config_path, load_config
    from rtgen.errors import ConfigError

    lengths = (
        args.seconds, args.reactive_seconds, args.grid_seconds, args.jack_seconds, args.cpu_seconds,
        args.load_seconds,
        args.swap_seconds, args.web_seconds, args.chorale_seconds,
    )  # fmt: skip
    if args.seconds <= 0 or args.steps < 1 or min(lengths) < 0:
        raise ConfigError("--seconds must be > 0, --steps >= 1, and the other lengths >= 0 (0 skips a phase)")
    cfg = load_config(args.config if args.config is not None else default_config_path())
    model = cfg.with_model(args.model).model_path if args.model is not None else cfg.model_path
    reactive = cfg.with_model(args.reactive_model).model_path if args.reactive_model is not None else None
    poly = cfg.with_model(args.poly_model).model_path if args.poly_model is not None else None
    result = run_bench(
        model,
        seconds=args.seconds,
        inference_steps=args.steps,
        reactive_seconds=args.reactive_seconds,
        reactive_model=reactive,
        grid_seconds=args.grid_seconds,
        grid_fixed=args.grid_fixed,
        jack_seconds=args.jack_seconds,
        cpu_seconds=args.cpu_seconds,
        load_seconds=args.load_seconds,
        swap_seconds=args.swap_seconds,
        web_seconds=args.web_seconds,
        soundfonts=args.soundfont,
        busy=args.busy,
        poly_model=poly,
        chorale_seconds=args.chorale_seconds,
    )
    text = json.dumps(result, indent=2)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    else:
        print(text)
    print(table(result))
    if args.out is not None:
        print(f"rtgen bench: wrote {args.out}")
    return 0

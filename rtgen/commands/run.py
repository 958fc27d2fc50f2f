"""``rtgen run``: the real-time instrument (MIDI out and/or FluidSynth, steered over OSC)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from rtgen.config import (
    BACKENDS,
    CLOCK_SOURCES,
    CONFIG_HELP,
    MODES,
    Config,
    default_config_path,
    load_config,
    user_config_path,
    with_style,
    with_user_cc,
)

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    """Add the ``run`` subcommand."""
    p = subparsers.add_parser(
        "run",
        help="play live: melody, chords and bass to a MIDI port and/or the internal synth",
        description="Play in real time into a virtual MIDI port (or --midi-out NAME) and/or FluidSynth, "
        "steered over OSC. Every option also lives in config.toml; options given here override it. "
        "Runs until Ctrl-C / SIGTERM or --duration.",
    )
    p.add_argument("--config", type=Path, help=CONFIG_HELP)
    p.add_argument(
        "--model",
        metavar="NAME|DIR",
        help="model name or folder (config: model.path; a polyphonic one serves duet and chorale, the engine then "
        "plays the default)",
    )
    p.add_argument(
        "--mode",
        choices=MODES,
        help="playing mode (config: daemon.mode): autonomous plays alone; accompany follows your melody with "
        "chords and bass; improvise plays a melody over your chords; call-and-response answers your phrases; "
        "band plays bass, drums and comping on your left hand's chords; duet answers your two-handed phrases "
        "polyphonically; chorale sings alto, tenor and bass under your melody (both: the chorale model, or "
        "--model NAME of a polyphonic one)",
    )
    p.add_argument("--backend", choices=BACKENDS, help="MIDI API (config: midi.backend); auto = platform default")
    p.add_argument("--midi-out", metavar="NAME", help="connect to an existing output port by substring (midi.out)")
    p.add_argument("--no-midi", dest="midi", action="store_false", default=None, help="no MIDI output")
    p.add_argument("--midi-in", metavar="NAME", help="read the player from an existing input port (input.port)")
    p.add_argument("--no-input", dest="input", action="store_false", default=None, help="do not listen to a player")
    p.add_argument("--in-channel", type=int, metavar="N", help="player's MIDI channel 1..16, 0 = omni (input.channel)")
    p.add_argument("--thru", action="store_true", default=None, help="echo the player to the outputs (input.thru)")
    p.add_argument(
        "--clock",
        choices=CLOCK_SOURCES,
        help="follow our own clock, a DAW's MIDI clock, or the Ableton Link session on the network (clock.source)",
    )
    p.add_argument("--clock-out", action="store_true", default=None, help="send MIDI clock to the output (clock.send)")
    p.add_argument(
        "--reactive-window",
        type=float,
        metavar="MS",
        help="accompany: wait this long for the player's note at a step (accompany.reactive_window_ms)",
    )
    p.add_argument("--synth", dest="synth", action="store_true", default=None, help="play through FluidSynth")
    p.add_argument("--no-synth", dest="synth", action="store_false", help="do not start the internal synth")
    p.add_argument("--soundfont", metavar="PATH", help="a .sf2 soundfont (config: synth.soundfont)")
    p.add_argument("--audio-driver", metavar="NAME", help="FluidSynth audio driver (config: synth.audio_driver)")
    p.add_argument(
        "--osc-host", help="OSC bind address (config: osc.host; default 127.0.0.1; beyond loopback, osc.allow steers)"
    )
    p.add_argument("--osc-port", type=int, help="OSC UDP port (config: osc.port; default 9000)")
    p.add_argument("--no-osc", dest="osc", action="store_false", default=None, help="no OSC control")
    p.add_argument(
        "--web", nargs="?", type=int, const=-1, metavar="PORT",
        help="serve the web control page (config: web.port, default 9080; web.host 127.0.0.1; beyond loopback, "
        "a pairing URL and QR code are printed)",
    )  # fmt: skip
    p.add_argument("--tempo", type=float, metavar="BPM", help="tempo (config: generation.tempo)")
    p.add_argument("--seed", type=int, metavar="N", help="random seed (config: generation.seed)")
    p.add_argument("--temperature", type=float, metavar="T", help="sampling temperature (generation.temperature)")
    p.add_argument("--swing", type=float, metavar="0..0.75", help="swing (config: generation.swing)")
    p.add_argument(
        "--style", metavar="NAME", help="accompaniment style of the chords part, e.g. strum, waltz (parts.chords.style)"
    )
    p.add_argument("--humanize", type=float, metavar="MS", help="timing spread in ms (generation.humanize_ms)")
    p.add_argument("--record", metavar="FILE.mid", help="record the session (config: daemon.record)")
    p.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this long (daemon.duration)")
    p.add_argument("--quiet", action="store_true", default=None, help="no status line")
    p.add_argument("--log-json", action="store_true", default=None, help="JSON lines on stderr (headless)")
    p.set_defaults(func=run)


def _set(cfg: Config, section: str, **values: Any) -> Config:
    changes = {k: v for k, v in values.items() if v is not None}
    return cfg.replace(section, **changes) if changes else cfg


def build_config(args: argparse.Namespace) -> Config:
    """The config file with the command-line options applied (validated key by key)."""
    path = args.config if args.config is not None else default_config_path()
    cfg = with_user_cc(load_config(path))  # the controller mapping MIDI learn saved
    cfg = _set(
        cfg,
        "generation",
        tempo=args.tempo,
        seed=args.seed,
        temperature=args.temperature,
        swing=args.swing,
        humanize_ms=args.humanize,
    )
    cfg = _set(cfg, "midi", backend=args.backend, out=args.midi_out, enabled=args.midi)
    cfg = _set(cfg, "input", port=args.midi_in, enabled=args.input, channel=args.in_channel, thru=args.thru)
    cfg = _set(cfg, "clock", source=args.clock, send=args.clock_out)
    cfg = _set(cfg, "accompany", reactive_window_ms=args.reactive_window)
    soundfont = str(Path(args.soundfont).resolve()) if args.soundfont is not None else None
    cfg = _set(cfg, "synth", enabled=args.synth, soundfont=soundfont, audio_driver=args.audio_driver)
    cfg = _set(cfg, "osc", host=args.osc_host, port=args.osc_port, enabled=args.osc)
    if args.web is not None:
        cfg = _set(cfg, "web", enabled=True, port=args.web if args.web >= 0 else None)
    record = str(Path(args.record).resolve()) if args.record is not None else None
    cfg = _set(
        cfg, "daemon", mode=args.mode, record=record, duration=args.duration, quiet=args.quiet, log_json=args.log_json
    )
    if args.model is not None:
        cfg = cfg.with_model(args.model, mode=cfg.daemon.mode)
    if args.style is not None:
        cfg = with_style(cfg, "chords", args.style)
    return cfg


def print_pairing(url: str) -> None:
    """The pairing URL of a page bound beyond loopback and its QR code for a phone's camera, on the terminal
    (printed, not logged: the token is the session's key; printed even with --quiet, or nobody could pair)."""
    import segno

    print(f"rtgen: the web page is open to the network; pair a phone with {url}", file=sys.stderr, flush=True)
    segno.make(url, error="l").terminal(out=sys.stderr, compact=True)
    sys.stderr.flush()


def run(args: argparse.Namespace) -> int:
    """Start the daemon and play until stopped; 0 on a clean stop."""
    from rtgen.live.daemon import Daemon
    from rtgen.live.status import StatusReporter, use_json_logging

    cfg = build_config(args)
    if cfg.daemon.log_json:
        use_json_logging()
    elif not args.verbose:
        logging.getLogger("rtgen").setLevel(logging.INFO if not cfg.daemon.quiet else logging.WARNING)
    tty = sys.stderr.isatty() and not cfg.daemon.quiet and not cfg.daemon.log_json
    reporter = StatusReporter(tty_line=tty, json_lines=cfg.daemon.log_json)
    daemon = Daemon(cfg, status=reporter, cc_file=user_config_path())
    daemon.open()
    loop = daemon.loop
    outputs = ", ".join(s.name for s in daemon.sinks)
    osc = "OSC off"
    if daemon.osc is not None:
        osc = f"OSC on {cfg.osc.host}:{daemon.osc.port} (steered from {daemon.osc.who_may_steer})"
    if daemon.web is not None:
        osc += f"; web page {daemon.web.url}"
    if not cfg.daemon.quiet and not cfg.daemon.log_json:
        print(
            f"rtgen: playing {loop.model_name if loop else '?'} at {cfg.generation.tempo:g} BPM to {outputs}; "
            f"{osc}; Ctrl-C stops",
            file=sys.stderr,
            flush=True,
        )
    if daemon.web is not None and daemon.web.token is not None:
        print_pairing(daemon.web.pairing_url)
    code = daemon.run()
    if not cfg.daemon.quiet and not cfg.daemon.log_json and loop is not None:
        s = loop.clock.stats
        print(
            f"rtgen: stopped after {s.steps} steps, {s.late_steps} late (max {s.max_late_ns / 1e6:.2f} ms)",
            file=sys.stderr,
            flush=True,
        )
    return code

"""``rtgen layout``: an Open Stage Control session steering the daemon (from the OSC address table)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``layout`` subcommand."""
    p = subparsers.add_parser(
        "layout",
        help="write an Open Stage Control session (faders, buttons, choosers) that steers rtgen over OSC",
        description="Write an Open Stage Control 1.x session generated from the OSC address table: transport "
        "buttons, faders for tempo, temperature, top-p, density and swing, choosers for mode, key and section, "
        "and per part an on/off toggle, style, program, volume and pan. Widgets send to the config's [osc] "
        "host:port and start at its values. Load it with: open-stage-control --load FILE",
    )
    p.add_argument("--config", type=Path, help="config file (default: ./config.toml if present)")
    p.add_argument("--out", type=Path, metavar="FILE", help="where to write the session (default: stdout)")
    p.add_argument(
        "--feedback-port",
        type=int,
        default=None,
        metavar="PORT",
        help="Open Stage Control's OSC input port, subscribed by the 'feedback' button (default 8080)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write the session; 0 on success."""
    from rtgen.config import default_config_path, load_config
    from rtgen.control.stagecontrol import DEFAULT_FEEDBACK_PORT, render, session
    from rtgen.errors import ConfigError

    port = DEFAULT_FEEDBACK_PORT if args.feedback_port is None else args.feedback_port
    if not 1 <= port <= 65535:
        raise ConfigError(f"--feedback-port must be in range 1..65535, got {port}")
    cfg = load_config(args.config if args.config is not None else default_config_path())
    text = render(session(cfg, feedback_port=port))
    if args.out is None:
        sys.stdout.write(text)
        return 0
    args.out.write_text(text)
    print(f"rtgen layout: wrote {args.out} (OSC to {cfg.osc.host}:{cfg.osc.port})", file=sys.stderr)
    return 0

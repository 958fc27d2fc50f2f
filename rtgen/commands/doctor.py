"""``rtgen doctor``: check everything rtgen needs and print the fix for each failure."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rtgen.config import BACKENDS, CONFIG_HELP


def register(subparsers: Any) -> None:
    """Add the ``doctor`` subcommand."""
    p = subparsers.add_parser(
        "doctor",
        help="check MIDI backends, ports, synth, soundfont, audio, model and OSC port",
        description="Check MIDI backends and ports, FluidSynth, the soundfont, audio drivers, the model and "
        "the OSC port. Prints OK/WARN/FAIL per check and the fix for each problem; exit code 1 if anything FAILs.",
    )
    p.add_argument("--config", type=Path, help=CONFIG_HELP)
    p.add_argument("--model", metavar="NAME|DIR", help="model name or folder to check instead of model.path")
    p.add_argument("--backend", choices=BACKENDS, help="MIDI backend to check instead of midi.backend")
    p.add_argument("--soundfont", type=Path, help="soundfont to check instead of synth.soundfont")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the checks and print them; 0 if nothing failed, 1 otherwise."""
    from rtgen.config import default_config_path, load_config
    from rtgen.ops import doctor

    cfg = load_config(args.config if args.config else default_config_path())
    if args.model:
        cfg = cfg.with_model(args.model)
    if args.backend:
        cfg = cfg.replace("midi", backend=args.backend)
    if args.soundfont:
        cfg = cfg.replace("synth", soundfont=str(args.soundfont.expanduser().resolve()))
    checks = doctor.run_checks(cfg)
    if args.json:
        print(json.dumps({"checks": [c.as_dict() for c in checks], **doctor.summary(checks)}, indent=2))
    else:
        print(doctor.format_checks(checks))
    return 0 if doctor.summary(checks)["ok"] else 1

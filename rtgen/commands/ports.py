"""``rtgen ports``: MIDI inputs and outputs per backend."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rtgen.config import BACKENDS


def register(subparsers: Any) -> None:
    """Add the ``ports`` subcommand."""
    p = subparsers.add_parser(
        "ports",
        help="list MIDI inputs and outputs per backend",
        description="List MIDI input (source) and output (destination) ports for each compiled backend "
        "that can start; a backend that cannot start is listed with the reason.",
    )
    p.add_argument("--backend", choices=BACKENDS, help="only this backend (default: every compiled one)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def collect(backend: str | None) -> dict[str, dict[str, Any]]:
    """``{backend: {"available": bool, "inputs": [...], "outputs": [...], "error": str}}``."""
    from rtgen.errors import PortError
    from rtgen.io import ports as midi_io

    names = [backend] if backend else midi_io.compiled_backends()
    result: dict[str, dict[str, Any]] = {}
    for name in names:
        try:
            ports = midi_io.list_ports(name)
        except PortError as err:
            result[name] = {"available": False, "inputs": [], "outputs": [], "error": str(err)}
        else:
            result[name] = {"available": True, **ports, "error": ""}
    return result


def run(args: argparse.Namespace) -> int:
    """Print the ports; exit 1 when no requested backend can start."""
    result = collect(args.backend)
    if args.json:
        print(json.dumps({"backends": result}, indent=2))
    else:
        if not result:
            print("python-rtmidi has no compiled MIDI backend")
        for name, info in result.items():
            if not info["available"]:
                print(f"{name}: unavailable: {info['error']}")
                continue
            print(f"{name}:")
            print(f"  inputs  (rtgen can read from): {', '.join(info['inputs']) or '(none)'}")
            print(f"  outputs (rtgen can send to):   {', '.join(info['outputs']) or '(none)'}")
    return 0 if any(info["available"] for info in result.values()) else 1

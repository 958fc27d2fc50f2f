"""``rtgen service install|uninstall|status``: run ``rtgen run`` headless under systemd (Linux) or launchd (macOS)."""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``service`` subcommand."""
    p = subparsers.add_parser(
        "service",
        help="install, remove or query a headless rtgen (systemd user unit / launchd agent)",
        description="Run `rtgen run --config FILE --log-json` as a service of your user: a systemd user unit "
        "(~/.config/systemd/user/NAME.service) on Linux, a launchd agent "
        "(~/Library/LaunchAgents/org.rtgen.NAME.plist) on macOS. It starts at login, restarts after a failure "
        "and stays stopped after a clean stop. Where no user session of the service manager answers, install "
        "writes the file and prints the commands that start it.",
    )
    p.add_argument("action", choices=("install", "uninstall", "status"))
    p.add_argument("--config", type=Path, help="config file the service runs (default: ./config.toml if present)")
    p.add_argument("--name", default=None, help="service name, for several instances (default: rtgen)")
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an environment variable for the daemon, e.g. JACK_DEFAULT_SERVER=default (repeatable)",
    )
    p.add_argument(
        "--print",
        dest="print_only",
        action="store_true",
        help="install: print the unit / property list instead of writing it",
    )
    p.add_argument(
        "--no-activate",
        dest="activate",
        action="store_false",
        help="only write or remove the file; do not call systemctl / launchctl",
    )
    p.set_defaults(func=run)


def _service(args: argparse.Namespace) -> Any:
    from rtgen.config import default_config_path
    from rtgen.errors import ConfigError
    from rtgen.ops.service import DEFAULT_NAME, Service, rtgen_command

    config = args.config if args.config is not None else default_config_path()
    if config is None:
        raise ConfigError("no ./config.toml here: give the service one with --config FILE")
    extra = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--env {item!r} must be KEY=VALUE")
        extra[key] = value
    return Service(
        name=args.name or DEFAULT_NAME,
        config=Path(config).expanduser().absolute(),
        command=rtgen_command(),
        platform=platform.system(),
        home=Path.home(),
        env=dict(os.environ),
        extra_env=extra,
    )


def run(args: argparse.Namespace) -> int:
    """Carry out the action; 0 on success (status: 0 installed, 1 not installed)."""
    from rtgen.ops.service import install, status, uninstall

    service = _service(args)
    if args.action == "install" and args.print_only:
        sys.stdout.write(service.render().decode())
        return 0
    if args.action == "install":
        lines = install(service, activate=args.activate)
    elif args.action == "uninstall":
        lines = uninstall(service, activate=args.activate)
    else:
        found = status(service)
        running = {True: "running", False: "not running", None: "unknown"}[found.running]
        print(
            f"{service.name}: {'installed' if found.installed else 'not installed'} ({found.path}); "
            f"{running} ({found.detail})"
        )
        return 0 if found.installed else 1
    for line in lines:
        print(line)
    return 0

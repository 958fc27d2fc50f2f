"""The ``rtgen`` command line: one subcommand per module in :mod:`rtgen.commands`.

Each command module defines ``register(subparsers)``, which adds its parser and
sets ``func`` (called with the parsed arguments, returning an exit code). Heavy
imports happen inside ``func`` so that ``rtgen --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading
from collections.abc import Sequence

from rtgen.errors import RtgenError
from rtgen.live.signals import Terminated, on_startup_signal, take_startup_signal

COMMANDS = ("run", "render", "ports", "doctor", "bench", "models", "layout", "service")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand registered."""
    parser = argparse.ArgumentParser(prog="rtgen", description="Real-time MIDI generation instrument.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"rtgen.commands.{name}").register(sub)
    return parser


def _interrupt_behind(err: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C or SIGTERM a C extension turned into another error (an import's "initialization failed")."""
    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rtgen`` console script.

    Returns:
        The command's exit code; 2 on an :class:`~rtgen.errors.RtgenError` (its message printed);
        130 after Ctrl-C and 143 after SIGTERM that came before the command handled them itself
        (``rtgen run`` does from the moment its ports are open: it stops, releases and exits 0).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    main_thread = threading.current_thread() is threading.main_thread()
    # the defaults: SIGTERM would kill the process with its ports open; Python's KeyboardInterrupt could be lost
    defaults = {signal.SIGTERM: signal.SIG_DFL, signal.SIGINT: signal.default_int_handler}
    replaced = {}
    if main_thread:
        for sig, default in defaults.items():
            if signal.getsignal(sig) is default:
                replaced[sig] = signal.signal(sig, on_startup_signal)
    try:
        return int(args.func(args) or 0)
    except RtgenError as err:
        print(f"rtgen {args.command}: error: {err}", file=sys.stderr)
        return 2
    except Terminated:
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        return 130
    except ImportError as err:  # a signal during a C extension's import (onnxruntime) comes out as ImportError
        interrupt = _interrupt_behind(err)
        if interrupt is None:
            raise
        return 128 + signal.SIGTERM if isinstance(interrupt, Terminated) else 130
    finally:
        if argv is None and main_thread:
            # the process is on its way out (every note released, the recording written): a late
            # signal must not kill the interpreter's teardown and turn a clean exit into a crash
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        else:
            for sig, handler in replaced.items():
                signal.signal(sig, handler)
        take_startup_signal()


if __name__ == "__main__":
    sys.exit(main())

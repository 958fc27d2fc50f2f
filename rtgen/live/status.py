"""What the daemon tells the terminal: a live status line on a TTY, or JSON lines for headless use.

Runs on its own (non-real-time) thread at ~4 Hz and only reads plain attributes the
real-time thread writes (a snapshot may be a step stale; nothing is locked).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Protocol, TextIO

if TYPE_CHECKING:
    from rtgen.config import Config
    from rtgen.io.sinks import Sink
    from rtgen.live.loop import LiveLoop


class Reported(Protocol):
    """What the reporter reads of the daemon (:class:`rtgen.live.daemon.Daemon`)."""

    config: Config
    loop: LiveLoop | None

    @property
    def sinks(self) -> list[Sink]:
        """Every output."""
        ...


log = logging.getLogger(__name__)


class JsonFormatter(logging.Formatter):
    """One JSON object per log record: ``{"time", "level", "logger", "message"}``."""

    def format(self, record: logging.LogRecord) -> str:
        """Format ``record`` as one line of JSON."""
        data: dict[str, Any] = {
            "time": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data)


def use_json_logging(stream: TextIO | None = None) -> None:
    """Replace the root handlers with one writing JSON lines to ``stream`` (stderr)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)


class StatusReporter:
    """The TTY status line (``\\r`` rewrite) and/or JSON events and periodic stats.

    Args:
        stream: where to write (stderr by default).
        tty_line: draw the live status line (on a TTY, not ``--quiet``).
        json_lines: write JSON events (start, stop, warnings, stats every ``stats_every`` s).
        interval: status line refresh period in seconds.
        stats_every: seconds between JSON stats lines.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        tty_line: bool = False,
        json_lines: bool = False,
        interval: float = 0.25,
        stats_every: float = 10.0,
    ) -> None:
        self.stream = stream or sys.stderr
        self.tty_line = tty_line
        self.json_lines = json_lines
        self.interval = interval
        self.stats_every = stats_every
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._width = 0

    def event(self, kind: str, **fields: Any) -> None:
        """Write one JSON event line (only with ``json_lines``)."""
        if self.json_lines:
            data = {"time": round(time.time(), 3), "event": kind, **fields}
            self.stream.write(json.dumps(data, default=str) + "\n")
            self.stream.flush()

    def start(self, daemon: Reported) -> None:
        """Start reporting on ``daemon`` (a :class:`rtgen.live.daemon.Daemon`)."""
        self.event(
            "start",
            outputs=[s.name for s in daemon.sinks],
            tempo=daemon.config.generation.tempo,
            model=str(daemon.config.model_path),
        )
        if self.tty_line or self.json_lines:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, args=(daemon,), name="rtgen-status", daemon=True)
            self._thread.start()

    def stop(self, daemon: Reported) -> None:
        """Stop the thread, clear the line, write the final stats."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
            self._thread = None
        if self.tty_line and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0
        loop = daemon.loop
        if loop is not None:
            reactive = {"reactive_steps": loop.reactive_decisions, "reactive_on_onset": loop.early_decisions}
            self.event("stop", **loop.clock.stats.as_dict(), **reactive)

    @staticmethod
    def line(daemon: Reported) -> str:
        """The status line text: bar:beat, chord, tempo, temperature, late steps."""
        p = daemon.loop
        if p is None:
            return ""
        state = "playing" if p.playing else "stopped"
        return (
            f"{p.bar + 1:4d}:{p.beat + 1}  {p.chord_name:<8s} {p.clock.tempo:6.1f} BPM  "
            f"temp {p.params.temperature:.2f}  late {p.clock.stats.late_steps}  {state}"
        )

    def _run(self, daemon: Reported) -> None:
        last_stats = time.monotonic()
        while not self._stop.wait(self.interval):
            try:
                if self.tty_line:
                    text = self.line(daemon)
                    pad = max(0, self._width - len(text))
                    self.stream.write("\r" + text + " " * pad)
                    self.stream.flush()
                    self._width = len(text)
                if self.json_lines and time.monotonic() - last_stats >= self.stats_every:
                    last_stats = time.monotonic()
                    p = daemon.loop
                    if p is not None:
                        self.event(
                            "stats", tempo=p.clock.tempo, bar=p.bar + 1, chord=p.chord_name, **p.clock.stats.as_dict()
                        )
            except Exception:  # the status line must never take the daemon down
                log.debug("status update failed", exc_info=True)

"""Logging while playing: records are written by a listener thread, never by the caller."""

from __future__ import annotations

import logging
import threading
from typing import Any

from rtgen import logs


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append((threading.current_thread().name, self.format(record)))


def test_records_are_written_off_the_calling_thread_and_all_of_them_on_exit() -> None:
    root = logging.getLogger()
    collect = Collect()
    collect.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    old_handlers, old_level = list(root.handlers), root.level
    for h in old_handlers:
        root.removeHandler(h)
    root.addHandler(collect)
    root.setLevel(logging.INFO)
    try:
        with logs.off_thread():
            assert collect not in root.handlers
            for i in range(200):
                logging.getLogger("rtgen.test").info("step %d", i)
            try:
                raise ValueError("boom")
            except ValueError:
                logging.getLogger("rtgen.test").exception("failed")
        assert collect in root.handlers  # back as it was
        assert [m for _, m in collect.seen[:200]] == [f"INFO step {i}" for i in range(200)]
        assert "ValueError: boom" in collect.seen[200][1]  # the traceback was formatted by the listener
        me = threading.current_thread().name
        assert all(name != me for name, _ in collect.seen)
    finally:
        root.removeHandler(collect)
        for h in old_handlers:
            root.addHandler(h)
        root.setLevel(old_level)


def test_folded_warnings_write_one_line_an_interval_and_count_the_rest(monkeypatch: Any) -> None:
    clock = [100.0]
    monkeypatch.setattr(logs.time, "monotonic", lambda: clock[0])
    logger = logging.getLogger("rtgen.test.folded")
    collect = Collect()
    logger.addHandler(collect)
    try:
        folded = logs.Folded(logger, interval_s=1.0)
        for i in range(5000):
            clock[0] += 0.0001  # 5,000 in half a second
            folded.warning("bad message %d", i)
        clock[0] += 1.0
        folded.warning("bad message %d", 5000)
    finally:
        logger.removeHandler(collect)
    assert [text for _, text in collect.seen] == ["bad message 0", "bad message 5000 (4999 more suppressed)"]

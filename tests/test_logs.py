"""Logging while playing: records are written by a listener thread, never by the caller."""

from __future__ import annotations

import logging
import threading

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

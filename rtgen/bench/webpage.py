"""The daemon with its web page open, measured through JACK (a phase of ``rtgen bench``).

One daemon plays at 400 BPM (the OSC-load phase's tempo, the loop's tightest schedule) into the
bench's JACK recorder, with ``--web``. Three windows of the same run, one after the other:

- ``none``: nobody connected (the host's own noise, to compare with);
- ``socket``: a WebSocket client that takes the page's feed (notes, beats, chords, status ten times a
  second) and draws nothing: the daemon's own cost of serving a page;
- ``browser``: the page itself in headless Chromium (when there is one), drawing its roll: the
  daemon's cost plus a browser's on the same cores.

Each window gives the daemon's schedule error (the difference of its ``/rtgen/status`` histogram),
its late steps, the onsets' grid deviation at the recorder, the server's xruns, and the CPU the
browser's processes took. The target is the bench's: a p99 within 300 µs with the page open. The
late steps are compared across the windows: a stall of the host (a VM's) makes them in all three.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from rtgen.bench.harness import PERIOD_FRAMES, SAMPLE_RATE, DaemonProcess, JackRecorder, recorded_server
from rtgen.bench.measure import cpu_seconds, free_tcp_port, free_udp_port, grid_figures, process_tree_cpu_s
from rtgen.bench.oscload import OscLoad
from rtgen.errors import RtgenError
from rtgen.timing.clock import LatenessHistogram

WEB_TEMPO = 400.0
SETTLE_S = 3.0
CHROMIUM_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=900,900",
)  # fmt: skip


def chromium() -> str | None:
    """A Chromium to open the page in (Debian's ``chromium``, else ``chromium-browser`` or Chrome)."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if found := shutil.which(name):
            return found
    return None


class _FeedReader:
    """The page's WebSocket feed, read and counted on a thread (what a page costs the daemon, drawing aside)."""

    def __init__(self, url: str) -> None:
        from websockets.sync.client import connect

        self.messages = 0
        self._stack = contextlib.ExitStack()
        self._ws = self._stack.enter_context(connect(url, open_timeout=10))
        self._thread = threading.Thread(target=self._run, name="web-feed", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from websockets.exceptions import ConnectionClosed

        with contextlib.suppress(ConnectionClosed, OSError):
            for raw in self._ws:
                self.messages += len(json.loads(raw))

    def close(self) -> None:
        """Close the connection and wait for the reader."""
        self._stack.close()
        self._thread.join(5)


@contextlib.contextmanager
def _browser(path: str, url: str, work: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Headless Chromium showing ``url`` (a profile of its own, its output in ``work/chromium.log``)."""
    profile = work / "chromium-profile"
    with (work / "chromium.log").open("wb") as log:
        proc = subprocess.Popen(
            [path, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", url],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        proc.wait(10)


def bench_web_page(
    model_dir: Path, seconds: float = 15.0, tempo: float = WEB_TEMPO, *, browser: str | None = None,
    jack_rate: int = SAMPLE_RATE, period: int = PERIOD_FRAMES, startup_timeout: float = 60.0,
) -> dict[str, Any]:  # fmt: skip
    """The three windows of the module docstring, ``seconds`` each; the browser's is left out, with the reason,
    when no Chromium is found (``browser``: its path, default :func:`chromium`).

    Raises:
        RtgenError: the JACK server, the recorder or the daemon failed (with their logs).
    """
    browser = browser or chromium()
    name = f"rtgen-web-{os.getpid()}"
    result: dict[str, Any] = {"tempo": tempo, "seconds": seconds}
    osc_port, web_port = free_udp_port(), free_tcp_port()
    with (
        tempfile.TemporaryDirectory(prefix="rtgen-webbench-") as tmp,
        recorded_server(name, Path(tmp), jack_rate, period) as (server, recorder),
    ):
        work = Path(tmp)
        result["jack_mode"] = server.mode
        args = (
            "--no-synth", "--no-input", "--mode", "autonomous", "--clock", "internal",
            "--tempo", str(tempo), "--seed", "1", "--midi-out", recorder.port_name,
            "--osc-port", str(osc_port), "--web", str(web_port),
        )  # fmt: skip
        extra = "" if server.mode == "realtime" else "[daemon]\nrealtime_priority = 0\n"
        daemon = DaemonProcess(name, model_dir, f"{name}-daemon", work, 3 * seconds + 2 * startup_timeout, args, extra)
        osc = OscLoad(osc_port, 1.0)
        try:
            daemon.wait_first_note(recorder, startup_timeout)
            time.sleep(SETTLE_S)  # past the start-up: the first steps' xruns are not the page's
            window = _Window(daemon, recorder, osc, tempo)
            result["none"] = window.measure(seconds)
            feed = _FeedReader(f"ws://127.0.0.1:{web_port}/ws")
            try:
                time.sleep(1.0)
                result["socket"] = window.measure(seconds)
                result["socket"]["feed_messages"] = feed.messages
            finally:
                feed.close()
            if browser is None:
                result["browser_skipped"] = "no chromium (apt-get install chromium)"
            else:
                result["browser"] = _browser_window(browser, f"http://127.0.0.1:{web_port}/", work, window, seconds)
        finally:
            osc.close()
            result["daemon_exit_code"] = daemon.stop()
    return result


def _browser_window(browser: str, url: str, work: Path, window: _Window, seconds: float) -> dict[str, Any]:
    """The page open in Chromium: connected, laid out, then measured (with the CPU the browser took)."""
    daemon = window.daemon
    connected = daemon.log_tail(1_000_000).count("connected from")
    with _browser(browser, url, work) as proc:
        deadline = time.monotonic() + 60
        while daemon.log_tail(1_000_000).count("connected from") <= connected:
            if daemon.proc.poll() is not None or proc.poll() is not None or time.monotonic() > deadline:
                log = (work / "chromium.log").read_text(errors="replace")[-1500:]
                raise RtgenError(f"the page did not connect: {daemon.log_tail()}\nchromium: {log}")
            time.sleep(0.05)
        time.sleep(2.0)  # the page's first layout and its controls
        cpu0 = process_tree_cpu_s(proc.pid)
        figures = window.measure(seconds)
        figures["browser_cpu_percent"] = round(100 * (process_tree_cpu_s(proc.pid) - cpu0) / figures["window_s"], 1)
    return figures


class _Window:
    """One measured window of the running daemon: its own figures from /rtgen/status, the recorder's grid."""

    def __init__(self, daemon: DaemonProcess, recorder: JackRecorder, osc: OscLoad, tempo: float) -> None:
        self.daemon, self.recorder, self.osc, self.tempo = daemon, recorder, osc, tempo

    def measure(self, seconds: float) -> dict[str, Any]:
        """Sleep ``seconds`` while the daemon plays; what happened meanwhile."""
        rec = self.recorder
        before = self.osc.status()
        first, xruns = len(rec.events), len(rec.xruns_ns)
        cpu0, t0 = cpu_seconds(self.daemon.proc.pid), time.monotonic()
        time.sleep(seconds)
        after = self.osc.status()
        wall = time.monotonic() - t0
        cpu = cpu_seconds(self.daemon.proc.pid) - cpu0
        onsets = np.unique(rec.note_on_frames(first))
        hist = zip(after["schedule_error_histogram"], before["schedule_error_histogram"], strict=True)
        counts = [a - b for a, b in hist]
        return {
            "window_s": round(wall, 2),
            "steps": after["steps"] - before["steps"],
            "late_steps": after["late_steps"] - before["late_steps"],
            "schedule_error_us": _with_max(LatenessHistogram.percentiles_us(counts, (50.0, 99.0, 100.0))),
            "jack_grid_dev_us": grid_figures(onsets, rec.rate, self.tempo),
            "jack_xruns": len(rec.xruns_ns) - xruns,
            "daemon_cpu_percent": round(100 * cpu / wall, 1),
            "realtime": after["realtime"],
        }


def _with_max(figures: dict[str, float]) -> dict[str, float]:
    """``p100`` named as the other benches name it: ``max`` (a bucket's upper edge, as the percentiles)."""
    figures["max"] = figures.pop("p100")
    return figures

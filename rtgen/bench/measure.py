"""The bench's measuring helpers: figures from samples, readings of a process from /proc, the machine.

The bottom of :mod:`rtgen.bench`: every phase, the harness and the soak import from here, this module
imports no other module of the bench.
"""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

TARGET_P99_US = 300.0
STEPS_PER_BEAT = 4  # the daemon's steps are sixteenths
SCHED_FIFO, SCHED_RR = 1, 2


def percentiles_us(samples_ns: list[int] | np.ndarray) -> dict[str, float]:
    """p50/p99/max (and count) of nanosecond samples, in microseconds."""
    a = np.asarray(samples_ns, dtype=np.float64) / 1000.0
    if a.size == 0:
        return {"p50": 0.0, "p99": 0.0, "max": 0.0, "count": 0}
    return {
        "p50": round(float(np.percentile(a, 50)), 1),
        "p99": round(float(np.percentile(a, 99)), 1),
        "max": round(float(a.max()), 1),
        "count": int(a.size),
    }


def grid_deviation_us(frames: np.ndarray, rate: int, step_us: float) -> np.ndarray:
    """|Deviation| of onset times (JACK frames) from the best-fitting grid of ``step_us``, in microseconds.

    A least-squares line through onset time against step number fits the grid's phase and the drift
    between the player's clock and JACK's; what is left is jitter.
    """
    t = frames.astype(np.float64) * 1e6 / rate
    k = np.round((t - t[0]) / step_us)
    slope, intercept = np.polyfit(k, t, 1)
    return np.abs(t - (intercept + slope * k))


def grid_figures(onsets: np.ndarray, rate: int, tempo: float) -> dict[str, float]:
    """p50/p99/max of the onsets' (JACK frames) grid deviation, sixteenths at ``tempo``, in microseconds."""
    step_us = 60e6 / (tempo * STEPS_PER_BEAT)
    dev = grid_deviation_us(onsets, rate, step_us) if onsets.size >= 3 else np.zeros(0)
    return percentiles_us((dev * 1000).astype(np.int64))


def process_private_mb(pid: int | str = "self") -> float:
    """Private_Clean + Private_Dirty of process ``pid`` in MB (its unique set size).

    Raises:
        OSError: no such process, or no /proc.
    """
    kb = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            kb += int(line.split()[1])
    return round(kb / 1024, 1)


def private_memory_mb() -> float | None:
    """Private_Clean + Private_Dirty of this process in MB (None where /proc is missing)."""
    try:
        return process_private_mb()
    except OSError:
        return None


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system, all threads) process ``pid`` has used so far (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def cpu_percent_over(pid: int, seconds: float) -> float:
    """Process ``pid``'s CPU (all threads) over the next ``seconds`` of wall time, in % of one core."""
    cpu0, wall0 = cpu_seconds(pid), time.perf_counter()
    time.sleep(seconds)
    cpu1, wall1 = cpu_seconds(pid), time.perf_counter()
    return round(100.0 * (cpu1 - cpu0) / (wall1 - wall0), 2)


def process_tree_cpu_s(root: int) -> float:
    """CPU seconds (user + system) of ``root`` and every process below it that is still running."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += cpu_seconds(pid)
        todo.extend(children.get(pid, []))
    return total


def thread_policies(pid: int) -> list[int]:
    """Scheduling policy of every thread of ``pid`` (0 other, 1 FIFO, 2 RR); empty where /proc is missing."""
    policies = []
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        policies.append(int(fields[38]))  # field 41 of stat(5); the split starts at field 3
    return policies


def has_realtime_thread(pid: int) -> bool:
    """Some thread of ``pid`` runs SCHED_FIFO or SCHED_RR."""
    return any(p in (SCHED_FIFO, SCHED_RR) for p in thread_policies(pid))


def machine() -> dict[str, Any]:
    """Platform, Python, CPU count, onnxruntime version."""
    import onnxruntime

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "onnxruntime": onnxruntime.__version__,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_tcp_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sleep_until(t_ns: int, spin_ns: int = 300_000) -> None:
    """Sleep, then spin on perf_counter_ns for the last ``spin_ns`` (short: the daemon shares the two cores)."""
    clock = time.perf_counter_ns
    while (left := t_ns - clock()) > spin_ns:
        time.sleep((left - spin_ns) / 1e9)
    while clock() < t_ns:
        pass


@contextlib.contextmanager
def busy_core() -> Iterator[int]:
    """A second process that keeps one core busy (a spinning Python loop) for the duration; yields its pid."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL)
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait(5)

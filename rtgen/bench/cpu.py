"""The daemon's CPU as a user starts it, at several tempos, with the player idle and playing.

:func:`bench_cpu` starts the bench's real-time JACK server and, for each tempo, one
``rtgen run --backend jack --no-synth --tempo T`` (autonomous on the internal clock, as the README's
quick start plays it): its own virtual port ``NAME:out``, OSC on, the player's input open. A player
(an rtmidi client of this process, connected to the daemon's input) is silent in the *idle* windows and
plays a note every quarter of a second in the *playing* windows. Idle and playing windows alternate,
``windows`` of each, so that both meet the host's load of the same minutes; an idle window starts only
when the daemon counts the player as gone again (:data:`~rtgen.live.listening.PLAYER_ACTIVE_NS`).

The figure of a window is the daemon's CPU time (all its threads, ``/proc/PID/stat``) over its wall time,
in % of one core. Per tempo: the median of the idle and of the playing windows, and every window.
``cpu_percent_120bpm`` is the idle median at 120 BPM (issue #19's target: at most 3 %).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rtgen.bench.harness import DaemonProcess, JackServer, jack_clients_env, jack_connect, jack_port_names
from rtgen.bench.measure import cpu_percent_over, free_udp_port
from rtgen.live.listening import PLAYER_ACTIVE_NS
from rtgen.midi.messages import NOTE_OFF, NOTE_ON

TEMPOS = (60.0, 120.0, 240.0)
NOTE_EVERY_S = 0.25  # the player in the playing windows: a note every quarter of a second, held 0.15 s
NOTE_HELD_S = 0.15


class _Player:
    """An rtmidi JACK output client of this process playing notes from a thread while :meth:`playing`."""

    def __init__(self, name: str) -> None:
        import rtmidi

        self.out = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, name=name)
        self.out.open_virtual_port("out")
        self.port = f"{name}:out"
        self.notes = 0
        self._on = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._play, name="bench-player", daemon=True)
        self._thread.start()

    def _play(self) -> None:
        while not self._done.is_set():
            if not self._on.wait(0.05):
                continue
            self.out.send_message([NOTE_ON, 60, 90])
            time.sleep(NOTE_HELD_S)
            self.out.send_message([NOTE_OFF, 60, 0])
            self.notes += 1
            time.sleep(NOTE_EVERY_S - NOTE_HELD_S)

    def playing(self, on: bool) -> None:
        """Start or stop playing (a note being held is finished first)."""
        if on:
            self._on.set()
        else:
            self._on.clear()

    def close(self) -> None:
        self._on.clear()
        self._done.set()
        self._thread.join(timeout=2)
        self.out.close_port()
        self.out.delete()


def _tempo_run(
    server: str, model_dir: Path, work: Path, tempo: float, player: _Player, windows: int, window_s: float,
    startup_timeout: float,
) -> dict[str, Any]:  # fmt: skip
    client = f"{server}-{int(tempo)}bpm"
    quiet_s = PLAYER_ACTIVE_NS / 1e9 + 0.5
    duration = startup_timeout + windows * (2 * window_s + quiet_s) + 30
    args = ("--no-synth", "--tempo", f"{tempo:g}", "--osc-port", str(free_udp_port()), "--quiet")
    daemon = DaemonProcess(server, model_dir, client, work, duration, args, "[input]\nenabled = true\n")
    idle: list[float] = []
    playing: list[float] = []
    loads: list[float] = []
    try:
        daemon.find_port("out", startup_timeout, lambda: jack_port_names(server))
        jack_connect(player.port, daemon.find_port("in", startup_timeout, lambda: jack_port_names(server)), server)
        time.sleep(2.0)  # past the start-up's imports and first steps
        threads = len(os.listdir(f"/proc/{daemon.proc.pid}/task"))
        for _ in range(windows):
            loads.append(round(os.getloadavg()[0], 2))
            idle.append(cpu_percent_over(daemon.proc.pid, window_s))
            player.playing(True)
            time.sleep(0.5)  # the first notes are in: the daemon counts the player as playing
            playing.append(cpu_percent_over(daemon.proc.pid, window_s))
            player.playing(False)
            time.sleep(quiet_s)
    finally:
        code = daemon.stop()
    return {
        "idle": statistics.median(idle),
        "playing": statistics.median(playing),
        "idle_windows": idle,
        "playing_windows": playing,
        "load_1min": loads,
        "daemon_threads": threads,
        "daemon_exit_code": code,
    }


def bench_cpu(
    model_dir: Path, window_s: float = 4.0, *, windows: int = 5, tempos: Sequence[float] = TEMPOS,
    startup_timeout: float = 60.0,
) -> dict[str, Any]:  # fmt: skip
    """The daemon's CPU per tempo, idle and playing (see the module docstring).

    Raises:
        RtgenError: the JACK server or a daemon failed (with their logs).
    """
    name = f"rtgen-cpu-{os.getpid()}"
    with (
        tempfile.TemporaryDirectory(prefix="rtgen-cpu-") as tmp,
        JackServer(name, log_dir=Path(tmp), realtime=True, sync=False) as server,
        jack_clients_env(name),
    ):
        server.start()
        player = _Player(f"{name}-player")
        try:
            per_tempo = {
                f"{tempo:g}": _tempo_run(name, model_dir, Path(tmp), tempo, player, windows, window_s, startup_timeout)
                for tempo in tempos
            }
        finally:
            player.close()
    result: dict[str, Any] = {
        "cpu": {"window_s": window_s, "windows": windows, "note_every_s": NOTE_EVERY_S, "by_tempo": per_tempo}
    }
    if "120" in per_tempo:
        result["cpu_percent_120bpm"] = per_tempo["120"]["idle"]
    return result

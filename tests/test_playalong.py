"""Play-along end to end: a player on its own JACK client plays into ``rtgen run``'s input, its output is recorded.

Each test starts the daemon as a subprocess on the suite's private JACK server (see
``tests/test_daemon.py``), connects a separate rtmidi client (the player) to the daemon's
``CLIENT:in`` and records ``CLIENT:out``. The player's messages go out from a sender thread
that sleeps, then spins on ``perf_counter`` to each message's time; every time compared
below is a ``perf_counter_ns`` of this process (send times, and the recorder's arrival times).
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import socket
import statistics
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import NOTTINGHAM_MIDI, SPLIT_MAP, require
from jack_harness import (
    PERIOD_NS,
    MidiRecorder,
    jack_connect,
    jack_port_names,
    note_ons,
    sounding_notes,
    wait_for_port,
)  # fmt: skip
from pythonosc.osc_message import OscMessage
from test_daemon import Daemon, Peer

from rtgen import contract as ct

pytestmark = pytest.mark.jack

Message = tuple[int, ...]
Events = list[tuple[int, Message]]

MELODY, CHORDS, BASS = 0, 1, 2  # 0-based channels of the parts
START, CONTINUE, STOP, CLOCK, SPP = 0xFA, 0xFB, 0xFC, 0xF8, 0xF2
REACTIVE_WINDOW_NS = 12_000_000  # [accompany] reactive_window_ms default
C_MAJOR = frozenset((0, 2, 4, 5, 7, 9, 11))
TUNE = "ashover35.mid"  # Nottingham test split, 4/4 from step 0, the melody and a chord on the first downbeat

_names = itertools.count(1)


@pytest.fixture(scope="module")
def model_dir(shipped_model_dir: Path) -> Path:
    """The shipped model, as `make run` plays it (test_daemon's start_daemon fixture needs this name)."""
    return shipped_model_dir


@pytest.fixture
def start_daemon(jack_server: str, model_dir: Path, tmp_path: Path) -> Iterator[Any]:
    """``start(*args, tempo=...)`` starts ``rtgen run --backend jack``; every daemon is killed after the test."""
    started: list[Daemon] = []

    def start(*extra: str, tempo: float = 300.0) -> Daemon:
        d = Daemon(jack_server, model_dir, tmp_path, *extra, tempo=tempo)
        started.append(d)
        return d

    try:
        yield start
    finally:
        for d in started:
            d.close()


# --- the player --------------------------------------------------------------------------------------------------
def wait_until_ns(t_ns: int) -> int:
    """Sleep until shortly before ``t_ns``, then spin on perf_counter (a sleep alone overshoots by ~0.1-1 ms)."""
    while True:
        now = time.perf_counter_ns()
        left = t_ns - now
        if left <= 0:
            return now
        if left > 2_000_000:
            time.sleep((left - 1_500_000) / 1e9)


def daemon_input(daemon: Daemon, timeout: float = 20.0) -> str:
    """The daemon's input port: ``CLIENT:in``, or ``CLIENT-NN:in`` where JACK renamed the second client.

    rtmidi opens the input and the output as two JACK clients; both ask for the name CLIENT,
    so JACK gives the one that comes second a ``-01`` suffix.
    """
    deadline = time.monotonic() + timeout
    while True:
        names = jack_port_names(midi=True, output=False)
        for name in names:
            client, _, port = name.rpartition(":")
            if port == "in" and (client == daemon.client or client.startswith(f"{daemon.client}-")):
                return name
        if time.monotonic() >= deadline or daemon.proc.poll() is not None:
            raise AssertionError(
                f"the daemon's input port did not appear; ports: {names}\n"
                f"daemon exit={daemon.proc.poll()} output:\n{daemon.output()}"
            )
        time.sleep(0.05)


class Keyboard:
    """The player: a separate rtmidi JACK client whose ``out`` is connected to the daemon's ``in``.

    Attributes:
        sent: ``(perf_counter_ns just before sending, message)`` of everything sent, in order.
    """

    def __init__(self, daemon: Daemon, timeout: float = 20.0) -> None:
        import rtmidi

        self.name = f"rtgen-player-{os.getpid()}-{next(_names)}"
        self.out = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, name=self.name)
        self.out.open_virtual_port("out")
        self.sent: Events = []
        self._thread: threading.Thread | None = None
        try:
            port = wait_for_port(f"{self.name}:out", timeout).name
            jack_connect(port, daemon_input(daemon, timeout))
        except BaseException:
            self.close()
            raise

    def send(self, *msg: int) -> int:
        """Send one message now; returns the send time."""
        t = time.perf_counter_ns()
        self.out.send_message(list(msg))
        self.sent.append((t, tuple(msg)))
        return t

    def play(self, schedule: Sequence[tuple[int, Message]]) -> threading.Thread:
        """Send ``(t_ns, message)`` pairs (sorted, absolute perf_counter times) from a thread; returns it."""

        def run() -> None:
            for t, msg in schedule:
                wait_until_ns(t)
                self.send(*msg)

        self._thread = threading.Thread(target=run, name="player", daemon=True)
        self._thread.start()
        return self._thread

    def join(self, timeout: float = 60.0) -> None:
        """Wait for :meth:`play` to finish."""
        if self._thread is not None:
            self._thread.join(timeout)
            assert not self._thread.is_alive(), "the player's sender thread is stuck"

    def close(self) -> None:
        """Close the client."""
        self.out.close_port()
        self.out.delete()


class Feedback:
    """Receives the daemon's OSC feedback on a thread, stamping each message with perf_counter_ns."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = int(self.sock.getsockname()[1])
        self.received: list[tuple[int, str, list[Any]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="feedback", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, _ = self.sock.recvfrom(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            t = time.perf_counter_ns()
            msg = OscMessage(data)
            self.received.append((t, msg.address, list(msg.params)))

    def beats(self) -> list[tuple[int, int, int]]:
        """``(arrival_ns, bar, beat)`` of every /rtgen/beat so far."""
        return [(t, int(a[0]), int(a[1])) for t, addr, a in list(self.received) if addr == "/rtgen/beat"]

    def close(self) -> None:
        """Stop the thread and close the socket."""
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def status(peer: Peer, timeout: float = 3.0) -> dict[str, Any]:
    """The daemon's ``/rtgen/status`` (a fresh reply)."""
    peer.received = [r for r in peer.received if r[0] != "/rtgen/status"]
    peer.send("/rtgen/status")
    replies = peer.wait_for("/rtgen/status", timeout=timeout)
    assert replies, f"no /rtgen/status reply; got {peer.received}"
    return dict(json.loads(replies[-1][0]))


def wait_status(peer: Peer, key: str, value: Any, timeout: float = 3.0) -> dict[str, Any]:
    """Poll /rtgen/status until ``state[key] == value`` (or timeout); returns the last state."""
    deadline = time.monotonic() + timeout
    state = status(peer)
    while state.get(key) != value and time.monotonic() < deadline:
        time.sleep(0.05)
        state = status(peer)
    return state


def start_recording(d: Daemon, timeout: float = 20.0) -> MidiRecorder:
    """Record the daemon's output; fails with the daemon's log as soon as it exits or if its port never appears."""
    deadline = time.monotonic() + timeout
    while d.proc.poll() is None and time.monotonic() < deadline:
        try:
            wait_for_port(d.port, 0.5)
        except TimeoutError:
            continue
        return d.record(timeout)
    raise AssertionError(f"no port {d.port}: daemon exit={d.proc.poll()} output:\n{d.output()}")


# --- reading what was recorded -----------------------------------------------------------------------------------
def onset_groups(events: Events, channel: int | None = None, gap_ns: int = 10_000_000) -> list[int]:
    """Times of note-on groups (notes within ``gap_ns`` of each other, a chord struck in one period, are one)."""
    times: list[int] = []
    for t in sorted(t for t, m in events if note_ons([m], channel)):
        if not times or t - times[-1] > gap_ns:
            times.append(t)
    return times


def sounding_at(events: Events, t_ns: int, channel: int) -> set[int]:
    """Pitches sounding on ``channel`` at ``t_ns`` (real note-offs only)."""
    notes = sounding_notes([m for t, m in sorted(events) if t <= t_ns])
    return {p for ch, p in notes if ch == channel}


def pc_f1(a: frozenset[int] | set[int], b: frozenset[int] | set[int]) -> float:
    """Pitch-class F1 of two pitch-class sets (both empty = 1, one empty = 0), as training.accompaniment.pc_f1."""
    if not a and not b:
        return 1.0
    return 2.0 * len(a & b) / (len(a) + len(b))


def token_pcs(token: int) -> frozenset[int]:
    """Pitch classes of a resolved chord token (N.C.: none)."""
    if token < ct.CHORD_OFFSET:
        return frozenset()
    return frozenset(ct.Chord.from_token(token).pitch_classes)


def nearest(times: Sequence[int], t: int) -> int:
    """Index of the time in sorted ``times`` nearest to ``t``."""
    i = int(np.searchsorted(np.asarray(times), t))
    if i == 0:
        return 0
    if i == len(times):
        return len(times) - 1
    return i if times[i] - t < t - times[i - 1] else i - 1


def clock_schedule(t0: int, bpm: float, ticks: int, first: int = 0) -> list[int]:
    """Nominal send times of ``ticks`` 24-ppqn ticks from ``t0`` (tick ``first`` at ``t0``)."""
    tick_ns = 60e9 / (bpm * 24)
    return [t0 + round((i - first) * tick_ns) for i in range(first, first + ticks)]


# --- 1. accompany, led by a MIDI clock ---------------------------------------------------------------------------
def load_tune(bars: int = 8) -> dict[str, np.ndarray]:
    """The first ``bars`` bars of :data:`TUNE` (extracted as the training data is)."""
    require(NOTTINGHAM_MIDI.is_dir() and SPLIT_MAP.is_file(), f"Nottingham at {NOTTINGHAM_MIDI}")
    with SPLIT_MAP.open() as f:
        split = {row["jukedeck_file"]: row["boulanger_split"] for row in csv.DictReader(f)}
    assert split.get(TUNE) == "test", f"{TUNE} is not in the test split"
    from training.prepare import extract_file

    tune = extract_file(NOTTINGHAM_MIDI / TUNE)
    assert not isinstance(tune, str), f"{TUNE} skipped: {tune}"
    n = bars * 16
    out = {k: np.asarray(v[:n], dtype=np.int64) for k, v in tune.items()}
    assert (out["position"] == np.arange(n) % 16).all(), "not 4/4 from the first step"
    return out


def melody_messages(melody: np.ndarray, velocity: np.ndarray) -> dict[int, list[Message]]:
    """The player's messages at each step: note-off of the previous note at a new onset or a rest, then the note-on."""
    out: dict[int, list[Message]] = {}
    sounding: int | None = None
    for s, tok in enumerate([*melody.tolist(), ct.MEL_REST]):
        msgs: list[Message] = []
        if tok != ct.MEL_HOLD and sounding is not None:
            msgs.append((0x80, sounding, 0))
            sounding = None
        if tok >= ct.MEL_NOTE_OFFSET:
            pitch = ct.melody_pitch(int(tok))
            assert pitch is not None
            msgs.append((0x90, pitch, ct.bin_velocity(int(velocity[s]))))
            sounding = pitch
        if msgs:
            out[s] = msgs
    return out


def test_accompany_follows_the_midi_clock_on_the_players_grid(start_daemon: Any, model_dir: Path) -> None:
    tune = load_tune(8)
    melody, velocity, position = tune["melody"], tune["velocity"], tune["position"]
    steps = melody.size
    d = start_daemon("--mode", "accompany", "--clock", "midi")
    rec = start_recording(d)
    kb = Keyboard(d)
    try:
        bpm = 150.0
        t0 = time.perf_counter_ns() + 600_000_000
        ticks = clock_schedule(t0 + 20_000_000, bpm, (steps + 1) * 6)
        by_step = melody_messages(melody, velocity)
        schedule: list[tuple[int, Message]] = [(t0, (START,))]
        for i, t in enumerate(ticks):
            schedule.append((t, (CLOCK,)))
            if i % 6 == 0:
                schedule.extend((t, m) for m in by_step.get(i // 6, []))
        stop_at = ticks[-1] + (ticks[1] - ticks[0])
        schedule.append((stop_at, (STOP,)))
        kb.play(schedule)
        kb.join(steps * 0.1 + 10)
        rec.settle(0.4)
        events = rec.snapshot()
    finally:
        rec.close()
        kb.close()
    start_sent = next(t for t, m in kb.sent if m == (START,))
    stop_sent = next(t for t, m in kb.sent if m == (STOP,))
    step_ticks = [t for t, m in kb.sent if m == (CLOCK,)][::6]
    assert len(step_ticks) == steps + 1
    assert not note_ons([m for t, m in events if t < start_sent]), "notes before Start"
    chord_onsets = onset_groups([(t, m) for t, m in events if t < stop_sent], CHORDS)
    assert len(chord_onsets) >= 8, f"too few chords: {len(chord_onsets)}\n{d.output()}"

    offsets = [t - step_ticks[nearest(step_ticks, t)] for t in chord_onsets]
    bound = REACTIVE_WINDOW_NS + 2 * PERIOD_NS + 3_000_000
    print(f"chord onsets vs the player's grid: median {statistics.median(offsets) / 1e6:.2f} ms, "
          f"max {max(offsets) / 1e6:.2f} ms, min {min(offsets) / 1e6:.2f} ms (bound {bound / 1e6:.2f})")  # fmt: skip
    assert max(offsets) <= bound and min(offsets) >= -1_000_000, sorted(o / 1e6 for o in offsets)

    from rtgen.config import Config
    from rtgen.model import Model
    from rtgen.performer import accompany_offline

    offline = accompany_offline(Model.load(model_dir), Config(), melody, velocity, position, seed=1)
    human = ct.resolve_holds(tune["chord"], ct.CHORD_HOLD, ct.CHORD_NC)
    counted = [s for s in range(steps) if position[s] in (0, 8) and melody[s] >= ct.MEL_NOTE_OFFSET]
    assert len(counted) >= 12
    step_ns = step_ticks[1] - step_ticks[0]
    live_hit = live_f1 = off_hit = off_f1 = 0.0
    for s in counted:
        pc = (ct.melody_pitch(int(melody[s])) or 0) % 12
        live = {p % 12 for p in sounding_at(events, step_ticks[s] + step_ns // 2, CHORDS)}
        off = token_pcs(int(offline[s]))
        ref = token_pcs(int(human[s]))
        live_hit += pc in live
        off_hit += pc in off
        live_f1 += pc_f1(live, ref)
        off_f1 += pc_f1(off, ref)
    n = len(counted)
    live_hit, live_f1, off_hit, off_f1 = live_hit / n, live_f1 / n, off_hit / n, off_f1 / n
    print(f"hit live {live_hit:.3f} offline {off_hit:.3f}; F1 live {live_f1:.3f} offline {off_f1:.3f} ({n} steps)")
    assert abs(live_hit - off_hit) <= 0.15, (live_hit, off_hit)
    assert abs(live_f1 - off_f1) <= 0.15, (live_f1, off_f1)

    after_stop = [(t, m) for t, m in events if t > stop_sent + 2 * PERIOD_NS + 20_000_000]
    assert not note_ons([m for _, m in after_stop]), "notes after Stop"
    assert sounding_notes([m for _, m in events]) == set(), "a note is left sounding after Stop"
    assert d.proc.poll() is None, d.output()

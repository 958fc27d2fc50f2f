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
import random
import signal
import socket
import statistics
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import NOTTINGHAM_MIDI, SPLIT_MAP, require, serve_jack
from pythonosc.osc_message import OscMessage
from test_daemon import Daemon, Peer

from rtgen import contract as ct
from rtgen.bench.harness import (
    PERIOD_NS,
    MidiRecorder,
    is_note_off,
    jack_connect,
    jack_port_names,
    note_ons,
    sounding_notes,
    wait_for_port,
)  # fmt: skip

pytestmark = pytest.mark.jack

Message = tuple[int, ...]
Events = list[tuple[int, Message]]

MELODY, CHORDS, BASS = 0, 1, 2  # 0-based channels of the parts
START, CONTINUE, STOP, CLOCK, SPP = 0xFA, 0xFB, 0xFC, 0xF8, 0xF2
REACTIVE_WINDOW_NS = 12_000_000  # [accompany] reactive_window_ms default
C_MAJOR = frozenset((0, 2, 4, 5, 7, 9, 11))
TUNE = "ashover35.mid"  # Nottingham test split, 4/4 from step 0, the melody and a chord on the first downbeat

_names = itertools.count(1)


_servers = itertools.count(1)


@pytest.fixture
def jack_server() -> Iterator[str]:
    """A JACK server of each test's own, asynchronous: with a daemon that has two JACK clients (input and output)
    the synchronous server of the other modules stalled here in about one run of three (a client missing its
    cycle stops every client until the timeout, then the driver); asynchronous, a late client only misses a
    cycle. Every test gets a fresh server so that nothing one test leaves behind reaches the next."""
    yield from serve_jack(f"rtgen-playalong-{os.getpid()}-{next(_servers)}", sync=False)


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
            d.stop()


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
    daemon.wait_playing(timeout)
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


def finish(d: Daemon, sig: int = signal.SIGTERM) -> None:
    """End the daemon and wait for a clean exit (before the test's own clients close: see ``start_daemon``)."""
    d.proc.send_signal(sig)
    assert d.wait() == 0, d.output()


def start_recording(d: Daemon, timeout: float = 20.0) -> MidiRecorder:
    """Record the daemon's output; fails with the daemon's log as soon as it exits or if its port never appears."""
    d.wait_playing(timeout)
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
        # a 2-core machine can hold the daemon off for a while: wait for the releases rather than guess a time
        rec.wait_until(lambda ev: not sounding_notes([m for _, m in ev]), timeout=2.0)
        rec.settle(0.4)
        events = rec.snapshot()
        assert d.proc.poll() is None, d.output()
        peer = Peer(d.osc_port)
        try:
            state = status(peer)
        finally:
            peer.close()
        finish(d)
    finally:
        rec.close()
        kb.close()
    decided = f"{state['reactive_on_onset']} of {state['reactive_steps']} reactive steps decided on the player's note"
    print(decided)
    start_sent = next(t for t, m in kb.sent if m == (START,))
    stop_sent = next(t for t, m in kb.sent if m == (STOP,))
    step_ticks = [t for t, m in kb.sent if m == (CLOCK,)][::6]
    assert len(step_ticks) == steps + 1
    assert not note_ons([m for t, m in events if t < start_sent]), "notes before Start"
    chord_onsets = onset_groups([(t, m) for t, m in events if t < stop_sent], CHORDS)
    assert len(chord_onsets) >= 8, f"too few chords: {len(chord_onsets)}\n{d.output()}"

    # a step whose tick (or the one before) this process sent late is no measure of rtgen: it plays on the
    # grid the earlier ticks predicted, so against the late stamp its chord looks early or late
    # (and a step whose notes it sent late: the daemon cannot hear a note before it comes)
    behind: dict[int, int] = {}
    for sent, planned in zip(kb.sent, schedule, strict=True):
        behind[planned[0]] = max(behind.get(planned[0], 0), sent[0] - planned[0])
    step_behind = [behind[t] for t in ticks[::6]]
    on_time = {i for i in range(len(step_ticks)) if max(step_behind[max(0, i - 1) : i + 1]) <= 2_000_000}
    assert len(on_time) >= 0.8 * len(step_ticks), f"the test's player sent {step_behind} ns behind its schedule"
    # a chord on a step where the player strikes a note is decided on that note; on a step where the player
    # holds or rests, when the player's timing says no note is due any more: at the latest when the window ends.
    # Either way the chord goes out in the JACK cycle after its decision, and the tick came in the cycle after
    # its send: a cycle each, and one more where the recorder runs before the daemon's output in the graph
    bounds = {"struck": 3 * PERIOD_NS + 3_000_000, "held": REACTIVE_WINDOW_NS + 3 * PERIOD_NS + 3_000_000}
    offsets: dict[str, list[int]] = {"struck": [], "held": []}
    for t in chord_onsets:
        i = nearest(step_ticks, t)
        if i in on_time:
            kind = "struck" if i < steps and melody[i] >= ct.MEL_NOTE_OFFSET else "held"
            offsets[kind].append(t - step_ticks[i])
    measured = offsets["struck"] + offsets["held"]
    print(f"{len(chord_onsets) - len(measured)} chords on steps the test sent late are not measured")
    assert len(measured) >= 8, (len(measured), step_behind)
    assert len(offsets["struck"]) >= 4, offsets
    for kind, found in offsets.items():
        if not found:
            continue
        ms = sorted(round(o / 1e6, 2) for o in found)
        print(f"chords on steps the player {kind} a note vs the player's grid: median {statistics.median(ms):.2f}"
              f" ms, min {ms[0]:.2f}, max {ms[-1]:.2f} (bound {bounds[kind] / 1e6:.2f}): {ms}")  # fmt: skip
    # both ends are stamped by this process's Python threads, which a shared 2-core machine can hold off for
    # tens of ms: a stray chord is reported and tolerated (the bench measures the latency itself), a pattern is not
    late = [o for kind, found in offsets.items() for o in found if o > bounds[kind]]
    print(f"{len(late)} of {len(measured)} chords beyond their bound: {[round(o / 1e6, 2) for o in late]} ms")
    assert len(late) <= max(1, len(measured) // 20), (offsets, decided)
    assert statistics.median(offsets["struck"]) <= bounds["struck"], (offsets, decided)
    assert min(measured) >= -1_000_000, offsets

    from rtgen.arrange.performer import accompany_offline
    from rtgen.config import Config
    from rtgen.generation.model import Model

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
    left = sounding_notes([m for _, m in events])
    tail = [((t - stop_sent) / 1e6, m) for t, m in events if t > stop_sent - 200_000_000]
    assert left == set(), (
        f"left sounding after Stop: {sorted(left)}; events from 200 ms before it (ms, msg): {tail}\n{d.output()}"
    )
    offs = [t - stop_sent for t, m in events if t > stop_sent and is_note_off(m)]
    print(f"notes released {max(offs) / 1e6 if offs else 0:.2f} ms after Stop")
    assert not offs or max(offs) < 1_000_000_000, f"released {max(offs) / 1e6:.0f} ms after Stop\n{d.output()}"


# --- 2. following a jittery MIDI clock ---------------------------------------------------------------------------


def test_clock_follow_tempo_and_continue_after_song_position(start_daemon: Any, tmp_path: Path) -> None:
    recording = tmp_path / "followed.mid"
    d = start_daemon("--clock", "midi", "--record", str(recording))
    rec = start_recording(d)
    kb = Keyboard(d)
    peer = Peer(d.osc_port)
    try:
        bpm = 100.0
        rng = random.Random(5)
        t0 = time.perf_counter_ns() + 400_000_000
        n = 8 * 24 * 100 // 60  # ~8 s of ticks
        ticks = [t + round(rng.uniform(-2e6, 2e6)) for t in clock_schedule(t0 + 20_000_000, bpm, n)]
        kb.play([(t0, (START,)), *((t, (CLOCK,)) for t in ticks)])
        kb.join(15)
        state = status(peer)
        # every output is on JACK, which plays a note at the start of the next period: the loop spins 200 us
        assert state["output_quantum_us"] == PERIOD_NS / 1000 and state["spin_us"] == 200.0, state
        kb.send(STOP)
        rec.settle(0.3)
        played = rec.snapshot()
        # SPP to step 32 (bar 3) while stopped, Continue, then ~1.2 s more clock
        kb.send(SPP, 32 & 0x7F, 32 >> 7)
        t1 = time.perf_counter_ns() + 50_000_000
        more = [t + round(rng.uniform(-2e6, 2e6)) for t in clock_schedule(t1 + 20_000_000, bpm, 48)]
        kb.play([(t1, (CONTINUE,)), *((t, (CLOCK,)) for t in more)])
        kb.join(5)
        resumed = status(peer)
        kb.send(STOP)
        rec.settle(0.3)
        finish(d)
        events = rec.snapshot()
    finally:
        rec.close()
        kb.close()
        peer.close()
    print(f"followed tempo {state['tempo']:.2f} BPM")
    assert abs(state["tempo"] - bpm) <= 0.01 * bpm, state["tempo"]
    sent_ticks = [t for t, m in kb.sent if m == (CLOCK,)]
    step_ticks = sent_ticks[:n:6]
    onsets = onset_groups(played)
    assert len(onsets) >= 12, f"too few notes while following: {len(onsets)}\n{d.output()}"
    k = np.array([nearest(step_ticks, t) for t in onsets], dtype=float)
    slope = np.polyfit(k, np.array(onsets, dtype=float), 1)[0]
    fitted = 60e9 / (slope * 4)
    print(f"note-on fit: {fitted:.2f} BPM over {len(onsets)} onsets")
    assert abs(fitted - bpm) <= 0.01 * bpm, fitted
    continue_sent = next(t for t, m in kb.sent if m == (CONTINUE,))
    assert note_ons([m for t, m in events if t > continue_sent]), "nothing played after Continue"
    assert resumed["bar"] == 3, f"SPP to step 32 is bar 3; status says {resumed['bar']}.{resumed['beat']}"
    left = sounding_notes([m for _, m in events])
    # the daemon's log says what each transport event released (a note-off rtgen never sent, or one lost later)
    assert not left, f"notes left sounding: {sorted(left)}; the daemon's log:\n{d.output()[-3000:]}"
    # the recording's tempo map is the followed clock's from its start (the daemon was started at 300 BPM, and
    # nothing was played in the wait for the Start), without the jitter
    import mido

    tempi = [mido.tempo2bpm(m.tempo) for m in mido.MidiFile(recording).tracks[0] if m.type == "set_tempo"]
    print(f"recording tempo map: {[round(t, 2) for t in tempi]}")
    assert all(abs(t - bpm) <= 0.03 * bpm for t in tempi), tempi
    assert len(tempi) <= 12, f"the ticks' jitter went into the tempo map: {tempi}"
    mid = mido.MidiFile(recording)
    step_ticks = mid.ticks_per_beat // 4
    ons, tick = [], 0
    for m in mido.merge_tracks(mid.tracks):
        tick += m.time
        if m.type == "note_on" and m.velocity > 0:
            ons.append(tick)
    # absolute positions: the Start's first tick is the file's tick 0, and after the Stop, the SPP to step 32 and
    # the Continue the file goes on at step 32's place in a bar (the place of step 32 itself had gone by)
    ons_arr = np.array(ons)
    # the first run's last step is n // 6 (its notes land up to 12 ticks late); the Continue's first is later
    after = ons_arr[ons_arr > n // 6 * step_ticks + step_ticks // 2]
    print(f"recording's first note-on at tick {ons[0]}; after the Continue from {after.min() if after.size else None}")
    assert ons[0] <= 12, ons[:4]
    off_grid = (ons_arr + step_ticks // 2) % step_ticks - step_ticks // 2
    print(f"recording's note-ons off the step grid: max {np.abs(off_grid).max()} ticks of {step_ticks}")
    # within the map's tolerance (1/64 beat: 7.5 ticks) plus the clock's ±2 ms jitter: 6 ticks at most alone; a
    # note sent late by a loaded host (19 ticks = 24 ms in a full suite on a host half as fast as usual) may add
    # a few JACK periods, while a tempo-map error shifts every note
    assert np.abs(off_grid).max() <= 28, off_grid
    assert np.median(np.abs(off_grid)) <= 6, off_grid
    assert after.size and (after.min() - 32 * step_ticks) % (16 * step_ticks) <= 12, after[:4]


def file_onsets(path: Path) -> tuple[int, dict[str, list[int]]]:
    """The file's ticks per beat, and the absolute tick of every note-on of each track (by track name)."""
    import mido

    mid = mido.MidiFile(path)
    out: dict[str, list[int]] = {}
    for tr in mid.tracks:
        tick = 0
        for m in tr:
            tick += m.time
            if m.type == "note_on" and m.velocity > 0:
                out.setdefault(tr.name, []).append(tick)
    return mid.ticks_per_beat, out


def test_recording_while_following_lines_up_with_the_files_own_bars(start_daemon: Any, tmp_path: Path) -> None:
    """Issue 19 part 7: bar 1 of a recording made while following a MIDI clock is on the clock's grid.

    The daemon starts at 110 BPM and waits; the player plays a note during the wait, then the clock starts
    (100 BPM, ~2 s after the daemon plays) and the player plays on steps of the clock (one between two steps).
    Absolute positions in the file: the first followed step on a bar line (the note played in the wait is a
    pickup of whole bars before it), every note of rtgen's on the file's 16th grid, the player's where the
    sender put them relative to the clock.
    """
    bpm = 100.0
    step_ns = 60e9 / (bpm * 4)
    n = 6 * 16 * 3  # three bars of ticks
    steady = 0
    for attempt in range(3):  # a take whose own clock this process sent late is no measure of rtgen: play it again
        recording = tmp_path / f"jam{attempt}.mid"
        d = start_daemon("--mode", "accompany", "--clock", "midi", "--record", str(recording), tempo=110.0)
        kb = Keyboard(d)
        try:
            t0 = time.perf_counter_ns() + 2_000_000_000  # the Start, ~2 s after the daemon plays
            ticks = clock_schedule(t0 + 20_000_000, bpm, n)
            steps = {0: 60, 4: 64, 8: 67, 14: 72, 16: 60, 22: 65, 24: 69, 32: 67, 36: 64}  # step -> pitch
            between = 26.5  # one note half a step after a step
            player: list[tuple[int, Message]] = [(t0 - 900_000_000, (0x90, 55, 80)), (t0 - 700_000_000, (0x80, 55, 0))]
            for s, pitch in steps.items():
                player += [(ticks[6 * s], (0x90, pitch, 90)), (ticks[6 * s] + round(2.5 * step_ns), (0x80, pitch, 0))]
            half = ticks[6 * int(between)] + round((between % 1) * step_ns)
            player += [(half, (0x90, 62, 90)), (half + round(step_ns), (0x80, 62, 0))]
            kb.play(sorted([(t0, (START,)), *((t, (CLOCK,)) for t in ticks), *player]))
            kb.join(20)
            time.sleep(0.2)
            kb.send(STOP)
            time.sleep(0.3)
            finish(d)
        finally:
            kb.close()
        # a tick this process sent late moves the followed grid (the DAW's clock was late): the tempo map follows it
        # and the steps around it are no measure of the file's grid; only the steps before the first one count
        late = np.array([t for t, m in kb.sent if m == (CLOCK,)]) - np.array(ticks)
        late_at = np.flatnonzero(late > 8_000_000)  # 6 ticks: the tempo map's own tolerance
        steady = int(late_at[0]) // 6 - 1 if late_at.size else n // 6
        print(f"the test's clock was sent at most {late.max() / 1e6:.1f} ms late; steady for {steady} steps")
        if steady >= 16:
            break
    assert steady >= 16, f"this process sent its clock late from step {steady + 1} on, in three takes (a loaded host)"
    tpb, onsets = file_onsets(recording)
    step_ticks, bar_ticks = tpb // 4, 4 * tpb
    played = onsets.get("player", [])
    assert len(played) == len(steps) + 2, f"the player's notes: {played}\n{d.output()}"
    first = played[1]  # the note sent with the Start's first tick: the first followed step
    origin = round(first / bar_ticks) * bar_ticks
    measured = origin + steady * step_ticks  # the file's ticks before this are measured
    mine = np.array(sorted(t for name, ts in onsets.items() if name != "player" for t in ts))
    mine = mine[mine < measured]
    assert len(mine) >= 12, f"too few notes of rtgen's: {onsets}\n{d.output()}"
    off_grid = (mine + step_ticks // 2) % step_ticks - step_ticks // 2
    print(f"first followed step at tick {first} (bar {first / bar_ticks + 1:.2f}); rtgen's notes off the 16th grid: "
          f"max {np.abs(off_grid).max()} ticks of {step_ticks}; pickup note at {played[0]}")  # fmt: skip
    assert abs(first - origin) <= 3 and 0 <= played[0] < origin, (first, played[0])
    # the pickup is at the first step's tempo, measured over that one step (1 % off: 8 ticks)
    # (and the test's own send and the loop's poll of that note, each a few ms late on a loaded machine: 24 ticks)
    assert first - played[0] == pytest.approx(0.92e9 / step_ns * step_ticks, abs=24), played[0]
    # within the tempo map's tolerance (1/64 beat: 7.5 ticks) and a late poll's stamp of a tick (a few ms on a
    # loaded 2-core machine); a step nobody played on is decided when accompany's reactive window ends, and its
    # notes sound (and are recorded) that much later. Before issue 19 part 7 the whole take sat a random
    # fraction of a step off the grid (up to 60 ticks), the Start's first step anywhere in a bar
    window = REACTIVE_WINDOW_NS / step_ns * step_ticks
    # the bounds hold on a host twice as slow as this one loaded (measured: max 13-19, median |off| 2-6 ticks)
    assert off_grid.min() >= -20 and off_grid.max() <= 20 + window, (off_grid, window)
    assert np.median(np.abs(off_grid)) <= 10, off_grid  # a take shifted off the grid has a median of 20-60
    assert mine.min() >= origin - 1, f"rtgen played before the Start: {mine.min()}"
    import mido

    tempi = [mido.tempo2bpm(m.tempo) for m in mido.MidiFile(recording).tracks[0] if m.type == "set_tempo"]
    assert abs(tempi[0] - bpm) <= 0.02 * bpm, f"the wait is not at the followed tempo: {tempi}"
    expected = sorted([origin + s * step_ticks for s in steps] + [origin + round(between * step_ticks)])
    got = sorted(played[1:])
    pairs = [(a, b) for a, b in zip(got, expected, strict=True) if b < measured]
    # the test's own sends, each a few ms late on a loaded machine, and the followed tempo within 1 % (as the
    # tempo test asks): 0 growing to 24 ticks over ten notes in a full suite on a host half as fast as usual; a
    # take off the grid is off by 20-60 ticks in every note
    errors = [abs(a - b) for a, b in pairs]
    assert len(pairs) >= 4 and max(errors) <= 36 and float(np.median(errors)) <= 16, pairs


# --- 3. leading a DAW: clock out ----------------------------------------------------------------------------------
def test_clock_out_ticks_at_24_ppqn_and_stop_on_exit(start_daemon: Any) -> None:
    d = start_daemon("--clock-out", tempo=120.0)
    rec = start_recording(d)
    peer = Peer(d.osc_port)
    try:
        # the recorder may connect after the first Start went out: stop, then start again while recorded
        assert rec.wait_until(lambda ev: any(m == (CLOCK,) for _, m in ev), timeout=15), d.output()
        peer.send("/rtgen/stop")
        assert rec.wait_until(lambda ev: any(m == (STOP,) for _, m in ev), timeout=5), "no Stop on /rtgen/stop"
        rec.settle(0.2)
        mark = time.perf_counter_ns()
        peer.send("/rtgen/play")
        assert rec.wait_until(lambda ev: sum(t > mark and m == (CLOCK,) for t, m in ev) >= 48 * 5, timeout=15)
        d.proc.send_signal(signal.SIGINT)
        assert d.wait() == 0, d.output()
        rec.settle(0.3)
        events = [(t, m) for t, m in rec.snapshot() if t > mark]
    finally:
        rec.close()
        peer.close()
    realtime = [(t, m) for t, m in events if m and (m[0] >= 0xF8 or m[0] == SPP)]
    assert realtime[0][1] == (START,), f"the clock did not begin with Start: {realtime[:3]}"
    ticks = [t for t, m in realtime if m == (CLOCK,)]
    first = ticks[0] + 500_000_000
    window = [t for t in ticks if first <= t < first + 4_000_000_000]
    rate = (len(window) - 1) / ((window[-1] - window[0]) / 1e9)
    median = statistics.median(b - a for a, b in itertools.pairwise(ticks))
    print(f"clock out: {rate:.2f} ticks/s, median interval {median / 1e6:.2f} ms")
    assert abs(rate - 48.0) <= 0.02 * 48.0, rate
    assert abs(median - 60e9 / (120 * 24)) <= PERIOD_NS, median
    assert realtime[-1][1] == (STOP,), f"no Stop at the end: {realtime[-3:]}"


# --- 4. call and response ------------------------------------------------------------------------------------------
def phrase(t0: int, pitches: Sequence[int], beat_ns: int, velocity: int = 90) -> list[tuple[int, Message]]:
    """Quarter notes from ``t0``, each released a little before the next."""
    out: list[tuple[int, Message]] = []
    for i, p in enumerate(pitches):
        out.append((t0 + i * beat_ns, (0x90, p, velocity)))
        out.append((t0 + (i + 1) * beat_ns - 40_000_000, (0x80, p, 0)))
    return out


def test_call_and_response_answers_in_key_and_falls_silent_when_interrupted(start_daemon: Any) -> None:
    d = start_daemon("--mode", "call-and-response", tempo=120.0)
    rec = start_recording(d)
    kb = Keyboard(d)
    beat_ns = 500_000_000
    bar_ns = 4 * beat_ns
    try:
        call = [60, 62, 64, 65, 67, 69, 71, 72]  # two bars of quarter notes up C major
        t0 = time.perf_counter_ns() + 300_000_000
        kb.play(phrase(t0, call, beat_ns))
        kb.join(10)
        call_end = kb.sent[-1][0]
        call_len = call_end - kb.sent[0][0]
        # the answer: wait until rtgen has played and fallen silent again
        assert rec.wait_until(lambda ev: bool(note_ons([m for t, m in ev if t > call_end])), timeout=5), d.output()
        rec.wait_until(
            lambda ev: (
                sounding_notes([m for _, m in ev]) == set() and max(t for t, _ in ev) < time.perf_counter_ns() - beat_ns
            ),
            timeout=12,
        )
        answer = [(t, m) for t, m in rec.snapshot() if t > call_end]
        # a second, shorter call; interrupt its answer once rtgen is sounding notes
        t1 = time.perf_counter_ns() + 100_000_000
        kb.play(phrase(t1, [67, 65, 64, 62], beat_ns))
        kb.join(5)
        call2_end = kb.sent[-1][0]

        def answering(ev: Events) -> bool:
            return bool(sounding_notes([m for t, m in ev if t > call2_end]))

        assert rec.wait_until(answering, timeout=5), "no second answer"
        time.sleep(0.15)
        t_int = kb.send(0x90, 64, 90)
        time.sleep(0.3)
        kb.send(0x80, 64, 0)
        rec.settle(0.3)
        events = rec.snapshot()
        finish(d)
    finally:
        rec.close()
        kb.close()
    melody_on = [t for t, m in answer if note_ons([m], MELODY)]
    assert melody_on, "the answer has no melody"
    delay = melody_on[0] - call_end
    pcs = [m[1] % 12 for _, m in answer if note_ons([m], MELODY)]
    diatonic = sum(pc in C_MAJOR for pc in pcs) / len(pcs)
    ends = [t for t, m in answer if m[0] & 0xF0 in (0x80, 0x90)]
    span = max(ends) - min(t for t, m in answer if note_ons([m]))
    print(f"answer starts {delay / 1e6:.0f} ms after the call, {len(pcs)} melody notes, {diatonic:.0%} diatonic, "
          f"lasts {span / 1e9:.2f} s (call {call_len / 1e9:.2f} s)")  # fmt: skip
    assert 0 < delay <= bar_ns, delay
    assert diatonic >= 0.8, pcs
    assert abs(span - call_len) <= bar_ns // 2, (span, call_len)
    bound = t_int + 2 * PERIOD_NS + 5_000_000
    assert sounding_notes([m for t, m in events if t <= bound]) == set(), "still sounding after the interruption"
    released = [t for t, m in events if t_int <= t and m[0] & 0xF0 in (0x80, 0x90) and not note_ons([m])]
    print(f"interruption released everything {(max(released) - t_int) / 1e6:.2f} ms after the player's note")
    assert not note_ons([m for t, m in events if t_int < t <= t_int + 250_000_000]), "rtgen went on answering"


# --- 5. improvise over held chords ---------------------------------------------------------------------------------
def test_improvise_plays_chord_tones_on_strong_beats_and_never_the_chords(start_daemon: Any) -> None:
    d = start_daemon("--mode", "improvise", tempo=120.0)
    rec = start_recording(d)
    kb = Keyboard(d)
    peer = Peer(d.osc_port)
    fb = Feedback()
    bar_ns, lead_ns = 2_000_000_000, 100_000_000  # change chords a little early: the tracker lets them settle
    chords = [(60, 64, 67), (60, 64, 67), (53, 57, 60), (53, 57, 60), (55, 59, 62)]  # C C F F G, one a bar
    try:
        peer.send("/rtgen/subscribe", "127.0.0.1", fb.port)
        deadline = time.monotonic() + 10
        while not [b for b in fb.beats() if b[2] == 1] and time.monotonic() < deadline:
            time.sleep(0.02)
        downbeats = [t for t, _, beat in fb.beats() if beat == 1]
        assert downbeats, f"no /rtgen/beat feedback\n{d.output()}"
        now = time.perf_counter_ns()
        first = downbeats[-1] + bar_ns * (1 + (now + 500_000_000 - downbeats[-1]) // bar_ns)
        schedule: list[tuple[int, Message]] = [(now + 10_000_000, (0x90, p, 80)) for p in chords[0]]
        held = chords[0]
        for b, chord in enumerate(chords[1:], start=1):
            if chord == held:
                continue
            at = first + b * bar_ns - lead_ns
            schedule += [(at, (0x80, p, 0)) for p in held] + [(at + 1_000_000, (0x90, p, 80)) for p in chord]
            held = chord
        end = first + len(chords) * bar_ns
        schedule += [(end, (0x80, p, 0)) for p in held]
        kb.play(schedule)
        kb.join(20)
        time.sleep(0.3)  # the melody goes on over the last chord: nothing to settle
        events = rec.snapshot()
        finish(d)
    finally:
        fb.close()
        peer.close()
        rec.close()
        kb.close()
    strong = [first + j * bar_ns // 2 for j in range(2 * len(chords))]  # beats 1 and 3
    on_strong: list[tuple[int, int]] = []
    for t, m in events:
        if note_ons([m], MELODY) and first - 30_000_000 <= t < end:
            j = nearest(strong, t)
            if abs(t - strong[j]) <= 30_000_000:
                on_strong.append((m[1] % 12, j // 2))
    assert len(on_strong) >= 4, f"too few melody notes on strong beats: {on_strong}\n{d.output()}"
    tones = [pc in {p % 12 for p in chords[bar]} for pc, bar in on_strong]
    share = sum(tones) / len(tones)
    print(f"improvise: {share:.0%} of {len(tones)} strong-beat melody notes are tones of the held chord")
    assert share >= 0.6, on_strong
    assert not note_ons([m for _, m in events], CHORDS), "rtgen played the chords the player holds"
    assert not note_ons([m for _, m in events], BASS), "improvise voices the melody only"


# --- 6. switching modes --------------------------------------------------------------------------------------------
def test_mode_switches_over_osc_and_cc_leave_no_note_sounding(start_daemon: Any) -> None:
    d = start_daemon()
    rec = start_recording(d)
    kb = Keyboard(d)
    peer = Peer(d.osc_port)
    seen: list[str] = []
    try:
        assert rec.wait_until(lambda ev: len(note_ons([m for _, m in ev])) >= 5, timeout=15), d.output()
        for i, mode in enumerate(["accompany", "improvise", "call-and-response", "autonomous"]):
            peer.send("/rtgen/mode", mode)
            seen.append(wait_status(peer, "mode", mode)["mode"])
            for p in (60, 64, 67) if mode == "improvise" else (67 + i,):
                kb.send(0x90, p, 90)
            time.sleep(0.4)
            for p in (60, 64, 67) if mode == "improvise" else (67 + i,):
                kb.send(0x80, p, 0)
            time.sleep(0.2)
        kb.send(0xB0, 85, 70)  # 64..95: improvise
        seen.append(wait_status(peer, "mode", "improvise")["mode"])
        kb.send(0x90, 62, 90)
        time.sleep(0.4)
        kb.send(0x80, 62, 0)
        finish(d, signal.SIGINT)
        rec.settle(0.3)
        events = rec.snapshot()
    finally:
        peer.close()
        rec.close()
        kb.close()
    assert seen == ["accompany", "improvise", "call-and-response", "autonomous", "improvise"], seen
    assert len(note_ons([m for _, m in events])) >= 10
    assert sounding_notes([m for _, m in events]) == set(), "a mode switch left a note sounding"
    assert "Traceback" not in d.output()


# --- 7. recording both sides ---------------------------------------------------------------------------------------
def check_recording(path: Path, player_pitches: list[int], tempo: float = 300.0) -> None:
    """A type-1 file with the player's notes (in order), chords and bass, a tempo and a time signature; rtgen's
    notes on the file's own 16th grid (the first recorded step is on it: issue 19 part 7)."""
    import mido

    assert path.is_file(), f"no recording at {path}"
    mid = mido.MidiFile(path)
    tracks = {tr.name: tr for tr in mid.tracks}
    assert {"player", "chords", "bass"} <= set(tracks), list(tracks)

    def pitches(name: str) -> list[int]:
        return [m.note for m in tracks[name] if m.type == "note_on" and m.velocity > 0]

    assert pitches("player") == player_pitches
    assert pitches("chords") and pitches("bass"), "no accompaniment recorded"
    metas = {m.type for tr in mid.tracks for m in tr if m.is_meta}
    assert {"set_tempo", "time_signature"} <= metas, metas
    _, onsets = file_onsets(path)
    step_ticks = mid.ticks_per_beat // 4
    mine = np.array([t for name, ts in onsets.items() if name != "player" for t in ts])
    off_grid = (mine + step_ticks // 2) % step_ticks - step_ticks // 2
    # accompany's steps wait for the player (the reactive window) and sound that much after their grid time, and
    # a loaded 2-core machine holds the loop off for a few ms more
    ms = tempo / 60 * mid.ticks_per_beat / 1000  # ticks per ms
    window = REACTIVE_WINDOW_NS / 1e6 * ms
    print(f"{path.name}: rtgen's notes off the 16th grid by {off_grid.min()}..{off_grid.max()} ticks "
          f"(reactive window {window:.0f})")  # fmt: skip
    assert off_grid.min() >= -2 * ms and off_grid.max() <= window + 10 * ms, off_grid


def test_recording_both_sides_on_signal_and_over_osc(start_daemon: Any, tmp_path: Path) -> None:
    first, second = tmp_path / "first.mid", tmp_path / "second.mid"  # tmp_path: the test daemon's [record] folder
    d = start_daemon("--mode", "accompany", "--record", str(first))
    rec = start_recording(d)
    kb = Keyboard(d)
    peer = Peer(d.osc_port)
    beat_ns = 300_000_000
    notes1, notes2 = [60, 64, 67, 72, 67, 64], [62, 65, 69]
    try:
        kb.play(phrase(time.perf_counter_ns() + 200_000_000, notes1, beat_ns))
        kb.join(10)
        time.sleep(0.3)
        peer.send("/rtgen/record/stop")
        deadline = time.monotonic() + 10
        while not first.is_file() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.is_file(), f"/rtgen/record/stop wrote nothing; {peer.received}\n{d.output()}"
        assert d.proc.poll() is None, "the daemon stopped"
        peer.send("/rtgen/record/start", second.stem)  # into the test daemon's [record] folder, tmp_path
        assert wait_status(peer, "recording", str(second))["recording"] == str(second)
        kb.play(phrase(time.perf_counter_ns() + 100_000_000, notes2, beat_ns))
        kb.join(10)
        time.sleep(0.3)
        assert second.stat().st_size == 0, "written before recording stopped (the name is only reserved)"
        d.proc.send_signal(signal.SIGTERM)
        assert d.wait() == 0, d.output()
    finally:
        peer.close()
        rec.close()
        kb.close()
    check_recording(first, notes1)
    check_recording(second, notes2)
    assert sorted(p.name for p in tmp_path.glob("*.mid*")) == ["first.mid", "second.mid"], "a temporary file was left"
    assert not list(tmp_path.glob(".*.tmp")), "a temporary file was left"


# --- 8. input errors -----------------------------------------------------------------------------------------------
def test_unknown_midi_in_lists_the_input_ports(start_daemon: Any) -> None:
    import rtmidi

    name = f"rtgen-keys-{os.getpid()}"
    keys = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, name=name)
    keys.open_virtual_port("out")
    try:
        wait_for_port(f"{name}:out")
        d = start_daemon("--midi-in", "nosuchport")
        code = d.wait(20)
    finally:
        keys.close_port()
        keys.delete()
    out = d.output()
    assert code != 0
    assert "nosuchport" in out and "Traceback" not in out
    assert "input port" in out and f"{name}:out" in out, out


# --- 8. MIDI learn ---------------------------------------------------------------------------------------------------
def wait_state(peer: Peer, test: Any, timeout: float = 3.0) -> dict[str, Any]:
    """Poll /rtgen/status until ``test(state)`` (or timeout); returns the last state."""
    deadline = time.monotonic() + timeout
    state = status(peer)
    while not test(state) and time.monotonic() < deadline:
        time.sleep(0.05)
        state = status(peer)
    return state


def wait_file(path: Path, text: str, timeout: float = 5.0) -> str:
    """``path``'s text once it contains ``text`` (or whatever it holds at the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        found = path.read_text() if path.is_file() else ""
        if text in found or time.monotonic() >= deadline:
            return found
        time.sleep(0.05)


def test_midi_learn_maps_a_cc_sent_by_the_player_and_survives_a_restart(
    start_daemon: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))  # the daemons' user config
    user = tmp_path / "xdg" / "rtgen" / "config.toml"
    user.parent.mkdir(parents=True)
    user.write_text("# my rig\n[cc]\ntop_p = 21  # the knob\n")  # CC 21 moves top_p until it is learned away

    d = start_daemon()
    kb = Keyboard(d)
    peer = Peer(d.osc_port)
    try:
        assert status(peer)["cc"]["top_p"] == 21, "the user config's [cc] applies over --config"
        peer.send("/rtgen/learn", "tempo")
        errors = peer.wait_for("/rtgen/error")
        assert errors and "allowed: temperature, top_p, density, swing, mode, mode_extra, panic" in errors[-1][0], (
            errors
        )
        peer.send("/rtgen/learn", "temperature")
        assert wait_status(peer, "learning", "temperature")["learning"] == "temperature"
        kb.send(0xB0, 21, 100)
        learned = peer.wait_for("/rtgen/learned")
        assert learned == [["temperature", 21]], peer.received
        state = wait_status(peer, "learning", None)
        assert state["cc"]["temperature"] == 21 and state["cc"]["top_p"] == 0, state["cc"]
        assert state["temperature"] == pytest.approx(1.0), "the learning CC itself moves nothing"
        kb.send(0xB0, 21, 0)
        assert wait_state(peer, lambda s: s["temperature"] == pytest.approx(0.05))["temperature"] == pytest.approx(0.05)
        text = wait_file(user, "temperature = 21")
        assert "temperature = 21" in text and "top_p = 0  # the knob" in text and "# my rig" in text, text
        finish(d)
    finally:
        peer.close()
        kb.close()

    d = start_daemon()  # the same XDG_CONFIG_HOME: the learned mapping is back
    kb = Keyboard(d)
    peer = Peer(d.osc_port)
    try:
        state = status(peer)
        assert state["cc"]["temperature"] == 21 and state["learning"] is None, state["cc"]
        kb.send(0xB0, 21, 127)
        assert wait_state(peer, lambda s: s["temperature"] == pytest.approx(3.0))["temperature"] == pytest.approx(3.0)
        peer.send("/rtgen/unlearn", "temperature")
        assert wait_state(peer, lambda s: s["cc"]["temperature"] == 0)["cc"]["temperature"] == 0
        assert "temperature = 0" in wait_file(user, "temperature = 0")
        kb.send(0xB0, 21, 0)
        time.sleep(0.3)
        assert status(peer)["temperature"] == pytest.approx(3.0), "CC 21 is unmapped"
        finish(d)
    finally:
        peer.close()
        kb.close()
    assert "Traceback" not in d.output()

"""A MIDI input flood: 5,000 messages/s for 30 s into ``rtgen run --mode accompany`` (issue #7, section 3).

A JACK client sends a mix of note-ons and note-offs, CC 1 (mapped to the temperature: a mod-wheel
sweep), CC 7, pitch bend, SysEx, MIDI clock (the daemon is on its internal clock) and active
sensing, in bursts every 5 ms. The daemon must not crash, must keep answering ``/rtgen/status``,
its steps must advance on time (late steps and the worst lateness are printed; only a generous
50 ms is asserted, the machine is shared), its private memory must not grow between 10 s and 30 s,
and every note it played must be released by its own note-off.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import serve_jack
from test_daemon import Daemon, Peer
from test_jack_restart import first_status
from test_playalong import daemon_input, start_recording, status

from rtgen.bench.harness import jack_connect, note_ons, sounding_notes, wait_for_port

pytestmark = pytest.mark.jack

RATE = 5000  # messages per second
SECONDS = 30.0
BURST_S = 0.005  # one burst per 5 ms (about one JACK period)
MAX_LATE_US = 50_000
MAX_GROWTH_KB = 4096
_servers = itertools.count(1)


@pytest.fixture
def jack_server() -> Iterator[str]:
    """An asynchronous JACK server of this test's own."""
    yield from serve_jack(f"rtgen-flood-{os.getpid()}-{next(_servers)}", sync=False)


@pytest.fixture(scope="module")
def model_dir(shipped_model_dir: Path) -> Path:
    """The shipped model (it has the harmoniser accompany needs)."""
    return shipped_model_dir


def private_kb(pid: int) -> int:
    """Private memory of ``pid`` in kB (``Private_Clean + Private_Dirty`` of ``/proc/PID/smaps_rollup``)."""
    text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    return sum(int(n) for n in re.findall(r"^Private_(?:Clean|Dirty):\s+(\d+) kB", text, re.MULTILINE))


def flood_messages() -> Iterator[list[int]]:
    """The endless mixed stream: every note-on is followed by its note-off within ten messages."""
    pitches = itertools.cycle([60, 62, 64, 65, 67, 69, 71, 72, 67, 64])
    pitch = 60
    for i in itertools.count():
        if i % 10 == 0:
            pitch = next(pitches)
        match i % 10:
            case 0:
                yield [0x90, pitch, 90]
            case 1:
                yield [0xB0, 1, (i // 10) % 128]
            case 2 | 9:
                yield [0xE0, i % 128, (i // 128) % 128]
            case 3:
                yield [0xF0, 0x7E, 0x7F, 0x09, 0x01, 0xF7]
            case 4 | 8:
                yield [0xF8]
            case 5:
                yield [0xFE]
            case 6:
                yield [0x80, pitch, 0]
            case _:
                yield [0xB0, 7, 100]


class Flood:
    """A JACK client connected to the daemon's input that sends :data:`RATE` messages/s from a thread."""

    def __init__(self, d: Daemon) -> None:
        import rtmidi

        self.name = f"rtgen-flood-sender-{os.getpid()}"
        self.out = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, name=self.name)
        self.out.open_virtual_port("out")
        self.sent = 0
        self.late_bursts = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        port = wait_for_port(f"{self.name}:out").name
        jack_connect(port, daemon_input(d))

    def start(self, seconds: float) -> None:
        """Send for ``seconds`` from a thread; bursts keep to absolute deadlines (a late one is not made up)."""

        def run() -> None:
            send = self.out.send_message
            stream = flood_messages()
            per_burst = round(RATE * BURST_S)
            t0 = time.perf_counter()
            for k in itertools.count():
                deadline = t0 + k * BURST_S
                if deadline >= t0 + seconds or self._stop.is_set():
                    return
                left = deadline - time.perf_counter()
                if left > 0:
                    time.sleep(left)
                elif left < -BURST_S:
                    self.late_bursts += 1
                for _ in range(per_burst):
                    send(next(stream))
                self.sent += per_burst

        self._thread = threading.Thread(target=run, name="flood", daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> None:
        """Wait for the sender to finish."""
        assert self._thread is not None
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the flood sender is stuck"

    def close(self) -> None:
        """Stop sending and close the client."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.out.close_port()
        self.out.delete()


def test_a_midi_flood_neither_crashes_nor_delays_the_steps_nor_grows_memory(
    jack_server: str, model_dir: Path, tmp_path: Path
) -> None:
    d = Daemon(jack_server, model_dir, tmp_path, "--mode", "accompany", tempo=120.0)
    peer = Peer(d.osc_port)
    rec = None
    flood = None
    try:
        first_status(peer, d)
        rec = start_recording(d)
        flood = Flood(d)
        before = status(peer)
        t0 = time.monotonic()
        flood.start(SECONDS)
        time.sleep(10.0)
        mem_10 = private_kb(d.proc.pid)
        mid = status(peer, timeout=5)
        time.sleep(max(0.0, t0 + SECONDS - 0.5 - time.monotonic()))
        mem_30 = private_kb(d.proc.pid)
        flood.join(10)
        after = status(peer, timeout=5)
        assert d.proc.poll() is None, d.output()
        d.proc.send_signal(signal.SIGTERM)
        assert d.wait(20) == 0, d.output()
        rec.settle(0.3)
        msgs = rec.messages()
    finally:
        if flood is not None:
            flood.close()
        if rec is not None:
            rec.close()
        peer.close()
        d.close()
    out = d.output()
    steps = after["steps"] - before["steps"]
    late = after["late_steps"] - before["late_steps"]
    expected_steps = SECONDS * 120 / 60 * 4  # 16th-note steps at 120 BPM
    overflows = out.count("message queue limit reached")
    # rtmidi drops SysEx, active sensing and (on the internal clock) MIDI clock: 6 of every 10 messages reach us
    channel_messages = flood.sent * 6 // 10
    received = after["input_received"] - before["input_received"]
    print(
        f"flood: {flood.sent} messages sent in {SECONDS:.0f} s ({flood.late_bursts} bursts late); "
        f"steps {steps} (nominal {expected_steps:.0f}), late {late}, max lateness {after['max_late_us'] / 1000:.2f} ms "
        f"(at 10 s: {mid['late_steps'] - before['late_steps']} late); dropped late notes "
        f"{after['dropped_late_notes'] - before['dropped_late_notes']}, skipped steps {after['skipped_steps']}; "
        f"private memory {mem_10 / 1024:.1f} MB at 10 s, {mem_30 / 1024:.1f} MB at 30 s "
        f"({(mem_30 - mem_10) / 1024:+.2f} MB); the daemon took {received} of {channel_messages} channel messages, "
        f"rtmidi input queue overflows: {overflows}"
    )
    assert "Traceback" not in out, out
    assert flood.sent >= 0.9 * RATE * SECONDS, f"the sender itself fell behind: {flood.sent}"
    assert received >= 0.95 * channel_messages, (received, channel_messages)
    assert steps >= 0.9 * expected_steps, (before, after)
    assert after["max_late_us"] <= MAX_LATE_US, after
    assert mem_30 - mem_10 <= MAX_GROWTH_KB, (mem_10, mem_30)
    assert note_ons(msgs), "the daemon played nothing under the flood"
    assert sounding_notes(msgs) == set(), f"notes without their note-off: {sounding_notes(msgs)}"

"""The JACK server dies under a running ``rtgen run`` and comes back (issue #7, section 3).

What a musician on stage wants, and what these tests hold the daemon to: it notices the loss
within about a second, says so (log, ``/rtgen/status`` ``"jack"``, OSC ``/rtgen/jack`` and
``/rtgen/error`` to subscribers), keeps its musical state and its clock going, and when a server
of the same name is back it reopens its ports, within a few seconds, and plays into them again.
If a port it must connect to does not come back, it exits with a clear message and code 2.

Each test runs its own asynchronous JACK server (a name of its own, as the 8-server registry of
jackd2 wants); the killed server's registry entry and semaphores are taken over by its
successor of the same name, whose polite stop at the end frees them. libjack allows no new client
in a process whose server died until every old client of that process is closed: the test's own
recorder is closed before the server is started again, as the daemon closes its dead clients.
"""

from __future__ import annotations

import functools
import itertools
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import require
from test_daemon import Daemon, Peer
from test_playalong import Feedback, daemon_input, start_recording, status

from rtgen.bench.harness import (
    JackServer,
    MidiRecorder,
    jack_port_names,
    jack_tools_available,
    jackd_path,
    note_ons,
    sounding_notes,
    wait_for_port,
)  # fmt: skip

pytestmark = pytest.mark.jack

_servers = itertools.count(1)
NOTICE_S = 3.0  # the daemon notices within ~1 s; the bound leaves room for a loaded machine
BACK_S = 40.0  # ports back after the server is (the daemon looks every 0.5 s; closing dead clients takes ~2 s)


class Server:
    """A JACK server that can be killed and started again under the same name."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.current: JackServer | None = JackServer(name, sync=False).start()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """End jackd with ``sig`` (SIGKILL: it leaves its registry entry and semaphores behind)."""
        server = self.current
        assert server is not None
        server.proc.send_signal(sig)
        server.proc.wait(10)
        self.current = None

    def restart(self) -> None:
        """Start a server of the same name again."""
        assert self.current is None
        self.current = JackServer(self.name, sync=False).start()

    def stop(self) -> None:
        """Stop the server politely; a killed one is started again first, so that it leaves no registry entry."""
        if self.current is None:
            self.restart()
        assert self.current is not None
        self.current.close()
        self.current = None


@pytest.fixture
def jack() -> Iterator[Server]:
    """A private asynchronous JACK server this test may kill and restart; this process's clients point at it."""
    require(jackd_path() is not None, "jackd (apt-get install jackd2)")
    require(jack_tools_available(), "jack_lsp/jack_connect (apt-get install jackd2)")
    saved = {k: os.environ.get(k) for k in ("JACK_DEFAULT_SERVER", "JACK_NO_START_SERVER")}
    server = Server(f"rtgen-restart-{os.getpid()}-{next(_servers)}")
    os.environ["JACK_DEFAULT_SERVER"] = server.name
    os.environ["JACK_NO_START_SERVER"] = "1"
    try:
        yield server
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def model_dir(shipped_model_dir: Path) -> Path:
    """The shipped model."""
    return shipped_model_dir


def wait_for(predicate: object, timeout: float, what: str, d: Daemon) -> float:
    """Poll ``predicate()`` every 50 ms until true; returns the seconds it took (fails with the daemon's log)."""
    assert callable(predicate)
    t0 = time.monotonic()
    while not predicate():
        assert d.proc.poll() is None, f"the daemon exited ({d.proc.returncode}) waiting for {what}:\n{d.output()}"
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{what} not within {timeout} s; daemon output:\n{d.output()}")
        time.sleep(0.05)
    return time.monotonic() - t0


def first_status(peer: Peer, d: Daemon, timeout: float = 30.0) -> dict[str, Any]:
    """``/rtgen/status`` once the daemon's OSC server answers (asked again every second until then)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return status(peer, timeout=1.0)
        except AssertionError:
            assert d.proc.poll() is None and time.monotonic() < deadline, f"no status:\n{d.output()}"


def port_listed(name: str) -> bool:
    """``name`` is a MIDI port of the server now (False while ``jack_lsp`` cannot get an answer)."""
    try:
        return name in jack_port_names(midi=True)
    except (RuntimeError, subprocess.TimeoutExpired):
        print(f"jack_lsp got no answer at {time.monotonic():.1f}")
        return False


def played_all_parts(events: list[tuple[int, tuple[int, ...]]], since_ns: int = 0) -> bool:
    """Melody, chords and bass (channels 0, 1, 2) have each sounded a note since ``since_ns``."""
    return {m[0] & 0x0F for t, m in events if t >= since_ns and note_ons([m])} >= {0, 1, 2}


def lose_and_get_back(jack: Server, d: Daemon, peer: Peer, sig: int, round_no: int) -> MidiRecorder:
    """Kill the server under the daemon, check it says so and plays on, restart it; a recorder on the new port."""
    rec = start_recording(d)
    assert rec.wait_until(played_all_parts, timeout=20), d.output()
    before = status(peer)
    assert before["jack"] == "ok" and before["jack_losses"] == round_no - 1, before
    rec.close()  # a client of a dead server must be closed before this process may open another one
    jack.kill(sig)
    t_kill = time.monotonic()
    noticed = wait_for(lambda: status(peer)["jack"] == "gone", NOTICE_S, "the loss noticed (status jack=gone)", d)
    log = d.output()
    assert len(re.findall(r"jack: server '[^']+' gone, retrying", log)) == round_no, log
    gone = status(peer)
    assert gone["jack_losses"] == round_no
    time.sleep(1.0)
    later = status(peer)  # the music goes on without a server: the clock, the bar and the state are kept
    assert later["steps"] > gone["steps"], (gone, later)
    assert (later["mode"], later["tempo"], later["playing"]) == (before["mode"], before["tempo"], True)
    print(f"round {round_no} ({signal.Signals(sig).name}): loss noticed after {noticed:.2f} s")
    jack.restart()
    t_restart = time.monotonic()
    wait_for(lambda: port_listed(d.port), BACK_S, f"{d.port} back on the new server", d)
    back = wait_for(lambda: status(peer)["jack"] == "ok", BACK_S, "status jack=ok", d)
    print(
        f"round {round_no}: ports back {time.monotonic() - t_restart:.2f} s after the restart "
        f"({time.monotonic() - t_kill:.2f} s after the loss; status ok {back:.2f} s after the port)"
    )
    assert len(re.findall(r"jack: server '[^']+' back, ports reopened", d.output())) == round_no
    daemon_input(d)  # the input port is back too
    return start_recording(d)


def test_server_killed_and_stopped_then_back_the_daemon_reconnects_and_plays(
    jack: Server, model_dir: Path, tmp_path: Path
) -> None:
    d = Daemon(jack.name, model_dir, tmp_path, "--record", str(tmp_path / "session.mid"), tempo=300.0)
    peer = Peer(d.osc_port)
    listener = Feedback()  # reads on a thread of its own: the beat and note feedback would overflow a socket
    rec: MidiRecorder | None = None
    try:
        wait_for(lambda: port_listed(d.port), 30, "the daemon's port", d)
        first_status(peer, d)
        peer.send("/rtgen/subscribe", "127.0.0.1", listener.port)
        for round_no, sig in enumerate((signal.SIGKILL, signal.SIGTERM), start=1):
            rec = lose_and_get_back(jack, d, peer, sig, round_no)
            since = time.perf_counter_ns()
            assert rec.wait_until(functools.partial(played_all_parts, since_ns=since), timeout=15), (
                f"no melody, chords and bass after the reconnection:\n{d.output()}"
            )
            if round_no == 1:
                rec.close()
        assert rec is not None
        d.proc.send_signal(signal.SIGTERM)
        assert d.wait(20) == 0, d.output()
        rec.settle(0.3)
        msgs = rec.messages()
        assert len(note_ons(msgs)) >= 6
        assert sounding_notes(msgs) == set(), "a note played after the reconnection has no note-off"
        # subscribers heard the news
        heard = list(listener.received)
        jack_news = [str(a[0]) for _, addr, a in heard if addr == "/rtgen/jack"]
        assert jack_news == ["gone", "ok", "gone", "ok"], jack_news
        errors = [str(a[0]) for _, addr, a in heard if addr == "/rtgen/error"]
        assert sum("gone, retrying" in e for e in errors) == 2, errors
    finally:
        if rec is not None:
            rec.close()
        peer.close()
        listener.close()
        d.close()
    assert "Traceback" not in d.output()
    # the recording spans all three servers' lifetimes and stays a valid file with every note released
    import mido

    notes: dict[tuple[int, int], int] = {}
    for msg in mido.MidiFile(tmp_path / "session.mid"):
        if msg.type == "note_on" and msg.velocity > 0:
            notes[(msg.channel, msg.note)] = notes.get((msg.channel, msg.note), 0) + 1
        elif msg.type in ("note_off", "note_on"):
            notes[(msg.channel, msg.note)] = notes.get((msg.channel, msg.note), 0) - 1
    assert sum(v > 0 for v in notes.values()) == 0, {k: v for k, v in notes.items() if v > 0}


def test_a_port_that_does_not_come_back_ends_the_daemon_with_a_clear_message(
    jack: Server, model_dir: Path, tmp_path: Path
) -> None:
    import rtmidi

    name = f"rtgen-synth-{os.getpid()}"
    target = rtmidi.MidiIn(rtmidi.API_UNIX_JACK, name=name)  # a peer the daemon connects to with --midi-out
    target.open_virtual_port("in")
    wait_for_port(f"{name}:in")
    d = Daemon(jack.name, model_dir, tmp_path, "--midi-out", f"{name}:in", "--no-input", tempo=300.0, listen=False)
    peer = Peer(d.osc_port)
    try:
        wait_for(lambda: port_listed(f"{name}:in"), 30, "the peer's port", d)
        state = first_status(peer, d)
        assert state["jack"] == "ok", state
        target.close_port()
        target.delete()
        jack.kill()
        wait_for(lambda: "gone, retrying" in d.output(), NOTICE_S, "the loss noticed", d)
        jack.restart()  # the peer the daemon was connected to does not come back
        t0 = time.monotonic()
        try:
            code = d.proc.wait(40)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the daemon did not give up:\n{d.output()}") from None
        print(f"gave up {time.monotonic() - t0:.1f} s after the server came back")
        out = d.output()
        assert code == 2, out
        assert "came back, but rtgen cannot reopen its MIDI ports" in out and f"{name}:in" in out, out
        assert "Traceback" not in out
        assert not [p for p in jack_port_names() if p.startswith(d.client)], "the daemon left a port behind"
    finally:
        peer.close()
        d.close()


def test_a_server_that_freezes_does_not_freeze_the_daemon_and_its_ports_come_back(
    jack: Server, model_dir: Path, tmp_path: Path
) -> None:
    """jackd stopped (SIGSTOP) for 4 s: no cycle runs, nothing takes our MIDI. The clock plays on,
    the daemon says its output is stuck, and once the server runs again it reopens the ports and plays."""
    d = Daemon(jack.name, model_dir, tmp_path, tempo=300.0)
    peer = Peer(d.osc_port)
    listener = Feedback()
    rec: MidiRecorder | None = None
    try:
        wait_for(lambda: port_listed(d.port), 30, "the daemon's port", d)
        first_status(peer, d)
        peer.send("/rtgen/subscribe", "127.0.0.1", listener.port)
        rec = start_recording(d)
        assert rec.wait_until(played_all_parts, timeout=20), d.output()
        rec.close()
        rec = None
        assert jack.current is not None
        pid = jack.current.proc.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            before = status(peer)
            stuck = wait_for(lambda: status(peer)["jack"] == "stuck", 10, "status jack=stuck", d)
            later = status(peer)
        finally:
            os.kill(pid, signal.SIGCONT)
        print(f"stuck noticed after {stuck:.2f} s of a frozen server")
        assert later["steps"] > before["steps"] and later["playing"], (before, later)  # the clock never stopped
        wait_for(lambda: status(peer)["jack"] == "ok", BACK_S, "status jack=ok", d)
        wait_for(lambda: port_listed(d.port), BACK_S, f"{d.port} back", d)
        rec = start_recording(d)
        since = time.perf_counter_ns()
        assert rec.wait_until(functools.partial(played_all_parts, since_ns=since), timeout=15), d.output()
        out = d.output()
        assert re.search(r"jack: the server has taken no MIDI from \S+ for \d", out), out
        assert "stalled for" not in out, out  # the real-time thread never waited for libjack
        news = [str(a[0]) for _, addr, a in listener.received if addr == "/rtgen/jack"]
        assert news[:2] == ["stuck", "ok"], news
    finally:
        if rec is not None:
            rec.close()
        peer.close()
        listener.close()
        d.close()
    assert "Traceback" not in d.output()

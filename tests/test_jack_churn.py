"""An input that never stays deaf: beside a client that churns JACK clients, and when the server stops running it.

jack2's libjack can leave a client of ours waiting on a departed client's futex (see rtgen/io/rtmidijack.py): the
server then never runs it, and an input that is not run hears nothing, with nothing said. The daemon's JACK
supervisor reads each client's wake-up (:meth:`RtmidiJack.wake_pending`): one the server signals and the client
never takes for a second is a client that waits elsewhere, and every port is reopened, connections kept, while the
loop plays on. The first test is the issue's: 20 starts beside ``while :; do jack_lsp; done``, each must hear the
player. The race is rare on this machine, so the second makes the fault on purpose: the input's JACK thread is
stopped with ptrace (it then never takes its wake-up, exactly as a thread on the wrong futex), and the daemon must
notice, say so once, reopen, connect the player again and hear it.

Each test has a JACK server of its own, and the player is a process of its own: no client of the test process
meets the churn (libjack keeps one state per process, and a stalled client of the suite's process once stopped
a server answering and spoiled the JACK tests after it).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import serve_jack
from test_daemon import Daemon, Peer
from test_playalong import daemon_input, status

from rtgen.bench.harness import daemon_env, jack_connect, jack_env, wait_for_port
from rtgen.midi.messages import NOTE_OFF, NOTE_ON

pytestmark = pytest.mark.jack

STARTS = 20
HEARD_WITHIN_S = 8.0  # detection (1 s) + a reopen (~0.5 s) + back-offs if the race meets the reopen too, with margin
RECOVERED_WITHIN_S = 15.0  # the forced fault: detection, closing the stopped client, reopening; twice what it takes

_PTRACE_DETACH, _PTRACE_SEIZE, _PTRACE_INTERRUPT = 17, 0x4206, 0x4207
_SYS_FUTEX = {"x86_64": 202, "aarch64": 98}.get(os.uname().machine)


@pytest.fixture
def jack_server() -> Iterator[str]:
    yield from serve_jack(f"rtgen-churn-{os.getpid()}", sync=False)


@pytest.fixture(scope="module")
def model_dir(shipped_model_dir: Path) -> Path:
    return shipped_model_dir


_PLAYER = f"""
import sys, rtmidi
out = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, name=sys.argv[1])
out.open_virtual_port("out")
print("ready", flush=True)
for line in sys.stdin:
    out.send_message([{NOTE_ON}, 60, 100])
    out.send_message([{NOTE_OFF}, 60, 0])
"""


class Player:
    """A keyboard in a process of its own: a JACK client ``NAME:out`` that plays a note per :meth:`play`."""

    def __init__(self, server: str, name: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _PLAYER, name], env=daemon_env(server), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, start_new_session=True,
        )  # fmt: skip
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready", "no player"
        self.port = wait_for_port(f"{name}:out").name

    def play(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("n\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


def heard_within(player: Player, peer: Peer, seconds: float, at_least: int = 1) -> int:
    """Play a note every 0.1 s until the daemon's status counts ``at_least`` input messages; the count."""
    deadline = time.monotonic() + seconds
    heard = 0
    while heard < at_least and time.monotonic() < deadline:
        player.play()
        time.sleep(0.1)
        heard = int(status(peer).get("input_received", 0))
    return heard


def test_the_player_is_heard_in_every_start_beside_a_client_churn(
    jack_server: str, model_dir: Path, tmp_path: Path
) -> None:
    player = Player(jack_server, f"churn-player-{os.getpid()}")  # opened before the churn: not this test's race
    churn = subprocess.Popen(
        ["sh", "-c", "while :; do jack_lsp >/dev/null 2>&1; done"], env=jack_env(jack_server), start_new_session=True
    )
    deaf: list[str] = []
    reopened = 0
    try:
        for start in range(STARTS):
            d = Daemon(jack_server, model_dir, tmp_path, tempo=120.0)
            peer = Peer(d.osc_port)
            try:
                jack_connect(player.port, daemon_input(d))
                if not heard_within(player, peer, HEARD_WITHIN_S):
                    deaf.append(f"start {start + 1}:\n{d.output()[-3000:]}")
                reopened += "ports reopened" in d.output()
            finally:
                peer.close()
                d.stop()
    finally:
        os.killpg(churn.pid, signal.SIGKILL)
        churn.wait()
        player.close()
    print(f"{STARTS} starts beside the churn, {reopened} of them reopened their ports")
    assert not deaf, f"{len(deaf)} of {STARTS} starts did not hear the player:\n" + "\n".join(deaf)


def _jack_thread(pid: int, client: str) -> int | None:
    """The thread of ``pid`` waiting on ``client``'s JACK futex (its process thread between two cycles)."""
    spans = []
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            fields = line.split()
            if len(fields) == 6 and "jack_sem" in fields[5] and fields[5].endswith("_" + client):
                lo, hi = (int(x, 16) for x in fields[0].split("-"))
                spans.append((lo, hi))
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            call = Path(f"/proc/{pid}/task/{tid}/syscall").read_text().split()
        except OSError:
            continue
        if call and call[0] == str(_SYS_FUTEX) and any(lo <= int(call[1], 16) < hi for lo, hi in spans):
            return int(tid)
    return None


@contextlib.contextmanager
def stopped_thread(tid: int) -> Iterator[None]:
    """Thread ``tid`` of another process stopped (ptrace: seize, interrupt) for the block; let go after it."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    libc.ptrace.restype = ctypes.c_long
    if libc.ptrace(_PTRACE_SEIZE, tid, None, None) != 0 or libc.ptrace(_PTRACE_INTERRUPT, tid, None, None) != 0:
        raise AssertionError(f"ptrace could not stop thread {tid}: errno {ctypes.get_errno()} (the tests run as root)")
    try:
        yield
    finally:  # on this thread: the tracer is the thread that seized
        with contextlib.suppress(ChildProcessError):
            os.waitpid(tid, os.WNOHANG | 0x40000000)  # __WALL: take the stop notification
        libc.ptrace(_PTRACE_DETACH, tid, None, None)


def test_an_input_the_server_stops_running_is_reopened_and_hears_the_player_again(
    jack_server: str, model_dir: Path, tmp_path: Path
) -> None:
    assert _SYS_FUTEX is not None, f"no futex syscall number known for {os.uname().machine}"
    player = Player(jack_server, f"frozen-player-{os.getpid()}")
    source = player.port
    d = Daemon(jack_server, model_dir, tmp_path, tempo=120.0)
    peer = Peer(d.osc_port)
    try:
        port = daemon_input(d)
        jack_connect(source, port)
        assert heard_within(player, peer, HEARD_WITHIN_S), d.output()
        client = port.rpartition(":")[0]
        tid = None
        deadline = time.monotonic() + 5
        while tid is None and time.monotonic() < deadline:
            tid = _jack_thread(d.proc.pid, client)
        assert tid is not None, f"no thread of {client} waits on its JACK futex"
        steps_before = int(status(peer)["steps"])
        t0 = time.monotonic()
        with stopped_thread(tid):  # let go once noticed: a stopped thread would hold up closing its client
            while "reopening the ports" not in d.output() and time.monotonic() - t0 < RECOVERED_WITHIN_S:
                time.sleep(0.02)
            detected_s = time.monotonic() - t0
        assert "reopening the ports" in d.output(), (
            f"the stopped input was not noticed in {RECOVERED_WITHIN_S} s:\n" + (d.output()[-3000:])
        )
        while "ports reopened" not in d.output() and time.monotonic() - t0 < RECOVERED_WITHIN_S:
            time.sleep(0.02)
        recovered_s = time.monotonic() - t0
        log = d.output()
        assert "ports reopened" in log and "connections kept" in log, log[-3000:]
        assert log.count("reopening the ports") == 1 and log.count("ports reopened") == 1, log[-3000:]
        # nobody connects the player again: the daemon restored the connection on its new client
        before = int(status(peer)["input_received"])
        assert heard_within(player, peer, HEARD_WITHIN_S, at_least=before + 1) > before, log[-3000:]
        after = status(peer)
        assert after["jack"] == "ok" and after["jack_losses"] == 1, after
        assert int(after["steps"]) > steps_before, "the loop played on"
        print(f"noticed after {detected_s:.2f} s, ports reopened after {recovered_s:.2f} s")
    finally:
        peer.close()
        d.stop()
        player.close()

"""End to end: ``rtgen run --backend jack`` as a subprocess, recorded through a real JACK port, steered over UDP OSC."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import require
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder

from rtgen.bench.harness import MidiRecorder, daemon_command, daemon_env, is_note_off, note_ons, sounding_notes

pytestmark = pytest.mark.jack

_names = itertools.count(1)


@pytest.fixture(scope="module")
def model_dir(shipped_model_dir: Path) -> Path:
    """The daemon plays the shipped model, as `make run` does."""
    return shipped_model_dir


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def osc_dgram(address: str, *args: Any) -> bytes:
    b = OscMessageBuilder(address=address)
    for a in args:
        b.add_arg(a)
    return b.build().dgram


class Peer:
    """A UDP OSC peer: sends to the daemon, receives its replies and feedback."""

    def __init__(self, daemon_port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.target = ("127.0.0.1", daemon_port)
        self.received: list[tuple[str, list[Any]]] = []
        self.times: list[float] = []  # arrival time (perf_counter) of each received message

    def send(self, address: str, *args: Any) -> None:
        self.sock.sendto(osc_dgram(address, *args), self.target)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendto(data, self.target)

    def wait_for(self, address: str, timeout: float = 5.0, count: int = 1) -> list[list[Any]]:
        deadline = time.monotonic() + timeout
        while True:
            found = [a for addr, a in self.received if addr == address]
            if len(found) >= count:
                return found
            left = deadline - time.monotonic()
            if left <= 0:
                return found
            self.sock.settimeout(left)
            try:
                data, _ = self.sock.recvfrom(65536)
            except TimeoutError:
                continue
            msg = OscMessage(data)
            self.received.append((msg.address, list(msg.params)))
            self.times.append(time.perf_counter())

    def arrivals(self, address: str, since: float = 0.0) -> list[float]:
        """Arrival times of the messages to ``address`` received after ``since`` (perf_counter seconds)."""
        return [t for (addr, _), t in zip(self.received, self.times, strict=True) if addr == address and t >= since]

    def close(self) -> None:
        self.sock.close()


class Daemon:
    """``python -m rtgen run`` in a subprocess with its own JACK client name and OSC port."""

    def __init__(self, server: str, model: Path, tmp: Path, *extra: str, tempo: float = 300.0,
                 listen: bool = True, realtime_priority: int = 0) -> None:  # fmt: skip
        self.client = f"rtgen-e2e-{os.getpid()}-{next(_names)}"
        self.osc_port = free_udp_port()
        config = tmp / f"{self.client}.toml"
        # realtime_priority 0: a SCHED_FIFO daemon starves the threads of the suite's non-real-time JACK server
        # (FACTS.md), and a synchronous server then stalls; timing against a real-time server is rtgen bench's job
        config.write_text(
            f'[midi]\nclient_name = "{self.client}"\n[input]\nenabled = {str(listen).lower()}\n'
            f"[daemon]\nrealtime_priority = {realtime_priority}\n"
            # what the network may name: recordings go into tmp, models are found in tmp/models
            f'[record]\nfolder = "{tmp}"\n[model]\nlibrary = "{tmp / "models"}"\n'
        )
        self.log = tmp / f"{self.client}.log"
        args = [
            "run", "--config", str(config), "--model", str(model), "--backend", "jack", "--no-synth",
            "--osc-port", str(self.osc_port), "--tempo", str(tempo), "--seed", "1", "--quiet", *extra,
        ]  # fmt: skip
        self._log = self.log.open("wb")  # with -v below: INFO lines too, read when a test fails
        command = daemon_command("-v", *args)
        command[1:1] = ["-X", "faulthandler"]  # SIGABRT (see _stop_stuck) dumps every thread's stack into the log
        self.proc = subprocess.Popen(
            command, env=daemon_env(server), stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        self.port = f"{self.client}:out"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_playing(self, timeout: float = 20.0) -> None:
        """Wait for the daemon's "playing" log line: its JACK clients are open.

        Until then nothing of this process touches the JACK server: a client that leaves (every ``jack_lsp``)
        while the daemon's are half-way through opening can leave one of them on a departed client's futex, a
        jack2 race (see rtgen/io/rtmidijack.py) that a port-polling test provoked in about one run in five.
        """
        deadline = time.monotonic() + timeout
        while "rtgen.live.daemon: playing:" not in self.output():
            if self.proc.poll() is not None or time.monotonic() >= deadline:
                return  # what follows fails with the daemon's log
            time.sleep(0.05)

    def record(self, timeout: float = 20.0) -> MidiRecorder:
        self.wait_playing(timeout)
        try:
            return MidiRecorder(self.port, timeout=timeout).__enter__()
        except (TimeoutError, RuntimeError) as err:  # no port, or a server that does not answer
            raise AssertionError(f"{err}\ndaemon exit={self.proc.poll()} output:\n{self.output()}") from err

    def wait(self, timeout: float = 10.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._stop_stuck()
            raise AssertionError(f"daemon did not exit within {timeout} s; output:\n{self.output()}") from None

    def _stop_stuck(self) -> None:
        """End a daemon that did not stop by itself, its threads' stacks in the log first."""
        self.proc.send_signal(signal.SIGABRT)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def stop(self) -> None:
        """End the daemon politely (SIGTERM, up to 10 s for its clean stop), then :meth:`close`.

        A killed client stalls a synchronous JACK server for its client timeout.
        """
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self._log.close()


@pytest.fixture
def start_daemon(jack_server: str, model_dir: Path, tmp_path: Path) -> Iterator[Any]:
    started: list[Daemon] = []

    def start(*extra: str, tempo: float = 300.0) -> Daemon:
        # these tests need no player: without the MIDI input the daemon is one JACK client, as before play-along
        d = Daemon(jack_server, model_dir, tmp_path, *extra, tempo=tempo, listen=False)
        started.append(d)
        return d

    try:
        yield start
    finally:
        for d in started:
            d.close()


def onset_times(events: list[tuple[int, tuple[int, ...]]], channel: int | None = None) -> list[int]:
    """Times of onsets, notes arriving within 10 ms of each other counted as one (a chord, one JACK period)."""
    times: list[int] = []
    for t in sorted(t for t, m in events if note_ons([m], channel)):
        if not times or t - times[-1] > 10_000_000:
            times.append(t)
    return times


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_three_parts_play_and_a_signal_leaves_no_note_sounding(start_daemon: Any, sig: int) -> None:
    d = start_daemon()
    rec = d.record()
    try:
        ok = rec.wait_until(lambda ev: {m[0] & 0x0F for _, m in ev if note_ons([m])} >= {0, 1, 2}, timeout=15)
        assert ok, f"not all three parts played: {rec.messages()[:20]}\n{d.output()}"
        d.proc.send_signal(sig)
        assert d.wait() == 0, d.output()
        rec.settle(0.3)
        msgs = rec.messages()
        assert sounding_notes([m for m in msgs if m[0] & 0xF0 != 0xB0]) == set(), "a note-on has no note-off"
        assert any(m[0] & 0xF0 == 0xB0 and m[1] == 123 for m in msgs), "no all-notes-off at the end"
        assert "Traceback" not in d.output()
    finally:
        rec.close()


def test_osc_stop_silences_and_duration_exits(start_daemon: Any) -> None:
    d = start_daemon("--duration", "6")
    rec = d.record()
    peer = Peer(d.osc_port)
    try:
        assert rec.wait_until(lambda ev: len(note_ons([m for _, m in ev])) >= 5, timeout=15), d.output()
        peer.send("/rtgen/stop")
        stopped = rec.wait_until(lambda ev: any(m[0] & 0xF0 == 0xB0 and m[1] == 123 for _, m in ev), timeout=5)
        assert stopped, f"no all-notes-off after /rtgen/stop; received {peer.received}; output:\n{d.output()}"
        rec.settle(0.5)
        n = len(note_ons(rec.messages()))
        assert sounding_notes(rec.messages()) == set()
        time.sleep(1.0)
        assert len(note_ons(rec.messages())) == n, "notes played while stopped"
        peer.send("/rtgen/play")
        assert rec.wait_until(lambda ev: len(note_ons([m for _, m in ev])) > n, timeout=5), "play did not resume"
        assert d.wait(15) == 0, d.output()  # --duration ends it by itself
        rec.settle(0.3)
        assert sounding_notes(rec.messages()) == set()
    finally:
        rec.close()
        peer.close()


def test_osc_control_status_subscribe_instrument_tempo_and_errors(start_daemon: Any) -> None:
    d = start_daemon(tempo=240.0)
    rec = d.record()
    peer = Peer(d.osc_port)
    try:
        assert rec.wait_until(lambda ev: len(note_ons([m for _, m in ev])) >= 3, timeout=15), d.output()

        peer.send("/rtgen/status")
        replies = peer.wait_for("/rtgen/status")
        assert replies, f"no /rtgen/status reply; got {peer.received}"
        state = json.loads(replies[0][0])
        assert state["playing"] is True and state["tempo"] == 240.0
        assert isinstance(state["realtime"], bool)
        assert set(state["parts"]) == {"melody", "chords", "bass", "drums"}
        assert state["parts"]["drums"]["channel"] == 10 and state["parts"]["drums"]["enabled"] is True
        assert rec.wait_until(lambda ev: len(note_ons([m for _, m in ev], 9)) >= 4, timeout=10), "no drums on 10"
        # a style and a mute over OSC: the drums fall silent with real note-offs until unmuted
        peer.send("/rtgen/style", "chords", "strum")
        peer.send("/rtgen/part/enable", "drums", 0)
        for ask in range(2, 52):
            peer.send("/rtgen/status")
            state = json.loads(peer.wait_for("/rtgen/status", count=ask)[-1][0])
            if not state["parts"]["drums"]["enabled"]:
                break
        assert state["parts"]["chords"]["style"] == "strum" and state["parts"]["drums"]["enabled"] is False
        time.sleep(0.2)  # what JACK had in flight (a period or two) has arrived
        muted = len(rec.messages())
        assert not {key for key in sounding_notes(rec.messages()) if key[0] == 9}, "a drum note left sounding"
        time.sleep(0.5)
        assert not note_ons(rec.messages()[muted:], 9), "drums played while muted"
        peer.send("/rtgen/part/enable", "drums", 1)
        assert rec.wait_until(lambda ev: note_ons([m for _, m in ev][muted:], 9), timeout=5), "drums not back"

        peer.send("/rtgen/subscribe", "127.0.0.1", peer.port)
        assert peer.wait_for("/rtgen/beat", count=2), "no /rtgen/beat feedback"
        assert peer.wait_for("/rtgen/note"), "no /rtgen/note feedback"
        assert peer.wait_for("/rtgen/chord"), "no /rtgen/chord feedback"
        bar, beat = peer.wait_for("/rtgen/beat")[0]
        assert bar >= 1 and 1 <= beat <= 4

        peer.send("/rtgen/instrument", "chords", 40)
        assert rec.wait_until(lambda ev: any(m == (0xC1, 40) for _, m in ev), timeout=5), "no Program Change"

        # tempo: the beat feedback's interval doubles (240 -> 120 BPM)
        t0 = time.perf_counter()
        peer.wait_for("/rtgen/beat", timeout=2.0, count=10**6)
        before = peer.arrivals("/rtgen/beat", t0)
        peer.send("/rtgen/tempo", 120.0)
        time.sleep(0.6)
        t1 = time.perf_counter()
        peer.wait_for("/rtgen/beat", timeout=3.0, count=10**6)
        after = peer.arrivals("/rtgen/beat", t1)
        beat_before = statistics.median(b - a for a, b in itertools.pairwise(before))
        beat_after = statistics.median(b - a for a, b in itertools.pairwise(after))
        assert abs(beat_before - 0.25) < 0.02 and abs(beat_after - 0.5) < 0.02, (beat_before, beat_after)
        assert rec.wait_until(lambda ev: len(note_ons([m for _, m in ev])) >= 3, timeout=5), "stopped playing"

        # bad input of every kind: an error reply each, and the music goes on
        n_err = len(peer.wait_for("/rtgen/error", timeout=0.1, count=0))
        peer.send_raw(b"\x00garbage that is not OSC\xff")
        peer.send("/rtgen/tempo", "fast")
        peer.send("/rtgen/tempo", 9999.0)
        peer.send("/rtgen/nope")
        peer.send("/rtgen/instrument", "cowbell", 3)
        errors = peer.wait_for("/rtgen/error", count=n_err + 5)
        assert len(errors) >= n_err + 5, f"missing error replies: {errors}"
        text = " ".join(e[0] for e in errors)
        assert "unknown address" in text and "range" in text and "cowbell" in text

        peer.send("/rtgen/model", "no-such-model")
        errors = peer.wait_for("/rtgen/error", count=n_err + 6, timeout=10)
        assert any("no-such-model" in e[0] for e in errors), errors
        rec.clear()
        assert rec.wait_until(lambda ev: len(note_ons([m for _, m in ev])) >= 3, timeout=5), "stopped playing"
        peer.send("/rtgen/status")
        assert peer.wait_for("/rtgen/status", count=2)
        assert d.proc.poll() is None
        d.proc.send_signal(signal.SIGINT)
        assert d.wait() == 0
        assert "Traceback" not in d.output()
    finally:
        rec.close()
        peer.close()


def test_model_hot_swap_keeps_playing_and_leaves_no_note_hanging(
    start_daemon: Any, model_dir: Path, tmp_path: Path
) -> None:
    swapped = tmp_path / "models" / "swapped-model"  # the test daemon's model library
    shutil.copytree(model_dir, swapped)
    meta = json.loads((swapped / "meta.json").read_text())
    meta["name"] = "swapped"  # only the .onnx files are hashed
    (swapped / "meta.json").write_text(json.dumps(meta))
    d = start_daemon()
    rec = d.record()
    peer = Peer(d.osc_port)
    try:
        assert rec.wait_until(lambda ev: len(note_ons([m for _, m in ev])) >= 3, timeout=15), d.output()
        peer.send("/rtgen/model", swapped.name)
        deadline = time.monotonic() + 15
        state: dict[str, Any] = {}
        while time.monotonic() < deadline and state.get("model") != "swapped":
            peer.received.clear()
            peer.send("/rtgen/status")
            replies = peer.wait_for("/rtgen/status", timeout=2)
            state = json.loads(replies[0][0]) if replies else state
            time.sleep(0.2)
        assert state.get("model") == "swapped", f"model not swapped: {state}; output:\n{d.output()}"
        assert not peer.wait_for("/rtgen/error", timeout=0.2), peer.received
        rec.clear()
        assert rec.wait_until(lambda ev: len(note_ons([m for _, m in ev])) >= 3, timeout=5), "silent after the swap"
        d.proc.send_signal(signal.SIGTERM)
        assert d.wait() == 0
        rec.settle(0.3)
        assert sounding_notes(rec.messages()) == set()
    finally:
        rec.close()
        peer.close()


def test_liblo_peers_oscsend_and_oscdump(start_daemon: Any) -> None:
    require(shutil.which("oscsend") is not None and shutil.which("oscdump") is not None,
            "oscsend/oscdump (apt-get install liblo-tools)")  # fmt: skip
    d = start_daemon()
    rec = d.record()
    dump_port = free_udp_port()
    dump = subprocess.Popen(["oscdump", "-L", str(dump_port)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)  # fmt: skip
    try:
        time.sleep(0.3)
        assert rec.wait_until(lambda ev: len(note_ons([m for _, m in ev])) >= 3, timeout=15), d.output()
        port = str(d.osc_port)
        subprocess.run(["oscsend", "localhost", port, "/rtgen/subscribe", "si", "127.0.0.1", str(dump_port)],
                       check=True, timeout=5)  # fmt: skip
        subprocess.run(["oscsend", "localhost", port, "/rtgen/instrument", "si", "bass", "33"], check=True, timeout=5)
        assert rec.wait_until(lambda ev: any(m == (0xC2, 33) for _, m in ev), timeout=5), "no Program Change"
        time.sleep(1.0)
    finally:
        dump.terminate()
        out, _ = dump.communicate(timeout=5)
        rec.close()
        d.proc.send_signal(signal.SIGTERM)
        d.wait()
    assert "/rtgen/beat ii" in out and "/rtgen/note sii" in out, out[:500]


def test_unknown_midi_out_lists_the_ports(start_daemon: Any) -> None:
    d = start_daemon("--midi-out", "no-such-synth-port")
    code = d.wait(20)
    out = d.output()
    assert code != 0
    assert "no-such-synth-port" in out and "Traceback" not in out
    assert "port" in out.lower()


def test_synth_without_audio_device_warns_and_keeps_playing_to_midi(start_daemon: Any, tmp_path: Path) -> None:
    sf = Path("/usr/share/sounds/sf2/TimGM6mb.sf2")
    require(sf.is_file(), f"a soundfont at {sf} (apt-get install timgm6mb-soundfont)")
    record = tmp_path / "session.mid"
    d = start_daemon("--synth", "--soundfont", str(sf), "--audio-driver", "alsa", "--record", str(record))
    rec = d.record()
    try:
        assert rec.wait_until(lambda ev: len(note_ons([m for _, m in ev])) >= 5, timeout=15), d.output()
        d.proc.send_signal(signal.SIGINT)
        assert d.wait() == 0, d.output()
    finally:
        rec.close()
    assert "no audio device" in d.output()
    import mido

    mid = mido.MidiFile(record)
    assert mid.type == 1
    assert sum(1 for tr in mid.tracks for m in tr if m.type == "note_on" and m.velocity > 0) >= 5
    assert is_note_off((0x80, 60, 0))

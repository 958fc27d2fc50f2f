"""rtgen.io.ports against a real JACK server (the suite's own, see rtgen.bench.harness)."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import time
from pathlib import Path

import pytest
import rtmidi

from rtgen.bench.harness import MIDI_TYPE, jack_connect, jack_ports, wait_for_port
from rtgen.errors import PortError
from rtgen.io import ports as midi_io
from rtgen.io.sinks import MidiOutSink

pytestmark = pytest.mark.jack


def _notes(n: int) -> list[list[int]]:
    return [[0x90 | (i % 3), 60 + i, 64 + i] if i % 2 == 0 else [0x80 | (i % 3), 60 + i - 1, 0] for i in range(n)]


def test_compiled_backends_are_config_names() -> None:
    compiled = midi_io.compiled_backends()
    assert compiled, "python-rtmidi reports no compiled backend"
    assert set(compiled) <= set(midi_io.BACKENDS)
    assert midi_io.BACKENDS["auto"] == rtmidi.API_UNSPECIFIED


def test_virtual_output_is_a_jack_midi_port_and_delivers_in_order(jack_server: str, jack_recorder) -> None:
    with midi_io.open_output("jack", None, client_name="vtest", port_name="out") as out:
        assert out.virtual and out.name == "vtest:out" and out.backend == "jack"
        port = wait_for_port("vtest:out")
        assert port.type == MIDI_TYPE and port.is_output
        rec = jack_recorder("vtest:out")
        sent = _notes(20)
        for msg in sent:
            out.send(msg)
        assert rec.wait_for_count(len(sent)), f"received only {rec.messages()}"
        rec.settle(0.1)
        assert rec.messages() == [tuple(m) for m in sent]


def test_open_output_by_case_insensitive_substring(jack_server: str) -> None:
    got: queue.SimpleQueue[list[int]] = queue.SimpleQueue()
    target = rtmidi.MidiIn(rtmidi.API_UNIX_JACK, name="SubstrTarget")
    target.set_callback(lambda ev, data=None: got.put(ev[0]))
    target.open_virtual_port("Capture")
    try:
        wait_for_port("SubstrTarget:Capture")
        with midi_io.open_output("jack", "substrtarget:CAP", client_name="subtest") as out:
            assert out.name == "SubstrTarget:Capture" and not out.virtual
            out.send([0x91, 67, 90])
            assert got.get(timeout=5) == [0x91, 67, 90]
    finally:
        target.close_port()
        target.delete()


def test_unknown_output_port_lists_existing_ports(jack_server: str) -> None:
    target = rtmidi.MidiIn(rtmidi.API_UNIX_JACK, name="ListedTarget")
    target.open_virtual_port("in")
    try:
        wait_for_port("ListedTarget:in")
        with pytest.raises(PortError) as info:
            midi_io.open_output("jack", "no-such-synth-xyz")
        message = str(info.value)
        assert "no-such-synth-xyz" in message
        assert "ListedTarget:in" in message
        assert "rtgen ports" in message
    finally:
        target.close_port()
        target.delete()


def test_ambiguous_match_names_the_candidates(jack_server: str) -> None:
    targets = []
    for name in ("AmbigOne", "AmbigTwo"):
        t = rtmidi.MidiIn(rtmidi.API_UNIX_JACK, name=name)
        t.open_virtual_port("in")
        targets.append(t)
    try:
        wait_for_port("AmbigOne:in")
        wait_for_port("AmbigTwo:in")
        with pytest.raises(PortError, match=r"several.*AmbigOne:in.*AmbigTwo:in"):
            midi_io.open_output("jack", "ambig")
    finally:
        for t in targets:
            t.close_port()
            t.delete()


def test_list_ports_shows_virtual_ports(jack_server: str) -> None:
    with midi_io.open_output("jack", None, client_name="listme", port_name="out"):
        wait_for_port("listme:out")
        ports = midi_io.list_ports("jack")
    assert set(ports) == {"inputs", "outputs"}
    # Our virtual *output* is a source: other clients read from it, so it is listed among inputs.
    assert "listme:out" in ports["inputs"]


def test_open_input_virtual_delivers_to_callback(jack_server: str) -> None:
    got: queue.SimpleQueue[tuple[list[int], int]] = queue.SimpleQueue()
    sender = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, name="insender")
    sender.open_virtual_port("out")
    try:
        with midi_io.open_input("jack", None, lambda msg, t: got.put((msg, t)), client_name="intest") as inp:
            assert inp.name == "intest:in"
            wait_for_port("intest:in")
            jack_connect("insender:out", "intest:in")
            before = time.perf_counter_ns()
            sender.send_message([0x90, 72, 100])
            msg, t = got.get(timeout=5)
            assert msg == [0x90, 72, 100]
            assert t >= before
    finally:
        sender.close_port()
        sender.delete()


def test_open_input_by_name(jack_server: str) -> None:
    got: queue.SimpleQueue[list[int]] = queue.SimpleQueue()
    sender = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, name="KeyboardLike")
    sender.open_virtual_port("midi_out")
    try:
        wait_for_port("KeyboardLike:midi_out")
        with midi_io.open_input("jack", "keyboardlike", lambda msg, t: got.put(msg), client_name="intest2") as inp:
            assert inp.name == "KeyboardLike:midi_out"
            sender.send_message([0x80, 60, 0])
            assert got.get(timeout=5) == [0x80, 60, 0]
    finally:
        sender.close_port()
        sender.delete()


def test_alsa_without_sequencer_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    # shown on any machine: rtmidi's ALSA client fails and /dev/snd/seq is absent, as on these machines
    real_exists, real_out = os.path.exists, rtmidi.MidiOut
    monkeypatch.setattr(os.path, "exists", lambda p: p != "/dev/snd/seq" and real_exists(p))
    monkeypatch.setattr(rtmidi, "get_compiled_api", lambda: [rtmidi.API_LINUX_ALSA, rtmidi.API_UNIX_JACK])

    def alsa_fails(api: int = rtmidi.API_UNSPECIFIED, *args: object, **kwargs: object) -> object:
        if api == rtmidi.API_LINUX_ALSA:
            raise rtmidi.SystemError("MidiOutAlsa::initialize: error creating ALSA sequencer client object.")
        return real_out(api, *args, **kwargs)

    monkeypatch.setattr(rtmidi, "MidiOut", alsa_fails)
    with pytest.raises(PortError, match=r"/dev/snd/seq.*--backend jack"):
        midi_io.open_output("alsa", None)
    ok, reason = midi_io.backend_status("alsa")
    assert not ok and "/dev/snd/seq" in reason


def test_unknown_backend_lists_the_allowed_ones() -> None:
    with pytest.raises(PortError, match=r"unknown MIDI backend 'beos'.*jack"):
        midi_io.open_output("beos", None)


def test_jack_without_server_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JACK_DEFAULT_SERVER", f"rtgen-nonexistent-{os.getpid()}")
    monkeypatch.setenv("JACK_NO_START_SERVER", "1")
    with pytest.raises(PortError, match=r"JACK server .* not running"):
        midi_io.open_output("jack", None)


def test_closed_output_refuses_to_send(jack_server: str) -> None:
    out = midi_io.open_output("jack", None, client_name="closetest")
    out.close()
    out.close()  # idempotent
    assert out.closed
    with pytest.raises(PortError, match="closed"):
        out.send([0x90, 60, 1])
    assert "closetest:out" not in [p.name for p in jack_ports()]


def _jackd_pid(server: str) -> int:
    """The pid of the jackd that serves ``server`` (its command line names it with ``-n``)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                args = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if os.path.basename(args[0]) == b"jackd" and server.encode() in args:
                return int(entry)
    raise AssertionError(f"no jackd process for server {server!r}")


def _wait_stopped(pid: int, timeout: float = 10.0) -> None:
    """Wait until every thread of ``pid`` is stopped: SIGSTOP lands a little after ``kill`` returns.

    Until then the server can still run a cycle or two and empty part of the ring buffer.
    """
    deadline = time.monotonic() + timeout
    while True:
        states = []
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
                states.append(stat.rsplit(")", 1)[1].split()[0])
        if states and all(s in "tT" for s in states):
            return
        assert time.monotonic() < deadline, f"jackd {pid} not stopped: thread states {states}"
        time.sleep(0.005)


@pytest.mark.timeout(60)
def test_a_send_never_waits_for_a_jack_server_that_stopped_serving_us(jack_server: str) -> None:
    """python-rtmidi alone spins (GIL held) on a full ring buffer: the whole process would stop with the server."""
    out = midi_io.open_output("jack", None, client_name="rtgen-frozen")
    jack = out.jack
    try:
        assert jack is not None, "python-rtmidi's JACK internals were not recognised (another python-rtmidi?)"
        assert jack.client_name == "rtgen-frozen"
        assert jack.futex_is_current() is True  # the client waits on the futex its server signals
        room = jack.room()
        assert room >= 4096
        sink = MidiOutSink(out, close_output=False)
        sink.send([0x90, 61, 100], 0)
        pid = _jackd_pid(jack_server)
        os.kill(pid, signal.SIGSTOP)  # the server runs no cycle: nobody empties the ring buffer
        try:
            _wait_stopped(pid)
            time.sleep(0.05)  # a cycle the server woke us for just before may still be emptying the buffer
            sends = room // 7 + 500  # 3 bytes and RtMidi's 4-byte length per message
            for _ in range(sends):
                out.send([0x90, 60, 1])
            assert out.send([0x80, 60, 0]) is False
            sink.send([0x80, 61, 0], 0)  # dropped: the note stays in the sink's book, for its next panic
            start = time.monotonic()
            jack.waiting_s(start)
            time.sleep(0.3)
            waited = jack.waiting_s(time.monotonic())
        finally:
            os.kill(pid, signal.SIGCONT)
        assert out.overflowed >= 500, out.overflowed  # dropped and counted, not waited for
        assert sink.notes.sounding() == [(0, 61)] and sink.overflowed == out.overflowed  # what the status sums
        assert sends - out.overflowed <= room // 7
        assert waited >= 0.25, waited  # what the daemon's supervisor reads as "stuck"
        deadline = time.monotonic() + 10
        while jack.room() < room and time.monotonic() < deadline:  # served again: the buffer drains
            time.sleep(0.01)
        assert jack.room() == room
        assert jack.waiting_s(time.monotonic()) == 0.0
    finally:
        out.close()
    assert out.jack is None

"""SIGTERM and SIGINT at random moments of ``rtgen run`` (issue #7, section 3).

Each trial starts the daemon on this module's asynchronous JACK server, records its output from
a JACK client, and signals it at a moment drawn from a seeded RNG while notes are sounding: with
``--record PATH`` from the start, with a recording started over OSC (``/rtgen/record/start s``),
with the signal sent twice in a row, and before the ports are open. Every note-on the JACK client
heard must have its own note-off (CC 123 does not count), and the recording must be a MIDI file
mido reads whose note-ons all have note-offs too.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import mido
import pytest
from conftest import serve_jack
from test_daemon import Daemon, Peer
from test_jack_restart import first_status
from test_playalong import start_recording, wait_status

from rtgen.bench.harness import jack_port_names, note_ons, sounding_notes

pytestmark = pytest.mark.jack

SEED = 20261201
_servers = itertools.count(1)


@pytest.fixture
def jack_server() -> Iterator[str]:
    """An asynchronous JACK server of each test's own (as test_playalong's: a daemon has two JACK clients)."""
    yield from serve_jack(f"rtgen-signals-{os.getpid()}-{next(_servers)}", sync=False)


@pytest.fixture(scope="module")
def model_dir(shipped_model_dir: Path) -> Path:
    """The shipped model."""
    return shipped_model_dir


def unreleased_in_file(path: Path) -> dict[tuple[int, int], int]:
    """(channel, pitch) -> note-ons without a note-off in a MIDI file (every track, real note-offs only)."""
    open_notes: dict[tuple[int, int], int] = {}
    for track in mido.MidiFile(path).tracks:
        for msg in track:
            if msg.type not in ("note_on", "note_off"):
                continue
            key = (msg.channel, msg.note)
            if msg.type == "note_on" and msg.velocity > 0:
                open_notes[key] = open_notes.get(key, 0) + 1
            elif open_notes.get(key, 0) > 0:
                open_notes[key] -= 1
    return {k: v for k, v in open_notes.items() if v > 0}


def signal_mid_note(d: Daemon, rng: random.Random, sig: int, *, twice: bool = False) -> None:
    """Wait for notes to sound, then a random 0-2 s more; signal when some note is sounding (``twice``: again)."""
    rec = start_recording(d)
    try:
        assert rec.wait_until(lambda ev: len(note_ons([m for _, m in ev])) >= 4, timeout=20), d.output()
        time.sleep(rng.uniform(0.0, 2.0))
        sounding = rec.wait_until(lambda ev: bool(sounding_notes([m for _, m in ev])), timeout=5)
        assert sounding, "nothing sounding to interrupt"
        time.sleep(rng.uniform(0.0, 0.03))  # somewhere inside the note, or the next scheduler send
        d.proc.send_signal(sig)
        if twice:
            time.sleep(rng.uniform(0.0, 0.3))  # while it plays on, or while it shuts down
            d.proc.send_signal(rng.choice((signal.SIGINT, signal.SIGTERM)))
        code = d.wait(20)
        rec.settle(0.3)
        msgs = rec.messages()
    finally:
        rec.close()
    out = d.output()
    # a second signal that comes after everything was released and closed ends the CLI as interrupted
    assert code == 0 or (twice and code in (128 + signal.SIGINT, 128 + signal.SIGTERM)), out
    assert "Traceback" not in out, out
    ons = note_ons(msgs)
    assert ons, "the JACK client heard nothing"
    assert sounding_notes(msgs) == set(), f"note-ons without their note-off: {sounding_notes(msgs)}"
    print(f"{signal.Signals(sig).name}{' twice' if twice else ''}: exit {code}, {len(ons)} notes heard, all released")


@pytest.mark.parametrize("trial", range(3))
def test_a_signal_mid_note_releases_every_note_and_writes_the_recording(
    jack_server: str, model_dir: Path, tmp_path: Path, trial: int
) -> None:
    rng = random.Random(SEED + trial)
    path = tmp_path / "session.mid"
    d = Daemon(jack_server, model_dir, tmp_path, "--record", str(path), tempo=rng.choice((240.0, 300.0, 400.0)))
    try:
        signal_mid_note(d, rng, rng.choice((signal.SIGINT, signal.SIGTERM)), twice=trial == 2)
    finally:
        d.close()
    assert path.is_file(), d.output()
    assert len(mido.MidiFile(path).tracks) >= 2
    assert unreleased_in_file(path) == {}


@pytest.mark.parametrize("trial", range(2))
def test_a_signal_during_a_recording_started_over_osc_writes_it(
    jack_server: str, model_dir: Path, tmp_path: Path, trial: int
) -> None:
    rng = random.Random(SEED + 100 + trial)
    path = tmp_path / f"osc-{trial}.mid"
    d = Daemon(jack_server, model_dir, tmp_path, tempo=300.0)
    peer = Peer(d.osc_port)
    try:
        first_status(peer, d)  # the OSC server answers
        peer.send("/rtgen/record/start", path.name)  # into the test daemon's [record] folder, tmp_path
        assert wait_status(peer, "recording", str(path))["recording"] == str(path), d.output()
        signal_mid_note(d, rng, rng.choice((signal.SIGINT, signal.SIGTERM)), twice=trial == 1)
    finally:
        peer.close()
        d.close()
    assert path.is_file(), f"the recording started over OSC was not written\n{d.output()}"
    assert unreleased_in_file(path) == {}


def test_sigterm_before_the_ports_are_open_exits_cleanly(jack_server: str, model_dir: Path, tmp_path: Path) -> None:
    rng = random.Random(SEED + 200)
    for _ in range(3):
        d = Daemon(jack_server, model_dir, tmp_path, "--record", str(tmp_path / "early.mid"), tempo=300.0)
        try:
            time.sleep(rng.uniform(0.2, 2.0))  # interpreter start, imports, model load, port opening
            d.proc.send_signal(signal.SIGTERM)
            code = d.wait(20)
        finally:
            d.close()
        out = d.output()
        # -15: killed before rtgen's code ran; 143: start-up unwound; 0: the daemon was open and stopped
        assert code in (-signal.SIGTERM, 128 + signal.SIGTERM, 0), out
        assert "Traceback" not in out, out
        assert not [p for p in jack_port_names() if p.startswith(d.client)], "a port left behind"
        if (tmp_path / "early.mid").exists():
            assert unreleased_in_file(tmp_path / "early.mid") == {}
        print(f"SIGTERM during start-up: exit {code}")


def test_a_signal_inside_a_c_extensions_import_still_exits_as_that_signal() -> None:
    """SIGTERM during ``import onnxruntime`` came out as ImportError ("initialization failed"), exit 1."""
    from rtgen.cli import Terminated, _interrupt_behind

    def import_interrupted(interrupt: KeyboardInterrupt) -> ImportError:
        try:
            try:
                raise interrupt
            except KeyboardInterrupt:
                raise ImportError("initialization failed") from None
        except ImportError as err:
            err.__context__ = interrupt  # what pybind11 leaves: the interrupt as the context
            return err

    assert isinstance(_interrupt_behind(import_interrupted(Terminated())), Terminated)
    assert type(_interrupt_behind(import_interrupted(KeyboardInterrupt()))) is KeyboardInterrupt
    assert _interrupt_behind(ImportError("No module named 'onnxruntime'")) is None


def test_a_start_up_signal_a_library_swallowed_still_stops_the_daemon() -> None:
    """In one CI run SIGTERM 0.3 s after launch was lost in an import, and the daemon then played on."""
    import threading

    from rtgen.live.signals import SignalStop, on_startup_signal

    stopped = threading.Event()
    stop = SignalStop(stopped.set)
    previous = signal.signal(signal.SIGTERM, on_startup_signal)
    try:
        try:  # what `try: import optional_module / except ImportError: pass` in a library does to it
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(500):
                time.sleep(0.01)
            raise AssertionError("the start-up handler did not run")
        except KeyboardInterrupt:
            pass
        stop.catch()
        assert stopped.wait(10), "a signal noted during start-up did not stop the loop"
    finally:
        stop.release()
        signal.signal(signal.SIGTERM, previous)

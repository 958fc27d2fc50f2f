"""OSC fuzz on a playing daemon: 20,000 datagrams of random bytes and of well-formed messages with wrong types,
NaN, huge and empty values, to known and unknown addresses (issue #7).

The daemon (``rtgen run --backend jack``, the shipped model) plays through a real JACK server while a UDP peer
on 127.0.0.1 sends the datagrams. The well-formed half comes from hypothesis with a fixed budget (derandomized),
the random half from a seeded numpy generator, so every run sends the same bytes. Sending is paced by
``/rtgen/status`` barriers: after at most :data:`BATCH` datagrams (:data:`BATCH_BYTES` bytes) the peer waits for
the status reply, which the server sends only after everything before it, so the kernel's UDP buffer never
overflows and the server's error count can be compared exactly with what rtgen's own validation predicts.
"""

from __future__ import annotations

import json
import math
import os
import queue
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import serve_jack
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder
from test_daemon import Daemon

from rtgen.bench.harness import note_ons, sounding_notes
from rtgen.config import MODES
from rtgen.contract import STEPS_PER_BEAT
from rtgen.control import osc

pytestmark = pytest.mark.jack

N_RANDOM = 10_000
N_WELL_FORMED = 10_000
BATCH = 50
BATCH_BYTES = 48_000  # the server's receive buffer (~208 kB) also pays ~1 kB of overhead per datagram
TEMPO = 240.0
SEED = 20_261_201

HANDLERS = osc.OscControl(None, None).handlers  # type: ignore[arg-type]
KNOWN = sorted(HANDLERS)
# valid calls to these would stop, restart, retime or reroute the music (or answer like a barrier): the fuzz
# sends them only invalid arguments, so "keeps playing on time" stays a fair check (the band's arranger: a break or
# an ending silences the band, and outside band mode the daemon refuses them)
STEERING = {
    f"{osc.PREFIX}/{a}"
    for a in ("play", "stop", "tempo", "seed", "mode", "model", "soundfont", "record/start", "record/stop",
              "status", "subscribe", "unsubscribe")
} | {a for a in HANDLERS if a.startswith(f"{osc.PREFIX}/band/")}  # fmt: skip


@pytest.fixture
def jack_server() -> Iterator[str]:
    """An asynchronous JACK server of this test's own, as tests/test_playalong.py uses for daemon end-to-end tests."""
    yield from serve_jack(f"rtgen-fuzz-{os.getpid()}", sync=False)


# --- the datagrams ---------------------------------------------------------------------------------------------
class _Arg:
    """One OSC argument with the type tag to send it as (the builder's own guess would hide ``h``, ``d``, ``b``)."""

    def __init__(self, value: Any, tag: str) -> None:
        self.value, self.tag = value, tag

    def __repr__(self) -> str:
        return f"{self.tag}:{self.value!r}"[:60]


_floats = st.one_of(
    st.sampled_from([math.nan, -math.nan, math.inf, -math.inf, 0.0, -0.0, 1e-45, 3.4e38, -3.4e38]),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
)
_args = st.one_of(
    st.builds(_Arg, _floats, st.just("f")),
    st.builds(_Arg, st.floats(allow_nan=True, allow_infinity=True), st.just("d")),
    st.builds(_Arg, st.integers(-(2**31), 2**31 - 1), st.just("i")),
    st.builds(_Arg, st.integers(-(2**63), 2**63 - 1), st.just("h")),
    st.builds(_Arg, st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=40), st.just("s")),
    st.builds(_Arg, st.sampled_from(["", " ", "melody", "bass", "chords", "off", "D major", "é" * 300]), st.just("s")),
    st.builds(_Arg, st.integers(1000, 20_000).map(lambda n: "x" * n), st.just("s")),  # huge
    st.builds(_Arg, st.binary(min_size=1, max_size=64), st.just("b")),
    st.builds(_Arg, st.booleans(), st.just("T")),
    st.builds(_Arg, st.none(), st.just("N")),
)
_addresses = st.one_of(
    st.sampled_from(KNOWN),
    st.sampled_from(["/rtgen", "/rtgen/", "/RTGEN/TEMPO", "/rtgen/tempo/fast", "/rtgen//tempo", "/", "/other"]),
    st.text(st.characters(min_codepoint=33, max_codepoint=0x2FF, blacklist_characters="\x00"), max_size=30).map(
        lambda s: f"{osc.PREFIX}/{s}"
    ),
)


def _steers(address: str, args: list[_Arg]) -> bool:
    """Whether rtgen would act on this call to a steering address (then it is left out of the fuzz)."""
    if address not in STEERING:
        return False
    types = HANDLERS[address][0]
    try:
        values = osc.OscControl._convert(types, [a.value for a in args])
    except osc.OscArgError:
        return False
    name = address.removeprefix(f"{osc.PREFIX}/")
    if name == "tempo":
        return bool(20.0 <= values[0] <= 400.0)
    if name == "seed":
        return bool(0 <= values[0] <= 2**31 - 1)
    if name == "mode":
        return values[0] in MODES
    if name in ("model", "soundfont", "record/start"):
        return bool(values[0].strip())
    return True


def _build(address: str, args: list[_Arg]) -> bytes:
    b = OscMessageBuilder(address=address)
    for a in args:
        if a.tag == "T":
            b.add_arg(a.value)
        else:
            b.add_arg(a.value, a.tag)
    return b.build().dgram


MAX_UDP = 65_507  # the largest UDP payload over IPv4


def well_formed_datagrams(n: int) -> list[bytes]:
    """``n`` messages from hypothesis, one per example (derandomized: the same ones on every run)."""
    out: list[bytes] = []

    # steering calls are left out, so ask for more examples than messages; a run is deterministic
    @settings(max_examples=n + n // 4, derandomize=True, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(address=_addresses, args=st.lists(_args, max_size=4))
    def collect(address: str, args: list[_Arg]) -> None:
        if len(out) < n and not _steers(address, args):
            data = _build(address, args)
            if len(data) <= MAX_UDP:  # four huge strings make a datagram no socket can send
                out.append(data)

    collect()
    assert len(out) == n, f"hypothesis gave {len(out)} messages, not {n}: raise max_examples"
    return out


def random_datagrams(n: int, rng: np.random.Generator) -> list[bytes]:
    """``n`` datagrams of seeded random bytes; some start like an OSC message or bundle to get past the first check."""
    prefixes = [b"", b"", b"/", b"#bundle\x00", b"#bundle\x00" + bytes(8), b"/rtgen/density\x00\x00,f\x00\x00",
                b"/rtgen/volume\x00\x00\x00,sf\x00", b"/rtgen/tempo\x00\x00\x00\x00"]  # fmt: skip
    out = []
    for _ in range(n):
        prefix = prefixes[int(rng.integers(len(prefixes)))]
        size = int(rng.integers(0, 64)) if rng.random() < 0.7 else int(rng.integers(64, 4000))
        out.append(prefix + rng.bytes(size))
    return out


# --- the peer --------------------------------------------------------------------------------------------------
class FuzzPeer:
    """A UDP peer whose receiver thread counts ``/rtgen/error`` replies and queues ``/rtgen/status`` replies."""

    def __init__(self, daemon_port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.target = ("127.0.0.1", daemon_port)
        self.errors: list[str] = []
        self.statuses: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self.other = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data, _ = self.sock.recvfrom(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            msg = OscMessage(data)
            if msg.address == "/rtgen/error":
                self.errors.append(str(msg.params[0]))
            elif msg.address == "/rtgen/status":
                self.statuses.put(json.loads(msg.params[0]))
            else:
                self.other += 1

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, self.target)

    def status(self, timeout: float = 30.0) -> dict[str, Any]:
        """Ask for ``/rtgen/status`` and wait for it: also the barrier behind everything sent before."""
        self.send(_build("/rtgen/status", []))
        try:
            return self.statuses.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no /rtgen/status reply within {timeout} s: the OSC server is stuck") from None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


def expected_errors(datagrams: list[bytes]) -> int:
    """How many of ``datagrams`` rtgen's own validation answers with an error (a controller that accepts all)."""

    class Accepting:
        def __getattr__(self, name: str) -> Any:
            return lambda *args, **kwargs: None

    class NoReplies:
        def reply(self, *args: Any) -> None: ...
        def subscribe(self, host: str, port: int) -> bool:
            return True

        def unsubscribe(self, host: str, port: int) -> None: ...

    control = osc.OscControl(Accepting(), NoReplies())  # type: ignore[arg-type]
    for d in datagrams:
        control.handle_datagram(d, None)
    return control.errors


# --- the test --------------------------------------------------------------------------------------------------
def test_osc_fuzz_while_playing_keeps_time_answers_and_leaves_no_note(
    jack_server: str, shipped_model_dir: Path, tmp_path: Path
) -> None:
    rng = np.random.default_rng(SEED)
    t_gen = time.perf_counter()
    formed = well_formed_datagrams(N_WELL_FORMED)
    garbage = random_datagrams(N_RANDOM, rng)
    datagrams = [d for pair in zip(formed, garbage, strict=True) for d in pair]  # interleaved
    gen_s = time.perf_counter() - t_gen
    want_errors = expected_errors(datagrams)

    d = Daemon(jack_server, shipped_model_dir, tmp_path, tempo=TEMPO, listen=False)
    rec = d.record()
    peer = FuzzPeer(d.osc_port)
    try:
        assert rec.wait_until(lambda ev: len(note_ons([m for _, m in ev])) >= 3, timeout=20), d.output()
        before = peer.status()
        notes_before = len(note_ons(rec.messages()))
        t0 = time.perf_counter()
        batch, batch_bytes, barriers = 0, 0, 0
        for dgram in datagrams:
            if batch >= BATCH or batch_bytes + len(dgram) > BATCH_BYTES:
                peer.status()
                barriers += 1
                batch, batch_bytes = 0, 0
            peer.send(dgram)
            batch += 1
            batch_bytes += len(dgram)
        after = peer.status()
        elapsed = time.perf_counter() - t0
        notes_during = len(note_ons(rec.messages())) - notes_before

        # the fuzz may have set density, volume, temperature...: put them back, then it must still play
        reset: list[tuple[str, list[Any]]] = [("/rtgen/density", [1.0]), ("/rtgen/temperature", [1.0]),
                                              ("/rtgen/top_p", [0.95]), ("/rtgen/key", ["off"])]  # fmt: skip
        reset += [("/rtgen/volume", [part, 1.0]) for part in ("melody", "chords", "bass")]
        for address, args in reset:
            peer.send(_build(address, [_Arg(a, "f" if isinstance(a, float) else "s") for a in args]))
        n = len(note_ons(rec.messages()))
        played_on = rec.wait_until(lambda ev: len(note_ons([m for _, m in ev])) >= n + 3, timeout=10)
        final = peer.status()
        assert d.proc.poll() is None, f"the daemon died: {d.output()[-3000:]}"
        d.proc.send_signal(signal.SIGINT)
        assert d.wait(15) == 0, d.output()[-3000:]
        rec.settle(0.3)
        messages = rec.messages()
    finally:
        rec.close()
        peer.close()
        d.stop()

    server_errors = after["osc_errors"] - before["osc_errors"]
    steps = after["steps"] + after["skipped_steps"] - before["steps"] - before["skipped_steps"]
    expected_steps = elapsed * TEMPO / 60 * STEPS_PER_BEAT
    print(
        f"\nOSC fuzz: {len(datagrams)} datagrams ({len(formed)} from hypothesis, {len(garbage)} random; "
        f"{sum(map(len, datagrams)) / 1e6:.1f} MB) in {elapsed:.1f} s with {barriers} status barriers "
        f"(generated in {gen_s:.1f} s); server errors {server_errors} (predicted {want_errors}), error replies "
        f"received {len(peer.errors)}; steps {steps} (tempo predicts {expected_steps:.0f}), late steps "
        f"{after['late_steps'] - before['late_steps']}, max lateness {after['max_late_us'] / 1000:.2f} ms "
        f"(since start), skipped steps {after['skipped_steps'] - before['skipped_steps']}, dropped late notes "
        f"{after['dropped_late_notes'] - before['dropped_late_notes']}; note-ons during the fuzz {notes_during}"
    )
    output = d.output()
    assert "Traceback" not in output, output[-3000:]
    assert server_errors == want_errors, "the server saw other datagrams than were sent, or judged them otherwise"
    assert len(peer.errors) == server_errors, "every error is answered to the sender"
    assert not [e for e in peer.errors if "internal error" in e], [e for e in peer.errors if "internal" in e][:5]
    assert "OSC error from" in output, "errors are logged"
    assert final["engine_errors"] == 0 and final["command_errors"] == 0, final
    assert final["playing"] is True
    # generous: a loaded two-core machine may lag, but the clock must not stall or run away
    assert 0.5 * expected_steps <= steps <= 1.5 * expected_steps + 2 * STEPS_PER_BEAT, (steps, expected_steps)
    assert played_on, "no notes after the fuzz"
    assert sounding_notes(messages) == set(), "a note-on has no note-off"

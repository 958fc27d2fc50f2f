"""OSC control over real UDP: every handler, validation, garbage, feedback, and the README table."""

from __future__ import annotations

import json
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import RecordingController
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder

from rtgen.control import osc

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def server() -> Iterator[tuple[osc.OscServer, RecordingController]]:
    ctl = RecordingController()
    srv = osc.OscServer("127.0.0.1", 0, ctl)  # type: ignore[arg-type]
    srv.start()
    try:
        yield srv, ctl
    finally:
        srv.close()


class Peer:
    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(5.0)
        self.target = ("127.0.0.1", port)

    def send(self, address: str, *args: Any) -> None:
        b = OscMessageBuilder(address=address)
        for a in args:
            b.add_arg(a)
        self.sock.sendto(b.build().dgram, self.target)

    def recv(self) -> tuple[str, list[Any]]:
        data, _ = self.sock.recvfrom(65536)
        m = OscMessage(data)
        return m.address, list(m.params)


def wait_calls(ctl: RecordingController, n: int) -> list[tuple[str, tuple[Any, ...]]]:
    deadline = time.monotonic() + 5
    while len(ctl.calls) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    return ctl.calls


def test_valid_messages_reach_the_controller(server: tuple[osc.OscServer, RecordingController]) -> None:
    srv, ctl = server
    peer = Peer(srv.port)
    peer.send("/rtgen/play")
    peer.send("/rtgen/tempo", 140)  # an int is accepted for f
    peer.send("/rtgen/temperature", 1.25)
    peer.send("/rtgen/instrument", "bass", 33)
    peer.send("/rtgen/volume", "melody", 0.5)
    peer.send("/rtgen/pan", "chords", -1.0)
    peer.send("/rtgen/key", "D major")
    peer.send("/rtgen/swing", 0.5)
    peer.send("/rtgen/seed", 7)
    peer.send("/rtgen/style", "chords", "waltz")
    peer.send("/rtgen/part/enable", "drums", 0)
    peer.send("/rtgen/split", "C4")
    peer.send("/rtgen/split", "auto")
    peer.send("/rtgen/stop")
    calls = wait_calls(ctl, 14)
    assert calls == [
        ("play", ()),
        ("set_tempo", (140.0,)),
        ("set_params", (("temperature", 1.25),)),
        ("set_instrument", ("bass", 33)),
        ("set_volume", ("melody", 0.5)),
        ("set_pan", ("chords", -1.0)),
        ("set_key", ("D major",)),
        ("set_swing", (0.5,)),
        ("set_seed", (7,)),
        ("set_style", ("chords", "waltz")),
        ("set_part_enabled", ("drums", False)),
        ("set_split", ("C4",)),
        ("set_split", ("auto",)),
        ("stop", ()),
    ]


@pytest.mark.parametrize(
    ("address", "args", "reason"),
    [
        ("/rtgen/tempo", ("fast",), "must be a number"),
        ("/rtgen/tempo", (500.0,), "range 20.0..400.0"),
        ("/rtgen/tempo", (), "expected 1 argument"),
        ("/rtgen/instrument", ("cowbell", 3), "unknown part 'cowbell'"),
        ("/rtgen/instrument", ("bass", 128), "range 0..127"),
        ("/rtgen/key", ("H major",), "cannot parse key"),
        ("/rtgen/swing", (0.9,), "range 0.0..0.75"),
        ("/rtgen/mode", ("jazz",), "unknown mode"),
        ("/rtgen/style", ("chords", "polka"), "unknown chords style 'polka'; allowed: auto, block"),
        ("/rtgen/style", ("melody", "strum"), "unknown melody style 'strum'; allowed: auto"),
        ("/rtgen/part/enable", ("drums", 2), "range 0..1"),
        ("/rtgen/split", ("H4",), "such as C4; or 'auto'"),
        ("/rtgen/split", (60,), "must be a string"),
        ("/rtgen/nope", (), "unknown address"),
    ],
)
def test_bad_messages_get_an_error_reply(
    server: tuple[osc.OscServer, RecordingController], address: str, args: tuple[Any, ...], reason: str
) -> None:
    srv, ctl = server
    peer = Peer(srv.port)
    peer.send(address, *args)
    reply, params = peer.recv()
    assert reply == "/rtgen/error"
    assert params[0].startswith(address) and reason in params[0]
    assert ctl.calls == []


@pytest.mark.parametrize("data", [b"\x00\x01garbage", b"/rtgen/tempo\x00\x00\x00\x00,f\x00\x00\x01", b"#bundle\x00xx"])
def test_garbage_datagrams_get_an_error_reply_and_the_server_lives_on(
    server: tuple[osc.OscServer, RecordingController], data: bytes
) -> None:
    srv, ctl = server
    peer = Peer(srv.port)
    peer.sock.sendto(data, peer.target)
    reply, _ = peer.recv()
    assert reply == "/rtgen/error"
    peer.send("/rtgen/panic")
    assert wait_calls(ctl, 1) == [("panic", ())]
    assert srv.control.errors == 1


def test_status_replies_with_json(server: tuple[osc.OscServer, RecordingController]) -> None:
    srv, _ = server
    peer = Peer(srv.port)
    peer.send("/rtgen/status")
    address, params = peer.recv()
    assert address == "/rtgen/status"
    assert json.loads(params[0]) == RecordingController().status()


def test_subscribers_get_feedback(server: tuple[osc.OscServer, RecordingController]) -> None:
    srv, _ = server
    listener = Peer(srv.port)
    host, port = listener.sock.getsockname()
    Peer(srv.port).send("/rtgen/subscribe", host, port)
    deadline = time.monotonic() + 5
    while not srv.feedback.subscribers and time.monotonic() < deadline:
        time.sleep(0.01)
    srv.feedback.beat(3, 2)
    srv.feedback.chord("Am7")
    srv.feedback.note("melody", 72, 96)
    srv.feedback.error("boom")
    got = [listener.recv() for _ in range(4)]
    assert got == [
        ("/rtgen/beat", [3, 2]),
        ("/rtgen/chord", ["Am7"]),
        ("/rtgen/note", ["melody", 72, 96]),
        ("/rtgen/error", ["boom"]),
    ]


def test_every_handler_is_documented() -> None:
    rows = osc.address_table()
    addresses = [a for a, _, _ in rows]
    for name in ("play", "stop", "panic", "tempo", "temperature", "top_p", "mode", "instrument", "volume", "pan",
                 "key", "density", "seed", "swing", "model", "soundfont", "status", "subscribe"):  # fmt: skip
        assert f"/rtgen/{name}" in addresses
    assert all(desc for _, _, desc in rows)


def test_readme_table_is_current() -> None:
    readme = REPO / "README.md"
    text = readme.read_text()
    assert osc.TABLE_START in text and osc.TABLE_END in text, "README.md lost its osc-table markers"
    assert osc.rewrite_readme(text) == text, "run: python -m rtgen.control.osc --write-readme README.md"


def test_rewrite_replaces_only_between_the_markers() -> None:
    text = f"intro\n{osc.TABLE_START}\nOLD-TABLE\n{osc.TABLE_END}\noutro\n"
    out = osc.rewrite_readme(text)
    assert out.startswith("intro\n") and out.endswith("outro\n")
    assert "| `/rtgen/tempo` | f |" in out and "OLD-TABLE" not in out
    with pytest.raises(ValueError, match="markers"):
        osc.rewrite_readme("no markers")


# --- what the fuzz (tests/test_fuzz_osc.py) found -------------------------------------------------------
def test_a_bundle_with_a_negative_element_size_is_refused(
    server: tuple[osc.OscServer, RecordingController], caplog: pytest.LogCaptureFixture
) -> None:
    srv, ctl = server
    peer = Peer(srv.port)
    # python-osc's bundle parser stepped back 4 bytes per element here and looped forever (a warning each turn)
    peer.sock.sendto(b"#bundle\x00" + bytes(8) + struct.pack(">i", -4), peer.target)
    reply, params = peer.recv()
    assert reply == "/rtgen/error" and "bundle element size -4" in params[0]
    inner = OscMessageBuilder(address="/rtgen/panic").build().dgram
    nested = inner
    for _ in range(osc.MAX_BUNDLE_DEPTH + 1):
        nested = b"#bundle\x00" + bytes(8) + struct.pack(">i", len(nested)) + nested
    peer.sock.sendto(nested, peer.target)
    assert "nested more than" in peer.recv()[1][0]
    peer.sock.sendto(b"#bundle\x00" + bytes(8) + struct.pack(">i", len(inner)) + inner, peer.target)
    assert wait_calls(ctl, 1) == [("panic", ())]
    assert not [r for r in caplog.records if r.name == "root"], "python-osc warned on the root logger"


def test_an_unsupported_type_tag_is_an_error_not_a_skipped_argument(
    server: tuple[osc.OscServer, RecordingController], caplog: pytest.LogCaptureFixture
) -> None:
    srv, ctl = server
    peer = Peer(srv.port)
    # ",cf": python-osc skipped the char argument (warning on the root logger) and read the float as the first
    peer.sock.sendto(b"/rtgen/tempo\x00\x00\x00\x00,cf\x00" + struct.pack(">i", 65) + struct.pack(">f", 99.0),
                     peer.target)  # fmt: skip
    reply, params = peer.recv()
    assert reply == "/rtgen/error" and "unsupported OSC type tag(s) 'c'" in params[0]
    assert ctl.calls == []
    assert not [r for r in caplog.records if r.name == "root"]


def test_long_messages_arrive_whole_and_errors_about_them_stay_short(
    server: tuple[osc.OscServer, RecordingController],
) -> None:
    srv, ctl = server
    peer = Peer(srv.port)
    name = "m" * 20_000  # over socketserver's 8192-byte default, which cut it into garbage
    peer.send("/rtgen/model", name)
    calls = wait_calls(ctl, 1)
    assert calls and calls[0][0] == "use_model" and calls[0][1][0] == name
    peer.send("/rtgen/tempo", "x" * 60_000)  # the reply used to quote it whole: too big for a datagram, never sent
    reply, params = peer.recv()
    assert reply == "/rtgen/error" and "must be a number" in params[0]
    assert len(params[0]) <= osc.MAX_REPLY_CHARS and "60002 chars" in params[0]


@pytest.mark.parametrize(("host", "reason"), [("a" * 64 + ".example", "cannot resolve host"), ("::1", "IPv4")])
def test_subscribe_to_a_host_that_cannot_be_used_is_an_argument_error(
    server: tuple[osc.OscServer, RecordingController], caplog: pytest.LogCaptureFixture, host: str, reason: str
) -> None:
    srv, _ = server
    peer = Peer(srv.port)
    peer.send("/rtgen/subscribe", host, 9000)  # a 64-character label raised UnicodeError: an "internal error"
    reply, params = peer.recv()
    assert reply == "/rtgen/error" and reason in params[0] and "internal error" not in params[0]
    assert srv.feedback.subscribers == ()
    assert not any(r.exc_info for r in caplog.records), "a traceback was logged"

"""Safe on a shared network: what a peer over OSC or the page can and cannot make rtgen do.

The network names things, it gives no paths: a recording is a name inside ``[record] folder`` (never one that
exists), a model a library name, a soundfont a file name in the soundfont folders. These run the real
:class:`rtgen.live.controller.Controller` on a stand-in loop, behind the real page server on loopback.
Binding beyond loopback (the page's pairing token, OSC's allow-list) is tested in a private network namespace.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, require, run_in_namespace
from test_web import addressed, serving, ws_session

from rtgen import config
from rtgen.control.web.server import WebServer
from rtgen.errors import ConfigError
from rtgen.live.controller import Controller, recording_name, reserve_recording

PEER = "10.77.0.1"  # the namespace's own address for "a peer on the network" (tests/shared_net_scenario.py)
BAD_NAMES = ["../escape", "/tmp/abs.mid", "a/b.mid", "..", "sub\\dir.mid", ".hidden", "", "x" * 101, "a\x00b"]


class LoopStandIn:
    """What :class:`Controller` reads of the loop to start and stop a recording and to swap a model."""

    def __init__(self) -> None:
        self.recorder: Any = None
        self.tempo = 120.0
        self.commands: list[Any] = []

    def command(self, cmd: Any, urgent: bool = False) -> None:
        self.commands.append(cmd)


class StandInController(Controller):
    """The daemon's controller facade over :class:`LoopStandIn`; loads are recorded, not run."""

    def __init__(self, cfg: config.Config) -> None:
        self.config = cfg
        self.loop = LoopStandIn()  # type: ignore[assignment]
        self.osc = None
        self._closers = []
        self.swaps: list[tuple[str, str]] = []

    def status(self) -> dict[str, Any]:
        return {"playing": True, "tempo": 120.0}

    def swap_model(self, path: str, reply: Any = None) -> None:
        self.swaps.append(("model", path))

    def swap_soundfont(self, path: str, reply: Any = None) -> None:
        self.swaps.append(("soundfont", path))


@pytest.fixture
def library(tmp_path: Path, shipped_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> config.Config:
    """A config whose recordings go to tmp/rec, whose models are tmp/models and soundfonts tmp/fonts."""
    monkeypatch.delenv("RTGEN_MODELS", raising=False)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "mine").symlink_to(shipped_model_dir)
    (tmp_path / "fonts").mkdir()
    (tmp_path / "fonts" / "Piano.sf2").write_bytes(b"RIFF")
    return config.config_from_dict(
        {"record": {"folder": "rec"}, "model": {"library": "models"}, "synth": {"folders": ["fonts"]}}, tmp_path
    )


@pytest.fixture
def page(library: config.Config) -> Iterator[tuple[WebServer, StandInController]]:
    ctl = StandInController(library)
    with serving("127.0.0.1", ctl) as (server, _):
        yield server, ctl


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def test_a_recording_name_is_a_name(tmp_path: Path) -> None:
    assert recording_name("take 1") == "take 1.mid"
    assert recording_name("Take_2.MIDI") == "Take_2.MIDI"
    assert recording_name("café") == "café.mid"
    for bad in BAD_NAMES:
        with pytest.raises(ValueError, match="not a plain name"):
            recording_name(bad)
    first = reserve_recording(tmp_path / "new", "take")
    assert first == tmp_path / "new" / "take.mid" and first.read_bytes() == b""
    (tmp_path / "new" / "take-2.mid").symlink_to(tmp_path / "elsewhere.mid")  # a dangling link is not followed
    assert reserve_recording(tmp_path / "new", "take.mid") == tmp_path / "new" / "take-3.mid"
    assert not (tmp_path / "elsewhere.mid").exists()


def test_over_the_page_bad_record_names_are_refused_and_nothing_is_written(
    page: tuple[WebServer, StandInController], library: config.Config, tmp_path: Path
) -> None:
    server, ctl = page
    before = _files(tmp_path)
    url = f"ws://127.0.0.1:{server.port}/ws"
    sent = [{"address": "/rtgen/record/start", "args": [name]} for name in BAD_NAMES]
    got = ws_session(url, sent, lambda m: len(addressed(m, "/rtgen/error")) >= len(BAD_NAMES))
    errors = addressed(got, "/rtgen/error")
    assert len(errors) == len(BAD_NAMES), got
    assert all("/rtgen/record/start:" in e[0] for e in errors), errors
    assert ctl.loop.commands == []  # type: ignore[union-attr]
    assert _files(tmp_path) == before, "a refused name wrote a file"
    assert not (tmp_path.parent / "escape.mid").exists()


def test_an_existing_recording_is_never_overwritten_and_the_reply_says_where(
    page: tuple[WebServer, StandInController], library: config.Config
) -> None:
    server, ctl = page
    folder = library.recordings_dir
    folder.mkdir()
    (folder / "gig.mid").write_bytes(b"an earlier take")
    url = f"ws://127.0.0.1:{server.port}/ws"
    got = ws_session(
        url, [{"address": "/rtgen/record/start", "args": ["gig"]}], lambda m: addressed(m, "/rtgen/recording")
    )
    assert addressed(got, "/rtgen/recording") == [[str(folder / "gig-2.mid")]], got
    assert (folder / "gig.mid").read_bytes() == b"an earlier take"
    (recorder,) = [c.sink for c in ctl.loop.commands]  # type: ignore[union-attr]
    assert recorder.path == folder / "gig-2.mid"


def test_models_and_soundfonts_are_chosen_by_library_name_not_path(
    page: tuple[WebServer, StandInController], library: config.Config, tmp_path: Path, shipped_model_dir: Path
) -> None:
    server, ctl = page
    url = f"ws://127.0.0.1:{server.port}/ws"
    refused = [
        {"address": "/rtgen/model", "args": [str(shipped_model_dir)]},
        {"address": "/rtgen/model", "args": ["../models/mine"]},
        {"address": "/rtgen/model", "args": ["nope"]},
        {"address": "/rtgen/soundfont", "args": [str(tmp_path / "fonts" / "Piano.sf2")]},
        {"address": "/rtgen/soundfont", "args": ["/etc/passwd"]},
    ]
    sent = [*refused, {"address": "/rtgen/model", "args": ["mine"]}, {"address": "/rtgen/soundfont", "args": ["Piano"]}]
    got = ws_session(url, sent, lambda m: len(addressed(m, "/rtgen/error")) >= len(refused), timeout=3)
    errors = [e[0] for e in addressed(got, "/rtgen/error")]
    assert len(errors) == len(refused), errors
    assert all("no model named" in e and "mine (user)" in e for e in errors[:3]), errors
    assert all("no soundfont named" in e and "Piano.sf2" in e for e in errors[3:]), errors
    assert ctl.swaps == [
        ("model", str(shipped_model_dir.resolve())),
        ("soundfont", str(tmp_path / "fonts" / "Piano.sf2")),
    ]


def test_the_config_checks_the_allow_list() -> None:
    cfg = config.config_from_dict({"osc": {"allow": ["192.168.1.20", "10.0.0.0/8", "fd00::/8"]}})
    assert [str(n) for n in cfg.osc.allowed_networks()] == ["192.168.1.20/32", "10.0.0.0/8", "fd00::/8"]
    with pytest.raises(ConfigError, match=r"osc\.allow: 'everyone' is not an address or network"):
        config.config_from_dict({"osc": {"allow": ["everyone"]}})
    with pytest.raises(ConfigError, match=r"osc\.allow must be a list of strings"):
        config.config_from_dict({"osc": {"allow": "10.0.0.1"}})
    assert dataclasses.asdict(config.Config().record) == {"folder": ""}
    assert json.dumps(config.Config().osc.allow) == "[]"


# --- bound beyond loopback, in a private network namespace ------------------------------------------------------
NAMESPACE_SETUP = f"ip link set lo up && ip addr add {PEER}/32 dev lo"


@pytest.fixture(scope="module")
def beyond_loopback(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``tests/shared_net_scenario.py`` in a namespace of its own, the page and OSC on 0.0.0.0 there."""
    out = tmp_path_factory.mktemp("shared-net") / "result.json"
    proc = run_in_namespace(NAMESPACE_SETUP, sys.executable, REPO / "tests" / "shared_net_scenario.py", out, timeout=60)
    assert proc.returncode == 0 and out.exists(), f"scenario failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    result: dict[str, Any] = json.loads(out.read_text())
    assert not result["errors"], f"{result['errors']}\n{result['log']}"
    return result


def test_the_page_beyond_loopback_needs_the_pairing_token(beyond_loopback: dict[str, Any]) -> None:
    r = beyond_loopback
    assert r["pairing_url"].startswith("http://") and "?token=" in r["pairing_url"], r["pairing_url"]
    assert r["no_token"] == {"/": 401, "/app.js": 401, "/api/status": 401, "/ws": 401}
    assert r["wrong_token"] == 401 and r["wrong_cookie"] == 401
    assert r["ws_without"] == 401
    assert 1 <= r["log_lines_for_50_refused"] <= 2, "refusals are logged folded"
    assert r["with_token"] == 200 and "HttpOnly" in r["set_cookie"] and "SameSite=Strict" in r["set_cookie"]
    assert r["api_with_cookie"] == 200
    (error,) = r["ws_with_cookie"]  # the page's session steers, but subscribes nothing (feedback amplification)
    assert "a page on the network gets the feedback over its WebSocket" in error, error
    assert ["set_tempo", [101.0]] in r["ws_calls"], r["ws_calls"]
    assert r["unpaired"] >= 55


def test_a_browser_pairs_by_the_url_and_then_steers_on_the_cookie(beyond_loopback: dict[str, Any]) -> None:
    """Debian's Chromium through Playwright, in the namespace: 401 without the token, the page's WebSocket
    connected after the pairing URL, and again at the bare address (the cookie alone)."""
    require(not beyond_loopback["browser"].startswith("skipped"), beyond_loopback["browser"])
    assert beyond_loopback["browser"] == "connected"


def test_osc_beyond_loopback_takes_packets_only_from_the_allow_list(beyond_loopback: dict[str, Any]) -> None:
    only = beyond_loopback["osc_loopback_only"]
    assert only[PEER] == {"replies": [], "tempi": []}, "a packet from outside [osc] allow was not dropped"
    assert only["127.0.0.1"] == {"replies": ["/rtgen/error"], "tempi": [122.0]}, "loopback always steers"
    assert only["subscribe_self"] == [] and only["subscribers"] == [], "a stranger subscribed"
    assert only["dropped"] == 4 and only["who"] == "loopback and 127.0.0.1/32"
    peer = beyond_loopback["osc_peer_allowed"]
    assert peer[PEER] == {"replies": ["/rtgen/error"], "tempi": [111.0]}, "an allowed peer steers"
    assert peer["127.0.0.1"]["tempi"] == [122.0] and peer["dropped"] == 0
    assert "may subscribe only itself" in peer["subscribe_other"][0], peer["subscribe_other"]
    assert peer["subscribe_self"] == [] and peer["subscribers"] == [[PEER, 9]], "a peer subscribes itself"
    assert any("dropped: not loopback nor in [osc] allow" in line for line in beyond_loopback["log"])


def test_the_pairing_url_is_printed_with_a_qr_code(capsys: pytest.CaptureFixture[str]) -> None:
    from rtgen.commands.run import print_pairing

    print_pairing("http://192.168.1.5:9080/?token=abc")
    err = capsys.readouterr().err
    assert "pair a phone with http://192.168.1.5:9080/?token=abc" in err
    assert err.count("\n") > 15 and "█" in err, "no QR code"

"""The Open Stage Control session: current, true to the OSC address table, and heard by a running daemon."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pythonosc.osc_message_builder import OscMessageBuilder

from rtgen.config import Config
from rtgen.control import osc, stagecontrol

REPO = Path(__file__).resolve().parent.parent


def sending_widgets() -> list[dict[str, Any]]:
    """The widgets that send OSC (the text displays only receive)."""
    root = stagecontrol.session(Config())["content"]
    return [w for w in stagecontrol.widgets(root) if "address" in w and w["type"] != "text"]


def messages(widget: dict[str, Any]) -> Iterator[tuple[str, list[Any]]]:
    """What Open Stage Control sends when the widget is used: its address, ``preArgs``, then each value it can
    take (a fader's ends and default, every choice, a toggle's on and off, typed text; no value for a
    momentary button)."""
    pre = list(widget["preArgs"])
    kind = widget["type"]
    if kind == "button" and widget["mode"] == "momentary":
        values: list[Any] = [None]
    elif kind == "button":
        values = [widget["on"], widget["off"]]
    elif kind == "fader":
        values = [widget["range"]["min"], widget["range"]["max"], widget["default"]]
    elif kind in ("switch", "dropdown"):
        values = list(widget["values"])
    elif kind == "input":
        values = ["take.mid"]
    else:
        raise AssertionError(f"no rule for widget type {kind}")
    for value in values:
        yield widget["address"], pre + ([] if value is None else [value])


def dgram(widget: dict[str, Any], args: list[Any]) -> bytes:
    """The datagram with the widget's type tags (Open Stage Control casts each argument to its tag)."""
    builder = OscMessageBuilder(address=widget["address"])
    for tag, value in zip(widget["typeTags"], args, strict=True):
        builder.add_arg(int(value) if tag == "i" else float(value) if tag == "f" else str(value), tag)
    return builder.build().dgram


def test_the_committed_session_is_current() -> None:
    committed = (REPO / stagecontrol.DOCS_PATH).read_text()
    assert committed == stagecontrol.render(stagecontrol.session(Config())), (
        f"run: python -m rtgen.control.stagecontrol --write {stagecontrol.DOCS_PATH}"
    )
    assert stagecontrol.main(["--check", str(REPO / stagecontrol.DOCS_PATH)]) == 0


def test_the_session_has_the_open_stage_control_shape() -> None:
    data = json.loads((REPO / stagecontrol.DOCS_PATH).read_text())
    assert data["type"] == "session" and data["version"].startswith("1.")
    root = data["content"]
    assert root["type"] == "root" and [t["type"] for t in root["tabs"]] == ["tab", "tab"]
    everything = stagecontrol.widgets(root)
    ids = [w["id"] for w in everything]
    assert len(ids) == len(set(ids)), "widget ids must be unique (a shared id makes Open Stage Control clones)"
    for w in everything:
        assert not ("tabs" in w and "widgets" in w), f"{w['id']}: a container holds tabs or widgets, not both"
    kinds = {w["type"] for w in everything}
    assert {"fader", "button", "switch", "dropdown", "text", "input"} <= kinds


def test_every_widget_matches_the_arguments_of_its_address() -> None:
    table = osc.address_args()
    seen = set()
    for w in sending_widgets():
        where = f"widget {w['id']} ({w['address']})"
        assert w["address"] in table, f"{where}: not in the OSC address table"
        seen.add(w["address"])
        spec = table[w["address"]]
        assert w["typeTags"] == "".join(a.type for a in spec), where
        sends_value = not (w["type"] == "button" and w["mode"] == "momentary")
        assert len(w["preArgs"]) + sends_value == len(spec), f"{where}: wrong argument count"
        for arg, value in zip(spec, w["preArgs"], strict=False):
            arg.check(value)
        if not sends_value:
            continue
        arg = spec[-1]
        if w["type"] == "fader":
            assert arg.type in "fi" and w["range"] == {"min": arg.lo, "max": arg.hi}, where
            if arg.type == "i":
                assert w["steps"] == int(arg.hi - arg.lo) + 1 and w["decimals"] == 0, where  # type: ignore[operator]
        elif w["type"] in ("switch", "dropdown"):
            assert arg.type == "s", where
            if arg.choices is not None:
                assert w["values"] == list(arg.choices), f"{where}: offers other choices than the address allows"
        elif w["type"] == "button":
            assert arg.type == "i" and (arg.lo, arg.hi) == (w["off"], w["on"]), where
    steered = {f"{osc.PREFIX}/{a}" for a in ("play", "stop", "panic", "tempo", "temperature", "top_p", "density",
               "swing", "mode", "key", "section", "volume", "pan", "instrument", "style", "part/enable")}  # fmt: skip
    assert steered <= seen, f"no widget for {sorted(steered - seen)}"
    texts = [w for w in stagecontrol.widgets(stagecontrol.session(Config())["content"]) if w["type"] == "text"]
    assert {w["address"] for w in texts} <= {f"{osc.PREFIX}/{n}" for n in ("beat", "chord", "section", "note")}


class Recorder:
    """Stands in for the daemon behind the address table: records what the handlers ask for."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: self.calls.append((name, args))


def test_every_message_the_widgets_can_send_is_accepted() -> None:
    recorder = Recorder()
    feedback = osc.Feedback()
    control = osc.OscControl(recorder, feedback)  # type: ignore[arg-type]
    sent = 0
    try:
        for w in sending_widgets():
            for address, args in messages(w):
                control.handle(address, args, None)
                sent += 1
                assert control.errors == 0, f"{w['id']} sent {address} {args}, which the daemon refuses"
    finally:
        feedback.sock.close()
    assert sent > 150 and len(recorder.calls) + len(feedback.subscribers) == sent
    key = next(w for w in sending_widgets() if w["id"] == "key")
    assert len(key["values"]) == 1 + 12 * len(stagecontrol.SCALES), "every tonic with every scale, and off"


def test_rtgen_layout_writes_the_session_for_a_config(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text('[osc]\nport = 9123\n[generation]\ntempo = 96.0\nkey = "A dorian"\n')
    out = tmp_path / "osc.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run(
        [sys.executable, "-m", "rtgen", "layout", "--config", str(cfg), "--out", str(out), "--feedback-port", "7001"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    root = json.loads(out.read_text())["content"]
    by_id = {w["id"]: w for w in stagecontrol.widgets(root)}
    assert by_id["tempo"]["default"] == 96.0 and by_id["key"]["default"] == "A dorian"
    assert {w["target"] for w in by_id.values() if "target" in w} == {"127.0.0.1:9123"}
    assert by_id["feedback"]["preArgs"] == ["127.0.0.1", 7001]


# --- a real peer: what the widgets send, over UDP, to a running daemon ---------------------------------------


@pytest.mark.jack
def test_a_running_daemon_follows_what_the_widgets_send(jack_server: str, shipped_model_dir: Path,
                                                         tmp_path: Path) -> None:  # fmt: skip
    from test_daemon import Daemon, Peer

    d = Daemon(jack_server, shipped_model_dir, tmp_path, tempo=120.0, listen=False)
    peer = Peer(d.osc_port)
    by_id = {w["id"]: w for w in sending_widgets()}
    chords_style = next(v for v in by_id["chords_style"]["values"] if v != "auto")
    turns = [
        ("tempo", [137.0]),
        ("temperature", [1.3]),
        ("swing", [0.25]),
        ("key", ["A dorian"]),
        ("bass_volume", ["bass", 0.5]),
        ("melody_pan", ["melody", -0.5]),
        ("chords_style", ["chords", chords_style]),
        ("drums_enable", ["drums", 0]),
        ("section", ["B"]),
    ]

    def status(timeout: float) -> dict[str, Any] | None:
        count = len(peer.wait_for("/rtgen/status", timeout=0)) + 1
        peer.send("/rtgen/status")
        replies = peer.wait_for("/rtgen/status", timeout=timeout, count=count)
        return json.loads(replies[-1][0]) if len(replies) >= count else None

    try:
        deadline = time.monotonic() + 30
        while status(1.0) is None:  # the daemon binds its OSC port once its model is loaded
            assert time.monotonic() < deadline and d.proc.poll() is None, f"no status; output:\n{d.output()}"
        for wid, args in turns:
            peer.send_raw(dgram(by_id[wid], args))
        for _ in range(50):
            state = status(5.0)
            assert state is not None, d.output()
            if not state["parts"]["drums"]["enabled"] and "B" in (state["section"], state["section_cued"]):
                break
            time.sleep(0.1)
        errors = peer.wait_for("/rtgen/error", timeout=0.2)
        assert not errors, f"the daemon refused widget messages: {errors}"
        assert state["tempo"] == 137.0 and state["temperature"] == pytest.approx(1.3)
        assert state["swing"] == 0.25 and state["key"] == "A dorian"
        parts = state["parts"]
        assert parts["bass"]["volume"] == 0.5 and parts["melody"]["pan"] == -0.5
        assert parts["chords"]["style"] == chords_style and parts["drums"]["enabled"] is False
        assert "B" in (state["section"], state["section_cued"])
        assert d.proc.poll() is None, d.output()
    finally:
        peer.close()
        d.close()

"""MIDI learn's parts: the [cc] table rewritten with tomlkit, the user config's [cc] applied, the tracker's mapping
swapped and learned, the saver thread, and the OSC addresses. End to end on JACK: tests/test_playalong.py."""

from __future__ import annotations

import os
import socket
import tomllib
from pathlib import Path
from typing import Any

import pytest
from conftest import RecordingController
from pythonosc.osc_message import OscMessage

from rtgen.config import CC_CONTROLS, CcConfig, load_config, user_config_path, with_user_cc, write_cc_table
from rtgen.control import osc
from rtgen.errors import ConfigError
from rtgen.input.tracker import LEARNED, CcMap, Control, PlayerTracker, scale_cc
from rtgen.live.learning import CcSaver

USER = """\
# my rig: comments stay
[generation]
tempo = 96.0  # slow

[cc]
# the knobs of my keyboard
temperature = 1  # mod wheel
density = 21

[parts.bass]
program = 33
"""


# --- the [cc] table in the file ------------------------------------------------------------------------------------
def test_write_keeps_comments_and_other_tables_and_rewrites_only_cc(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(USER)
    write_cc_table(path, CcConfig(temperature=21, density=0))
    text = path.read_text()
    for kept in ("# my rig: comments stay", "tempo = 96.0  # slow", "# the knobs of my keyboard", "[parts.bass]"):
        assert kept in text
    assert "temperature = 21  # mod wheel" in text, "a key keeps its own comment"
    data = tomllib.loads(text)
    assert data["generation"] == {"tempo": 96.0} and data["parts"] == {"bass": {"program": 33}}
    assert data["cc"] == {**{n: getattr(CcConfig(), n) for n in CC_CONTROLS}, "temperature": 21, "density": 0}
    assert (
        text.replace("temperature = 21", "temperature = 1")
        .replace("density = 0", "density = 21")
        .startswith(USER[: USER.index("[parts.bass]")].rstrip("\n"))
    ), "nothing above [cc] moved"
    assert load_config(path).cc == CcConfig(temperature=21, density=0)


def test_write_creates_the_file_and_its_folder(tmp_path: Path) -> None:
    path = tmp_path / "xdg" / "rtgen" / "config.toml"
    write_cc_table(path, CcConfig(swing=22))
    assert load_config(path).cc == CcConfig(swing=22)
    assert sorted(p.name for p in path.parent.iterdir()) == ["config.toml"], "no temporary file left"


def test_write_is_atomic_a_failed_replace_leaves_the_old_file(tmp_path: Path, monkeypatch: Any) -> None:
    path = tmp_path / "config.toml"
    path.write_text(USER)
    os.chmod(path, 0o600)

    def fail(src: str, dst: str) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk on fire"):
        write_cc_table(path, CcConfig(temperature=30))
    assert path.read_text() == USER
    assert [p.name for p in tmp_path.iterdir()] == ["config.toml"], "the temporary file is removed"
    monkeypatch.undo()
    write_cc_table(path, CcConfig(temperature=30))
    assert path.stat().st_mode & 0o777 == 0o600, "the file keeps its permissions"


def test_write_refuses_a_file_that_is_not_toml(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[cc\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        write_cc_table(path, CcConfig())
    assert path.read_text() == "[cc\n"


def test_user_cc_applies_over_another_config(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    user = user_config_path()
    assert user == tmp_path / "xdg" / "rtgen" / "config.toml"
    stage = tmp_path / "stage.toml"
    stage.write_text("[cc]\ntop_p = 5\n[generation]\ntempo = 140.0\n")
    cfg = load_config(stage)
    assert with_user_cc(cfg) == cfg, "no user config: nothing changes"
    write_cc_table(user, CcConfig(temperature=21, top_p=0))
    user.write_text(user.read_text() + "[generation]\ntempo = 60.0\n")
    merged = with_user_cc(cfg)
    assert merged.cc == CcConfig(temperature=21, top_p=0)
    assert merged.generation.tempo == 140.0, "only [cc] is taken from the user config"
    user.write_text("[cc]\ntemperature = 200\n")
    with pytest.raises(ConfigError, match=r"config.toml: cc.temperature must be in range 0..119"):
        with_user_cc(cfg)


# --- the tracker -----------------------------------------------------------------------------------------------
def test_learn_maps_the_next_cc_takes_it_from_other_controls_and_swaps_the_mapping() -> None:
    tr = PlayerTracker(channel=2, cc=CcConfig(temperature=1, density=21))
    before = tr.mapping
    tr.learn("temperature")
    assert tr.feed(0, (0xB0, 21, 100)) == [], "channel 1 is filtered out: not learned"
    assert tr.feed(0, (0xB1, 123, 0)) == [], "all-notes-off (channel mode) is never learned"
    assert tr.learning == "temperature"
    assert tr.feed(0, (0xB1, 21, 100)) == [Control(LEARNED, "temperature")], "learning moves nothing itself"
    assert tr.learning is None
    assert tr.mapping is not before and before.config == CcConfig(temperature=1, density=21), "swapped, not mutated"
    assert tr.mapping.as_dict() == {**CcMap.of(CcConfig()).as_dict(), "temperature": 21, "density": 0}
    assert tr.feed(0, (0xB1, 21, 0)) == [Control("temperature", scale_cc("temperature", 0))]
    assert tr.feed(0, (0xB1, 1, 127)) == [], "the old CC is free"


def test_learn_replaces_the_armed_control_and_rejects_unknown_names() -> None:
    tr = PlayerTracker()
    tr.learn("swing")
    tr.learn("panic")
    assert tr.feed(0, (0xB3, 30, 0)) == [Control(LEARNED, "panic")]
    assert tr.mapping.config.panic == 30 and tr.mapping.config.swing == 0
    assert tr.feed(0, (0xB3, 30, 127)) == [Control("panic", 1.0)]
    with pytest.raises(ValueError, match="allowed: temperature, top_p, density, swing, mode, mode_extra, panic"):
        tr.learn("tempo")
    tr.set_mapping(tr.mapping.mapped("panic", 0))
    assert tr.feed(0, (0xB3, 30, 0)) == [] and tr.feed(0, (0xB3, 30, 127)) == []


def test_a_learned_sustain_cc_is_a_knob() -> None:
    tr = PlayerTracker()
    tr.learn("swing")
    tr.feed(0, (0xB0, 64, 127))
    tr.feed(0, (0x90, 60, 90))
    assert tr.feed(0, (0xB0, 64, 127)) == [Control("swing", scale_cc("swing", 127))]
    assert not tr.pedal


# --- the saver ---------------------------------------------------------------------------------------------------
def test_saver_writes_the_newest_mapping_off_the_calling_thread_and_flushes_on_close(tmp_path: Path) -> None:
    path = tmp_path / "rtgen" / "config.toml"
    saver = CcSaver(path)
    for n in range(1, 30):
        saver.save(CcConfig(temperature=n))
    saver.close()
    assert load_config(path).cc.temperature == 29
    assert 1 <= saver.written <= 29 and saver.failed == 0


def test_saver_reports_a_failed_write(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    errors: list[str] = []
    saver = CcSaver(tmp_path / "file" / "config.toml", errors.append)
    saver.save(CcConfig())
    saver.close()
    assert saver.failed == 1 and "cannot save the [cc] table" in errors[0]


# --- OSC -----------------------------------------------------------------------------------------------------------
class Replies:
    def __init__(self) -> None:
        self.sent: list[tuple[tuple[str, int], str, list[Any]]] = []

    def reply(self, target: tuple[str, int], address: str, args: list[Any]) -> None:
        self.sent.append((target, address, args))

    def subscribe(self, host: str, port: int) -> bool:
        return True

    def unsubscribe(self, host: str, port: int) -> None:
        pass


def test_osc_learn_and_unlearn_reach_the_controller_and_unknown_names_are_refused() -> None:
    ctl = RecordingController()
    replies = Replies()
    control = osc.OscControl(ctl, replies)  # type: ignore[arg-type]
    peer = ("127.0.0.1", 9999)
    control.handle("/rtgen/learn", ["top_p"], peer)
    control.handle("/rtgen/unlearn", ["mode"], peer)
    control.handle("/rtgen/learn", ["tempo"], peer)
    (name, (arg, done)), unlearn = ctl.calls
    assert (name, arg, unlearn) == ("learn", "top_p", ("unlearn", ("mode",)))
    assert replies.sent == [
        (peer, "/rtgen/error", ["/rtgen/learn: unknown control 'tempo'; allowed: " + ", ".join(CC_CONTROLS)])
    ]
    done(33)  # what the loop calls once the CC is learned
    assert replies.sent[-1] == (peer, "/rtgen/learned", ["top_p", 33])


def test_feedback_learned_goes_to_subscribers() -> None:
    fb = osc.Feedback()
    sub = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sub.bind(("127.0.0.1", 0))
    sub.settimeout(3)
    fb.subscribe("127.0.0.1", sub.getsockname()[1])
    fb.start()
    try:
        fb.learned("swing", 22)
        msg = OscMessage(sub.recvfrom(65536)[0])
        assert (msg.address, list(msg.params)) == ("/rtgen/learned", ["swing", 22])
    finally:
        fb.close()
        sub.close()
        fb.sock.close()


# --- the loop ------------------------------------------------------------------------------------------------------
class FeedbackLog:
    """The loop's feedback, recorded (what /rtgen/learned the subscribers would get)."""

    subscribers = (("127.0.0.1", 1),)

    def __init__(self) -> None:
        self.learned_: list[tuple[str, int]] = []

    def learned(self, control: str, cc: int) -> None:
        self.learned_.append((control, cc))

    def error(self, text: str) -> None:
        raise AssertionError(text)


def test_the_loop_learns_on_its_thread_and_tells_the_sender_the_subscribers_and_the_saver(tmp_path: Path) -> None:
    from model_factory import make_random_model

    from rtgen.arrange.voicing import Voicer
    from rtgen.config import PartsConfig
    from rtgen.generation.engine import Engine, Params
    from rtgen.generation.model import Model
    from rtgen.io.scheduler import Scheduler
    from rtgen.live.commands import Learn, Unlearn
    from rtgen.live.loop import LiveLoop
    from rtgen.timing.clock import StepClock

    params = Params()
    feedback = FeedbackLog()
    tracker = PlayerTracker()
    loop = LiveLoop(
        Engine(Model.load(make_random_model(tmp_path / "random")), params, seed=1), Voicer(PartsConfig()),
        Scheduler([]), StepClock(120.0), params, PartsConfig(), feedback=feedback, tracker=tracker,  # type: ignore[arg-type]
    )  # fmt: skip
    saved: list[CcConfig] = []
    loop.on_cc_changed = saved.append
    replies: list[int] = []
    loop.command(Learn("density", replies.append))
    loop.command(Learn("swing", replies.append))  # replaces the armed one
    loop._drain()
    assert tracker.learning == "swing" and replies == []
    loop._input(1, (0xB0, 74, 127))  # density's CC: learned away from it
    assert replies == [74] and feedback.learned_ == [("swing", 74)]
    assert saved[-1] == CcConfig(swing=74, density=0) and tracker.mapping.config == saved[-1]
    assert loop.swing == 0.0, "the learning CC moves nothing"
    loop._input(2, (0xB0, 74, 127))
    assert loop.swing == 0.75
    loop.command(Unlearn("swing"))
    loop._drain()
    assert feedback.learned_[-1] == ("swing", 0) and saved[-1] == CcConfig(swing=0, density=0)
    assert loop.command_errors == 0

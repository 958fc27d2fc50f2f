"""An Open Stage Control session that steers rtgen, generated from the OSC address table.

Every widget takes its address, argument types, range and choices from :func:`rtgen.control.osc.address_args`
(the :class:`~rtgen.control.osc.OscArg` of each handler), so the layout cannot drift from what the daemon
accepts; its starting values come from a :class:`~rtgen.config.Config`. The file is an Open Stage
Control 1.x session (``{"type": "session", "content": {"type": "root", "tabs": [...]}}``): load it
with ``open-stage-control --load FILE`` or from the app's menu.

``docs/open-stage-control.json`` is the session for the default configuration, rewritten with
``python -m rtgen.control.stagecontrol --write docs/open-stage-control.json`` (a test checks it is current).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rtgen.config import MODES, PART_NAMES, Config
from rtgen.contract import NOTE_NAMES, SCALES
from rtgen.control.osc import PREFIX, OscArg, address_args

SESSION_VERSION = "1.30.1"  # the Open Stage Control release whose session format this follows
DEFAULT_FEEDBACK_PORT = 8080  # Open Stage Control's default OSC input port (= its HTTP port)
DOCS_PATH = Path("docs") / "open-stage-control.json"
SECTIONS = ("intro", "A", "B", "C", "bridge", "outro")
# what the daemon sends to subscribers (see rtgen.control.osc.Feedback) and the displays show
DISPLAYS = (("chord", "chord"), ("beat", "bar, beat"), ("section", "section, bar"))


def key_names() -> tuple[str, ...]:
    """``off`` and every tonic with every scale the key lock knows (``"C major"``, ...)."""
    return ("off", *(f"{tonic} {scale}" for scale in SCALES for tonic in NOTE_NAMES))


class _Builder:
    """Makes widgets whose OSC side is checked against the address table as they are made."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.args = address_args()

    def _osc(self, name: str, pre: Sequence[Any], sends_value: bool) -> tuple[dict[str, Any], OscArg | None]:
        address = f"{PREFIX}/{name}"
        spec = self.args.get(address)
        if spec is None:
            raise ValueError(f"{address} is not in the OSC address table")
        count = len(pre) + (1 if sends_value else 0)
        if count != len(spec):
            raise ValueError(f"{address} takes {len(spec)} argument(s), the widget would send {count}")
        for arg, value in zip(spec, pre, strict=False):
            arg.check(value)
        props = {
            "address": address,
            "preArgs": list(pre),
            "typeTags": "".join(a.type for a in spec),
            "target": self.target,
        }
        return props, spec[-1] if sends_value else None

    def button(self, wid: str, label: str, name: str, pre: Sequence[Any] = ()) -> dict[str, Any]:
        """A momentary button: a press sends ``/rtgen/NAME`` with ``pre`` and no value."""
        props, _ = self._osc(name, pre, sends_value=False)
        return {"type": "button", "id": wid, "label": label, "mode": "momentary", **props}

    def toggle(self, wid: str, label: str, name: str, pre: Sequence[Any], default: int) -> dict[str, Any]:
        """An on/off button sending 1 or 0 (an integer argument allowing 0..1)."""
        props, arg = self._osc(name, pre, sends_value=True)
        assert arg is not None
        arg.check(0)
        arg.check(1)
        return {"type": "button", "id": wid, "label": label, "mode": "toggle", "on": 1, "off": 0,
                "default": default, **props}  # fmt: skip

    def fader(self, wid: str, label: str, name: str, default: float, pre: Sequence[Any] = (),
              horizontal: bool = False) -> dict[str, Any]:  # fmt: skip
        """A fader over the whole range of the address's number argument (integer steps for ``i``)."""
        props, arg = self._osc(name, pre, sends_value=True)
        if arg is None or arg.lo is None or arg.hi is None:
            raise ValueError(f"{props['address']}: the last argument has no range for a fader")
        arg.check(default)
        widget: dict[str, Any] = {
            "type": "fader", "id": wid, "html": label, "horizontal": horizontal, "expand": True,
            "range": {"min": arg.lo, "max": arg.hi}, "default": default, "doubleTap": True, **props,
        }  # fmt: skip
        if arg.type == "i":
            widget["steps"] = int(arg.hi - arg.lo) + 1
            widget["decimals"] = 0
        return widget

    def chooser(self, kind: str, wid: str, label: str, name: str, values: Sequence[str], default: str,
                pre: Sequence[Any] = ()) -> dict[str, Any]:  # fmt: skip
        """A ``switch`` or ``dropdown`` of string values, every one checked by the argument's choices."""
        props, arg = self._osc(name, pre, sends_value=True)
        assert arg is not None
        for value in values:
            arg.check(value)
        if default not in values:
            raise ValueError(f"{props['address']}: default {default!r} is not one of the values")
        return {"type": kind, "id": wid, "html": label, "values": list(values), "default": default, **props}

    def text_input(self, wid: str, label: str, name: str) -> dict[str, Any]:
        """A text field sending what is typed (a path)."""
        props, _ = self._osc(name, (), sends_value=True)
        return {"type": "input", "id": wid, "html": label, "default": "", **props}


def _panel(wid: str, layout: str, widgets: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"type": "panel", "id": wid, "layout": layout, "expand": True, "scroll": False, "innerPadding": False,
            "padding": 4, "widgets": widgets, **extra}  # fmt: skip


def _display(wid: str, address: str, label: str) -> dict[str, Any]:
    # receives only: a text widget shows the arguments of the feedback messages matching its address
    return {"type": "text", "id": wid, "address": address, "preArgs": [], "default": label, "expand": True}


def session(cfg: Config, feedback_port: int = DEFAULT_FEEDBACK_PORT) -> dict[str, Any]:
    """The Open Stage Control session steering the daemon that ``cfg`` configures.

    Args:
        cfg: where the daemon listens (``[osc] host``/``port``) and the values the widgets start at.
        feedback_port: Open Stage Control's OSC input port; the *feedback* button subscribes it.

    Raises:
        ValueError: a widget would send what the address table refuses (a bug: the layout drifted).
    """
    host = "127.0.0.1" if cfg.osc.host in ("0.0.0.0", "") else cfg.osc.host
    b = _Builder(f"{host}:{cfg.osc.port}")
    gen = cfg.generation
    transport = _panel("transport", "horizontal", [
        b.button("play", "^play", "play"),
        b.button("stop", "^stop", "stop"),
        b.button("panic", "panic", "panic"),
        b.button("feedback", "feedback", "subscribe", ("127.0.0.1", feedback_port)),
        *(_display(f"show_{name}", f"{PREFIX}/{name}", label) for name, label in DISPLAYS),
    ], height=70, expand=False)  # fmt: skip
    sound = _panel("sound", "horizontal", [
        b.fader("tempo", "tempo", "tempo", gen.tempo),
        b.fader("temperature", "temperature", "temperature", gen.temperature),
        b.fader("top_p", "top p", "top_p", gen.top_p),
        b.fader("density", "density", "density", gen.density),
        b.fader("swing", "swing", "swing", gen.swing),
    ])  # fmt: skip
    choices = _panel("choices", "vertical", [
        b.chooser("switch", "mode", "mode", "mode", MODES, cfg.daemon.mode),
        b.chooser("dropdown", "key", "key", "key", key_names(), gen.key if gen.key in key_names() else "off"),
        b.chooser("switch", "section", "section", "section", SECTIONS, SECTIONS[0]),
        b.text_input("record_path", "record to .mid", "record/start"),
        b.button("record_stop", "stop recording", "record/stop"),
    ], width=260, expand=False)  # fmt: skip
    play_tab = {"type": "tab", "id": "tab_play", "label": "play", "layout": "vertical",
                "widgets": [transport, _panel("controls", "horizontal", [sound, choices])]}  # fmt: skip

    from rtgen.patterns.styles import style_names

    strips = []
    for part in PART_NAMES:
        pc = cfg.parts.get(part)
        strips.append(_panel(f"part_{part}", "vertical", [
            b.toggle(f"{part}_enable", part, "part/enable", (part,), int(pc.enabled)),
            b.chooser("dropdown", f"{part}_style", "style", "style", style_names(part),
                      pc.style if pc.style in style_names(part) else style_names(part)[0], (part,)),
            b.fader(f"{part}_instrument", "kit" if part == "drums" else "program", "instrument", pc.program, (part,),
                    horizontal=True),
            b.fader(f"{part}_volume", "volume", "volume", pc.volume, (part,), horizontal=True),
            b.fader(f"{part}_pan", "pan", "pan", pc.pan, (part,), horizontal=True),
        ]))  # fmt: skip
    parts_tab = {"type": "tab", "id": "tab_parts", "label": "parts", "layout": "horizontal", "widgets": strips}
    root = {"type": "root", "id": "root", "tabs": [play_tab, parts_tab]}
    return {"createdWith": "rtgen", "version": SESSION_VERSION, "type": "session", "content": root}


def render(data: dict[str, Any]) -> str:
    """The session as the text of a file (stable: two-space indent, a final newline)."""
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def widgets(node: dict[str, Any]) -> list[dict[str, Any]]:
    """Every widget under ``node`` (containers included), depth first."""
    out = [node]
    for child in (*node.get("tabs", ()), *node.get("widgets", ())):
        out.extend(widgets(child))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rtgen.control.stagecontrol [--write FILE | --check FILE]``: the session for the default config."""
    parser = argparse.ArgumentParser(prog="python -m rtgen.control.stagecontrol", description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", type=Path, metavar="FILE", help=f"write it (the committed one is {DOCS_PATH})")
    group.add_argument("--check", type=Path, metavar="FILE", help="exit 1 if FILE is not what would be written")
    args = parser.parse_args(argv)
    text = render(session(Config()))
    if args.write is not None:
        args.write.write_text(text)
        print(f"wrote {args.write}")
    elif args.check is not None:
        if args.check.read_text() != text:
            print(f"{args.check} is out of date; run python -m rtgen.control.stagecontrol --write {args.check}")
            return 1
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

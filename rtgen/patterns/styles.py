"""Accompaniment styles: how the chords and bass parts play the chord the engine chose.

The styles are data (``rtgen/data/styles.toml``, which documents the format): a chords style has a
kind (block, arpeggio, strum, pattern), the meters it serves, its onsets per meter and the bass
style it goes with; a bass style lists its notes per meter as ``(step, tone)``. ``auto`` plays the
meter's default style (block in 4/4 and 2/4, waltz in 3/4, jig in 6/8, 9/8 and 12/8); a style asked
for in a meter it does not serve plays the meter's default there. :class:`~rtgen.arrange.voicing.Voicer`
plays them.
"""

from __future__ import annotations

import functools
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from rtgen.errors import brief
from rtgen.patterns.drums import Meter, meter_of

STYLE_AUTO = "auto"
KINDS = ("block", "arpeggio", "strum", "pattern", "chorale")
CHORALE = "chorale"
"""The chords style (and kind) the polyphonic model sings instead of a rule (:mod:`rtgen.arrange.chorale`)."""
ORDERS = ("up", "down", "updown")
TONES = ("root", "fifth", "third", "alt", "approach")
_ANY = "any"


@dataclass(frozen=True)
class ChordStyle:
    """How the chords part plays (see ``rtgen/data/styles.toml``).

    Attributes:
        name: the style's name.
        kind: block, arpeggio, strum or pattern.
        description: one line for people.
        meters: the meters served; ``None`` for any.
        bass: the bass style that goes with it.
        order: arpeggio order (up, down, updown).
        rate: arpeggio: steps per note.
        hits: strum and pattern: onsets (steps in the bar) per meter.
        up: strum: the up strokes among ``hits`` per meter.
        length: pattern: steps each stab lasts.
        spread_ms: strum: the range of the delay between one string and the next.
        up_strings: strum: how many of the top notes an up stroke plays.
    """

    name: str
    kind: str
    description: str = ""
    meters: frozenset[Meter] | None = None
    bass: str = "root"
    order: str = "up"
    rate: int = 2
    hits: Mapping[Meter, tuple[int, ...]] = field(default_factory=dict)
    up: Mapping[Meter, frozenset[int]] = field(default_factory=dict)
    length: int = 2
    spread_ms: tuple[float, float] = (10.0, 25.0)
    up_strings: int = 3

    def serves(self, meter: Meter) -> bool:
        """The style is meant for ``meter``."""
        if self.meters is not None and meter not in self.meters:
            return False
        return self.kind not in ("strum", "pattern") or meter in self.hits


@dataclass(frozen=True)
class BassStyle:
    """How the bass part plays: ``(step, tone)`` per meter (a meter not listed: the root on 1)."""

    name: str
    description: str = ""
    notes: Mapping[Meter, tuple[tuple[int, str], ...]] = field(default_factory=dict)

    def pattern(self, meter: Meter) -> Mapping[int, str]:
        """Step in bar -> tone in ``meter``."""
        return dict(self.notes.get(meter, ((0, "root"),)))


@dataclass(frozen=True)
class StyleLibrary:
    """Every chords and bass style, and the default per meter."""

    chords: Mapping[str, ChordStyle]
    bass: Mapping[str, BassStyle]
    defaults: Mapping[Meter, str]
    other: str

    def default(self, meter: Meter) -> ChordStyle:
        """The style ``auto`` plays in ``meter``."""
        return self.chords[self.defaults.get(meter, self.other)]

    def chord_style(self, name: str, meter: Meter) -> ChordStyle:
        """The chords style that plays when ``name`` is asked for in ``meter``."""
        style = self.chords.get(name)
        if style is None or not style.serves(meter):
            return self.default(meter)
        return style

    def bass_style(self, name: str, chords: ChordStyle) -> BassStyle:
        """The bass style for ``name`` (``auto``: the one that goes with the chords style)."""
        return self.bass.get(name) or self.bass[chords.bass]


def _meters(value: Any, where: str) -> dict[Meter, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{where} must be a table of meters, got {value!r}")
    try:
        return {meter_of(k): v for k, v in value.items()}
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from err


def _steps(value: Any, meter: Meter, where: str) -> tuple[int, ...]:
    steps = tuple(int(s) for s in value)
    if any(not 0 <= s < meter[0] for s in steps) or list(steps) != sorted(set(steps)):
        raise ValueError(f"{where}: steps must rise within 0..{meter[0] - 1}, got {list(value)}")
    return steps


def parse_styles(data: Mapping[str, Any]) -> StyleLibrary:
    """Build and check a :class:`StyleLibrary` from parsed TOML (see ``rtgen/data/styles.toml``).

    Raises:
        ValueError: naming the style and the key.
    """
    bass: dict[str, BassStyle] = {}
    for name, entry in data.get("bass", {}).items():
        where = f"bass.{name}"
        notes: dict[Meter, tuple[tuple[int, str], ...]] = {}
        for meter, pairs in _meters(entry.get("notes", {}), f"{where}.notes").items():
            out = tuple((int(s), str(t)) for s, t in pairs)
            _steps([s for s, _ in out], meter, f"{where}.notes")
            bad = [t for _, t in out if t not in TONES]
            if bad:
                raise ValueError(f"{where}.notes: unknown tone {bad[0]!r}; allowed: {', '.join(TONES)}")
            notes[meter] = out
        bass[name] = BassStyle(name, str(entry.get("description", "")), notes)
    chords: dict[str, ChordStyle] = {}
    for name, entry in data.get("chords", {}).items():
        where = f"chords.{name}"
        kind = str(entry.get("kind", ""))
        if kind not in KINDS:
            raise ValueError(f"{where}.kind must be one of {', '.join(KINDS)}, got {kind!r}")
        order = str(entry.get("order", "up"))
        if order not in ORDERS:
            raise ValueError(f"{where}.order must be one of {', '.join(ORDERS)}, got {order!r}")
        if entry.get("bass", "root") not in bass:
            raise ValueError(f"{where}.bass: unknown bass style {entry.get('bass')!r}; allowed: {', '.join(bass)}")
        meters_list = [str(m) for m in entry.get("meters", [_ANY])]
        meters = None if _ANY in meters_list else frozenset(meter_of(m) for m in meters_list)
        hits = {m: _steps(v, m, f"{where}.hits") for m, v in _meters(entry.get("hits", {}), f"{where}.hits").items()}
        up = {m: frozenset(_steps(v, m, f"{where}.up")) for m, v in _meters(entry.get("up", {}), f"{where}.up").items()}
        for m, ups in up.items():
            if not ups <= set(hits.get(m, ())):
                raise ValueError(f"{where}.up: up strokes must be among the hits")
        if kind in ("strum", "pattern") and not hits:
            raise ValueError(f"{where}: a {kind} style needs hits per meter")
        lo, hi = (float(x) for x in entry.get("spread_ms", (10.0, 25.0)))
        chords[name] = ChordStyle(
            name=name,
            kind=kind,
            description=str(entry.get("description", "")),
            meters=meters,
            bass=str(entry.get("bass", "root")),
            order=order,
            rate=max(1, int(entry.get("rate", 2))),
            hits=hits,
            up=up,
            length=max(1, int(entry.get("length", 2))),
            spread_ms=(lo, max(lo, hi)),
            up_strings=max(1, int(entry.get("up_strings", 3))),
        )
    raw_defaults = dict(data.get("defaults", {}))
    other = str(raw_defaults.pop("other", "block"))
    defaults = {m: str(v) for m, v in _meters(raw_defaults, "defaults").items()}
    for name in [*defaults.values(), other]:
        if name not in chords:
            raise ValueError(f"defaults: unknown chords style {name!r}; allowed: {', '.join(chords)}")
    if STYLE_AUTO in chords or STYLE_AUTO in bass:
        raise ValueError(f"{STYLE_AUTO!r} is reserved for the meter's default")
    return StyleLibrary(chords, bass, defaults, other)


@functools.cache
def styles() -> StyleLibrary:
    """The packaged styles (``rtgen/data/styles.toml``), loaded once."""
    text = resources.files("rtgen").joinpath("data/styles.toml").read_text(encoding="utf-8")
    return parse_styles(tomllib.loads(text))


class UnknownStyleError(ValueError):
    """A part was asked to play a style it does not have; :attr:`allowed` lists the ones it has."""

    def __init__(self, part: str, style: str, allowed: tuple[str, ...]) -> None:
        super().__init__(f"unknown {part} style {brief(style)}; allowed: {', '.join(allowed)}")
        self.allowed = allowed


def check_style(part: str, style: str) -> str:
    """``style`` if ``part`` may play it (one of :func:`style_names`); the one check of a style name.

    Raises:
        UnknownStyleError: (a ``ValueError``) naming the part, the style and the allowed ones.
    """
    allowed = style_names(part)
    if style not in allowed:
        raise UnknownStyleError(part, style, allowed)
    return style


def style_names(part: str) -> tuple[str, ...]:
    """The styles ``part`` may be set to (``auto`` first); melody has only ``auto``."""
    if part == "chords":
        return (STYLE_AUTO, *styles().chords)
    if part == "bass":
        return (STYLE_AUTO, *styles().bass)
    if part == "drums":
        from rtgen.patterns.drums import drum_styles

        return drum_styles()
    return (STYLE_AUTO,)

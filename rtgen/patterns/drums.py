"""The drummer: a General MIDI drum part from a pattern library, varied bar by bar with a seeded RNG.

The patterns are data (``rtgen/data/drums.toml``): grooves per meter and drum style, and fills that
take over the end of a bar. The drummer knows the transport position and the density control only
(the engine knows nothing of drums):

* each phrase (:data:`~rtgen.contract.PHRASE_BARS` bars) picks a groove of the meter; its second half
  may switch to another groove of the same style (a lift, not a new song);
* every bar realises the groove again: optional ``?`` hits are drawn (likelier with density), ghost
  notes come and go, velocities move a little; below density 0.6 the ``_sparse`` lines play, from 1.6
  the ``_busy`` ones;
* :attr:`Drummer.variation` ``"B"`` (band mode's arranger) plays, the whole phrase, another groove of the
  phrase's style where the style has one (its ``"A"`` groove where it has not);
* the last bar of a phrase (and a bar given to :meth:`Drummer.cue_fill`, e.g. a section end) plays a
  fill into the next downbeat, which gets a crash and a kick; the middle of a phrase sometimes gets a
  short pickup;
* meters without patterns get a plain groove built from their beats (kick on 1, snare on the other
  beats, hats on the eighths) and a snare-and-toms fill.

Every bar's choices come from a generator seeded with ``(seed, bar)``: the same seed gives the same
drums, however often the part was muted in between.
"""

from __future__ import annotations

import functools
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np

from rtgen import contract as ct

KIT: Mapping[str, int] = {
    "kick": 36,
    "kick2": 35,
    "snare": 38,
    "snare2": 40,
    "rim": 37,
    "clap": 39,
    "hat": 42,
    "pedal": 44,
    "open": 46,
    "ride": 51,
    "bell": 53,
    "crash": 49,
    "crash2": 57,
    "tom_high": 50,
    "tom_himid": 48,
    "tom_lowmid": 47,
    "tom_low": 45,
    "floor_high": 43,
    "floor_low": 41,
    "tamb": 54,
}
"""Instrument names of the pattern files and their General MIDI drum-map keys."""

SYMBOLS: Mapping[str, int] = {"X": 112, "x": 94, "o": 74, "g": 38, "?": 84}
"""Velocity of each pattern symbol (``.`` is a rest)."""

SPARSE_BELOW = 0.6
BUSY_FROM = 1.6
CRASH_VELOCITY = 116
DRUM_STYLE_AUTO = "auto"

Meter = tuple[int, int]  # (bar_steps, beat_steps): what a Position knows of the meter
Line = tuple[str, str]  # (instrument, pattern)


def meter_of(text: str) -> Meter:
    """``"6/8"`` as ``(bar_steps, beat_steps)``."""
    ts = ct.TimeSignature.parse(text)
    return ts.bar_steps, ts.beat_steps


@dataclass(frozen=True)
class Groove:
    """One groove: instrument lines over a bar, with sparse and busy alternatives."""

    style: str
    meter: Meter
    lines: tuple[Line, ...]
    sparse: tuple[Line, ...]
    busy: tuple[Line, ...]

    def lines_for(self, density: float) -> tuple[Line, ...]:
        """The lines to play at ``density`` (a ``_sparse`` or ``_busy`` line replaces its namesake)."""
        swap = self.sparse if density < SPARSE_BELOW else self.busy if density >= BUSY_FROM else ()
        if not swap:
            return self.lines
        replaced = dict(swap)
        return tuple((name, replaced.get(name, pattern)) for name, pattern in self.lines)


@dataclass(frozen=True)
class Fill:
    """A fill: lines from ``start`` to the end of the bar, replacing the groove there."""

    meter: Meter
    start: int
    short: bool
    lines: tuple[Line, ...]


@dataclass(frozen=True)
class DrumLibrary:
    """Grooves and fills by meter."""

    grooves: Mapping[Meter, tuple[Groove, ...]]
    fills: Mapping[Meter, tuple[Fill, ...]]

    @property
    def styles(self) -> tuple[str, ...]:
        """Drum style names (``auto`` first: every groove of the meter)."""
        names = sorted({g.style for gs in self.grooves.values() for g in gs})
        return (DRUM_STYLE_AUTO, *names)


def _check_line(name: str, pattern: Any, length: int, where: str) -> str:
    if name not in KIT:
        raise ValueError(f"{where}: unknown instrument {name!r}; allowed: {', '.join(KIT)}")
    if not isinstance(pattern, str) or len(pattern) != length:
        raise ValueError(f"{where}.{name}: expected a string of {length} steps, got {pattern!r}")
    bad = set(pattern) - set(SYMBOLS) - {"."}
    if bad:
        raise ValueError(f"{where}.{name}: unknown symbols {''.join(sorted(bad))!r}; allowed: X x o g ? .")
    return pattern


def parse_library(data: Mapping[str, Any]) -> DrumLibrary:
    """Build and check a :class:`DrumLibrary` from parsed TOML (see ``rtgen/data/drums.toml``).

    Raises:
        ValueError: naming the entry, the instrument and what was expected.
    """
    grooves: dict[Meter, list[Groove]] = {}
    fills: dict[Meter, list[Fill]] = {}
    for i, entry in enumerate(data.get("groove", [])):
        where = f"groove[{i}]"
        meter = meter_of(entry["meter"])
        lines: list[Line] = []
        sparse: list[Line] = []
        busy: list[Line] = []
        for key, value in entry.items():
            if key in ("meter", "style"):
                continue
            for suffix, bucket in (("_sparse", sparse), ("_busy", busy)):
                if key.endswith(suffix):
                    bucket.append((key[: -len(suffix)], _check_line(key[: -len(suffix)], value, meter[0], where)))
                    break
            else:
                lines.append((key, _check_line(key, value, meter[0], where)))
        names = {n for n, _ in lines}
        for n, _ in sparse + busy:
            if n not in names:
                raise ValueError(f"{where}: {n}_sparse/{n}_busy without a {n} line")
        grooves.setdefault(meter, []).append(
            Groove(str(entry.get("style", "default")), meter, tuple(lines), tuple(sparse), tuple(busy))
        )
    for i, entry in enumerate(data.get("fill", [])):
        where = f"fill[{i}]"
        meter = meter_of(entry["meter"])
        start = int(entry.get("start", 0))
        if not 0 <= start < meter[0]:
            raise ValueError(f"{where}.start must be in range 0..{meter[0] - 1}, got {start}")
        lines = [
            (k, _check_line(k, v, meter[0] - start, where))
            for k, v in entry.items()
            if k not in ("meter", "start", "short")
        ]
        fills.setdefault(meter, []).append(Fill(meter, start, bool(entry.get("short", False)), tuple(lines)))
    return DrumLibrary({m: tuple(g) for m, g in grooves.items()}, {m: tuple(f) for m, f in fills.items()})


@functools.cache
def library() -> DrumLibrary:
    """The packaged pattern library (``rtgen/data/drums.toml``), loaded once."""
    text = resources.files("rtgen").joinpath("data/drums.toml").read_text(encoding="utf-8")
    return parse_library(tomllib.loads(text))


def drum_styles() -> tuple[str, ...]:
    """The drum style names a part may be set to."""
    return library().styles


@functools.lru_cache(maxsize=64)
def _generic(meter: Meter) -> tuple[Groove, Fill]:
    """A plain groove and fill for a meter the library has no patterns for (5/4, 7/8, ...)."""
    bar_steps, beat_steps = meter
    # counted eighths (7/8, 5/8) are too quick to each carry a drum beat: pulse in quarters there
    pulse = beat_steps if beat_steps >= ct.STEPS_PER_BEAT else ct.STEPS_PER_BEAT
    beats = list(range(0, bar_steps, max(1, pulse)))
    kick = ["."] * bar_steps
    snare = ["."] * bar_steps
    hat = ["x" if p % 2 == 0 else "." for p in range(bar_steps)]
    strong = ct.strong_positions(bar_steps, beat_steps) if pulse == beat_steps else (0,)
    for i, b in enumerate(beats):
        if b in strong:
            kick[b] = "X" if b == 0 else "x"
        elif pulse != beat_steps and i % 2 == 0:
            kick[b] = "o"
        else:
            snare[b] = "x"
    sparse = ["x" if p in beats else "." for p in range(bar_steps)]
    groove = Groove(
        DRUM_STYLE_AUTO,
        meter,
        (("kick", "".join(kick)), ("snare", "".join(snare)), ("hat", "".join(hat))),
        (("hat", "".join(sparse)),),
        (("hat", "x" * bar_steps),),
    )
    start = beats[-1] if len(beats) > 1 else bar_steps // 2
    n = bar_steps - start
    roll = "".join("o" if i < n // 2 else "x" for i in range(n))
    tom = "".join("X" if i == n - 1 else "." for i in range(n))
    fill = Fill(meter, start, False, (("snare", roll[:-1] + "."), ("floor_high", tom)))
    return groove, fill


class Drummer:
    """Plays the drum part: for each step, the drum keys to strike and their velocities.

    Args:
        seed: seeds every bar's choices (with the bar number).
        style: a drum style of the library (``auto``: every groove of the meter); a style without
            grooves in the meter plays the meter's grooves.
        lib: the pattern library (default: the packaged one).
    """

    def __init__(self, seed: int = 0, style: str = DRUM_STYLE_AUTO, lib: DrumLibrary | None = None) -> None:
        self.lib = lib if lib is not None else library()
        self.seed = seed
        self.style = style
        self._cued: set[int] = set()
        self._origin = 0  # phrases count from this bar (a section's first)
        self._bar_key: tuple[int, int, int, float] | None = None
        self._bar_hits: dict[int, list[tuple[int, int]]] = {}
        self.variation = "A"  # "B": the style's other groove (set on a bar line: a bar keeps its plan)

    def set_style(self, style: str) -> None:
        """Switch the drum style (from the next bar on; the bar being played keeps its plan)."""
        if style not in self.lib.styles:
            raise ValueError(f"unknown drum style {style!r}; allowed: {', '.join(self.lib.styles)}")
        self.style = style

    def reset(self, seed: int | None = None) -> None:
        """Forget the bar plan and cued fills (and re-seed when ``seed`` is given)."""
        if seed is not None:
            self.seed = seed
        self._cued.clear()
        self._origin = 0
        self._bar_key = None

    def reseed(self, seed: int) -> None:
        """Draw from ``seed`` from the next step on (the phrase count and cued fills stay)."""
        self.seed = seed
        self._bar_key = None

    def start_phrase(self, bar: int) -> None:
        """Count phrases from ``bar`` on (a section starts there): its phrase ends get the fills."""
        if bar != self._origin:
            self._origin = bar
            self._bar_key = None if self._bar_key is not None and self._bar_key[0] >= bar else self._bar_key

    def cue_fill(self, bar: int) -> None:
        """Play a fill in ``bar`` (say, the last bar of a section) and a crash on the downbeat after it."""
        self._cued.add(bar)
        if len(self._cued) > 64:  # bounded: old cues are of no use
            self._cued.discard(min(self._cued))

    def is_fill_bar(self, bar: int) -> bool:
        """``bar`` ends a phrase (counted from the last section start) or was cued: it plays a fill."""
        return (bar - self._origin) % ct.PHRASE_BARS == ct.PHRASE_BARS - 1 or bar in self._cued

    def _grooves(self, meter: Meter) -> tuple[Groove, ...]:
        grooves = self.lib.grooves.get(meter)
        if not grooves:
            return (_generic(meter)[0],)
        if self.style != DRUM_STYLE_AUTO:
            mine = tuple(g for g in grooves if g.style == self.style)
            if mine:
                return mine
        return grooves

    def _fills(self, meter: Meter, short: bool) -> tuple[Fill, ...]:
        fills = tuple(f for f in self.lib.fills.get(meter, ()) if f.short == short)
        if fills or short:
            return fills
        return (_generic(meter)[1],)

    def _plan(self, bar: int, meter: Meter, density: float) -> dict[int, list[tuple[int, int]]]:
        """Every hit of ``bar``: step in bar -> [(key, velocity)]."""
        bar_steps = meter[0]
        grooves = self._grooves(meter)
        phrase, in_phrase = divmod(bar - self._origin, ct.PHRASE_BARS)
        prng = np.random.default_rng([self.seed, phrase & 0xFFFFFFFF, 7919, 1])  # a pickup bar is -1
        main = int(prng.integers(len(grooves)))
        alt = int(prng.integers(len(grooves)))
        same_style = grooves[alt].style == grooves[main].style
        lift = same_style and bool(prng.random() < 0.5)
        groove = grooves[alt if lift and in_phrase >= ct.PHRASE_BARS // 2 else main]
        if self.variation == "B":
            other = [g for g in grooves if g.style == grooves[main].style and g is not grooves[main]]
            groove = other[0] if other else grooves[main]

        rng = np.random.default_rng([self.seed, bar & 0xFFFFFFFF, 7919, 2])
        maybe = min(0.9, 0.35 * density)
        ghost = 0.0 if density < 0.35 else min(1.0, 0.6 * density)
        fill: Fill | None = None
        if self.is_fill_bar(bar):
            fills = self._fills(meter, short=False)
            fill = fills[int(rng.integers(len(fills)))]
        elif in_phrase == ct.PHRASE_BARS // 2 - 1 and rng.random() < min(0.8, 0.4 * density):
            shorts = self._fills(meter, short=True)
            fill = shorts[int(rng.integers(len(shorts)))] if shorts else None
        crash = bar == self._origin or self.is_fill_bar(bar - 1)

        hits: dict[int, list[tuple[int, int]]] = {}

        def hit(pos: int, name: str, symbol: str) -> None:
            if symbol == ".":
                return
            if symbol == "?" and rng.random() >= maybe:
                return
            if symbol == "g" and rng.random() >= ghost:
                return
            vel = SYMBOLS[symbol] + int(rng.integers(-5, 6))
            hits.setdefault(pos, []).append((KIT[name], min(127, max(1, vel))))

        stop = fill.start if fill is not None else bar_steps
        lines = groove.lines_for(density)
        opens = {p for name, pattern in lines if name == "open" for p in range(stop) if pattern[p] != "."}
        for name, pattern in lines:
            for pos in range(stop):
                if name in ("hat", "ride") and pos in opens:
                    continue  # the open hat takes the closed one's place (and may be drawn out below)
                hit(pos, name, pattern[pos])
        if fill is not None:
            for name, pattern in fill.lines:
                for i, symbol in enumerate(pattern):
                    hit(fill.start + i, name, symbol)
        if crash:
            down = [(k, v) for k, v in hits.get(0, []) if k not in (KIT["hat"], KIT["ride"], KIT["kick"])]
            which = "crash" if rng.random() < 0.7 else "crash2"
            hits[0] = [(KIT["kick"], SYMBOLS["X"]), (KIT[which], CRASH_VELOCITY), *down]
        return hits

    def hits(self, bar: int, position: int, bar_steps: int, beat_steps: int, density: float) -> list[tuple[int, int]]:
        """The drum keys to strike at this step, as ``(key, velocity)``; one key at most once.

        Args:
            bar: bar number (0-based).
            position: step in the bar.
            bar_steps: steps in the bar.
            beat_steps: steps per counted beat.
            density: the density control (0..4); the bar keeps the density it started with.
        """
        if self._bar_key is None or self._bar_key[:3] != (bar, bar_steps, beat_steps):
            self._bar_key = (bar, bar_steps, beat_steps, density)
            self._bar_hits = self._plan(bar, (bar_steps, beat_steps), density)
        seen: set[int] = set()
        out: list[tuple[int, int]] = []
        for k, v in self._bar_hits.get(position, ()):
            if k not in seen:
                seen.add(k)
                out.append((k, v))
        return out

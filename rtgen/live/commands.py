"""Typed commands: what other threads (OSC, the web page, the JACK supervisor, loaders) ask of the live loop.

A command is a frozen value put on the loop's queue; the loop applies it on its own thread between two
steps (:mod:`rtgen.live.handlers`, one handler per type). Nothing else crosses from those threads to the
loop but the params box (:mod:`rtgen.live.params`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rtgen.generation.model import Model, StepBinding
    from rtgen.io.sinks import RecorderSink
    from rtgen.io.synth import Synth


@dataclass(frozen=True)
class Play:
    """Start playing from the top of a fresh piece (internal clock)."""


@dataclass(frozen=True)
class Stop:
    """Stop: every sounding note released now."""


@dataclass(frozen=True)
class Panic:
    """Release everything, then all-notes-off and all-sound-off on every channel; keep playing."""


@dataclass(frozen=True)
class SetTempo:
    """Tempo in BPM from the next undecided step on."""

    bpm: float


@dataclass(frozen=True)
class SetPart:
    """Change one part's program, volume or pan (None = unchanged)."""

    part: str
    program: int | None = None
    volume: float | None = None
    pan: float | None = None


@dataclass(frozen=True)
class SetStyle:
    """Play a part in another style (see :mod:`rtgen.patterns.styles`): its notes are released now, the style starts at
    its next onset."""

    part: str
    style: str


@dataclass(frozen=True)
class SetPartEnabled:
    """Mute or unmute a part: muting releases its notes now (real note-offs) and drops its notes decided ahead."""

    part: str
    enabled: bool


@dataclass(frozen=True)
class SetSeed:
    """Re-seed: a fresh piece from the next step (bar lines stay where the transport has them)."""

    seed: int


@dataclass(frozen=True)
class SetSwing:
    """Swing amount 0..0.75."""

    swing: float


@dataclass(frozen=True)
class SetSplit:
    """Split the player's hands at MIDI pitch ``split`` (the right hand is it and above), or ``None``: the top line."""

    split: int | None


@dataclass(frozen=True)
class SetMode:
    """Switch to another conductor (mode); nothing is left sounding from parts the new mode does not play."""

    mode: str


@dataclass(frozen=True)
class SwapModel:
    """A loaded model to switch to at the next bar line, with its binding to the engine made ahead."""

    model: Model
    steps: StepBinding | None = None


@dataclass(frozen=True)
class UseSoundfont:
    """Switch the synth to a soundfont already loaded (off the real-time thread)."""

    synth: Synth
    sfid: int
    path: Path


@dataclass(frozen=True)
class SetSection:
    """Cue the song-form section ``name``: it starts at the next phrase boundary (or bar line, ``[form] cue``)."""

    name: str


@dataclass(frozen=True)
class CueBand:
    """Cue band mode's arranger control ``control`` (see :data:`rtgen.generation.conductor.BAND_CONTROLS`): it lands
    on the next bar line."""

    control: str


@dataclass(frozen=True)
class RecordStart:
    """Start recording into a new recorder sink."""

    sink: RecorderSink


@dataclass(frozen=True)
class RecordStop:
    """Stop recording; ``done`` gets the detached recorder (to be closed off the real-time thread)."""

    done: Callable[[RecorderSink | None], None] | None = None


@dataclass(frozen=True)
class Learn:
    """MIDI learn: the next CC the player moves is mapped to control ``name`` (replaces an armed learn).

    ``done`` gets the CC number once it is learned, on the real-time thread (it must only enqueue).
    """

    name: str
    done: Callable[[int], None] | None = None


@dataclass(frozen=True)
class Unlearn:
    """Remove control ``name``'s CC mapping (and disarm it if it waits to learn)."""

    name: str


Command = (
    Play | Stop | Panic | SetTempo | SetPart | SetStyle | SetPartEnabled | SetSeed | SetSwing | SetMode | SwapModel
    | UseSoundfont | RecordStart | RecordStop | SetSection | Learn | Unlearn | SetSplit | CueBand
)  # fmt: skip

"""Opening what the daemon plays to and listens to: MIDI out, the synth, the recorder, the player's input.

Start-up fails fast with an :class:`~rtgen.errors.RtgenError` that says what to do (an unknown port lists
the ports there are; a missing soundfont says where rtgen looked), except where playing on makes more sense
than stopping: no audio device for the synth (MIDI still plays), no virtual input on this backend in
autonomous mode (rtgen plays without listening).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from rtgen.config import PART_NAMES, Config
from rtgen.errors import AudioError, PortError, RtgenError
from rtgen.io.sinks import MidiOutSink, RecorderSink, Sink, SynthSink

if TYPE_CHECKING:
    from rtgen.generation.engine import Params
    from rtgen.input.tracker import PlayerTracker
    from rtgen.io.ports import MidiInput
    from rtgen.io.synth import Synth
    from rtgen.timing.link import LinkFollower
    from rtgen.timing.midiclock import ClockFollower

log = logging.getLogger(__name__)

Warn = Callable[[str], None]
"""Tells the user something at start-up that does not stop rtgen (the status line or JSON log)."""


@dataclass
class Outputs:
    """Where the parts go. ``sinks`` holds every sink (the recorder last); the others name some of them."""

    sinks: list[Sink] = field(default_factory=list)
    midi_sinks: list[MidiOutSink] = field(default_factory=list)
    synth: Synth | None = None
    synth_sink: SynthSink | None = None
    midi_name: str | None = None

    def close(self) -> None:
        """Close every sink (errors are logged)."""
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as err:
                log.warning("closing %s failed: %s", sink.name, err)


def open_outputs(config: Config, warn: Warn) -> Outputs:
    """MIDI out (virtual ``rtgen:out`` or a named port), the synth and the recorder, as configured.

    Raises:
        RtgenError: a named port is missing, or nothing is left to play to (everything opened is closed first).
    """
    out = Outputs()
    try:
        _open(config, out, warn)
    except BaseException:
        out.close()
        raise
    return out


def _open(config: Config, out: Outputs, warn: Warn) -> None:
    midi_error: PortError | None = None
    if config.midi.enabled:
        from rtgen.io.ports import open_output

        try:
            port = open_output(
                config.midi.backend, config.midi.out or None, config.midi.client_name, config.midi.virtual_port_name
            )
        except PortError as err:
            if config.midi.out or not config.synth.enabled:
                raise  # a port the user named must exist; and without the synth there is nothing left
            midi_error = err  # no MIDI system for a virtual port: the synth may still play
        else:
            out.midi_name = port.name
            sink = MidiOutSink(port)
            out.sinks.append(sink)
            out.midi_sinks.append(sink)
    if config.synth.enabled:
        out.synth = open_synth(config, out.midi_name, warn)
        if out.synth is not None:
            out.synth_sink = SynthSink(out.synth)
            out.sinks.append(out.synth_sink)
    if midi_error is not None:
        if out.synth is None:
            raise RtgenError(f"no output left to play to: MIDI: {midi_error}; synth: no audio device (see above)")
        log.warning("no MIDI output (%s); playing through the synth only", midi_error)
    if config.daemon.record:
        out.sinks.append(make_recorder(config, config.resolve(config.daemon.record), config.generation.tempo))
    if not any(s.live for s in out.sinks):
        raise RtgenError(
            "no output left to play to: MIDI out is disabled and the synth is off or has no audio device; "
            "enable one (--synth with a working --audio-driver, or MIDI out with [midi] enabled = true)"
        )


def open_synth(config: Config, midi_name: str | None, warn: Warn) -> Synth | None:
    """The internal synth on its audio device, or None (told, not raised) when there is no device.

    Raises:
        SoundfontError: no soundfont where the config says (or in the usual places).
    """
    from rtgen.io.synth import Synth, find_soundfont

    cfg = config.synth
    sf = find_soundfont(config.resolve(cfg.soundfont) if cfg.soundfont else None)
    synth = Synth(sf, sample_rate=cfg.sample_rate, gain=cfg.gain, reverb=cfg.reverb, chorus=cfg.chorus)
    try:
        synth.start_audio(cfg.audio_driver or None)
    except AudioError as err:
        synth.close()
        rest = "playing to MIDI only" if midi_name else "no synth"
        log.warning("no audio device for the synth (%s); %s", err, rest)
        warn(f"no audio device: {err}; {rest}")
        return None
    return synth


def make_recorder(config: Config, path: Path, tempo: float) -> RecorderSink:
    """A recorder of the session (both sides) into ``path``, its tracks named after the parts."""
    ts = config.generation.parsed_time_signature()
    names = {config.parts.get(n).channel - 1: n for n in PART_NAMES}
    return RecorderSink(path, tempo, time_signature=(ts.numerator, ts.denominator), track_names=names)


@dataclass
class PlayerInput:
    """The player's side: the port, what tracks their notes, and the MIDI clock they may carry."""

    port: MidiInput
    tracker: PlayerTracker
    clock: ClockFollower | None


def open_player_input(config: Config) -> PlayerInput | None:
    """The player's MIDI input (virtual ``rtgen:in`` or a named port), or None when nobody is listened to.

    Raises:
        RtgenError: a mode or clock that needs the input, with the input off; a named port that is missing.
    """
    need = config.input.enabled or config.clock.source == "midi" or config.daemon.mode != "autonomous"
    if not need:
        return None
    if not config.input.enabled:
        raise RtgenError(
            f"mode {config.daemon.mode} / clock {config.clock.source} needs the MIDI input, but [input] enabled = false"
        )
    from rtgen.input.tracker import PlayerTracker
    from rtgen.io.ports import open_input
    from rtgen.timing.midiclock import ClockFollower

    try:
        # polled, not called back: rtmidi's thread is JACK's real-time thread, which must never wait for
        # the GIL (a synchronous server stalls every client then); the loop polls every millisecond
        port = open_input(
            config.midi.backend, config.input.port or None, None, config.midi.client_name,
            config.input.virtual_port_name, clock=config.clock.source == "midi",
        )  # fmt: skip
    except PortError:
        if config.input.port or config.daemon.mode != "autonomous" or config.clock.source == "midi":
            raise  # a port the user named must exist, and a play-along mode needs one
        log.warning("no MIDI input (no virtual port on this backend); playing without listening")
        return None
    clock = ClockFollower() if config.clock.source == "midi" else None
    return PlayerInput(port, PlayerTracker.from_config(config), clock)


def open_link(config: Config, params: Params) -> LinkFollower:
    """Join the Ableton Link session (quantum: one bar of the meter)."""
    from rtgen.timing.link import LinkFollower

    link = LinkFollower(
        config.generation.tempo, params.time_signature.bar_steps, start_stop_sync=config.clock.link_start_stop
    )
    link.open()
    return link

"""The controller facade: what OSC and the web page may ask of the running daemon (called on their threads).

Each call checks its arguments at once (so the sender gets its error reply), then hands the change to the
loop: a command on its queue, or a new params value. Slow work (loading a model or a soundfont, writing a
recording) runs on a thread of its own; the loop only switches pointers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rtgen import library
from rtgen.config import Config, check_cc_control, check_mode, parse_split
from rtgen.errors import RtgenError, SoundfontError, brief
from rtgen.generation.conductor import POLY_MODES, needs_harmoniser
from rtgen.live import loaders
from rtgen.live.commands import (
    CueBand,
    Learn,
    Panic,
    Play,
    RecordStart,
    RecordStop,
    SetMode,
    SetPart,
    SetPartEnabled,
    SetSection,
    SetSeed,
    SetSplit,
    SetStyle,
    SetSwing,
    SetTempo,
    Stop,
    SwapModel,
    Unlearn,
    UseSoundfont,
)
from rtgen.live.opening import make_recorder
from rtgen.live.polyload import load_poly
from rtgen.patterns.styles import CHORALE as CHORALE_STYLE
from rtgen.patterns.styles import check_style

if TYPE_CHECKING:
    from rtgen.control.osc import OscServer
    from rtgen.io.sinks import RecorderSink
    from rtgen.io.synth import Synth
    from rtgen.live.loop import LiveLoop

log = logging.getLogger(__name__)

Reply = Callable[[str], None]
"""Sends a text back to whoever asked (an OSC reply, the page's message)."""

RECORDING_NAME = re.compile(r"\w[\w .+-]{0,99}")
"""A recording's name over the network: no separator, no leading dot, at most 100 characters."""
MAX_NUMBERED = 999


def recording_name(name: str) -> str:
    """``name`` as a file name in the recordings folder (``.mid`` added unless it ends in .mid or .midi).

    Raises:
        ValueError: ``name`` is a path, not a name (a separator, ``..``, a leading dot, an absolute path).
    """
    if not RECORDING_NAME.fullmatch(name) or ".." in name:
        raise ValueError(
            f"recording name {brief(name)} is not a plain name: use letters, digits, space and . _ + - "
            "(no folders, no '..', at most 100 characters); it goes into the recordings folder ([record] folder)"
        )
    return name if Path(name).suffix.lower() in (".mid", ".midi") else f"{name}.mid"


def reserve_recording(folder: Path, name: str) -> Path:
    """Create the empty file ``folder/name`` (or ``stem-2.mid``, ``stem-3.mid``, ... when it exists) and
    return it: an existing file is never overwritten, and the name stays ours until the recording replaces it.

    Raises:
        ValueError: the name is not a plain name (:func:`recording_name`), or the folder cannot be written.
    """
    file = Path(recording_name(name))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(1, MAX_NUMBERED + 1):
            target = folder / (file.name if n == 1 else f"{file.stem}-{n}{file.suffix}")
            try:
                os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            except FileExistsError:  # also a symlink there, dangling or not: never followed
                continue
            return target
    except OSError as err:
        raise ValueError(f"cannot record into {folder}: {err}") from err
    raise ValueError(f"{folder} already holds {file.stem}-2 .. {file.stem}-{MAX_NUMBERED}; choose another name")


class Controller:
    """The calls of :class:`rtgen.control.osc.Controller`, on the daemon's loop (see the module docstring)."""

    config: Config
    loop: LiveLoop | None
    poly_folder: Path | None
    osc: OscServer | None
    loader: loaders.BackgroundLoader
    _closers: list[threading.Thread]

    @property
    def synth(self) -> Synth | None:
        """The internal synth, when it plays."""
        raise NotImplementedError

    def _live(self) -> LiveLoop:
        if self.loop is None:
            raise RtgenError("the daemon is not running")
        return self.loop

    def status(self) -> dict[str, Any]:
        """The full state as JSON-ready data (see :func:`rtgen.live.snapshot.snapshot`)."""
        raise NotImplementedError

    def play(self) -> None:
        """Start playing."""
        self._live().command(Play(), urgent=True)

    def stop(self) -> None:
        """Stop playing (notes released now)."""
        self._live().command(Stop(), urgent=True)

    def panic(self) -> None:
        """Release everything."""
        self._live().command(Panic(), urgent=True)

    def set_tempo(self, bpm: float) -> None:
        """Tempo from the next step on (following Link: proposed to the session)."""
        loop = self._live()
        refusal = loop.source.tempo_refusal
        if refusal is not None:
            raise ValueError(refusal)
        loop.command(SetTempo(bpm))

    def set_params(self, **changes: Any) -> None:
        """Swap generation parameters."""
        self._live().set_params(**changes)

    def set_mode(self, mode: str) -> None:
        """Switch mode (the model must have a harmoniser for the modes that harmonise the player)."""
        check_mode(mode)
        loop = self._live()
        if needs_harmoniser(mode) and not loop.engine.can_harmonise:
            loop.engine.model.require_harmony(mode)
        if mode != "autonomous" and loop.tracker is None:
            raise ValueError(f"mode {mode} listens to a player, but the MIDI input is off ([input] enabled)")
        if mode in POLY_MODES and loop.poly_model is None:  # loaded here, off the real-time thread, once
            loop.poly_model = load_poly(self.config, self.poly_folder, mode)
        loop.command(SetMode(mode), urgent=True)

    def set_instrument(self, part: str, program: int) -> None:
        """Program change for a part."""
        self._live().command(SetPart(part, program=program), urgent=True)

    def set_volume(self, part: str, volume: float) -> None:
        """CC7 for a part."""
        self._live().command(SetPart(part, volume=volume), urgent=True)

    def set_pan(self, part: str, pan: float) -> None:
        """CC10 for a part."""
        self._live().command(SetPart(part, pan=pan), urgent=True)

    def set_style(self, part: str, style: str) -> None:
        """Play ``part`` in ``style``: its notes are released at once, the style starts at its next onset."""
        check_style(part, style)
        loop = self._live()
        if part == "chords" and style == CHORALE_STYLE and loop.poly_model is None:  # loaded here, once
            loop.poly_model = load_poly(self.config, self.poly_folder, f"the {style} style")
        loop.command(SetStyle(part, style), urgent=True)

    def set_part_enabled(self, part: str, enabled: bool) -> None:
        """Mute (False) or unmute (True) a part; muting releases its notes at once with real note-offs."""
        self._live().command(SetPartEnabled(part, bool(enabled)), urgent=True)

    def set_key(self, key: str) -> None:
        """Key lock (or "off")."""
        from rtgen.contract import Key

        self._live().set_params(key=None if key.strip().lower() == "off" else Key.parse(key))

    def set_seed(self, seed: int) -> None:
        """Re-seed (restarts the piece at the next step)."""
        self._live().command(SetSeed(seed))

    def set_swing(self, swing: float) -> None:
        """Swing amount."""
        self._live().command(SetSwing(swing))

    def set_split(self, split: str) -> None:
        """Split the player's hands at a note such as ``"C4"`` (it and above: the right hand's tune), or ``"auto"``:
        the top line is the melody.

        Raises:
            ValueError: neither ``auto`` nor a note name, or the player's input is off.
        """
        pitch = parse_split(split)
        loop = self._live()
        if loop.tracker is None:
            raise ValueError("the split sorts the player's hands, but the input is off ([input] enabled)")
        loop.command(SetSplit(pitch))

    def set_section(self, name: str) -> None:
        """Cue a song-form section (raises ValueError for a name that is not allowed)."""
        from rtgen.arrange.form import check_section_name

        self._live().command(SetSection(check_section_name(name)))

    def cue_band(self, control: str) -> None:
        """Cue band mode's arranger control ``control`` on the next bar line (one of
        :data:`rtgen.generation.conductor.BAND_CONTROLS`).

        Raises:
            ValueError: the mode is not band.
        """
        loop = self._live()
        if loop.mode != "band":
            raise ValueError(f"{control} is an arranger control of band mode; the mode is {loop.mode}")
        loop.command(CueBand(control))

    def learn(self, name: str, done: Callable[[int], None] | None = None) -> None:
        """Arm MIDI learn for control ``name``: the next CC the player moves is mapped to it (live at once, then
        saved to the user config's ``[cc]`` off the real-time thread); ``done`` gets the CC number, called on the
        real-time thread (it must only enqueue). A newer learn replaces the armed one.

        Raises:
            ValueError: an unknown control (the message lists them), or the MIDI input is off.
        """
        self._learning(name).command(Learn(name, done), urgent=True)

    def unlearn(self, name: str) -> None:
        """Remove control ``name``'s CC mapping, live and in the user config's ``[cc]``.

        Raises:
            ValueError: an unknown control (the message lists them), or the MIDI input is off.
        """
        self._learning(name).command(Unlearn(name), urgent=True)

    def _learning(self, name: str) -> LiveLoop:
        """The loop, once ``name`` is a control a CC can move and the player's input is on (else ValueError)."""
        check_cc_control(name)
        loop = self._live()
        if loop.tracker is None:
            raise ValueError("MIDI learn listens to the player's input, but it is off ([input] enabled)")
        return loop

    def record_start(self, name: str) -> Path:
        """Start recording both sides to the file ``name`` in the recordings folder (``[record] folder``);
        returns the file, numbered when ``name`` exists (written safely when recording stops).

        Raises:
            ValueError: already recording; ``name`` is a path, not a name; the folder cannot be written.
        """
        loop = self._live()
        if loop.recorder is not None:
            raise ValueError(f"already recording to {loop.recorder.path}; send /rtgen/record/stop first")
        target = reserve_recording(self.config.recordings_dir, name)
        loop.command(RecordStart(make_recorder(self.config, target, loop.tempo)), urgent=True)
        return target

    def record_stop(self, reply: Reply | None = None, written: Reply | None = None) -> None:
        """Stop recording; the file is written in the background (temporary file, then rename), then its path
        goes to ``written`` (an error to ``reply``)."""

        def done(rec: RecorderSink | None) -> None:  # on the real-time thread: hand the writing to a thread
            if rec is None:
                if reply is not None:
                    reply("/rtgen/record/stop: not recording")
                return
            t = threading.Thread(target=close_recorder, args=(rec, reply, written), name="rtgen-recorder", daemon=True)
            self._closers.append(t)
            t.start()

        self._live().command(RecordStop(done), urgent=True)

    def _failed(self, text: str, reply: Reply | None) -> None:
        log.error("%s", text)
        if self.osc is not None:
            self.osc.feedback.error(text)
        if reply is not None:
            reply(text)

    def use_model(self, name: str, reply: Reply | None = None) -> None:
        """Switch to the library's model ``name`` (``rtgen models list``), as :meth:`swap_model` does: the
        network names a model, it never gives a path.

        Raises:
            ValueError: no model of that name (the message lists the models).
        """
        entry = library.find_model(name, self.config.models_dir) if library.is_name(name) else None
        if entry is None:
            raise ValueError(f"no model named {brief(name)}; {library.describe_models(self.config.models_dir)}")
        self.swap_model(str(entry.path), reply)

    def use_soundfont(self, name: str, reply: Reply | None = None) -> None:
        """Load the soundfont ``name`` (a ``.sf2`` file name in ``[synth] folders``, the configured soundfont's
        folder or the usual places), as :meth:`swap_soundfont` does: the network never gives a path.

        Raises:
            ValueError: no soundfont of that name (the message lists them).
        """
        from rtgen.io.synth import soundfont_library

        folders = [self.config.resolve(f) for f in self.config.synth.folders]
        if self.config.synth.soundfont:
            configured = self.config.resolve(self.config.synth.soundfont)
            folders.append(configured if configured.is_dir() else configured.parent)
        fonts = soundfont_library(folders)
        path = fonts.get(name) or fonts.get(f"{name}.sf2")
        if path is None:
            raise ValueError(f"no soundfont named {brief(name)}; soundfonts: {', '.join(fonts) or 'none'}")
        self.swap_soundfont(str(path), reply)

    def swap_model(self, path: str, reply: Reply | None = None) -> None:
        """Load and check ``path`` (a folder, relative to the config file, or a model name) on the loader
        thread; the RT thread switches at the next bar line.

        Loads run one at a time; a request still waiting is replaced by a newer one (its ``reply`` is told).
        A folder that fails to load is refused with the reason (``reply``, the log, ``/rtgen/error``) and
        the current model keeps playing.
        """
        loop = self._live()
        target = self.config.model_folder(path)

        def load() -> None:
            from rtgen.generation.model import Model

            try:
                model = Model.load(target)
                if loop.performer.conductor.needs_harmoniser:
                    model.require_harmony(loop.mode)
                steps = loop.engine.bind(model)  # here, not at the bar line on the RT thread
                steps.warm_up()
            except Exception as err:
                self._failed(f"/rtgen/model: cannot load {target}: {err}; keeping {loop.model_name}", reply)
                return
            loop.command(SwapModel(model, steps))

        def superseded() -> None:
            if reply is not None:
                reply(f"/rtgen/model: {target} not loaded: a newer /rtgen/model request replaced it")

        self.loader.submit("model", load, superseded)

    def swap_soundfont(self, path: str, reply: Reply | None = None) -> None:
        """Load another soundfont on the loader thread; the RT thread switches to it between two sends.

        Loads run one at a time (a newer request replaces one still waiting) and never hold the playing
        synth's lock; the old font is freed off the RT thread.
        """
        loop = self._live()
        synth = self.synth
        if synth is None:
            self._failed(
                "/rtgen/soundfont: the internal synth is not running (start with --synth and an audio device)", reply
            )
            return
        target = self.config.resolve(path)

        def work() -> None:
            from rtgen.io.synth import find_soundfont

            try:
                sf = find_soundfont(target)
                sfid = synth.load_soundfont(sf)  # the slow part, off the real-time thread
            except (SoundfontError, OSError) as err:
                self._failed(f"/rtgen/soundfont: {err}", reply)
                return
            loop.command(UseSoundfont(synth, sfid, sf))  # switched on the RT thread, between two sends

        def superseded() -> None:
            if reply is not None:
                reply(f"/rtgen/soundfont: {target} not loaded: a newer /rtgen/soundfont request replaced it")

        self.loader.submit("soundfont", work, superseded)


def close_recorder(rec: RecorderSink, reply: Reply | None = None, written: Reply | None = None) -> None:
    """Write a detached recording (off the real-time thread); errors are logged and replied, never raised;
    the written file's path goes to ``written``."""
    try:
        rec.close()
    except Exception as err:
        log.error("cannot write the recording %s: %s", rec.path, err)
        with contextlib.suppress(OSError):  # the empty file that reserved the name (reserve_recording)
            if rec.path.stat().st_size == 0:
                rec.path.unlink()
        if reply is not None:
            reply(f"/rtgen/record/stop: {err}")
        return
    log.info("recording written to %s", rec.path)
    if written is not None:
        written(str(rec.path))

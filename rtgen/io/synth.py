"""The internal synth: FluidSynth through pyfluidsynth, live (audio driver) or offline (render to samples).

:func:`find_soundfont` finds a General MIDI ``.sf2``: the configured path, then
``$RTGEN_SOUNDFONT``, ``$SF2_PATH``, then the usual install locations. When there
is none, :class:`~rtgen.errors.SoundfontError` lists every place looked at and
how to install one.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import io
import logging
import os
import queue
import sys
import threading
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from rtgen.errors import AudioError, SoundfontError
from rtgen.io.native import captured_stderr
from rtgen.midi.messages import CC_ALL_NOTES_OFF, CC_ALL_SOUND_OFF, CHANNELS
from rtgen.midi.notes import NoteTracker

log = logging.getLogger(__name__)

SOUNDFONT_DIRS: tuple[str, ...] = (
    "/usr/share/sounds/sf2",
    "/usr/share/soundfonts",
    "/usr/local/share/soundfonts",
    "~/.local/share/soundfonts",
    "~/Library/Audio/Sounds/Banks",
    "/opt/homebrew/share/soundfonts",
)
"""Folders searched for ``*.sf2``, in order."""
PREFERRED_SOUNDFONTS: tuple[str, ...] = ("FluidR3_GM.sf2", "FluidR3_GM", "TimGM6mb.sf2", "default-GM.sf2")
"""File names preferred inside a folder (FluidR3 sounds better than TimGM6mb); substrings match too."""

if sys.platform == "darwin":
    AUDIO_DRIVERS: tuple[str, ...] = ("coreaudio", "portaudio", "sdl2", "jack")
elif sys.platform == "win32":
    AUDIO_DRIVERS = ("wasapi", "dsound", "waveout", "portaudio", "sdl2")
else:
    AUDIO_DRIVERS = ("pipewire", "pulseaudio", "alsa", "jack", "sdl2", "portaudio", "oss")
"""Audio drivers tried, in order, when none is configured."""

ENV_VARS = ("RTGEN_SOUNDFONT", "SF2_PATH")

_INSTALL_HINT = (
    "Install one: on Debian/Ubuntu `sudo apt-get install timgm6mb-soundfont` (6 MB) or `fluid-soundfont-gm` "
    "(148 MB, better); on macOS download a General MIDI .sf2 (e.g. FluidR3_GM.sf2) to ~/Library/Audio/Sounds/Banks. "
    "Or point to one with --soundfont FILE.sf2, synth.soundfont in config.toml, or $RTGEN_SOUNDFONT."
)


def _fonts(folder: Path) -> list[Path]:
    """The ``*.sf2`` files in ``folder``, by name (none when it cannot be read)."""
    try:
        return sorted(p for p in folder.iterdir() if p.suffix.lower() == ".sf2" and p.is_file())
    except OSError:
        return []


def _pick(folder: Path) -> Path | None:
    """The preferred soundfont in ``folder``, else the first ``*.sf2`` by name."""
    fonts = _fonts(folder)
    for preferred in PREFERRED_SOUNDFONTS:
        for p in fonts:
            if p.name == preferred or preferred.lower() in p.name.lower():
                return p
    return fonts[0] if fonts else None


def find_soundfont(configured: str | Path | None = None) -> Path:
    """Find a soundfont.

    Args:
        configured: an explicit path (``--soundfont`` / ``synth.soundfont``); if given it must exist.

    Returns:
        The path of a ``.sf2`` file.

    Raises:
        SoundfontError: the configured file is missing, or none was found anywhere (the message
            lists each place looked at and how to install one).
    """
    if configured is not None and str(configured).strip():
        p = Path(configured).expanduser()
        if p.is_file():
            return p
        if p.is_dir() and (found := _pick(p)) is not None:
            return found
        raise SoundfontError(f"soundfont {p} does not exist (set by --soundfont or synth.soundfont). {_INSTALL_HINT}")
    looked: list[str] = []
    for var in ENV_VARS:
        value = os.environ.get(var, "")
        if not value:
            looked.append(f"${var} (not set)")
            continue
        for part in value.split(os.pathsep):
            p = Path(part).expanduser()
            if p.is_file():
                return p
            if p.is_dir() and (found := _pick(p)) is not None:
                return found
            looked.append(f"${var}={part} (no .sf2 there)")
    for folder in SOUNDFONT_DIRS:
        p = Path(folder).expanduser()
        if (found := _pick(p)) is not None:
            return found
        looked.append(f"{p}/*.sf2")
    raise SoundfontError("no soundfont found; looked in: " + ", ".join(looked) + ". " + _INSTALL_HINT)


def soundfont_library(folders: Sequence[Path]) -> dict[str, Path]:
    """The soundfonts the network may choose, by file name (``TimGM6mb.sf2``): every ``*.sf2`` in ``folders``
    and then in :data:`SOUNDFONT_DIRS`; the first folder holding a name wins."""
    found: dict[str, Path] = {}
    for folder in (*folders, *(Path(d).expanduser() for d in SOUNDFONT_DIRS)):
        for p in _fonts(folder):
            found.setdefault(p.name, p)
    return found


def quiet_stderr() -> contextlib.AbstractContextManager[list[str]]:
    """Redirect the C-level stderr (libfluidsynth's messages) into a list of lines, logged at debug."""
    return captured_stderr("fluidsynth")


def import_fluidsynth() -> types.ModuleType:
    """Import pyfluidsynth quietly (it prints where it found libfluidsynth to stdout, which breaks ``--json``).

    Raises:
        ImportError, OSError: pyfluidsynth or libfluidsynth is missing.
    """
    with quiet_stderr(), contextlib.redirect_stdout(io.StringIO()) as out:
        import fluidsynth
    for line in out.getvalue().splitlines():
        log.debug("pyfluidsynth: %s", line)
    return fluidsynth


_VOIDP, _INT = ctypes.c_void_p, ctypes.c_int
_SIGNATURES: dict[str, tuple[Any, list[Any]]] = {  # name: (restype, argtypes), pointers as c_void_p
    "fluid_synth_get_sfont_by_id": (_VOIDP, [_VOIDP, _INT]),
    "fluid_synth_add_sfont": (_INT, [_VOIDP, _VOIDP]),
    "fluid_synth_remove_sfont": (_INT, [_VOIDP, _VOIDP]),
    "fluid_synth_noteon": (_INT, [_VOIDP, _INT, _INT, _INT]),
    "fluid_synth_noteoff": (_INT, [_VOIDP, _INT, _INT]),
    "fluid_synth_cc": (_INT, [_VOIDP, _INT, _INT, _INT]),
    "fluid_synth_program_select": (_INT, [_VOIDP, _INT, _INT, _INT, _INT]),
    "new_fluid_defsfloader": (_VOIDP, [_VOIDP]),
    "delete_fluid_sfloader": (None, [_VOIDP]),
    "fluid_sfloader_set_callbacks": (_INT, [_VOIDP] * 6),
    "fluid_synth_add_sfloader": (None, [_VOIDP, _VOIDP]),
}


def _declared(lib: ctypes.CDLL) -> ctypes.CDLL:
    for name, (restype, argtypes) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


@functools.cache
def _lib(fluidsynth: types.ModuleType) -> Any:
    """libfluidsynth with the functions pyfluidsynth does not wrap; ctypes releases the GIL in its calls."""
    return _declared(ctypes.CDLL(fluidsynth.lib))  # the same library pyfluidsynth loaded


READ_CHUNK = 1 << 20  # the largest read() a soundfont load makes (see ChunkedFiles)
_FLUID_OK, _FLUID_FAILED = 0, -1
_LL = ctypes.c_longlong
_OPEN = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_char_p)
_READ = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, _LL, ctypes.c_void_p)
_SEEK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, _LL, ctypes.c_int)
_TELL = ctypes.CFUNCTYPE(_LL, ctypes.c_void_p)
_CLOSE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)


class ChunkedFiles:
    """File callbacks for FluidSynth's soundfont loader that never read more than :data:`READ_CHUNK` at once.

    FluidSynth reads a font's samples with one ``read()`` of the whole sample chunk (141 MB for FluidR3,
    87 ms from a cold page cache, 20-30 ms from a warm one). A kernel without full preemption
    (``PREEMPT_NONE``, as on this project's CI machine) does not let a real-time thread in during such a
    call: the loop woke up 18-30 ms late in the middle of a swap. Read a megabyte at a time, the kernel
    goes back to user space between chunks. The small reads of the font's headers (80,000 for FluidR3)
    go through a buffered file; a load takes about 120 ms (before: 20-60 ms warm), off the real-time thread.
    """

    def __init__(self) -> None:
        self._files: dict[int, io.BufferedReader] = {}
        self._next = 0
        # referenced here for as long as the loader that calls them lives
        self.callbacks = (_OPEN(self._open), _READ(self._read), _SEEK(self._seek), _TELL(self._tell),
                          _CLOSE(self._close))  # fmt: skip

    def install(self, lib: Any, synth: int, settings: int) -> bool:
        """Put a default soundfont loader with these callbacks first in ``synth``'s loaders (it owns it).

        ``lib`` is libfluidsynth as :func:`_lib` declares it."""
        loader = lib.new_fluid_defsfloader(settings)
        if not loader:
            return False
        pointers = [ctypes.cast(cb, ctypes.c_void_p) for cb in self.callbacks]
        if lib.fluid_sfloader_set_callbacks(loader, *pointers) != _FLUID_OK:
            lib.delete_fluid_sfloader(loader)
            return False
        lib.fluid_synth_add_sfloader(synth, loader)
        return True

    def _open(self, name: bytes | None) -> int | None:
        try:
            f = open(os.fsdecode(name or b""), "rb")  # noqa: SIM115 - closed by FluidSynth's close callback
        except OSError:
            return None
        self._next += 1
        self._files[self._next] = f
        return self._next

    def _read(self, buf: int | None, count: int, handle: int | None) -> int:
        try:
            f = self._files[handle or 0]
            if count <= READ_CHUNK:
                data = f.read(count)
                if len(data) != count:
                    return _FLUID_FAILED
                ctypes.memmove(buf or 0, data, count)
                return _FLUID_OK
            view = memoryview((ctypes.c_char * count).from_address(buf or 0)).cast("B")
            start = f.tell()
            raw = io.FileIO(f.fileno(), closefd=False)
            raw.seek(start)
            done = 0
            while done < count:
                n = raw.readinto(view[done : done + READ_CHUNK])
                if not n:
                    return _FLUID_FAILED
                done += n
            f.seek(start + count)  # the buffered file forgets what it held
            return _FLUID_OK
        except Exception:  # an exception must not cross into C: the load fails
            return _FLUID_FAILED

    def _seek(self, handle: int | None, offset: int, origin: int) -> int:
        try:
            self._files[handle or 0].seek(offset, origin)
        except Exception:
            return _FLUID_FAILED
        return _FLUID_OK

    def _tell(self, handle: int | None) -> int:
        try:
            return self._files[handle or 0].tell()
        except Exception:
            return _FLUID_FAILED

    def _close(self, handle: int | None) -> int:
        f = self._files.pop(handle or 0, None)
        if f is None:
            return _FLUID_FAILED
        f.close()
        return _FLUID_OK


@functools.cache
def _live_lib(path: str) -> Any:
    """libfluidsynth's calls of the real-time thread, through a handle that keeps the GIL during each call.

    pyfluidsynth's wrappers (like any ``ctypes.CDLL``) release the GIL for every call and must win it back
    afterwards: behind any other Python thread that took it meanwhile, a 20 µs note-on measured 5 ms at
    Python's default switch interval. These calls are short (FluidSynth's API lock is held by its audio
    thread for one block at most) and never call back into Python, so holding the GIL is safe.
    """
    return _declared(ctypes.PyDLL(path))


class Synth:
    """A FluidSynth synthesizer with one soundfont, usable offline (:meth:`render`) and live (:meth:`start_audio`).

    Args:
        soundfont: the ``.sf2`` file.
        sample_rate: output sample rate in Hz.
        gain: master gain (FluidSynth's ``synth.gain``; 0.2..1 is sensible).
        reverb: turn the reverb on.
        chorus: turn the chorus on.

    Raises:
        SoundfontError: FluidSynth cannot load the soundfont.
        AudioError: libfluidsynth is not installed.
    """

    def __init__(
        self, soundfont: Path, *, sample_rate: int = 44100, gain: float = 0.5, reverb: bool = True, chorus: bool = False
    ) -> None:
        try:
            fluidsynth = import_fluidsynth()  # loads libfluidsynth: only when a synth is wanted
        except (ImportError, OSError) as err:
            raise AudioError(
                f"cannot load FluidSynth ({err}); install it: `sudo apt-get install libfluidsynth3` (Debian/Ubuntu) "
                "or `brew install fluid-synth` (macOS)"
            ) from err
        self._fl = fluidsynth
        self.soundfont = Path(soundfont)
        self.sample_rate = int(sample_rate)
        settings = {
            "synth.reverb.active": int(reverb),
            "synth.chorus.active": int(chorus),
            "audio.period-size": 256,
        }
        with quiet_stderr():
            self._synth = fluidsynth.Synth(
                gain=float(gain), samplerate=float(sample_rate), channels=CHANNELS, **settings
            )
            self._sfid = self._synth.sfload(str(self.soundfont))
        if self._sfid < 0:
            self._synth.delete()
            raise SoundfontError(f"FluidSynth cannot load soundfont {self.soundfont} (not a valid .sf2?)")
        self._audio_driver: object | None = None
        self._rt = _live_lib(str(fluidsynth.lib))
        self._live: int | None = self._synth.synth  # None once closed: FluidSynth refuses a NULL synth
        self._sounding = NoteTracker()
        self._closed = False
        # Soundfont swaps: loads (and their stderr capture) one at a time, each into the loader synth;
        # fonts loaded and not yet used by handle; fonts replaced, waiting for the reaper thread to free them.
        self._load_lock = threading.Lock()
        self.loader: Any | None = None
        self._loader_files: ChunkedFiles | None = None  # the loader synth's file callbacks (kept alive with it)
        self._staged: dict[int, int] = {}
        self._handles = 0
        self._retired: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self._reaper: threading.Thread | None = None
        self.fonts_freed = 0
        self._programs = [0] * CHANNELS
        for ch in range(CHANNELS):
            self.program(ch, 0)

    # --- control ---------------------------------------------------------------
    def load_soundfont(self, path: Path) -> int:
        """Load another soundfont for :meth:`use_soundfont` (slow: call it off the real-time thread).

        The file is read by a private loader synth, so the playing synth's API lock is not held while it
        loads (``fluid_synth_sfload`` holds it for the whole load: 150-500 ms for FluidR3, during which
        every note-on waits). Loads are serialised (with their stderr capture); :meth:`close` waits for
        a running one.

        Returns:
            A handle for :meth:`use_soundfont` (the font waits, unused, until then).

        Raises:
            SoundfontError: FluidSynth cannot load it, or the synth is closed.
        """
        with self._load_lock:
            if self._closed:
                raise SoundfontError(f"cannot load soundfont {path}: the synth is closed")
            loader = self._loader_synth()
            with quiet_stderr():
                lid = int(loader.sfload(str(path)))
                sfont = _lib(self._fl).fluid_synth_get_sfont_by_id(loader.synth, lid) if lid >= 0 else None
                if sfont:
                    _lib(self._fl).fluid_synth_remove_sfont(loader.synth, sfont)  # ours now, in no synth
            if not sfont:
                raise SoundfontError(f"FluidSynth cannot load soundfont {path} (not a valid .sf2?)")
            self._handles += 1
            self._staged[self._handles] = int(sfont)
            return self._handles

    def use_soundfont(self, sfid: int, path: Path) -> None:
        """Switch every channel to a soundfont from :meth:`load_soundfont`, keeping programs (real-time safe).

        Only pointers and presets change here (150-250 µs measured); the old font is freed on the synth's
        reaper thread. Sounding voices finish on the old font's samples.

        Raises:
            SoundfontError: ``sfid`` is not a font loaded and waiting, or the synth is closed.
        """
        sfont = None if self._closed else self._staged.pop(sfid, None)
        if sfont is None:
            raise SoundfontError(f"soundfont {path} is not loaded (or the synth is closed)")
        lib = self._rt
        live = self._live
        old = lib.fluid_synth_get_sfont_by_id(live, self._sfid)
        self._sfid, self.soundfont = int(lib.fluid_synth_add_sfont(live, sfont)), Path(path)
        for ch, prog in enumerate(self._programs):
            self.program(ch, prog)
        if old:
            lib.fluid_synth_remove_sfont(live, old)
            self._retire_font(int(old))

    def _loader_synth(self) -> Any:
        """The private synth that reads soundfont files (made on first use; no audio, never played)."""
        if self.loader is None:
            with quiet_stderr():
                loader = self._fl.Synth(gain=0.0, samplerate=float(self.sample_rate), channels=CHANNELS)
            files = ChunkedFiles()
            if files.install(_lib(self._fl), loader.synth, loader.settings):
                self._loader_files = files
            else:
                log.warning("FluidSynth took no file callbacks: soundfonts load with its own reads")
            self.loader = loader
        return self.loader

    def _retire_font(self, sfont: int) -> None:
        self._retired.put(sfont)
        if self._reaper is None:
            self._reaper = threading.Thread(target=self._reap, name="rtgen-soundfont-reaper", daemon=True)
            self._reaper.start()

    def _reap(self) -> None:
        """Free retired fonts: each goes back into the loader synth, which unloads it (FluidSynth waits for
        voices still playing its samples: a voice in its release tail keeps them alive until it ends)."""
        while (sfont := self._retired.get()) is not None:
            with self._load_lock:
                self._free_font(sfont)

    def _free_font(self, sfont: int) -> None:
        lib = _lib(self._fl)
        loader = self._loader_synth()
        with quiet_stderr():  # the loader synth's channels lose their presets: FluidSynth warns
            fid = int(lib.fluid_synth_add_sfont(loader.synth, sfont))
            if fid >= 0:
                loader.sfunload(fid, 0)
        self.fonts_freed += 1

    @property
    def period_ns(self) -> int:
        """The audio period in nanoseconds: a note sent at any time within one sounds at its end."""
        frames = int(self._synth.get_setting("audio.period-size") or 0)
        return frames * 1_000_000_000 // self.sample_rate

    def program(self, channel: int, program: int) -> None:
        """Select General MIDI ``program`` (0..127) on ``channel`` (0..15; channel 9 uses the drum bank)."""
        self._programs[channel] = program
        bank = 128 if channel == 9 else 0
        select = self._rt.fluid_synth_program_select
        if select(self._live, channel, self._sfid, bank, program) != 0:
            select(self._live, channel, self._sfid, 0, 0)
            log.warning("soundfont %s has no program %d (bank %d); using 0", self.soundfont.name, program, bank)

    def note_on(self, channel: int, pitch: int, velocity: int) -> None:
        """Start a note (velocity 0 is a note-off)."""
        if velocity <= 0:
            self.note_off(channel, pitch)
            return
        self._rt.fluid_synth_noteon(self._live, channel, pitch, min(127, velocity))
        self._sounding.on(channel, pitch)

    def note_off(self, channel: int, pitch: int) -> None:
        """Release a note."""
        self._rt.fluid_synth_noteoff(self._live, channel, pitch)
        self._sounding.release(channel, pitch)  # FluidSynth ends every voice of the key

    def cc(self, channel: int, control: int, value: int) -> None:
        """Send a control change (7 volume, 10 pan, 64 sustain, 91 reverb, 120/123 all sound/notes off ...)."""
        self._rt.fluid_synth_cc(self._live, channel, control, max(0, min(127, value)))

    def all_notes_off(self) -> None:
        """Release every tracked note, then CC 123 (all notes off) and CC 120 (all sound off) on all channels."""
        lib, live = self._rt, self._live
        for channel, pitch in self._sounding.sounding():
            lib.fluid_synth_noteoff(live, channel, pitch)
        self._sounding.clear()
        for ch in range(CHANNELS):
            lib.fluid_synth_cc(live, ch, CC_ALL_NOTES_OFF, 0)
            lib.fluid_synth_cc(live, ch, CC_ALL_SOUND_OFF, 0)

    @property
    def active_voices(self) -> int:
        """Voices FluidSynth is currently rendering (including release tails)."""
        return int(self._synth.get_active_voice_count())

    # --- output ----------------------------------------------------------------
    def render(self, seconds: float) -> npt.NDArray[np.int16]:
        """Render ``seconds`` of audio offline.

        Returns:
            int16 array of shape ``(frames, 2)`` (interleaved stereo).
        """
        frames = max(0, round(seconds * self.sample_rate))
        return self.render_frames(frames)

    def render_frames(self, frames: int) -> npt.NDArray[np.int16]:
        """Render exactly ``frames`` stereo frames (int16, shape ``(frames, 2)``)."""
        if frames <= 0:
            return np.zeros((0, 2), dtype=np.int16)
        out = np.empty((frames, 2), dtype=np.int16)
        block = 8192
        for start in range(0, frames, block):
            n = min(block, frames - start)
            out[start : start + n] = np.asarray(self._synth.get_samples(n), dtype=np.int16).reshape(n, 2)
        return out

    def start_audio(self, driver: str | None = None, *, settings: dict[str, str | int | float] | None = None) -> None:
        """Play live through an audio driver.

        Args:
            driver: a FluidSynth audio driver (``alsa``, ``jack``, ``pulseaudio``, ``coreaudio`` ...);
                ``None`` or ``""`` tries FluidSynth's default, then ``AUDIO_DRIVERS`` in order.
            settings: FluidSynth settings for the driver (e.g. ``{"audio.file.name": "/dev/null"}`` for
                the ``file`` driver, which renders in real time into a file).

        Raises:
            AudioError: no driver could start; the message lists the drivers tried.
        """
        if self._audio_driver is not None:
            return
        for name, value in (settings or {}).items():
            self._synth.setting(name, value)
        fl = self._fl
        if driver:
            candidates = [driver]
        else:
            default = self._synth.get_setting("audio.driver")
            candidates = [d for d in (default, *AUDIO_DRIVERS) if d]
            candidates = list(dict.fromkeys(candidates))
        tried: list[str] = []
        # libjack would otherwise try to launch a jackd of its own on the sound card
        saved = os.environ.get("JACK_NO_START_SERVER")
        os.environ["JACK_NO_START_SERVER"] = "1"
        try:
            for name in candidates:
                with quiet_stderr() as lines:
                    self._synth.setting("audio.driver", name)
                    drv = fl.new_fluid_audio_driver(self._synth.settings, self._synth.synth)
                if drv:
                    self._audio_driver = drv
                    self._synth.audio_driver = drv  # so pyfluidsynth's delete() frees it
                    log.info("FluidSynth audio driver %s started", name)
                    return
                errors = [line.strip() for line in lines if "error" in line.lower()]
                reason = (errors or [line.strip() for line in lines] or ["failed"])[-1]
                tried.append(f"{name} ({reason.removeprefix('fluidsynth: ')})")
        finally:
            if saved is None:
                os.environ.pop("JACK_NO_START_SERVER", None)
            else:
                os.environ["JACK_NO_START_SERVER"] = saved
        raise AudioError(
            "FluidSynth could not start an audio driver; tried: " + "; ".join(tried) + ". "
            "Set synth.audio_driver in config.toml (or --audio-driver) to one that works here, "
            "or disable the internal synth (synth.enabled = false) and play through MIDI out."
        )

    def close(self) -> None:
        """Stop audio and free the synth; idempotent. Waits for a soundfont load that is running."""
        with self._load_lock:
            if self._closed:
                return
            self._closed = True
        if self._reaper is not None:
            self._retired.put(None)
            self._reaper.join(timeout=30)
        with self._load_lock, quiet_stderr():
            self._live = None
            self._synth.delete()  # frees the font in use
            self._audio_driver = None
            if self.loader is not None:
                lib = _lib(self._fl)
                for sfont in self._staged.values():  # loaded, never used: freed with the loader synth
                    lib.fluid_synth_add_sfont(self.loader.synth, sfont)
                self._staged.clear()
                self.loader.delete()
                self.loader = None

    def __enter__(self) -> Synth:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

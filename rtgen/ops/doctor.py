"""Health checks behind ``rtgen doctor``: one :class:`Check` per thing that can stop rtgen from playing.

Each check says OK, WARN or FAIL, what it found, and for anything not OK how to fix
it. Checks never raise: whatever goes wrong is turned into a FAIL with the reason.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from rtgen.config import Config

log = logging.getLogger(__name__)

OK = "OK"
WARN = "WARN"
FAIL = "FAIL"

JACK_START_HINT = "start one: `jackd -d dummy -r 48000 -p 256 &` (or with your sound card: `jackd -d alsa &`)"


@dataclass(frozen=True)
class Check:
    """The outcome of one check.

    Attributes:
        name: what was checked (``"soundfont"``).
        status: ``OK``, ``WARN`` or ``FAIL``.
        detail: what was found.
        fix: how to fix a WARN or FAIL (empty when OK).
    """

    name: str
    status: str
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        """JSON-ready form."""
        return asdict(self)


def _guard(name: str, fn: Callable[[], Iterator[Check]]) -> list[Check]:
    """Run a check generator; an unexpected exception becomes a FAIL instead of a traceback."""
    out: list[Check] = []
    try:
        out.extend(fn())
    except Exception as err:
        log.debug("check %s crashed", name, exc_info=True)
        out.append(Check(name, FAIL, f"check crashed: {type(err).__name__}: {err}", "run with -vv and report it"))
    return out


def jack_server_running() -> tuple[bool, str]:
    """Whether the JACK server (``$JACK_DEFAULT_SERVER`` or ``default``) answers ``jack_lsp``."""
    server = os.environ.get("JACK_DEFAULT_SERVER", "default")
    if shutil.which("jack_lsp") is None:
        return False, f"cannot tell whether JACK server {server!r} runs: jack_lsp not installed"
    env = dict(os.environ, JACK_NO_START_SERVER="1")
    try:
        proc = subprocess.run(["jack_lsp"], env=env, capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        return False, f"jack_lsp failed: {err}"
    if proc.returncode == 0:
        return True, f"JACK server {server!r} running ({len(proc.stdout.split())} ports)"
    return False, f"JACK server {server!r} not running"


def check_midi(cfg: Config) -> Iterator[Check]:
    """Backends compiled and usable, the ports they see, and the configured output port."""
    from rtgen.io import ports as midi_io

    compiled = midi_io.compiled_backends()
    if not compiled:
        yield Check(
            "midi backends", FAIL, "python-rtmidi has no compiled backend", "reinstall: pip install python-rtmidi"
        )
        return
    usable: list[str] = []
    reasons: dict[str, str] = {}
    for backend in compiled:
        ok, reason = midi_io.backend_status(backend)
        if ok:
            usable.append(backend)
        else:
            reasons[backend] = reason
    detail = f"compiled: {', '.join(compiled)}; usable: {', '.join(usable) or 'none'}"
    for backend, reason in reasons.items():
        detail += f"; {backend}: {reason}"
    if usable:
        yield Check("midi backends", OK, detail)
    else:
        status = FAIL if cfg.midi.enabled else WARN
        yield Check(
            "midi backends", status, detail, f"no MIDI backend can start; {JACK_START_HINT}, then --backend jack"
        )

    configured = cfg.midi.backend
    if configured != "auto" and configured not in usable:
        status = FAIL if cfg.midi.enabled else WARN
        alt = f"use --backend {usable[0]} (or midi.backend = {usable[0]!r})" if usable else JACK_START_HINT
        yield Check(
            "midi backend (configured)",
            status,
            f"midi.backend = {configured!r} cannot start: {reasons.get(configured, 'not compiled')}",
            alt,
        )
    elif usable:
        yield Check("midi backend (configured)", OK, f"midi.backend = {configured!r}")

    listings: dict[str, dict[str, list[str]]] = {}
    for backend in usable:
        try:
            listings[backend] = midi_io.list_ports(backend)
        except Exception as err:
            yield Check(f"midi ports ({backend})", WARN, f"cannot list ports: {err}", "see `rtgen ports -v`")
            continue
        ports = listings[backend]
        yield Check(
            f"midi ports ({backend})",
            OK,
            f"inputs: {', '.join(ports['inputs']) or '(none)'}; outputs: {', '.join(ports['outputs']) or '(none)'}",
        )

    if cfg.midi.enabled and cfg.midi.out:
        backend = configured if configured != "auto" else (usable[0] if usable else "auto")
        outputs = listings.get(backend, {}).get("outputs", [])
        needle = cfg.midi.out.lower()
        hits = [p for p in outputs if needle in p.lower()]
        if len(hits) == 1:
            yield Check("midi output port", OK, f"midi.out = {cfg.midi.out!r} matches {hits[0]!r}")
        else:
            what = "matches several ports: " + ", ".join(hits) if hits else "matches no output port"
            yield Check(
                "midi output port",
                FAIL,
                f"midi.out = {cfg.midi.out!r} {what} on {backend} (outputs: {', '.join(outputs) or 'none'})",
                "start the target program first, pick a port from `rtgen ports`, or leave midi.out empty "
                "for a virtual port",
            )
    elif cfg.midi.enabled and usable:
        yield Check(
            "midi output port", OK, f"virtual port {cfg.midi.client_name}:{cfg.midi.virtual_port_name} (created at run)"
        )


def check_input(cfg: Config) -> Iterator[Check]:
    """The player's input: the configured ``input.port`` exists, or a virtual input opens on the backend."""
    from rtgen.errors import PortError
    from rtgen.io import ports as midi_io

    name = "midi input port"
    if not cfg.input.enabled:
        yield Check(name, OK, "input disabled (input.enabled = false)")
        return
    backend = cfg.midi.backend
    off_hint = "or run with --no-input"
    if cfg.input.port:
        try:
            inputs = midi_io.list_ports(backend)["inputs"]
        except PortError as err:
            yield Check(name, FAIL, f"input.port = {cfg.input.port!r}: cannot list input ports: {err}", off_hint)
            return
        needle = cfg.input.port.lower()
        hits = [p for p in inputs if p.lower() == needle] or [p for p in inputs if needle in p.lower()]
        listing = ", ".join(repr(p) for p in inputs) or "(none)"
        if len(hits) == 1:
            yield Check(name, OK, f"input.port = {cfg.input.port!r} matches {hits[0]!r}")
            return
        if hits:
            detail = f"input.port = {cfg.input.port!r} matches several input ports: {', '.join(map(repr, hits))}"
            fix = "be more specific (--midi-in NAME)"
        else:
            detail = f"no MIDI input port matches {cfg.input.port!r}; available input ports: {listing}"
            fix = (
                "plug in the keyboard or start the program that plays into rtgen, pick a port from `rtgen ports` "
                "(--midi-in NAME), or leave input.port empty for a virtual input"
            )
        yield Check(name, FAIL, f"{detail} (backend {backend})", f"{fix}, {off_hint}")
        return
    try:
        probe = midi_io.open_input(
            backend, None, _ignore_message, client_name=f"{cfg.midi.client_name}-doctor", port_name="in"
        )
    except PortError as err:
        yield Check(
            name,
            FAIL,
            f"cannot open a virtual MIDI input on backend {backend}: {err}",
            f"connect to an existing input with --midi-in NAME (input.port; see `rtgen ports`), {off_hint}",
        )
        return
    probe.close()
    yield Check(
        name,
        OK,
        f"virtual input {cfg.midi.client_name}:{cfg.input.virtual_port_name} can be opened on {probe.backend} "
        f"(created at run; connect your keyboard to it)",
    )


def _ignore_message(message: list[int], t_ns: int) -> None:
    """The doctor's probe input drops whatever arrives."""


def check_jack() -> Iterator[Check]:
    """Is a JACK server running (needed for --backend jack and the jack audio driver)."""
    running, detail = jack_server_running()
    if running:
        yield Check("jack server", OK, detail)
    else:
        yield Check(
            "jack server", WARN, detail, f"only needed for --backend jack or audio through JACK; {JACK_START_HINT}"
        )


def check_synth(cfg: Config) -> Iterator[Check]:
    """pyfluidsynth + libfluidsynth, the soundfont, and whether an audio driver starts."""
    level = FAIL if cfg.synth.enabled else WARN
    try:
        from rtgen.io.synth import import_fluidsynth

        fluidsynth = import_fluidsynth()
    except (ImportError, OSError) as err:
        yield Check(
            "fluidsynth",
            level,
            f"pyfluidsynth / libfluidsynth cannot load: {err}",
            "sudo apt-get install fluidsynth libfluidsynth3 (macOS: brew install fluid-synth); "
            "pip install pyfluidsynth; or run with --no-synth",
        )
        return
    yield Check("fluidsynth", OK, f"pyfluidsynth {getattr(fluidsynth, 'api_version', '?')} loaded")

    try:
        from rtgen.io.synth import Synth, find_soundfont
    except ImportError as err:
        yield Check("soundfont", level, f"rtgen.io.synth cannot be imported: {err}", "reinstall rtgen")
        return
    from rtgen.errors import RtgenError

    try:
        soundfont = find_soundfont(cfg.resolve(cfg.synth.soundfont) if cfg.synth.soundfont else None)
    except RtgenError as err:
        yield Check("soundfont", level, str(err), "sudo apt-get install timgm6mb-soundfont, or set synth.soundfont")
        yield Check("audio driver", WARN, "not checked (no soundfont)", "fix the soundfont first")
        return
    size_mb = soundfont.stat().st_size / 1e6
    yield Check("soundfont", OK, f"{soundfont} ({size_mb:.1f} MB)")

    from rtgen.io.ports import captured_stderr

    driver = cfg.synth.audio_driver or None
    synth = None
    try:
        with captured_stderr() as noise:
            synth = Synth(soundfont, sample_rate=cfg.synth.sample_rate, gain=0.0, reverb=False)
            synth.start_audio(driver)
    except RtgenError as err:
        why = f"{err}" + (f" ({noise[-1]})" if noise else "")
        yield Check(
            "audio driver",
            WARN,
            f"no audio device ({driver or 'default driver'}): {why}; rtgen will play to MIDI only",
            'start JACK (`jackd -d alsa &`) and set synth.audio_driver = "jack", or pick a driver that works '
            "here (alsa, pulseaudio, pipewire, coreaudio, dsound) with --audio-driver; --no-synth silences this",
        )
    else:
        yield Check("audio driver", OK, f"{driver or 'default driver'} started")
    finally:
        if synth is not None:
            try:
                synth.close()
            except Exception:
                log.debug("closing the probe synth failed", exc_info=True)


def check_model(cfg: Config) -> Iterator[Check]:
    """The model folder loads: contract version, file hashes, ONNX I/O names."""
    from rtgen.errors import ModelError
    from rtgen.generation.model import Model

    path = cfg.model_path
    try:
        model = Model.load(path)
    except ModelError as err:
        yield Check(
            "model",
            FAIL,
            str(err),
            f"point model.path (or --model) at a folder with chord.onnx, note.onnx and meta.json; "
            f"or train one: rtgen-train all --out {path}",
        )
        return
    meta = model.meta
    version = (meta.get("contract") or {}).get("version")
    hashes = ", ".join(f"{name} {info.get('sha256', '')[:12]}" for name, info in (meta.get("files") or {}).items())
    yield Check("model", OK, f"{model.name} at {path}: contract v{version}, sha256 ok ({hashes})")


def check_osc(cfg: Config) -> Iterator[Check]:
    """The OSC port can be bound (UDP host:port)."""
    if not cfg.osc.enabled:
        yield Check("osc port", OK, "OSC disabled (osc.enabled = false)")
        return
    host, port = cfg.osc.host, cfg.osc.port
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        family, _, _, _, addr = infos[0]
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.bind(addr)
    except OSError as err:
        in_use = err.errno == errno.EADDRINUSE
        yield Check(
            "osc port",
            FAIL,
            f"cannot bind UDP {host}:{port}: {err.strerror or err}"
            + (" (another program, maybe a running rtgen, uses it)" if in_use else ""),
            "choose another port: --osc-port N (or osc.port in config.toml)"
            + ("" if in_use else "; check osc.host is an address of this machine"),
        )
        return
    yield Check("osc port", OK, f"UDP {host}:{port} is free")


def run_checks(cfg: Config) -> list[Check]:
    """Every check, in the order ``rtgen doctor`` prints them."""
    checks: list[Check] = []
    checks += _guard("midi", lambda: check_midi(cfg))
    checks += _guard("midi input port", lambda: check_input(cfg))
    checks += _guard("jack server", check_jack)
    checks += _guard("synth", lambda: check_synth(cfg))
    checks += _guard("model", lambda: check_model(cfg))
    checks += _guard("osc port", lambda: check_osc(cfg))
    return checks


def summary(checks: list[Check]) -> dict[str, Any]:
    """Counts per status and whether anything failed."""
    counts = {s: sum(c.status == s for c in checks) for s in (OK, WARN, FAIL)}
    return {"ok": counts[FAIL] == 0, "counts": counts}


def format_checks(checks: list[Check]) -> str:
    """Human-readable report: one line per check, an indented ``fix:`` line under each WARN/FAIL."""
    lines = []
    for c in checks:
        lines.append(f"{c.status:<4}  {c.name}: {c.detail}")
        if c.fix and c.status != OK:
            lines.append(f"      fix: {c.fix}")
    s = summary(checks)["counts"]
    lines.append(f"{s[OK]} ok, {s[WARN]} warning(s), {s[FAIL]} failure(s)")
    return "\n".join(lines)

"""Configuration: frozen dataclasses loaded from TOML, validated key by key.

Unknown keys and out-of-range values raise :class:`~rtgen.errors.ConfigError`
naming the key (``parts.melody.channel``) and what is allowed. Relative paths
resolve against the directory of the config file. ``config.toml`` at the
repository root documents every key with its default.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rtgen import library
from rtgen.contract import Key, TimeSignature, note_name, parse_note
from rtgen.errors import ConfigError, ModelError
from rtgen.patterns.styles import CHORALE as CHORALE_STYLE

PART_NAMES = ("melody", "chords", "bass", "drums")
BACKENDS = ("auto", "alsa", "jack", "coremidi", "winmm")
MODES = ("autonomous", "accompany", "improvise", "call-and-response", "band", "duet", "chorale")
POLY_MODES = ("duet", "chorale")
"""The modes that play a polyphonic model (``--model`` NAME of one, else the shipped ``chorale``) beside the
engine's melody model."""
CLOCK_SOURCES = ("internal", "midi", "link")


def _one_of(value: str, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; allowed: {', '.join(allowed)}")
    return value


def check_mode(mode: str) -> str:
    """``mode`` if it is one of :data:`MODES`.

    Raises:
        ValueError: another name; the message lists the modes.
    """
    return _one_of(mode, MODES, "mode")


def mode_model_kind(mode: str) -> str:
    """The kind of model ``mode`` plays: ``"poly"`` (:data:`POLY_MODES`) or ``"melody"``."""
    return library.POLY_KIND if check_mode(mode) in POLY_MODES else library.MELODY_KIND


def check_model_for_mode(mode: str, meta: dict[str, Any], name: str) -> None:
    """Refuse a melody model for a mode that plays a polyphonic one (:data:`POLY_MODES`), naming the shipped one.

    A polyphonic model given for another mode is taken: the engine plays the default melody model and the
    polyphonic one waits for a switch to duet or chorale (``rtgen.live.polyload``).

    Args:
        mode: one of :data:`MODES`.
        meta: the model's ``meta.json``.
        name: how the user named it (for the message).

    Raises:
        ModelError: ``mode`` plays a polyphonic model and this one is not.
    """
    kind = library.model_kind(meta)
    if mode_model_kind(mode) != library.POLY_KIND or kind == library.POLY_KIND:
        return
    raise ModelError(
        f"mode {mode} plays a polyphonic model (poly) and {name} is a {kind} model: use --model "
        f"{library.DEFAULT_POLY_MODEL} (the shipped one), or leave --model out"
    )


def needs_poly(mode: str, parts: PartsConfig) -> bool:
    """Whether ``mode`` with ``parts`` plays the polyphonic model: a :data:`POLY_MODES` mode, or the chords part
    in the ``chorale`` style."""
    return mode in POLY_MODES or parts.chords.style == CHORALE_STYLE


SPLIT_AUTO = "auto"


def parse_split(text: str) -> int | None:
    """The split between the hands: ``None`` for ``auto`` (the top line), else the pitch of a note name (``C4``: 60).

    Raises:
        ValueError: neither ``auto`` nor a note name; the message says what is allowed.
    """
    if text.strip().lower() == SPLIT_AUTO:
        return None
    try:
        return parse_note(text)
    except ValueError as err:
        raise ValueError(f"{err}; or {SPLIT_AUTO!r}") from err


def split_name(split: int | None) -> str:
    """``auto``, or the note name of a split point (60: ``C4``); the inverse of :func:`parse_split`."""
    return SPLIT_AUTO if split is None else note_name(split)


def _range(lo: float, hi: float) -> dict[str, Any]:
    return {"range": (lo, hi)}


def _choices(*values: str) -> dict[str, Any]:
    return {"choices": values}


def _metadata(cls: type, name: str) -> Mapping[str, Any]:
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f.metadata
    raise KeyError(f"{cls.__name__} has no field {name!r}")


def field_range(cls: type, name: str) -> tuple[Any, Any]:
    """The ``(lo, hi)`` a config field allows (the config file, OSC, controllers and the web page all use it).

    Args:
        cls: a config section, e.g. :class:`GenerationConfig`.
        name: one of its fields, e.g. ``"tempo"``.

    Raises:
        KeyError: no such field, or it has no range.
    """
    lo, hi = _metadata(cls, name)["range"]
    return lo, hi


def field_choices(cls: type, name: str) -> tuple[str, ...]:
    """The values a config field allows (e.g. ``field_choices(DaemonConfig, "mode")`` is :data:`MODES`).

    Raises:
        KeyError: no such field, or it has no fixed choices.
    """
    return tuple(_metadata(cls, name)["choices"])


@dataclass(frozen=True)
class ModelConfig:
    """Which model to load: ``path`` is a folder (relative to the config file) or a model name
    (``rtgen models list``); ``library`` is the folder of your own models (empty: ``$RTGEN_MODELS`` or
    ``~/.local/share/rtgen/models``; ``$RTGEN_MODELS`` wins over it)."""

    path: Path = Path(library.DEFAULT_MODEL)
    library: str = ""


@dataclass(frozen=True)
class GenerationConfig:
    """Sampling and musical parameters (all steerable over OSC at run time)."""

    seed: int = field(default=0, metadata=_range(0, 2**31 - 1))
    temperature: float = field(default=1.0, metadata=_range(0.05, 3.0))
    top_p: float = field(default=0.95, metadata=_range(0.05, 1.0))
    tempo: float = field(default=110.0, metadata=_range(20.0, 400.0))
    time_signature: str = "4/4"
    key: str = "off"
    density: float = field(default=1.0, metadata=_range(0.0, 4.0))
    pitch_low: int = field(default=55, metadata=_range(48, 96))
    pitch_high: int = field(default=88, metadata=_range(48, 96))
    swing: float = field(default=0.0, metadata=_range(0.0, 0.75))
    humanize_ms: float = field(default=0.0, metadata=_range(0.0, 50.0))

    def parsed_key(self) -> Key | None:
        """The key lock, or ``None`` when ``key = "off"``."""
        return None if self.key.strip().lower() == "off" else Key.parse(self.key)

    def parsed_time_signature(self) -> TimeSignature:
        """The time signature as a :class:`TimeSignature`."""
        return TimeSignature.parse(self.time_signature)


@dataclass(frozen=True)
class PartConfig:
    """One part (melody, chords, bass or drums): where and how it plays.

    ``style`` is the accompaniment style (chords, bass; see :mod:`rtgen.patterns.styles`) or the drum style
    (see :mod:`rtgen.patterns.drums`); ``auto`` plays the meter's default. For drums, ``program`` is the kit.
    """

    channel: int = field(default=1, metadata=_range(1, 16))
    program: int = field(default=0, metadata=_range(0, 127))
    volume: float = field(default=0.8, metadata=_range(0.0, 1.0))
    pan: float = field(default=0.0, metadata=_range(-1.0, 1.0))
    velocity_scale: float = field(default=1.0, metadata=_range(0.0, 2.0))
    octave: int = field(default=0, metadata=_range(-3, 3))
    enabled: bool = True
    style: str = "auto"


@dataclass(frozen=True)
class PartsConfig:
    """The parts; MIDI channels are 1-based here as on hardware (drums on 10, the General MIDI drum channel)."""

    melody: PartConfig = PartConfig(channel=1, program=73, volume=0.85, pan=0.1)
    chords: PartConfig = PartConfig(channel=2, program=24, volume=0.6, pan=-0.2)
    bass: PartConfig = PartConfig(channel=3, program=32, volume=0.75, pan=0.0)
    drums: PartConfig = PartConfig(channel=10, program=0, volume=0.7, pan=0.0)

    def get(self, name: str) -> PartConfig:
        """The part called ``name`` (one of ``PART_NAMES``)."""
        if name not in PART_NAMES:
            raise ConfigError(f"unknown part {name!r}; allowed: {', '.join(PART_NAMES)}")
        return typing.cast(PartConfig, getattr(self, name))


@dataclass(frozen=True)
class SynthConfig:
    """The internal FluidSynth synth."""

    enabled: bool = True
    soundfont: str = ""  # empty: auto-discover
    folders: tuple[str, ...] = ()  # more folders of .sf2 files; the network picks soundfonts by name among them
    audio_driver: str = ""  # empty: FluidSynth's default for the platform
    sample_rate: int = field(default=44100, metadata=_range(8000, 192000))
    gain: float = field(default=0.5, metadata=_range(0.0, 5.0))
    reverb: bool = True
    chorus: bool = False


@dataclass(frozen=True)
class MidiConfig:
    """MIDI output (and, later, input and clock)."""

    backend: str = field(default="auto", metadata=_choices(*BACKENDS))
    out: str = ""  # empty: open a virtual port; else substring of an existing port name
    client_name: str = "rtgen"
    virtual_port_name: str = "out"
    enabled: bool = True


@dataclass(frozen=True)
class InputConfig:
    """MIDI input: the player's keyboard (same backend as the output)."""

    enabled: bool = True
    port: str = ""  # empty: open a virtual input port; else substring of an existing input port name
    virtual_port_name: str = "in"
    channel: int = field(default=0, metadata=_range(0, 16))  # 1..16; 0 = omni (every channel)
    thru: bool = False  # echo the player to MIDI out and the synth, untouched
    settle_ms: float = field(default=40.0, metadata=_range(0.0, 500.0))  # a rolled chord counts as one chord
    split: str = "auto"  # two hands: "auto" (the top line is the melody) or a note such as "C4" (it and above)

    def parsed_split(self) -> int | None:
        """The split point's MIDI pitch (the right hand is it and above), or ``None`` for ``auto``."""
        return parse_split(self.split)


@dataclass(frozen=True)
class ClockConfig:
    """Where time comes from, and whether rtgen leads a DAW with MIDI clock."""

    source: str = field(default="internal", metadata=_choices(*CLOCK_SOURCES))
    send: bool = False  # send 24-ppqn clock, Start, Stop and Song Position Pointer to the MIDI output
    link_start_stop: bool = True  # source = link: follow (and lead) the session's start/stop


@dataclass(frozen=True)
class AccompanyConfig:
    """``accompany`` mode: the player's melody in, chords and bass out."""

    reactive_window_ms: float = field(default=12.0, metadata=_range(0.0, 50.0))
    adapt_window: bool = True  # wait only as long as this player's notes need (learned), within the window
    fit: float = field(default=2.0, metadata=_range(0.0, 10.0))  # log-odds bonus for chords holding the note
    temperature_scale: float = field(default=0.1, metadata=_range(0.05, 2.0))  # chords sample at T x this
    hold: float = field(default=0.0, metadata=_range(0.0, 10.0))  # log-odds bonus for keeping the chord
    weak_hold: float = field(default=1.5, metadata=_range(0.0, 10.0))  # more of it on beats that are not strong
    left_hand: float = field(default=8.0, metadata=_range(0.0, 20.0))  # log-odds bonus for the left hand's chord


@dataclass(frozen=True)
class ImproviseConfig:
    """``improvise`` mode: the player's chords in, a melody out."""

    tone_fit: float = field(default=1.0, metadata=_range(0.0, 10.0))  # log-odds bonus, chord tones on strong beats


@dataclass(frozen=True)
class CallResponseConfig:
    """``call-and-response`` mode: the player calls, the model answers after a silence."""

    silence_beats: float = field(default=1.0, metadata=_range(0.25, 16.0))
    answer_bars: int = field(default=0, metadata=_range(0, 64))  # 0: as long as the call


@dataclass(frozen=True)
class CcConfig:
    """Control Change numbers of the player's controller (0 = not mapped). Values clamp to each range."""

    temperature: int = field(default=1, metadata=_range(0, 119))  # mod wheel
    top_p: int = field(default=71, metadata=_range(0, 119))
    density: int = field(default=74, metadata=_range(0, 119))
    swing: int = field(default=0, metadata=_range(0, 119))
    mode: int = field(default=85, metadata=_range(0, 119))  # 0..127 in four ranges, one per mode
    mode_extra: int = field(default=86, metadata=_range(0, 119))  # band, duet, chorale in three ranges
    panic: int = field(default=102, metadata=_range(0, 119))  # any value >= 64
    # band mode's arranger controls, each on the next bar line when its CC rises through 64 (a button or pedal)
    band_sync: int = field(default=0, metadata=_range(0, 119))
    band_intro: int = field(default=0, metadata=_range(0, 119))
    band_fill: int = field(default=0, metadata=_range(0, 119))
    band_variation_a: int = field(default=0, metadata=_range(0, 119))
    band_variation_b: int = field(default=0, metadata=_range(0, 119))
    band_break: int = field(default=0, metadata=_range(0, 119))
    band_ending: int = field(default=0, metadata=_range(0, 119))


CC_CONTROLS = tuple(f.name for f in dataclasses.fields(CcConfig))
"""The controls a CC can be mapped to (``[cc]``'s keys; MIDI learn arms one of them)."""

LEARNABLE_CCS = (1, 119)
"""The CC numbers MIDI learn takes: ``[cc]``'s range without 0 (0 = not mapped; 120..127 are channel mode messages)."""


def check_cc_control(name: str) -> str:
    """``name`` if it is one of :data:`CC_CONTROLS`.

    Raises:
        ValueError: another name; the message lists the controls.
    """
    return _one_of(name, CC_CONTROLS, "control")


@dataclass(frozen=True)
class FormConfig:
    """Song form: sections with memory (``rtgen render --form``, ``/rtgen/section`` live)."""

    cue: str = field(default="phrase", metadata=_choices("phrase", "bar"))  # where a cued section starts
    vary: float = field(default=0.25, metadata=_range(0.0, 1.0))  # share of a return's bars played anew


@dataclass(frozen=True)
class OscConfig:
    """OSC control server."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = field(default=9000, metadata=_range(0, 65535))
    allow: tuple[str, ...] = ()  # addresses or networks that may steer when bound beyond loopback; loopback always

    def allowed_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """:attr:`allow` parsed (validated when the config is built)."""
        return tuple(ipaddress.ip_network(a, strict=False) for a in self.allow)


@dataclass(frozen=True)
class WebConfig:
    """The web control surface (``rtgen run --web``): a page over HTTP and a WebSocket."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = field(default=9080, metadata=_range(0, 65535))  # 8080 is Open Stage Control's


@dataclass(frozen=True)
class RecordConfig:
    """Recordings started over OSC or the web page: a name inside :attr:`folder` (the network chooses no path)."""

    folder: str = ""  # empty: the music folder's rtgen/ ($XDG_MUSIC_DIR/rtgen, else ~/Music/rtgen)


@dataclass(frozen=True)
class DaemonConfig:
    """How ``rtgen run`` behaves."""

    mode: str = field(default="autonomous", metadata=_choices(*MODES))
    record: str = ""  # empty: do not record
    duration: float = field(default=0.0, metadata=_range(0.0, 1e9))  # 0: until stopped
    quiet: bool = False
    log_json: bool = False
    realtime_priority: int = field(default=10, metadata=_range(0, 99))  # SCHED_FIFO where allowed; 0 = off
    late_drop_ms: float = field(default=20.0, metadata=_range(0.0, 1000.0))  # a later note-on is not played; 0 = never


@dataclass(frozen=True)
class Config:
    """The whole configuration; ``base_dir`` is where relative paths resolve."""

    model: ModelConfig = ModelConfig()
    generation: GenerationConfig = GenerationConfig()
    parts: PartsConfig = PartsConfig()
    synth: SynthConfig = SynthConfig()
    midi: MidiConfig = MidiConfig()
    osc: OscConfig = OscConfig()
    web: WebConfig = WebConfig()
    record: RecordConfig = RecordConfig()
    daemon: DaemonConfig = DaemonConfig()
    input: InputConfig = InputConfig()
    clock: ClockConfig = ClockConfig()
    accompany: AccompanyConfig = AccompanyConfig()
    improvise: ImproviseConfig = ImproviseConfig()
    call_response: CallResponseConfig = CallResponseConfig()
    cc: CcConfig = CcConfig()
    form: FormConfig = FormConfig()
    base_dir: Path = Path(".")

    def resolve(self, path: str | Path) -> Path:
        """Resolve a configured path against the config file's directory."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self.base_dir / p).resolve()

    @property
    def recordings_dir(self) -> Path:
        """Where recordings started over the network go: ``[record] folder``, else the music folder's ``rtgen/``."""
        if self.record.folder:
            return self.resolve(self.record.folder)
        return library.xdg_dir("XDG_MUSIC_DIR", "Music") / "rtgen"

    @property
    def models_dir(self) -> Path:
        """The folder of the user's models (see :func:`rtgen.library.user_models_dir`)."""
        return library.user_models_dir(self.resolve(self.model.library) if self.model.library else None)

    @property
    def model_path(self) -> Path:
        """Absolute path of the model folder ``model.path`` names (a path, or a model name)."""
        return self.model_folder(self.model.path)

    def model_folder(self, spec: str | Path, *, strict: bool = False) -> Path:
        """The folder of the model ``spec`` (a path relative to the config file, or a model name).

        Raises:
            ModelError: (``strict``) no such folder and no model of that name; the message lists the models.
        """
        return library.resolve_model(spec, base=self.base_dir, user_dir=self.models_dir, strict=strict)

    def with_model(self, spec: str | Path, *, mode: str | None = None) -> Config:
        """A copy playing the model ``spec`` given on the command line: an existing path (relative to the
        current folder) wins, else a model name.

        Args:
            spec: the ``--model`` value.
            mode: the mode it is for: a model of another kind than the mode plays is refused.

        Raises:
            ModelError: no such folder and no model of that name (the message lists the models); a model that
                cannot serve ``mode`` (the message names the one that can).
        """
        path = library.resolve_model(spec, base=Path.cwd(), user_dir=self.models_dir)
        meta = library.read_entry(path, "user").meta
        if mode is not None:
            check_model_for_mode(mode, meta, str(spec))
        return self.replace("model", path=path)

    def replace(self, section: str, **changes: Any) -> Config:
        """A copy with ``changes`` applied to ``section`` (validated like the file)."""
        current = getattr(self, section)
        merged = {f.name: getattr(current, f.name) for f in dataclasses.fields(current)}
        merged.update(changes)
        new = _build(type(current), merged, section)
        return dataclasses.replace(self, **{section: new})


def with_style(cfg: Config, part: str, style: str) -> Config:
    """A copy of ``cfg`` with ``part`` playing ``style`` (validated: a bad name lists the allowed ones)."""
    table = dataclasses.asdict(cfg.parts.get(part))
    table["style"] = style
    return cfg.replace("parts", **{part: table})


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    if tp == tuple[str, ...]:
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key} must be a list of strings, got {value!r}")
        return tuple(value)
    if tp is Path:
        if not isinstance(value, str | Path):
            raise ConfigError(f"{key} must be a path string, got {value!r}")
        return Path(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, typing.cast(type, tp)):
            return value  # an already-validated default (e.g. parts.melody when only [parts.chords] is given)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} must be a table, got {value!r}")
        return _build(typing.cast(type, tp), value, key)
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")  # pragma: no cover


def _build(cls: type, table: Mapping[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "base_dir"}
    unknown = sorted(set(table) - set(fields))
    if unknown:
        where = f"[{prefix}]" if prefix else "the top level"
        raise ConfigError(
            f"unknown config key {'.'.join(filter(None, [prefix, unknown[0]]))!r} in {where}; "
            f"allowed: {', '.join(fields)}"
        )
    values: dict[str, Any] = {}
    for name, value in table.items():
        key = f"{prefix}.{name}" if prefix else name
        tp = hints[name]
        if isinstance(tp, types.UnionType):  # pragma: no cover - not used yet
            tp = typing.get_args(tp)[0]
        if dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
            default = fields[name].default
            base = {f.name: getattr(default, f.name) for f in dataclasses.fields(default)}  # type: ignore[arg-type]
            base.update(value)
            value = base
        v = _convert(value, tp, key)
        meta = fields[name].metadata
        if "range" in meta:
            lo, hi = meta["range"]
            if not lo <= v <= hi:
                raise ConfigError(f"{key} must be in range {lo}..{hi}, got {v!r}")
        if "choices" in meta and v not in meta["choices"]:
            raise ConfigError(f"{key} must be one of {', '.join(meta['choices'])}, got {v!r}")
        values[name] = v
    obj = cls(**values)
    _check(obj, prefix)
    return obj


def _check(obj: Any, prefix: str) -> None:
    """Cross-field and parsed-value checks."""
    if isinstance(obj, PartConfig):
        from rtgen.patterns.styles import UnknownStyleError, check_style

        try:
            check_style(prefix.rpartition(".")[2], obj.style)
        except UnknownStyleError as err:
            raise ConfigError(f"{prefix}.style must be one of {', '.join(err.allowed)}, got {obj.style!r}") from err
    if isinstance(obj, OscConfig):
        for entry in obj.allow:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError as err:
                raise ConfigError(
                    f"{prefix}.allow: {entry!r} is not an address or network; allowed: addresses such as "
                    f"192.168.1.20 or networks such as 192.168.1.0/24 (IPv4 or IPv6)"
                ) from err
    if isinstance(obj, GenerationConfig):
        if obj.pitch_low > obj.pitch_high:
            raise ConfigError(
                f"{prefix}.pitch_low ({obj.pitch_low}) must not be above {prefix}.pitch_high ({obj.pitch_high})"
            )
        try:
            obj.parsed_key()
        except ValueError as err:
            raise ConfigError(f"{prefix}.key: {err}; or 'off'") from err
        try:
            obj.parsed_time_signature()
        except ValueError as err:
            raise ConfigError(f"{prefix}.time_signature: {err}") from err
    if isinstance(obj, InputConfig):
        try:
            obj.parsed_split()
        except ValueError as err:
            raise ConfigError(f"{prefix}.split must be {SPLIT_AUTO!r} or a note such as 'C4': {err}") from err


def config_from_dict(data: Mapping[str, Any], base_dir: Path = Path(".")) -> Config:
    """Build a validated :class:`Config` from parsed TOML data."""
    cfg = _build(Config, data, "")
    return dataclasses.replace(cfg, base_dir=base_dir.resolve())


def load_config(path: str | Path | None = None) -> Config:
    """Load ``path`` (or the defaults when ``None``).

    Raises:
        ConfigError: the file is missing, not TOML, or has a bad key or value.
    """
    if path is None:
        return config_from_dict({}, Path.cwd())
    p = Path(path)
    try:
        with p.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError as err:
        raise ConfigError(f"config file not found: {p}") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{p} is not valid TOML: {err}") from err
    try:
        return config_from_dict(data, p.parent)
    except ConfigError as err:
        raise ConfigError(f"{p}: {err}") from err


PACKAGED_CONFIG = Path(__file__).resolve().parent / "data" / "config.toml"
"""The default configuration as package data (in a checkout, a symlink to the repository's ``config.toml``)."""


CONFIG_HELP = "config file (default: ./config.toml, else ~/.config/rtgen/config.toml, else the packaged default)"
"""The ``--config`` option's help, one wording for every command."""


def user_config_path() -> Path:
    """``$XDG_CONFIG_HOME/rtgen/config.toml`` (``~/.config/rtgen/config.toml``), whether it exists or not."""
    return library.xdg_dir("XDG_CONFIG_HOME", ".config") / "rtgen" / "config.toml"


def default_config_path() -> Path | None:
    """The config file to use without ``--config``: the first that exists of ``./config.toml``, the user's
    (:func:`user_config_path`) and the packaged default (:data:`PACKAGED_CONFIG`)."""
    for candidate in (Path.cwd() / "config.toml", user_config_path(), PACKAGED_CONFIG):
        if candidate.is_file():
            return candidate.resolve()
    return None


def with_user_cc(cfg: Config, user_path: Path | None = None) -> Config:
    """``cfg`` with the ``[cc]`` table of the user config (:func:`user_config_path`) applied over its own.

    MIDI learn saves the player's controller mapping there (:func:`write_cc_table`), so it follows the player
    whichever config file ``rtgen run`` was given. Only ``[cc]`` is read; the user config's other tables
    matter only when it is the config file itself.

    Raises:
        ConfigError: the user config is not TOML, or its ``[cc]`` has a bad key or value (the file is named).
    """
    path = user_path if user_path is not None else user_config_path()
    try:
        with path.open("rb") as f:
            table = tomllib.load(f).get("cc")
    except FileNotFoundError:
        return cfg
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"{path}: cannot read the learned [cc] table: {err}") from err
    if not table:
        return cfg
    try:
        return cfg.replace("cc", **table)
    except (ConfigError, TypeError) as err:
        raise ConfigError(f"{path}: {err}") from err


def write_cc_table(path: Path, cc: CcConfig) -> None:
    """Write ``cc`` as the ``[cc]`` table of the TOML file ``path``, creating the file (and its folder) if missing.

    Only ``[cc]`` changes: every other table, every comment and the keys' own comments stay as they were
    (``tomlkit``). Every control is written, an unmapped one as 0 (a missing key would mean its default).
    The new file replaces the old atomically (a temporary file beside it, then ``os.replace``), so a reader
    or a crash never sees half a file.

    Raises:
        ConfigError: the existing file is not TOML or its ``cc`` is not a table.
        OSError: the file cannot be written.
    """
    import os
    import tempfile

    import tomlkit
    from tomlkit.exceptions import TOMLKitError
    from tomlkit.items import InlineTable, Table

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = ""
    try:
        doc = tomlkit.parse(text)
    except TOMLKitError as err:
        raise ConfigError(f"{path} is not valid TOML, the learned [cc] table is not saved: {err}") from err
    table = doc.get("cc")
    if table is None:
        table = tomlkit.table()
        if not text:
            doc.add(tomlkit.comment("rtgen: the player's controller mapping, saved by MIDI learn (/rtgen/learn)"))
        doc.add("cc", table)
    elif not isinstance(table, Table | InlineTable):
        raise ConfigError(f"{path}: cc must be a table, got {table!r}; the learned mapping is not saved")
    for name in CC_CONTROLS:
        value = getattr(cc, name)
        if table.get(name) != value:
            table[name] = value  # an existing key keeps its comment
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(tomlkit.dumps(doc))
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise

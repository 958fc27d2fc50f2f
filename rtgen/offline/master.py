"""A finished render: layers under the mix, a mastering chain and a loudness report.

After FluidSynth has played every part (:func:`rtgen.offline.render.midi_to_audio`), a render
can get *layers* -- a WAV file or a built-in texture, looped under the whole mix at a
gain -- and a *master* chain: a gentle compressor, an optional "lofi" colour (low-pass
and a light bit-crush), loudness brought to a target and a limiter with a ceiling below
0 dBFS. The DSP is Spotify's pedalboard (JUCE's processors); loudness is ITU-R BS.1770
integrated loudness from pyloudnorm.

The built-in textures need no files: ``vinyl`` (filtered hiss with sparse crackle) and
``rain`` (band-limited noise that swells slowly, with random drops), shaped from seeded
noise, so ``--layer vinyl:0.5`` works out of the box and gives the same audio every time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from rtgen.errors import RtgenError

Audio = npt.NDArray[np.float32]
"""Float frames, shape ``(frames, 2)``, full scale = 1.0."""

TEXTURES = ("vinyl", "rain")
TARGET_LUFS = -16.0  # streaming-platform loudness: a render sits beside other music without a jump
CEILING_DB = -1.0  # the limiter's ceiling (room for inter-sample peaks and lossy encoders)
MAX_LAYER_GAIN = 4.0


@dataclass(frozen=True)
class Layer:
    """One layer under the mix: a built-in texture name or a WAV path, and a linear gain."""

    source: str
    gain: float = 1.0

    @property
    def builtin(self) -> bool:
        """The source is a built-in texture (no file)."""
        return self.source in TEXTURES


def parse_layer(text: str) -> Layer:
    """Parse ``FILE.wav[:GAIN]`` or ``vinyl[:GAIN]`` / ``rain[:GAIN]`` (gain linear, 0..4, default 1).

    Raises:
        ValueError: the gain is not a number in range, or a file source does not exist.
    """
    source, sep, gain_text = text.rpartition(":")
    if not sep or not _is_number(gain_text):  # no gain, or a path with a colon in it
        source, gain_text = text, ""
    gain = float(gain_text) if gain_text else 1.0
    if not 0.0 <= gain <= MAX_LAYER_GAIN or not math.isfinite(gain):
        raise ValueError(f"layer {text!r}: gain must be in range 0..{MAX_LAYER_GAIN:g}, got {gain_text}")
    if not source:
        raise ValueError(f"layer {text!r} names no source; use FILE.wav[:GAIN] or one of {', '.join(TEXTURES)}")
    if source not in TEXTURES and not Path(source).expanduser().is_file():
        raise ValueError(f"layer {source!r} is neither a file nor a built-in texture ({', '.join(TEXTURES)})")
    return Layer(source, gain)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# --- textures ---------------------------------------------------------------------
def _peak_normalise(x: Audio, dbfs: float) -> Audio:
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    return x if peak == 0.0 else (x * (10 ** (dbfs / 20) / peak)).astype(np.float32)


def _rms_normalise(x: Audio, dbfs: float) -> Audio:
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0
    return x if rms == 0.0 else (x * (10 ** (dbfs / 20) / rms)).astype(np.float32)


def _filter(x: Audio, rate: int, *, high: float | None = None, low: float | None = None) -> Audio:
    from pedalboard import HighpassFilter, LowpassFilter, Pedalboard, Plugin

    chain: list[Plugin] = []
    if high is not None:
        chain.append(HighpassFilter(cutoff_frequency_hz=high))
    if low is not None:
        chain.append(LowpassFilter(cutoff_frequency_hz=low))
    out = Pedalboard(chain)(np.ascontiguousarray(x.T), rate)
    return np.ascontiguousarray(out.T, dtype=np.float32)


def _impulses(rng: np.random.Generator, frames: int, rate: int, per_second: float, decay_ms: float) -> Audio:
    """Sparse clicks: Poisson-timed impulses of random size and sign, each a short decaying noise burst."""
    out = np.zeros((frames, 2), dtype=np.float32)
    count = rng.poisson(per_second * frames / rate)
    if count == 0 or frames == 0:
        return out
    at = rng.integers(0, frames, size=count)
    size = rng.exponential(1.0, size=count) * rng.choice((-1.0, 1.0), size=count)
    side = rng.uniform(0.3, 1.0, size=(count, 2))  # a click sits somewhere in the stereo field
    np.add.at(out, at, (size[:, None] * side).astype(np.float32))
    length = max(2, int(rate * decay_ms / 1000))
    kernel = np.exp(-np.arange(length) / (length / 5)) * rng.uniform(-1, 1, size=length)
    for ch in range(2):
        out[:, ch] = np.convolve(out[:, ch], kernel)[:frames]
    return out


def texture(name: str, seconds: float, sample_rate: int = 44100, seed: int = 0) -> Audio:
    """A built-in texture, ``seconds`` long (the same seed gives the same audio).

    Args:
        name: ``"vinyl"`` (hiss at -44 dBFS RMS, clicks peaking at -14 dBFS) or ``"rain"`` (noise at
            -32 dBFS RMS, drops peaking at -16 dBFS).
        seconds: length.
        sample_rate: frames per second.
        seed: the noise seed.

    Raises:
        ValueError: an unknown name (the message lists the textures).
    """
    if name not in TEXTURES:
        raise ValueError(f"unknown texture {name!r}; built in: {', '.join(TEXTURES)}")
    frames = max(0, round(seconds * sample_rate))
    rng = np.random.default_rng([seed, TEXTURES.index(name)])
    noise = rng.standard_normal((frames, 2)).astype(np.float32)
    if name == "vinyl":
        hiss = _rms_normalise(_filter(noise, sample_rate, high=2000.0, low=9000.0), -44.0)
        clicks = _impulses(rng, frames, sample_rate, 12.0, 1.5)
        crackle = _peak_normalise(_filter(clicks, sample_rate, high=800.0), -14.0)
        out = hiss + crackle
    else:
        body = _filter(noise, sample_rate, high=250.0, low=4500.0)
        # the shower swells and eases: a slow random envelope (a few seconds), never silent
        steps = max(2, int(seconds / 1.5) + 2)
        env = np.interp(np.arange(frames), np.linspace(0, frames, steps), rng.uniform(0.55, 1.0, size=steps))
        body = body * env[:, None].astype(np.float32)
        drops = _filter(_impulses(rng, frames, sample_rate, 35.0, 6.0), sample_rate, high=1500.0, low=7000.0)
        out = _rms_normalise(body, -32.0) + _peak_normalise(drops, -16.0)
    return np.ascontiguousarray(out, dtype=np.float32)


def load_layer(layer: Layer, frames: int, sample_rate: int, seed: int = 0) -> Audio:
    """The layer's audio, looped (or cut) to exactly ``frames`` at ``sample_rate``, times its gain.

    Raises:
        RtgenError: the file cannot be read as audio (the cause is chained).
    """
    if layer.builtin:
        loop_s = min(frames / sample_rate, 30.0)  # textures loop every 30 s at most: cheap, and it does not show
        audio = texture(layer.source, loop_s, sample_rate, seed)
    else:
        from pedalboard.io import AudioFile

        path = Path(layer.source).expanduser()
        try:
            with AudioFile(str(path)).resampled_to(sample_rate) as f:
                data = f.read(f.frames)
        except (OSError, ValueError, RuntimeError) as err:
            raise RtgenError(f"cannot read the layer {path}: {err}") from err
        if data.shape[0] == 1:
            data = np.repeat(data, 2, axis=0)
        audio = np.ascontiguousarray(data[:2].T, dtype=np.float32)
    if frames == 0:
        return np.zeros((0, 2), dtype=np.float32)
    if audio.shape[0] == 0:
        raise RtgenError(f"the layer {layer.source} has no audio")
    reps = -(-frames // audio.shape[0])
    return (np.tile(audio, (reps, 1))[:frames] * layer.gain).astype(np.float32)


# --- mix and master ---------------------------------------------------------------
def to_float(frames: npt.NDArray[np.int16]) -> Audio:
    """int16 frames -> float32 in -1..1."""
    return (frames.astype(np.float32) / 32768.0).astype(np.float32)


def to_int16(audio: Audio) -> npt.NDArray[np.int16]:
    """float32 -> int16 frames, the inverse of :func:`to_float` (beyond full scale clips; :func:`master` never)."""
    return np.clip(np.round(audio * 32768.0), -32768, 32767).astype(np.int16)


def mix_layers(music: Audio, layers: list[Layer], sample_rate: int, seed: int = 0) -> Audio:
    """``music`` with every layer added under it (looped to its length)."""
    out = music.astype(np.float32, copy=True)
    for i, layer in enumerate(layers):
        out += load_layer(layer, out.shape[0], sample_rate, seed + i)
    return out


def peak_dbfs(audio: Audio) -> float:
    """Sample peak in dBFS (-inf for silence)."""
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    return 20 * math.log10(peak) if peak > 0 else -math.inf


def loudness_lufs(audio: Audio, sample_rate: int) -> float:
    """Integrated loudness (ITU-R BS.1770-4, pyloudnorm) in LUFS; -inf for silence or under 0.4 s."""
    import pyloudnorm

    if audio.shape[0] < int(0.4 * sample_rate) + 1:
        return -math.inf
    return float(pyloudnorm.Meter(sample_rate).integrated_loudness(audio.astype(np.float64)))


@dataclass(frozen=True)
class MasterReport:
    """What the chain did: levels before and after (dBFS sample peak, LUFS integrated)."""

    peak_in_dbfs: float
    lufs_in: float
    peak_dbfs: float
    lufs: float
    mastered: bool
    lofi: bool

    def summary(self) -> str:
        """One line for the terminal."""
        what = "mastered" + (" (lofi)" if self.lofi else "") if self.mastered else "mix"
        return f"{what}: peak {self.peak_dbfs:.1f} dBFS, {self.lufs:.1f} LUFS"


def master(audio: Audio, sample_rate: int, *, lofi: bool = False, target_lufs: float = TARGET_LUFS,
           ceiling_db: float = CEILING_DB) -> tuple[Audio, MasterReport]:  # fmt: skip
    """The master chain: low cut, gentle compression, optional lofi colour, loudness to target, limiter.

    Args:
        audio: the mix, float ``(frames, 2)``.
        sample_rate: its rate.
        lofi: add the lofi colour (low-pass at 4.5 kHz and a light 12-bit crush) before the limiter.
        target_lufs: integrated loudness to bring the mix to (before the limiter).
        ceiling_db: the sample peak never goes above this (dBFS, below 0).

    Returns:
        The mastered audio and its :class:`MasterReport`.
    """
    from pedalboard import Bitcrush, Compressor, HighpassFilter, Limiter, LowpassFilter, Pedalboard, Plugin

    peak_in, lufs_in = peak_dbfs(audio), loudness_lufs(audio, sample_rate)
    chain: list[Plugin] = [
        HighpassFilter(cutoff_frequency_hz=30.0),
        Compressor(threshold_db=-18.0, ratio=2.0, attack_ms=15.0, release_ms=200.0),
    ]
    if lofi:
        chain += [LowpassFilter(cutoff_frequency_hz=4500.0), Bitcrush(bit_depth=12)]
    y = Pedalboard(chain)(np.ascontiguousarray(audio.T, dtype=np.float32), sample_rate)
    # JUCE's limiter adds make-up gain of its own: find the drive that lands on the target after it
    limiter = Pedalboard([Limiter(threshold_db=ceiling_db, release_ms=100.0)])
    lufs = loudness_lufs(y.T, sample_rate)
    gain_db = target_lufs - lufs if math.isfinite(lufs) else 0.0
    out = np.ascontiguousarray(y.T, dtype=np.float32)
    for _ in range(3):
        limiter.reset()
        z = limiter((y * np.float32(10 ** (gain_db / 20))).astype(np.float32), sample_rate)
        out = _ceiling(np.ascontiguousarray(z.T, dtype=np.float32), ceiling_db)
        got = loudness_lufs(out, sample_rate)
        if not math.isfinite(got) or abs(got - target_lufs) < 0.3:
            break
        gain_db += target_lufs - got
    report = MasterReport(peak_in, lufs_in, peak_dbfs(out), loudness_lufs(out, sample_rate), True, lofi)
    return out, report


def _ceiling(audio: Audio, ceiling_db: float) -> Audio:
    """Scale down whatever a limiter let past the ceiling (its look-ahead is short; a peak may slip through)."""
    ceiling = 10 ** (ceiling_db / 20)
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    return audio if peak <= ceiling else (audio * np.float32(ceiling / peak)).astype(np.float32)


def finish(
    frames: npt.NDArray[np.int16],
    sample_rate: int,
    *,
    layers: list[Layer] | None = None,
    do_master: bool = False,
    lofi: bool = False,
    seed: int = 0,
) -> tuple[npt.NDArray[np.int16], MasterReport]:
    """The post stage of ``rtgen render --wav``: layers under the synth's mix, then the master chain.

    Without the master chain the levels are still reported, and a mix that layers pushed past full
    scale is scaled under the ceiling (never clipped).

    Args:
        frames: the synth's int16 stereo frames.
        sample_rate: their rate.
        layers: layers to loop under the mix.
        do_master: run :func:`master`.
        lofi: the master's lofi colour (implies ``do_master``).
        seed: seeds the built-in textures.
    """
    if not layers and not (do_master or lofi):  # the synth's frames as they are, levels reported
        audio = to_float(frames)
        peak, lufs = peak_dbfs(audio), loudness_lufs(audio, sample_rate)
        return frames, MasterReport(peak, lufs, peak, lufs, False, False)
    audio = to_float(frames)
    if layers:
        audio = mix_layers(audio, layers, sample_rate, seed)
    if do_master or lofi:
        out, report = master(audio, sample_rate, lofi=lofi)
    else:
        peak_in, lufs_in = peak_dbfs(audio), loudness_lufs(audio, sample_rate)
        out = _ceiling(audio, CEILING_DB)
        report = MasterReport(peak_in, lufs_in, peak_dbfs(out), loudness_lufs(out, sample_rate), False, False)
    return to_int16(out), report

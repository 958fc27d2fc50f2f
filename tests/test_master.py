"""A finished render: layers, built-in textures and the master chain, on real FluidSynth renders."""

from __future__ import annotations

import math
import wave
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from conftest import require

from rtgen.cli import main
from rtgen.errors import SoundfontError
from rtgen.io import synth as synth_mod
from rtgen.offline.master import (
    CEILING_DB,
    TARGET_LUFS,
    Layer,
    finish,
    load_layer,
    loudness_lufs,
    master,
    parse_layer,
    peak_dbfs,
    texture,
    to_float,
)
from rtgen.offline.render import write_wav

RATE = 44100
TONE_HZ = 15_000.0  # far above every part's fundamentals: a line of its own in the spectrum


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model_factory import make_random_model

    return make_random_model(tmp_path_factory.mktemp("models") / "random", hidden=32, layers=1, seed=0)


@pytest.fixture
def soundfont() -> None:
    try:
        synth_mod.find_soundfont()
    except SoundfontError as err:
        require(False, f"a soundfont ({err})")


def read_wav(path: Path) -> npt.NDArray[np.int16]:
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (2, 2, RATE)
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)


def band_level(frames: npt.NDArray[np.int16], hz: float, width: float = 30.0) -> float:
    """Spectral magnitude (left channel, Hann window) summed within ``width`` Hz of ``hz``."""
    x = frames[:, 0].astype(np.float64) * np.hanning(len(frames))
    spectrum = np.abs(np.fft.rfft(x))
    freqs = np.fft.rfftfreq(len(frames), 1 / RATE)
    return float(spectrum[np.abs(freqs - hz) <= width].sum())


def tone_wav(path: Path, seconds: float = 0.5, amplitude: float = 0.5) -> Path:
    t = np.arange(int(seconds * RATE)) / RATE
    tone = amplitude * np.sin(2 * np.pi * TONE_HZ * t)
    write_wav(path, np.round(np.stack([tone, tone], axis=1) * 32767).astype(np.int16), RATE)
    return path


# --- layers and textures -----------------------------------------------------------------------------------------
def test_parse_layer_reads_a_source_and_a_gain(tmp_path: Path) -> None:
    wav = tone_wav(tmp_path / "t.wav")
    assert parse_layer("vinyl") == Layer("vinyl", 1.0)
    assert parse_layer("rain:0.25") == Layer("rain", 0.25)
    assert parse_layer(f"{wav}:2") == Layer(str(wav), 2.0)
    assert parse_layer(str(wav)) == Layer(str(wav), 1.0)
    with pytest.raises(ValueError, match=r"0\.\.4"):
        parse_layer("vinyl:9")
    with pytest.raises(ValueError, match="neither a file nor a built-in texture"):
        parse_layer("thunder:0.5")


@pytest.mark.parametrize("name", ["vinyl", "rain"])
def test_textures_are_seeded_audible_and_well_below_full_scale(name: str) -> None:
    a, b, c = texture(name, 3.0, RATE, seed=1), texture(name, 3.0, RATE, seed=1), texture(name, 3.0, RATE, seed=2)
    assert a.shape == (3 * RATE, 2) and a.dtype == np.float32
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert -12.0 > peak_dbfs(a) > -30.0
    assert -20.0 > loudness_lufs(a, RATE) > -50.0
    assert not np.array_equal(a[:, 0], a[:, 1])  # stereo, not a doubled mono
    with pytest.raises(ValueError, match="vinyl, rain"):
        texture("hum", 1.0)


def test_a_layer_file_is_looped_to_the_mix_and_scaled(tmp_path: Path) -> None:
    wav = tone_wav(tmp_path / "t.wav", seconds=0.3, amplitude=0.5)
    looped = load_layer(Layer(str(wav), 0.5), 2 * RATE + 7, RATE)
    assert looped.shape == (2 * RATE + 7, 2)
    assert abs(peak_dbfs(looped) - 20 * math.log10(0.25)) < 0.1  # 0.5 full scale times a gain of 0.5
    once = looped[: int(0.3 * RATE)]
    assert np.allclose(looped[int(0.3 * RATE) : int(0.6 * RATE)], once, atol=1e-4)  # the file again, from the top


# --- the master chain --------------------------------------------------------------------------------------------
def test_master_lands_on_the_target_loudness_under_the_ceiling() -> None:
    rng = np.random.default_rng(0)
    t = np.arange(6 * RATE) / RATE
    # a quiet mix with loud transients, as a synth render with accents is
    mix = 0.05 * np.sin(2 * np.pi * 220 * t) + 0.02 * rng.standard_normal(t.size)
    mix[:: RATE // 2] += 0.9
    audio = np.stack([mix, mix], axis=1).astype(np.float32)
    for lofi in (False, True):
        out, rep = master(audio, RATE, lofi=lofi)
        assert out.shape == audio.shape
        assert rep.peak_dbfs <= CEILING_DB + 0.01 and float(np.max(np.abs(out))) < 1.0
        assert abs(rep.lufs - TARGET_LUFS) < 0.5, rep
        assert rep.lufs_in < TARGET_LUFS - 3  # it was brought up, not left alone
        assert rep.lofi is lofi and rep.mastered


def test_finish_without_master_reports_levels_and_never_clips_a_layered_mix(tmp_path: Path) -> None:
    wav = tone_wav(tmp_path / "t.wav", amplitude=0.9)
    loud = np.full((RATE, 2), 30000, dtype=np.int16)
    out, rep = finish(loud, RATE, layers=[Layer(str(wav), 1.0)])
    assert not rep.mastered and rep.peak_in_dbfs > 0.0  # the sum went past full scale ...
    assert rep.peak_dbfs <= CEILING_DB + 0.01 and int(np.max(np.abs(out.astype(np.int32)))) < 32767  # ... not the file
    same, rep2 = finish(loud, RATE)
    assert np.array_equal(same, loud) and math.isfinite(rep2.lufs)


# --- rtgen render --wav: FluidSynth, layers, master ----------------------------------------------------------------
def render(model_dir: Path, out: Path, *extra: str) -> int:
    return main(["render", "--model", str(model_dir), "--out", str(out), "--bars", "4", "--tempo", "120", *extra])


def test_mastered_wav_is_not_silent_does_not_clip_and_has_the_layer_in_it(
    model_dir: Path, tmp_path: Path, soundfont: None, capsys: pytest.CaptureFixture[str]
) -> None:
    tone = tone_wav(tmp_path / "tone.wav", seconds=0.25, amplitude=0.5)
    plain, layered = tmp_path / "plain.wav", tmp_path / "layered.wav"
    assert render(model_dir, tmp_path / "a.mid", "--wav", str(plain), "--master") == 0
    assert render(model_dir, tmp_path / "b.mid", "--wav", str(layered), "--master", "--layer", f"{tone}:0.2") == 0
    summary = capsys.readouterr().out
    assert "mastered: peak" in summary and "LUFS" in summary
    a, b = read_wav(plain), read_wav(layered)
    assert a.shape == b.shape and len(a) / RATE == pytest.approx(4 * 2.0 + 1.5, abs=0.3)
    for frames in (a, b):
        level = float(np.sqrt(np.mean(frames.astype(np.float64) ** 2)))
        assert level > 300  # not silent
        peak = int(np.max(np.abs(frames.astype(np.int32))))
        assert peak <= round(32768 * 10 ** (CEILING_DB / 20)) + 1  # under the -1 dBFS ceiling: nothing clips
        assert abs(loudness_lufs(to_float(frames), RATE) - TARGET_LUFS) < 1.0
    # the layer's 15 kHz line is in the layered render and not in the plain one
    assert band_level(b, TONE_HZ) > 20 * band_level(a, TONE_HZ)
    assert band_level(b, TONE_HZ) > 5 * band_level(b, TONE_HZ - 500.0)


def test_builtin_texture_layers_work_out_of_the_box(model_dir: Path, tmp_path: Path, soundfont: None) -> None:
    plain, dusty = tmp_path / "plain.wav", tmp_path / "dusty.wav"
    assert render(model_dir, tmp_path / "a.mid", "--wav", str(plain)) == 0
    assert render(model_dir, tmp_path / "b.mid", "--wav", str(dusty), "--layer", "vinyl:1", "--lofi") == 0
    a, b = read_wav(plain), read_wav(dusty)
    assert a.shape == b.shape and not np.array_equal(a, b)
    # vinyl hiss fills the top octave the soundfont leaves nearly empty; the lofi low-pass tames it, not removes it
    tail = slice(len(a) - RATE // 2, len(a))  # the release tail: the music has faded, the record still turns
    quiet = float(np.sqrt(np.mean(a[tail].astype(np.float64) ** 2)))
    noisy = float(np.sqrt(np.mean(b[tail].astype(np.float64) ** 2)))
    assert noisy > 2 * quiet + 5, (quiet, noisy)


def test_post_options_need_the_wav(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert render(model_dir, tmp_path / "x.mid", "--master") == 2
    assert "add --wav" in capsys.readouterr().err
    assert render(model_dir, tmp_path / "x.mid", "--wav", str(tmp_path / "x.wav"), "--layer", "nothing") == 2
    assert "--layer" in capsys.readouterr().err and not (tmp_path / "x.wav").exists()

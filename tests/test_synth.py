"""The internal synth: real FluidSynth and a real soundfont, rendered offline."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import require

from rtgen.errors import AudioError, SoundfontError
from rtgen.io import synth as synth_mod
from rtgen.io.synth import Synth, find_soundfont


@pytest.fixture(scope="module")
def soundfont() -> Path:
    try:
        return find_soundfont()
    except SoundfontError as err:
        require(False, f"a General MIDI soundfont ({err})")
        raise


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) if x.size else 0.0


@pytest.mark.parametrize(("program", "pitch"), [(0, 69), (73, 76)])
def test_held_note_sounds_at_its_pitch_and_stops(soundfont: Path, program: int, pitch: int) -> None:
    with Synth(soundfont, sample_rate=44100, gain=0.5, reverb=False) as s:
        s.program(0, program)
        assert rms(s.render(0.2)) < 2  # nothing played yet: silence (FluidSynth dithers ±1)
        s.note_on(0, pitch, 110)
        audio = s.render(1.0)
        assert audio.shape == (44100, 2) and audio.dtype == np.int16
        assert rms(audio) > 100 and np.abs(audio).max() < 32767
        mono = audio.mean(axis=1) * np.hanning(len(audio))
        spectrum = np.abs(np.fft.rfft(mono))
        freqs = np.fft.rfftfreq(len(mono), 1 / 44100)
        f0 = 440.0 * 2 ** ((pitch - 69) / 12)
        band = (freqs > f0 * 0.97) & (freqs < f0 * 1.03)
        assert spectrum[band].max() > 0.2 * spectrum.max()  # strong energy at the fundamental
        assert spectrum[band].max() > 20 * np.median(spectrum)
        s.all_notes_off()
        s.render(1.5)  # release tail
        assert rms(s.render(0.5)) < 5
        assert s.active_voices == 0


def test_all_notes_off_releases_every_channel(soundfont: Path) -> None:
    with Synth(soundfont, reverb=True, chorus=True) as s:
        for ch, prog in ((0, 73), (1, 24), (2, 32)):
            s.program(ch, prog)
            s.cc(ch, 7, 100)
            s.note_on(ch, 60 + ch * 4, 100)
        assert rms(s.render(0.5)) > 100
        s.all_notes_off()
        s.render(2.0)
        assert rms(s.render(0.5)) < 5


def test_soundfont_swap_keeps_programs_and_sounds(soundfont: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.sf2"
    copy.write_bytes(soundfont.read_bytes())
    with Synth(soundfont, reverb=False) as s:
        s.program(0, 73)
        sfid = s.load_soundfont(copy)
        s.use_soundfont(sfid, copy)
        assert s.soundfont == copy
        s.note_on(0, 76, 110)
        assert rms(s.render(0.5)) > 100
        bad = tmp_path / "bad.sf2"
        bad.write_bytes(b"not a soundfont")
        with pytest.raises(SoundfontError, match=r"bad\.sf2"):
            s.load_soundfont(bad)
        assert rms(s.render(0.3)) > 100  # the failed load changed nothing


def test_configured_soundfont_must_exist(tmp_path: Path) -> None:
    with pytest.raises(SoundfontError, match=r"nope\.sf2 does not exist.*--soundfont"):
        find_soundfont(tmp_path / "nope.sf2")


def test_no_soundfont_lists_where_it_looked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("RTGEN_SOUNDFONT", raising=False)
    monkeypatch.setenv("SF2_PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(synth_mod, "SOUNDFONT_DIRS", (str(tmp_path / "a"), str(tmp_path / "b")))
    with pytest.raises(SoundfontError) as err:
        find_soundfont()
    msg = str(err.value)
    for place in ("$RTGEN_SOUNDFONT", str(tmp_path / "empty"), str(tmp_path / "a"), str(tmp_path / "b")):
        assert place in msg
    assert "apt-get install timgm6mb-soundfont" in msg and "Library/Audio/Sounds/Banks" in msg


def test_env_soundfont_wins(monkeypatch: pytest.MonkeyPatch, soundfont: Path, tmp_path: Path) -> None:
    link = tmp_path / "mine.sf2"
    os.symlink(soundfont, link)
    monkeypatch.setenv("RTGEN_SOUNDFONT", str(link))
    assert find_soundfont() == link
    assert find_soundfont(str(soundfont)) == soundfont


def test_unknown_audio_driver_raises_audio_error(soundfont: Path) -> None:
    with Synth(soundfont) as s, pytest.raises(AudioError, match="no-such-driver"):
        s.start_audio("no-such-driver")


def test_bad_soundfont_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.sf2"
    bad.write_bytes(b"not a soundfont")
    with pytest.raises(SoundfontError, match="cannot load soundfont"):
        Synth(bad)


def test_one_note_off_ends_a_key_struck_twice(soundfont: Path) -> None:
    with Synth(soundfont, reverb=False) as s:
        s.note_on(0, 64, 100)
        s.note_on(0, 64, 100)
        assert rms(s.render(0.3)) > 100
        s.note_off(0, 64)  # FluidSynth releases every voice of the key
        s.render(1.5)
        assert rms(s.render(0.3)) < 5 and s.active_voices == 0
        s.note_on(1, 60, 100)
        s.all_notes_off()  # still releases what is tracked as sounding
        s.render(1.5)
        assert s.active_voices == 0


def test_soundfont_swaps_between_two_fonts_free_the_old_one_after_its_voices() -> None:
    fonts = [Path("/usr/share/sounds/sf2/TimGM6mb.sf2"), Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")]
    for font in fonts:
        require(font.is_file(), f"soundfont {font} (scripts/setup.sh installs timgm6mb-soundfont, fluid-soundfont-gm)")
    with Synth(fonts[0], reverb=False) as s:
        s.program(0, 73)
        s.program(9, 0)
        for i in range(4):
            font = fonts[(i + 1) % 2]
            s.note_on(0, 76, 110)  # sounding across the swap: its voice keeps the old font's samples alive
            assert rms(s.render(0.1)) > 100
            handle = s.load_soundfont(font)
            s.use_soundfont(handle, font)
            assert s.soundfont == font
            assert rms(s.render(0.1)) > 100  # the old voice still plays after its font was replaced
            s.note_off(0, 76)
            s.note_on(9, 38, 110)  # the drum bank of the new font
            assert rms(s.render(0.3)) > 100
            s.note_off(9, 38)
            s.render(1.5)
            assert s.active_voices == 0
        unused = s.load_soundfont(fonts[1])  # loaded, never used: freed when the synth closes
        with pytest.raises(SoundfontError, match="not loaded"):
            s.use_soundfont(unused + 1, fonts[1])
    assert s.fonts_freed == 4  # close() waited for the reaper


def test_a_font_loaded_a_chunk_at_a_time_sounds_exactly_as_fluidsynths_own_load(
    soundfont: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Swapped fonts are read through :class:`~rtgen.io.synth.ChunkedFiles` (no read() over READ_CHUNK: a long one
    holds off the real-time thread on a kernel without full preemption). Their samples are FluidSynth's own."""
    monkeypatch.setattr(synth_mod, "READ_CHUNK", 64 * 1024)  # a read per 64 KB of samples
    reads: list[int] = []
    readinto = synth_mod.io.FileIO.readinto
    monkeypatch.setattr(synth_mod.io, "FileIO", type("FileIO", (synth_mod.io.FileIO,), {
        "readinto": lambda self, b: reads.append(len(b)) or readinto(self, b)}))  # fmt: skip

    def played(s: Synth) -> np.ndarray:
        s.program(0, 0)
        s.note_on(0, 60, 110)
        audio = s.render(0.5)
        s.note_off(0, 60)
        return audio

    with Synth(soundfont, reverb=False) as own:
        expected = played(own)
    copy = tmp_path / "copy.sf2"  # another file: FluidSynth shares the samples of one it has loaded already
    copy.write_bytes(soundfont.read_bytes())
    with Synth(soundfont, reverb=False) as s:
        handle = s.load_soundfont(copy)
        s.use_soundfont(handle, copy)
        got = played(s)
    assert reads and max(reads) <= 64 * 1024, "the samples were not read a chunk at a time"
    print(f"samples read in {len(reads)} chunks")
    assert rms(expected) > 100 and np.array_equal(got, expected)

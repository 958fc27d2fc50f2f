"""``rtgen render`` end to end through the CLI: real ONNX models, real FluidSynth, real files."""

from __future__ import annotations

import wave
from pathlib import Path

import mido
import numpy as np
import pytest
from conftest import require

from rtgen import contract as ct
from rtgen.cli import main
from rtgen.errors import SoundfontError
from rtgen.io import synth as synth_mod
from rtgen.midi.midifile import pan_cc, volume_cc
from rtgen.offline.render import GENERATED_MARKER, PRIME_MARKER, TICKS_PER_STEP, load_prime, render_steps, to_midi


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model_factory import make_random_model

    return make_random_model(tmp_path_factory.mktemp("models") / "random", hidden=32, layers=1, seed=0)


def render(model_dir: Path, out: Path, *extra: str) -> int:
    return main(["render", "--model", str(model_dir), "--out", str(out), *extra])


def notes_by_channel(mid: mido.MidiFile) -> dict[int, int]:
    counts: dict[int, int] = {}
    for track in mid.tracks:
        for msg in track:
            if msg.type == "note_on" and msg.velocity > 0:
                counts[msg.channel] = counts.get(msg.channel, 0) + 1
    return counts


def test_render_writes_three_parts_deterministically(model_dir: Path, tmp_path: Path, capsys) -> None:
    a, b, c = tmp_path / "a.mid", tmp_path / "sub" / "b.mid", tmp_path / "c.mid"
    assert render(model_dir, a, "--bars", "8", "--seed", "5", "--key", "G major", "--swing", "0.3") == 0
    summary = capsys.readouterr().out
    assert "rendered 8 bars" in summary and str(a) in summary and "melody" in summary
    assert render(model_dir, b, "--bars", "8", "--seed", "5", "--key", "G major", "--swing", "0.3") == 0
    assert render(model_dir, c, "--bars", "8", "--seed", "6", "--key", "G major", "--swing", "0.3") == 0
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    mid = mido.MidiFile(str(a))
    assert mid.type == 1 and mid.ticks_per_beat == 480
    names = [next(m.name for m in t if m.type == "track_name") for t in mid.tracks]
    assert names == ["rtgen", "melody", "chords", "bass", "drums"]
    meta = {m.type: m for m in mid.tracks[0]}
    assert meta["key_signature"].key == "G" and meta["set_tempo"].tempo == mido.bpm2tempo(110)
    counts = notes_by_channel(mid)
    assert set(counts) == {0, 1, 2, 9} and all(n > 0 for n in counts.values())
    bar_ticks = 16 * TICKS_PER_STEP
    end = max(sum(m.time for m in t) for t in mid.tracks)
    assert 8 * bar_ticks <= end <= 8 * bar_ticks + TICKS_PER_STEP
    # every note-on has its note-off, and key-locked pitches stay in G major
    g_major = ct.Key.parse("G major").pitch_classes
    for track in mid.tracks[1:]:
        on: set[int] = set()
        for msg in track:
            if msg.type == "note_on" and msg.velocity > 0:
                assert msg.note not in on
                on.add(msg.note)
                if track.name == "melody":
                    assert msg.note % 12 in g_major
            elif msg.type in ("note_on", "note_off"):
                on.remove(msg.note)
        assert not on


def test_part_tracks_use_the_shared_pan_and_volume_mapping(model_dir: Path) -> None:
    from dataclasses import replace

    from rtgen.config import Config
    from rtgen.generation.model import Model

    cfg = Config()
    p = cfg.parts
    parts = replace(
        p,
        melody=replace(p.melody, pan=-0.9, volume=0.5),
        chords=replace(p.chords, pan=1.0, volume=1.0),
        bass=replace(p.bass, pan=-1.0, volume=0.0),
    )
    cfg = replace(cfg, parts=parts)
    mid = to_midi(render_steps(Model.load(model_dir), cfg, 1, 0), cfg)
    cc = {t.name: {m.control: m.value for m in t if m.type == "control_change"} for t in mid.tracks[1:]}
    drums = {7: volume_cc(p.drums.volume), 10: pan_cc(p.drums.pan)}
    assert cc == {"melody": {7: 64, 10: 6}, "chords": {7: 127, 10: 127}, "bass": {7: 0, 10: 0}, "drums": drums}
    assert cc["melody"] == {7: volume_cc(0.5), 10: pan_cc(-0.9)}  # the value the live path sends too


def test_render_wav_and_png(model_dir: Path, tmp_path: Path) -> None:
    try:
        synth_mod.find_soundfont()
    except SoundfontError as err:
        require(False, f"a soundfont ({err})")
    out, wav, png = tmp_path / "x.mid", tmp_path / "audio" / "x.wav", tmp_path / "x.png"
    assert render(model_dir, out, "--bars", "4", "--tempo", "120", "--wav", str(wav), "--png", str(png)) == 0
    with wave.open(str(wav)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (2, 2, 44100)
        frames = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
    seconds = len(frames) / 44100
    assert seconds == pytest.approx(4 * 2.0 + 1.5, abs=0.3)  # 4 bars of 4/4 at 120 BPM + release tail
    level = float(np.sqrt(np.mean(frames.astype(np.float64) ** 2)))
    assert level > 200 and np.abs(frames).max() < 32767
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_prime_continues_a_nottingham_tune(model_dir: Path, tmp_path: Path, nottingham_dir: Path) -> None:
    tune = sorted(nottingham_dir.glob("*.mid"))[0]
    tokens, ts = load_prime(tune)
    out = tmp_path / "primed.mid"
    assert render(model_dir, out, "--bars", "4", "--prime", str(tune)) == 0
    mid = mido.MidiFile(str(out))
    markers = {}
    now = 0
    for msg in mid.tracks[0]:
        now += msg.time
        if msg.type == "marker":
            markers[msg.text] = now
        if msg.type == "time_signature" and ts is not None:
            assert (msg.numerator, msg.denominator) == (ts.numerator, ts.denominator)
    prime_end = len(tokens["melody"]) * TICKS_PER_STEP
    assert markers == {PRIME_MARKER: 0, GENERATED_MARKER: prime_end}
    melody = next(t for t in mid.tracks if t.name == "melody")
    onsets, now = [], 0
    for msg in melody:
        now += msg.time
        if msg.type == "note_on" and msg.velocity > 0:
            onsets.append((now, msg.note))
    primed = [(i * TICKS_PER_STEP, ct.melody_pitch(int(t))) for i, t in enumerate(tokens["melody"]) if t >= 2]
    assert [o for o in onsets if o[0] < prime_end] == primed  # the prime is played as written
    assert any(t >= prime_end for t, _ in onsets)  # and the model continues it


def test_bad_option_names_the_key(model_dir: Path, tmp_path: Path, capsys) -> None:
    assert render(model_dir, tmp_path / "x.mid", "--temperature", "9") == 2
    err = capsys.readouterr().err
    assert "generation.temperature" in err and "0.05..3.0" in err
    assert render(model_dir, tmp_path / "x.mid", "--key", "H major") == 2
    assert "generation.key" in capsys.readouterr().err
    assert render(model_dir, tmp_path / "x.mid", "--time-signature", "4/5") == 2
    assert "generation.time_signature" in capsys.readouterr().err
    assert render(tmp_path / "no-model", tmp_path / "x.mid") == 2
    assert "no-model does not exist" in capsys.readouterr().err
    assert not (tmp_path / "x.mid").exists()


def test_missing_soundfont_lists_where_it_looked(
    model_dir: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RTGEN_SOUNDFONT", raising=False)
    monkeypatch.delenv("SF2_PATH", raising=False)
    monkeypatch.setattr(synth_mod, "SOUNDFONT_DIRS", (str(tmp_path / "fonts"),))
    assert render(model_dir, tmp_path / "x.mid", "--bars", "1", "--wav", str(tmp_path / "x.wav")) == 2
    err = capsys.readouterr().err
    assert "no soundfont found" in err and str(tmp_path / "fonts") in err and "--soundfont" in err
    assert render(model_dir, tmp_path / "y.mid", "--wav", str(tmp_path / "y.wav"), "--soundfont", "/no/such.sf2") == 2
    assert "/no/such.sf2 does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_render_with_a_pipeline_trained_model(tiny_model_dir: Path, nottingham_dir: Path, tmp_path: Path) -> None:
    tune = sorted(nottingham_dir.glob("*.mid"))[1]
    a, b = tmp_path / "a.mid", tmp_path / "b.mid"
    for out in (a, b):
        assert render(tiny_model_dir, out, "--bars", "4", "--prime", str(tune), "--key", "G major") == 0
    assert a.read_bytes() == b.read_bytes()
    counts = notes_by_channel(mido.MidiFile(str(a)))
    assert set(counts) == {0, 1, 2, 9}


def test_piano_roll_shows_every_part_the_drums_and_the_sections(model_dir: Path, tmp_path: Path) -> None:
    from rtgen.offline.pianoroll import DRUM_CHANNEL, read_roll

    out, png = tmp_path / "form.mid", tmp_path / "form.png"
    assert render(model_dir, out, "--form", "intro:2 A:2 B:2 A:2 outro:2", "--png", str(png)) == 0
    mid = mido.MidiFile(str(out))
    roll = read_roll(mid)
    bar = 16 * TICKS_PER_STEP
    assert roll.markers == [(0, "intro"), (2 * bar, "A"), (4 * bar, "B"), (6 * bar, "A"), (8 * bar, "outro")]
    assert [name for name, _ in roll.parts] == ["melody", "chords", "bass"]  # the pitched parts, by track
    hits = [m for t in mid.tracks for m in t if m.type == "note_on" and m.velocity > 0 and m.channel == DRUM_CHANNEL]
    assert roll.drums and len(roll.drums) == len(hits)  # every drum hit is in the drum lane, by channel 10
    ons = sum(1 for t in mid.tracks for m in t if m.type == "note_on" and m.velocity > 0)
    assert sum(len(notes) for _, notes in roll.parts) + len(roll.drums) == ons  # each note drawn once
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


@pytest.mark.parametrize("form", [None, "A:2 B:2"])
def test_every_style_and_meter_ends_on_the_final_root_held_and_a_chord_tone(
    shipped_model_dir: Path, form: str | None
) -> None:
    """A piece ends with the bass on the final chord's root from the last downbeat (held, not walked) and the
    melody on a chord tone: every bass and chords style, in every meter the styles know."""
    import dataclasses

    from rtgen.arrange.form import parse_form
    from rtgen.config import Config
    from rtgen.generation.model import Model
    from rtgen.patterns.styles import style_names

    model = Model.load(shipped_model_dir)
    cases = [(ts, "bass", s) for ts in ("4/4", "3/4", "6/8", "2/4", "5/4") for s in style_names("bass")]
    cases += [(ts, "chords", s) for ts in ("4/4", "3/4", "6/8") for s in style_names("chords")]
    wrong = []
    for seed, (ts, part, style) in enumerate(cases):
        cfg = Config().replace("generation", time_signature=ts)
        cfg = cfg.replace("parts", **{part: dataclasses.replace(cfg.parts.get(part), style=style)})
        r = render_steps(model, cfg, 3, seed, form=parse_form(form) if form else None)
        last = r.steps[-1]
        bar_start = (last.index - last.position) * TICKS_PER_STEP
        chord = ct.Chord.from_token(last.chord_now) if last.chord_now >= ct.CHORD_OFFSET else None
        bass = [(t, ev) for t, _, ev in r.events if ev.on and ev.part == "bass"]
        melody = [ev for _, _, ev in r.events if ev.on and ev.part == "melody"]
        in_last_bar = [ev for t, ev in bass if t >= bar_start - TICKS_PER_STEP // 2]  # humanize may pull it early
        case = f"{ts} {part}={style} seed {seed}: final chord {ct.chord_token_name(last.chord_now)}"
        if chord is None or not bass or not melody:
            wrong.append(f"{case}: no final chord, bass or melody")
            continue
        if bass[-1][1].pitch % 12 != chord.root:
            wrong.append(f"{case}: the last bass note is {bass[-1][1].pitch}")
        if not in_last_bar or in_last_bar[0].pitch % 12 != chord.root or len({ev.pitch for ev in in_last_bar}) > 1:
            wrong.append(f"{case}: the last bar's bass walks: {[ev.pitch for ev in in_last_bar]}")
        if melody[-1].pitch % 12 not in chord.pitch_classes:
            wrong.append(f"{case}: the last melody note {melody[-1].pitch} is not a chord tone")
    assert not wrong, "\n".join(wrong)


def test_a_model_that_would_rather_rest_is_woken_after_two_bars(tmp_path: Path) -> None:
    """A part the model keeps silent for two bars starts again on the next beat (the sampler wakes it, the
    voicer plays it): every render of 16 bars holds melody, chords and bass, with no silence of three bars."""
    from model_factory import make_random_model

    from rtgen.config import Config
    from rtgen.generation.model import Model

    model = Model.load(make_random_model(tmp_path / "quiet", quiet=True))
    cfg = Config()
    for seed in range(4):
        r = render_steps(model, cfg, 16, seed)
        bar_steps = r.steps[-1].bar_steps
        onsets: dict[str, list[int]] = {"melody": [], "chords": [], "bass": []}
        for tick, _, ev in r.events:
            if ev.on and ev.part in onsets:
                onsets[ev.part].append(tick // TICKS_PER_STEP)
        for part, steps in onsets.items():
            assert steps, f"seed {seed}: no {part} at all"
        sounding = [s.index for s in r.steps if s.pitch is not None or s.melody_token == ct.MEL_HOLD]
        gaps = np.diff([0, *sounding, len(r.steps)])
        assert gaps.max() <= 2 * bar_steps + bar_steps, f"seed {seed}: the melody rested {gaps.max()} steps"
        chords = [s.index for s in r.steps if s.chord_now != ct.CHORD_NC]
        gaps = np.diff([0, *chords, len(r.steps)])
        assert gaps.max() <= 2 * bar_steps + bar_steps, f"seed {seed}: no chord for {gaps.max()} steps"

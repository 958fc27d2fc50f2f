"""Data preparation: extraction from real Nottingham files, prepare runs, bad inputs, resume."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import mido
import numpy as np
import pytest
import symusic
from conftest import SPLIT_MAP, require

from rtgen import contract as C  # noqa: N812
from rtgen.midi.extract import extract_file
from training import prepare as P  # noqa: N812

ARRAY_NAMES = ("melody", "velocity", "chord", "position", "phrase")


def _first_note(path: Path, track: int) -> tuple[int, list[int]]:
    """(onset tick, pitches starting at that tick) of the first note-on in a track, read with mido."""
    tick, first, pitches = 0, None, []
    for msg in mido.MidiFile(path).tracks[track]:
        tick += msg.time
        if msg.type == "note_on" and msg.velocity > 0:
            if first is None:
                first = tick
            if tick == first:
                pitches.append(msg.note)
            else:
                break
    assert first is not None
    return first, pitches


def _bar_lengths(position: np.ndarray) -> list[int]:
    starts = np.flatnonzero(position == 0)
    return np.diff(np.append(starts, position.size)).tolist()


def _split_map_rows() -> dict[str, str]:
    with SPLIT_MAP.open(newline="") as fh:
        return {
            r["jukedeck_file"]: r["boulanger_split"]
            for r in csv.DictReader(fh)
            if r["confidence"] in P.SPLIT_MAP_CONFIDENCE
        }


def _load(data: Path, split: str) -> dict[str, np.ndarray]:
    return {name: np.load(data / split / f"{name}.npy", mmap_mode="r") for name in (*ARRAY_NAMES, "offsets")}


# --- extraction on named files ---------------------------------------------------------------------
def test_ashover1_waltz_with_2_4_bars_and_pickup(nottingham_dir: Path) -> None:
    path = nottingham_dir / "ashover1.mid"
    tokens = extract_file(path)
    assert isinstance(tokens, dict)
    mel, chord, pos, bar = tokens["melody"], tokens["chord"], tokens["position"], tokens["bar"]
    assert {k: v.size for k, v in tokens.items()} == dict.fromkeys(tokens, mel.size)

    # first melody note is the file's first note, at its onset step (file starts at time 0)
    tpq = mido.MidiFile(path).ticks_per_beat
    tick, pitches = _first_note(path, 0)
    onsets = np.flatnonzero(mel >= C.MEL_NOTE_OFFSET)
    assert onsets[0] == round(tick * C.STEPS_PER_BEAT / tpq)
    assert C.melody_pitch(int(mel[onsets[0]])) == C.fold_pitch(max(pitches))
    assert np.all(mel[: onsets[0]] == C.MEL_REST)

    # chords: the first strike on track 1 is what recognize_chord names it; the tune uses G, D, F, C, Bb
    ctick, cpitches = _first_note(path, 1)
    first_chord = C.recognize_chord(cpitches)
    assert first_chord is not None and first_chord.name == "G"
    cstep = round(ctick * C.STEPS_PER_BEAT / tpq)
    assert chord[cstep] == first_chord.token
    assert chord[0] == C.CHORD_NC and np.all(chord[1:cstep] == C.CHORD_HOLD)
    names = {C.chord_token_name(int(t)) for t in chord if t >= C.CHORD_OFFSET}
    assert {"G", "D", "F", "C", "Bb"} <= names

    # 3/4 bars of 12 steps with 2/4 bars of 8 where the file changes meter; positions restart each bar
    lengths = _bar_lengths(pos)
    assert set(lengths[:-1]) == {12, 8}
    ts_steps = sorted({round(t.time * C.STEPS_PER_BEAT / tpq) for t in symusic.Score(str(path)).time_signatures})
    assert all(pos[s] == 0 for s in ts_steps if s < pos.size)
    first_2_4 = ts_steps[1]
    assert pos[first_2_4 : first_2_4 + 8].tolist() == list(range(8))
    assert pos[first_2_4 + 8] == 0

    # pickup: the melody starts in the second half of bar 0 -> bar -1, phrase 7
    assert onsets[0] >= 6
    assert bar[0] == -1 and tokens["phrase"][0] == 7
    assert bar[12] == 0 and tokens["phrase"][12] == 0
    np.testing.assert_array_equal(tokens["phrase"], np.mod(bar, C.PHRASE_BARS))


def test_jig_in_6_8(nottingham_dir: Path) -> None:
    for name, pickup in (("jigs1.mid", True), ("jigs2.mid", False)):
        path = nottingham_dir / name
        tokens = extract_file(path)
        assert isinstance(tokens, dict), tokens
        lengths = _bar_lengths(tokens["position"])
        assert set(lengths[:-1]) == {12}
        assert lengths[-1] <= 12
        assert (tokens["bar"][0] == -1) == pickup
        _, pitches = _first_note(path, 0)
        first = int(tokens["melody"][np.flatnonzero(tokens["melody"] >= C.MEL_NOTE_OFFSET)[0]])
        assert C.melody_pitch(first) == C.fold_pitch(max(pitches))
        # every chord strike on track 1 recognised as a triad or seventh
        strikes = tokens["chord"][tokens["chord"] >= C.CHORD_OFFSET]
        assert strikes.size > 4
        assert {C.Chord.from_token(int(t)).intervals for t in strikes} <= {(0, 4, 7), (0, 3, 7), (0, 4, 7, 10)}
        # velocity: every Nottingham note has velocity 90
        assert set(tokens["velocity"][tokens["melody"] >= C.MEL_NOTE_OFFSET].tolist()) == {C.velocity_bin(90)}


def _write_midi(
    path: Path, tracks: list[list[tuple[int, int, int, int]]], *, ts: tuple[int, int] | None = None
) -> None:
    """Tracks of (start_tick, end_tick, pitch, channel) notes, 480 ticks per quarter."""
    mf = mido.MidiFile(ticks_per_beat=480)
    for i, notes in enumerate(tracks):
        tr = mido.MidiTrack()
        events: list[tuple[int, int, mido.Message]] = []
        if i == 0 and ts is not None:
            events.append((0, -1, mido.MetaMessage("time_signature", numerator=ts[0], denominator=ts[1])))
        for start, end, pitch, ch in notes:
            events.append((start, 1, mido.Message("note_on", note=pitch, velocity=100, channel=ch)))
            events.append((end, 0, mido.Message("note_off", note=pitch, velocity=0, channel=ch)))
        events.sort(key=lambda e: (e[0], e[1]))
        now = 0
        for t, _, msg in events:
            tr.append(msg.copy(time=t - now))
            now = t
        mf.tracks.append(tr)
    mf.save(path)


def test_general_multitrack_file(tmp_path: Path) -> None:
    """Melody = the high monophonic track's skyline; chords per beat from the other tracks; drums ignored."""
    q = 480
    melody = [(i * q, (i + 1) * q, p, 0) for i, p in enumerate([72, 74, 76, 77, 79, 77, 76, 74])]
    shapes = [(48, 52, 55), (53, 57, 60)]  # C major for bar 0, F major for bar 1
    chords = [(b * 4 * q, (b + 1) * 4 * q, p, 1) for b, shape in enumerate(shapes) for p in shape]
    drums = [(i * q, i * q + 100, 36, 9) for i in range(8)]
    path = tmp_path / "song.mid"
    _write_midi(path, [chords, drums, melody])
    tokens = extract_file(path)
    assert isinstance(tokens, dict), tokens
    mel = tokens["melody"]
    assert mel.size == 32
    assert [C.melody_pitch(int(t)) for t in mel[::4]] == [p for _, _, p, _ in melody]
    assert np.all(mel[mel < C.MEL_NOTE_OFFSET] == C.MEL_HOLD)
    ch = tokens["chord"]
    assert C.chord_token_name(int(ch[0])) == "C" and C.chord_token_name(int(ch[16])) == "F"
    assert np.count_nonzero(ch != C.CHORD_HOLD) == 2
    assert _bar_lengths(tokens["position"]) == [16, 16]  # no time signature: 4/4
    assert tokens["bar"].tolist() == [0] * 16 + [1] * 16


def test_skyline_takes_the_highest_voice(tmp_path: Path) -> None:
    q = 480
    upper = [(i * q, (i + 1) * q, 76 + i, 0) for i in range(8)]
    lower = [(i * q, (i + 1) * q, 64, 0) for i in range(8)]
    path = tmp_path / "duet.mid"
    _write_midi(path, [upper + lower])
    tokens = extract_file(path)
    assert isinstance(tokens, dict), tokens
    assert [C.melody_pitch(int(t)) for t in tokens["melody"][::4]] == [p for _, _, p, _ in upper]


# --- bad inputs ------------------------------------------------------------------------------------
def _bad_folder(root: Path, nottingham_dir: Path) -> dict[str, int]:
    """A folder of 3 good tunes plus one of each kind of bad input; returns the expected skip counts."""
    root.mkdir()
    for name in ("ashover1.mid", "jigs1.mid", "jigs2.mid"):
        shutil.copy(nottingham_dir / name, root / name)
    rng = np.random.default_rng(0)
    (root / "random.mid").write_bytes(rng.integers(0, 256, 2000, dtype=np.uint8).tobytes())
    data = (nottingham_dir / "ashover1.mid").read_bytes()
    (root / "truncated.MID").write_bytes(data[: len(data) // 2])
    (root / "empty.midi").write_bytes(b"")
    _write_midi(root / "no_notes.mid", [[]], ts=(3, 4))
    _write_midi(root / "drums.mid", [[(i * 240, i * 240 + 100, 38, 9) for i in range(32)]])
    _write_midi(root / "short.mid", [[(i * 240, (i + 1) * 240, 72 + i, 0) for i in range(6)]])  # 3 beats: under one bar
    shutil.copy(nottingham_dir / "jigs2.mid", root / "zz_copy_of_jigs2.mid")  # exact duplicate
    (root / "melody").mkdir()
    shutil.copy(nottingham_dir / "jigs1.mid", root / "melody" / "jigs1.mid")  # a stem of jigs1
    (root / "notes.txt").write_text("not midi")
    return {"zero_length": 1, "not_midi": 1, "truncated": 1, "empty": 1, "no_melody": 1, "too_short": 1,
            "duplicate": 1, "stem": 1}  # fmt: skip


def test_bad_files_are_skipped_and_counted(tmp_path: Path, nottingham_dir: Path) -> None:
    expected = _bad_folder(tmp_path / "midi", nottingham_dir)
    out = tmp_path / "data"
    summary = P.prepare(midi_dir=tmp_path / "midi", out=out, workers=2, progress=False, quiet=True)
    manifest = json.loads((out / "manifest.json").read_text())
    assert {k: v for k, v in manifest["skipped"].items() if v} == expected
    assert summary.skipped == manifest["skipped"]
    assert [manifest["skipped_files"][r] for r in ("zero_length", "not_midi", "truncated")] == [
        ["empty.midi"], ["random.mid"], ["truncated.MID"]]  # fmt: skip
    assert manifest["skipped_files"]["duplicate"] == ["zz_copy_of_jigs2.mid"]
    assert manifest["files_seen"] == 11
    used = sorted(f for s in P.SPLITS for f in manifest["splits"][s]["files"])
    assert used == ["ashover1.mid", "jigs1.mid", "jigs2.mid"]
    assert manifest["split_method"].startswith("hash")
    for s in P.SPLITS:
        assert manifest["splits"][s]["files"] == [f for f in used if P.hash_split(f) == s]


def test_worker_exception_becomes_a_skip_reason(
    tmp_path: Path, nottingham_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert P._work(str(tmp_path / "missing.mid")) == "corrupt"
    midi = tmp_path / "midi"
    midi.mkdir()
    shutil.copy(nottingham_dir / "jigs1.mid", midi / "jigs1.mid")

    def broken(path: str) -> dict[str, np.ndarray]:
        raise MemoryError

    monkeypatch.setattr(P, "extract_file", broken)
    summary = P.prepare(midi_dir=midi, out=tmp_path / "data", workers=1, progress=False, quiet=True)
    assert summary.skipped["error: MemoryError"] == 1
    assert all(v["sequences"] == 0 for v in summary.splits.values())


def test_errors_at_the_boundary(tmp_path: Path) -> None:
    with pytest.raises(P.DataError, match="does not exist"):
        P.prepare(midi_dir=tmp_path / "nope", out=tmp_path / "data", quiet=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(P.DataError, match="no MIDI files"):
        P.prepare(midi_dir=tmp_path / "empty", out=tmp_path / "data", quiet=True)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "thesis.tex").write_text("precious")
    _write_midi(tmp_path / "empty" / "a.mid", [[(0, 480, 72, 0)]])
    with pytest.raises(P.DataError, match="not rtgen prepared data"):
        P.prepare(midi_dir=tmp_path / "empty", out=tmp_path / "busy", quiet=True)
    assert (tmp_path / "busy" / "thesis.tex").read_text() == "precious"
    with pytest.raises(P.DataError, match="split map"):
        P.prepare(midi_dir=tmp_path / "empty", out=tmp_path / "d", split_map=tmp_path / "x.csv", quiet=True)


# --- prepare runs on the real data -----------------------------------------------------------------
@pytest.fixture(scope="module")
def small_data(nottingham_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    require(SPLIT_MAP.is_file(), f"the split map at {SPLIT_MAP}")
    out = tmp_path_factory.mktemp("prep") / "data"
    P.prepare(midi_dir=nottingham_dir, out=out, limit=30, workers=2, progress=False, quiet=True)
    return out


def test_manifest_matches_arrays(small_data: Path) -> None:
    manifest = json.loads((small_data / "manifest.json").read_text())
    assert manifest["format"] == "rtgen-data"
    assert manifest["contract_version"] == C.CONTRACT_VERSION
    assert manifest["steps_per_beat"] == C.STEPS_PER_BEAT
    assert sum(len(manifest["splits"][s]["files"]) for s in P.SPLITS) == 30
    dtypes = {"melody": np.int16, "velocity": np.uint8, "chord": np.int16, "position": np.uint8, "phrase": np.uint8}
    for s in P.SPLITS:
        info, arrays = manifest["splits"][s], _load(small_data, s)
        offsets = arrays["offsets"]
        assert info["sequences"] == len(info["files"]) == offsets.size - 1 > 0
        assert offsets.dtype == np.int64 and offsets[0] == 0 and np.all(np.diff(offsets) > 0)
        assert info["steps"] == offsets[-1]
        for name, dtype in dtypes.items():
            assert arrays[name].dtype == dtype and arrays[name].shape == (info["steps"],)
        mel, ch = arrays["melody"], arrays["chord"]
        assert mel.min() >= 0 and mel.max() < C.MELODY_VOCAB_SIZE
        assert ch.min() >= 0 and ch.max() < C.CHORD_VOCAB_SIZE
        assert arrays["velocity"].max() < C.NUM_VELOCITY_BINS
        assert arrays["position"].max() < C.MAX_BAR_STEPS and arrays["phrase"].max() < C.PHRASE_BARS
        # every sequence starts at a bar start with a resolved melody and chord token
        starts = offsets[:-1]
        assert np.all(arrays["position"][starts] == 0)
        assert np.all(mel[starts] != C.MEL_HOLD) and np.all(ch[starts] != C.CHORD_HOLD)
        # sequence i is file i: its arrays equal extract_file of that file
        i = len(info["files"]) // 2
        tokens = extract_file(Path(manifest["source"]) / info["files"][i])
        assert isinstance(tokens, dict)
        for name in ARRAY_NAMES:
            np.testing.assert_array_equal(arrays[name][offsets[i] : offsets[i + 1]], tokens[name])


def test_splits_follow_the_csv(small_data: Path) -> None:
    manifest = json.loads((small_data / "manifest.json").read_text())
    rows = _split_map_rows()
    checked = 0
    for s in P.SPLITS:
        for f in manifest["splits"][s]["files"]:
            assert s == rows.get(f, P.hash_split(f)), f
            checked += f in rows
    assert checked > 20
    assert manifest["split_method"].startswith("boulanger_split_map.csv")
    assert "stem" in manifest["skipped"] and manifest["skipped"]["duplicate"] == 5


def test_limit_20_gives_every_split(nottingham_dir: Path, tmp_path: Path) -> None:
    summary = P.prepare(midi_dir=nottingham_dir, out=tmp_path / "d", limit=20, workers=1, progress=False, quiet=True)
    assert summary.files_used == 20
    assert all(summary.splits[s]["sequences"] > 0 for s in P.SPLITS), summary.splits


def test_determinism_and_resume(nottingham_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    P.prepare(midi_dir=nottingham_dir, out=a, limit=12, workers=1, progress=False)
    P.prepare(midi_dir=nottingham_dir, out=b, limit=12, workers=2, progress=False, quiet=True)
    for s in P.SPLITS:
        for name in (*ARRAY_NAMES, "offsets"):
            assert (a / s / f"{name}.npy").read_bytes() == (b / s / f"{name}.npy").read_bytes()
    ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (a, b))
    assert ma["splits"] == mb["splits"] and ma["fingerprint"] == mb["fingerprint"]
    assert "12 read" in capsys.readouterr().out

    # resume: same inputs -> nothing redone
    stamp = (a / "manifest.json").stat().st_mtime_ns
    again = P.prepare(midi_dir=nottingham_dir, out=a, limit=12, progress=False)
    assert again.up_to_date and again.splits == {
        s: {k: ma["splits"][s][k] for k in ("sequences", "steps")} for s in P.SPLITS
    }
    assert "up to date" in capsys.readouterr().out
    assert (a / "manifest.json").stat().st_mtime_ns == stamp
    # another limit or --force redoes it; no temporary folders are left behind
    assert not P.prepare(midi_dir=nottingham_dir, out=a, limit=12, force=True, progress=False, quiet=True).up_to_date
    assert not P.prepare(midi_dir=nottingham_dir, out=a, limit=10, progress=False, quiet=True).up_to_date
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_changed_file_redoes_and_interrupted_run_leaves_old_data(
    nottingham_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    midi = tmp_path / "midi"
    midi.mkdir()
    for name in ("ashover1.mid", "jigs1.mid"):
        shutil.copy(nottingham_dir / name, midi / name)
    out = tmp_path / "data"
    P.prepare(midi_dir=midi, out=out, workers=1, progress=False, quiet=True)
    before = (out / "manifest.json").read_text()
    st = (midi / "jigs1.mid").stat()
    os.utime(midi / "jigs1.mid", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))

    def boom(folder: Path, seqs: list[dict[str, np.ndarray]]) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(P, "_write_split", boom)
    with pytest.raises(KeyboardInterrupt):
        P.prepare(midi_dir=midi, out=out, workers=1, progress=False, quiet=True)
    assert (out / "manifest.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "midi"]
    monkeypatch.undo()
    assert not P.prepare(midi_dir=midi, out=out, workers=1, progress=False, quiet=True).up_to_date


def test_command_line(nottingham_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = P.main(["--midi-dir", str(nottingham_dir), "--out", str(tmp_path / "d"), "--limit", "6", "--workers", "1"])
    assert code == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("prepare:") and "train" in line and "skipped" in line
    assert P.main(["--midi-dir", str(tmp_path / "nope"), "--out", str(tmp_path / "d")]) == 2


def test_rtgen_train_prepare_entry_point(nottingham_dir: Path, tmp_path: Path) -> None:
    from training.cli import main as train_main

    out = tmp_path / "d"
    assert train_main(["prepare", "--midi-dir", str(nottingham_dir), "--out", str(out), "--limit", "4"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert sum(v["sequences"] for v in manifest["splits"].values()) == 4


def test_prepare_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, training.prepare, rtgen.midi.extract; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent.parent).returncode == 0

"""The one MIDI-file writer: build_midi, save_atomic, and the pan/volume mappings."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import mido
import pytest

from rtgen.errors import RtgenError
from rtgen.midi.midifile import TICKS_PER_BEAT, build_midi, pan_cc, save_atomic, volume_cc


def absolute(track: mido.MidiTrack) -> list[tuple[int, mido.Message]]:
    out, now = [], 0
    for msg in track:
        now += msg.time
        out.append((now, msg))
    return out


def test_pan_cc_maps_the_ends_and_centre_and_is_monotone() -> None:
    assert (pan_cc(-1.0), pan_cc(0.0), pan_cc(1.0)) == (0, 64, 127)
    values = [pan_cc(-1.0 + i / 500) for i in range(1001)]
    assert all(a <= b for a, b in itertools.pairwise(values))
    assert set(range(128)) == set(values)  # every CC value is reachable
    assert pan_cc(-0.9) == 6  # what the live path has always sent for -0.9
    assert pan_cc(-5.0) == 0 and pan_cc(5.0) == 127  # clamped


def test_volume_cc_is_linear_and_clamped() -> None:
    assert (volume_cc(0.0), volume_cc(0.5), volume_cc(1.0)) == (0, 64, 127)
    assert volume_cc(-1.0) == 0 and volume_cc(2.0) == 127
    assert volume_cc(0.85) == round(0.85 * 127)


def test_build_midi_writes_tracks_tempo_map_meta_and_keeps_tie_order() -> None:
    on = mido.Message("note_on", channel=1, note=60, velocity=90)
    off = mido.Message("note_off", channel=1, note=60, velocity=0)
    on2 = mido.Message("note_on", channel=1, note=62, velocity=90)
    mid = build_midi(
        [("melody", [(480, on2), (0, on), (480, off)]), ("empty", [])],
        tempo_map=[(0, 120.0), (960, 60.0)],
        time_signature=(3, 4),
        key_signature="Em",
        markers=[(0, "prime"), (480, "generated")],
        cue_markers=[(0, "C"), (480, "G7")],
        end_tick=1920,
    )
    assert mid.type == 1 and mid.ticks_per_beat == TICKS_PER_BEAT == 480
    assert [t.name for t in mid.tracks] == ["rtgen", "melody", "empty"]
    meta = [(t, m.type) for t, m in absolute(mid.tracks[0])]
    assert meta == [
        (0, "track_name"),
        (0, "set_tempo"),
        (0, "time_signature"),
        (0, "key_signature"),
        (0, "marker"),
        (0, "cue_marker"),
        (480, "marker"),
        (480, "cue_marker"),
        (960, "set_tempo"),
        (1920, "end_of_track"),
    ]
    tempos = [round(mido.tempo2bpm(m.tempo)) for m in mid.tracks[0] if m.type == "set_tempo"]
    assert tempos == [120, 60]
    # sorted by tick; at tick 480 the given order (on2 before off) is kept
    notes = [(t, m.type, m.note) for t, m in absolute(mid.tracks[1]) if m.type in ("note_on", "note_off")]
    assert notes == [(0, "note_on", 60), (480, "note_on", 62), (480, "note_off", 60)]
    assert all(sum(m.time for m in t) == 1920 for t in mid.tracks)


def test_save_atomic_writes_a_file_mido_reads_back(tmp_path: Path) -> None:
    mid = build_midi([("x", [(0, mido.Message("note_on", note=60)), (480, mido.Message("note_off", note=60))])])
    path = tmp_path / "deep" / "er" / "out.mid"
    save_atomic(mid, path)
    back = mido.MidiFile(path)
    assert [t.name for t in back.tracks] == ["rtgen", "x"]
    assert os.listdir(path.parent) == ["out.mid"]  # no temporary file left
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_save_atomic_with_a_directory_in_the_way_leaves_nothing_behind(tmp_path: Path) -> None:
    target = tmp_path / "taken.mid"
    target.mkdir()
    (target / "inside").write_text("keep")
    with pytest.raises(RtgenError, match=r"cannot write the MIDI file .*taken\.mid"):
        save_atomic(build_midi([]), target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.mid"]
    assert target.is_dir() and (target / "inside").read_text() == "keep"


def test_a_write_that_fails_half_way_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "session.mid"
    path.write_bytes(b"old contents")

    def half_then_fail(self: mido.MidiFile, filename: object = None, file: object = None) -> None:
        assert file is not None
        file.write(b"MThd\x00\x00")  # type: ignore[attr-defined]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mido.MidiFile, "save", half_then_fail)
    with pytest.raises(RtgenError, match="No space left") as info:
        save_atomic(build_midi([]), path, what="session recording")
    assert "session recording" in str(info.value) and str(path) in str(info.value)
    assert path.read_bytes() == b"old contents"
    assert os.listdir(tmp_path) == ["session.mid"]


def test_same_inputs_give_the_same_bytes(tmp_path: Path) -> None:
    def make() -> mido.MidiFile:
        evs = [(i * 120, mido.Message("note_on" if i % 2 == 0 else "note_off", note=60 + i // 2)) for i in range(20)]
        return build_midi([("a", evs)], tempo_map=[(0, 97.5)], key_signature="D", end_tick=4000)

    save_atomic(make(), tmp_path / "a.mid")
    save_atomic(make(), tmp_path / "b.mid")
    assert (tmp_path / "a.mid").read_bytes() == (tmp_path / "b.mid").read_bytes()

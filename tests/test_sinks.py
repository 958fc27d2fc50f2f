"""Sinks: MIDI out over real JACK, the session recorder (read back with mido), the synth (real FluidSynth)."""

from __future__ import annotations

from pathlib import Path

import mido
import numpy as np
import pytest
from conftest import require

from rtgen.bench.harness import is_note_off, sounding_notes
from rtgen.io import ports as midi_io
from rtgen.io.sinks import MidiOutSink, RecorderSink, Sink, SynthSink
from rtgen.midi.messages import CC_ALL_NOTES_OFF, CC_ALL_SOUND_OFF, panic_messages
from rtgen.midi.notes import NoteTracker


def test_note_tracker_follows_messages_as_a_receiver_does() -> None:
    table = NoteTracker()
    table.track([0x90, 60, 100])
    table.track([0x91, 64, 90])
    table.track([0x92, 67, 80])
    table.track([0x92, 67, 80])  # struck twice: one note-off still ends it on a receiver
    table.track([0x90, 60, 0])  # velocity-0 note-on is a note-off
    table.track([0x81, 64, 0])
    table.track([0x93, 50, 1])
    table.track([0x94, 51, 1])
    table.track([0xB3, CC_ALL_NOTES_OFF, 0])
    table.track([0xC0, 5])  # program change: ignored
    assert table.sounding() == [(2, 67), (4, 51)]
    assert table.get(2, 67) == 2 and len(table) == 2
    table.track([0x82, 67, 0])
    assert table.sounding() == [(4, 51)]
    table.track([0xB4, CC_ALL_NOTES_OFF, 0], all_notes_off=False)
    assert table.sounding() == [(4, 51)]
    table.clear()
    assert table.sounding() == [] and not table


def test_note_tracker_counts_doubled_notes() -> None:
    book = NoteTracker()
    book.on(1, 60)
    book.on(1, 60)
    book.on(3, 40)
    assert book.count() == 2 and book.notes() == [(1, 60), (3, 40)]
    assert book.off(1, 60) and (1, 60) in book
    assert book.off(1, 60) and (1, 60) not in book
    assert not book.off(1, 60)  # redundant
    book.on(3, 41)
    book.on(5, 41)
    assert book.clear_channel(3) == 2
    assert book.sounding() == [(5, 41)] and book.sounding(channel=5) == [(5, 41)] and book.sounding(channel=3) == []
    assert book.release(5, 41) == 1 and book.count() == 0


def test_the_stuck_note_check_counts_real_note_offs_only() -> None:
    msgs = [(0x91, 60, 100), (0x91, 60, 100), (0x81, 60, 0), (0xB1, 123, 0), (0xB1, 120, 0)]
    assert sounding_notes(msgs) == {(1, 60)}  # CC123/CC120 release nothing
    assert sounding_notes([*msgs, (0x91, 60, 0)]) == set()


def test_panic_messages_release_then_cc_on_every_channel() -> None:
    msgs = panic_messages([(0, 60), (9, 36)])
    assert msgs[:2] == [[0x80, 60, 0], [0x89, 36, 0]]
    ccs = msgs[2:]
    assert len(ccs) == 32
    assert {(m[0] & 0x0F, m[1]) for m in ccs} == {(ch, cc) for ch in range(16) for cc in (123, 120)}


@pytest.mark.jack
def test_midi_out_sink_sends_and_panic_releases_held_notes(jack_server: str, jack_recorder) -> None:
    out = midi_io.open_output("jack", None, client_name="sinktest")
    sink = MidiOutSink(out)
    assert isinstance(sink, Sink)
    assert sink.name == "midi:sinktest:out"
    rec = jack_recorder("sinktest:out")
    held = [[0x90, 60, 100], [0x91, 64, 90], [0x92, 40, 80]]
    for msg in [*held, [0x90, 72, 70], [0x80, 72, 0]]:
        sink.send(msg, 0)
    assert sink.notes.sounding() == [(0, 60), (1, 64), (2, 40)]
    assert rec.wait_for_count(5)
    sink.panic()
    assert rec.wait_for_count(5 + 3 + 32), rec.messages()
    rec.settle(0.1)
    got = rec.messages()
    assert got[:5] == [(0x90, 60, 100), (0x91, 64, 90), (0x92, 40, 80), (0x90, 72, 70), (0x80, 72, 0)]
    released = got[5:8]
    assert all(is_note_off(m) for m in released)
    assert {(m[0] & 0x0F, m[1]) for m in released} == {(0, 60), (1, 64), (2, 40)}
    assert sorted((m[0] & 0x0F, m[1]) for m in got[8:]) == sorted(
        (ch, cc) for ch in range(16) for cc in (CC_ALL_NOTES_OFF, CC_ALL_SOUND_OFF)
    )
    assert sounding_notes(got) == set()
    assert sink.notes.sounding() == []
    sink.close()
    sink.close()
    assert out.closed
    sink.panic()  # after close: a no-op, not an error


@pytest.mark.jack
def test_midi_out_sink_counts_failures_instead_of_raising(jack_server: str) -> None:
    out = midi_io.open_output("jack", None, client_name="failtest")
    sink = MidiOutSink(out)
    out.close()
    sink.send([0x90, 60, 100], 0)
    sink.send([0x90, 61, 100], 0)
    assert sink.errors == 2
    assert sink.notes.sounding() == []


def test_recorder_writes_a_type1_file_mido_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "rec" / "session.mid"
    beat_ns = 500_000_000  # 120 BPM
    rec = RecorderSink(path, 120.0, start_ns=1_000_000_000, track_names={0: "melody", 1: "chords"})
    t0 = 1_000_000_000
    rec.send([0xC0, 73], t0)
    rec.send([0x90, 60, 100], t0)
    rec.send([0x91, 48, 80], t0)
    rec.send([0x80, 60, 0], t0 + beat_ns)
    rec.send([0x90, 62, 90], t0 + beat_ns)
    rec.send([0x80, 62, 0], t0 + 2 * beat_ns)
    # 48 on channel 2 is still sounding at close: the file gets its note-off.
    rec.close()
    rec.close()
    mid = mido.MidiFile(path)
    assert mid.type == 1 and mid.ticks_per_beat == 480
    assert [t.name for t in mid.tracks] == ["rtgen", "melody", "chords"]
    tempos = [m.tempo for m in mid.tracks[0] if m.type == "set_tempo"]
    assert tempos == [500_000]
    melody = []
    tick = 0
    for m in mid.tracks[1]:
        tick += m.time
        if m.type in ("note_on", "note_off"):
            melody.append((tick, m.type, m.note))
    assert melody == [(0, "note_on", 60), (480, "note_off", 60), (480, "note_on", 62), (960, "note_off", 62)]
    assert [m.program for m in mid.tracks[1] if m.type == "program_change"] == [73]
    chord_notes = [(m.type, m.note) for m in mid.tracks[2] if m.type in ("note_on", "note_off")]
    assert chord_notes == [("note_on", 48), ("note_off", 48)]
    # Seconds in the file equal the recorded wall time.
    assert mid.length == pytest.approx(1.0, abs=1e-3)


def test_recorder_follows_tempo_changes(tmp_path: Path) -> None:
    path = tmp_path / "tempo.mid"
    rec = RecorderSink(path, 60.0, start_ns=0)
    rec.send([0x90, 60, 100], 0)
    rec.send([0x80, 60, 0], 1_000_000_000)  # one beat at 60 BPM
    rec.set_tempo(120.0, 1_000_000_000)
    rec.send([0x90, 62, 100], 1_000_000_000)
    rec.send([0x80, 62, 0], 1_500_000_000)  # one beat at 120 BPM
    rec.close()
    mid = mido.MidiFile(path)
    tempos = []
    tick = 0
    for m in mid.tracks[0]:
        tick += m.time
        if m.type == "set_tempo":
            tempos.append((tick, round(mido.tempo2bpm(m.tempo))))
    assert tempos == [(0, 60), (480, 120)]
    ticks = []
    tick = 0
    for m in mid.tracks[1]:
        tick += m.time
        if m.type in ("note_on", "note_off"):
            ticks.append(tick)
    assert ticks == [0, 480, 480, 960]
    assert mid.length == pytest.approx(1.5, abs=1e-3)


def test_recorder_panic_records_note_offs(tmp_path: Path) -> None:
    rec = RecorderSink(tmp_path / "p.mid", 100.0)
    rec.send([0x90, 60, 100], 5)
    rec.send([0x92, 36, 100], 5)
    rec.panic()
    assert rec.notes.sounding() == []
    rec.close()
    msgs = [tuple(m.bytes()) for m in mido.MidiFile(tmp_path / "p.mid") if not m.is_meta]
    assert sorted(m for m in msgs if is_note_off(m)) == [(0x80, 60, 0), (0x82, 36, 0)]
    assert sounding_notes(msgs) == set()


def test_recorder_close_reports_unwritable_path(tmp_path: Path) -> None:
    from rtgen.errors import RtgenError

    blocker = tmp_path / "file"
    blocker.write_text("x")
    rec = RecorderSink(blocker / "sub" / "x.mid", 120.0)
    rec.send([0x90, 60, 100], 0)
    with pytest.raises(RtgenError, match=r"cannot write the session recording .*x\.mid"):
        rec.close()
    assert blocker.read_text() == "x"
    rec.close()  # idempotent: the error is not raised twice


def _synth_or_skip():  # type: ignore[no-untyped-def]
    try:
        from rtgen.io.synth import Synth, find_soundfont
    except ImportError as err:
        require(False, f"rtgen.io.synth ({err})")
        raise
    from rtgen.errors import SoundfontError

    try:
        soundfont = find_soundfont()
    except SoundfontError as err:
        require(False, f"a soundfont ({err})")
        raise
    return Synth(soundfont, reverb=False, chorus=False)


def _rms(frames: np.ndarray) -> float:
    return float(np.sqrt(np.mean(frames.astype(np.float64) ** 2))) if frames.size else 0.0


def test_synth_sink_sounds_and_panic_silences() -> None:
    synth = _synth_or_skip()
    sink = SynthSink(synth)
    try:
        assert isinstance(sink, Sink)
        silence = synth.render(0.2)
        assert _rms(silence) < 5.0
        sink.send([0xC0, 0], 0)  # piano
        sink.send([0xB0, 7, 127], 0)
        sink.send([0x90, 60, 110], 0)
        sink.send([0x90, 67, 110], 0)
        playing = synth.render(0.5)
        assert playing.dtype == np.int16
        assert _rms(playing) > 100.0, "a held note rendered silent"
        assert sink.notes.sounding() == [(0, 60), (0, 67)]
        sink.panic()
        assert sink.notes.sounding() == []
        synth.render(1.0)  # release tail
        after = synth.render(0.3)
        assert _rms(after) < 5.0, f"still sounding after panic: rms {_rms(after):.1f}"
        assert sink.errors == 0
    finally:
        sink.close()
    sink.close()


def test_synth_sink_note_off_ends_a_note() -> None:
    synth = _synth_or_skip()
    sink = SynthSink(synth)
    try:
        sink.send([0x90, 64, 100], 0)
        assert _rms(synth.render(0.3)) > 100.0
        sink.send([0x80, 64, 0], 0)
        synth.render(1.5)
        assert _rms(synth.render(0.3)) < 5.0
        assert sink.notes.sounding() == []
    finally:
        sink.close()

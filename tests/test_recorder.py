"""The session recorder: both sides in one file, bounded memory, a spool on disk, atomic close."""

from __future__ import annotations

import threading
import time
import tracemalloc
from pathlib import Path

import mido
import pytest

from rtgen.bench.harness import sounding_notes
from rtgen.io.sinks import PLAYER_TRACK, RecorderSink

BEAT = 500_000_000  # ns per beat at 120 BPM


def notes(track: mido.MidiTrack) -> list[tuple[int, str, int, int]]:
    """(tick, type, channel, note) of the note messages of ``track`` (velocity-0 note-ons as note_off)."""
    out, now = [], 0
    for m in track:
        now += m.time
        if m.type in ("note_on", "note_off"):
            kind = "note_on" if m.type == "note_on" and m.velocity > 0 else "note_off"
            out.append((now, kind, m.channel, m.note))
    return out


def track(mid: mido.MidiFile, name: str) -> mido.MidiTrack:
    return next(t for t in mid.tracks if t.name == name)


def test_both_sides_go_to_their_own_tracks_with_tempo_map_and_meter(tmp_path: Path) -> None:
    path = tmp_path / "both.mid"
    t0 = 10 * BEAT
    rec = RecorderSink(path, 120.0, start_ns=t0, time_signature=(3, 4), track_names={0: "melody", 2: "bass"})
    rec.send([0x90, 72, 100], t0)  # generated melody, channel 1
    rec.record_input([0x90, 60, 80], t0 + 10_000_000)  # the player, also on channel 1
    rec.send([0x92, 36, 90], t0)
    rec.send([0x80, 72, 0], t0 + BEAT)
    rec.record_input([0x80, 60, 0], t0 + BEAT)
    rec.record_input([0xB0, 64, 127], t0 + BEAT)  # sustain pedal: kept, on the player's track
    rec.record_input([0xF8], t0 + BEAT)  # MIDI clock: not a part of the file
    rec.set_tempo(60.0, t0 + 2 * BEAT)
    rec.send([0x82, 36, 0], t0 + 4 * BEAT)  # one beat at 60 BPM after two at 120
    rec.close()
    mid = mido.MidiFile(path)
    assert [t.name for t in mid.tracks] == ["rtgen", "melody", "bass", PLAYER_TRACK]
    meta = {m.type: m for m in mid.tracks[0]}
    assert (meta["time_signature"].numerator, meta["time_signature"].denominator) == (3, 4)
    tempi, now = [], 0
    for m in mid.tracks[0]:
        now += m.time
        if m.type == "set_tempo":
            tempi.append((now, round(mido.tempo2bpm(m.tempo))))
    assert tempi == [(0, 120), (960, 60)]
    assert notes(track(mid, "melody")) == [(0, "note_on", 0, 72), (480, "note_off", 0, 72)]
    assert notes(track(mid, "bass")) == [(0, "note_on", 2, 36), (1440, "note_off", 2, 36)]
    player = track(mid, PLAYER_TRACK)
    assert notes(player) == [(10, "note_on", 0, 60), (480, "note_off", 0, 60)]  # 10 ms = 9.6 ticks at 120 BPM
    assert [(m.control, m.value) for m in player if m.type == "control_change"] == [(64, 127)]
    assert not any(m.type == "clock" for m in mid)
    assert mid.length == pytest.approx(2.0, abs=1e-3)


def test_notes_sounding_at_close_get_real_note_offs_at_the_last_time(tmp_path: Path) -> None:
    path = tmp_path / "held.mid"
    rec = RecorderSink(path, 120.0, start_ns=0, track_names={1: "chords"})
    rec.send([0x91, 60, 90], 0)
    rec.send([0x91, 64, 90], 0)
    rec.record_input([0x90, 67, 90], BEAT // 2)
    rec.send([0xB1, 123, 0], BEAT)  # all-notes-off releases nothing in the file
    rec.send([0xB1, 120, 0], BEAT)
    rec.send([0xC1, 5], 2 * BEAT)  # the last recorded time
    rec.close()
    mid = mido.MidiFile(path)
    chords = track(mid, "chords")
    assert notes(chords) == [
        (0, "note_on", 1, 60),
        (0, "note_on", 1, 64),
        (960, "note_off", 1, 60),
        (960, "note_off", 1, 64),
    ]
    assert not any(m.type == "control_change" for m in chords)
    assert notes(track(mid, PLAYER_TRACK)) == [(240, "note_on", 0, 67), (960, "note_off", 0, 67)]
    assert sounding_notes([tuple(m.bytes()) for m in mid if not m.is_meta]) == set()


def test_recording_started_mid_session_lines_up_with_the_bar(tmp_path: Path) -> None:
    # the daemon is in bar 7 (0-based) at 120 BPM in 4/4: beat 0 of that bar is the recording's tick 0
    bar_start = 7 * 4 * BEAT
    rec = RecorderSink(tmp_path / "mid.mid", 120.0, start_ns=bar_start, track_names={0: "melody"})
    rec.send([0x80, 50, 0], bar_start + 10)  # a note that began before the recording: its off is left out
    rec.send([0x90, 62, 100], bar_start + BEAT)
    rec.send([0x80, 62, 0], bar_start + 2 * BEAT)
    rec.close()
    mid = mido.MidiFile(tmp_path / "mid.mid")
    assert notes(track(mid, "melody")) == [(480, "note_on", 0, 62), (960, "note_off", 0, 62)]


def test_memory_stays_bounded_on_a_long_session(tmp_path: Path) -> None:
    path = tmp_path / "long.mid"
    pairs = 250_000  # 500k events
    traced = 25_000  # the last 50k events run under tracemalloc (it makes every allocation slow)
    rec = RecorderSink(path, 120.0, start_ns=0, buffer_events=1024, buffers=4, track_names={0: "melody"})
    step = BEAT // 4
    send = rec.send
    peak = base = 0
    for i in range(pairs):
        if i == pairs - traced:
            tracemalloc.start()
            base = tracemalloc.get_traced_memory()[0]
        t = i * step
        send((0x90, 60 + i % 12, 100), t)
        send((0x80, 60 + i % 12, 0), t + step // 2)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # 50k events kept in memory would be 800 kB packed (~7 MB as Python tuples); the recorder
    # fills its few 16 KiB buffers and the writer thread spools them
    assert peak - base < 400_000, f"recorder memory grew by {peak - base} bytes over the last 50k events"
    spool = list(tmp_path.glob("*.spool"))
    assert len(spool) == 1 and spool[0].parent == path.parent
    deadline = time.monotonic() + 10
    while rec.spooled_events < 2 * pairs - 1024 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert rec.spooled_events >= 2 * pairs - 1024  # everything but the buffer being filled is on disk
    assert spool[0].stat().st_size == 16 * rec.spooled_events
    rec.close()
    assert not list(tmp_path.glob("*.spool"))  # the spool is removed
    mid = mido.MidiFile(path)
    got = notes(track(mid, "melody"))
    assert len(got) == 2 * pairs
    assert got[:2] == [(0, "note_on", 0, 60), (60, "note_off", 0, 60)]
    assert got[-1] == ((pairs - 1) * 120 + 60, "note_off", 0, 60 + (pairs - 1) % 12)


def test_close_from_another_thread_is_idempotent_and_the_rt_side_is_detached(tmp_path: Path) -> None:
    path = tmp_path / "t.mid"
    rec = RecorderSink(path, 100.0, buffer_events=8)
    for i in range(50):  # several buffers through the writer thread
        rec.send((0x90, 60, 100), i * 1_000_000)
        rec.send((0x80, 60, 0), i * 1_000_000 + 500_000)
    closers = [threading.Thread(target=rec.close) for _ in range(3)]
    for c in closers:
        c.start()
    for c in closers:
        c.join()
    rec.close()
    rec.send((0x90, 61, 100), 10**9)  # after close: ignored, nothing raised
    mid = mido.MidiFile(path)
    assert len(notes(mid.tracks[1])) == 100
    assert not rec._writer.is_alive()
    assert not list(tmp_path.glob("*.spool"))


def test_a_failed_write_leaves_no_partial_file_and_no_spool(tmp_path: Path) -> None:
    from rtgen.errors import RtgenError

    target = tmp_path / "taken.mid"
    target.mkdir()  # a directory in the way
    rec = RecorderSink(target, 120.0, buffer_events=4)
    for i in range(20):
        rec.send((0x90, 60, 100), i)
        rec.send((0x80, 60, 0), i + 1)
    with pytest.raises(RtgenError, match=r"cannot write the session recording .*taken\.mid"):
        rec.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.mid"]
    assert target.is_dir() and not list(target.iterdir())


def test_a_spool_that_cannot_be_written_keeps_the_session_in_memory(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    path = tmp_path / "kept.mid"
    rec = RecorderSink(path, 120.0, start_ns=0, buffer_events=4, spool_dir=blocker / "spool")
    for i in range(50):
        rec.send((0x90, 60 + i % 5, 100), i * BEAT)
        rec.send((0x80, 60 + i % 5, 0), i * BEAT + BEAT // 2)
    rec.close()
    assert rec.spooled_events == 0
    got = notes(mido.MidiFile(path).tracks[1])
    assert len(got) == 100 and got[-1] == (49 * 480 + 240, "note_off", 0, 64)


def test_located_steps_sit_on_the_files_grid_with_a_pickup_of_whole_bars(tmp_path: Path) -> None:
    """Issue 19 part 7: the file's grid is the transport's. A note played 1.5 beats before the first located
    step becomes a pickup of one whole bar (that step is on bar 2's line, at the tempo it was located with);
    setup messages from long before go to tick 0; a Continue from a song position that has gone by goes on at
    the same place in a later bar; a locate ahead goes to the transport's place."""
    path = tmp_path / "located.mid"
    step = BEAT // 4  # 120 BPM
    t0 = 100 * BEAT
    rec = RecorderSink(path, 110.0, track_names={0: "melody"})  # the wait is not at 110 BPM in the file
    rec.send([0xC0, 5], t0 - 60 * BEAT)  # the parts' setup at start-up, a minute before the Start
    rec.record_input([0x90, 55, 80], t0 - 3 * BEAT // 2)  # the player, waiting for the Start
    rec.record_input([0x80, 55, 0], t0 - BEAT)
    rec.locate(0, t0)
    rec.set_tempo(120.0, t0)
    rec.send([0x90, 60, 90], t0)
    rec.send([0x80, 60, 0], t0 + 5 * step)
    rec.send([0x90, 62, 90], t0 + 6 * step)  # step 6
    rec.send([0x80, 62, 0], t0 + 8 * step)
    # Stop at step 8, then a Continue from step 4 two seconds later: the same place in the next free bar
    t1 = t0 + 8 * step + 4 * BEAT
    rec.locate(4, t1)
    rec.send([0x90, 64, 90], t1)
    rec.send([0x80, 64, 0], t1 + step)
    # a Song Position far ahead (step 100) at once: the transport's own place
    t2 = t1 + 2 * step
    rec.locate(100, t2)
    rec.send([0x90, 65, 90], t2)
    rec.send([0x80, 65, 0], t2 + step)
    rec.close()
    mid = mido.MidiFile(path)
    bar = 4 * 480
    on = [(t, n) for t, kind, _, n in notes(track(mid, "melody")) if kind == "note_on"]
    # bar 2 (tick 1920) had step 0; the Continue's step 4 goes 4 steps into bar 4 (bar 3 had gone by), and from
    # there on step 0 of the transport is bar 4's line
    assert on == [(bar, 60), (bar + 6 * 120, 62), (3 * bar + 4 * 120, 64), (3 * bar + 100 * 120, 65)]
    assert notes(track(mid, PLAYER_TRACK))[0] == (bar - 720, "note_on", 0, 55)
    assert [(m.program, m.time) for m in track(mid, "melody") if m.type == "program_change"] == [(5, 0)]
    tempi = [round(mido.tempo2bpm(m.tempo)) for m in mid.tracks[0] if m.type == "set_tempo"]
    assert tempi == [120]


def test_a_first_step_mid_bar_starts_the_file_at_its_bar_line(tmp_path: Path) -> None:
    """A recording located first at step 6 (started over OSC mid-bar, or a Continue) puts it at 6 steps into
    bar 1; what came just before it (the rest of the step before) stays before it, on the same grid."""
    path = tmp_path / "midbar.mid"
    step = BEAT // 4
    rec = RecorderSink(path, 120.0, track_names={0: "melody"})
    rec.send([0x90, 60, 90], 50 * BEAT - step // 2)  # a swung note of step 5
    rec.locate(6, 50 * BEAT)
    rec.send([0x80, 60, 0], 50 * BEAT)
    rec.send([0x90, 62, 90], 50 * BEAT + 2 * step)
    rec.close()
    assert notes(track(mido.MidiFile(path), "melody")) == [
        (660, "note_on", 0, 60),
        (720, "note_off", 0, 60),
        (960, "note_on", 0, 62),
        (960, "note_off", 0, 62),  # sounding at close: released at the last time
    ]


def test_a_note_just_before_the_first_bar_line_needs_no_pickup_bar(tmp_path: Path) -> None:
    """Humanized a few ms early, the first step's note goes to tick 0 (no empty bar before the take)."""
    path = tmp_path / "early.mid"
    rec = RecorderSink(path, 120.0, track_names={0: "melody"})
    rec.send([0x90, 60, 90], 10 * BEAT - 5_000_000)
    rec.locate(0, 10 * BEAT)
    rec.send([0x80, 60, 0], 10 * BEAT + BEAT // 4)
    rec.close()
    assert notes(track(mido.MidiFile(path), "melody")) == [(0, "note_on", 0, 60), (120, "note_off", 0, 60)]

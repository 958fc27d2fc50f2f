"""The drummer: channel 10 in every meter, variation, fills and crashes, density, sections (real ONNX renders)."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import mido
import pytest

from rtgen import contract as ct
from rtgen.arrange.voicing import Voicer
from rtgen.cli import main
from rtgen.config import Config, PartConfig, PartsConfig
from rtgen.generation.engine import Params, Step
from rtgen.generation.model import Model
from rtgen.offline.render import TICKS_PER_STEP, render_steps
from rtgen.patterns import drums

KICKS = {35, 36}
SNARES = {38, 40}
HATS = {42, 44, 46}
CRASHES = {49, 57}
TOMS = {41, 43, 45, 47, 48, 50}
METERS = ("4/4", "3/4", "2/4", "6/8", "9/8")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model_factory import make_random_model

    return make_random_model(tmp_path_factory.mktemp("models") / "random", hidden=32, layers=1, seed=0)


def drum_hits(mid: mido.MidiFile, bar_steps: int) -> dict[int, list[tuple[int, int]]]:
    """bar -> [(step in bar, key)] of the note-ons on channel 10 (index 9)."""
    out: dict[int, list[tuple[int, int]]] = {}
    for track in mid.tracks:
        now = 0
        for msg in track:
            now += msg.time
            if msg.type == "note_on" and msg.velocity > 0 and msg.channel == 9:
                step = round(now / TICKS_PER_STEP)
                out.setdefault(step // bar_steps, []).append((step % bar_steps, msg.note))
    return out


def assert_paired(mid: mido.MidiFile) -> None:
    """Every note-on has its own note-off before the key is struck again, and nothing is left sounding."""
    for track in mid.tracks:
        on: set[tuple[int, int]] = set()
        for msg in track:
            key = (getattr(msg, "channel", -1), getattr(msg, "note", -1))
            if msg.type == "note_on" and msg.velocity > 0:
                assert key not in on, f"{track.name}: {key} struck again before its note-off"
                on.add(key)
            elif msg.type in ("note_on", "note_off"):
                assert key in on, f"{track.name}: note-off without a note-on {key}"
                on.remove(key)
        assert not on, f"{track.name}: left sounding {sorted(on)}"


def render(model_dir: Path, out: Path, *extra: str) -> mido.MidiFile:
    assert main(["render", "--model", str(model_dir), "--out", str(out), *extra]) == 0
    return mido.MidiFile(str(out))


@pytest.mark.parametrize("meter", METERS)
def test_drums_on_channel_10_in_every_meter(model_dir: Path, tmp_path: Path, meter: str) -> None:
    bar_steps = ct.TimeSignature.parse(meter).bar_steps
    mid = render(model_dir, tmp_path / "d.mid", "--bars", "17", "--time-signature", meter, "--seed", "4")
    names = [next(m.name for m in t if m.type == "track_name") for t in mid.tracks]
    assert "drums" in names
    drum_track = mid.tracks[names.index("drums")]
    assert {m.channel for m in drum_track if m.type == "note_on"} == {9}
    assert [m.program for m in drum_track if m.type == "program_change"] == [0]  # the standard kit
    assert_paired(mid)
    bars = drum_hits(mid, bar_steps)
    assert sorted(bars) == list(range(17))
    for bar, hits in bars.items():
        keys = {k for _, k in hits}
        assert keys & KICKS and keys & SNARES, f"{meter} bar {bar}: no kick or snare in {sorted(keys)}"
        if bar % 8 != 7:  # a fill may take the hats' place at the end of a phrase
            assert keys & HATS or keys & {51}, f"{meter} bar {bar}: no hats or ride"
    assert any(set(bars[b]) != set(bars[b + 1]) for b in range(16)), "every bar the same: a loop, not a drummer"
    assert len({frozenset(hits) for hits in bars.values()}) >= 6, f"{meter}: too little variation"
    beat = ct.TimeSignature.parse(meter).beat_steps
    for bar in (7, 15):  # the last bar of each 8-bar phrase: a fill into the next
        last = [k for p, k in bars[bar] if p >= bar_steps - 2 * beat]
        assert set(last) & TOMS or Counter(last)[38] >= 3, f"{meter} bar {bar}: no fill in {bars[bar]}"
    for bar in (0, 8, 16):  # the downbeat after it (and the first): crash and kick
        down = {k for p, k in bars[bar] if p == 0}
        assert down & CRASHES and down & KICKS, f"{meter} bar {bar}: downbeat {sorted(down)}"
    for bar in set(range(17)) - {0, 8, 16}:
        assert not {k for p, k in bars[bar] if p == 0} & CRASHES, f"{meter} bar {bar}: a crash out of place"
    for bar in set(range(17)) - {7, 15}:
        assert not {k for _, k in bars[bar]} & TOMS, f"{meter} bar {bar}: toms outside a fill"


def test_density_drives_the_drums_and_the_seed_fixes_them(model_dir: Path) -> None:
    cfg = Config()
    model = Model.load(model_dir)

    def drum_count(density: float, seed: int = 0) -> tuple[int, list[tuple[int, int]]]:
        c = cfg.replace("generation", density=density)
        r = render_steps(model, c, 16, seed)
        evs = [(t, e.pitch) for t, _, e in r.events if e.part == "drums" and e.on]
        return r.notes["drums"], evs

    sparse, a = drum_count(0.3)
    normal, _ = drum_count(1.0)
    busy, _ = drum_count(2.0)
    assert sparse < normal < busy, (sparse, normal, busy)
    assert drum_count(0.3)[1] == a  # same seed, same drums
    assert drum_count(0.3, seed=1)[1] != a


def _step(i: int, bar_steps: int = 16, beat_steps: int = 4) -> Step:
    bar, pos = divmod(i, bar_steps)
    return Step(i, bar, pos, ct.CHORD_HOLD, ct.CHORD_NC, ct.MEL_REST, 80, bar_steps, beat_steps)


def _drum_parts(**drums_changes: object) -> PartsConfig:
    off = PartConfig(enabled=False)
    return PartsConfig(
        melody=off, chords=off, bass=off, drums=dataclasses.replace(PartsConfig().drums, **drums_changes)
    )


def test_swing_and_humanize_apply_to_the_drums() -> None:
    v = Voicer(_drum_parts(), swing=0.4, humanize_ms=6.0, seed=2)
    events = [(s, e) for s in map(_step, range(64)) for e in v.voice(s, Params(density=2.0))]
    assert events and all(e.channel == 9 and e.part == "drums" for _, e in events)
    assert all(e.step_offset == (0.4 if s.position % 2 else 0.0) for s, e in events)
    assert all(abs(e.ms_offset) <= 12.0 for _, e in events) and any(e.ms_offset for _, e in events)
    on_odd = [e for s, e in events if e.on and s.position % 2]
    assert on_odd, "busy hats play the off sixteenths"
    # each hit lasts one step: its note-off comes at the next step, before any re-strike of the key
    sounding: set[int] = set()
    for _, e in events:
        if e.on:
            assert e.pitch not in sounding
            sounding.add(e.pitch)
        else:
            sounding.remove(e.pitch)


def test_velocity_scale_and_kit_channel_follow_the_part() -> None:
    v = Voicer(_drum_parts(channel=11, velocity_scale=0.5), seed=0)
    ons = [e for s in map(_step, range(32)) for e in v.voice(s, Params()) if e.on]
    assert ons and {e.channel for e in ons} == {10}
    assert max(e.velocity for e in ons) <= 64


def test_a_section_end_cues_a_fill_and_a_section_start_counts_phrases_from_there() -> None:
    v = Voicer(_drum_parts(), seed=5)
    bars: dict[int, set[tuple[int, int]]] = {}
    for i in range(16 * 12):
        s = _step(i)
        evs = v.voice(s, Params(), section_start=s.bar == 3, section_end=s.bar == 2)
        bars.setdefault(s.bar, set()).update((s.position, e.pitch) for e in evs if e.on)
    fill_bars = sorted(
        b for b, hits in bars.items() if {k for _, k in hits} & TOMS or Counter(k for p, k in hits if p >= 12)[38] >= 3
    )
    crash_bars = sorted(b for b, hits in bars.items() if {k for p, k in hits if p == 0} & CRASHES)
    # the section ends in bar 2 (cued), the next starts in bar 3: its phrase ends in bar 10, not bar 7
    assert 2 in fill_bars and 10 in fill_bars and 7 not in fill_bars
    assert crash_bars == [0, 3, 11]


def test_meters_without_patterns_get_a_plain_groove() -> None:
    d = drums.Drummer(0)
    for meter in ("5/4", "7/8", "12/8"):
        bar_steps, beat_steps = drums.meter_of(meter)
        keys = {k for bar in range(8) for p in range(bar_steps) for k, _ in d.hits(bar, p, bar_steps, beat_steps, 1.0)}
        assert keys & KICKS and keys & SNARES and keys & HATS, meter


def test_the_library_is_data_and_bad_patterns_are_refused() -> None:
    lib = drums.library()
    for meter in METERS:
        m = drums.meter_of(meter)
        assert lib.grooves[m] and [f for f in lib.fills[m] if not f.short], meter
    assert "backbeat" in lib.styles and lib.styles[0] == "auto"
    good = {"groove": [{"meter": "2/4", "style": "x", "kick": "x...x..."}]}
    assert drums.parse_library(good).grooves[(8, 4)][0].lines == (("kick", "x...x..."),)
    for bad, says in (
        ({"groove": [{"meter": "2/4", "kick": "x...x.."}]}, "groove[0].kick: expected a string of 8 steps"),
        ({"groove": [{"meter": "2/4", "kick": "x...x..z"}]}, "unknown symbols 'z'"),
        ({"groove": [{"meter": "2/4", "cowbell2": "x...x..."}]}, "unknown instrument 'cowbell2'"),
        ({"groove": [{"meter": "2/4", "kick": "x...x...", "hat_busy": "xxxxxxxx"}]}, "hat_sparse/hat_busy without"),
        ({"fill": [{"meter": "2/4", "start": 8, "snare": ""}]}, "fill[0].start must be in range 0..7"),
    ):
        with pytest.raises(ValueError, match=says.replace("[", r"\[").replace("]", r"\]")):
            drums.parse_library(bad)


def test_drum_style_restricts_the_grooves_and_is_checked() -> None:
    ride = drums.Drummer(1, style="ride")
    keys = {k for bar in range(16) for p in range(16) for k, _ in ride.hits(bar, p, 16, 4, 1.0)}
    assert 51 in keys and 42 not in keys  # the ride groove, never the hi-hat grooves
    with pytest.raises(ValueError, match="unknown drum style 'disco'; allowed: auto, backbeat"):
        ride.set_style("disco")

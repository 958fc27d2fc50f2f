"""Band mode offline: the left hand's chords in, bass, drums and comping out; the arranger controls on bar lines.

The performer is driven step by step (as the daemon's loop drives it) with what the player's hands did; the
JACK end-to-end test is in ``tests/test_band_jack.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from model_factory import make_random_model

from rtgen import contract as ct
from rtgen.arrange.performer import Performer
from rtgen.arrange.voicing import NoteEvent, Voicer
from rtgen.config import Config
from rtgen.generation.conductor import BAND_CONTROLS, Band, Heard, make_conductor, needs_harmoniser
from rtgen.generation.engine import Engine, Params
from rtgen.generation.model import Model
from rtgen.timing.transport import Position, Transport

BAR = 16
CHANGES = {0: "C", 16: "F", 24: "G", 40: "Am", 56: "C"}
"""The left hand's chords by the step it strikes them (some on a bar line, some mid-bar)."""


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Model:
    return Model.load(make_random_model(tmp_path_factory.mktemp("models") / "random", seed=3))


def _band(model: Model) -> tuple[Performer, Band]:
    cfg = Config()
    band = make_conductor("band")
    assert isinstance(band, Band)
    return Performer(Engine(model, Params(), seed=1), Voicer(cfg.parts, seed=1), band, cfg.parts), band


def _heard(step: int, changes: dict[int, str]) -> Heard:
    """The right hand strikes a note every beat; the left hand's chord is struck at the steps of ``changes``."""
    melody = ct.melody_note_on(72 + step % 5) if step % 4 == 0 else ct.MEL_HOLD
    struck = ct.Chord.parse(changes[step]).token if step in changes else ct.CHORD_HOLD
    held = [tok for s, tok in ((s, ct.Chord.parse(c).token) for s, c in changes.items()) if s <= step]
    return Heard(melody=melody, velocity=80, left=held[-1] if held else ct.CHORD_NC, left_struck=struck)


Played = list[tuple[Position, list[NoteEvent]]]


def _play(model: Model, steps: int, changes: dict[int, str] = CHANGES,
          before: Callable[[Band, Position, int], None] | None = None) -> Played:  # fmt: skip
    perf, band = _band(model)
    tr = Transport()
    out = []
    for s in range(steps):
        if before is not None:
            before(band, tr.peek(), s)
        pos = tr.advance()
        _, events = perf.perform(pos, Params(), _heard(s, changes))
        out.append((pos, events))
    return out


def _sounding_by_step(played: Played) -> list[dict[str, set[int]]]:
    """The pitches each part has sounding after each step's events."""
    now: dict[str, set[int]] = {"chords": set(), "bass": set(), "drums": set(), "melody": set()}
    out = []
    for _, events in played:
        for e in events:
            (now[e.part].add if e.on else now[e.part].discard)(e.pitch)
        out.append({k: set(v) for k, v in now.items()})
    return out


def test_band_plays_the_left_hands_chords_and_never_the_melody(model: Model) -> None:
    assert not needs_harmoniser("band")
    played = _play(model, 64)
    assert not any(e.part == "melody" for _, ev in played for e in ev), "the player's melody is never played back"
    sounding = _sounding_by_step(played)
    chord_at = {s: c for s, c in CHANGES.items()}
    current = None
    for s in range(64):
        current = chord_at.get(s, current)
        chord = ct.Chord.parse(current or "C")
        pcs = {(chord.root + i) % 12 for i in chord.intervals}
        assert {p % 12 for p in sounding[s]["chords"]} <= pcs, (s, current, sounding[s]["chords"])
        if s in CHANGES:  # the bass takes the new root at the step the chord is struck
            assert {p % 12 for p in sounding[s]["bass"]} == {chord.root}, (s, current, sounding[s]["bass"])
    assert any(sounding[s]["drums"] for s in range(64))


def test_break_is_one_bar_of_silence_from_the_next_bar_line(model: Model) -> None:
    def cue(band: Band, nxt: Position, s: int) -> None:
        if s == 21:  # mid-bar 1: the break lands on bar 2
            assert band.cue("break", nxt) == 2

    played = _play(model, 64, before=cue)
    sounding = _sounding_by_step(played)
    for s, (pos, events) in enumerate(played):
        if pos.bar == 2:
            assert not any(e.on for e in events), (s, events)
            assert not any(sounding[s].values()), "every note released with its note-off on the bar line"
        if s == 2 * BAR - 1:
            assert any(sounding[s].values()), "the band plays up to the bar line"
    assert any(e.on for e in played[3 * BAR][1]), "and goes on on the bar line after the break"
    assert {e.part for e in played[3 * BAR][1] if e.on} >= {"bass", "chords"}


def test_fill_plays_in_the_next_bar_only(model: Model) -> None:
    def cue(band: Band, nxt: Position, s: int) -> None:
        if s == 37:
            assert band.cue("fill", nxt) == 3

    plain = _play(model, 80)
    filled = _play(model, 80, before=cue)
    differ = [s for s in range(80) if [e for e in plain[s][1] if e.part == "drums"]
              != [e for e in filled[s][1] if e.part == "drums"]]  # fmt: skip
    assert differ, "the fill changes the drums"
    assert min(differ) >= 3 * BAR, "nothing changes before the bar line"
    assert any(s < 4 * BAR for s in differ), "the fill is in the cued bar (the drummer's draws differ after it)"


def test_ending_cadences_on_the_last_chord_and_stops_until_the_next_chord(model: Model) -> None:
    def cue(band: Band, nxt: Position, s: int) -> None:
        if s == 41:
            assert band.cue("ending", nxt) == 3

    changes = {s: c for s, c in CHANGES.items() if s < 48} | {72: "F"}
    played = _play(model, 96, changes, before=cue)
    sounding = _sounding_by_step(played)
    # the ending bar (3), a cadence on Am (struck at step 40): E7 on its downbeat, Am from the middle, the bass on
    # each root where it starts, the last held
    bass_ons = [(s, e.pitch % 12) for s in range(3 * BAR, 4 * BAR) for e in played[s][1] if e.part == "bass" and e.on]
    assert bass_ons == [(3 * BAR, 4), (3 * BAR + BAR // 2, 9)], bass_ons
    comping = sorted({e.pitch % 12 for e in played[3 * BAR][1] if e.part == "chords" and e.on})
    assert set(comping) <= set(ct.Chord.parse("E7").pitch_classes), comping
    # then silence, every note released, until the left hand strikes F at step 72
    for s in range(4 * BAR, 72):
        assert not any(e.on for e in played[s][1]), s
        assert not any(sounding[s].values()), s
    assert {e.part for e in played[72][1] if e.on} >= {"bass", "chords"}, "the band starts with the player's chord"


def test_sync_start_waits_for_the_first_chord(model: Model) -> None:
    def cue(band: Band, nxt: Position, s: int) -> None:
        if s == 0:
            band.cue("sync", nxt)

    played = _play(model, 40, {21: "G", 30: "C"}, before=cue)
    assert not any(e.on for _, ev in played[:21] for e in ev), "nothing before the first chord, drums neither"
    assert {e.part for e in played[21][1] if e.on} >= {"bass", "chords"}, "the band starts on the chord's step"


def test_cue_refuses_an_unknown_control() -> None:
    with pytest.raises(ValueError, match="break"):
        Band().cue("solo", Position(0, 0, 0))
    assert "break" in BAND_CONTROLS


def _drums_by_bar(played: Played) -> dict[int, list[tuple[int, int, int]]]:
    out: dict[int, list[tuple[int, int, int]]] = {}
    for pos, events in played:
        out.setdefault(pos.bar, []).extend(
            (pos.position, e.pitch, e.velocity) for e in events if e.part == "drums" and e.on
        )
    return out


def test_variation_b_changes_groove_and_density_from_the_next_bar_line(model: Model) -> None:
    def cue(band: Band, nxt: Position, s: int) -> None:
        if s == 2 * BAR + 5:
            assert band.cue("variation_b", nxt) == 3
            assert band.cued == {3: "variation_b"}
        if s == 5 * BAR + 9:
            assert band.cue("variation_a", nxt) == 6

    plain = _drums_by_bar(_play(model, 8 * BAR))
    varied = _drums_by_bar(_play(model, 8 * BAR, before=cue))
    assert all(plain[b] == varied[b] for b in range(3)), "A up to the bar line"
    assert all(plain[b] != varied[b] for b in range(3, 6)), "B from the bar line"
    assert sum(len(varied[b]) for b in range(3, 6)) > sum(len(plain[b]) for b in range(3, 6)), "B is busier"
    assert all(plain[b] == varied[b] for b in range(6, 8)), "A again from the next bar line"


def test_intro_starts_a_waiting_band_with_sparse_drums_and_a_fill(model: Model) -> None:
    def cue(band: Band, nxt: Position, s: int) -> None:
        if s == 0:
            band.cue("sync", nxt)
        if s == 5:
            assert band.cue("intro", nxt) == 1
            assert band.cued == {1: "intro", 2: "intro"}

    played = _play(model, 5 * BAR, {3 * BAR: "C", 4 * BAR: "F"}, before=cue)
    bars = _drums_by_bar(played)
    plain = _drums_by_bar(_play(model, 5 * BAR, {0: "C"}))
    assert not bars.get(0), "waiting: nothing before the intro's bar line"
    assert bars[1] and len(bars[1]) < len(plain[1]), "the intro's drums are sparse"
    crash = [k for p, k, _ in bars[3] if p == 0]
    assert 49 in crash or 57 in crash, "a fill in the intro's last bar: a crash on the bar line after it"
    assert not any(e.part in ("bass", "chords") for _, ev in played[: 3 * BAR] for e in ev), "no chord yet"
    assert {e.part for e in played[3 * BAR][1] if e.on} >= {"bass", "chords"}, "the left hand's chord comes in"


def test_the_ending_cadences_on_a_chord_struck_on_its_downbeat(model: Model) -> None:
    def cue(band: Band, nxt: Position, s: int) -> None:
        if s == 41:
            band.cue("ending", nxt)

    played = _play(model, 4 * BAR, {0: "C", 16: "G", 48: "F"}, before=cue)  # F struck on the ending's line
    bass_ons = [(s, e.pitch % 12) for s in range(3 * BAR, 4 * BAR) for e in played[s][1] if e.part == "bass" and e.on]
    assert bass_ons == [(3 * BAR, 0), (3 * BAR + BAR // 2, 5)], "C7 under the player's F, then F"


def test_a_stop_forgets_the_cues_but_not_sync_start() -> None:
    band = Band()
    band.cue("fill", Position(5, 0, 5))
    band.cue("variation_b", Position(5, 0, 5))
    band.cue("sync", Position(5, 0, 5))
    band.cue("break", Position(20, 1, 4))
    assert band.cued == {1: "variation_b", 2: "break"}
    band.forget_cues()
    assert band.cued == {} and band.waiting
    assert band.plan(Position(32, 2, 0)).sync


def test_the_ending_in_three_four_resolves_on_the_second_beat() -> None:
    band = Band()
    band.heard(Position(0, 0, 0, 12, 4), Heard(left=ct.Chord.parse("G").token, left_struck=ct.Chord.parse("G").token))
    band.cue("ending", Position(1, 0, 1, 12, 4))
    plans = [band.plan(Position(12 + p, 1, p, 12, 4)) for p in range(12)]
    cadence = [(p, plan.dominant, plan.chord) for p, plan in enumerate(plans) if plan.dominant or plan.chord]
    assert cadence == [(0, True, ct.Chord.parse("G").token), (4, False, ct.Chord.parse("G").token)]
    assert plans[0].steering(Heard()).chord == ct.Chord.parse("D7").token

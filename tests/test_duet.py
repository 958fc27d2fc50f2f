"""Duet's answer logic with the shipped polyphonic model (``exported_models/chorale``, real onnxruntime)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rtgen import contract as ct
from rtgen.arrange.performer import Performer
from rtgen.arrange.voicing import Voicer
from rtgen.config import CallResponseConfig, Config, config_from_dict
from rtgen.errors import ModelError
from rtgen.generation.conductor import Duet, Heard, make_conductor
from rtgen.generation.duet import MAX_ANSWER_BARS, PolyNotes, frame_pitches, shift_to_c
from rtgen.generation.engine import Engine, Params
from rtgen.generation.model import Model
from rtgen.generation.poly import PolyModel
from rtgen.input.tracker import SILENT_FRAME, StepFrame
from rtgen.live.polyload import load_poly, model_folders
from rtgen.timing.transport import Position
from tests.duet_phrase import BEATS, D_MAJOR, phrase_frames

ROOT = Path(__file__).resolve().parents[1]
CHORALE = ROOT / "exported_models" / "chorale"
PARAMS = Params()


@pytest.fixture(scope="module")
def chorale() -> PolyModel:
    return PolyModel.load(CHORALE)


def pos(k: int) -> Position:
    return Position(k, k // 16, k % 16, 16, 4)


def run_phrase(duet: Duet, frames: list[StepFrame], start: int = 0) -> tuple[int, list[PolyNotes]]:
    """Feed ``frames`` from step ``start``, then silence until the answer ends; returns the step the answer was
    triggered at and the notes played at every step after the phrase."""
    notes = []
    k = start
    for f in frames:
        duet.heard(pos(k), Heard(poly=f))
        notes.append(duet.play(pos(k), PARAMS))
        k += 1
    assert not any(notes), "no answer while the player plays"
    notes = []
    triggered = None
    for _ in range(16 * (MAX_ANSWER_BARS + 2)):
        was = duet.answering
        if not was:
            duet.heard(pos(k), Heard(poly=SILENT_FRAME))
        if duet.answering and triggered is None:
            triggered = k
        notes.append(duet.play(pos(k), PARAMS))
        k += 1
        if was and not duet.answering:
            break
    assert triggered is not None
    return triggered, notes


def test_a_frame_holds_what_sounds_on_its_beat_or_through_most_of_it() -> None:
    f = StepFrame
    held = [f((60, 64), (60, 64)), f((), (60, 64)), f((67,), (60, 67)), f((), (60, 67))]
    assert frame_pitches(held) == {60, 64}  # 67 sounds in only half the frame, after its beat
    late = [f((), ()), f((62,), (62,)), f((), (62,)), f((), (62,))]
    assert frame_pitches(late) == {62}  # struck a step late but held through most of it
    passing = [f((), ()), f((71,), (71,)), f((), ()), f((72,), (72,))]
    assert frame_pitches(passing) == {71, 72}  # only short notes: the longest stand for the frame
    assert frame_pitches([]) == frozenset() and frame_pitches([SILENT_FRAME] * 4) == frozenset()


def test_shift_to_c_takes_the_shorter_way() -> None:
    assert shift_to_c(None) == 0
    assert shift_to_c(ct.Key(2)) == -2 and shift_to_c(ct.Key(9, "minor")) == 3 and shift_to_c(ct.Key(6)) == -6


def test_the_answer_follows_the_silence_in_the_phrases_key_with_chords_held_and_every_note_released(
    chorale: PolyModel,
) -> None:
    duet = Duet(chorale, CallResponseConfig(silence_beats=1.0), seed=3)
    frames = phrase_frames()
    triggered, notes = run_phrase(duet, frames)
    assert duet.answered[0] == {50, 54, 57, 66} and len(duet.answered) == BEATS  # one frame per beat, both hands
    assert duet.key == ct.Key(2, "major") and duet.answers == 1
    assert triggered == len(frames) + 3  # the 4th silent step completes a beat of silence
    first = next(i for i, n in enumerate(notes) if n.ons)
    assert len(frames) + first <= len(frames) + 16  # within a bar of the phrase's end (here: on the next beat)
    assert (len(frames) + first) % 4 == 0  # on a frame (beat) boundary
    # the answer: as long as the phrase (8 frames of a beat), then everything is released
    sounding: set[int] = set()
    per_frame = []
    ons = offs = 0
    for n in notes:
        assert set(n.offs) <= sounding and not (set(n.ons) & (sounding - set(n.offs)))  # held notes are not struck
        sounding -= set(n.offs)
        sounding |= set(n.ons)
        ons += len(n.ons)
        offs += len(n.offs)
        if n.ons or n.offs:
            per_frame.append(frozenset(sounding))
    assert not sounding and ons == offs and not duet.answering
    frames_played = per_frame[:-1]  # the last change is the release
    assert len(frames_played) <= BEATS
    chords = sum(len(s) >= 2 for s in frames_played)
    assert chords >= 0.75 * len(frames_played)
    pitches = [p for s in frames_played for p in s]
    in_key = sum(p % 12 in D_MAJOR for p in pitches) / len(pitches)
    assert in_key >= 0.8, f"the answer is in D major (moved back from C): {in_key:.2f} of its notes in the scale"


def test_the_player_interrupts_the_answer_and_a_new_phrase_starts(chorale: PolyModel) -> None:
    duet = Duet(chorale, seed=1)
    frames = phrase_frames()
    k = 0
    for f in frames:
        duet.heard(pos(k), Heard(poly=f))
        duet.play(pos(k), PARAMS)
        k += 1
    sounding: set[int] = set()
    while not sounding:
        if not duet.answering:
            duet.heard(pos(k), Heard(poly=SILENT_FRAME))
        n = duet.play(pos(k), PARAMS)
        sounding |= set(n.ons)
        k += 1
    assert duet.interrupt() and not duet.answering and duet.phrase == []
    assert not duet.interrupt()  # once
    # the loop has released the notes already: forgotten, never released twice
    assert set(duet.release()) == sounding and duet.release() == ()
    duet.heard(pos(k), Heard(poly=frames[0]))
    assert not duet.play(pos(k), PARAMS)
    assert duet.phrase == [] and not duet.answering  # the new phrase's first frame is still being heard


def test_an_interrupted_answer_ends_its_notes_at_the_next_step_when_nobody_released_them(chorale: PolyModel) -> None:
    duet = Duet(chorale, seed=2)
    k = 0
    for f in phrase_frames():
        duet.heard(pos(k), Heard(poly=f))
        k += 1
    struck: set[int] = set()
    while not struck:
        if not duet.answering:
            duet.heard(pos(k), Heard(poly=SILENT_FRAME))
        struck |= set(duet.play(pos(k), PARAMS).ons)
        k += 1
    duet.interrupt()
    duet.heard(pos(k), Heard(poly=StepFrame((60,), (60,), 100)))
    assert set(duet.play(pos(k), PARAMS).offs) == struck


def test_answer_length_is_the_phrases_or_answer_bars(chorale: PolyModel) -> None:
    short = Duet(chorale, seed=0)
    frames = phrase_frames()[:4]  # one beat
    _, notes = run_phrase(short, frames)
    changes = [n for n in notes if n.ons or n.offs]
    assert 2 <= len(changes) <= 4 + 1  # at least one bar of frames (4), then the release
    fixed = Duet(chorale, CallResponseConfig(answer_bars=2), seed=0)
    run_phrase(fixed, phrase_frames())
    assert fixed.answer_left == 0 and fixed.answers == 1


def test_the_performer_plays_the_answer_on_the_chords_part_and_releases_it_on_a_mode_change(
    chorale: PolyModel,
) -> None:
    cfg = Config()
    engine = Engine(Model.load(cfg.model_path), PARAMS, seed=0)
    conductor = make_conductor("duet", poly=chorale, seed=0)
    assert isinstance(conductor, Duet)
    performer = Performer(engine, Voicer(cfg.parts, seed=0), conductor, cfg.parts)
    ch = cfg.parts.chords.channel - 1
    sounding: set[int] = set()
    for k, f in enumerate([*phrase_frames(), *[SILENT_FRAME] * 12]):
        plan = performer.plan(pos(k))
        _, events = performer.perform(pos(k), PARAMS, Heard(poly=f) if plan.reactive else Heard(), plan)
        for e in events:
            assert e.channel == ch and e.part == "chords"
            (sounding.add if e.on else sounding.discard)(e.pitch)
    assert len(sounding) >= 2  # a chord of the answer sounds
    offs = performer.set_conductor(make_conductor("accompany"))
    assert {e.pitch for e in offs if not e.on and e.channel == ch} == sounding


def test_duet_needs_a_polyphonic_model_and_names_the_chorale(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="chorale"):
        make_conductor("duet")
    cfg = config_from_dict({})
    with pytest.raises(ModelError, match="chorale"):
        load_poly(cfg, cfg.model_path, "duet")  # the default melody model cannot serve
    assert load_poly(cfg, None, "duet").path.resolve() == CHORALE.resolve()
    poly_cfg = cfg.with_model(str(CHORALE))
    engine_path, poly_path = model_folders(poly_cfg)
    assert poly_path == CHORALE.resolve() and engine_path == cfg.model_path  # --model chorale: the engine plays default

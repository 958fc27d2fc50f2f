"""Chorale mode without JACK: the voice-leading figures on hand-made progressions (each rule can fail), the
voicer's choice of voices, its key and register, its sampler on the shipped model, the mode's wiring (which
model serves which mode, ``rtgen models list``'s kinds)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, require

from rtgen import contract as ct
from rtgen.arrange.chorale import DRAWS, ChoraleVoicer, chorale_offline, faults, pick_voices
from rtgen.arrange.voiceleading import Counts, parallels, voice_leading, voicing_from_pitches
from rtgen.config import MODES, Config, check_model_for_mode, mode_model_kind
from rtgen.errors import ModelError
from rtgen.generation.conductor import Heard, make_conductor
from rtgen.library import read_meta
from rtgen.timing.transport import Position

CHORALE = REPO / "exported_models" / "chorale"
DEFAULT = REPO / "exported_models" / "default"


# --- the figures ---------------------------------------------------------------------------------------------------
def test_a_clean_progression_has_no_fault() -> None:
    # I - IV - V - I in C, contrary motion against the bass, no parallels, close spacing
    beats = [(72, 67, 64, 48), (72, 69, 65, 53), (71, 67, 62, 55), (72, 67, 64, 48)]
    f = voice_leading([beats])
    assert (f.changes, f.parallel_fifths, f.parallel_octaves, f.crossings, f.spacing) == (3, 0.0, 0.0, 0.0, 0.0)
    assert f.out_of_range == 0.0 and f.three_under == 100.0
    assert f.soprano_chord_tone == 100.0  # C over C E C, C over F A F, B over G D G, C over C E C


def test_parallel_fifths_octaves_overlap_spacing_and_range_are_counted() -> None:
    # tenor and bass a fifth apart both step up (C-G to D-A): one parallel fifth; soprano and bass in octaves
    # both leap (E-E to G-G): one parallel octave
    assert parallels((72, 64, 55, 48), (71, 65, 57, 50)) == (1, 0)
    assert parallels((76, 67, 60, 52), (79, 71, 62, 55)) == (0, 1)
    # contrary motion between two voices an octave apart is no parallel, nor is a voice holding
    assert parallels((72, 64, 55, 48), (74, 62, 53, 47)) == (0, 0)
    assert parallels((72, 67, 60, 48), (72, 67, 62, 55)) == (0, 0)
    beats = [(72, 64, 55, 48), (71, 65, 57, 50), (72, 64, 60, 48)]
    f = voice_leading([beats])
    assert f.changes == 2 and f.parallel_fifths == 50.0 and f.parallel_octaves == 0.0  # one in two changes
    # overlap: the tenor moves above where the alto was
    g = Counts().add([(76, 64, 60, 48), (77, 65, 66, 50)]).figures()
    assert g.crossings == 100.0
    # spacing: more than an octave from soprano to alto; a bass under E2 out of range
    h = voice_leading([[(81, 67, 60, 38)]])
    assert h.spacing == 100.0 and h.out_of_range_by_voice["bass"] == 100.0
    assert h.out_of_range == pytest.approx(100 / 3, abs=0.01)


def test_voices_from_a_frame() -> None:
    assert voicing_from_pitches([60, 72, 64, 67]) == (72, 67, 64, 60)
    assert voicing_from_pitches([72, 64, 48]) == (72, 64, None, 48)
    assert voicing_from_pitches([79, 72, 67, 64, 55, 48]) == (79, 72, 67, 48)  # the ones between tenor and bass go
    # the voicer's pick: below the soprano only; fewer than three: alto and bass, then bass alone
    assert pick_voices([84, 72, 67, 64, 60, 48], 72) == (67, 64, 48)
    assert pick_voices([72, 64, 48], 72) == (64, None, 48)
    assert pick_voices([72, 48], 72) == (None, None, 48)
    assert pick_voices([72], 72) == (None, None, None)


def test_faults_rank_a_missing_voice_worst() -> None:
    before = (72, 67, 64, 48)
    assert faults(before, (72, 69, 65, 53)) == 0
    assert faults(before, (74, 67, 65, 50)) == 1  # soprano and bass C-C to D-D: parallel octaves
    assert faults(before, (72, 69, None, 53)) == 2


# --- the voicer on the shipped model ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def chorale_model():  # type: ignore[no-untyped-def]
    require((CHORALE / "meta.json").is_file(), f"the shipped chorale model at {CHORALE}")
    from rtgen.generation.poly import PolyModel

    return PolyModel.load(CHORALE)


def voicer(model, seed: int = 0) -> ChoraleVoicer:  # type: ignore[no-untyped-def]
    return ChoraleVoicer(model.stepper(seed, DRAWS), low_pitch=model.low_pitch, n_pitches=model.n_pitches)


TUNE_G = [67, 67, 69, 71, 71, 69, 67, 66, 67, 74, 72, 71, 69, 69, 67, 67]  # a hymn tune in G major
"""One soprano pitch a beat."""


def test_the_voicer_sings_three_voices_under_a_tune_in_its_key(chorale_model) -> None:  # type: ignore[no-untyped-def]
    v = voicer(chorale_model)
    out = chorale_offline(v, TUNE_G, temperature=0.9)
    beats = [(s, *x) for s, x in zip(TUNE_G, out, strict=True)]
    assert all(p is not None and p < s for s, *lower in beats for p in lower), beats
    assert v.key == ct.Key(7, "major") and v.shift % 12 == 5  # G up a fourth (or down a fifth) is C
    f = voice_leading([beats])
    assert f.three_under == 100.0 and f.parallel_fifths + f.parallel_octaves <= 10.0, (f, beats)
    # in G major: the voices' pitch classes mostly the scale's
    g_major = {7, 9, 11, 0, 2, 4, 6}
    pcs = [p % 12 for _, *lower in beats for p in lower]
    assert sum(pc in g_major for pc in pcs) >= 0.9 * len(pcs), beats


def test_the_voicer_holds_a_voice_that_keeps_its_pitch_and_releases_on_a_rest(chorale_model) -> None:  # type: ignore[no-untyped-def]
    v = voicer(chorale_model)
    bar = 16
    onset = Heard(melody=ct.melody_note_on(72), velocity=90, pitch=72)
    held = Heard(melody=ct.MEL_HOLD, pitch=72)
    ev0 = v.voice(Position(0, 0, 0, bar, 4), onset)
    assert [e.on for e in ev0] == [True] * 3 and all(e.velocity == 90 and e.channel == 1 for e in ev0)
    assert v.voice(Position(1, 0, 1, bar, 4), held) == []  # between beats the voices hold
    ev4 = v.voice(Position(4, 0, 4, bar, 4), held)  # the next beat: one model step; a kept pitch is not struck
    struck = {e.pitch for e in ev4 if e.on}
    kept = {e.pitch for e in ev0} & {p for p in v.voices if p is not None}
    assert not struck & kept
    off = v.voice(Position(8, 0, 8, bar, 4), Heard())
    sounding = {e.pitch for e in ev0 + ev4 if e.on} - {e.pitch for e in ev4 if not e.on}
    assert all(not e.on for e in off) and {e.pitch for e in off} == sounding
    assert v.voices == (None, None, None)


def test_a_note_struck_off_the_beat_brings_the_silent_voices_in(chorale_model) -> None:  # type: ignore[no-untyped-def]
    v = voicer(chorale_model)
    ev = v.voice(Position(2, 0, 2, 16, 4), Heard(melody=ct.melody_note_on(70), velocity=80, pitch=70))
    assert sum(e.on for e in ev) == 3
    assert v.voice(Position(3, 0, 3, 16, 4), Heard(melody=ct.melody_note_on(72), velocity=80, pitch=72)) == []


# --- the mode's wiring --------------------------------------------------------------------------------------------
def test_chorale_is_a_mode_that_plays_a_polyphonic_model() -> None:
    require((CHORALE / "meta.json").is_file() and (DEFAULT / "meta.json").is_file(), "the shipped models")
    assert "chorale" in MODES and mode_model_kind("chorale") == "poly" and mode_model_kind("accompany") == "melody"
    plan = make_conductor("chorale").plan(Position(0, 0, 0, 16, 4))
    assert plan.chorale and plan.reactive and plan.observe_melody and not plan.voiced
    check_model_for_mode("chorale", read_meta(CHORALE), "chorale")
    with pytest.raises(ModelError, match=r"mode chorale plays a polyphonic model .*default.*--model chorale"):
        check_model_for_mode("chorale", read_meta(DEFAULT), "default")
    check_model_for_mode("accompany", read_meta(CHORALE), "chorale")  # the engine plays default until a switch
    cfg = Config()
    assert cfg.with_model(str(CHORALE), mode="chorale").model_path == CHORALE.resolve()
    with pytest.raises(ModelError, match="chorale"):
        cfg.with_model(str(DEFAULT), mode="chorale")


def test_run_refuses_the_default_model_for_chorale_naming_chorale(capsys: pytest.CaptureFixture[str]) -> None:
    from rtgen.cli import main

    code = main(["run", "--mode", "chorale", "--model", "default", "--no-midi", "--no-synth", "--duration", "0.1"])
    err = capsys.readouterr().err
    assert code != 0 and "--model chorale" in err, err


def test_models_list_shows_each_models_kind(capsys: pytest.CaptureFixture[str]) -> None:
    from rtgen.cli import main

    assert main(["models", "list", "--json"]) == 0
    kinds = {m["name"]: m["kind"] for m in json.loads(capsys.readouterr().out)["models"]}
    assert kinds["default"] == "melody" and kinds["chorale"] == "poly"
    assert main(["models", "list"]) == 0
    text = capsys.readouterr().out
    assert "KIND" in text.splitlines()[0] and any(
        ln.split()[:3] == ["chorale", "shipped", "poly"] for ln in text.splitlines()
    )


def test_chorale_eval_figures_on_two_pieces(tmp_path: Path) -> None:
    """rtgen-train chorale-eval on the JSB test split's first two pieces: both sides counted, the JSON written."""
    from conftest import SHARED_DATA

    jsb = SHARED_DATA / "poly_music" / "JSB_Chorales.mat"
    require(jsb.is_file(), f"the polyphonic benchmark at {jsb}")
    from training.cli import main as train_main

    out = tmp_path / "chorale_eval.json"
    assert train_main(["chorale-eval", "--model", str(CHORALE), "--limit", "2", "--out", str(out)]) == 0
    figures = json.loads(out.read_text())
    for run in ("C", "random"):
        assert figures[run]["bach"]["beats"] == figures[run]["rtgen"]["beats"] > 50
        assert figures[run]["rtgen"]["three_under"] >= 90.0
    assert np.isfinite(figures["C"]["bach"]["nll_given_soprano"]["nll_per_frame"])


# --- the chorale style of the chords part -------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["autonomous", "accompany"])
def test_the_chorale_style_sings_the_chords_part_under_the_melody(chorale_model, mode: str) -> None:  # type: ignore[no-untyped-def]
    """The chords part in the ``chorale`` style: no rule voicing, the model's voices under the melody (rtgen's own
    in autonomous, the player's in accompany), on the chords part's channel."""
    require((DEFAULT / "meta.json").is_file(), "the shipped default model")
    from rtgen.arrange.performer import Performer, positions_from_bars
    from rtgen.arrange.voicing import Voicer
    from rtgen.config import with_style
    from rtgen.generation.engine import Engine, Params
    from rtgen.generation.model import Model

    cfg = with_style(Config(), "chords", "chorale")
    params = Params.from_config(cfg.generation)
    performer = Performer(Engine(Model.load(DEFAULT), params, seed=1), Voicer(cfg.parts, seed=1),
                          make_conductor(mode, cfg.accompany), cfg.parts)  # fmt: skip
    performer.chorale = voicer(chorale_model, seed=1)
    chords_ch = cfg.parts.chords.channel - 1
    sounding: set[int] = set()
    melody: int | None = None
    checked = 0
    for i, pos in enumerate(positions_from_bars([s % 16 for s in range(64)])):
        heard = Heard()
        if mode == "accompany" and i % 4 == 0:
            p = TUNE_G[i // 4 % len(TUNE_G)]
            heard = Heard(melody=ct.melody_note_on(p), velocity=80, pitch=p)
        elif mode == "accompany":
            p = TUNE_G[i // 4 % len(TUNE_G)]
            heard = Heard(melody=ct.MEL_HOLD, pitch=p)
        step, events = performer.perform(pos, params, heard)
        if mode == "accompany":
            melody = heard.pitch
        elif step.melody_token >= ct.MEL_NOTE_OFFSET:
            melody = ct.melody_pitch(step.melody_token)
        elif step.melody_token == ct.MEL_REST:
            melody = None
        for e in events:
            if e.channel == chords_ch:
                assert e.part == "chords"
                (sounding.add if e.on else sounding.discard)(e.pitch)
        if i % 4 == 0 and melody is not None:
            assert len(sounding) >= 2 and all(p < melody for p in sounding), (i, melody, sounding)
            checked += 1
    assert checked >= 8

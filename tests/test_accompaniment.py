"""Accompaniment evaluation: metrics and rule baselines on hand-made tunes, model accompanists on real tunes."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from rtgen import contract as C  # noqa: N812 (the project's short alias)
from rtgen.contract import Key, TimeSignature
from rtgen.generation.keys import estimate_key
from rtgen.generation.model import Model
from training import accompaniment as acc

H, R = C.MEL_HOLD, C.MEL_REST


def n(pitch: int) -> int:
    return C.melody_note_on(pitch)


def chord(name: str) -> int:
    return C.Chord.parse(name).token


FOUR_FOUR = TimeSignature(4, 4)


def make_tune(melody: list[int], chords: list[int], meter: TimeSignature = FOUR_FOUR) -> acc.Tune:
    """A tune starting on a bar line in one meter; ``chords`` are raw tokens (HOLD where nothing is struck)."""
    steps = len(melody)
    position = np.arange(steps) % meter.bar_steps
    bar_steps, beat_steps = acc.bar_meters(position, [meter])
    return acc.Tune(
        melody=np.array(melody, dtype=np.int64),
        velocity=np.full(steps, 5, dtype=np.int64),
        chord=np.array(chords, dtype=np.int64),
        position=position,
        phrase=(np.arange(steps) // meter.bar_steps) % C.PHRASE_BARS,
        bar_steps=bar_steps,
        beat_steps=beat_steps,
    )


SCALE = [60, 62, 64, 65, 67, 69, 71, 72]


def scale_tune() -> acc.Tune:
    """4 bars of 4/4: the C major scale up twice in quarter notes; human chords C | F | G | C, struck per bar."""
    melody: list[int] = []
    for i in range(16):
        melody += [n(SCALE[i % 8]), H, H, H]
    chords = []
    for name in ("C", "F", "G", "C"):
        chords += [chord(name)] + [C.CHORD_HOLD] * 15
    return make_tune(melody, chords)


# --- meters and strong beats -----------------------------------------------------------------------------
METERS = [
    ("4/4", [0, 8]), ("3/4", [0]), ("6/8", [0, 6]), ("2/4", [0]), ("9/8", [0]), ("2/2", [0, 8]),
    ("6/4", [0, 12]), ("3/2", [0]), ("12/8", [0, 12]),
]  # fmt: skip


@pytest.mark.parametrize(("meter", "strong"), METERS)
def test_strong_positions_by_meter(meter: str, strong: list[int]) -> None:
    ts = TimeSignature.parse(meter)
    tune = make_tune([n(60)] * (2 * ts.bar_steps), [C.CHORD_NC] + [C.CHORD_HOLD] * (2 * ts.bar_steps - 1), ts)
    assert np.flatnonzero(tune.strong).tolist() == strong + [ts.bar_steps + s for s in strong]


def test_bar_meters_follow_the_files_meters_and_partial_bars() -> None:
    # a full 6/8 pickup, two 6/8 bars, a 2/4 bar, a final bar cut short after 5 steps
    position = np.concatenate([np.arange(12), np.arange(12), np.arange(12), np.arange(8), np.arange(5)])
    bar_steps, beat_steps = acc.bar_meters(position, [TimeSignature(6, 8), TimeSignature(2, 4)])
    assert bar_steps.tolist() == [12] * 36 + [8] * 13
    assert beat_steps.tolist() == [6] * 36 + [4] * 13
    # a first bar that starts late takes its length from its last position
    late = np.concatenate([np.arange(6, 12), np.arange(12)])
    assert acc.bar_meters(late, [TimeSignature(3, 4)])[1].tolist() == [4] * 18
    # without the MIDI file, a 12-step bar can only be guessed as 3/4
    assert acc.bar_meters(np.arange(12), [])[1].tolist() == [4] * 12
    assert acc.guess_meter(12) == TimeSignature(3, 4)
    assert acc.guess_meter(18) == TimeSignature(9, 8)


# --- metrics ---------------------------------------------------------------------------------------------
def test_metrics_of_the_human_chords_on_the_scale() -> None:
    tune = scale_tune()
    # counted steps: beats 1 and 3 of each bar hold C E | G B | C E | G B
    assert np.flatnonzero(tune.counted).tolist() == [0, 8, 16, 24, 32, 40, 48, 56]
    m = acc.score([tune], [acc.human(tune)])
    assert m["hit"] == pytest.approx(3 / 8)  # C, E over C; G over the last C
    assert m["f1"] == 1.0
    assert m["changes_per_bar"] == 1.0  # N.C. -> C, F, G, C in 4 bars
    assert m["entropy_bits"] == pytest.approx(1.5)  # C twice, F and G once


def test_pitch_class_f1_and_entropy() -> None:
    f1 = acc.pc_f1([chord("C"), chord("C"), chord("G7"), C.CHORD_NC, C.CHORD_NC], [chord("C"), chord("Am"),
                 chord("G"), C.CHORD_NC, chord("C")])  # fmt: skip
    assert f1.tolist() == pytest.approx([1.0, 2 * 2 / 6, 2 * 3 / 7, 1.0, 0.0])
    assert acc.entropy_bits(Counter({1: 2, 2: 1, 3: 1})) == pytest.approx(1.5)
    assert acc.entropy_bits(Counter({7: 5})) == 0.0
    assert acc.entropy_bits(Counter({k: 1 for k in range(8)})) == pytest.approx(3.0)
    assert math.isnan(acc.entropy_bits(Counter()))
    changes = acc.chord_changes([C.CHORD_NC, chord("C"), chord("C"), chord("G"), C.CHORD_NC])
    assert changes.tolist() == [False, True, False, True, True]


def test_a_wrong_length_is_an_error() -> None:
    tune = scale_tune()
    with pytest.raises(ValueError, match="chords for 64 steps"):
        acc.score([tune], [acc.human(tune)[:10]])


# --- baselines -------------------------------------------------------------------------------------------
def test_rule_key_is_rtgens_key_finder_with_c_major_before_any_note() -> None:
    hist = np.zeros(12)
    hist[[0, 2, 4, 5, 7, 9, 11]] = [4, 2, 3, 2, 3, 1, 1]
    assert acc.rule_key(hist) == Key(0, "major")
    a_minor = np.zeros(12)
    a_minor[[9, 11, 0, 2, 4, 5, 7]] = [5, 1, 3, 2, 4, 1, 1]
    assert acc.rule_key(a_minor) == Key(9, "minor") == estimate_key(a_minor)
    assert estimate_key(np.zeros(12)) is None
    assert acc.rule_key(np.zeros(12)) == Key(0, "major")


def test_rule_chords_in_major_and_minor() -> None:
    names = [C.chord_token_name(t) for t in acc.rule_chords(Key(0, "major"))]
    assert names == ["C", "G", "F", "Am", "Dm", "Em"]
    names = [C.chord_token_name(t) for t in acc.rule_chords(Key(9, "minor"))]
    assert names == ["Am", "E", "Dm", "F", "C", "G"]


def test_rule_on_the_scale() -> None:
    tune = scale_tune()
    chords = acc.rule(tune)
    # C, E, G take I; B takes V (the first candidate holding it), which holds until the next strong beat
    at = {t: C.chord_token_name(int(chords[t])) for t in np.flatnonzero(tune.counted)}
    assert at == {0: "C", 8: "C", 16: "C", 24: "G", 32: "C", 40: "C", 48: "C", 56: "G"}
    assert C.chord_token_name(int(chords[31])) == "G"
    m = acc.score([tune], [chords])
    assert m["hit"] == 1.0
    # against C C F F G G C C: 1, 1, C/F 1/3, G/F 0, C/G 1/3, C/G 1/3, 1, G/C 1/3
    assert m["f1"] == pytest.approx((3 + 4 / 3) / 8)
    assert m["changes_per_bar"] == 1.0  # N.C. -> C, -> G at 24, -> C at 32, -> G at 56
    assert m["entropy_bits"] == pytest.approx(1.0)


def test_rule_before_the_first_strong_onset_is_silent_and_a_foreign_note_keeps_the_chord() -> None:
    melody = [R] * 8 + [n(60), H, H, H, H, H, H, H] + [n(61)] + [H] * 7 + [n(67)] + [H] * 7
    tune = make_tune(melody, [C.CHORD_NC] + [C.CHORD_HOLD] * 31)
    chords = acc.rule(tune)
    assert chords[:8].tolist() == [C.CHORD_NC] * 8
    # C# (step 16) is in no diatonic triad of the key: C stays
    assert [C.chord_token_name(int(chords[t])) for t in (8, 16, 24)] == ["C", "C", "C"]


def test_online_rule_uses_only_the_past() -> None:
    tune = scale_tune()
    base = acc.rule_online(tune)
    changed = tune.melody.copy()
    changed[40:] = n(66)  # F# from step 40 on: a different key for the whole tune
    other = acc.rule_online(acc.Tune(**{**tune.__dict__, "melody": changed}))
    assert base[:40].tolist() == other[:40].tolist()
    assert base[40:].tolist() != other[40:].tolist()
    # the first note alone gives its own major key
    assert C.chord_token_name(int(base[0])) == "C"


def test_best_triad_is_held_and_chosen_with_hindsight() -> None:
    tune = scale_tune()
    chords = acc.best_triad(tune)
    assert set(chords.tolist()) == {chord("C")}  # 6 of 8 (C E G C E G); Em ties, C comes first
    assert acc.score([tune], [chords])["hit"] == pytest.approx(6 / 8)
    melody = [n(62), H, H, H, n(66), H, H, H] * 2  # D and F# on beats 1 and 3: D major
    assert set(acc.best_triad(make_tune(melody, [C.CHORD_NC] + [C.CHORD_HOLD] * 15)).tolist()) == {chord("D")}


# --- model accompanists ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_data(nottingham_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.prepare import prepare

    out = tmp_path_factory.mktemp("acc") / "data"
    prepare(midi_dir=nottingham_dir, out=out, limit=40, workers=1, progress=False, quiet=True)
    return out


@pytest.fixture(scope="module")
def shipped(shipped_model_dir: Path) -> Model:
    return Model.load(shipped_model_dir)


def test_real_tunes_get_their_meters_from_the_midi_files(real_data: Path) -> None:
    tunes, meters = acc.load_tunes(real_data, "test")
    assert meters == {"midi": len(tunes), "guessed": 0}
    files = json.loads((real_data / "manifest.json").read_text())["splits"]["test"]["files"]
    source = Path(json.loads((real_data / "manifest.json").read_text())["source"])
    for tune, name in zip(tunes, files, strict=True):
        ts = acc.file_meters(source / name)
        assert ts is not None
        assert tune.name == name
        assert set(tune.beat_steps.tolist()) <= {m.beat_steps for m in ts}, name


def test_batched_chord_model_equals_the_engine(real_data: Path, shipped: Model) -> None:
    tunes, _ = acc.load_tunes(real_data, "test")
    # the engine counts phrases from step 0: compare on tunes without a pickup bar
    plain = [t for t in tunes if t.phrase[0] == 0][:2]
    assert plain
    batched = acc.online_model(shipped, plain, seed=7)
    for i, tune in enumerate(plain):
        assert batched[i].tolist() == acc.engine_chords(shipped, tune, seed=7 + i).tolist()


def test_model_accompanists_never_look_ahead(real_data: Path, shipped: Model) -> None:
    tunes, _ = acc.load_tunes(real_data, "test")
    tune = tunes[0]
    cut = tune.steps // 2
    changed = tune.melody.copy()
    changed[cut + 1 :] = np.where(changed[cut + 1 :] >= C.MEL_NOTE_OFFSET, n(61), changed[cut + 1 :])
    other = acc.Tune(**{**tune.__dict__, "melody": changed})
    for k in (0, 4):
        heard = 0
        for seed in (3, 4, 5):
            (a,) = acc.online_model(shipped, [tune], seed=seed, top_k=k)
            (b,) = acc.online_model(shipped, [other], seed=seed, top_k=k)
            assert a[: cut + 1].tolist() == b[: cut + 1].tolist()
            heard += a[cut + 1 :].tolist() != b[cut + 1 :].tolist()
        if k:  # Bayes hears the new notes (a confident prior may outvote them on one seed's draws, not on all)
            assert heard > 0


def test_evaluate_accompaniment_on_real_tunes(real_data: Path, shipped_model_dir: Path) -> None:
    r = acc.evaluate_accompaniment(shipped_model_dir, real_data, "test", seed=0, limit=6, bayes_top_k=4)
    assert r["tunes"] == 6
    assert r["steps"] > 0 and r["counted"] > 0
    assert r["human"]["f1"] == 1.0
    assert 0.6 < r["human"]["hit"] < 1.0
    # with hindsight and with every note heard on the beat, the rule beats a chord model that cannot hear it
    assert r["rule"]["hit"] > r["chord_model"]["hit"]
    assert r["rule"]["hit"] > r["best_triad"]["hit"]
    assert r["best_triad"]["changes_per_bar"] < 0.2
    for name in ("best_triad", "rule", "rule_online", "chord_model", "bayes"):
        assert 0 <= r[name]["hit"] <= 1 and 0 <= r[name]["f1"] <= 1, name
    assert r["data"] == {k: r["human"][k] for k in ("changes_per_bar", "entropy_bits")}
    assert ("model" in r) == Model.load(shipped_model_dir).can_harmonise
    assert ("model" in r["skipped"]) != ("model" in r)
    table = acc.report_markdown(r)
    assert "| the human chords | " in table and "top-4 chords" in table


def test_cli_accompany_on_valid(real_data: Path, shipped_model_dir: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "training.cli", "accompany", "--model", str(shipped_model_dir), "--data",
         str(real_data), "--split", "valid", "--limit", "2", "--bayes-top-k", "2"],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("| accompanist | hit | F1 vs human |")
    assert "valid split, 2 tunes" in proc.stdout


@pytest.fixture(scope="module")
def harmonising_model(tmp_path_factory: pytest.TempPathFactory) -> Model:
    """A random-weight contract-v2 model with a harmoniser (tests/model_factory.py)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from model_factory import make_random_model

    return Model.load(make_random_model(tmp_path_factory.mktemp("harmony") / "model", hidden=16, layers=2, seed=5))


def test_the_daemons_accompanist_plays_online(harmonising_model: Model) -> None:
    tune = scale_tune()
    chords = acc.performer_chords(harmonising_model, [tune], seed=1)
    assert not isinstance(chords, str), chords
    (a,) = chords
    assert a.shape == (tune.steps,)
    assert ((a == C.CHORD_NC) | (a >= C.CHORD_OFFSET)).all()  # resolved: never HOLD
    changed = tune.melody.copy()
    changed[33:] = np.where(changed[33:] >= C.MEL_NOTE_OFFSET, n(61), changed[33:])
    other = acc.performer_chords(harmonising_model, [acc.Tune(**{**tune.__dict__, "melody": changed})], seed=1)
    assert not isinstance(other, str)
    assert a[:33].tolist() == other[0][:33].tolist()


def test_a_model_without_harmoniser_has_no_model_row(tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from model_factory import make_random_model

    old = Model.load(make_random_model(tmp_path / "v1", hidden=8, layers=1, seed=2, contract=1))
    why = acc.performer_chords(old, [scale_tune()])
    assert isinstance(why, str) and "harmoniser" in why

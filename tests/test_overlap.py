"""Per-window features and KDE overlap (training/overlap.py) on hand-made tokens, and their place in evaluate."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from rtgen import contract as C  # noqa: N812 (the project's short alias)
from training import evaluate as ev
from training import overlap, prepared
from training.prepare import _write_split

H, R = C.MEL_HOLD, C.MEL_REST


def n(pitch: int) -> int:
    return C.melody_note_on(pitch)


def _piece(bar: list[int], bars: int, chords: list[str]) -> overlap.Piece:
    """``bars`` 4-step bars, the same melody bar each time, one chord per bar from ``chords`` in turn."""
    mel = np.array(bar * bars, dtype=np.int64)
    ch = np.array([C.Chord.parse(chords[b % len(chords)]).token for b in range(bars) for _ in range(4)])
    return overlap.Piece(mel, ch, np.tile(np.arange(4), bars))


def test_windows_start_at_the_first_bar_line_and_skip_a_short_last_one() -> None:
    pos = [2, 3, *([0, 1, 2, 3] * 17)]  # a pickup, then 17 bars: two 8-bar windows, one bar left over
    got = overlap.windows(pos)
    assert [(a, b) for a, b, _ in got] == [(2, 34), (34, 66)]
    assert got[0][2] == [2 + 4 * k for k in range(8)]
    assert overlap.windows([0, 1, 2, 3] * 7) == []


def test_window_features_of_a_hand_made_piece() -> None:
    # C . E . | C . E . ... (8 bars): range 4, 2 pitches, 2 notes a bar, interval 4, onsets 2 apart, notes 2 long
    p = _piece([n(60), H, n(64), H], 8, ["C", "G7"])
    ref = np.zeros(12)
    ref[[0, 4]] = 0.5
    f = overlap.window_features(p, ref)
    assert {k: float(v[0]) for k, v in f.items()} == {
        "pitch_range": 4.0, "distinct_pitches": 2.0, "notes_per_bar": 2.0, "distinct_chords": 2.0,
        "mean_interval": 4.0, "pitch_class_distance": 0.0, "inter_onset": 2.0, "note_length": 2.0,
        "phrase_similarity": 1.0,
    }  # fmt: skip
    # a rest ends a note; a different second half lowers the self-similarity; one note has no interval
    q = overlap.Piece(np.array([n(62), R, R, R] * 4 + [n(62), H, H, R] * 4), np.full(32, C.CHORD_NC), p.position)
    g = overlap.window_features(q, None)
    assert g["note_length"][0] == 2.0 and g["distinct_chords"][0] == 0.0
    assert g["phrase_similarity"][0] == 0.5  # steps 0 and 3 of each bar agree
    assert np.isnan(g["pitch_class_distance"][0])
    silent = overlap.window_features(overlap.Piece(np.full(32, R), p.chord_now, p.position), None)
    assert np.isnan(silent["pitch_range"][0]) and silent["notes_per_bar"][0] == 0.0
    assert overlap.note_lengths([n(60), H, H, n(62), R, n(64)]).tolist() == [3, 1, 1]


def test_pitch_classes_rotate_to_the_tonic() -> None:
    in_g = _piece([n(67), n(71), n(74), n(79)], 8, ["G"])  # G B D G: G major, tonic first
    pooled = overlap.pooled_pitch_classes([in_g])
    assert pooled[0] == pytest.approx(0.5) and pooled[4] == pytest.approx(0.25) and pooled[7] == pytest.approx(0.25)


def test_overlap_area() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, 400)
    assert overlap.overlap_area(a, a) == pytest.approx(1.0, abs=1e-9)
    assert overlap.overlap_area([3.0] * 10, [3.0] * 20) == pytest.approx(1.0, abs=1e-9)  # equal values still overlap
    assert overlap.overlap_area(a, a + 20) < 1e-3
    half = overlap.overlap_area(a, rng.normal(1, 1, 400))
    assert 0.5 < half < 0.75  # two unit normals one sigma apart overlap by 0.617
    assert np.isnan(overlap.overlap_area([], a)) and np.isnan(overlap.overlap_area([np.nan], a))
    s = overlap.summary([1.0, 2.0, 3.0, np.nan])
    assert s["median"] == 2.0 and s["windows"] == 3


def test_compare_sets_marks_the_targets() -> None:
    rng = np.random.default_rng(1)
    test = {k: rng.normal(10, 1, 300) for k in overlap.NAMES}
    same = {k: rng.normal(10, 1, 300) for k in overlap.NAMES}
    off = {k: rng.normal(13, 1, 300) for k in overlap.NAMES}
    rows = overlap.compare_sets(test, {"train": same, "good": same, "bad": off})
    for name in overlap.NAMES:
        row = rows[name]
        assert row["good"]["met"] and not row["bad"]["met"]  # type: ignore[index]
        assert row["good"]["of_ceiling"] == pytest.approx(1.0)  # type: ignore[index]
        assert row["bad"]["median_off"] == pytest.approx(0.3, abs=0.05)  # type: ignore[index]
    assert overlap.compare_sets(test, {"train": test})["pitch_range"]["train"]["overlap"] == pytest.approx(1.0)  # type: ignore[index]


def _long_data(folder: Path) -> Path:
    """A prepared-data folder of 4/4 tunes long enough for 8-bar windows (random tokens), written as prepare does."""
    rng = np.random.default_rng(2)
    for split, lengths in (("train", [160, 140]), ("valid", [40]), ("test", [150, 130, 140])):
        seqs = []
        for length in lengths:
            names = rng.choice(["C", "G7", "Am", "F"], length)
            seqs.append({
                "melody": rng.choice([R, H, H, n(60), n(62), n(64), n(67), n(72)], length),
                "velocity": rng.integers(0, C.NUM_VELOCITY_BINS, length),
                "chord": np.where(np.arange(length) % 16 == 0, [C.Chord.parse(c).token for c in names], 0),
                "position": np.arange(length) % 16,
                "phrase": (np.arange(length) // 16) % C.PHRASE_BARS,
            })  # fmt: skip
        _write_split(folder / split, seqs)
    (folder / "manifest.json").write_text(json.dumps({"format": "rtgen-data", "contract_version": C.CONTRACT_VERSION}))
    return folder


def test_overlap_renders_take_the_test_splits_meters_and_lengths() -> None:
    def piece(bar_steps: int, bars: int) -> overlap.Piece:
        pos = np.arange(bars * bar_steps) % bar_steps
        return overlap.Piece(np.zeros_like(pos), np.zeros_like(pos), pos)

    pieces = [piece(16, 32)] * 3 + [piece(16, 48)] * 2 + [piece(12, 40)] * 4 + [piece(8, 16)]
    shapes = ev.shapes_like(pieces, 10)
    assert shapes == [("2/4", 16)] + [("4/4", 32)] * 3 + [("4/4", 48)] * 2 + [("6/8", 40)] * 4
    assert ev.shapes_like(pieces, 5) == [("4/4", 32), ("4/4", 32), ("4/4", 48), ("6/8", 40), ("6/8", 40)]  # every 2nd
    assert ev.shapes_like([], 2) == [("4/4", overlap.WINDOW_BARS)] * 2
    assert [ev.meter_of(n) for n in (16, 12, 8, 18, 24, 20)] == ["4/4", "6/8", "2/4", "9/8", "6/4", "5/4"]


def test_evaluate_reports_the_overlap_on_a_tiny_model(tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from model_factory import make_random_model

    model_dir = make_random_model(tmp_path / "model", hidden=8, layers=1, seed=4)
    data = _long_data(tmp_path / "data")
    metrics = ev.evaluate(model=model_dir, data=data, renders=1, bars=8, max_order=2, progress=False,
                          accompaniment=False, temperatures=(0.9, 1.0), overlap_renders=1)  # fmt: skip
    ov = json.loads((model_dir / "meta.json").read_text())["metrics"]["test"]["overlap"]
    assert ov == metrics["overlap"]
    assert ov["windows"] == {"test": 3, "train": 2, "T0.9 p0.95": 1, "T1 p0.95": 1}
    assert set(ov["features"]) == set(overlap.NAMES)
    for row in ov["features"].values():
        assert set(row) == {"test", "train", "T0.9 p0.95", "T1 p0.95"}
        assert set(row["T1 p0.95"]) >= {"median", "p10", "p90", "overlap", "of_ceiling", "met"}
    assert set(ov["settings"]["T0.9 p0.95"]) >= {"in_scale", "chord_tone_strong", "all_met", "features_met"}
    assert (model_dir / "overlap.png").stat().st_size > 1000
    report = (model_dir / "EVALUATION.md").read_text()
    assert "## Renders that sound like the data" in report and "| melody pitch range" in report
    # the test set against itself overlaps fully, feature by feature
    test = prepared.load_split(data, "test")
    pieces = ev.split_pieces(test)
    values = overlap.set_features(pieces, overlap.pooled_pitch_classes(pieces))
    self_rows = overlap.compare_sets(values, {"train": values, "renders": values})
    for name in overlap.NAMES:
        assert self_rows[name]["renders"]["overlap"] == pytest.approx(1.0, abs=1e-9), name  # type: ignore[index]
        assert self_rows[name]["renders"]["met"], name  # type: ignore[index]
    shutil.rmtree(model_dir)

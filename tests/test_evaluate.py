"""Evaluation: musical statistics on hand-made tokens, batched ONNX NLL, and meta.json/EVALUATION.md output."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rtgen import contract as C  # noqa: N812 (the project's short alias)
from rtgen.generation.model import Model
from training import evaluate as ev
from training import prepared, stats

REQUIRED_KEYS = {
    "note_nll", "note_nll_ngram", "chord_nll", "chord_nll_ngram", "copy_rate", "self_repetition",
    "self_repetition_data", "note_nll_onset", "note_nll_onset_ngram", "chord_nll_change", "chord_nll_change_ngram",
    "velocity_nll_onset", "ngram_order_melody", "ngram_order_chord", "in_scale", "in_scale_data",
    "chord_tone_strong", "chord_tone_strong_data", "note_ratio", "chord_ratio", "note_ratio_strongest",
    "chord_ratio_strongest", "note_nll_strongest", "chord_nll_strongest",
}  # fmt: skip

H, R = C.MEL_HOLD, C.MEL_REST


def n(pitch: int) -> int:
    return C.melody_note_on(pitch)


def chord(name: str) -> int:
    return C.Chord.parse(name).token


# --- statistics on hand-made sequences ------------------------------------------------------------------
def test_in_scale_and_key() -> None:
    # C D E F# G: all in G major
    assert stats.in_scale([n(60), H, n(62), n(64), R, n(66), n(67)]) == stats.Ratio(5, 5)
    # adding C# leaves 5 of 6 in the best scale
    assert stats.in_scale([n(60), n(62), n(64), n(66), n(67), n(61)]) == stats.Ratio(5, 6)
    assert stats.in_scale([R, H, H]) == stats.Ratio(0, 0)
    assert np.isnan(stats.Ratio(0, 0).value)
    assert stats.find_key([n(60), n(64), n(67), n(72), n(48)]).name == "C major"
    assert stats.find_key([n(57), n(60), n(64), n(57), n(69)]).name == "A minor"


def test_chord_tone_on_strong_beats() -> None:
    mel = np.full(16, H)
    mel[[0, 2, 4, 8, 12]] = [n(60), n(62), n(62), n(64), n(79)]  # C (tone), D off-beat, D (not a tone), E, G (tone)
    chords = np.array([chord("C")] * 8 + [C.CHORD_NC] * 4 + [chord("G7")] * 4)
    strong = stats.strong_beats(np.arange(16))
    assert strong.tolist() == [i % 4 == 0 for i in range(16)]
    # step 8 sounds over N.C. and is not counted
    assert stats.chord_tone_strong(mel, chords, strong) == stats.Ratio(2, 3)


def test_self_repetition_windows_follow_bar_lines() -> None:
    a = [n(60), H, n(62), H, n(64), R, R, R]  # two 4-step bars
    b = [n(65), H, H, H, n(67), H, H, H]
    pickup = [n(55), n(57)]
    mel = pickup + a + a + b
    pos = [2, 3] + [0, 1, 2, 3] * 6
    assert stats.self_repetition(mel, pos) == stats.Ratio(1, 2)
    # a final partial bar makes a short last window, never equal to a full one
    assert stats.self_repetition([*mel, n(60), H], [*pos, 0, 1]) == stats.Ratio(1, 3)
    assert stats.self_repetition(a + a + a, [0, 1, 2, 3] * 6, window_bars=1) == stats.Ratio(0, 5)  # bars alternate
    assert stats.self_repetition(a[:4] * 3, [0, 1, 2, 3] * 3, window_bars=1) == stats.Ratio(2, 2)
    assert stats.self_repetition([n(60)], [3]) == stats.Ratio(0, 0)


def test_copy_rate_in_any_key_and_within_sequences() -> None:
    seq_a = [n(60), H, n(62), H, n(64)]
    seq_b = [R, R, R, R, n(67)]
    index = stats.CopyIndex(seq_a + seq_b, [0, 5, 10], window=4)
    # seq_a's two windows up a whole tone, then windows that are not in the corpus, then one without onsets
    render = [n(62), H, n(64), H, n(66), R, R, R, R]
    assert index.copy_rate(render) == stats.Ratio(2, 5)
    untransposed = stats.CopyIndex(seq_a + seq_b, [0, 5, 10], window=4, transpose=False)
    assert untransposed.copy_rate(render) == stats.Ratio(0, 5)
    assert untransposed.copy_rate(seq_a) == stats.Ratio(2, 2)
    # a window across the boundary between the two sequences is not in the corpus
    across, _ = stats.window_hashes([n(62), H, n(64), R], None, 4)
    assert not untransposed.contains(across).any()
    assert stats.pooled([stats.Ratio(1, 2), stats.Ratio(3, 4)]) == stats.Ratio(4, 6)


def test_report_marks_targets() -> None:
    m = {k: 1.0 for k in REQUIRED_KEYS} | {
        "note_ratio": 0.7, "chord_ratio": 0.95, "copy_rate": 0.01, "test_sequences": 3, "test_steps": 99,
        "ngram_order_melody": 5, "ngram_order_chord": 9, "renders": {"count": 2, "bars": 16, "seed": 0},
        "copy_rate_data": None,
    }  # fmt: skip
    text = ev.report_markdown("x", m)
    assert "| note_ratio | 0.700 | <= 0.75 | pass |" in text
    assert "| chord_ratio | 0.950 | <= 0.90 | FAIL |" in text
    assert "| copy_rate | 1.0 % | <= 2.0 % | pass |" in text
    assert "## Accompaniment" not in text  # metrics written before the accompaniment section still render


# --- ONNX evaluation -----------------------------------------------------------------------------------
def _write_data(folder: Path, seed: int = 0) -> Path:
    """A tiny prepared-data folder (docs/internals.md §1) with varied sequence lengths."""
    rng = np.random.default_rng(seed)
    for split, lengths in (("train", [40, 24, 33]), ("valid", [20, 17]), ("test", [30, 5, 19, 12])):
        parts: dict[str, list[np.ndarray]] = {k: [] for k in prepared.ARRAYS}
        for length in lengths:
            mel = rng.choice([R, H, H, n(60), n(62), n(64), n(67)], length)
            ch = np.where(np.arange(length) % 8 == 0, rng.choice([chord("C"), chord("G7"), chord("Am")], length), 0)
            pos = (np.arange(length) + 2) % 12  # a pickup, then 3/4 bars
            parts["melody"].append(mel)
            parts["velocity"].append(rng.integers(0, C.NUM_VELOCITY_BINS, length))
            parts["chord"].append(ch)
            parts["position"].append(pos)
            parts["phrase"].append(((np.arange(length) + 2) // 12) % C.PHRASE_BARS)
        d = folder / split
        d.mkdir(parents=True)
        for k, dtype in zip(prepared.ARRAYS, (np.int16, np.uint8, np.int16, np.uint8, np.uint8), strict=True):
            np.save(d / f"{k}.npy", np.concatenate(parts[k]).astype(dtype))
        np.save(d / "offsets.npy", np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
    (folder / "manifest.json").write_text(json.dumps({"format": "rtgen-data", "contract_version": C.CONTRACT_VERSION}))
    return folder


@pytest.fixture(scope="module")
def random_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight model with the contract's exact ONNX I/O (tests/model_factory.py)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from model_factory import make_random_model

    return make_random_model(tmp_path_factory.mktemp("random") / "model", hidden=16, layers=2, seed=3)


def _log_softmax_at(logits: np.ndarray, target: int) -> float:
    x = logits[0].astype(np.float64)
    return float(np.log(np.exp(x - x.max()).sum()) + x.max() - x[target])


def test_batched_nll_equals_one_sequence_at_a_time(random_model: Path, tmp_path: Path) -> None:
    data = _write_data(tmp_path / "data")
    test = prepared.load_split(data, "test")
    model = Model.load(random_model)
    batched = ev.model_nll(model, test, batch=3, progress=False)  # 4 sequences: two batches, shrinking
    for i in range(test.sequences):
        mel, vel, ch, pos = (test.seq(k, i) for k in ("melody", "velocity", "chord", "position"))
        inputs = C.step_inputs(mel, vel, ch, pos) | {"position": pos, "phrase": test.seq("phrase", i)}
        cs, ns = model.initial_state(1), model.initial_state(1)
        a = int(test.offsets[i])
        for t in range(mel.size):
            feeds = {k: np.ascontiguousarray(v[t : t + 1]) for k, v in inputs.items()}
            cl, cs = model.chord_step(feeds, cs)
            ml, vl, ns = model.note_step(feeds, ns)
            assert batched["chord"][a + t] == pytest.approx(_log_softmax_at(cl, int(ch[t])), abs=1e-4)
            assert batched["melody"][a + t] == pytest.approx(_log_softmax_at(ml, int(mel[t])), abs=1e-4)
            assert batched["velocity"][a + t] == pytest.approx(_log_softmax_at(vl, int(vel[t])), abs=1e-4)


def _check_model_folder(model_dir: Path) -> dict[str, Any]:
    meta = json.loads((model_dir / "meta.json").read_text())
    metrics = meta["metrics"]["test"]
    assert set(metrics) >= REQUIRED_KEYS
    for key in ("note_nll", "note_nll_ngram", "chord_nll", "chord_nll_ngram", "note_nll_onset", "velocity_nll_onset"):
        assert 0 < metrics[key] < 20, key
    assert metrics["note_ratio"] == pytest.approx(metrics["note_nll"] / metrics["note_nll_ngram"])
    assert metrics["chord_ratio"] == pytest.approx(metrics["chord_nll"] / metrics["chord_nll_ngram"])
    assert 1 <= metrics["ngram_order_melody"] <= ev.MAX_NGRAM_ORDER
    for key in ("copy_rate", "in_scale", "in_scale_data", "self_repetition", "self_repetition_data"):
        assert metrics[key] is None or 0 <= metrics[key] <= 1, key
    for key, stream in (("note", "melody"), ("chord", "chord")):
        fair = {k: b["test_nll"] for k, b in metrics["baselines"].items() if b["stream"] == stream and b["fair"]}
        assert {f"{stream}_ngram", f"{stream}_12keys"} <= set(fair)
        assert metrics[f"{key}_nll_strongest"] == min(fair.values()) <= metrics[f"{key}_nll_ngram"]
        assert metrics[f"{key}_strongest"] == min(fair, key=lambda k: fair[k])
        assert metrics[f"{key}_ratio_strongest"] == pytest.approx(metrics[f"{key}_nll"] / min(fair.values()))
    nd = metrics["near_duplicates"]
    assert 0 <= nd["tune_share"] <= 1 and len(nd["found"]) == nd["tunes"]
    assert nd["without"]["steps"] == metrics["test_steps"] - nd["steps"]
    Model.load(model_dir)  # the sha256 of the graphs still verify
    report = (model_dir / "EVALUATION.md").read_text()
    assert "| copy_rate |" in report and "| note_ratio_strongest |" in report
    assert "## Against baselines that see what the models see" in report and "## Near-duplicates" in report
    return metrics


def test_evaluate_writes_metrics_and_keeps_hashes(random_model: Path, tmp_path: Path) -> None:
    model_dir = shutil.copytree(random_model, tmp_path / "model")
    data = _write_data(tmp_path / "data")
    before = json.loads((model_dir / "meta.json").read_text())
    metrics = ev.evaluate(model=model_dir, data=data, renders=2, bars=4, progress=False)
    after = json.loads((model_dir / "meta.json").read_text())
    assert after["metrics"]["test"] == metrics
    assert after["files"] == before["files"]
    stored = _check_model_folder(model_dir)
    assert stored["renders"] == {"count": 2, "bars": 4, "seed": 0, "temperature": 1.0, "top_p": 1.0}
    acc = stored["accompaniment"]
    assert acc["tunes"] == 4 and acc["steps"] == 30 + 5 + 19 + 12
    assert acc["meters"] == {"midi": 0, "guessed": 4}  # no MIDI source in this manifest: 12-step bars as 3/4
    assert acc["human"]["f1"] == 1.0
    for name in ("best_triad", "rule", "rule_online", "chord_model", "bayes"):
        assert set(acc[name]) == {"hit", "f1", "changes_per_bar", "entropy_bits"}, name
        assert 0 <= acc[name]["hit"] <= 1, name
    assert acc["data"]["changes_per_bar"] == acc["human"]["changes_per_bar"]
    assert stored["seconds"]["accompaniment"] >= 0
    report = (model_dir / "EVALUATION.md").read_text()
    assert "## Accompaniment" in report and "| the human chords | " in report
    again = ev.evaluate(model=model_dir, data=data, renders=2, bars=4, progress=False, accompaniment=False)
    assert again["accompaniment"] == acc and again["kept"] == ["accompaniment"]
    assert "## Accompaniment" in (model_dir / "EVALUATION.md").read_text()


def test_missing_data_is_a_clear_error(random_model: Path, tmp_path: Path) -> None:
    with pytest.raises(ev.DataError, match="rtgen-train prepare"):
        ev.evaluate(model=random_model, data=tmp_path / "nowhere", renders=1, bars=1, progress=False)


# --- the real pipeline ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_tiny_pipeline_model_is_evaluated(tiny_model_dir: Path) -> None:
    metrics = _check_model_folder(tiny_model_dir)
    assert metrics["renders"]["bars"] == 16  # rtgen-train all --tiny evaluates quickly


@pytest.mark.slow
def test_cli_evaluate_on_a_trained_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    model_dir = shutil.copytree(tiny_model_dir, tmp_path / "model")
    data = tiny_model_dir.with_name(tiny_model_dir.name + ".work") / "data"
    proc = subprocess.run(
        [sys.executable, "-m", "training.cli", "evaluate", "--model", str(model_dir), "--data", str(data),
         "--renders", "1", "--bars", "4", "--seed", "5"],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("evaluate: model: note NLL")
    metrics = _check_model_folder(model_dir)
    assert metrics["renders"]["seed"] == 5


def test_a_new_report_keeps_the_sections_other_tools_wrote(tmp_path: Path) -> None:
    from training.evaluate import kept_sections

    report = tmp_path / "EVALUATION.md"
    report.write_text("# m\n\n## Targets\nold\n\n## Song form: a render\nfigures\nmore\n")
    new = "# m\n\n## Targets\nnew\n"
    assert kept_sections(report, new) == "\n## Song form: a render\nfigures\nmore\n"
    assert kept_sections(tmp_path / "missing.md", new) == ""

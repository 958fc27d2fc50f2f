"""Models, trainer and ONNX export: shapes, learning, resuming, parity, meta.json hashes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from rtgen import contract as C  # noqa: N812
from rtgen.errors import ModelError, RtgenError
from training.cli import main as train_main
from training.dataset import IGNORE, LOOKBACK_KEYS, Split, write_synthetic
from training.export import PARITY_TOLERANCE, check_parity, export, load_run, record_timings
from training.model import ModelConfig, Models
from training.train import evaluate_nll, train

TINY = {"hidden": 24, "layers": 2, "batch_size": 4, "window": 64, "max_minutes": 0, "threads": 2}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("data"), sequences=8, length=256, seed=1)


@pytest.fixture(scope="module")
def model_dir(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run trained and exported through the CLI."""
    base = tmp_path_factory.mktemp("export")
    run, out = base / "run", base / "model"
    args = ["train", "--data", str(data), "--out", str(run), "--epochs", "1", "--hidden", "24", "--layers", "2"]
    args += ["--batch-size", "4", "--window", "64", "--max-minutes", "0", "--no-progress"]
    assert train_main(args) == 0
    assert train_main(["export", "--run", str(run), "--out", str(out), "--data", str(data), "--name", "tiny"]) == 0
    return out


def _batch(split: Split, n: int = 3) -> dict[str, torch.Tensor]:
    wins = split.plan(n, 40, seed=0, epoch=0)[0]
    return split.collate(wins)


def test_split_builds_contract_inputs(data: Path) -> None:
    split = Split(data, "train")
    assert split.sequences == 8 and split.steps == 8 * 256
    a, b = int(split.offsets[2]), int(split.offsets[3])
    mel = np.load(data / "train" / "melody.npy")[a:b]
    vel = np.load(data / "train" / "velocity.npy")[a:b]
    ch = np.load(data / "train" / "chord.npy")[a:b]
    pos = np.load(data / "train" / "position.npy")[a:b]
    for k, v in C.step_inputs(mel, vel, ch, pos).items():
        np.testing.assert_array_equal(split.arrays[k][a:b], v)
    onset = mel >= C.MEL_NOTE_OFFSET
    np.testing.assert_array_equal(split.arrays["velocity"][a:b][~onset], IGNORE)
    np.testing.assert_array_equal(split.arrays["velocity"][a:b][onset], vel[onset])


def test_plan_is_deterministic_and_transposes(data: Path) -> None:
    split = Split(data, "train")
    p1 = split.plan(4, 64, seed=3, epoch=1)
    p2 = split.plan(4, 64, seed=3, epoch=1)
    p3 = split.plan(4, 64, seed=3, epoch=2)
    key = [[(w.start, w.length, w.shift) for w in b] for b in p1]
    assert key == [[(w.start, w.length, w.shift) for w in b] for b in p2]
    assert key != [[(w.start, w.length, w.shift) for w in b] for b in p3]
    # every step is covered exactly once per epoch
    covered = np.zeros(split.steps, dtype=int)
    for b in p1:
        for w in b:
            covered[w.start : w.start + w.length] += 1
    assert (covered == 1).all()
    shifts = {w.shift for b in p1 for w in b}
    assert len(shifts) > 1 and all(-6 <= s <= 5 for s in shifts)
    # a transposed window carries transposed tokens, melody and chord alike
    w = next(w for b in p1 for w in b if w.shift != 0)
    got = split.collate([w])
    sl = slice(w.start, w.start + w.length)
    np.testing.assert_array_equal(got["melody"][0].numpy(), C.transpose_melody(split.arrays["melody"][sl], w.shift))
    np.testing.assert_array_equal(
        got["chord_now"][0].numpy(), C.transpose_chords(split.arrays["chord_now"][sl], w.shift)
    )
    # ranks split the batches without overlap and get equally many
    r0 = split.plan(2, 64, seed=3, epoch=1, rank=0, world=2)
    r1 = split.plan(2, 64, seed=3, epoch=1, rank=1, world=2)
    assert len(r0) == len(r1) > 0
    assert not {w.start for b in r0 for w in b} & {w.start for b in r1 for w in b}


def test_model_shapes_and_step_matches_forward(data: Path) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(hidden=16, layers=2)
    models = Models(cfg).eval()
    b = _batch(Split(data, "valid"))
    bsz, t = b["melody"].shape
    chord_logits, state = models.chord(b)
    mel, vel, nstate = models.note(b)
    assert chord_logits.shape == (bsz, t, C.CHORD_VOCAB_SIZE)
    assert mel.shape == (bsz, t, C.MELODY_VOCAB_SIZE) and vel.shape == (bsz, t, C.NUM_VELOCITY_BINS)
    assert state.shape == nstate.shape == (2, bsz, 16)
    assert b["lookback_melody"].shape == (bsz, t, C.NUM_LOOKBACKS)
    # stepping one position at a time reproduces the sequence forward
    st = models.chord.initial_state(bsz)
    sn = models.note.initial_state(bsz)
    with torch.no_grad():
        for i in range(t):
            feeds = {k: v[:, i] for k, v in b.items()}
            cl, st = models.chord.step(feeds, st)
            ml, vl, sn = models.note.step(feeds, sn)
            assert cl.shape == (bsz, C.CHORD_VOCAB_SIZE) and ml.shape == (bsz, C.MELODY_VOCAB_SIZE)
            torch.testing.assert_close(cl, chord_logits[:, i], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(ml, mel[:, i], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(vl, vel[:, i], atol=1e-5, rtol=1e-4)
    out = models(b)
    assert out["loss"].ndim == 0 and int(out["melody_n"]) == int((b["melody"] != IGNORE).sum())


def test_training_lowers_valid_loss(data: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    untrained = evaluate_nll(Models(ModelConfig(hidden=24, layers=2)), Split(data, "valid"), 8)
    summary = train(data, tmp_path / "run", epochs=3, progress=False, lr=1e-2, **TINY)
    assert summary["epochs"] == 3 and summary["stopped"] == "all 3 epochs done"
    hist = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    best = summary["valid"]
    assert best["chord"] < 0.6 * untrained["chord"]
    assert best["melody"] < 0.8 * untrained["melody"]
    assert hist[-1]["train"]["melody"] < hist[0]["train"]["melody"]
    for key in ("chord", "chord_change", "melody", "melody_note_on", "velocity"):
        assert np.isfinite(best[key]) and best[key] > 0
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000
    assert (tmp_path / "run" / "best.pt").is_file()
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["model"]["hidden"] == 24 and cfg["epochs"] == 3


def test_resume_continues_and_finished_run_returns(data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    first = train(data, run, epochs=1, progress=False, **TINY)
    assert first["epochs"] == 1
    steps1 = first["steps"]
    second = train(data, run, epochs=2, progress=False, **TINY)
    assert second["epochs"] == 2 and second["steps"] == 2 * steps1
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and len(ckpt["history"]) == 2
    mtime = (run / "checkpoint.pt").stat().st_mtime_ns
    third = train(data, run, epochs=2, progress=False, **TINY)
    assert third["stopped"].startswith("already finished")
    assert third["epochs"] == 2 and (run / "checkpoint.pt").stat().st_mtime_ns == mtime
    with pytest.raises(RtgenError, match="another model"):
        train(data, run, epochs=3, progress=False, **{**TINY, "hidden": 8})
    with pytest.raises(RtgenError, match="unknown training option"):
        train(data, run, epochs=3, progress=False, hiden=8)


def test_export_writes_contract_onnx(model_dir: Path) -> None:
    for fname, inputs, outputs in (
        ("chord.onnx", C.CHORD_MODEL_INPUTS, C.CHORD_MODEL_OUTPUTS),
        ("note.onnx", C.NOTE_MODEL_INPUTS, C.NOTE_MODEL_OUTPUTS),
    ):
        onnx.checker.check_model(onnx.load(str(model_dir / fname)))
        sess = ort.InferenceSession(str(model_dir / fname), providers=["CPUExecutionProvider"])
        assert tuple(i.name for i in sess.get_inputs()) == inputs
        assert tuple(o.name for o in sess.get_outputs()) == outputs
        # dynamic batch: run a batch of 3
        feeds: dict[str, np.ndarray] = {
            n: np.zeros((3, C.NUM_LOOKBACKS) if n in LOOKBACK_KEYS else (3,), dtype=np.int64) for n in inputs[:-1]
        }
        feeds["state"] = np.zeros((2, 3, 24), dtype=np.float32)
        res = sess.run(None, feeds)
        assert res[0].shape[0] == 3 and res[-1].shape == (2, 3, 24)
        assert all(r.dtype == np.float32 for r in res)


def test_export_parity_over_1000_steps(model_dir: Path, data: Path) -> None:
    meta = json.loads((model_dir / "meta.json").read_text())
    assert meta["parity"]["steps"] >= 1000
    assert max(meta["parity"]["max_abs_diff"].values()) < PARITY_TOLERANCE
    # and independently of export: re-run the check against the run's weights
    models, _ = load_run(model_dir.parent / "run")
    res = check_parity(models, model_dir, data, steps=1000)
    assert res["steps"] == 1000 and max(res["max_abs_diff"].values()) < PARITY_TOLERANCE


def test_parity_check_catches_a_wrong_graph(model_dir: Path) -> None:
    models, _ = load_run(model_dir.parent / "run")
    with torch.no_grad():
        models.note.melody_head.bias.add_(0.01)
    with pytest.raises(ModelError, match="parity"):
        check_parity(models, model_dir, None, steps=20)


def test_meta_hashes_and_record_timings(model_dir: Path) -> None:
    meta = json.loads((model_dir / "meta.json").read_text())
    assert meta["format"] == "rtgen-model" and meta["name"] == "tiny"
    assert meta["contract"] == C.contract_summary()
    assert meta["model"]["state_shape"] == [2, 24] and meta["model"]["backbone"] == "gru"
    assert meta["data"]["files"] == {"train": 8, "valid": 8}
    assert meta["training"]["epochs"] == 1 and "chord" in meta["training"]["valid_nll"]

    def check_hashes(m: dict[str, object]) -> None:
        files = m["files"]
        assert isinstance(files, dict) and set(files) == {"chord.onnx", "note.onnx", "harmony.onnx"}
        for f, info in files.items():
            assert hashlib.sha256((model_dir / f).read_bytes()).hexdigest() == info["sha256"]

    check_hashes(meta)
    record_timings(model_dir, {"train": 12.5, "export": 1.25})
    record_timings(model_dir, {"evaluate": 3.0})
    after = json.loads((model_dir / "meta.json").read_text())
    assert after["timings"] == {"train": 12.5, "export": 1.25, "evaluate": 3.0}
    assert after["files"] == meta["files"]
    check_hashes(after)
    card = (model_dir / "MODEL_CARD.md").read_text()
    assert "evaluate 3 s" in card and "rtgen-train all" in card


def test_export_without_weights_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RtgenError, match="no trained weights"):
        export(tmp_path / "nothing", tmp_path / "model")


def test_real_data_trains_and_exports(nottingham_dir: Path, tmp_path: Path) -> None:
    """The real prepare output (a few Nottingham tunes) flows through train and export."""
    from training.prepare import prepare

    data = tmp_path / "data"
    prepare(nottingham_dir, data, limit=12, workers=1, progress=False, quiet=True)
    summary = train(data, tmp_path / "run", epochs=1, progress=False, **TINY)
    assert summary["epochs"] == 1 and np.isfinite(summary["valid"]["melody"])
    meta = export(tmp_path / "run", tmp_path / "model", data=data)
    assert meta["data"]["files"]["train"] > 0
    assert max(meta["parity"]["max_abs_diff"].values()) < PARITY_TOLERANCE

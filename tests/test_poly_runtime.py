"""Polyphonic models without torch: the exported step graph (``rtgen-train poly-export``) in onnxruntime.

A tiny untrained model is exported here (real PyTorch, real ONNX); the shipped ``chorale`` model is played.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rtgen import library
from rtgen.errors import ModelError
from rtgen.generation.model import Model
from rtgen.generation.poly import POLY_KIND, PolyModel, model_kind
from training import poly, poly_export

CHORALE = library.SHIPPED_MODELS_DIR / "chorale"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[poly.PolyModel, Path]:
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("poly")
    model = poly.PolyModel(poly.PolyConfig(embed=16, hidden=24, nade_hidden=12, bar_steps=4, dropout=0.0)).eval()
    with torch.no_grad():  # a spread of logits, so frames hold several notes
        model.to_bv.bias.normal_(0.0, 2.0)
    poly.save(model, root / "ckpt")
    poly_export.export(root / "ckpt", root / "tiny", step_beats=0.25)
    return model, root / "tiny"


def test_export_keeps_parity_and_the_graph_plays(tiny: tuple[poly.PolyModel, Path]) -> None:
    folder = tiny[1]
    meta = library.read_meta(folder)
    assert model_kind(meta) == POLY_KIND and meta["parity"]["frames_differing"] <= 1
    loaded = PolyModel.load(folder)
    assert (loaded.bar_steps, loaded.step_beats, loaded.low_pitch) == (4, 0.25, 21)
    a, b = loaded.stepper(seed=3), loaded.stepper(seed=3)
    frames = [a.step(pos=i % 4).copy() for i in range(16)]
    assert all(np.array_equal(f, b.step(pos=i % 4)) for i, f in enumerate(frames))  # seeded: reproducible
    assert 0 < np.mean([f.sum() for f in frames]) < 88


def test_clamped_soprano_is_kept_and_nothing_sounds_above_it(tiny: tuple[poly.PolyModel, Path]) -> None:
    stepper = PolyModel.load(tiny[1]).stepper(seed=1)
    for pitch in (60, 72, 79, 40):
        clamp, observed = stepper.soprano_clamp(pitch)
        frame = stepper.step(clamp, observed)
        on = np.nonzero(frame)[0] + 21
        assert on.max() == pitch


def test_feed_scores_a_frame_as_pytorch_does(tiny: tuple[poly.PolyModel, Path]) -> None:
    model, folder = tiny
    stepper = PolyModel.load(folder).stepper()
    frames = np.zeros((3, 88), np.float32)
    frames[0, [39, 43, 46]] = 1.0
    frames[1, [41, 45, 48, 53]] = 1.0
    frames[2, [39, 43, 46, 51]] = 1.0
    got = [stepper.feed(f, pos=i) for i, f in enumerate(frames)]
    with torch.no_grad():
        prev = torch.from_numpy(np.vstack([np.zeros((1, 88), np.float32), frames[:-1]])).unsqueeze(0)
        u, _ = model.state(prev, torch.arange(3).unsqueeze(0))
        want = model.log_prob(u[0], torch.from_numpy(frames)).numpy()
    assert np.allclose(got, want, atol=1e-3)
    assert np.array_equal(stepper.prev[0], frames[-1])  # fed frames become the previous frame


def test_parity_check_fails_for_another_model(tiny: tuple[poly.PolyModel, Path]) -> None:
    other = poly.PolyModel(poly.PolyConfig(embed=16, hidden=24, nade_hidden=12, bar_steps=4, dropout=0.0)).eval()
    with pytest.raises(ModelError, match="does not match"):
        poly_export.check_parity(other, tiny[1] / poly_export.GRAPH_FILE)


def test_the_shipped_chorale_model_sings_in_four_parts() -> None:
    entry = library.find_model("chorale", library.user_models_dir())
    assert entry is not None and entry.kind == POLY_KIND and not entry.problem
    model = PolyModel.load(CHORALE)
    assert model.centred_key and model.step_beats == 1.0
    stepper = model.stepper(seed=0)
    counts = [int(stepper.step().sum()) for _ in range(64)]
    assert 3.0 <= np.mean(counts) <= 5.0  # Bach's frames hold 3.9 notes on average
    line = [72, 71, 72, 74, 76, 74, 72, 71, 69, 71, 72, 67, 69, 71, 72, 72] * 2  # a soprano that moves
    voiced = []
    for pitch in line:
        clamp, observed = stepper.soprano_clamp(pitch)
        voiced.append(np.nonzero(stepper.step(clamp, observed))[0] + 21)
    assert all(v.max() == p for v, p in zip(voiced, line, strict=True))
    assert np.mean([len(v) for v in voiced]) >= 3.2  # a soprano and (mostly) three voices under it


def test_a_mode_that_needs_one_kind_names_the_other() -> None:
    with pytest.raises(ModelError, match="chorale"):
        PolyModel.load(library.SHIPPED_MODELS_DIR / "default")
    with pytest.raises(ModelError):
        Model.load(CHORALE)


def test_the_shipped_graph_scores_the_benchmark_as_pytorch_did() -> None:
    """The benchmark's test NLL of the JSB model, now through the shipped ONNX graph (TCN's protocol)."""
    from conftest import SHARED_DATA

    from training.poly_bench import evaluate_roll

    result = evaluate_roll(CHORALE, SHARED_DATA / "poly_music" / "JSB_Chorales.mat")
    meta = library.read_meta(CHORALE)
    assert result["frames"] == meta["metrics"]["test"]["frames"] == 4648
    assert abs(result["nll_per_frame"] - meta["metrics"]["test"]["nll_per_frame"]) < 1e-3


def test_models_info_describes_a_polyphonic_model(capsys: pytest.CaptureFixture[str]) -> None:
    from rtgen.cli import main

    assert main(["models", "info", "chorale"]) == 0
    out = capsys.readouterr().out
    assert "polyphonic: GRU 1 x 256 + nade head, 88 pitches, a frame = 1.0 beat" in out
    assert "JSB_Chorales" in out and "contract v" not in out

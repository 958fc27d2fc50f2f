"""The fused single-step export: exact against the PyTorch training model, same ONNX signature, far fewer nodes.

A small run is trained on real Nottingham tunes, exported twice (fused, the default, and with the
training modules as they are), and both graphs are checked against the PyTorch model and each other
on real token streams.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from rtgen import contract as C  # noqa: N812
from rtgen.generation.model import Model
from training.dataset import INPUT_KEYS, LOOKBACK_KEYS, Split
from training.export import (
    PARITY_STEPS,
    PARITY_TOLERANCE,
    _export_graph,
    check_parity,
    export,
    harmony_module,
    load_run,
    step_modules,
)
from training.model import ModelConfig, Models
from training.prepare import prepare
from training.train import train

# Nodes that only move, reshape or index data (what made the unfused graph slow at batch 1).
PLUMBING = {"Constant", "Gather", "Unsqueeze", "Squeeze", "Concat", "Reshape", "Shape", "Slice", "Transpose", "Split"}


@pytest.fixture(scope="module")
def data(nottingham_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fast") / "data"
    prepare(midi_dir=nottingham_dir, out=out, limit=12, workers=1, progress=False, quiet=True)
    return out


@pytest.fixture(scope="module")
def exported(data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One short real training run exported fused and unfused."""
    base = tmp_path_factory.mktemp("fast_export")
    run = base / "run"
    train(data, run, epochs=1, progress=False, hidden=32, layers=2, batch_size=4, window=64, max_minutes=0, threads=1)
    metas = {
        "fused": export(run, base / "fused", data, name="fused"),
        "gru": export(run, base / "gru", data, name="gru", fused=False),
    }
    return {"run": run, "base": base, "meta": metas}


def _nodes(path: Path) -> Counter[str]:
    return Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def test_fused_export_is_exact_on_real_tokens(exported: dict[str, Any]) -> None:
    meta = exported["meta"]["fused"]
    assert meta["model"]["graph"] == "fused" and exported["meta"]["gru"]["model"]["graph"] == "gru"
    parity = meta["parity"]
    assert parity["steps"] >= PARITY_STEPS >= 1000
    assert parity["source"].endswith("data")  # real prepared tunes, not random tokens
    for m in ("chord", "note"):
        assert 0.0 <= parity["max_abs_diff"][m] < PARITY_TOLERANCE


def test_fused_and_unfused_graphs_agree_through_the_runtime_loader(exported: dict[str, Any], data: Path) -> None:
    """Teacher-forced on a real tune at batch 1 through the runtime's Model: both exports give the same logits."""
    fused, gru = Model.load(exported["base"] / "fused"), Model.load(exported["base"] / "gru")
    split = Split(data, "train")
    steps = min(split.steps, 1200)
    assert steps >= 1000
    st = {k: m.initial_state(1) for k, m in (("fused", fused), ("gru", gru))}
    nst = dict(st)
    worst = 0.0
    for t in range(steps):
        feeds = {k: np.ascontiguousarray(split.arrays[k][t : t + 1], dtype=np.int64) for k in INPUT_KEYS}
        out = {}
        for k, m in (("fused", fused), ("gru", gru)):
            logits, st[k] = m.chord_step(feeds, st[k])
            mel, vel, nst[k] = m.note_step(feeds, nst[k])
            out[k] = (logits, mel, vel, st[k], nst[k])
        for a, b in zip(out["fused"], out["gru"], strict=True):
            worst = max(worst, float(np.abs(a - b).max()))
    assert worst < PARITY_TOLERANCE


def test_fused_graph_keeps_the_contract_signature(exported: dict[str, Any]) -> None:
    base = exported["base"]
    for m, n_out in (("chord", 2), ("note", 3)):
        sessions = [ort.InferenceSession(str(base / g / f"{m}.onnx"), providers=["CPUExecutionProvider"]) for g in
                    ("fused", "gru")]  # fmt: skip
        sig = [
            ([(i.name, i.type, len(i.shape)) for i in s.get_inputs()], [(o.name, o.type) for o in s.get_outputs()])
            for s in sessions
        ]
        assert sig[0] == sig[1]
        names = C.CHORD_MODEL_INPUTS if m == "chord" else C.NOTE_MODEL_INPUTS
        assert [i.name for i in sessions[0].get_inputs()] == list(names)
        # dynamic batch: batch 3 gives (3, V) logits and a (layers, 3, hidden) state
        feeds = {
            n: np.full((3, C.NUM_LOOKBACKS) if n.startswith("lookback") else 3, 2, dtype=np.int64) for n in names[:-1]
        }
        feeds["state"] = np.zeros((2, 3, 32), dtype=np.float32)
        outs = sessions[0].run(None, feeds)
        assert len(outs) == n_out and all(o.shape[0] == 3 for o in outs[:-1]) and outs[-1].shape == (2, 3, 32)
        ref = sessions[1].run(None, feeds)
        for a, b in zip(outs, ref, strict=True):
            np.testing.assert_allclose(a, b, atol=PARITY_TOLERANCE, rtol=0)


def test_fused_graph_has_far_fewer_nodes(exported: dict[str, Any]) -> None:
    base = exported["base"]
    for m in ("chord", "note"):
        fused, gru = _nodes(base / "fused" / f"{m}.onnx"), _nodes(base / "gru" / f"{m}.onnx")
        assert "GRU" in gru and "GRU" not in fused
        # one table lookup for all token inputs, one per layer of the state, one for the copy head
        assert fused["Gather"] == 1 + 2 + 1
        plumbing_fused = sum(v for k, v in fused.items() if k in PLUMBING)
        plumbing_gru = sum(v for k, v in gru.items() if k in PLUMBING)
        assert plumbing_fused <= 0.5 * plumbing_gru, (fused, gru)
        assert sum(fused.values()) < sum(gru.values())


@pytest.mark.parametrize(
    "cfg",
    [
        ModelConfig(hidden=16, layers=1, features=False),
        ModelConfig(hidden=24, layers=3, token_emb=8, small_emb=4),
        ModelConfig(hidden=16, layers=2, copy=False),
    ],
    ids=["1-layer-no-features", "3-layers", "no-copy-head"],
)
def test_fused_step_modules_are_exact_for_other_architectures(cfg: ModelConfig, tmp_path: Path) -> None:
    """Random weights with large biases, so every folded bias and table matters."""
    torch.manual_seed(3)
    models = Models(cfg).eval()
    with torch.no_grad():
        for p in models.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    chord, note = step_modules(models, fused=True)
    _export_graph(chord, C.CHORD_MODEL_INPUTS, C.CHORD_MODEL_OUTPUTS, cfg, tmp_path / "chord.onnx")
    _export_graph(note, C.NOTE_MODEL_INPUTS, C.NOTE_MODEL_OUTPUTS, cfg, tmp_path / "note.onnx")
    _export_graph(
        harmony_module(models), C.HARMONY_MODEL_INPUTS, C.HARMONY_MODEL_OUTPUTS, cfg, tmp_path / "harmony.onnx"
    )
    assert "GRU" not in _nodes(tmp_path / "chord.onnx")
    parity = check_parity(models, tmp_path, None, steps=300)
    assert parity["source"] == "random tokens"
    assert max(parity["max_abs_diff"].values()) < PARITY_TOLERANCE


def test_load_run_weights_unchanged_by_fusing(exported: dict[str, Any]) -> None:
    """Building the fused modules must not touch the trained weights (they are copied, not moved)."""
    models, _ = load_run(exported["run"])
    before = {k: v.clone() for k, v in models.state_dict().items()}
    step_modules(models, fused=True)
    after = models.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_step_binding_matches_plain_runs(exported: dict[str, Any], data: Path) -> None:
    """The engine's bound, preallocated runs give exactly what Model.chord_step / note_step give."""
    from rtgen.generation.model import StepBinding

    model = Model.load(exported["base"] / "fused")
    split = Split(data, "valid")
    feeds = {k: np.zeros((1, C.NUM_LOOKBACKS) if k in LOOKBACK_KEYS else 1, dtype=np.int64) for k in INPUT_KEYS}
    bound = StepBinding(model, feeds)
    cs, ns = model.initial_state(1), model.initial_state(1)
    for t in range(min(split.steps, 300)):
        for k in INPUT_KEYS:
            feeds[k][0] = split.arrays[k][t]
        logits, cs = model.chord_step(feeds, cs)
        mel, vel, ns = model.note_step(feeds, ns)
        np.testing.assert_array_equal(bound.run_chord(), logits)
        got_mel, got_vel = bound.run_note()
        np.testing.assert_array_equal(got_mel, mel)
        np.testing.assert_array_equal(got_vel, vel)
        np.testing.assert_array_equal(bound.chord_state, cs)
        np.testing.assert_array_equal(bound.note_state, ns)
    bound.reset()
    assert not bound.chord_state.any() and not bound.note_state.any()

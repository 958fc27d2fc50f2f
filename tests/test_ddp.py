"""The trainer under torchrun: two processes (gloo on CPU) see different data and end identical."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, require

from training.dataset import write_synthetic
from training.model import ModelConfig, Models
from training.train import DEBUG_ENV, param_hash

TORCHRUN = Path(sys.executable).parent / "torchrun"


@pytest.mark.slow
def test_torchrun_two_processes(tmp_path: Path) -> None:
    require(TORCHRUN.is_file(), f"torchrun next to {sys.executable}")
    data = write_synthetic(tmp_path / "data", sequences=8, length=200, seed=2)
    run = tmp_path / "run"
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "training.cli", "train"]
    cmd += ["--data", str(data), "--out", str(run), "--epochs", "2", "--hidden", "16", "--layers", "1"]
    cmd += ["--batch-size", "2", "--window", "64", "--max-minutes", "0", "--threads", "1", "--no-progress"]
    env = {**os.environ, DEBUG_ENV: "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("train: ") == 1  # only rank 0 prints its summary

    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 2
    r0 = json.loads((run / "rank0.json").read_text())
    r1 = json.loads((run / "rank1.json").read_text())
    assert (r0["world"], r1["world"]) == (2, 2)
    assert r0["data"] != r1["data"]  # each rank trained on its own windows
    assert r0["params"] == r1["params"]  # ... and DDP kept the weights in lockstep
    models = Models(ModelConfig(hidden=16, layers=1))
    models.load_state_dict(ckpt["models"])
    assert param_hash(models) == r0["params"]  # the checkpoint holds the final weights
    hist = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in hist] == [1, 2]


@pytest.mark.slow
def test_torchrun_trains_a_polyphonic_model(tmp_path: Path) -> None:
    """``all --kind poly`` under torchrun: each rank trains on its own windows, the weights stay in lockstep, and
    rank 0 exports a model rtgen plays."""
    from test_poly_midi import write_piece

    from rtgen.generation.poly import PolyModel

    require(TORCHRUN.is_file(), f"torchrun next to {sys.executable}")
    midi = tmp_path / "midi"
    midi.mkdir()
    for i in range(12):
        write_piece(midi / f"piece{i:02d}.mid", i)
    out, work = tmp_path / "model", tmp_path / "work"
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "training.cli", "all", "--kind", "poly"]
    cmd += ["--midi-dir", str(midi), "--out", str(out), "--work", str(work), "--tiny", "--epochs", "2"]
    env = {**os.environ, DEBUG_ENV: "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = json.loads((work / "run" / "rank0.json").read_text())
    r1 = json.loads((work / "run" / "rank1.json").read_text())
    assert (r0["world"], r1["world"]) == (2, 2)
    assert r0["data"] != r1["data"] and r0["params"] == r1["params"]
    assert PolyModel.load(out).stepper(seed=0).step().shape == (88,)

"""``rtgen-train all --kind poly``: a folder of MIDI -> a polyphonic model folder rtgen plays without torch.

The phases of the melody kind, for the three-state step model (:mod:`training.poly`):

1. prepare: :func:`training.poly_midi.prepare_poly` (every non-drum note on the step grid; corrupt files
   skipped and counted as prepare counts them);
2. train: :func:`training.poly_train.train_poly` (resumable; DDP under ``torchrun``);
3. export: :func:`training.poly_export.export` (one ONNX step graph, checked against PyTorch);
4. evaluate: :func:`evaluate_poly`: NLL per step on valid and test beside two per-pitch baselines, and renders
   sampled with the exported graph in onnxruntime (how often three or more notes sound together, beside the
   test pieces). The figures go into ``meta.json`` ``metrics``.

Under ``torchrun`` rank 0 prepares while the others wait, every rank trains, rank 0 exports and evaluates.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch.distributed as dist

from rtgen import contract as C  # noqa: N812
from rtgen import library
from rtgen.errors import RtgenError
from rtgen.generation.poly import ONSET, PolyModel
from training import poly, poly_export
from training.outputs import SMALL_DATA_STEPS, output_folders
from training.poly_midi import chord_share, load_poly_split, prepare_poly, read_poly_manifest, sounding
from training.poly_train import PolyTrainConfig, baselines, default_model, per_step, score, train_poly
from training.train import setup_distributed

TINY_MODEL = {"hidden": 48, "embed": 32, "nade_hidden": 32, "dropout": 0.0}
"""``all --kind poly --tiny``: a model small enough to train in seconds."""
TINY_TRAIN = {"window": 64, "batch_size": 8, "min_batches": 25, "threads": 1, "lr": 5e-3}
"""``all --kind poly --tiny``: short windows, one thread (the small ops of a tiny model run fastest on one)."""
SMALL_MODEL = {"hidden": 128, "embed": 64, "nade_hidden": 64, "dropout": 0.3}
"""The model for a small folder (train split under ``outputs.SMALL_DATA_STEPS`` steps)."""
RENDER_STEPS = 128
"""Steps per evaluation render (8 bars of 4/4)."""
RENDER_BAR = 4 * C.STEPS_PER_BEAT
"""Renders run in 4/4: position in bar cycles over this many steps."""


def render(model: PolyModel, steps: int, seed: int, temperature: float = 1.0) -> tuple[npt.NDArray, npt.NDArray]:
    """``(codes (steps, P), velocity bins (steps, P))`` sampled from ``model`` in onnxruntime from silence."""
    st = model.stepper(seed=seed)
    codes = np.zeros((steps, model.n_pitches), np.uint8)
    vel = np.zeros((steps, model.n_pitches), np.uint8)
    for i in range(steps):
        codes[i] = st.step(pos=i % RENDER_BAR, temperature=temperature)
        vel[i] = st.velocity[0]
    return codes, vel


def texture(codes: npt.NDArray[np.uint8]) -> dict[str, float]:
    """How full a roll of codes is: ``chord_share`` (steps with three or more notes sounding),
    ``mean_sounding`` (notes per step), ``onsets_per_step`` and ``silent_share``."""
    n = sounding(codes)
    return {"chord_share": chord_share(codes), "mean_sounding": float(n.mean()),
            "onsets_per_step": float((codes == ONSET).sum(1).mean()),
            "silent_share": float((n == 0).mean())}  # fmt: skip


def evaluate_poly(
    model_dir: Path, run: Path, data: Path, renders: int = 4, steps: int = RENDER_STEPS, seed: int = 0
) -> dict[str, Any]:
    """Score the run's best weights on valid and test beside the baselines, render with the exported graph,
    and record it all in ``model_dir/meta.json`` ``metrics``; the metrics."""
    model = poly.load(run)
    splits = {s: load_poly_split(data, s) for s in ("train", "valid", "test")}
    metrics: dict[str, Any] = {}
    for s in ("valid", "test"):
        metrics[s] = per_step(score(model, splits[s]))
        metrics[s]["baselines"] = baselines(splits["train"], splits[s])
    runtime = PolyModel.load(model_dir)
    rolls = [render(runtime, steps, seed + r)[0] for r in range(renders)]
    metrics["renders"] = {"count": renders, "steps": steps, **texture(np.concatenate(rolls))}
    metrics["renders"]["per_render_chord_share"] = [chord_share(r) for r in rolls]
    metrics["test_data"] = texture(splits["test"].state)
    meta = library.read_meta(model_dir)
    meta["metrics"] = {**meta.get("metrics", {}), **metrics}
    library.write_meta(model_dir, meta)
    return metrics


def summary_line(m: dict[str, Any]) -> str:
    """One line of the figures of :func:`evaluate_poly`."""
    t, b = m["test"], m["test"]["baselines"]
    return (f"evaluate: test NLL {t['nll_per_step']:.3f} nats/step (states {t['state_nll_per_step']:.3f}; "
            f"baselines: per-pitch Markov {b['markov']['state_nll_per_step']:.3f}, frequency "
            f"{b['frequency']['state_nll_per_step']:.3f}; velocity {t['velocity_nll_per_onset']:.3f}/onset vs "
            f"{b['velocity']['velocity_nll_per_onset']:.3f}); renders: {m['renders']['chord_share']:.0%} of steps "
            f"with 3+ notes (test pieces {m['test_data']['chord_share']:.0%})")  # fmt: skip


def run_all_poly(args: argparse.Namespace) -> int:
    """``rtgen-train all --kind poly``: prepare, train, export and evaluate; each resumes what an earlier run left."""

    if args.init_from:
        raise RtgenError("--init-from is not available with --kind poly yet; leave it out to train from random weights")
    d = setup_distributed()
    out, work = output_folders(args.out, args.work)
    data, run = work / "data", work / "run"
    t0 = time.perf_counter()
    if d.main:
        prepare_poly(midi_dir=args.midi_dir, out=data, limit=args.limit, split_map=args.split_map)
    if d.world > 1:
        dist.barrier()
    timings = {"prepare": time.perf_counter() - t0}
    manifest = read_poly_manifest(data) or {}
    train_steps = int(manifest.get("splits", {}).get("train", {}).get("steps", 0))
    model_kw = TINY_MODEL if args.tiny else SMALL_MODEL if train_steps < SMALL_DATA_STEPS else {}
    if model_kw is SMALL_MODEL and d.main:
        print(f"all: a small folder ({train_steps:,} training steps, under {SMALL_DATA_STEPS:,}): a smaller model "
              f"(hidden {SMALL_MODEL['hidden']}, dropout {SMALL_MODEL['dropout']})")  # fmt: skip
    train_kw: dict[str, Any] = dict(TINY_TRAIN) if args.tiny else {}
    if args.epochs is not None:
        train_kw["epochs"] = args.epochs
    t = time.perf_counter()
    train_poly(data, run, default_model(**model_kw), PolyTrainConfig(**train_kw))
    timings["train"] = time.perf_counter() - t
    if not d.main:
        return 0
    t = time.perf_counter()
    splits = manifest["splits"]
    source = {"source": manifest.get("source"), "files": {s: v["sequences"] for s, v in splits.items()},
              "steps": {s: v["steps"] for s, v in splits.items()}, "skipped": manifest.get("skipped")}  # fmt: skip
    meta = poly_export.export(run, out, name=out.name, step_beats=1 / C.STEPS_PER_BEAT, data=source)
    timings["export"] = time.perf_counter() - t
    t = time.perf_counter()
    metrics = evaluate_poly(out, run, data, renders=2 if args.tiny else 8)
    timings["evaluate"] = time.perf_counter() - t
    meta = library.read_meta(out)
    meta["timings"] = {k: round(v, 2) for k, v in timings.items()}
    library.write_meta(out, meta)
    print(summary_line(metrics))
    parts = ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
    named = f" (a polyphonic model: rtgen --model {args.out})" if out != Path(args.out) else ""
    print(f"all: {out}{named} ready in {time.perf_counter() - t0:.0f} s ({parts})")
    return 0

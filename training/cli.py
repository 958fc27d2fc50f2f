"""The ``rtgen-train`` command line: prepare, train, export, evaluate, and all four."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from rtgen.errors import RtgenError
from training.outputs import SMALL_DATA_STEPS, output_folders

TINY_TRAIN = {"hidden": 32, "layers": 1}
"""Overrides for ``all --tiny``: a model small enough to train in seconds."""
TINY_EVAL = {"renders": 2, "bars": 16}
"""Overrides for ``all --tiny``: a quick evaluation."""
SMALL_DATA_TRAIN = {"hidden": 128, "layers": 1, "dropout": 0.3, "weight_decay": 0.1}
"""What ``all`` trains on a small folder: one GRU layer, more dropout and weight decay. Measured on 43 MuseData
pieces (3 tracks each), 20 epochs: test note NLL 1.15 of the n-gram's (default model 1.30; hidden 64: 1.25)."""


def small_data_overrides(data: Path) -> dict[str, float]:
    """:data:`SMALL_DATA_TRAIN` when the prepared train split of ``data`` is under :data:`SMALL_DATA_STEPS`."""
    from training.prepared import read_manifest

    steps = int(read_manifest(data)["splits"]["train"]["steps"])
    if steps >= SMALL_DATA_STEPS:
        return {}
    shown = ", ".join(f"{k.replace('_', ' ')} {v:g}" for k, v in SMALL_DATA_TRAIN.items())
    print(f"all: a small folder ({steps:,} training steps, under {SMALL_DATA_STEPS:,}): training a smaller, more "
          f"regularised model ({shown})")  # fmt: skip
    return dict(SMALL_DATA_TRAIN)


def build_parser() -> argparse.ArgumentParser:
    """Parser with one subcommand per phase, plus ``all``."""
    from training import (
        accompaniment,
        chorale_eval,
        evaluate,
        export,
        poly_bench,
        poly_export,
        poly_table,
        prepare,
        train,
    )

    parser = argparse.ArgumentParser(prog="rtgen-train", description="Train rtgen models from a folder of MIDI files.")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    sub = parser.add_subparsers(dest="command", metavar="PHASE", required=True)
    for module in (prepare, train, export, evaluate, accompaniment, poly_bench, poly_table, poly_export, chorale_eval):
        module.register(sub)
    p = sub.add_parser("all", help="prepare, train, export and evaluate in one go")
    p.add_argument("--midi-dir", type=Path, required=True, help="folder of MIDI files (searched recursively)")
    p.add_argument(
        "--out",
        required=True,
        metavar="NAME|DIR",
        help="model folder to write (chord.onnx, note.onnx, ...); a bare NAME (not an existing folder) goes into "
        "your models folder (rtgen models list), for rtgen --model NAME",
    )
    p.add_argument(
        "--work",
        type=Path,
        default=None,
        help="folder for prepared data and the run (default: OUT.work; for a NAME, .work/NAME in your models folder)",
    )
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the trainer's)")
    p.add_argument("--limit", type=int, default=None, help="use at most N MIDI files")
    p.add_argument("--split-map", type=Path, default=None, help="CSV mapping files to splits (default: auto)")
    p.add_argument(
        "--init-from",
        default=None,
        metavar="RUN|MODEL|FILE.pt",
        help="fine-tune: start from the PyTorch weights of an earlier run, or of a model folder (the weights.pt "
        "export writes beside the graphs; the shipped default has one)",
    )
    p.add_argument("--tiny", action="store_true", help="a tiny model and a quick evaluation (for tests and smoke runs)")
    p.add_argument(
        "--kind",
        choices=("melody", "poly"),
        default="melody",
        help="melody: melody + chord models (the default); poly: the polyphonic step model, every non-drum note "
        "kept (off / onset / held per pitch, velocities)",
    )
    p.set_defaults(func=run_all)
    return parser


def run_all(args: argparse.Namespace) -> int:
    """Run the four phases; each phase resumes what an earlier run left."""
    if args.kind == "poly":
        from training.poly_all import run_all_poly

        return run_all_poly(args)
    from training import evaluate, export, prepare, train

    out, work = output_folders(args.out, args.work)
    data, run = work / "data", work / "run"
    init = str(train.init_checkpoint(args.init_from)) if args.init_from else None  # before any work is done
    t0 = time.perf_counter()
    prepare.prepare(midi_dir=args.midi_dir, out=data, limit=args.limit, split_map=args.split_map)
    timings: dict[str, float] = {"prepare": time.perf_counter() - t0}
    # fine-tuning keeps the architecture of its weights; --tiny is smaller still than a small folder's model
    model = {} if init else TINY_TRAIN if args.tiny else small_data_overrides(data)
    for name, fn, kwargs in (
        ("train", train.train, {"data": data, "out": run, "epochs": args.epochs, "init_from": init, **model}),
        ("export", export.export, {"run": run, "out": out, "data": data}),
        ("evaluate", evaluate.evaluate, {"model": out, "data": data, **(TINY_EVAL if args.tiny else {})}),
    ):  # fmt: skip
        t = time.perf_counter()
        fn(**kwargs)
        timings[name] = time.perf_counter() - t
    export.record_timings(out, timings)
    total = time.perf_counter() - t0
    parts = ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
    named = f" (rtgen --model {args.out})" if out != Path(args.out) else ""
    print(f"all: {out}{named} ready in {total:.0f} s ({parts})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rtgen-train`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2), format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except RtgenError as err:
        print(f"rtgen-train {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""``rtgen-train poly-table``: the polyphonic benchmark's whole table in one command.

Trains (or resumes) one ``poly-bench`` run per dataset in ``OUT/DATASET`` with the settings chosen on valid
(:data:`SETTINGS`), then writes the table, the published rows beside rtgen's, as ``OUT/poly_table.md`` and
``OUT/poly_table.json``; with ``--readme README.md`` it also replaces the README's table between
:data:`BEGIN` and :data:`END`. A dataset whose run already finished is only read again, so the command is
also how the README's table is refreshed after a single run.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rtgen.errors import RtgenError
from training import poly
from training.poly_bench import BENCH_FILE, DATA_DIR, BenchConfig, train
from training.poly_data import load_rolls

log = logging.getLogger(__name__)

DATASETS = ("Nottingham", "JSB_Chorales", "MuseData", "Piano_midi")
"""The benchmark's files (``DATASET.mat``), in the published table's column order."""
LABELS = {"Nottingham": "Nottingham", "JSB_Chorales": "JSB", "MuseData": "MuseData", "Piano_midi": "Piano-midi"}

PUBLISHED: dict[str, dict[str, float]] = {
    "RNN-NADE (Boulanger-Lewandowski 2012)": {"Nottingham": 2.31, "JSB_Chorales": 5.19, "MuseData": 5.60,
                                              "Piano_midi": 7.05},
    "RRU (2021)": {"Nottingham": 2.92, "JSB_Chorales": 7.72, "MuseData": 7.03, "Piano_midi": 7.38},
    "TCN (Bai et al. 2018)": {"Nottingham": 3.07, "JSB_Chorales": 8.10},
    "GRU (Chung et al. 2014)": {"JSB_Chorales": 8.54},
}  # fmt: skip
"""Test NLL in nats per frame as published (issue #18's table)."""

ROW = "rtgen (GRU + RNN-NADE head)"
"""The label of our row: the README's table is found by it."""
BEGIN = "<!-- poly-table: written by `rtgen-train poly-table --readme README.md` -->"
END = "<!-- /poly-table -->"


@dataclass(frozen=True)
class Setting:
    """The run settings chosen on a dataset's valid split (``docs/internals.md`` §10 has the alternatives)."""

    dropout: float
    lr: float


SETTINGS = {
    "Nottingham": Setting(dropout=0.3, lr=3e-3),
    "JSB_Chorales": Setting(dropout=0.5, lr=5e-3),
    "MuseData": Setting(dropout=0.5, lr=3e-3),
    "Piano_midi": Setting(dropout=0.5, lr=3e-3),
}


def run_dataset(dataset: str, data_dir: Path, out: Path, max_minutes: float, epochs: int) -> dict[str, Any]:
    """Train (or resume, or only read) ``dataset``'s run in ``out``; its ``poly_bench.json`` figures."""
    path = data_dir / f"{dataset}.mat"
    if not path.exists():
        found = sorted(f.stem for f in data_dir.glob("*.mat"))
        raise RtgenError(f"no {path} (datasets there: {', '.join(found) or 'none'})")
    setting = SETTINGS[dataset]
    model_cfg = poly.PolyConfig(head="nade", dropout=setting.dropout)
    cfg = BenchConfig(epochs=epochs, lr=setting.lr, max_minutes=max_minutes)
    done = out / BENCH_FILE
    if done.exists():
        figures: dict[str, Any] = json.loads(done.read_text())
        if figures["train_config"] == json.loads(json.dumps(cfg.__dict__)):
            return figures  # this very run finished before: nothing to train
    log.warning("poly-table: %s, up to %g minutes", dataset, max_minutes)
    return train(load_rolls(path), out, model_cfg, cfg, progress=False)


def table_markdown(results: dict[str, dict[str, Any]]) -> str:
    """The table: the published rows, then rtgen's (``–`` where a row has no figure)."""
    head = "| model | " + " | ".join(LABELS[d] for d in DATASETS) + " |"
    lines = [head, "|---|" + "---:|" * len(DATASETS)]
    for name, row in PUBLISHED.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[d]:.2f}" if d in row else "–" for d in DATASETS) + " |")
    ours = [f"**{results[d]['test']['nll_per_frame']:.3f}**" if d in results else "–" for d in DATASETS]
    lines.append(f"| {ROW} | " + " | ".join(ours) + " |")
    runs = ", ".join(
        f"{LABELS[d]} {results[d]['train_minutes']:.1f} min / {results[d]['epochs']} epochs"
        for d in DATASETS
        if d in results
    )
    return "\n".join(lines) + f"\n\nTest NLL, nats per frame (lower is better). rtgen's runs: {runs}.\n"


def replace_block(text: str, block: str) -> str:
    """``text`` with what stands between :data:`BEGIN` and :data:`END` replaced by ``block``.

    Raises:
        RtgenError: the markers are missing.
    """
    start, stop = text.find(BEGIN), text.find(END)
    if start < 0 or stop < start:
        raise RtgenError(f"no {BEGIN!r} ... {END!r} block to replace")
    return text[: start + len(BEGIN)] + "\n" + block + text[stop:]


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``poly-table`` subcommand to ``rtgen-train``."""
    p = subparsers.add_parser("poly-table", help="the polyphonic benchmark's table: every dataset's run, one table")
    p.add_argument("--out", type=Path, required=True, help="one run folder per dataset goes in here")
    p.add_argument("--data-dir", type=Path, default=DATA_DIR, help=f"folder of the .mat files (default: {DATA_DIR})")
    p.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    p.add_argument("--max-minutes", type=float, default=40.0, help="training budget per dataset (default 40)")
    p.add_argument("--epochs", type=int, default=BenchConfig().epochs, help="most passes over train per dataset")
    p.add_argument("--readme", type=Path, help="also replace the table in this README (between its markers)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    results = {d: run_dataset(d, args.data_dir, args.out / d, args.max_minutes, args.epochs) for d in args.datasets}
    text = table_markdown(results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "poly_table.md").write_text(text)
    summary = {d: {k: r[k] for k in ("params", "epochs", "train_minutes", "frames_per_s", "valid", "test")}
               for d, r in results.items()}  # fmt: skip
    (args.out / "poly_table.json").write_text(json.dumps(summary, indent=2) + "\n")
    if args.readme is not None:
        args.readme.write_text(replace_block(args.readme.read_text(), text))
    print(text, end="")
    return 0

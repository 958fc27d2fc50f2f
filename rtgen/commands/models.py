"""``rtgen models``: the model library (``list`` the shipped and your own models, ``info NAME`` on one)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rtgen.config import CONFIG_HELP, Config, default_config_path, load_config
from rtgen.library import POLY_KIND, ModelEntry


def register(subparsers: Any) -> None:
    """Add the ``models`` subcommand with ``list`` and ``info``."""
    p = subparsers.add_parser(
        "models",
        help="list the shipped and your own models; show one model's card and metrics",
        description="The model library: the models shipped with rtgen and your own in the user models folder "
        "($RTGEN_MODELS, else [model] library in the config, else ~/.local/share/rtgen/models). "
        "--model NAME finds them by name (an existing folder of that name wins).",
    )
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = sub.add_parser("list", help="every model there is, shipped and yours")
    info = sub.add_parser("info", help="a model's card summary and its metrics")
    info.add_argument("model", metavar="NAME|DIR", help="a model name (rtgen models list) or folder")
    for q in (ls, info):
        q.add_argument("--config", type=Path, help=CONFIG_HELP)
        q.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(func=run_list)
    info.set_defaults(func=run_info)


def _config(args: argparse.Namespace) -> Config:
    return load_config(args.config if args.config is not None else default_config_path())


def _summary(entry: ModelEntry) -> dict[str, Any]:
    return {
        "name": entry.name,
        "origin": entry.origin,
        "kind": entry.kind,
        "path": str(entry.path),
        "contract": entry.contract_version,
        "params": entry.params,
        "exported": entry.meta.get("exported", ""),
        "problem": entry.problem,
    }


def run_list(args: argparse.Namespace) -> int:
    """Print the models: name, where from, kind (``poly`` / ``melody``), contract, parameters, export date, folder."""
    from rtgen.library import list_models

    cfg = _config(args)
    user_dir = cfg.models_dir
    entries = list_models(user_dir)
    if args.json:
        print(json.dumps({"models": [_summary(e) for e in entries], "user_dir": str(user_dir)}, indent=2))
        return 0
    rows = [("NAME", "FROM", "KIND", "CONTRACT", "PARAMS", "EXPORTED", "FOLDER")]
    for e in entries:
        version = f"v{e.contract_version}" if e.contract_version is not None else "-" if e.kind == POLY_KIND else "?"
        params = f"{e.params / 1e6:.2f} M" if e.params else "?"
        exported = str(e.meta.get("exported", ""))[:10] or "?"
        folder = str(e.path) + (f"  ({e.problem})" if e.problem else "")
        rows.append((e.name, e.origin, e.kind, version, params, exported, folder))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(f"{cell:{w}}" for cell, w in zip(r, widths, strict=False)) + "  " + r[-1])
    if not any(e.origin == "user" for e in entries):
        print(f"\nno models of yours yet in {user_dir}: rtgen-train all --midi-dir DIR --out NAME writes one there")
    else:
        print(f"\nyour models: {user_dir}")
    return 0


def card_summary(folder: Path) -> str:
    """The summary of a model card: the text between ``MODEL_CARD.md``'s title and its first section."""
    try:
        text = (folder / "MODEL_CARD.md").read_text(encoding="utf-8")
    except OSError:
        return ""
    lines: list[str] = []
    for line in text.splitlines():
        if line.startswith("## "):
            break
        if not line.startswith("# "):
            lines.append(line)
    return "\n".join(lines).strip()


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def scalar_metrics(meta: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{split: {metric: number}}``: the single-number metrics in ``meta.json`` (tables are left out)."""
    metrics = meta.get("metrics")
    if not isinstance(metrics, dict):
        return {}
    out: dict[str, dict[str, Any]] = {}
    for split, block in metrics.items():
        if isinstance(block, dict):
            out[split] = {k: v for k, v in block.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    return out


def run_info(args: argparse.Namespace) -> int:
    """Print one model: where it is, its card's summary, how it was made, and its metrics."""
    from rtgen.library import SHIPPED_MODELS_DIR, read_entry, resolve_model

    cfg = _config(args)
    path = resolve_model(args.model, base=Path.cwd(), user_dir=cfg.models_dir)
    shipped = path.parent == SHIPPED_MODELS_DIR.resolve()
    origin = "shipped" if shipped else "user" if path.parent == cfg.models_dir.resolve() else "folder"
    entry = read_entry(path, origin)
    summary = card_summary(path)
    metrics = scalar_metrics(entry.meta)
    if args.json:
        print(json.dumps({**_summary(entry), "summary": summary, "metrics": metrics}, indent=2))
        return 0
    print(f"{entry.name} ({entry.origin}): {path}")
    if entry.problem:
        print(f"cannot play: {entry.problem}")
    if summary:
        print(f"\n{summary}\n")
    meta = entry.meta
    model: dict[str, Any] = meta["model"] if isinstance(meta.get("model"), dict) else {}
    arch = f"{model.get('backbone', '?')} {model.get('layers', '?')} x {model.get('hidden', '?')}" if model else "?"
    exported = meta.get("exported", "?")
    block = meta.get("poly") if isinstance(meta.get("poly"), dict) else {}
    data = meta.get("data")
    if entry.kind == POLY_KIND and block:
        cfg_m = model.get("config", {}) if isinstance(model.get("config"), dict) else {}
        head = f"GRU {cfg_m.get('layers', '?')} x {cfg_m.get('hidden', '?')} + {model.get('head', '?')} head"
        key = ", trained in C major / C minor" if block.get("centred_key") else ""
        print(f"polyphonic: {head}, {block.get('n_pitches', '?')} pitches, a frame = {block.get('step_beats', '?')} "
              f"beat{key}; {entry.params:,} parameters, exported {exported}")  # fmt: skip
        if isinstance(data, dict) and data:
            print(f"data: {data.get('dataset', '?')} ({data.get('split', '?')}; license {data.get('license', '?')})")
    else:
        print(f"contract v{entry.contract_version}, {arch}, {entry.params:,} parameters, exported {exported}")
    if isinstance(data, dict) and entry.kind != POLY_KIND:
        files = data.get("files")
        split = ", ".join(f"{k} {v}" for k, v in files.items()) if isinstance(files, dict) else "?"
        print(f"data: {data.get('source', '?')} ({split} files; license {data.get('license', '?')})")
    training = meta.get("training")
    if isinstance(training, dict):
        print(f"training: {training.get('epochs', '?')} epochs in {training.get('seconds', '?')} s")
    for split, values in metrics.items():
        print(f"\nmetrics ({split}):")
        width = max((len(k) for k in values), default=0)
        for key, value in values.items():
            print(f"  {key:{width}}  {_fmt(value)}")
    if not metrics:
        print("\nno metrics: evaluate it with rtgen-train evaluate --model DIR --data DATA")
    return 0

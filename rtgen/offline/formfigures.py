"""Song-form figures of renders (``python -m rtgen.offline.formfigures``): the numbers in EVALUATION.md."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rtgen.arrange.form import FormSection, parse_form, section_similarity
from rtgen.config import Config
from rtgen.generation.model import Model


def measure_form(model: Model, config: Config, form: Sequence[FormSection], seeds: Sequence[int]) -> dict[str, Any]:
    """:func:`section_similarity` over renders of ``form`` with each seed: the figures of EVALUATION.md.

    Returns:
        ``{"renders": [FormReport as dict, ...], "mean": {...}, "min": {...}, "max": {...}, "final_tonic": share,
        "final_note_tonic": share}``.
    """
    from rtgen.offline.render import render_steps

    reports = []
    for seed in seeds:
        r = render_steps(model, config, 0, seed, form=form)
        if r.params.key is None:  # pragma: no cover - a form always gets a key (estimated when not locked)
            raise ValueError("the render has no key")
        reports.append(dataclasses.asdict(section_similarity(r.steps, form, r.params.key)) | {"seed": seed})
    fields = ("same_melody", "different_melody", "same_chords", "different_chords")
    values = {f: [rep[f] for rep in reports if rep[f] is not None] for f in fields}
    return {
        "renders": reports,
        "mean": {f: float(np.mean(v)) if v else None for f, v in values.items()},
        "min": {f: float(np.min(v)) if v else None for f, v in values.items()},
        "max": {f: float(np.max(v)) if v else None for f, v in values.items()},
        "final_tonic": float(np.mean([rep["final_is_tonic"] for rep in reports])) if reports else None,
        "final_note_tonic": float(np.mean([rep["final_note_is_tonic"] for rep in reports])) if reports else None,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rtgen.offline.formfigures [--model DIR] [--form FORM] [--seeds N] [--key KEY]``: the figures."""
    import argparse
    import json

    from rtgen.config import default_config_path, load_config

    parser = argparse.ArgumentParser(
        prog="python -m rtgen.offline.formfigures", description="Song-form figures of renders."
    )
    parser.add_argument("--model", type=Path, help="model folder (default: the config's)")
    parser.add_argument("--form", default="intro:4 A:8 A:8 B:8 A:8 outro:4")
    parser.add_argument("--seeds", type=int, default=10, help="renders, seeds 0..N-1")
    parser.add_argument("--key", help='key lock, e.g. "G major" (default: estimated from the first section)')
    args = parser.parse_args(argv)
    cfg = load_config(default_config_path())
    if args.key is not None:
        cfg = cfg.replace("generation", key=args.key)
    model = Model.load(args.model if args.model is not None else cfg.model_path)
    out = measure_form(model, cfg, parse_form(args.form), range(args.seeds))
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

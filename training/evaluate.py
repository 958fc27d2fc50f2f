"""``rtgen-train evaluate``: held-out NLL against an n-gram baseline, musical statistics of renders, accompaniment.

Works from a model folder alone: the exported ONNX graphs run in onnxruntime (no torch), all test
sequences batched together along the dynamic batch axis with teacher forcing. Results go into
``meta.json`` under ``metrics.test`` and into ``EVALUATION.md`` next to it; ``MODEL_CARD.md`` is
re-rendered when the exporter provides ``write_model_card``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from rtgen import contract
from rtgen.errors import ModelError
from rtgen.model import Model
from training import stats
from training.accompaniment import evaluate_accompaniment
from training.accompaniment import report_markdown as accompaniment_markdown
from training.ngram import OrderSelection, Stream, select_order
from training.prepare import DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
ARRAYS = ("melody", "velocity", "chord", "position", "phrase")
TARGETS = {"note_ratio": 0.75, "chord_ratio": 0.90, "copy_rate": 0.02}
"""Pass when the value is at most the target."""
LONG_COPY_WINDOW = 64
"""Steps in the long copy-rate window (4 bars of 4/4 at sixteenths)."""
MAX_NGRAM_ORDER = 32
"""Highest n-gram order tried; valid picks the order. Capping it low would flatter our models."""
BATCH = 512
"""Sequences run together through onnxruntime (the dynamic batch axis)."""


@dataclass(frozen=True)
class Split:
    """One split of prepared data (docs/internals.md §1), as int64 arrays.

    Attributes:
        melody, velocity, chord, position, phrase: flat arrays, one entry per step.
        offsets: ``(n_sequences + 1,)`` start of each sequence.
    """

    melody: npt.NDArray[np.int64]
    velocity: npt.NDArray[np.int64]
    chord: npt.NDArray[np.int64]
    position: npt.NDArray[np.int64]
    phrase: npt.NDArray[np.int64]
    offsets: npt.NDArray[np.int64]

    @property
    def sequences(self) -> int:
        """Number of sequences."""
        return int(self.offsets.size - 1)

    def seq(self, name: str, i: int) -> npt.NDArray[np.int64]:
        """Array ``name`` of sequence ``i``."""
        arr: npt.NDArray[np.int64] = getattr(self, name)
        return arr[self.offsets[i] : self.offsets[i + 1]]

    def stream(self, name: str) -> Stream:
        """The ``melody`` or ``chord`` stream with positions, for the n-gram."""
        return Stream(getattr(self, name), self.position, self.offsets)


def load_split(data: Path, split: str) -> Split:
    """Load one split of a prepared-data folder.

    Raises:
        DataError: the folder, the manifest or an array is missing or unreadable.
    """
    folder = Path(data) / split
    manifest_path = Path(data) / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(
            f"{data} is not a prepared-data folder ({manifest_path}: {err}); run rtgen-train prepare --out {data}"
        ) from err
    if manifest.get("contract_version") != contract.CONTRACT_VERSION:
        raise DataError(
            f"{data} was prepared for token contract v{manifest.get('contract_version')}, this code speaks "
            f"v{contract.CONTRACT_VERSION}; run rtgen-train prepare --out {data} again"
        )
    arrays: dict[str, npt.NDArray[np.int64]] = {}
    for name in (*ARRAYS, "offsets"):
        path = folder / f"{name}.npy"
        try:
            arrays[name] = np.load(path, mmap_mode="r").astype(np.int64)
        except (OSError, ValueError) as err:
            raise DataError(f"cannot read {path}: {err}; re-run rtgen-train prepare --out {data}") from err
    n = int(arrays["offsets"][-1])
    bad = [k for k in ARRAYS if arrays[k].shape != (n,)]
    if bad:
        raise DataError(f"{folder}: arrays {bad} do not have offsets[-1] = {n} steps; re-run rtgen-train prepare")
    return Split(**arrays)


# --- model NLL -------------------------------------------------------------------------------------------
def _nll_at(logits: npt.NDArray[np.float32], targets: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    """Negative log-softmax of ``logits (B, V)`` at ``targets (B,)``, in nats."""
    x = logits.astype(np.float64)
    mx = x.max(axis=1, keepdims=True)
    lse = np.log(np.exp(x - mx).sum(axis=1)) + mx[:, 0]
    return lse - x[np.arange(x.shape[0]), targets]  # type: ignore[no-any-return]


def model_nll(model: Model, split: Split, batch: int = BATCH, progress: bool | None = None) -> dict[str, npt.NDArray]:
    """Per-step NLL of the chord, melody and velocity targets under the model, teacher-forced.

    Sequences run in batches sorted by length; at step ``t`` only those still running are fed, so no
    padding reaches the graphs. Each sequence starts from the all-zero state.

    Returns:
        ``{"chord": ..., "melody": ..., "velocity": ...}``, flat arrays aligned with the split's steps.
    """
    n = int(split.offsets[-1])
    out = {k: np.zeros(n) for k in ("chord", "melody", "velocity")}
    lengths = np.diff(split.offsets)
    order = np.argsort(-lengths, kind="stable")
    total = int(sum(lengths))
    with tqdm(total=total, desc="model NLL", unit="step", disable=_no_bar(progress), leave=False) as bar:
        for b0 in range(0, order.size, batch):
            idx = order[b0 : b0 + batch]
            _run_batch(model, split, idx, out, bar)
    return out


def _run_batch(model: Model, split: Split, idx: npt.NDArray[np.int64], out: dict[str, npt.NDArray], bar: tqdm) -> None:
    lengths = np.diff(split.offsets)[idx]
    steps = int(lengths[0])
    b = idx.size
    names = (*contract.COMMON_INPUTS, "chord_now")
    # (T, B, ...) so that the rows fed at step t are contiguous
    feeds: dict[str, npt.NDArray[np.int64]] = {}
    for col, i in enumerate(idx):
        seq = {k: split.seq(k, int(i)) for k in ARRAYS}
        ln = seq["melody"].size
        inputs = contract.step_inputs(seq["melody"], seq["velocity"], seq["chord"], seq["position"])
        inputs.update(position=seq["position"], phrase=seq["phrase"])
        inputs.update(melody=seq["melody"], velocity=seq["velocity"], chord=seq["chord"])
        for k, v in inputs.items():
            if k not in feeds:
                feeds[k] = np.zeros((steps, b, *v.shape[1:]), dtype=np.int64)
            feeds[k][:ln, col] = v
    nll = {k: np.zeros((steps, b)) for k in ("chord", "melody", "velocity")}
    chord_state = model.initial_state(b)
    note_state = model.initial_state(b)
    active = b
    for t in range(steps):
        while active > 0 and lengths[active - 1] <= t:
            active -= 1
        if chord_state.shape[1] != active:
            chord_state = np.ascontiguousarray(chord_state[:, :active])
            note_state = np.ascontiguousarray(note_state[:, :active])
        step_feeds = {k: feeds[k][t, :active] for k in names}
        chord_logits, chord_state = model.chord_step(step_feeds, chord_state)
        mel_logits, vel_logits, note_state = model.note_step(step_feeds, note_state)
        nll["chord"][t, :active] = _nll_at(chord_logits, feeds["chord"][t, :active])
        nll["melody"][t, :active] = _nll_at(mel_logits, feeds["melody"][t, :active])
        nll["velocity"][t, :active] = _nll_at(vel_logits, feeds["velocity"][t, :active])
        bar.update(active)
    for col, i in enumerate(idx):
        a, ln = int(split.offsets[i]), int(lengths[col])
        for k in nll:
            out[k][a : a + ln] = nll[k][:ln, col]


def _no_bar(progress: bool | None) -> bool | None:
    """tqdm's ``disable``: None lets tqdm decide (off when not on a terminal)."""
    return None if progress is None else not progress


# --- renders ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Render:
    """Tokens of one unconstrained render (4/4)."""

    melody: npt.NDArray[np.int64]
    chord_now: npt.NDArray[np.int64]
    position: npt.NDArray[np.int64]


def render(model: Model, bars: int, seed: int) -> Render:
    """Let the engine play ``bars`` bars of 4/4 alone at temperature 1, top-p 1, full pitch range, no key lock."""
    from rtgen.config import GenerationConfig
    from rtgen.engine import Engine, Params

    gen = GenerationConfig(
        seed=seed, temperature=1.0, top_p=1.0, time_signature="4/4", key="off", density=1.0,
        pitch_low=contract.PITCH_MIN, pitch_high=contract.PITCH_MAX,
    )  # fmt: skip
    params = Params.from_config(gen)
    engine = Engine(model, params, seed=seed)
    n = bars * params.time_signature.bar_steps
    mel, ch, pos = (np.zeros(n, dtype=np.int64) for _ in range(3))
    for t in range(n):
        s = engine.step()
        mel[t], ch[t], pos[t] = s.melody_token, s.chord_now, s.position
    return Render(mel, ch, pos)


# --- evaluation ------------------------------------------------------------------------------------------
def _mean(x: npt.NDArray[np.float64], mask: npt.NDArray[np.bool_] | None = None) -> float:
    sel = x if mask is None else x[mask]
    return float(sel.mean()) if sel.size else float("nan")


def _ngram(
    train: Split, valid: Split, test: Split, name: str, max_order: int
) -> tuple[OrderSelection, npt.NDArray[np.float64]]:
    vocab = contract.MELODY_VOCAB_SIZE if name == "melody" else contract.CHORD_VOCAB_SIZE
    t0 = time.perf_counter()
    sel = select_order(train.stream(name), valid.stream(name), vocab, max_order)
    nll = -sel.model.log_prob(test.stream(name), sel.order)
    log.info("%s n-gram: order %d, fit + select + score %.1f s", name, sel.order, time.perf_counter() - t0)
    return sel, nll


def _json_safe(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    return x


def evaluate(
    model: Path,
    data: Path,
    *,
    bars: int = 64,
    renders: int = 8,
    seed: int = 0,
    max_order: int = MAX_NGRAM_ORDER,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Evaluate a model folder on the test split of a prepared-data folder and record the results.

    Args:
        model: model folder (chord.onnx, note.onnx, meta.json).
        data: prepared-data folder (docs/internals.md §1).
        bars: bars per render for the musical statistics.
        renders: number of renders (seeds ``seed .. seed+renders-1``).
        seed: first render seed.
        max_order: highest n-gram order tried on valid.
        progress: show progress bars (``None``: only on a terminal).

    Returns:
        The metrics written into ``meta.json`` under ``metrics.test``.

    Raises:
        ModelError: the model folder cannot be loaded.
        DataError: the prepared data is missing or malformed.
    """
    model, data = Path(model), Path(data)
    t_start = time.perf_counter()
    splits = {s: load_split(data, s) for s in SPLITS}
    train, valid, test = splits["train"], splits["valid"], splits["test"]
    if test.sequences == 0:
        raise DataError(f"{data}/test has no sequences; prepare more files or check the split map")
    # One intra-op thread: measured faster than two here, both for the batched NLL and the B=1 renders
    # (onnxruntime's spinning worker threads lose badly on a shared 2-core machine).
    m = Model.load(model, threads=1)

    t0 = time.perf_counter()
    nll = model_nll(m, test, progress=progress)
    t_model = time.perf_counter() - t0
    onset = test.melody >= contract.MEL_NOTE_OFFSET
    change = test.chord != contract.CHORD_HOLD

    t0 = time.perf_counter()
    mel_sel, mel_ng = _ngram(train, valid, test, "melody", max_order)
    ch_sel, ch_ng = _ngram(train, valid, test, "chord", max_order)
    t_ngram = time.perf_counter() - t0

    metrics: dict[str, Any] = {
        "note_nll": _mean(nll["melody"]),
        "note_nll_ngram": _mean(mel_ng),
        "note_nll_onset": _mean(nll["melody"], onset),
        "note_nll_onset_ngram": _mean(mel_ng, onset),
        "velocity_nll_onset": _mean(nll["velocity"], onset),
        "chord_nll": _mean(nll["chord"]),
        "chord_nll_ngram": _mean(ch_ng),
        "chord_nll_change": _mean(nll["chord"], change),
        "chord_nll_change_ngram": _mean(ch_ng, change),
        "ngram_order_melody": mel_sel.order,
        "ngram_order_chord": ch_sel.order,
        "test_steps": int(test.offsets[-1]),
        "test_sequences": test.sequences,
    }
    metrics["note_ratio"] = metrics["note_nll"] / metrics["note_nll_ngram"]
    metrics["chord_ratio"] = metrics["chord_nll"] / metrics["chord_nll_ngram"]

    # statistics of the test set itself
    idx = range(test.sequences)
    metrics["in_scale_data"] = stats.pooled(stats.in_scale(test.seq("melody", i)) for i in idx).value
    chord_now = np.concatenate([contract.resolve_holds(test.seq("chord", i), contract.CHORD_HOLD, contract.CHORD_NC)
                                for i in idx])  # fmt: skip
    metrics["chord_tone_strong_data"] = stats.chord_tone_strong(
        test.melody, chord_now, stats.strong_beats(test.position)
    ).value
    metrics["self_repetition_data"] = stats.pooled(
        stats.self_repetition(test.seq("melody", i), test.seq("position", i)) for i in idx
    ).value

    # statistics of the model's renders
    t0 = time.perf_counter()
    copy_index = stats.CopyIndex(train.melody, train.offsets)
    rend = [render(m, bars, seed + k) for k in tqdm(range(renders), desc="renders", disable=_no_bar(progress))]
    metrics["in_scale"] = stats.pooled(stats.in_scale(r.melody) for r in rend).value
    metrics["chord_tone_strong"] = stats.pooled(
        stats.chord_tone_strong(r.melody, r.chord_now, stats.strong_beats(r.position)) for r in rend
    ).value
    metrics["self_repetition"] = stats.pooled(stats.self_repetition(r.melody, r.position) for r in rend).value
    metrics["copy_rate"] = stats.pooled(copy_index.copy_rate(r.melody) for r in rend).value
    metrics["copy_rate_data"] = stats.pooled(
        copy_index.copy_rate(test.seq("melody", i)) for i in idx
    ).value  # test pieces against train: duplicates and shared tunes set the floor
    # One bar (16 steps) is idiom, not plagiarism: 4-bar windows show copying of whole phrases.
    long_index = stats.CopyIndex(train.melody, train.offsets, window=LONG_COPY_WINDOW)
    metrics["copy_rate_64"] = stats.pooled(long_index.copy_rate(r.melody) for r in rend).value
    metrics["copy_rate_64_data"] = stats.pooled(long_index.copy_rate(test.seq("melody", i)) for i in idx).value
    metrics["renders"] = {"count": renders, "bars": bars, "seed": seed, "temperature": 1.0, "top_p": 1.0}
    t_render = time.perf_counter() - t0
    t0 = time.perf_counter()
    metrics["accompaniment"] = evaluate_accompaniment(m, data, "test", seed=seed)
    t_accompany = time.perf_counter() - t0
    metrics["seconds"] = {"model_nll": round(t_model, 2), "ngram": round(t_ngram, 2), "renders": round(t_render, 2),
                          "accompaniment": round(t_accompany, 2),
                          "total": round(time.perf_counter() - t_start, 2)}  # fmt: skip
    metrics["ngram_valid_nll"] = {
        "melody": {str(k): round(v, 4) for k, v in mel_sel.valid_nll.items()},
        "chord": {str(k): round(v, 4) for k, v in ch_sel.valid_nll.items()},
    }
    metrics = _json_safe(metrics)
    _record(model, metrics)
    print(
        f"evaluate: {model.name}: note NLL {metrics['note_nll']:.3f} vs n-gram {metrics['note_nll_ngram']:.3f} "
        f"(ratio {metrics['note_ratio']:.2f}), chord NLL {metrics['chord_nll']:.3f} vs "
        f"{metrics['chord_nll_ngram']:.3f} (ratio {metrics['chord_ratio']:.2f}), "
        f"copy rate {_pct(metrics['copy_rate'])} -> {model / 'EVALUATION.md'}"
    )
    return metrics


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def _record(model_dir: Path, metrics: dict[str, Any]) -> None:
    """Write ``metrics.test`` into meta.json (atomically), EVALUATION.md, and re-render the model card."""
    meta_path = model_dir / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ModelError(f"cannot read {meta_path}: {err}; re-export the model with rtgen-train export") from err
    meta.setdefault("metrics", {})["test"] = metrics
    tmp = meta_path.with_suffix(".json.tmp")
    try:
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
        tmp.replace(meta_path)
        (model_dir / "EVALUATION.md").write_text(report_markdown(meta.get("name") or model_dir.name, metrics))
    except OSError as err:
        raise ModelError(f"cannot write the evaluation into {model_dir}: {err}") from err
    try:
        from training.export import write_model_card
    except ImportError:
        log.info("training.export.write_model_card not available; MODEL_CARD.md not re-rendered")
        return
    write_model_card(model_dir)


def _fmt(x: Any, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def report_markdown(name: str, m: dict[str, Any]) -> str:
    """The Markdown evaluation report of a model from its ``metrics.test``."""
    rows = [
        ("melody, all steps", "note_nll", "note_nll_ngram"),
        ("melody, NOTE_ON steps", "note_nll_onset", "note_nll_onset_ngram"),
        ("chord, all steps", "chord_nll", "chord_nll_ngram"),
        ("chord, change steps", "chord_nll_change", "chord_nll_change_ngram"),
    ]
    lines = [
        f"# Evaluation of `{name}`",
        "",
        f"Test split: {m['test_sequences']} sequences, {m['test_steps']} steps. NLL in nats per step, "
        "teacher-forced, ONNX graphs in onnxruntime. The n-gram is an interpolated modified Kneser-Ney model "
        "over the same tokens conditioned on position in bar, fitted on the train split (original keys), "
        f"order chosen on valid (melody {m['ngram_order_melody']}, chord {m['ngram_order_chord']}).",
        "",
        "| NLL (nats/step) | model | n-gram | ratio |",
        "|---|---:|---:|---:|",
    ]
    for label, a, b in rows:
        ratio = m[a] / m[b] if m.get(a) is not None and m.get(b) else None
        lines.append(f"| {label} | {_fmt(m.get(a))} | {_fmt(m.get(b))} | {_fmt(ratio, 2)} |")
    lines.append(f"| velocity, NOTE_ON steps | {_fmt(m.get('velocity_nll_onset'))} | | |")
    r = m["renders"]
    lines += [
        "",
        f"## Musical statistics: {r['count']} renders of {r['bars']} bars (4/4, temperature 1.0, top-p 1.0, "
        f"seeds {r['seed']}..{r['seed'] + r['count'] - 1}) vs the test set",
        "",
        "| statistic | renders | test data |",
        "|---|---:|---:|",
        f"| in-scale onsets (best major/minor key) | {_pct(m.get('in_scale'))} | {_pct(m.get('in_scale_data'))} |",
        f"| chord tones on quarter-note beats | {_pct(m.get('chord_tone_strong'))} | "
        f"{_pct(m.get('chord_tone_strong_data'))} |",
        f"| 2-bar self-repetition | {_pct(m.get('self_repetition'))} | {_pct(m.get('self_repetition_data'))} |",
        f"| 16-step windows copied from train (any key) | {_pct(m.get('copy_rate'))} | "
        f"{_pct(m.get('copy_rate_data'))} |",
        f"| 64-step windows copied from train (any key) | {_pct(m.get('copy_rate_64'))} | "
        f"{_pct(m.get('copy_rate_64_data'))} |",
        "",
        "## Targets",
        "",
        "| target | value | limit | result |",
        "|---|---:|---:|---|",
    ]
    for key, limit in TARGETS.items():
        v = m.get(key)
        shown = _pct(v) if key == "copy_rate" else _fmt(v, 3)
        lim = _pct(limit) if key == "copy_rate" else f"{limit:.2f}"
        verdict = "n/a" if v is None else ("pass" if v <= limit else "FAIL")
        lines.append(f"| {key} | {shown} | <= {lim} | {verdict} |")
    if m.get("accompaniment"):
        lines += [
            "",
            "## Accompaniment: the human melody as the player, chords chosen online",
            "",
            "*hit*: strong beats where the melody starts a note that are tones of the chord sounding then; "
            "*F1*: pitch-class F1 against the human chord there (`rtgen-train accompany`, training/accompaniment.py).",
            "",
            accompaniment_markdown(m["accompaniment"]).rstrip("\n"),
        ]
    return "\n".join(lines) + "\n"


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``evaluate`` subcommand to ``rtgen-train``."""
    p = subparsers.add_parser("evaluate", help="test NLL vs an n-gram baseline, musical statistics of renders")
    p.add_argument("--model", type=Path, required=True, help="model folder to evaluate (meta.json is updated)")
    p.add_argument("--data", type=Path, required=True, help="prepared-data folder (rtgen-train prepare --out)")
    p.add_argument("--bars", type=int, default=64, help="bars per render (default: 64)")
    p.add_argument("--renders", type=int, default=8, help="renders for the musical statistics (default: 8)")
    p.add_argument("--seed", type=int, default=0, help="first render seed (default: 0)")
    p.add_argument("--max-order", type=int, default=MAX_NGRAM_ORDER,
                   help=f"highest n-gram order tried on valid (default: {MAX_NGRAM_ORDER})")  # fmt: skip
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    evaluate(
        model=args.model, data=args.data, bars=args.bars, renders=args.renders, seed=args.seed, max_order=args.max_order
    )
    return 0

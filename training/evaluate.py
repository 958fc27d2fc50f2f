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
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from rtgen import contract, library
from rtgen.errors import ModelError, RtgenError
from rtgen.generation.model import Model
from training import overlap, stats
from training.accompaniment import evaluate_accompaniment
from training.accompaniment import report_markdown as accompaniment_markdown
from training.dedup import WINDOW_BARS, WindowIndex
from training.ngram import OrderSelection, Stream, fit_select_score, select_order
from training.prepare import DataError
from training.prepared import ARRAYS, SPLITS, Split, load_split, manifest_files

log = logging.getLogger(__name__)

TARGETS = {"note_ratio": 0.75, "chord_ratio": 0.90, "note_ratio_strongest": 0.75, "chord_ratio_strongest": 0.90,
           "copy_rate": 0.02}  # fmt: skip
"""Pass when the value is at most the target."""
LONG_COPY_WINDOW = 64
"""Steps in the long copy-rate window (4 bars of 4/4 at sixteenths)."""
MAX_NGRAM_ORDER = 32
"""Highest n-gram order tried; valid picks the order. Capping it low would flatter our models."""
BATCH = 512
"""Sequences run together through onnxruntime (the dynamic batch axis)."""


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


def render(
    model: Model, bars: int, seed: int, temperature: float = 1.0, top_p: float = 1.0, time_signature: str = "4/4"
) -> Render:
    """Let the engine play ``bars`` bars alone (4/4, temperature 1, top-p 1 by default), full pitch range, no key
    lock."""
    from rtgen.config import GenerationConfig
    from rtgen.generation.engine import Engine, Params

    gen = GenerationConfig(
        seed=seed, temperature=temperature, top_p=top_p, time_signature=time_signature, key="off", density=1.0,
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


def _daemon_top_p() -> float:
    from rtgen.config import GenerationConfig

    return float(GenerationConfig().top_p)


def _daemon_temperature() -> float:
    from rtgen.config import GenerationConfig

    return float(GenerationConfig().temperature)


def split_pieces(split: Split) -> list[overlap.Piece]:
    """The split's sequences as :class:`training.overlap.Piece` (chords resolved: never HOLD)."""
    return [
        overlap.Piece(
            split.seq("melody", i).astype(np.int64),
            contract.resolve_holds(split.seq("chord", i), contract.CHORD_HOLD, contract.CHORD_NC),
            split.seq("position", i).astype(np.int64),
        )
        for i in range(split.sequences)
    ]


def meter_of(bar_steps: int) -> str:
    """The time signature a render plays for a piece whose bars are ``bar_steps`` sixteenths long.

    The models see only the step in the bar, so 12 steps (6/8 jigs, 3/4 waltzes) render as 6/8, the commoner.
    """
    named = {12: "6/8", 18: "9/8", 6: "3/8"}
    if bar_steps in named:
        return named[bar_steps]
    return f"{bar_steps // 4}/4" if bar_steps % 4 == 0 else f"{bar_steps // 2}/8"


def shapes_like(pieces: list[overlap.Piece], count: int) -> list[tuple[str, int]]:
    """``count`` (time signature, bars) pairs shaped like the pieces: evenly spaced through them in order of
    meter and length, so the meters come in the pieces' proportions and the lengths in their spread.

    Renders for the overlap take the test split's shapes: a 4/4-only set would compare reels against a split
    that is close to half jigs and waltzes, and 64-bar renders wander through more keys than 40-bar tunes.
    """
    shapes = sorted(
        (meter_of(int(p.position.max()) + 1), max(int((p.position == 0).sum()), 1)) for p in pieces if p.position.size
    )
    if not shapes:
        return [("4/4", overlap.WINDOW_BARS)] * max(count, 0)
    return [shapes[int((i + 0.5) * len(shapes) / count)] for i in range(max(count, 0))]


OVERLAP_RENDERS = 144
"""Renders per setting for the overlap (``--overlap-renders``): enough pieces for the spread between tunes.
At 48 (221 windows) the count of features met moved by 2-3 of 9 from one set of seeds to another; 144 (about
as many pieces as the test split's 157) triples the windows."""

IN_SCALE_POINTS = 1.0
"""Target: in-scale onsets of the renders within this many percentage points of the test data's."""
CHORD_TONE_POINTS = 3.0
"""Target: chord tones on strong beats of the renders within this many percentage points of the test data's."""


def setting_name(temperature: float, top_p: float) -> str:
    """Key of a render setting in ``metrics.overlap``: ``T0.9 p0.95``."""
    return f"T{temperature:g} p{top_p:g}"


def measure_overlap(
    model: Model,
    train: Split,
    test: Split,
    *,
    bars: int,
    renders: int,
    seed: int,
    temperatures: tuple[float, ...],
    top_p: float,
    figure: Path | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Per-window feature distributions of renders at each temperature vs the test split, train as the ceiling.

    Args:
        model: the loaded model.
        train, test: the splits (train's overlap with test is the ceiling).
        bars, renders, seed: ``renders`` renders per temperature shaped like the test pieces
            (:func:`shapes_like`: their meters, and their lengths where ``bars`` is 0, else ``bars`` bars each),
            seeds from ``seed``.
        temperatures: sampling temperatures; each renders at ``top_p``.
        top_p: nucleus mass for every setting (the daemon's default).
        figure: where to draw one panel per feature (:func:`training.overlap.plot`); ``None``: no figure.
        progress: progress bars.

    Returns:
        ``{"windows": ..., "settings": {name: {temperature, top_p, in_scale, chord_tone_strong, ...}},
        "features": training.overlap.compare_sets(...), "targets_met": {setting: bool}, ...}``.
    """
    test_pieces, train_pieces = split_pieces(test), split_pieces(train)
    reference = overlap.pooled_pitch_classes(test_pieces)
    sets = {
        "test": overlap.set_features(test_pieces, reference),
        "train": overlap.set_features(train_pieces, reference),
    }
    in_scale_data = stats.pooled(stats.in_scale(p.melody) for p in test_pieces).value
    tone_data = stats.pooled(
        stats.chord_tone_strong(p.melody, p.chord_now, stats.strong_beats(p.position)) for p in test_pieces
    ).value
    settings: dict[str, dict[str, Any]] = {}
    shapes = shapes_like(test_pieces, renders)
    if bars > 0:
        shapes = [(m, bars) for m, _ in shapes]
    for temp in temperatures:
        name = setting_name(temp, top_p)
        desc = f"renders {name}"
        rend = [
            render(model, shapes[k][1], seed + k, temp, top_p, shapes[k][0])
            for k in tqdm(range(renders), desc=desc, disable=_no_bar(progress))
        ]
        pieces = [overlap.Piece(r.melody, r.chord_now, r.position) for r in rend]
        sets[name] = overlap.set_features(pieces, reference)
        scale = stats.pooled(stats.in_scale(p.melody) for p in pieces).value
        tone = stats.pooled(stats.chord_tone_strong(p.melody, p.chord_now, stats.strong_beats(p.position))
                            for p in pieces).value  # fmt: skip
        settings[name] = {
            "temperature": temp, "top_p": top_p, "renders": renders, "bars": bars, "seed": seed,
            "meters": dict(Counter(m for m, _ in shapes)), "bars_rendered": sum(b for _, b in shapes),
            "in_scale": scale, "chord_tone_strong": tone,
            "in_scale_met": bool(abs(scale - in_scale_data) * 100 <= IN_SCALE_POINTS),
            "chord_tone_strong_met": bool(abs(tone - tone_data) * 100 <= CHORD_TONE_POINTS),
        }  # fmt: skip
    features = overlap.compare_sets(sets["test"], {k: v for k, v in sets.items() if k != "test"})
    for name, row in settings.items():
        row["features_met"] = [f for f in overlap.NAMES if features[f][name]["met"]]  # type: ignore[index]
        row["all_met"] = bool(
            len(row["features_met"]) == len(overlap.NAMES) and row["in_scale_met"] and row["chord_tone_strong_met"]
        )
    if figure is not None:
        overlap.plot(sets, figure, "per-window feature densities vs the test split (overlap in brackets)")
    return {
        "window_bars": overlap.WINDOW_BARS,
        "windows": {k: int(v["notes_per_bar"].size) for k, v in sets.items()},
        "in_scale_data": in_scale_data,
        "chord_tone_strong_data": tone_data,
        "settings": settings,
        "features": features,
        "figure": None if figure is None else figure.name,
    }


# --- baselines that see what the models see -------------------------------------------------------------
MELODY_FEATURES = ("prev_sounding", "sounding_now", "lookback_melody_1", "lookback_melody_2", "lookback_melody_4",
                   "lookback_melody_8")  # fmt: skip
"""Context features made of melody tokens (transposed as melody); the rest but ``phrase`` are chord tokens."""
FEATURES = (*MELODY_FEATURES, "chord_now", "prev_chord_now", "lookback_chord_1", "lookback_chord_2",
            "lookback_chord_4", "lookback_chord_8", "phrase")  # fmt: skip
"""Context features a baseline may condition on: the contract's step inputs by ONNX name (a lookback by its bars)."""
KEYS = tuple(range(-6, 6))
"""The 12 transpositions the models train in (training/dataset.py shifts windows by -6..5)."""


@dataclass(frozen=True)
class Baseline:
    """A Kneser-Ney n-gram baseline: which stream, which context features, fitted in which keys.

    Attributes:
        name: key in ``metrics.baselines``.
        stream: ``melody`` or ``chord``.
        features: context features (:data:`FEATURES`) after position in bar, before the previous tokens.
        keys: 1 (train in its original keys) or 12 (all transpositions of train, as the models train).
        label: what it conditions on, for the report.
        fair: sees no more than the model it is compared with (only fair baselines count as the strongest).
    """

    name: str
    stream: str
    features: tuple[str, ...]
    keys: int
    label: str
    fair: bool = True


BASELINES = (
    Baseline("melody_12keys", "melody", (), 12, "melody + position, 12 keys"),
    Baseline("melody_chord", "melody", ("chord_now",), 12, "melody + position + sounding chord, 12 keys"),
    Baseline("melody_lookback", "melody",
             ("chord_now", "lookback_melody_8", "prev_sounding", "lookback_melody_4", "lookback_melody_2",
              "lookback_melody_1"), 12,
             "melody + position + sounding chord + previous note + melody 8, 4, 2, 1 bars back, 12 keys"),
    Baseline("chord_12keys", "chord", (), 12, "chord + position, 12 keys"),
    Baseline("chord_melody", "chord", ("prev_chord_now", "prev_sounding"), 12,
             "chord + position + previous chord and melody note, 12 keys"),
    Baseline("chord_lookback", "chord",
             ("prev_chord_now", "lookback_chord_8", "lookback_chord_4", "lookback_chord_2", "lookback_chord_1",
              "phrase"), 12,
             "chord + position + previous chord + chords 8, 4, 2, 1 bars back + bar in phrase, 12 keys"),
)  # fmt: skip
"""The baselines beside the original-key n-grams (``*_ngram``). The note model sees the chord at the step, the
chord model the melody up to the step before, both the tokens 1, 2, 4 and 8 bars back (docs/internals.md §3).
The ``*_lookback`` feature lists come from a greedy forward search on valid NLL over :data:`FEATURES`
(Nottingham, 12 keys), stopped once a step gained 0.25 % or less; the melody note adds nothing to the chord
baseline there (the same valid NLL), so ``chord_melody`` shows it beside the previous chord alone."""


def step_features(split: Split) -> dict[str, npt.NDArray[np.int64]]:
    """Every :data:`FEATURES` column of a split, flat, from ``contract.step_inputs`` as the models get them."""
    cols: dict[str, list[npt.NDArray[np.int64]]] = {k: [] for k in FEATURES}
    for i in range(split.sequences):
        seq = {k: split.seq(k, i) for k in ("melody", "velocity", "chord", "position")}
        x = contract.step_inputs(seq["melody"], seq["velocity"], seq["chord"], seq["position"])
        for j, bars in enumerate(contract.LOOKBACK_BARS):
            x[f"lookback_melody_{bars}"] = x["lookback_melody"][:, j]
            x[f"lookback_chord_{bars}"] = x["lookback_chord"][:, j]
        x["phrase"] = split.seq("phrase", i)
        for k in FEATURES:
            cols[k].append(x[k])
    return {k: np.concatenate(v) if v else np.zeros(0, dtype=np.int64) for k, v in cols.items()}


def baseline_stream(
    split: Split, features: dict[str, npt.NDArray[np.int64]], baseline: Baseline, shifts: tuple[int, ...] = (0,)
) -> Stream:
    """The baseline's stream of a split, its sequences repeated in each transposition of ``shifts``."""
    steps = int(split.offsets[-1])

    def shifted(name: str, values: npt.NDArray[np.int64], k: int) -> npt.NDArray[np.int64]:
        if k == 0 or name == "phrase":
            return values
        melodic = name == "melody" or name in MELODY_FEATURES
        return contract.transpose_melody(values, k) if melodic else contract.transpose_chords(values, k)

    tokens = np.concatenate([shifted(baseline.stream, getattr(split, baseline.stream), k) for k in shifts])
    context = None
    if baseline.features:
        context = np.concatenate(
            [np.stack([shifted(f, features[f], k) for f in baseline.features], axis=1) for k in shifts]
        )
    offsets = np.concatenate([[0], *(split.offsets[1:] + i * steps for i in range(len(shifts)))])
    return Stream.from_arrays(tokens, np.tile(split.position, len(shifts)), offsets, context)


def fit_baseline(
    baseline: Baseline, splits: dict[str, Split], features: dict[str, dict[str, npt.NDArray[np.int64]]], max_order: int
) -> tuple[int, float, npt.NDArray[np.float64]]:
    """Fit on train (in ``baseline.keys`` keys), pick the order on valid, score test.

    Returns:
        (order, valid NLL at that order, per-step test NLL).
    """
    vocab = contract.MELODY_VOCAB_SIZE if baseline.stream == "melody" else contract.CHORD_VOCAB_SIZE
    t0 = time.perf_counter()
    train = baseline_stream(splits["train"], features["train"], baseline, KEYS if baseline.keys == 12 else (0,))
    valid = baseline_stream(splits["valid"], features["valid"], baseline)
    test = baseline_stream(splits["test"], features["test"], baseline)
    # features join the history before the previous tokens: an order counts them as levels too
    scored = fit_select_score(train, valid, {"test": test}, vocab, max_order + len(baseline.features))
    log.info("baseline %s: order %d, %.1f s", baseline.name, scored.order, time.perf_counter() - t0)
    return scored.order, scored.valid_nll[scored.order], -scored.log_prob["test"]


def _strongest(
    nlls: dict[str, npt.NDArray[np.float64]], fair: set[str], mask: npt.NDArray[np.bool_] | None
) -> tuple[str, float]:
    """The fair baseline with the lowest mean test NLL over ``mask``, and that NLL."""
    means = {k: _mean(v, mask) for k, v in nlls.items() if k in fair}
    best = min(means, key=lambda k: means[k])
    return best, means[best]


def compare(
    model_nll: dict[str, npt.NDArray[np.float64]],
    baselines: dict[str, npt.NDArray[np.float64]],
    streams: dict[str, str],
    fair: set[str],
    test: Split,
    keep: npt.NDArray[np.bool_] | None = None,
) -> dict[str, Any]:
    """Model vs every baseline on the test steps in ``keep`` (all by default), and vs the strongest fair one.

    Args:
        model_nll: per-step model NLL by stream (``melody``, ``chord``).
        baselines: per-step test NLL of each baseline by name.
        streams: the stream of each baseline.
        fair: the baselines that may count as the strongest.
        test: the test split (for the NOTE_ON and chord-change masks).
        keep: steps to count.

    Returns:
        ``{"note": {...}, "chord": {...}}``, each with the model's NLL, every baseline's, the strongest
        fair baseline and the ratio model / strongest, for all steps and for NOTE_ON (chord-change) steps.
    """
    everywhere = np.ones(test.melody.size, dtype=bool) if keep is None else keep
    out: dict[str, Any] = {}
    for key, stream, sel_name, sel in (
        ("note", "melody", "onset", test.melody >= contract.MEL_NOTE_OFFSET),
        ("chord", "chord", "change", test.chord != contract.CHORD_HOLD),
    ):
        mine = {k: v for k, v in baselines.items() if streams[k] == stream}
        row: dict[str, Any] = {}
        for suffix, mask in (("", everywhere), (f"_{sel_name}", everywhere & sel)):
            name, best = _strongest(mine, fair, mask)
            model = _mean(model_nll[stream], mask)
            row[f"nll{suffix}"] = model
            row[f"baselines{suffix}"] = {k: _mean(v, mask) for k, v in mine.items()}
            row[f"strongest{suffix}"] = name
            row[f"ratio{suffix}"] = model / best if best > 0 else float("nan")
        out[key] = row
    out["steps"] = int(everywhere.sum())
    return out


def near_duplicates(
    train: Split, test: Split, valid: Split | None = None, files: dict[str, list[str]] | None = None
) -> dict[str, Any]:
    """Test tunes sharing a 4-bar melody window (any key) with train, and how much of the test they cover.

    Also counts them for 2 and 8 bars, and tunes with more than a quarter of their windows shared.

    Args:
        train, test: the splits compared.
        valid: also count the valid tunes that share a window with train.
        files: the manifest's file names per split (names the tunes found).

    Returns:
        Counts and shares; ``mask`` is the flat per-step mask of the test tunes found (not JSON: pop it).
    """
    out: dict[str, Any] = {"bars": WINDOW_BARS, "test_tunes": test.sequences}
    files = files or {}
    for bars in (2, WINDOW_BARS, 8):
        index = WindowIndex(train.melody, train.position, train.offsets, bars=bars)
        ov = index.overlap(test.melody, test.position, test.offsets)
        row = {
            "tunes": int(ov.flagged().sum()),
            "tunes_quarter": int(ov.flagged(0.25).sum()),
            "window_share": float(ov.shared.sum() / max(int(ov.windows.sum()), 1)),
        }
        out[f"by_bars_{bars}"] = row
        if bars != WINDOW_BARS:
            continue
        flagged = ov.flagged()
        mask = ov.step_mask(flagged)
        out |= {
            "tunes": int(flagged.sum()),
            "tune_share": float(flagged.mean()),
            "steps": int(mask.sum()),
            "step_share": float(mask.mean()),
            "covered_step_share": float(ov.covered.mean()),
            "shared_windows": int(ov.shared.sum()),
            "windows": int(ov.windows.sum()),
            "window_share": row["window_share"],
        }
        test_files, train_files = files.get("test", []), files.get("train", [])
        out["found"] = [
            {
                "test": test_files[i] if i < len(test_files) else f"#{i}",
                "train": [train_files[j] if j < len(train_files) else f"#{j}" for j in ov.partners[i]],
                "share": round(float(ov.shared[i] / ov.windows[i]), 3),
            }
            for i in np.flatnonzero(flagged).tolist()
        ]
        out["mask"] = mask
        if valid is not None:
            out["valid_tunes"] = int(index.overlap(valid.melody, valid.position, valid.offsets).flagged().sum())
    return out


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
    accompaniment: bool = True,
    temperatures: tuple[float, ...] | None = None,
    overlap_renders: int = OVERLAP_RENDERS,
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
        accompaniment: measure the accompaniment (a minute, through rtgen's performer); ``False`` keeps the
            block meta.json has from an earlier evaluation, as it is.
        temperatures: temperatures of the renders compared with the test split feature by feature
            (:func:`measure_overlap`, ``overlap_renders`` renders shaped like the test tunes: their meters and
            lengths; top-p at the daemon's default; the figure goes to ``overlap.png`` in the model folder);
            ``None``: the daemon's default and 1.0.
        overlap_renders: renders per temperature for that comparison.

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

    t0 = time.perf_counter()
    features = {k: step_features(sp) for k, sp in splits.items()}
    base_nll = {"melody_ngram": mel_ng, "chord_ngram": ch_ng}
    base_info: dict[str, dict[str, Any]] = {
        "melody_ngram": {"stream": "melody", "features": [], "keys": 1, "order": mel_sel.order,
                         "valid_nll": mel_sel.valid_nll[mel_sel.order], "label": "melody + position, original keys",
                         "fair": True},
        "chord_ngram": {"stream": "chord", "features": [], "keys": 1, "order": ch_sel.order,
                        "valid_nll": ch_sel.valid_nll[ch_sel.order], "label": "chord + position, original keys",
                        "fair": True},
    }  # fmt: skip
    for b in BASELINES:
        order, valid_nll, base_nll[b.name] = fit_baseline(b, splits, features, max_order)
        base_info[b.name] = {"stream": b.stream, "features": list(b.features), "keys": b.keys, "order": order,
                             "valid_nll": valid_nll, "label": b.label, "fair": b.fair}  # fmt: skip
    for v in base_info.values():
        v["history"] = max(0, v["order"] - 1 - len(v["features"]))  # previous tokens in the top level
    streams = {k: v["stream"] for k, v in base_info.items()}
    fair = {k for k, v in base_info.items() if v["fair"]}
    vs = compare(nll, base_nll, streams, fair, test)
    for k, v in base_info.items():
        v |= {"test_nll": vs["note" if v["stream"] == "melody" else "chord"]["baselines"][k]}
    dups = near_duplicates(train, test, valid, manifest_files(data))
    without = compare(nll, base_nll, streams, fair, test, keep=~dups.pop("mask"))
    t_baselines = time.perf_counter() - t0

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
        "train_steps": int(train.offsets[-1]),
        "test_sequences": test.sequences,
    }
    metrics["note_ratio"] = metrics["note_nll"] / metrics["note_nll_ngram"]
    metrics["chord_ratio"] = metrics["chord_nll"] / metrics["chord_nll_ngram"]
    for key in ("note", "chord"):
        row = vs[key]
        metrics[f"{key}_strongest"] = row["strongest"]
        metrics[f"{key}_nll_strongest"] = row["baselines"][row["strongest"]]
        metrics[f"{key}_ratio_strongest"] = row["ratio"]
    metrics["baselines"] = base_info
    metrics["vs_baselines"] = vs
    metrics["near_duplicates"] = dups | {"without": without}

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
    temps = temperatures if temperatures is not None else tuple(dict.fromkeys((_daemon_temperature(), 1.0)))
    metrics["overlap"] = measure_overlap(
        m, train, test, bars=0, renders=overlap_renders, seed=seed, temperatures=tuple(temps),
        top_p=_daemon_top_p(), figure=model / "overlap.png", progress=progress,
    )  # fmt: skip
    t_overlap = time.perf_counter() - t0
    t0 = time.perf_counter()
    if accompaniment:
        metrics["accompaniment"] = evaluate_accompaniment(m, data, "test", seed=seed)
    else:
        previous = _previous_metrics(model).get("accompaniment")
        if previous:
            metrics["accompaniment"] = previous
            metrics["kept"] = ["accompaniment"]
        log.info("accompaniment not measured (%s)", "kept from meta.json" if previous else "none recorded")
    t_accompany = time.perf_counter() - t0
    metrics["seconds"] = {"model_nll": round(t_model, 2), "ngram": round(t_ngram, 2),
                          "baselines": round(t_baselines, 2), "renders": round(t_render, 2),
                          "overlap": round(t_overlap, 2), "accompaniment": round(t_accompany, 2),
                          "total": round(time.perf_counter() - t_start, 2)}  # fmt: skip
    metrics["ngram_valid_nll"] = {
        "melody": {str(k): round(v, 4) for k, v in mel_sel.valid_nll.items()},
        "chord": {str(k): round(v, 4) for k, v in ch_sel.valid_nll.items()},
    }
    metrics["verdict"] = verdict(metrics)
    metrics = _json_safe(metrics)
    _record(model, metrics)
    print(
        f"evaluate: {model.name}: note NLL {metrics['note_nll']:.3f} vs n-gram {metrics['note_nll_ngram']:.3f} "
        f"(ratio {metrics['note_ratio']:.2f}), chord NLL {metrics['chord_nll']:.3f} vs "
        f"{metrics['chord_nll_ngram']:.3f} (ratio {metrics['chord_ratio']:.2f}); against the strongest baselines "
        f"note {metrics['note_ratio_strongest']:.2f}, chord {metrics['chord_ratio_strongest']:.2f}; "
        f"copy rate {_pct(metrics['copy_rate'])} -> {model / 'EVALUATION.md'}"
    )
    print(f"evaluate: {metrics['verdict']}")
    return metrics


def verdict(m: dict[str, Any]) -> str:
    """In plain words: is the model better than counting (the n-grams on the same data), and what to try if not.

    Better means a lower NLL than the n-gram over the same tokens and than the strongest baseline that sees what
    the model sees, for the melody and for the chords.
    """
    parts = {"melody": ("note_ratio", "note_ratio_strongest"), "chords": ("chord_ratio", "chord_ratio_strongest")}
    worse = []
    for part, keys in parts.items():
        ratios = [m[k] for k in keys if isinstance(m.get(k), float) and math.isfinite(m[k])]
        if not ratios or max(ratios) >= 1.0:
            worse.append(f"{part} ({', '.join(f'{r:.2f}' for r in ratios) or 'not measured'} of the n-gram's NLL)")
    steps = m.get("train_steps")
    if not worse:
        best = max(m["note_ratio_strongest"], m["chord_ratio_strongest"])
        return (
            f"better than the n-gram on the same data: at most {best:.2f} of the strongest baseline's NLL "
            "(melody and chords)"
        )
    data = f" ({steps:,} training steps)" if isinstance(steps, int) else ""
    return (
        f"WORSE than counting: {'; '.join(worse)}. The model has not learnt more than an n-gram of the same "
        f"data{data}. Try: more MIDI files of the kind you want; a smaller model for little data "
        "(rtgen-train train --hidden 128 --layers 1 --dropout 0.3); a longer budget (rtgen-train train "
        "--max-minutes 30); then rtgen-train export and evaluate again."
    )


def _previous_metrics(model_dir: Path) -> dict[str, Any]:
    """``metrics.test`` of a model folder's meta.json (empty when there is none)."""
    try:
        found = library.read_meta(model_dir).get("metrics", {}).get("test", {})
    except (ModelError, AttributeError):
        return {}
    return found if isinstance(found, dict) else {}


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def kept_sections(report: Path, new_text: str) -> str:
    """The ``## `` sections of an existing report that ``new_text`` does not have (written by other tools,
    e.g. ``python -m rtgen.arrange.form``'s Song form section), to append after it."""
    try:
        old = report.read_text()
    except OSError:
        return ""
    headings = {line.split(":", 1)[0] for line in new_text.splitlines() if line.startswith("## ")}
    kept = []
    for chunk in ("\n" + old).split("\n## ")[1:]:
        heading = "## " + chunk.splitlines()[0]
        if heading.split(":", 1)[0] not in headings:
            kept.append("\n## " + chunk.rstrip("\n") + "\n")
    return "".join(kept)


def _record(model_dir: Path, metrics: dict[str, Any]) -> None:
    """Write ``metrics.test`` into meta.json (atomically), EVALUATION.md, and re-render the model card."""
    meta = library.read_meta(model_dir)
    meta.setdefault("metrics", {})["test"] = metrics
    try:
        library.write_meta(model_dir, meta)
        report = model_dir / "EVALUATION.md"
        text = report_markdown(meta.get("name") or model_dir.name, metrics)
        report.write_text(text + kept_sections(report, text))
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
    if m.get("verdict"):
        lines += ["", f"**Verdict:** {m['verdict']}"]
    if m.get("baselines") and m.get("vs_baselines"):
        lines += ["", *baselines_markdown(m["baselines"], m["vs_baselines"])]
    if m.get("near_duplicates"):
        lines += ["", *near_duplicates_markdown(m["baselines"], m["near_duplicates"])]
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
    if m.get("overlap"):
        lines += ["", *overlap_markdown(m["overlap"])]
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


def _num(x: Any, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def _spread(s: dict[str, Any]) -> str:
    return f"{_num(s.get('median'))} ({_num(s.get('p10'))}–{_num(s.get('p90'))})"


def overlap_markdown(ov: dict[str, Any]) -> list[str]:
    """The section comparing the renders' per-window feature distributions with the test split's."""
    names = list(ov["settings"])
    w = ov["windows"]
    lines = [
        f"## Renders that sound like the data: per-{ov['window_bars']}-bar feature distributions",
        "",
        "In the manner of Yang & Lerch (2020), training/overlap.py: every piece is cut into "
        f"{ov['window_bars']}-bar windows from its first bar line; the overlap is the area under the smaller of the "
        "two kernel density estimates of the window values (1 = the same distribution); the train split's overlap "
        "with the test split is the ceiling. The pitch-class histogram enters as each window's total-variation "
        "distance from the test split's pooled histogram, both rotated to the piece's tonic. Windows: "
        + ", ".join(f"{k} {v}" for k, v in w.items())
        + ". Values: median (10th–90th percentile). Target per feature: overlap at least "
        f"{overlap.OVERLAP_OF_CEILING:.1f}x the ceiling and median within {overlap.MEDIAN_TOLERANCE:.0%} of the "
        "test split's.",
        "",
        "| feature | test | train (overlap) | "
        + " | ".join(f"renders {n} (overlap, of ceiling)" for n in names)
        + " |",
        "|---|---|---|" + "---|" * len(names),
    ]
    for f in overlap.FEATURES:
        row = ov["features"][f.name]
        cells = [f.label, _spread(row["test"]), f"{_spread(row['train'])} ({_num(row['train']['overlap'])})"]
        for n in names:
            r = row[n]
            ok = "pass" if r.get("met") else "FAIL"
            cells.append(f"{_spread(r)} ({_num(r['overlap'])}, {_num(r.get('of_ceiling'))}) {ok}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| statistic | test data | " + " | ".join(f"renders {n}" for n in names) + " |",
              "|---|---:|" + "---:|" * len(names)]  # fmt: skip
    for key, label, points in (("in_scale", "in-scale onsets", IN_SCALE_POINTS),
                               ("chord_tone_strong", "chord tones on strong beats", CHORD_TONE_POINTS)):  # fmt: skip
        cells = [f"{label} (within {points:g} points)", _pct(ov.get(f"{key}_data"))]
        for n in names:
            s = ov["settings"][n]
            cells.append(f"{_pct(s.get(key))} {'pass' if s.get(f'{key}_met') else 'FAIL'}")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for n in names:
        s = ov["settings"][n]
        verdict = "all targets met" if s.get("all_met") else "targets NOT all met"
        if s.get("bars"):
            shape = f"{s['renders']} x {s['bars']} bars"
        else:  # as long as the test tunes
            shape = f"{s['renders']}, {s.get('bars_rendered', '?')} bars in all, shaped like the test tunes"
        meters = ", ".join(f"{k} x{v}" for k, v in (s.get("meters") or {}).items())
        lines.append(f"- renders {n} ({shape}{'; ' + meters if meters else ''}): {verdict}; features met "
                     f"{len(s['features_met'])} of {len(overlap.FEATURES)}.")  # fmt: skip
    if ov.get("figure"):
        lines += ["", f"![per-feature densities]({ov['figure']})"]
    return lines


_SELECTED = {"note": ("melody", "NOTE_ON steps", "onset"), "chord": ("chord", "change steps", "change")}


def _comparison_tables(base: dict[str, Any], vs: dict[str, Any]) -> list[str]:
    """One table per stream: the model, every baseline, the ratio model / strongest fair baseline."""
    lines: list[str] = []
    for key, (stream, sel_label, sel) in _SELECTED.items():
        row = vs.get(key)
        if not row:
            continue
        lines += [f"| {stream} NLL (nats/step) | previous tokens | all steps | {sel_label} |", "|---|---:|---:|---:|",
                  f"| **model** | | **{_fmt(row['nll'])}** | **{_fmt(row[f'nll_{sel}'])}** |"]  # fmt: skip
        for name, all_steps in row["baselines"].items():
            info = base.get(name, {})
            label = info.get("label", name) + ("" if info.get("fair", True) else " (sees more than the model)")
            lines.append(
                f"| n-gram: {label} | {info.get('history', '')} | {_fmt(all_steps)} | "
                f"{_fmt(row[f'baselines_{sel}'].get(name))} |"
            )
        lines.append(
            f"| ratio model / strongest | | {_fmt(row['ratio'], 2)} (`{row['strongest']}`) | "
            f"{_fmt(row[f'ratio_{sel}'], 2)} (`{row[f'strongest_{sel}']}`) |"
        )
        lines.append("")
    return lines[:-1]


def baselines_markdown(base: dict[str, Any], vs: dict[str, Any]) -> list[str]:
    """The section comparing the model with every n-gram baseline, including those that see what it sees."""
    return [
        "## Against baselines that see what the models see",
        "",
        "The note model also sees the chord sounding at the step, the chord model the melody up to the step "
        "before, and both train in all 12 keys. These n-grams condition on that too (the features sit between "
        "position and the previous tokens in the back-off chain) and are fitted on all 12 transpositions of "
        "train, with the same order search on valid (up to "
        f"{MAX_NGRAM_ORDER - 1} previous tokens). The strongest is the fair baseline with the lowest test NLL in "
        "each column (the choice that flatters the model least).",
        "",
        *_comparison_tables(base, vs),
    ]


def near_duplicates_markdown(base: dict[str, Any], nd: dict[str, Any]) -> list[str]:
    """The near-duplicate section: coverage of the test split, the tunes found, and the figures without them."""
    text = (
        f"A test tune is a near-duplicate when one of its {nd['bars']}-bar melody windows (bar line to bar line, "
        "the rhythm and the intervals to the window's first note, so in any key) occurs in a train tune "
        f"(training/dedup.py): {nd['tunes']} of {nd['test_tunes']} test tunes ({_pct(nd['tune_share'])}), "
        f"{nd['steps']} steps ({_pct(nd['step_share'])} of the test steps; the shared windows themselves cover "
        f"{_pct(nd['covered_step_share'])}); {nd['shared_windows']} of {nd['windows']} test windows "
        f"({_pct(nd['window_share'])}) occur in train."
    )
    sens = [f"{b} bars: {nd[f'by_bars_{b}']['tunes']} tunes ({nd[f'by_bars_{b}']['tunes_quarter']} with over a "
            f"quarter of their windows shared)" for b in (2, nd["bars"], 8) if f"by_bars_{b}" in nd]  # fmt: skip
    text += " By window length: " + "; ".join(sens) + "."
    if "valid_tunes" in nd:
        text += f" Valid tunes sharing a {nd['bars']}-bar window with train: {nd['valid_tunes']}."
    lines = ["## Near-duplicates across the split", "", text]
    if nd.get("found"):
        lines += ["", "| test tune | train tune(s) sharing windows | windows shared |", "|---|---|---:|"]
        lines += [f"| {f['test']} | {', '.join(f['train'])} | {_pct(f['share'])} |" for f in nd["found"]]
    w = nd.get("without")
    if w:
        lines += ["", f"Without them ({w['steps']} test steps):", "", *_comparison_tables(base, w)]
    return lines


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``evaluate`` subcommand to ``rtgen-train``."""
    p = subparsers.add_parser("evaluate", help="test NLL vs an n-gram baseline, musical statistics of renders")
    p.add_argument("--model", type=Path, required=True, help="model folder to evaluate (meta.json is updated)")
    p.add_argument("--data", type=Path, default=None, help="prepared-data folder (rtgen-train prepare --out)")
    p.add_argument("--roll", type=Path, default=None,
                   help="a polyphonic benchmark .mat file: score the polyphonic model in --model on its test split "
                   "and print one JSON line (nll_per_frame, frames) instead")  # fmt: skip
    p.add_argument("--bars", type=int, default=64, help="bars per render (default: 64)")
    p.add_argument("--renders", type=int, default=8, help="renders for the musical statistics (default: 8)")
    p.add_argument("--seed", type=int, default=0, help="first render seed (default: 0)")
    p.add_argument("--temperatures", type=_floats, default=None,
                   help="comma-separated temperatures of the renders compared with the test split per feature, "
                   "each --overlap-renders renders as long as the test tunes, at the daemon's top-p (default: the "
                   "daemon's and 1.0)")  # fmt: skip
    p.add_argument("--overlap-renders", type=int, default=OVERLAP_RENDERS,
                   help=f"renders per temperature for the comparison with the test split, in its meters and lengths "
                   f"(default: {OVERLAP_RENDERS})")  # fmt: skip
    p.add_argument("--max-order", type=int, default=MAX_NGRAM_ORDER,
                   help=f"highest n-gram order tried on valid (default: {MAX_NGRAM_ORDER})")  # fmt: skip
    p.add_argument("--keep-accompaniment", action="store_true",
                   help="do not re-measure the accompaniment section; keep the one meta.json has")  # fmt: skip
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if args.roll is not None:
        from training.poly_bench import evaluate_roll

        print(json.dumps(evaluate_roll(args.model, args.roll)))
        return 0
    if args.data is None:
        raise RtgenError("evaluate needs --data (a prepared-data folder) or --roll (a benchmark .mat file)")
    evaluate(
        model=args.model, data=args.data, bars=args.bars, renders=args.renders, seed=args.seed,
        max_order=args.max_order, accompaniment=not args.keep_accompaniment, temperatures=args.temperatures,
        overlap_renders=args.overlap_renders,
    )  # fmt: skip
    return 0


def _floats(text: str) -> tuple[float, ...]:
    """``"0.9,1.0"`` -> ``(0.9, 1.0)``."""
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from err

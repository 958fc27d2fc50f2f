"""``rtgen-train chorale-eval``: ``--mode chorale`` measured offline, beside Bach's own voices.

On the JSB test split (``../shared/data/poly_music/JSB_Chorales.mat``) Bach's soprano (each frame's top note)
is the player. rtgen's voices come from the daemon's own path (:func:`rtgen.arrange.chorale.chorale_offline`
over the shipped model's onnxruntime stepper); Bach's are the frame's other notes (the next three from the top
as alto, tenor and bass, :func:`rtgen.arrange.voiceleading.voicing_from_pitches`). Both are counted by
:mod:`rtgen.arrange.voiceleading`.

The benchmark's pieces were transposed up into C major / C minor (soprano median C6), so before anything is
played each piece is moved by whole octaves to put its soprano's mean nearest :data:`SOPRANO_MEAN` (a
singer's register; the voice ranges are judged there). With ``keys = "random"`` each piece is moved into a
random key first (seeded): the voicer must find the key back from the soprano alone.

The NLL of Bach's voices given the soprano is the model's, teacher-forced on Bach's frames in the data's own
register: ``-log p(frame's pitches below the soprano | the soprano and everything above it, the frames
before)``, nats per frame, every frame with a soprano but each piece's first (the graph returns each pitch's
log-probability beside the sample); the same for rtgen's voices (its frames put back into the data's register
and fed as the history). Only with the pieces in C.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from rtgen.arrange.chorale import DRAWS, ChoraleVoicer, Voices, chorale_offline
from rtgen.arrange.voiceleading import Voicing, voice_leading, voicing_from_pitches
from rtgen.config import GenerationConfig
from rtgen.generation.poly import PolyModel
from training.poly_data import LOWEST_PITCH, load_rolls

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "poly_music" / "JSB_Chorales.mat"
SOPRANO_MEAN = 71.0
"""Where a piece's soprano mean is put before it is played (MIDI 71, B4: a soprano's middle)."""


def sopranos(roll: np.ndarray, shift: int) -> list[int | None]:
    """The top note of each frame moved by ``shift`` semitones (None for an empty frame)."""
    out: list[int | None] = []
    for frame in roll:
        on = np.flatnonzero(frame)
        out.append(int(on[-1]) + LOWEST_PITCH + shift if on.size else None)
    return out


def placement(roll: np.ndarray, key_shift: int) -> int:
    """The shift that moves the piece by ``key_shift`` semitones and whole octaves, soprano mean nearest
    :data:`SOPRANO_MEAN`."""
    tops = [p for p in sopranos(roll, key_shift) if p is not None]
    mean = float(np.mean(tops)) if tops else SOPRANO_MEAN
    return key_shift + 12 * round((SOPRANO_MEAN - mean) / 12)


def bach_voicings(roll: np.ndarray, shift: int) -> list[Voicing]:
    """Bach's voices of each frame, moved by ``shift``."""
    return [voicing_from_pitches((np.flatnonzero(f) + LOWEST_PITCH + shift).tolist()) for f in roll]


def full_voicings(sop: list[int | None], voices: list[Voices]) -> list[Voicing]:
    """Soprano plus the voicer's alto, tenor and bass per beat."""
    return [(s, *v) for s, v in zip(sop, voices, strict=True)]


def nll_given_soprano(model: PolyModel, rolls: list[np.ndarray]) -> dict[str, float]:
    """Nats per frame of each frame's pitches below its soprano given the soprano (and above) and the frames
    before, teacher-forced (every frame with a soprano but each sequence's first), from the graph's per-pitch
    log-probabilities (:meth:`~rtgen.generation.poly.PolyStepper.feed`)."""
    stepper = model.stepper(seed=0)
    total, frames = 0.0, 0
    for roll in rolls:
        stepper.reset()
        for t, frame in enumerate(roll):
            stepper.feed(frame.astype(np.float32))
            on = np.flatnonzero(frame)
            if t == 0 or not on.size:
                continue
            # 0 x log(0) comes out NaN where a pitch's probability underflows; the term it stands for is 0
            total -= float(np.nansum(stepper.logp[0, : on[-1]]))
            frames += 1
    return {"nll_per_frame": round(total / max(frames, 1), 4), "frames": frames}


def voices_roll(voicings: list[Voicing], shift: int, n_pitches: int) -> np.ndarray:
    """A piano roll (in the model's register: ``-shift``) of the voicings."""
    roll = np.zeros((len(voicings), n_pitches), dtype=np.uint8)
    for t, v in enumerate(voicings):
        for p in v:
            if p is not None and 0 <= p - shift - LOWEST_PITCH < n_pitches:
                roll[t, p - shift - LOWEST_PITCH] = 1
    return roll


def evaluate(model_dir: Path, data: Path, *, keys: str = "C", seed: int = 0, temperature: float = 1.0,
             limit: int | None = None, draws: int = DRAWS) -> dict[str, Any]:  # fmt: skip
    """The figures of rtgen's voices and Bach's on the test split (see the module docstring).

    Args:
        model_dir: the polyphonic model folder (``exported_models/chorale``).
        data: the JSB ``.mat`` file.
        keys: ``"C"`` (the pieces as given, moved by octaves) or ``"random"`` (each into a random key).
        seed: the sampler's seed (and the random keys').
        temperature: the sampling temperature.
        limit: only the first ``limit`` pieces (a quick look).
        draws: candidates per beat (the daemon's :data:`~rtgen.arrange.chorale.DRAWS`; 1: the model's own draws,
            no rejection).
    """
    rolls = load_rolls(data)["test"][:limit]
    model = PolyModel.load(model_dir)
    rng = np.random.default_rng(seed)
    bach: list[list[Voicing]] = []
    ours: list[list[Voicing]] = []
    shifts: list[int] = []
    keys_found = 0
    redraws = short = beats = 0
    t0 = time.perf_counter()
    for i, roll in enumerate(rolls):
        key_shift = int(rng.integers(-6, 6)) if keys == "random" else 0
        shift = placement(roll, key_shift)
        shifts.append(shift)
        sop = sopranos(roll, shift)
        voicer = ChoraleVoicer(model.stepper(seed + i, draws), low_pitch=model.low_pitch, n_pitches=model.n_pitches,
                               step_beats=model.step_beats, centred_key=model.centred_key)  # fmt: skip
        voices = chorale_offline(voicer, sop, temperature)
        bach.append(bach_voicings(roll, shift))
        ours.append(full_voicings(sop, voices))
        keys_found += voicer.shift % 12 == -shift % 12
        redraws += voicer.redraws
        short += voicer.short
        beats += voicer.beats
    seconds = time.perf_counter() - t0
    result: dict[str, Any] = {
        "model": str(model_dir),
        "data": str(data),
        "split": "test",
        "pieces": len(rolls),
        "keys": keys,
        "seed": seed,
        "temperature": temperature,
        "draws": draws,
        "bach": voice_leading(bach).as_dict(),
        "rtgen": voice_leading(ours).as_dict(),
        "key_found_at_end": round(keys_found / max(len(rolls), 1), 4),
        "model_steps": beats,
        "passed_over_per_100_steps": round(100 * redraws / max(beats, 1), 3),
        "no_clean_candidate_per_100_steps": round(100 * short / max(beats, 1), 3),
        "seconds": round(seconds, 2),
    }
    if keys == "C":  # rtgen's voices put back into the model's register (the pieces' own, in C)
        result["bach"]["nll_given_soprano"] = nll_given_soprano(model, rolls)
        mine = [voices_roll(v, s, model.n_pitches) for v, s in zip(ours, shifts, strict=True)]
        result["rtgen"]["nll_given_soprano"] = nll_given_soprano(model, mine)
    return result


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``chorale-eval`` subcommand to ``rtgen-train``."""
    p = subparsers.add_parser(
        "chorale-eval", help="--mode chorale's voices under Bach's sopranos (JSB test split) beside Bach's own"
    )
    p.add_argument("--model", type=Path, default=Path("exported_models/chorale"), help="polyphonic model folder")
    p.add_argument("--data", type=Path, default=DATA, help=f"the JSB .mat file (default: {DATA})")
    p.add_argument(
        "--keys",
        choices=("C", "random", "both"),
        default="both",
        help="pieces as given, in random keys, or both (and, in C, with one draw a beat: the model without rejection)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--temperature",
        type=float,
        default=GenerationConfig().temperature,
        help="sampling temperature (default: the daemon's, [generation] temperature)",
    )
    p.add_argument("--limit", type=int, help="only the first N test pieces")
    p.add_argument("--draws", type=int, default=DRAWS, help=f"candidates per beat (default {DRAWS}, the daemon's)")
    p.add_argument("--out", type=Path, help="write the figures to this JSON file")
    p.add_argument("--markdown", type=Path, help="write them as the model card's evaluation section (EVALUATION.md)")
    p.set_defaults(func=_run)


ROWS = (
    ("parallel fifths per 100 beat changes", "parallel_fifths", "at most Bach's + 1"),
    ("parallel octaves per 100 beat changes", "parallel_octaves", "at most Bach's + 1"),
    ("voice overlaps per 100 beat changes", "crossings", "at most Bach's + 1"),
    ("beats with over an octave S-A or A-T (%)", "spacing", "at most Bach's + 1"),
    ("lower voices out of range (%)", "out_of_range", "at most Bach's + 1"),
    ("beats with 3 voices under the soprano (%)", "three_under", ">= 95"),
    ("soprano a tone of the lower voices' chord (%)", "soprano_chord_tone", "-"),
    ("beat changes / beats", None, "-"),
)


def markdown(figures: dict[str, Any]) -> str:
    """The figures of :func:`_run` as the model card's evaluation section."""
    runs = [k for k in ("C", "random", "C_one_draw") if k in figures]
    heads = {"C": "rtgen, pieces in C", "random": "rtgen, random keys", "C_one_draw": "rtgen, 1 draw (no rejection)"}
    first = figures[runs[0]]
    bach = first["bach"]
    lines = [
        "# Evaluation of `chorale` in `--mode chorale`",
        "",
        f"`rtgen-train chorale-eval` on the JSB test split ({first['pieces']} chorales, {bach['beats']} beats): Bach's "
        "soprano (each frame's top note) is the player, played through the daemon's chorale voicer "
        f"(`rtgen.arrange.chorale`, onnxruntime, {first['draws']} candidates per beat, temperature "
        f"{first['temperature']:g}, seed {first['seed']}); Bach's own voices are the frame's next three notes from "
        "the top. Each piece is first moved by octaves to put its soprano's mean nearest B4 (the benchmark "
        "transposed every piece up into C); with random keys each piece is also moved into a random key, and the "
        "voicer finds the key from the soprano alone. Definitions: `rtgen/arrange/voiceleading.py` (ranges: "
        "Kostka & Payne, S C4-G5, A G3-D5, T C3-G4, B E2-C4; the roll has no bar lines, so every beat counts as "
        "strong for the chord-tone figure).",
        "",
        "| figure | Bach | " + " | ".join(heads[k] for k in runs) + " | target |",
        "|---|---:|" + "---:|" * len(runs) + "---|",
    ]
    for label, key, target in ROWS:
        if key is None:
            cells = [f"{figures[k]['rtgen']['changes']} / {figures[k]['rtgen']['beats']}" for k in runs]
            lines.append(f"| {label} | {bach['changes']} / {bach['beats']} | " + " | ".join(cells) + f" | {target} |")
            continue
        cells = [f"{figures[k]['rtgen'][key]:.2f}" for k in runs]
        lines.append(f"| {label} | {bach[key]:.2f} | " + " | ".join(cells) + f" | {target} |")
    nll = [f"{figures[k]['rtgen']['nll_given_soprano']['nll_per_frame']:.3f}" if "nll_given_soprano" in figures[k][
        "rtgen"] else "-" for k in runs]  # fmt: skip
    lines.append(
        f"| NLL of the voices given the soprano (nats/frame) | {bach['nll_given_soprano']['nll_per_frame']:.3f} | "
        + " | ".join(nll)
        + " | - |"
    )
    frames = bach["nll_given_soprano"]["frames"]
    lines += [
        "",
        f"The NLL is the model's (the graph's per-pitch log-probabilities, teacher-forced, {frames} frames in the "
        "data's register): of Bach's voices, and of rtgen's own. Key found (the tonic at a "
        "piece's end, pieces in C / random keys): "
        + " / ".join(f"{100 * figures[k]['key_found_at_end']:.0f} %" for k in runs if k != "C_one_draw")
        + f". Candidates passed over before the one played: {figures[runs[0]]['passed_over_per_100_steps']:.0f} "
        f"per 100 beats; beats where none was clean: {figures[runs[0]]['no_clean_candidate_per_100_steps']:.1f} "
        "per 100 (the one with the fewest faults played).",
        "",
    ]
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    runs = ("C", "random") if args.keys == "both" else (args.keys,)
    out: dict[str, Any] = {}
    for k in runs:
        out[k] = evaluate(args.model, args.data, keys=k, seed=args.seed, temperature=args.temperature,
                          limit=args.limit, draws=args.draws)  # fmt: skip
    if args.keys == "both" and args.draws > 1:
        out["C_one_draw"] = evaluate(args.model, args.data, keys="C", seed=args.seed, temperature=args.temperature,
                                     limit=args.limit, draws=1)  # fmt: skip
    text = json.dumps(out, indent=2)
    if args.out is not None:
        args.out.write_text(text + "\n")
    if args.markdown is not None:
        args.markdown.write_text(markdown(out))
    print(text)
    return 0

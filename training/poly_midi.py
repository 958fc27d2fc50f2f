"""The polyphonic kind's data (``rtgen-train all --kind poly``): a folder of MIDI -> step-grid rolls.

Every non-drum note of every track is kept (the parts merged), on the grid of ``contract.STEPS_PER_BEAT``
steps per quarter note (times rounded as :mod:`rtgen.midi.extract` rounds them). A sequence is three arrays:

- ``state`` ``(T, 88)`` uint8, per pitch (column ``j`` = MIDI pitch ``21 + j``): :data:`OFF`, :data:`ONSET`
  (a note starts on this step; a repeated note is a new onset) or :data:`HELD` (a note started earlier
  still sounds);
- ``velocity`` ``(T, 88)`` uint8: ``contract.velocity_bin`` of the onset's velocity where ``state`` is
  :data:`ONSET` (the loudest when two notes of a pitch start together), 0 elsewhere;
- ``position`` ``(T,)`` uint8: step in bar from the file's time-signature map (4/4 when it has none, each
  change starting a bar; ``extract.bar_grid``), clamped to ``contract.MAX_BAR_STEPS - 1``.

Notes outside the piano's range (MIDI 21..108) are dropped (counted in the manifest); leading bars without
a note are dropped and the sequence ends where the last note ends. Files are chosen, split and skipped
exactly as :func:`training.prepare.prepare` does (the same skip reasons, stems, duplicates, split map, hash
split and the small folder's held-out minimum), with two reasons of this kind's own: ``empty`` (no notes) and
``drums_only``; ``too_short`` is under ``extract.MIN_BARS`` bars.

Output: ``OUT/{train,valid,test}/{state,velocity,position,offsets}.npy`` (flat over the split's sequences,
``offsets`` the start of each) and ``OUT/manifest.json`` (format ``rtgen-poly-data``). Up-to-date runs
return at once, as prepare's do. Never imports torch.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from rtgen import contract as C  # noqa: N812
from rtgen.midi import extract as X  # noqa: N812
from training import prepare as P  # noqa: N812
from training.poly_data import LOWEST_PITCH, N_PITCHES

log = logging.getLogger(__name__)

FORMAT = "rtgen-poly-data"
"""``manifest.json`` ``format`` of polyphonic prepared data."""
OFF, ONSET, HELD = 0, 1, 2
"""Per-pitch states of a step."""
N_STATES = 3
BAR_STEPS = C.MAX_BAR_STEPS
"""Positions in bar the model distinguishes (longer bars share the last)."""
VELOCITY_BINS = C.NUM_VELOCITY_BINS
POLY_EXTRACTOR_VERSION = 1
"""Bump when the extraction changes, so prepared data is redone."""
ARRAYS: dict[str, type[np.integer[Any]]] = {"state": np.uint8, "velocity": np.uint8, "position": np.uint8}

IntArray = npt.NDArray[np.int64]


def roll_from_score(score: object) -> dict[str, npt.NDArray[Any]]:
    """``state``, ``velocity`` and ``position`` of a parsed ``symusic.Score`` (the module docstring), plus
    ``dropped`` (a one-element array: notes outside the piano's range).

    Raises:
        extract.SkipFile: ``corrupt``, ``empty``, ``drums_only``, ``too_short`` or ``too_long``.
    """
    tpq = int(score.ticks_per_quarter)  # type: ignore[attr-defined]
    if tpq <= 0:
        raise X.SkipFile("corrupt")
    parts: list[X.Notes] = []
    drums = False
    for tr in score.tracks:  # type: ignore[attr-defined]
        if len(tr.notes) == 0:
            continue
        n = X._track_notes(tr.notes.numpy(), tpq)
        if n.size and tr.is_drum:
            drums = True
        elif n.size:
            parts.append(n)
    if not parts:
        raise X.SkipFile("drums_only" if drums else "empty")
    notes = X._concat(parts)
    keep = (notes.pitch >= LOWEST_PITCH) & (notes.pitch < LOWEST_PITCH + N_PITCHES)
    dropped = int(notes.size - keep.sum())
    on, off, pitch, vel = notes.on[keep], notes.off[keep], notes.pitch[keep] - LOWEST_PITCH, notes.velocity[keep]
    if on.size == 0:
        raise X.SkipFile("empty")
    length = int(off.max())
    if length > X.MAX_STEPS:
        raise X.SkipFile("too_long")
    grid = X.bar_grid(X._time_signatures(score, tpq), length)
    start = int(np.searchsorted(grid.bar, grid.bar[int(on.min())], side="left"))
    if int(grid.bar[-1] - grid.bar[start]) + 1 < X.MIN_BARS:
        raise X.SkipFile("too_short")
    state = np.zeros((length, N_PITCHES), dtype=np.uint8)
    velocity = np.zeros((length, N_PITCHES), dtype=np.uint8)
    for a, b, p in zip(on.tolist(), off.tolist(), pitch.tolist(), strict=True):
        state[a:b, p] = HELD
    state[on, pitch] = ONSET  # after every hold: an onset inside an earlier note of the pitch wins
    bins = np.asarray(C.velocity_bin(vel), dtype=np.uint8)
    np.maximum.at(velocity, (on, pitch), bins)
    position = np.minimum(grid.step_in_bar, BAR_STEPS - 1).astype(np.uint8)
    return {"state": state[start:], "velocity": velocity[start:], "position": position[start:],
            "dropped": np.array([dropped], dtype=np.int64)}  # fmt: skip


def extract_poly_file(path: str | Path) -> dict[str, npt.NDArray[Any]] | str:
    """The arrays of :func:`roll_from_score` for one MIDI file, or the reason it is skipped.

    Never raises for a bad file (as ``extract.extract_file``): what ``sniff`` sees first, then ``corrupt``
    when the parser fails, ``error: <ExceptionType>`` for anything unexpected.
    """
    return X.convert_file(path, roll_from_score)


def _work(path: str) -> dict[str, npt.NDArray[Any]] | str:
    try:
        return extract_poly_file(path)
    except BaseException as err:  # a worker must always answer; the parent counts the reason
        return f"error: {type(err).__name__}"


def read_poly_manifest(data: Path) -> dict[str, Any] | None:
    """The manifest of polyphonic prepared data at ``data``, or None when there is none."""
    try:
        manifest = json.loads((Path(data) / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == FORMAT else None


def prepare_poly(
    midi_dir: str | Path,
    out: str | Path,
    limit: int | None = None,
    split_map: str | Path | None = None,
    *,
    workers: int | None = None,
    force: bool = False,
    progress: bool = True,
    quiet: bool = False,
) -> P.PrepareSummary:
    """Prepare a folder of MIDI files into polyphonic rolls per split (arguments as ``prepare.prepare``).

    Raises:
        DataError: as ``prepare.prepare``.
    """
    import training.poly_midi as this

    t0 = time.perf_counter()
    midi_dir, out, split_map, files = P.check_inputs(midi_dir, out, split_map, read_poly_manifest)
    fp = P.fingerprint(midi_dir, files, limit, split_map, code=(this,))
    if (current := P.up_to_date(out, fp, read_poly_manifest, force=force, quiet=quiet, t0=t0)) is not None:
        return current

    chosen, split_of, skipped_files = P.select_files(midi_dir, files, limit, split_map)
    seqs, used = P.extract_by_split(
        midi_dir, chosen, split_of, skipped_files, workers=workers, progress=progress, work=_work
    )
    dropped = sum(int(q["dropped"][0]) for split in seqs.values() for q in split)
    split_info: dict[str, dict[str, Any]] = {}
    skipped = {k: len(v) for k, v in skipped_files.items()}
    seconds: list[float] = []  # one figure for the manifest and the summary

    def fill(tmp: Path) -> None:
        for s in P.SPLITS:
            folder = tmp / s
            folder.mkdir()
            lengths = [len(q["state"]) for q in seqs[s]]
            np.save(folder / "offsets.npy", np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64))
            for name, dtype in ARRAYS.items():
                shape = (0, N_PITCHES) if name != "position" else (0,)
                flat = np.concatenate([q[name] for q in seqs[s]]) if seqs[s] else np.zeros(shape)
                np.save(folder / f"{name}.npy", flat.astype(dtype))
            split_info[s] = {"files": used[s], "sequences": len(seqs[s]), "steps": int(sum(lengths)),
                             "notes": int(sum(int((q["state"] == ONSET).sum()) for q in seqs[s]))}  # fmt: skip
        seconds.append(time.perf_counter() - t0)
        manifest = {
            "format": FORMAT,
            "steps_per_beat": C.STEPS_PER_BEAT,
            "n_pitches": N_PITCHES,
            "low_pitch": LOWEST_PITCH,
            "bar_steps": BAR_STEPS,
            "velocity_bins": VELOCITY_BINS,
            "source": str(midi_dir),
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "splits": split_info,
            "skipped": skipped,
            "skipped_files": {k: v for k, v in skipped_files.items() if v},
            "notes_out_of_range": dropped,
            "split_method": f"{split_map.name} + hash" if split_map else "hash (sha1 80/10/10)",
            "files_seen": len(files),
            "limit": limit,
            "extractor_version": POLY_EXTRACTOR_VERSION,
            "fingerprint": fp,
            "seconds": round(seconds[0], 3),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")

    P.write_atomically(out, fill)
    return P.finish(out, len(files), split_info, skipped, seconds[0], len(chosen), quiet=quiet)


@dataclass(frozen=True)
class PolySplit:
    """One split of polyphonic prepared data.

    Attributes:
        state: ``(N, 88)`` per-pitch states, flat over the sequences.
        velocity: ``(N, 88)`` velocity bins (at onsets).
        position: ``(N,)`` step in bar.
        offsets: ``(sequences + 1,)`` start of each sequence.
    """

    state: npt.NDArray[np.uint8]
    velocity: npt.NDArray[np.uint8]
    position: npt.NDArray[np.uint8]
    offsets: IntArray

    @property
    def sequences(self) -> int:
        """Number of sequences."""
        return int(self.offsets.size - 1)

    @property
    def steps(self) -> int:
        """Steps over all sequences."""
        return int(self.offsets[-1])

    def seq(self, i: int) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
        """``(state, velocity, position)`` of sequence ``i``."""
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.state[a:b], self.velocity[a:b], self.position[a:b]


def load_poly_split(data: Path, split: str) -> PolySplit:
    """One split of the polyphonic prepared data at ``data``.

    Raises:
        DataError: not polyphonic prepared data, or an array is missing or unreadable.
    """
    if read_poly_manifest(data) is None:
        raise P.DataError(f"no polyphonic prepared data at {data}; run rtgen-train all --kind poly")
    arrays: dict[str, Any] = {}
    for name in (*ARRAYS, "offsets"):
        path = Path(data) / split / f"{name}.npy"
        try:
            arrays[name] = np.load(path)
        except (OSError, ValueError) as err:
            raise P.DataError(f"cannot read {path}: {err}; prepare {data} again") from err
    return PolySplit(**arrays)


def sounding(state: npt.NDArray[np.uint8]) -> npt.NDArray[np.int64]:
    """Sounding notes per step of a ``(T, 88)`` state roll."""
    return (state != OFF).sum(axis=1).astype(np.int64)


def chord_share(state: npt.NDArray[np.uint8], notes: int = 3) -> float:
    """Share of steps with at least ``notes`` notes sounding (nan for an empty roll)."""
    return float((sounding(state) >= notes).mean()) if len(state) else math.nan

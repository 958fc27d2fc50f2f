"""Prepared data read back (docs/internals.md §1): the manifest and one split's arrays, with numpy alone.

``rtgen-train evaluate`` and ``rtgen-train accompany`` both read prepared data through here (training's
batches for torch are :mod:`training.dataset`'s).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from rtgen import contract
from training.ngram import Stream
from training.prepare import DataError

MANIFEST_FILE = "manifest.json"
SPLITS = ("train", "valid", "test")
ARRAYS = ("melody", "velocity", "chord", "position", "phrase")


def read_manifest(data: Path) -> dict[str, Any]:
    """The manifest of the prepared-data folder ``data`` (the one reader), checked to be rtgen data of this
    token contract.

    Raises:
        DataError: (an ``RtgenError``) no readable rtgen manifest there, or data of another token contract.
    """
    path = Path(data) / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise DataError(f"no prepared data at {data} (missing {path}); run `rtgen-train prepare --out {data}`") from err
    except (OSError, ValueError) as err:
        raise DataError(
            f"{data} is not a prepared-data folder ({path}: {err}); run rtgen-train prepare --out {data}"
        ) from err
    if not isinstance(manifest, dict) or manifest.get("format") != "rtgen-data":
        raise DataError(f"{path} is not an rtgen data manifest; run rtgen-train prepare --out {data}")
    if manifest.get("contract_version") != contract.CONTRACT_VERSION:
        raise DataError(
            f"{data} was prepared for token contract v{manifest.get('contract_version')}, this code speaks "
            f"v{contract.CONTRACT_VERSION}; run rtgen-train prepare --out {data} again"
        )
    return manifest


def manifest_files(data: Path) -> dict[str, list[str]]:
    """File names per split from the prepared data's manifest (empty where it lists none or cannot be read)."""
    try:
        splits = read_manifest(data).get("splits", {})
    except DataError:
        return {}
    return {k: list(v.get("files", [])) for k, v in splits.items() if isinstance(v, dict)}


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
    read_manifest(data)
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

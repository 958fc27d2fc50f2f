"""Prepared data (docs/internals.md §1) -> teacher-forcing batches for both models.

A :class:`Split` loads one split's arrays (memory-mapped), builds the contract's
step inputs once per sequence (``contract.step_inputs``) and serves batches of
windows. Training windows are ``window`` steps long, cut from each sequence at a
random phase every epoch (so windows also start mid-sequence; the GRU then starts
from a zero state, as it does live after a reset) and transposed by a random shift
in -6..5 (train split only). Short windows (sequence ends) are batched with windows
of similar length, so padding stays small. Every rank of a distributed run gets a
different, equally long share of the batches, all derived from ``(seed, epoch)``.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from rtgen import contract as C  # noqa: N812 (short alias, used on every line)
from rtgen.errors import RtgenError

log = logging.getLogger(__name__)

IGNORE = -100
"""Target value ignored by the losses (padding; velocity where melody is not NOTE_ON)."""
ARRAYS = ("melody", "velocity", "chord", "position", "phrase")
MELODY_KEYS = ("prev_melody", "prev_sounding", "lookback_melody", "melody_now", "sounding_now")
CHORD_KEYS = ("prev_chord", "prev_chord_now", "chord_now", "lookback_chord")
LOOKBACK_KEYS = ("lookback_melody", "lookback_chord")
INPUT_KEYS = (*C.COMMON_INPUTS, "chord_now", "melody_now", "sounding_now")
TARGET_KEYS = ("chord", "melody", "velocity")


@dataclass
class Window:
    """One window of a sequence: flat start index, length, and transposition."""

    start: int
    length: int
    shift: int = 0


class Split:
    """One split of prepared data with precomputed teacher-forcing inputs and targets.

    Attributes:
        name: ``train``, ``valid`` or ``test``.
        offsets: (n_sequences + 1,) sequence starts in the flat arrays.
        arrays: flat int64 arrays keyed by input and target name.
    """

    def __init__(self, data: Path, name: str) -> None:
        self.name = name
        folder = Path(data) / name
        try:
            raw = {k: np.load(folder / f"{k}.npy", mmap_mode="r") for k in (*ARRAYS, "offsets")}
        except FileNotFoundError as err:
            raise RtgenError(f"prepared data split {folder} is incomplete ({err.filename} missing)") from err
        self.offsets = np.asarray(raw["offsets"], dtype=np.int64)
        n = int(self.offsets[-1]) if self.offsets.size else 0
        arrays: dict[str, npt.NDArray[np.int64]] = {
            k: np.empty((n, C.NUM_LOOKBACKS) if k in LOOKBACK_KEYS else n, dtype=np.int64)
            for k in (*INPUT_KEYS, *TARGET_KEYS)
        }
        for a, b in zip(self.offsets[:-1], self.offsets[1:], strict=True):
            mel = np.asarray(raw["melody"][a:b], dtype=np.int64)
            vel = np.asarray(raw["velocity"][a:b], dtype=np.int64)
            ch = np.asarray(raw["chord"][a:b], dtype=np.int64)
            pos = np.asarray(raw["position"][a:b], dtype=np.int64)
            for k, v in C.step_inputs(mel, vel, ch, pos).items():
                arrays[k][a:b] = v
            arrays["position"][a:b] = pos
            arrays["phrase"][a:b] = raw["phrase"][a:b]
            arrays["chord"][a:b] = ch
            arrays["melody"][a:b] = mel
            arrays["velocity"][a:b] = np.where(mel >= C.MEL_NOTE_OFFSET, vel, IGNORE)
        self.arrays = arrays
        self._check()

    def _check(self) -> None:
        limits = {"melody": C.MELODY_VOCAB_SIZE, "chord": C.CHORD_VOCAB_SIZE, "position": C.MAX_BAR_STEPS}
        limits |= {"phrase": C.PHRASE_BARS}
        for k, hi in limits.items():
            a = self.arrays[k]
            if a.size and (a.min() < 0 or a.max() >= hi):
                raise RtgenError(f"{self.name}/{k}.npy has tokens outside 0..{hi - 1}; prepare the data again")

    @property
    def steps(self) -> int:
        """Total steps in the split."""
        return int(self.offsets[-1]) if self.offsets.size else 0

    @property
    def sequences(self) -> int:
        """Number of sequences."""
        return max(0, self.offsets.size - 1)

    # --- windows and batches ------------------------------------------------
    def windows(self, window: int, rng: np.random.Generator | None) -> list[Window]:
        """Cut every sequence into windows of at most ``window`` steps.

        With ``rng`` (training): a random phase per sequence and a random transposition per
        window. Without: windows from the sequence start, untransposed.
        """
        out: list[Window] = []
        for a, b in zip(self.offsets[:-1], self.offsets[1:], strict=True):
            a, b = int(a), int(b)
            phase = int(rng.integers(0, window)) if rng is not None else 0
            cuts = [a, *range(a + phase, b, window)] if phase else list(range(a, b, window))
            cuts = [*sorted(set(cuts)), b]
            for s, e in itertools.pairwise(cuts):
                shift = int(rng.integers(-6, 6)) if rng is not None else 0
                out.append(Window(s, e - s, shift))
        return out

    def plan(
        self,
        batch_size: int,
        window: int,
        seed: int,
        epoch: int,
        *,
        rank: int = 0,
        world: int = 1,
        augment: bool = True,
        shuffle: bool = True,
    ) -> list[list[Window]]:
        """This rank's batches for one epoch; every rank gets the same number of batches.

        Windows are sorted by length before they are grouped (so a batch pads little),
        then the batch order is shuffled; all from ``(seed, epoch)``, identical on every rank.
        """
        rng = np.random.default_rng([seed, epoch]) if shuffle else None
        wins = self.windows(window, rng if augment else None)
        if rng is not None:
            order = rng.permutation(len(wins))
            wins = [wins[i] for i in order]
        if not augment:
            for w in wins:
                w.shift = 0
        wins.sort(key=lambda w: -w.length)  # stable: keeps the shuffled order among equal lengths
        batches = [wins[i : i + batch_size] for i in range(0, len(wins), batch_size)]
        if rng is not None:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        per_rank = len(batches) // world if world > 1 else len(batches)
        if world > 1 and per_rank == 0:
            raise RtgenError(
                f"{self.name} split has {len(batches)} batches of {batch_size}, fewer than {world} ranks; "
                "use a smaller --batch-size or fewer processes"
            )
        return batches[rank::world][:per_rank]

    def collate(self, batch: list[Window]) -> dict[str, torch.Tensor]:
        """Stack windows into (B, T) int64 tensors ((B, T, K) for lookbacks), padded; padded targets = IGNORE."""
        t = max(w.length for w in batch)
        out = {
            k: np.zeros((len(batch), t, C.NUM_LOOKBACKS) if k in LOOKBACK_KEYS else (len(batch), t), dtype=np.int64)
            for k in INPUT_KEYS
        }
        out |= {k: np.full((len(batch), t), IGNORE, dtype=np.int64) for k in TARGET_KEYS}
        for i, w in enumerate(batch):
            sl = slice(w.start, w.start + w.length)
            for k in (*INPUT_KEYS, *TARGET_KEYS):
                v = self.arrays[k][sl]
                if w.shift:
                    if k in MELODY_KEYS or k == "melody":
                        v = C.transpose_melody(v, w.shift)
                    elif k in CHORD_KEYS or k == "chord":
                        v = C.transpose_chords(v, w.shift)
                out[k][i, : w.length] = v
        return {k: torch.from_numpy(v) for k, v in out.items()}

    def batches(
        self, batch_size: int, window: int, seed: int, epoch: int, *, rank: int = 0, world: int = 1, train: bool = True
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Collated batches of :meth:`plan` (training: shuffled and transposed)."""
        for b in self.plan(batch_size, window, seed, epoch, rank=rank, world=world, augment=train, shuffle=train):
            yield self.collate(b)


def eval_plan(split: Split, batch_size: int, rank: int = 0, world: int = 1) -> list[list[Window]]:
    """Whole sequences (no windows, no augmentation), grouped by length; this rank's share.

    Unlike training, ranks may get different numbers of batches here: evaluation has no
    gradient synchronisation, and the sums are all-reduced afterwards.
    """
    wins = [Window(int(a), int(b - a)) for a, b in zip(split.offsets[:-1], split.offsets[1:], strict=True)]
    wins.sort(key=lambda w: -w.length)
    batches = [wins[i : i + batch_size] for i in range(0, len(wins), batch_size)]
    return batches[rank::world]


def write_synthetic(
    out: Path, *, sequences: int = 12, length: int = 300, seed: int = 0, splits: tuple[str, ...] = ("train", "valid")
) -> Path:
    """Write a small, learnable dataset in the prepared-data format (for tests and smoke runs).

    Each sequence is a tune in 4/4 over a I-IV-V-I progression, two bars per chord;
    the melody plays chord tones on eighth notes with rests and holds, so the models
    have real structure to learn.
    """
    rng = np.random.default_rng(seed)
    files: dict[str, dict[str, object]] = {}
    for split in splits:
        cols: dict[str, list[np.ndarray]] = {k: [] for k in ARRAYS}
        offsets = [0]
        for _ in range(sequences):
            key = int(rng.integers(0, 12))
            steps = np.arange(length)
            bar = steps // 16
            pos = steps % 16
            prog = np.array([0, 5, 7, 0])[(bar // 2) % 4]
            chords = np.array([C.Chord((key + r) % 12, 0).token for r in prog])
            chord = np.where((pos == 0) & (bar % 2 == 0), chords, C.CHORD_HOLD)
            chord[0] = chords[0]
            tones = np.array([0, 4, 7, 12])[rng.integers(0, 4, size=length)]
            pitch = 60 + key % 12 + prog + tones
            onset = (pos % 2 == 0) & (rng.random(length) < 0.85)
            melody = np.where(onset, [C.melody_note_on(int(p)) for p in pitch], C.MEL_HOLD)
            melody[(pos == 14) & (bar % 4 == 3)] = C.MEL_REST
            vel = np.where(pos % 4 == 0, 6, 4).astype(np.uint8)
            cols["melody"].append(melody.astype(np.int16))
            cols["velocity"].append(vel)
            cols["chord"].append(chord.astype(np.int16))
            cols["position"].append(pos.astype(np.uint8))
            cols["phrase"].append((bar % C.PHRASE_BARS).astype(np.uint8))
            offsets.append(offsets[-1] + length)
        folder = Path(out) / split
        folder.mkdir(parents=True, exist_ok=True)
        for k, parts in cols.items():
            np.save(folder / f"{k}.npy", np.concatenate(parts))
        np.save(folder / "offsets.npy", np.asarray(offsets, dtype=np.int64))
        files[split] = {
            "files": [f"synthetic/{split}_{i}.mid" for i in range(sequences)],
            "sequences": sequences,
            "steps": offsets[-1],
        }
    manifest = {
        "format": "rtgen-data",
        "contract_version": C.CONTRACT_VERSION,
        "steps_per_beat": C.STEPS_PER_BEAT,
        "source": "synthetic",
        "created": "synthetic",
        "splits": files,
        "skipped": {},
        "skipped_files": {},
        "split_method": "synthetic",
        "files_seen": sequences * len(splits),
    }
    (Path(out) / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return Path(out)

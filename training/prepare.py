"""``rtgen-train prepare``: a folder of MIDI files -> memory-mapped token arrays per split.

Output layout and manifest: docs/internals.md §1. Extraction heuristics: :mod:`rtgen.midi.extract`.

File selection, in order:

1. every ``.mid`` / ``.midi`` file under ``--midi-dir`` (any case, recursively), sorted by relative path;
2. *stems* are dropped (counted as ``stem``): a file in a subfolder whose name also appears in a folder above
   it is a per-track copy of that tune (the Nottingham ``MIDI/melody`` and ``MIDI/chords`` folders) and would
   duplicate it;
3. exact duplicates (same bytes) keep only their first file (later ones counted as ``duplicate``), so a tune
   never sits in two splits;
4. each file gets a split: from the split map CSV when it lists the file with confidence ``high`` or ``medium``
   (matched by relative path, then by file name), otherwise by a stable hash of the relative path
   (sha1: 80 % train, 10 % valid, 10 % test);
5. ``--limit N`` takes a deterministic spread of N files, stratified by split, so that even a tiny run has
   train, valid and test sequences;
6. a small folder's valid and test splits are topped up from train to ``MIN_HELD_OUT`` pieces each (in a
   folder of ``4 * MIN_HELD_OUT`` files or more; :func:`ensure_held_out`), so early stopping and the
   evaluation see more than one piece.

Files are parsed in parallel (one process per core); a file that cannot be read or yields nothing useful is
skipped and counted by reason, never fatal: zero-length, too large (never read), not MIDI and truncated files are
told apart before anything reads them whole (:func:`rtgen.midi.extract.sniff`), so they are not hashed either.
The output is written to a temporary folder and renamed into place, so an interrupted run leaves no half
dataset. A run whose inputs (file list, sizes, times, limit, split map, contract and extractor versions and
source code) match an existing manifest returns at once (``--force`` redoes it). This module never imports torch.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from rtgen import contract as C  # noqa: N812
from rtgen.errors import RtgenError
from rtgen.midi import extract as midi_extract
from rtgen.midi.extract import EXTRACTOR_VERSION, extract_file, tokens_from_score

__all__ = ["PrepareSummary", "extract_file", "prepare", "register", "tokens_from_score"]

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
MIN_HELD_OUT = 3
"""Pieces the valid and the test split each hold at least (from train) when the folder has four times as many."""
ARRAYS: dict[str, type[np.integer[Any]]] = {
    "melody": np.int16,
    "velocity": np.uint8,
    "chord": np.int16,
    "position": np.uint8,
    "phrase": np.uint8,
}
"""Per-step arrays written for each split, with their on-disk dtype (docs/internals.md §1)."""
BASE_REASONS = ("zero_length", "not_midi", "truncated", "too_large", "corrupt", "empty", "no_melody", "too_short")
SPLIT_MAP_NAME = "boulanger_split_map.csv"
SPLIT_MAP_CONFIDENCE = ("high", "medium")
MIDI_SUFFIXES = (".mid", ".midi")


@dataclass
class PrepareSummary:
    """What a prepare run did (or found already done)."""

    out: Path
    files_seen: int
    splits: dict[str, dict[str, int]]
    skipped: dict[str, int]
    seconds: float
    up_to_date: bool = False
    files_used: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        """The one-line summary printed at the end of a run."""
        if self.up_to_date:
            head = f"prepare: {self.out} is up to date ({self.files_seen} files seen)"
        else:
            head = f"prepare: {self.files_seen} files seen, {self.files_used} read in {self.seconds:.1f} s"
        parts = ", ".join(f"{s} {v['sequences']} seq / {v['steps']} steps" for s, v in self.splits.items())
        skips = ", ".join(f"{k} {v}" for k, v in sorted(self.skipped.items()) if v) or "none"
        return f"{head}; {parts}; skipped: {skips} -> {self.out}"


class DataError(RtgenError):
    """The MIDI folder, the split map or the output folder cannot be used."""


# --- file selection -------------------------------------------------------------------------------
def find_midi_files(midi_dir: Path) -> list[str]:
    """Relative POSIX paths of every MIDI file under ``midi_dir``, sorted."""
    found = []
    for root, dirs, files in os.walk(midi_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if name.lower().endswith(MIDI_SUFFIXES) and not name.startswith("."):
                found.append((Path(root) / name).relative_to(midi_dir).as_posix())
    return sorted(found)


def find_stems(files: Iterable[str]) -> set[str]:
    """Files in a subfolder whose name also appears in a folder above them (per-track copies)."""
    names: dict[str, set[str]] = {}
    for rel in files:
        parent, _, name = rel.rpartition("/")
        names.setdefault(parent, set()).add(name)
    stems = set()
    for rel in files:
        parent, _, name = rel.rpartition("/")
        while parent:
            parent = parent.rpartition("/")[0]
            if name in names.get(parent, ()):
                stems.add(rel)
                break
    return stems


def load_split_map(path: Path) -> dict[str, str]:
    """File name -> split from a split map CSV (``jukedeck_file``, ``confidence``, ``boulanger_split``).

    Only rows with confidence ``high`` or ``medium`` are used.
    """
    try:
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as err:
        raise DataError(f"cannot read split map {path}: {err}") from err
    needed = {"jukedeck_file", "confidence", "boulanger_split"}
    if rows and not needed <= set(rows[0]):
        raise DataError(f"split map {path} lacks columns {sorted(needed - set(rows[0]))}; it needs {sorted(needed)}")
    out = {}
    for row in rows:
        split = row["boulanger_split"].strip()
        if row["confidence"].strip() in SPLIT_MAP_CONFIDENCE and split in SPLITS:
            out[row["jukedeck_file"].strip()] = split
    return out


def hash_split(rel: str) -> str:
    """Stable split of a relative path: sha1 -> 80 % train, 10 % valid, 10 % test."""
    h = _hash_value(rel)
    return "train" if h < 80 else "valid" if h < 90 else "test"


def _hash_value(rel: str) -> int:
    return int(hashlib.sha1(rel.encode()).hexdigest()[:8], 16) % 100


def ensure_held_out(chosen: list[str], split_of: dict[str, str], pinned: Iterable[str]) -> list[tuple[str, str]]:
    """Move train files into valid, then test, until each holds ``MIN_HELD_OUT`` pieces.

    On a small folder the 10 % hash shares of valid and test are often zero, one or two pieces: too few for
    early stopping and the evaluation to mean anything (or none, and training or evaluation cannot start). The
    train files nearest each share by their hash move first (deterministic); files the split map placed never
    move. A folder of fewer than ``4 * MIN_HELD_OUT`` files keeps its hash split (too few to hold out more).
    Returns the moves as ``(file, split)``.
    """
    want = MIN_HELD_OUT if len(chosen) >= 4 * MIN_HELD_OUT else 0
    fixed = set(pinned)
    moves = []
    for split in ("valid", "test"):
        have = sum(1 for f in chosen if split_of[f] == split)
        movable = [f for f in chosen if split_of[f] == "train" and f not in fixed]
        movable.sort(key=lambda f: -_hash_value(f) if split == "valid" else _hash_value(f))
        for f in movable[: max(0, want - have)]:
            split_of[f] = split
            moves.append((f, split))
    return moves


def assign_split(rel: str, split_map: dict[str, str]) -> str:
    """Split of one file: the split map (by relative path, then file name), else the hash."""
    return split_map.get(rel) or split_map.get(rel.rpartition("/")[2]) or hash_split(rel)


def select_limit(files: list[str], splits: dict[str, str], limit: int | None) -> list[str]:
    """A deterministic spread of ``limit`` files, stratified by split (each split present gets one if it can)."""
    if limit is None or limit >= len(files):
        return list(files)
    if limit <= 0:
        return []
    by_split = {s: [f for f in files if splits[f] == s] for s in SPLITS}
    present = [s for s in SPLITS if by_split[s]]
    quota = {s: 0 for s in SPLITS}
    if limit >= len(present):
        for s in present:
            quota[s] = 1
    remaining = limit - sum(quota.values())
    # largest remainder over the rest, proportional to each split's size
    want = {s: remaining * len(by_split[s]) / len(files) for s in present}
    for s in present:
        quota[s] += int(want[s])
    left = limit - sum(quota.values())
    for s in sorted(present, key=lambda s: (-(want[s] - int(want[s])), SPLITS.index(s)))[:left]:
        quota[s] += 1
    chosen = []
    for s in present:
        pool, q = by_split[s], min(quota[s], len(by_split[s]))
        chosen += [pool[(2 * i + 1) * len(pool) // (2 * q)] for i in range(q)]
    return sorted(chosen)


def fingerprint(
    midi_dir: Path, files: list[str], limit: int | None, split_map: Path | None, code: tuple[Any, ...] = ()
) -> str:
    """Hash of everything a prepared dataset depends on (``code``: more modules whose source it depends on)."""
    h = hashlib.sha256()
    meta: dict[str, Any] = {
        "contract": C.CONTRACT_VERSION,
        "steps_per_beat": C.STEPS_PER_BEAT,
        "extractor": EXTRACTOR_VERSION,
        "limit": limit,
        "split_map": hashlib.sha256(split_map.read_bytes()).hexdigest() if split_map else None,
        # the code that makes the tokens: a changed chord recogniser or extractor redoes the data
        "code": [hashlib.sha256(Path(str(m.__file__)).read_bytes()).hexdigest() for m in (C, midi_extract, *code)],
    }
    h.update(json.dumps(meta, sort_keys=True).encode())
    for rel in files:
        st = (midi_dir / rel).stat()
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


# --- extraction in worker processes -----------------------------------------------------------------
def _work(path: str) -> dict[str, npt.NDArray[np.int64]] | str:
    try:
        return extract_file(path)
    except BaseException as err:  # a worker must always answer; the parent counts the reason
        return f"error: {type(err).__name__}"


def _extract_all(paths: list[str], workers: int, progress: bool, work: Callable[[str], Any] = _work) -> Iterator[Any]:
    """``work(path)`` of each path, in order, in worker processes (one per core) with a progress bar."""
    from tqdm import tqdm

    bar = tqdm(total=len(paths), unit="file", desc="prepare", disable=not progress, leave=False)
    try:
        if workers <= 1 or len(paths) <= 1:
            for p in paths:
                yield work(p)
                bar.update()
            return
        chunksize = max(1, min(32, len(paths) // (workers * 8)))
        # fork is fastest to start; a parent that loaded torch (rtgen-train all) may hold thread pools that do
        # not survive a fork, so then the workers come from a clean fork server instead
        ctx = multiprocessing.get_context("forkserver" if "torch" in sys.modules else "fork")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            for result in pool.map(work, paths, chunksize=chunksize):
                yield result
                bar.update()
    finally:
        bar.close()


# --- output ------------------------------------------------------------------------------------------
def _write_split(folder: Path, seqs: list[dict[str, npt.NDArray[np.int64]]]) -> int:
    folder.mkdir(parents=True)
    lengths = np.array([s["melody"].size for s in seqs], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    for name, dtype in ARRAYS.items():
        flat = np.concatenate([s[name] for s in seqs]) if seqs else np.zeros(0, dtype=np.int64)
        np.save(folder / f"{name}.npy", flat.astype(dtype))
    np.save(folder / "offsets.npy", offsets)
    return int(offsets[-1])


def _replace_dir(tmp: Path, out: Path) -> None:
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


def _read_manifest(out: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == "rtgen-data" else None


def _summary_from_manifest(out: Path, manifest: dict[str, Any], seconds: float) -> PrepareSummary:
    splits = {s: {"sequences": v["sequences"], "steps": v["steps"]} for s, v in manifest["splits"].items()}
    return PrepareSummary(
        out=out,
        files_seen=int(manifest.get("files_seen", 0)),
        splits=splits,
        skipped=dict(manifest.get("skipped", {})),
        seconds=seconds,
        up_to_date=True,
        files_used=sum(len(v["files"]) for v in manifest["splits"].values()),
    )


def check_inputs(
    midi_dir: str | Path, out: str | Path, split_map: str | Path | None, manifest: Callable[[Path], Any]
) -> tuple[Path, Path, Path | None, list[str]]:
    """``(midi_dir, out, split map, MIDI files)`` of a prepare run, checked.

    The split map defaults to ``midi_dir.parent / SPLIT_MAP_NAME`` when that exists; ``manifest(out)`` is None
    when ``out`` is not prepared data of the caller's kind (then a non-empty ``out`` is refused).

    Raises:
        DataError: no such MIDI folder or split map, no MIDI files, or ``out`` is another kind of folder.
    """
    midi_dir, out = Path(midi_dir).expanduser().resolve(), Path(out).expanduser()
    if not midi_dir.is_dir():
        raise DataError(f"MIDI folder {midi_dir} does not exist; pass --midi-dir a folder of .mid/.midi files")
    if split_map is not None:
        split_map = Path(split_map).expanduser()
        if not split_map.is_file():
            raise DataError(f"split map {split_map} does not exist; omit --split-map to split by hash")
    elif (midi_dir.parent / SPLIT_MAP_NAME).is_file():
        split_map = midi_dir.parent / SPLIT_MAP_NAME
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and manifest(out) is None)):
        raise DataError(f"{out} exists and is not rtgen prepared data; choose another --out or remove it")

    files = find_midi_files(midi_dir)
    if not files:
        raise DataError(f"no MIDI files (.mid, .midi) under {midi_dir}")
    return midi_dir, out, split_map, files


def select_files(
    midi_dir: Path, files: list[str], limit: int | None, split_map: Path | None
) -> tuple[list[str], dict[str, str], dict[str, list[str]]]:
    """Steps 2 to 6 of the module docstring: ``(chosen files, split of each, skipped files by reason)``.

    Stems, files :func:`rtgen.midi.extract.sniff` refuses and duplicates are skipped and listed by reason
    (every reason of :data:`BASE_REASONS` present, possibly empty); the rest get a split, ``limit`` and the
    small-folder top-up of the held-out splits.
    """
    skipped_files: dict[str, list[str]] = {r: [] for r in BASE_REASONS}
    stems = find_stems(files)
    skipped_files["stem"] = sorted(stems)
    seen_hashes: dict[str, str] = {}
    unique = []
    for rel in files:
        if rel in stems:
            continue
        reason = midi_extract.sniff(midi_dir / rel)
        if reason is not None:
            skipped_files.setdefault(reason, []).append(rel)
            log.info("skipped %s: %s", rel, reason)
            continue
        digest = hashlib.sha1((midi_dir / rel).read_bytes()).hexdigest()
        if digest in seen_hashes:
            skipped_files.setdefault("duplicate", []).append(rel)
            log.info("%s duplicates %s; skipped", rel, seen_hashes[digest])
            continue
        seen_hashes[digest] = rel
        unique.append(rel)

    mapping = load_split_map(split_map) if split_map is not None else {}
    split_of = {rel: assign_split(rel, mapping) for rel in unique}
    chosen = select_limit(unique, split_of, limit)
    pinned = [rel for rel in chosen if rel in mapping or rel.rpartition("/")[2] in mapping]
    for rel, split in ensure_held_out(chosen, split_of, pinned):
        log.info("%s moved from train to %s (a small folder needs %d held-out pieces)", rel, split, MIN_HELD_OUT)

    return chosen, split_of, skipped_files


# --- the skeleton both prepare phases share (this one and training.poly_midi.prepare_poly) -------------------
def up_to_date(
    out: Path, fingerprint_: str, read: Callable[[Path], dict[str, Any] | None], *, force: bool, quiet: bool, t0: float
) -> PrepareSummary | None:
    """The summary of ``out`` when it already holds data of this fingerprint (printed unless ``quiet``), else None."""
    old = read(out) if out.exists() else None
    if old is None or old.get("fingerprint") != fingerprint_ or force:
        return None
    summary = _summary_from_manifest(out, old, time.perf_counter() - t0)
    if not quiet:
        print(summary.line())
    return summary


def extract_by_split(
    midi_dir: Path,
    chosen: list[str],
    split_of: dict[str, str],
    skipped_files: dict[str, list[str]],
    *,
    workers: int | None,
    progress: bool,
    work: Callable[[str], Any] = _work,
) -> tuple[dict[str, list[Any]], dict[str, list[str]]]:
    """Each chosen file through ``work`` in worker processes: ``(results, file names)`` per split, in file order.

    A result that is a string is a skip reason: the file goes to ``skipped_files`` under it (and the log).
    """
    n_workers = max(1, workers if workers is not None else (os.cpu_count() or 1))
    seqs: dict[str, list[Any]] = {s: [] for s in SPLITS}
    used: dict[str, list[str]] = {s: [] for s in SPLITS}
    paths = [str(midi_dir / rel) for rel in chosen]
    for rel, result in zip(chosen, _extract_all(paths, n_workers, progress, work=work), strict=True):
        if isinstance(result, str):
            skipped_files.setdefault(result, []).append(rel)
            log.info("skipped %s: %s", rel, result)
            continue
        seqs[split_of[rel]].append(result)
        used[split_of[rel]].append(rel)
    return seqs, used


def write_atomically(out: Path, fill: Callable[[Path], None]) -> None:
    """``fill(tmp)`` writes the dataset into a fresh folder beside ``out``, which then replaces ``out`` in one
    rename; on any error the folder goes and ``out`` is left as it was."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        fill(tmp)
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def finish(
    out: Path, files_seen: int, split_info: dict[str, dict[str, Any]], skipped: dict[str, int], seconds: float,
    files_used: int, *, quiet: bool,
) -> PrepareSummary:  # fmt: skip
    """The run's summary, printed as one line unless ``quiet``."""
    summary = PrepareSummary(
        out=out,
        files_seen=files_seen,
        splits={s: {"sequences": v["sequences"], "steps": v["steps"]} for s, v in split_info.items()},
        skipped=skipped,
        seconds=seconds,
        files_used=files_used,
    )
    if not quiet:
        print(summary.line())
    return summary


# --- the phase ---------------------------------------------------------------------------------------
def prepare(
    midi_dir: str | Path,
    out: str | Path,
    limit: int | None = None,
    split_map: str | Path | None = None,
    *,
    workers: int | None = None,
    force: bool = False,
    progress: bool = True,
    quiet: bool = False,
) -> PrepareSummary:
    """Prepare a folder of MIDI files into token arrays per split (docs/internals.md §1).

    Args:
        midi_dir: folder of MIDI files, searched recursively.
        out: dataset folder to write (replaced atomically).
        limit: use at most this many files (a stratified, deterministic spread).
        split_map: CSV mapping file names to splits; default ``midi_dir.parent / "boulanger_split_map.csv"``
            when it exists.
        workers: parser processes (default: all cores).
        force: redo the work even if ``out`` is up to date.
        progress: show a progress bar.
        quiet: do not print the one-line summary.

    Returns:
        The run's summary (also printed as one line unless ``quiet``).

    Raises:
        DataError: the MIDI folder has no MIDI files, the split map is unreadable, or ``out`` is a
            non-empty folder that is not rtgen data.
    """
    t0 = time.perf_counter()
    midi_dir, out, split_map, files = check_inputs(midi_dir, out, split_map, _read_manifest)
    fp = fingerprint(midi_dir, files, limit, split_map)
    if (current := up_to_date(out, fp, _read_manifest, force=force, quiet=quiet, t0=t0)) is not None:
        return current

    chosen, split_of, skipped_files = select_files(midi_dir, files, limit, split_map)
    seqs, used = extract_by_split(midi_dir, chosen, split_of, skipped_files, workers=workers, progress=progress)
    split_info: dict[str, dict[str, Any]] = {}
    skipped = {k: len(v) for k, v in skipped_files.items()}
    method = f"{split_map.name} ({'+'.join(SPLIT_MAP_CONFIDENCE)}) + hash" if split_map else "hash (sha1 80/10/10)"
    seconds: list[float] = []  # one figure for the manifest and the summary

    def fill(tmp: Path) -> None:
        for s in SPLITS:
            steps = _write_split(tmp / s, seqs[s])
            split_info[s] = {"files": used[s], "sequences": len(seqs[s]), "steps": steps}
        seconds.append(time.perf_counter() - t0)
        manifest = {
            "format": "rtgen-data",
            "contract_version": C.CONTRACT_VERSION,
            "steps_per_beat": C.STEPS_PER_BEAT,
            "source": str(midi_dir),
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "splits": split_info,
            "skipped": skipped,
            "skipped_files": {k: v for k, v in skipped_files.items() if v},
            "split_method": method,
            "split_map": str(split_map.resolve()) if split_map else None,
            "files_seen": len(files),
            "limit": limit,
            "extractor_version": EXTRACTOR_VERSION,
            "fingerprint": fp,
            "seconds": round(seconds[0], 3),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")

    write_atomically(out, fill)
    return finish(out, len(files), split_info, skipped, seconds[0], len(chosen), quiet=quiet)


# --- command line ------------------------------------------------------------------------------------
def register(subparsers: Any) -> None:
    """Add the ``prepare`` subcommand to ``rtgen-train``."""
    p = subparsers.add_parser("prepare", help="MIDI folder -> token arrays per split (train/valid/test)")
    p.add_argument("--midi-dir", type=Path, required=True, help="folder of MIDI files (searched recursively)")
    p.add_argument("--out", type=Path, required=True, help="dataset folder to write")
    p.add_argument("--limit", type=int, default=None, help="use at most N files (a spread over all splits)")
    p.add_argument(
        "--split-map",
        type=Path,
        default=None,
        help=f"CSV mapping files to splits (default: MIDI_DIR/../{SPLIT_MAP_NAME})",
    )
    p.add_argument("--workers", type=int, default=None, help="parser processes (default: all cores)")
    p.add_argument("--force", action="store_true", help="redo even if the output is up to date")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    prepare(
        midi_dir=args.midi_dir,
        out=args.out,
        limit=args.limit,
        split_map=args.split_map,
        workers=args.workers,
        force=args.force,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the prepare phase alone (``python -m training.prepare``)."""
    parser = argparse.ArgumentParser(prog="python -m training.prepare")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(["prepare", *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except RtgenError as err:
        print(f"prepare: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

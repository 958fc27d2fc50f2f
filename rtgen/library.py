"""The model library: the shipped models and the user's own, found by name as well as by path.

A model is a folder with ``meta.json`` (and ``chord.onnx``, ``note.onnx``, ...; see :mod:`rtgen.generation.model`).

- Shipped models travel inside the package as ``rtgen/data/models/NAME`` (in a source checkout that folder
  is a symlink to ``exported_models/``, so there is one copy in git and the wheel carries a real one).
- The user's models live in one folder: ``$RTGEN_MODELS``, else ``[model] library`` in the config, else
  ``$XDG_DATA_HOME/rtgen/models`` (``~/.local/share/rtgen/models``).

A model option resolves as: an existing path wins; else a bare name is looked up, shipped models first
(``default`` is always the shipped one); an unknown name is an error that lists the models there are.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rtgen import contract
from rtgen.errors import ModelError

SHIPPED_MODELS_DIR = Path(__file__).resolve().parent / "data" / "models"
DEFAULT_MODEL = "default"
DEFAULT_POLY_MODEL = "chorale"
"""The shipped polyphonic model (the modes that play one use it unless ``--model`` names another)."""
POLY_KIND = "poly"
"""``meta.json`` ``"kind"`` of a polyphonic model folder."""
MELODY_KIND = "melody"
"""The kind of a folder without ``"kind"``: the melody, chord and harmony graphs of the token contract."""
MODELS_ENV = "RTGEN_MODELS"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
META_FILE = "meta.json"
"""A model folder's manifest: name, token contract, file hashes, architecture, metrics."""
_REEXPORT = "re-export the model with rtgen-train export"


def read_meta(folder: Path) -> dict[str, Any]:
    """The parsed :data:`META_FILE` of a model folder: the one reader (it checks nothing inside).

    Raises:
        ModelError: the file is missing or unreadable, not JSON or not a JSON object; the message names it.
    """
    path = Path(folder) / META_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ModelError(f"no {META_FILE} in {folder}; export a model there first (`rtgen-train export`)") from err
    except (OSError, ValueError) as err:  # ValueError: bad JSON or not UTF-8
        raise ModelError(f"cannot read {path}: {err}; {_REEXPORT}") from err
    if not isinstance(meta, dict):
        raise ModelError(f"{path} is not a JSON object; {_REEXPORT}")
    return meta


def model_kind(meta: dict[str, Any]) -> str:
    """What a ``meta.json`` describes: :data:`POLY_KIND` (a polyphonic step model) or :data:`MELODY_KIND`."""
    kind = meta.get("kind", MELODY_KIND)
    return kind if isinstance(kind, str) else MELODY_KIND


def write_meta(folder: Path, meta: dict[str, Any]) -> None:
    """Write ``meta`` as the folder's :data:`META_FILE`, atomically (a crash leaves the old file or the new).

    Raises:
        OSError: the folder cannot be written.
    """
    path = Path(folder) / META_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def xdg_dir(variable: str, fallback: str) -> Path:
    """``$variable`` when it is an absolute path (the XDG spec ignores relative ones), else ``~/fallback``."""
    value = os.environ.get(variable, "")
    return Path(value) if value and Path(value).is_absolute() else Path.home() / fallback


def user_models_dir(configured: Path | None = None) -> Path:
    """The folder of the user's models: ``$RTGEN_MODELS``, else ``configured`` (``[model] library``), else
    ``$XDG_DATA_HOME/rtgen/models`` (``~/.local/share/rtgen/models``). It need not exist."""
    env = os.environ.get(MODELS_ENV, "")
    if env:
        return Path(env).expanduser().absolute()
    if configured is not None:
        return configured.expanduser().absolute()
    return xdg_dir("XDG_DATA_HOME", ".local/share") / "rtgen" / "models"


def is_name(spec: str | Path) -> bool:
    """True when ``spec`` is a bare model name (``mine``, ``folk-2``), not a path (``./mine``, ``a/b``, ``~/m``)."""
    text = str(spec)
    return bool(_NAME.fullmatch(text)) and text not in (".", "..")


@dataclass(frozen=True)
class ModelEntry:
    """One model folder of the library.

    Attributes:
        name: the folder name, by which ``--model NAME`` finds it.
        path: the folder.
        origin: ``"shipped"`` or ``"user"``.
        meta: the parsed ``meta.json`` (empty when it cannot be read).
        problem: why this rtgen cannot play it (empty when it can, as far as ``meta.json`` tells).
    """

    name: str
    path: Path
    origin: str
    meta: dict[str, Any] = field(default_factory=dict)
    problem: str = ""

    @property
    def contract_version(self) -> int | None:
        """``meta["contract"]["version"]``, or ``None``."""
        block = self.meta.get("contract")
        version = block.get("version") if isinstance(block, dict) else None
        return version if isinstance(version, int) and not isinstance(version, bool) else None

    @property
    def params(self) -> int:
        """Total parameters of the graphs (``meta["model"]["params"]``), 0 when unknown."""
        block = self.meta.get("model")
        params = block.get("params") if isinstance(block, dict) else None
        return sum(v for v in params.values() if isinstance(v, int)) if isinstance(params, dict) else 0

    @property
    def kind(self) -> str:
        """``"poly"`` or ``"melody"`` (:func:`model_kind`)."""
        return model_kind(self.meta)


def read_entry(path: Path, origin: str, name: str | None = None) -> ModelEntry:
    """The :class:`ModelEntry` of the folder ``path`` (reads only ``meta.json``, loads no graph)."""
    meta: dict[str, Any] = {}
    problem = ""
    try:
        meta = read_meta(path)
    except ModelError as err:
        problem = str(err)
    entry = ModelEntry(name or path.name, path, origin, meta, problem)
    if not problem and model_kind(meta) == MELODY_KIND:
        version = entry.contract_version
        if version not in contract.COMPATIBLE_VERSIONS:
            speaks = ", ".join(f"v{v}" for v in contract.COMPATIBLE_VERSIONS)
            entry = ModelEntry(entry.name, path, origin, meta, f"token contract v{version}; this rtgen speaks {speaks}")
    return entry


def _folders(root: Path) -> list[tuple[str, Path]]:
    """``(name, folder)`` of the model folders in ``root``; a folder may be a symlink, named by the link."""
    if not root.is_dir():
        return []
    found = (p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / META_FILE).is_file())
    return sorted((p.name, p.resolve()) for p in found)


def list_models(user_dir: Path) -> list[ModelEntry]:
    """Every model there is: the shipped ones, then the user's (``user_dir``), each sorted by name.

    A user model named like a shipped one is listed (with a ``problem``) but ``--model NAME`` finds the
    shipped one.
    """
    shipped = [read_entry(path, "shipped", name) for name, path in _folders(SHIPPED_MODELS_DIR)]
    names = {e.name for e in shipped}
    user = []
    for name, path in _folders(user_dir):
        entry = read_entry(path, "user", name)
        if name in names:
            entry = ModelEntry(name, path, "user", entry.meta, "shadowed by the shipped model of that name; rename it")
        user.append(entry)
    return shipped + user


def find_model(name: str, user_dir: Path) -> ModelEntry | None:
    """The model called ``name``: shipped first, then the user's; ``None`` if there is none."""
    for root, origin in ((SHIPPED_MODELS_DIR, "shipped"), (user_dir, "user")):
        path = root / name
        if is_name(name) and (path / META_FILE).is_file():
            return read_entry(path.resolve(), origin, name)
    return None


def describe_models(user_dir: Path) -> str:
    """``default (shipped), mine (user)``: for error messages."""
    entries = [e for e in list_models(user_dir) if not (e.origin == "user" and "shadowed" in e.problem)]
    listed = ", ".join(f"{e.name} ({e.origin})" for e in entries) or "none"
    return f"models: {listed}; user models folder: {user_dir}"


def resolve_model(spec: str | Path, *, base: Path, user_dir: Path, strict: bool = True) -> Path:
    """The model folder that ``spec`` (a ``--model`` value or ``[model] path``) means.

    Args:
        spec: a path (relative to ``base``) or a bare model name.
        base: where a relative path resolves (the current folder, or the config file's).
        user_dir: the user's models folder (:func:`user_models_dir`).
        strict: raise when nothing matches; otherwise return the path ``spec`` names, for the model
            loader (or ``rtgen doctor``) to report.

    Raises:
        ModelError: (``strict``) no such folder and no model of that name; the message lists the models.
    """
    path = Path(spec).expanduser()
    if not path.is_absolute():
        path = base / path
    if path.exists():
        return path.resolve()
    if is_name(spec):
        entry = find_model(str(spec), user_dir)
        if entry is not None:
            return entry.path.resolve()
    if strict:
        name = is_name(spec)
        what = f"no model named {str(spec)!r} (nor a folder {path})" if name else f"model folder {path} does not exist"
        raise ModelError(
            f"{what}; {describe_models(user_dir)}. Train one with rtgen-train all --midi-dir DIR --out NAME"
        )
    return path.resolve()


def output_folder(spec: str, user_dir: Path) -> Path:
    """Where ``rtgen-train ... --out spec`` writes a model: an existing path or any path as given; a bare
    name into the user's models folder (``user_dir/NAME``), so that ``--model NAME`` finds it.

    Raises:
        ModelError: a bare name that a shipped model already has (``--model NAME`` would never find it).
    """
    if Path(spec).exists() or not is_name(spec):
        return Path(spec)
    if (SHIPPED_MODELS_DIR / spec / META_FILE).is_file():
        raise ModelError(f"{spec} is the name of a shipped model; choose another name, or give a path such as ./{spec}")
    return user_dir / spec

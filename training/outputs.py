"""Where ``rtgen-train all`` writes, and when a folder counts as small (shared by both kinds of model)."""

from __future__ import annotations

from pathlib import Path

SMALL_DATA_STEPS = 200_000
"""A prepared train split under this many steps (about 300 folk tunes, 50 classical pieces) is a small folder."""


def output_folders(out: str, work: Path | None) -> tuple[Path, Path]:
    """``(model folder, work folder)`` for ``all --out OUT [--work WORK]``.

    OUT is a path, or a bare name that goes into the user's models folder (see
    :func:`rtgen.library.output_folder`); the work folder defaults to ``OUT.work`` beside a path and to
    ``.work/NAME`` in the models folder for a name (hidden, so the library lists only models).
    """
    from rtgen.config import default_config_path, load_config
    from rtgen.library import is_name, output_folder

    path = Path(out)
    if path.exists() or not is_name(out):  # the string, not the Path: "./mine" is a path
        return path, work or path.with_name(path.name + ".work")
    user_dir = load_config(default_config_path()).models_dir
    return output_folder(out, user_dir), work or user_dir / ".work" / out

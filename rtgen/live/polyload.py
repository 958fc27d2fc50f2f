"""Which models the daemon loads when a mode plays a polyphonic one (duet).

``--model`` (``[model] path``) may name a polyphonic model folder (``meta.json`` kind ``poly``, e.g. one trained
on the player's own folder with ``rtgen-train all --kind poly``): the modes that play one use it, and the engine
(every other mode) plays the default melody model. Otherwise those modes play the shipped :data:`POLY_DEFAULT`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rtgen import library
from rtgen.config import Config, ModelConfig
from rtgen.errors import ModelError

if TYPE_CHECKING:
    from rtgen.generation.poly import PolyModel

POLY_DEFAULT = "chorale"
"""The shipped polyphonic model the poly modes play unless ``--model`` names another."""


def model_folders(cfg: Config) -> tuple[Path, Path | None]:
    """``(the engine's model folder, the polyphonic model folder --model names, or None)``."""
    from rtgen.generation.poly import POLY_KIND, model_kind

    path = cfg.model_path
    try:
        meta = library.read_meta(path)
    except ModelError:
        return path, None  # the model loader says what is wrong with it
    if model_kind(meta) != POLY_KIND:
        return path, None
    return cfg.model_folder(ModelConfig().path), path


def load_poly(cfg: Config, folder: Path | None, mode: str) -> PolyModel:
    """The polyphonic model ``mode`` plays: ``folder`` (from :func:`model_folders`), else :data:`POLY_DEFAULT`.

    Raises:
        ModelError: no such model, or not a polyphonic one (the message names the one that can serve).
    """
    from rtgen.generation.poly import PolyModel

    path = folder if folder is not None else cfg.model_folder(POLY_DEFAULT, strict=True)
    from rtgen.arrange.chorale import DRAWS

    try:
        model = PolyModel.load(path)
    except ModelError as err:
        raise ModelError(f"mode {mode} plays a polyphonic model such as the shipped {POLY_DEFAULT}: {err}") from err
    model.warm_up((1, DRAWS))  # duet's stepper and the chorale voicer's are then made in ~1 ms on a mode switch
    return model

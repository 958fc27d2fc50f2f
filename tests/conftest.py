"""Shared test fixtures.

Components the tests need (JACK, FluidSynth, a soundfont, the reference data)
are installed by ``scripts/setup.sh``. Locally a missing one skips its tests
with the reason; under ``CI=true`` it fails the run instead, so CI can never go
green by skipping.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("RTGEN_SHARED_DATA", REPO.parent / "shared" / "data"))
NOTTINGHAM_MIDI = SHARED_DATA / "nottingham" / "MIDI"
SPLIT_MAP = SHARED_DATA / "nottingham" / "boulanger_split_map.csv"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, what: str) -> None:
    """Skip (locally) or fail (under CI=true) when a needed component is missing."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"missing component under CI: {what}")
    pytest.skip(f"missing component: {what}")


@pytest.fixture(scope="session")
def nottingham_dir() -> Path:
    """The Nottingham MIDI folder from ../shared/data (RTGEN_SHARED_DATA overrides)."""
    require(NOTTINGHAM_MIDI.is_dir(), f"Nottingham MIDI at {NOTTINGHAM_MIDI} (set RTGEN_SHARED_DATA)")
    return NOTTINGHAM_MIDI


SHIPPED_MODEL = REPO / "exported_models" / "default"


@pytest.fixture(scope="session")
def shipped_model_dir() -> Path:
    """The shipped default model (exported_models/default)."""
    require((SHIPPED_MODEL / "meta.json").is_file(), f"the shipped model at {SHIPPED_MODEL}")
    return SHIPPED_MODEL


@pytest.fixture(scope="session")
def tiny_model_dir(nottingham_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model trained by the real pipeline (`rtgen-train all --limit 20 --epochs 1`), made once per session."""
    from training.cli import main as train_main

    out = tmp_path_factory.mktemp("tiny") / "model"
    code = train_main(
        ["all", "--midi-dir", str(nottingham_dir), "--out", str(out), "--limit", "20", "--epochs", "1", "--tiny"]
    )
    assert code == 0
    return out

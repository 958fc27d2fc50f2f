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

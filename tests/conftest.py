"""Shared test fixtures.

Components the tests need (JACK, FluidSynth, a soundfont, the reference data)
are installed by ``scripts/setup.sh``. Locally a missing one skips its tests
with the reason; under ``CI=true`` it fails the run instead, so CI can never go
green by skipping.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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


# --- JACK (the suite's own server; see rtgen/bench/harness.py) --------------------------------------------------


@pytest.fixture(scope="session")
def jack_server() -> Iterator[str]:
    """A private JACK server (dummy backend, 48 kHz, 256 frames) for the whole session; yields its name.

    Sets ``JACK_DEFAULT_SERVER`` and ``JACK_NO_START_SERVER=1`` in ``os.environ`` so that
    rtmidi clients in this process and subprocesses (use ``rtgen.bench.harness.daemon_env``) find it.
    The server is stopped at the end of the session, also when tests fail.
    """
    yield from serve_jack()


def serve_jack(name: str | None = None, *, sync: bool = True, realtime: bool = False) -> Iterator[str]:
    """Start a private JACK server, point this process's clients at it, yield its name, stop it (a fixture body).

    ``realtime``: a SCHED_FIFO server (as the bench's), for a daemon that runs SCHED_FIFO too (FACTS.md)."""
    from rtgen.bench import harness

    require(harness.jackd_path() is not None, "jackd (apt-get install jackd2)")
    require(harness.jack_tools_available(), "jack_lsp/jack_connect (apt-get install jackd2)")
    saved = {k: os.environ.get(k) for k in ("JACK_DEFAULT_SERVER", "JACK_NO_START_SERVER")}
    server = harness.JackServer(name, sync=sync, realtime=realtime).start()
    os.environ["JACK_DEFAULT_SERVER"] = server.name
    os.environ["JACK_NO_START_SERVER"] = "1"
    try:
        yield server.name
    finally:
        server.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(autouse=True, scope="session")
def private_user_config(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """An empty ``XDG_CONFIG_HOME`` for the whole session (tests that need one set their own): ``rtgen run`` applies
    the user config's ``[cc]`` table (MIDI learn's) over any ``--config``, and the tester's must not reach a test."""
    saved = os.environ.get("XDG_CONFIG_HOME")
    os.environ["XDG_CONFIG_HOME"] = str(tmp_path_factory.mktemp("xdg-config"))
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("XDG_CONFIG_HOME", None)
        else:
            os.environ["XDG_CONFIG_HOME"] = saved


@pytest.fixture
def jack_recorder(jack_server: str) -> Iterator[Callable[[str], Any]]:
    """A factory: ``jack_recorder("rtgen:out")`` returns an open MidiRecorder, closed after the test."""
    from rtgen.bench.harness import MidiRecorder

    opened: list[MidiRecorder] = []

    def make(source: str, timeout: float = 10.0) -> MidiRecorder:
        rec = MidiRecorder(source, timeout=timeout).__enter__()
        opened.append(rec)
        return rec

    try:
        yield make
    finally:
        for rec in opened:
            rec.close()


class RecordingController:
    """Records what the OSC handlers asked for; answers status (the daemon itself is tested end to end)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Any:
        def record(*args: Any, **kwargs: Any) -> None:
            self.calls.append((name, args + tuple(sorted(kwargs.items()))))

        return record

    def status(self) -> dict[str, Any]:
        return {"playing": True, "tempo": 123.0, "player_sounding": []}

    def record_start(self, name: str) -> Path:
        self.calls.append(("record_start", (name,)))
        return Path("/recordings") / name


def run_in_namespace(setup: str, *argv: str | Path, timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in a fresh network namespace (``unshare --net``) after the shell commands ``setup`` (``ip ...``),
    so that nothing it binds or sends reaches this machine's network; skips when namespaces cannot be made here."""
    works = shutil.which("unshare") is not None and shutil.which("ip") is not None
    if works:
        probe = ["unshare", "--net", "sh", "-c", setup]
        works = subprocess.run(probe, capture_output=True, timeout=10, check=False).returncode == 0
    require(works, "unshare --net with ip (util-linux, iproute2) and the right to use them")
    shell = f'{setup} && exec "$@"'
    return subprocess.run(
        ["unshare", "--net", "sh", "-c", shell, "sh", *map(str, argv)],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip

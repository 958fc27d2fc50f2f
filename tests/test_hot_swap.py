"""Hot swaps while playing: models x100 (valid and corrupt mixed) and soundfonts x20, through the daemon's own
swap path (loader thread, command to the real-time thread, reaper) into the real loop.

Real components: small real ONNX models (tests/model_factory.py), the real FluidSynth with the ``file``
audio driver (a real audio thread, into /dev/null), the real live loop on the internal clock. Every message
is booked by a note ledger (swapbench.NoteLedger): each note-on needs its own note-off, CC 123 does not
count. Timing figures are printed, never asserted (the bench owns them).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import require
from model_factory import make_random_model

from rtgen.bench.swaps import NoteLedger, measure_model_swaps, measure_soundfont_swaps, swap_rig
from rtgen.errors import SoundfontError
from rtgen.live import loaders
from rtgen.live.loaders import BackgroundLoader

TIMGM = Path("/usr/share/sounds/sf2/TimGM6mb.sf2")
FLUIDR3 = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")


@pytest.fixture(scope="module")
def fonts() -> list[Path]:
    for font in (TIMGM, FLUIDR3):
        require(font.is_file(), f"soundfont {font} (scripts/setup.sh installs timgm6mb-soundfont, fluid-soundfont-gm)")
    return [TIMGM, FLUIDR3]


def _rehash(folder: Path) -> None:
    meta = json.loads((folder / "meta.json").read_text())
    for name in meta["files"]:
        meta["files"][name]["sha256"] = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    (folder / "meta.json").write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def model_set(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three valid small models and four broken folders made from one of them."""
    root = tmp_path_factory.mktemp("swap_models")
    valid = {name: make_random_model(root / name, hidden=16, seed=i, name=name) for i, name in enumerate("abc")}
    broken: dict[str, Path] = {}
    for kind in ("truncated", "bad_hash", "wrong_contract", "missing_graph"):
        folder = root / kind
        shutil.copytree(valid["a"], folder)
        broken[kind] = folder
    note = broken["truncated"] / "note.onnx"
    note.write_bytes(note.read_bytes()[: note.stat().st_size // 3])
    _rehash(broken["truncated"])  # the hash matches: onnxruntime itself must refuse the graph
    chord = broken["bad_hash"] / "chord.onnx"
    data = bytearray(chord.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chord.write_bytes(bytes(data))
    meta_path = broken["wrong_contract"] / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["contract"]["version"] = 99
    meta_path.write_text(json.dumps(meta))
    (broken["missing_graph"] / "harmony.onnx").unlink()
    return {**valid, **broken}


def _assert_every_step_played(result: dict[str, Any]) -> None:
    assert result["steps"] == result["expected_steps"] and result["skipped_steps"] == 0, result
    assert result["engine_errors"] == 0, result
    assert result["note_ons"] > 0
    assert result["stuck_notes"] == 0 and result["note_offs"] == result["note_ons"], result
    assert result["stray_note_offs"] == 0


def test_100_model_swaps_while_playing_valid_and_corrupt(model_set: dict[str, Path]) -> None:
    order = ["a", "truncated", "b", "bad_hash", "c", "wrong_contract", "a", "missing_graph", "b"]
    dirs = [model_set[k] for k in order]
    result = measure_model_swaps(dirs, seconds=12.0, bpm=600.0, swaps=100, realtime_priority=0)
    print(
        f"\n100 model swaps at 600 BPM: schedule error {result['schedule_error_us']} us, late steps "
        f"{result['late_steps']}, load+bind max {result['load_ms_max']} ms, switched {len(result['switched'])}"
    )
    _assert_every_step_played(result)
    requested = [Path(p) for p in result["requested_dirs"]]
    assert len(requested) == 100
    corrupt = {model_set[k].resolve() for k in ("truncated", "bad_hash", "wrong_contract", "missing_graph")}
    want_refused = [p for p in requested if p in corrupt]
    assert len(result["refused"]) == len(want_refused) > 0
    for path, reply in zip(want_refused, result["refused"], strict=True):  # in order, each with its reason
        assert str(path) in reply and "keeping" in reply
    reasons = " ".join(result["refused"])
    assert "onnxruntime cannot load" in reasons and "does not match its sha256" in reasons
    assert "token contract v99" in reasons and "missing harmony.onnx" in reasons
    assert not result["superseded"]  # each request waited for the one before
    # the player switched only to valid folders, in request order; at the end it plays the last valid one
    valid = [p for p in requested if p not in corrupt]
    switched = [Path(p) for p in result["switched"]]
    assert switched and not set(switched) & corrupt
    it = iter(valid)
    assert all(any(s == v for v in it) for s in switched)  # a subsequence of the valid requests
    assert Path(result["final_model"]) == valid[-1] == switched[-1]


def test_overlapping_model_requests_the_last_wins(model_set: dict[str, Path]) -> None:
    dirs = [model_set[k] for k in ("a", "b", "c", "truncated", "a", "b", "c")]
    result = measure_model_swaps(dirs, seconds=4.0, bpm=600.0, swaps=12, wait=False, realtime_priority=0)
    _assert_every_step_played(result)
    assert result["superseded"], result  # back-to-back requests replaced waiting ones
    assert len(result["superseded"]) + len(result["refused"]) + len(result["switched"]) <= 12
    last = Path(result["requested_dirs"][-1])
    assert last == dirs[12 % len(dirs)].resolve()
    assert Path(result["final_model"]) == last == Path(result["switched"][-1])


def test_20_soundfont_swaps_while_playing(fonts: list[Path]) -> None:
    result = measure_soundfont_swaps(fonts, seconds=30.0, bpm=300.0, swaps=20, realtime_priority=0)
    print(
        f"\n20 soundfont swaps (TimGM6mb <-> FluidR3) at 300 BPM: schedule error {result['schedule_error_us']} us, "
        f"late steps {result['late_steps']}, loads {result['load_ms']} ms"
    )
    _assert_every_step_played(result)
    assert result["errors"] == [] and result["command_errors"] == 0
    assert result["swaps_done"] == 20
    assert result["fonts_freed"] == 20  # every replaced font was freed (by the reaper, before close returned)


def _play_in_background(player: Any, seconds: float) -> threading.Thread:
    t = threading.Thread(target=player.run, args=(seconds,), name="test-player", daemon=True)
    t.start()
    return t


@pytest.fixture
def synth_rig(fonts: list[Path], shipped_model_dir: Path) -> Iterator[tuple[Any, Any, Any, NoteLedger]]:
    from rtgen.io.sinks import SynthSink
    from rtgen.io.synth import Synth

    synth = Synth(fonts[0], reverb=False)
    ledger = NoteLedger()
    daemon, player = swap_rig(shipped_model_dir, 300.0, [SynthSink(synth, close_synth=False), ledger])
    daemon.synth = synth
    try:
        yield daemon, player, synth, ledger
    finally:
        player.request_stop()
        daemon.close()
        synth.close()


def test_overlapping_soundfont_requests_the_last_wins(synth_rig: tuple[Any, Any, Any, NoteLedger]) -> None:
    daemon, player, synth, ledger = synth_rig
    t = _play_in_background(player, 30.0)
    replies: list[str] = []
    order = [FLUIDR3, TIMGM, FLUIDR3, TIMGM, FLUIDR3, TIMGM]
    for font in order:
        daemon.swap_soundfont(str(font), replies.append)  # back to back: all but the running one wait
    assert daemon.loader.wait_idle(60)
    deadline = time.monotonic() + 10
    while synth.soundfont != order[-1] and time.monotonic() < deadline:
        time.sleep(0.01)
    player.request_stop()
    t.join(30)
    assert not t.is_alive()
    assert synth.soundfont == order[-1]
    assert replies and all("a newer /rtgen/soundfont request replaced it" in r for r in replies)
    assert 1 <= len(replies) <= len(order) - 1  # at least the waiting ones were replaced; the last never
    assert player.command_errors == 0
    assert not ledger.stuck()


def test_close_during_a_soundfont_load(synth_rig: tuple[Any, Any, Any, NoteLedger]) -> None:
    daemon, _player, synth, _ledger = synth_rig  # the player is not running: nothing applies the font
    daemon.swap_soundfont(str(FLUIDR3))  # 20-500 ms to load 148 MB
    deadline = time.monotonic() + 5
    while daemon.loader.running is None and time.monotonic() < deadline:
        time.sleep(0.0005)
    running = daemon.loader.running
    daemon.close()  # waits for the running load, then closes the sinks
    assert running == "soundfont"
    loader_thread = daemon.loader.thread
    assert loader_thread is not None and not loader_thread.is_alive()
    assert not daemon.loader.busy
    synth.close()  # frees the font that was loaded and never used
    with pytest.raises(SoundfontError, match="closed"):
        synth.load_soundfont(TIMGM)


def test_synth_close_waits_for_its_load(fonts: list[Path]) -> None:
    from rtgen.io.synth import Synth

    synth = Synth(fonts[0])
    outcome: list[object] = []

    def load() -> None:
        try:
            outcome.append(synth.load_soundfont(FLUIDR3))
        except SoundfontError as err:
            outcome.append(err)

    t = threading.Thread(target=load)
    t.start()
    time.sleep(0.01)
    synth.close()  # either waits for the load (the font loaded is freed with the synth) or refuses it
    t.join(30)
    assert not t.is_alive() and len(outcome) == 1
    assert isinstance(outcome[0], int) or "closed" in str(outcome[0])


def test_close_during_a_model_load(model_set: dict[str, Path]) -> None:
    ledger = NoteLedger()
    daemon, player = swap_rig(model_set["a"], 600.0, [ledger])
    t = _play_in_background(player, 30.0)
    for name in ("b", "c"):
        daemon.swap_model(str(model_set[name]))
    player.request_stop()
    t.join(30)
    daemon.close()
    loader_thread = daemon.loader.thread
    assert loader_thread is not None and not loader_thread.is_alive()
    assert not ledger.stuck()
    with pytest.raises(RuntimeError, match="closed"):
        daemon.loader.submit("model", lambda: None)


def test_loader_runs_one_at_a_time_and_replaces_waiting_requests() -> None:
    loader = BackgroundLoader("test-loader")
    gate = threading.Event()
    ran: list[str] = []
    dropped: list[str] = []
    running = 0
    most = 0

    def job(name: str) -> Any:
        def run() -> None:
            nonlocal running, most
            running += 1
            most = max(most, running)
            gate.wait(10)
            ran.append(name)
            running -= 1

        return run

    loader.submit("model", job("m1"), lambda: dropped.append("m1"))
    deadline = time.monotonic() + 5
    while running == 0 and time.monotonic() < deadline:  # m1 runs (and holds the loader) before the rest
        time.sleep(0.001)
    for name in ("m2", "m3", "m4"):
        loader.submit("model", job(name), lambda n=name: dropped.append(n))  # type: ignore[misc]
    loader.submit("soundfont", job("s1"))
    gate.set()
    assert loader.wait_idle(10)
    assert ran == ["m1", "m4", "s1"] and dropped == ["m2", "m3"] and most == 1
    assert loader.close() and loader.thread is not None and not loader.thread.is_alive()


def test_reaper_frees_on_its_own_thread_once_the_last_holder_lets_go() -> None:
    import weakref

    class Thing:
        pass

    where: dict[str, str] = {}
    a, b = Thing(), Thing()
    weakref.finalize(a, lambda: where.setdefault("a", threading.current_thread().name))
    weakref.finalize(b, lambda: where.setdefault("b", threading.current_thread().name))
    holder = [a]  # someone still uses a
    loaders.retire(a, b)
    del a, b
    deadline = time.monotonic() + 5
    while "b" not in where and time.monotonic() < deadline:
        time.sleep(0.005)
    assert where == {"b": "rtgen-reaper"}  # a is kept while the holder has it
    holder.clear()
    while "a" not in where and time.monotonic() < deadline:
        time.sleep(0.005)
    assert where == {"a": "rtgen-reaper", "b": "rtgen-reaper"}

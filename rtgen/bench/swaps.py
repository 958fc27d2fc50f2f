"""Hot swaps while playing: the schedule error and the steps of the real loop while models or soundfonts change.

Both measurements run the real :class:`~rtgen.live.loop.LiveLoop` (internal clock, real engine and voicer) and
swap through the daemon's own :meth:`~rtgen.live.daemon.Daemon.swap_model` /
:meth:`~rtgen.live.daemon.Daemon.swap_soundfont`
(the loader thread, the command to the real-time thread, the reaper), with every message counted by a
:class:`NoteLedger` so a dropped step or a note left on shows. :func:`measure_soundfont_swaps` plays
through the real FluidSynth synth with its ``file`` audio driver writing to ``/dev/null`` (a real audio
thread rendering in real time, no sound card needed).
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rtgen.bench.measure import percentiles_us
from rtgen.config import Config, PartsConfig
from rtgen.io.scheduler import Scheduler
from rtgen.io.sinks import BaseSink, Sink
from rtgen.midi.messages import CHANNEL_MASK, KIND_MASK, NOTE_OFF, NOTE_ON
from rtgen.timing.clock import LatenessStats, StepClock, realtime_loop


class NoteLedger(BaseSink):
    """A sink that books every note-on against its own note-off (CC 123 all-notes-off does not count).

    Attributes:
        name: ``"ledger"``.
        note_ons: note-ons received.
        note_offs: real note-offs received (note-off, or note-on with velocity 0) that matched a sounding note.
        stray_offs: note-offs for a key that was not sounding.
    """

    def __init__(self, name: str = "ledger") -> None:
        super().__init__(name)
        self.note_ons = 0
        self.note_offs = 0
        self.stray_offs = 0
        self._lock = threading.Lock()  # the loop sends; a test may read while it plays
        self._sounding: Counter[tuple[int, int]] = Counter()

    def _send(self, message: Sequence[int], time_ns: int) -> None:
        """Book one message."""
        if len(message) < 3:
            return
        kind, key = message[0] & KIND_MASK, (message[0] & CHANNEL_MASK, message[1])
        with self._lock:
            if kind == NOTE_ON and message[2] > 0:
                self.note_ons += 1
                self._sounding[key] += 1
            elif kind in (NOTE_OFF, NOTE_ON):
                if self._sounding[key] > 0:
                    self._sounding[key] -= 1
                    self.note_offs += 1
                else:
                    self.stray_offs += 1
                if self._sounding[key] == 0:
                    del self._sounding[key]

    def stuck(self) -> list[tuple[int, int]]:
        """``(channel, pitch)`` of every note-on still waiting for its note-off (one entry per note)."""
        with self._lock:
            return sorted(self._sounding.elements())

    def _panic(self) -> None:
        """Nothing to do: a panic's CC 123 must not hide a missing note-off."""


def drop_page_cache(path: Path) -> bool:
    """Ask the kernel to forget the cached pages of ``path`` (``posix_fadvise(DONTNEED)``): a cold load.

    Returns:
        False where it is not available.
    """
    if not hasattr(os, "posix_fadvise"):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return True


def swap_rig(model_dir: Path, bpm: float, sinks: list[Sink], *, seed: int = 0) -> tuple[Any, Any]:
    """A daemon around a real live loop (internal clock, real engine) playing into ``sinks``, for swaps.

    The daemon is not opened (no ports, no OSC): its :meth:`~rtgen.live.daemon.Daemon.swap_model` and
    :meth:`~rtgen.live.daemon.Daemon.swap_soundfont` (set ``daemon.synth`` first) drive the loop, and
    :meth:`~rtgen.live.daemon.Daemon.close` ends the loader and closes the sinks.

    Returns:
        ``(daemon, loop)``; run the loop with ``loop.run(seconds)`` on the thread that plays.
    """
    from rtgen.arrange.voicing import Voicer
    from rtgen.generation.engine import Engine, Params
    from rtgen.generation.model import Model
    from rtgen.live.daemon import Daemon
    from rtgen.live.loop import LiveLoop

    config = Config()
    params = Params()
    sched = Scheduler(sinks, keep_history=True)
    clock = StepClock(bpm)
    clock.stats = LatenessStats(late_threshold_ns=clock.stats.late_threshold_ns, keep_history=True)
    model = Model.load(model_dir, threads=1)
    loop = LiveLoop(Engine(model, params, seed=seed), Voicer(PartsConfig(), seed=seed), sched, clock, params,
                    PartsConfig(), config=config)  # fmt: skip
    daemon = Daemon(config)
    daemon.loop = loop
    daemon.model = model
    daemon.outputs.sinks = list(sinks)
    return daemon, loop


def _play(player: Any, seconds: float, driver: Callable[[], None], realtime_priority: int) -> dict[str, Any]:
    """Run the loop for ``seconds`` (ending mid-step) on this thread while ``driver`` runs on another.

    The loop asks for SCHED_FIFO ``realtime_priority`` as the daemon does (0: normal scheduling).
    """
    step_s = player.clock.step_ns / 1e9
    steps = max(1, math.floor(seconds / step_s))
    duration = (steps + 0.5) * step_s  # ends half a step after the last deadline: the last step is not a race
    errors: list[BaseException] = []

    def run_driver() -> None:
        try:
            driver()
        except BaseException as err:  # reported by the caller
            errors.append(err)

    t = threading.Thread(target=run_driver, name="rtgen-swapbench", daemon=True)
    t.start()
    t0 = time.perf_counter()
    with realtime_loop(realtime_priority) as realtime:  # as the daemon runs its loop
        player.run(duration)
    wall = time.perf_counter() - t0
    t.join(timeout=60)
    if errors:
        raise errors[0]
    stats = player.clock.stats
    sched = player.scheduler
    return {
        "realtime": realtime,
        "bpm": player.clock.tempo,
        "seconds": round(wall, 2),
        "steps": stats.steps,
        "expected_steps": steps + 1,  # steps 0..steps
        "skipped_steps": player.skipped_steps,
        "engine_errors": player.engine_errors,
        "command_errors": player.command_errors,
        "late_steps": stats.late_steps,
        "late_threshold_us": stats.late_threshold_ns / 1000,
        "step_wakeup_late_us": percentiles_us(stats.history),
        "schedule_error_us": percentiles_us(sched.errors.history),
        "events": sched.sent,
    }


def _ledger_summary(ledger: NoteLedger) -> dict[str, Any]:
    return {"note_ons": ledger.note_ons, "note_offs": ledger.note_offs, "stuck_notes": len(ledger.stuck()),
            "stray_note_offs": ledger.stray_offs}  # fmt: skip


def measure_soundfont_swaps(
    soundfont_paths: Sequence[Path],
    seconds: float = 20.0,
    bpm: float = 300.0,
    swaps: int = 10,
    *,
    model_dir: Path | None = None,
    audio_driver: str | None = "file",
    cold: bool = False,
    realtime_priority: int = 10,
) -> dict[str, Any]:
    """Play ``seconds`` at ``bpm`` through the real synth while it swaps soundfonts ``swaps`` times.

    The swaps go round ``soundfont_paths`` (starting from the second; the first is loaded at start),
    evenly spread over the first 70 % after the first second (which plays without a swap), each one
    waited for before the next.

    Args:
        soundfont_paths: two or more ``.sf2`` files (TimGM6mb and FluidR3 on Debian).
        seconds: how long to play.
        bpm: tempo (sixteenth steps).
        swaps: how many swaps.
        model_dir: the model (default: the configured/shipped one).
        audio_driver: FluidSynth audio driver (``file`` writes to /dev/null in real time); None: no driver.
        cold: drop the font file's page cache before each load (``posix_fadvise``).
        realtime_priority: SCHED_FIFO priority of the loop (as ``[daemon] realtime_priority``; 0: none).

    Returns:
        ``schedule_error_us`` (p50/p99/max/count: send time minus deadline of every event), steps,
        ``expected_steps``, skipped and late steps, ``load_ms`` (each load on the loader thread),
        ``switch_ms`` (request to the synth playing the new font), ``swaps_done``, the notes booked
        (``stuck_notes``), and the fonts.
    """
    from rtgen.io.sinks import SynthSink
    from rtgen.io.synth import Synth

    fonts = [Path(p) for p in soundfont_paths]
    if len(fonts) < 2:
        raise ValueError(f"two soundfonts needed, got {[str(f) for f in fonts]}")
    synth = Synth(fonts[0])
    try:
        if audio_driver:
            synth.start_audio(audio_driver, settings={"audio.file.name": os.devnull})
        ledger = NoteLedger()
        daemon, player = swap_rig(model_dir or Config().model_path, bpm, [SynthSink(synth, close_synth=False), ledger])
        daemon.synth = synth
        load_ms: list[float] = []
        switch_ms: list[float] = []
        replies: list[str] = []
        gap = max(0.05, 0.7 * (seconds - 1.0) / max(1, swaps))  # the rest: room for a slow load or two

        def driver() -> None:
            time.sleep(1.0)
            for i in range(swaps):
                font = fonts[(i + 1) % len(fonts)]
                if cold:
                    drop_page_cache(font)
                t0 = time.perf_counter()
                daemon.swap_soundfont(str(font), replies.append)
                daemon.loader.wait_idle(60)
                t1 = time.perf_counter()
                while synth.soundfont != font and time.perf_counter() - t1 < 5 and not replies:
                    time.sleep(0.0005)
                load_ms.append(round((t1 - t0) * 1000, 1))
                switch_ms.append(round((time.perf_counter() - t0) * 1000, 1))
                time.sleep(max(0.0, gap - (time.perf_counter() - t0)))

        result = _play(player, seconds, driver, realtime_priority)
        daemon.close()
    finally:
        synth.close()
    result.update(_ledger_summary(ledger))
    result.update(
        swaps=swaps,
        swaps_done=sum(1 for ms in switch_ms if ms < 5000) - len(replies),
        errors=replies,
        load_ms=load_ms,
        load_ms_max=max(load_ms, default=0.0),
        switch_ms=switch_ms,
        fonts_freed=synth.fonts_freed,
        soundfonts=[str(f) for f in fonts],
        audio_driver=audio_driver,
        cold_cache=cold,
    )
    return result


def measure_model_swaps(
    model_dirs: Sequence[Path],
    seconds: float = 20.0,
    bpm: float = 300.0,
    swaps: int = 100,
    *,
    wait: bool = True,
    realtime_priority: int = 10,
) -> dict[str, Any]:
    """Play ``seconds`` at ``bpm`` into a note ledger while swapping models ``swaps`` times.

    The swaps go round ``model_dirs`` (the first is loaded at start); any of them may be broken (a
    truncated graph, a wrong hash, another contract), and those must be refused while the music goes on.

    Args:
        model_dirs: model folders, valid and corrupt.
        seconds: how long to play.
        bpm: tempo (sixteenth steps).
        swaps: how many swap requests.
        wait: wait for each request to be loaded (or refused) before the next; False sends them
            back to back, so waiting ones are replaced by newer ones.
        realtime_priority: SCHED_FIFO priority of the loop (as ``[daemon] realtime_priority``; 0: none).

    Returns:
        ``schedule_error_us``, steps, ``expected_steps``, skipped and late steps, ``requested``,
        ``switched`` (models the player switched to, in order, by folder), ``refused`` (error replies),
        ``superseded``, ``load_ms``, the notes booked, and ``final_model`` (the folder playing at the end).
    """
    dirs = [Path(p).resolve() for p in model_dirs]
    ledger = NoteLedger()
    daemon, player = swap_rig(dirs[0], bpm, [ledger])
    switched: list[str] = []
    player.on_model_swapped = lambda model: switched.append(str(model.path))
    replies: list[str] = []
    requested: list[str] = []
    load_ms: list[float] = []
    gap = max(0.0, 0.6 * seconds / max(1, swaps))  # the last 40 % leaves time for the last switch

    def driver() -> None:
        time.sleep(0.5)
        for i in range(swaps):
            target = dirs[(i + 1) % len(dirs)]
            requested.append(str(target))
            t0 = time.perf_counter()
            daemon.swap_model(str(target), replies.append)
            if wait:
                daemon.loader.wait_idle(60)
                load_ms.append(round((time.perf_counter() - t0) * 1000, 1))
                time.sleep(max(0.0, gap - (time.perf_counter() - t0)))
        daemon.loader.wait_idle(60)

    try:
        result = _play(player, seconds, driver, realtime_priority)
        final = str(player.engine.model.path)
    finally:
        daemon.close()
    result.update(_ledger_summary(ledger))
    result.update(
        requested=len(requested),
        requested_dirs=requested,
        switched=switched,
        refused=[r for r in replies if "cannot load" in r],
        superseded=[r for r in replies if "replaced it" in r],
        load_ms=load_ms,
        load_ms_max=max(load_ms, default=0.0),
        final_model=final,
    )
    return result


def bench_soundfont_swaps(model_dir: Path, soundfonts: list[Path], seconds: float = 20.0) -> dict[str, Any]:
    """Schedule error while the internal synth loads another soundfont mid-play (see :mod:`rtgen.bench.swaps`)."""
    fonts = soundfonts or system_soundfonts()
    if len(fonts) < 2:
        return {
            "soundfont_swap_schedule_error_us": None,
            "soundfont_swap_skipped": f"two soundfonts needed, found {[str(f) for f in fonts]}",
        }
    swaps = measure_soundfont_swaps(
        fonts[:2], seconds=seconds, bpm=300.0, swaps=max(2, int(seconds)), model_dir=model_dir
    )
    # the same rig without a swap: what the synth's own note-ons cost (FluidR3's 20-130 us each, in a row)
    still = measure_soundfont_swaps(fonts[1::-1], seconds=seconds / 2, bpm=300.0, swaps=0, model_dir=model_dir)
    return {
        "soundfont_swap_schedule_error_us": swaps.get("schedule_error_us"),
        "soundfont_swap": swaps,
        "soundfont_still_schedule_error_us": still.get("schedule_error_us"),
        "soundfont_still": still,
    }


def system_soundfonts() -> list[Path]:
    """Distinct ``.sf2`` files of the usual system folder, the smallest first (Debian: TimGM6mb, FluidR3)."""
    folder = Path("/usr/share/sounds/sf2")
    seen: dict[Path, Path] = {}
    with contextlib.suppress(OSError):
        for p in sorted(folder.glob("*.sf2")):
            seen.setdefault(p.resolve(), p)
    return sorted(seen.values(), key=lambda p: p.stat().st_size)

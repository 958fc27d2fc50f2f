"""The real-time daemon: clock + engine + voicer + scheduler + sinks, steered over OSC.

One real-time thread (the main thread, so signals reach it directly) runs
:meth:`Player.run`: it waits for the next due event or step deadline (sleep, then
spin), sends what is due to every sink, and right after step ``t``'s on-grid events
computes step ``t+1`` (engine step + voicing) and queues its events at their exact
times. Other threads never touch the engine, the voicer or the sinks: OSC handlers
swap the immutable :class:`~rtgen.engine.Params` (a plain attribute assignment) or
put a command on a :class:`queue.SimpleQueue` that the real-time thread drains
without blocking.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import queue
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rtgen.clock import FakeTime, RealTime, StepClock, request_realtime
from rtgen.config import MODES, PART_NAMES, Config, PartsConfig
from rtgen.contract import STEPS_PER_BEAT
from rtgen.errors import AudioError, PortError, RtgenError, SoundfontError
from rtgen.scheduler import Scheduler, SinkLike
from rtgen.sinks import CONTROL_CHANGE, PROGRAM_CHANGE

if TYPE_CHECKING:
    from rtgen.engine import Engine, Params, Step
    from rtgen.model import Model
    from rtgen.osc import Feedback, OscServer
    from rtgen.voicing import Voicer

log = logging.getLogger(__name__)

START_LEAD_NS = 100_000_000  # the first step starts this long after start-up: room for the first inference
MAX_WAIT_NS = 250_000_000  # wake at least this often, even with nothing due


class NullSink:
    """A sink that drops everything (benchmarks)."""

    name = "null"

    def send(self, message: Sequence[int], time_ns: int) -> None:
        """Drop ``message``."""

    def panic(self) -> None:
        """Nothing to silence."""

    def close(self) -> None:
        """Nothing to close."""


Command = tuple[str, tuple[Any, ...]]


class Player:
    """The real-time loop. Everything here runs on one thread; others only call the thread-safe methods.

    Args:
        engine: the generation engine (owned by this loop from now on).
        voicer: turns steps into note events.
        scheduler: timed events, note-off book, sinks.
        clock: step deadlines at the tempo.
        params: the initial generation parameters.
        parts: the initial parts (channels, programs, volumes, pans).
        feedback: OSC feedback (beat, chord, note), or None.
    """

    def __init__(
        self,
        engine: Engine,
        voicer: Voicer,
        scheduler: Scheduler,
        clock: StepClock,
        params: Params,
        parts: PartsConfig,
        *,
        feedback: Feedback | None = None,
    ) -> None:
        self.engine = engine
        self.voicer = voicer
        self.scheduler = scheduler
        self.clock = clock
        self.params = params  # swapped by other threads, read once per step here
        self.parts = parts
        self.feedback = feedback
        self.commands: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self.wake = threading.Event()
        self.stop_requested = threading.Event()
        self.playing = True
        self.mode = "autonomous"
        self.swing = float(getattr(voicer, "swing", 0.0))
        self.steps: dict[int, Step] = {}  # computed steps not yet started (at most two)
        self.next_step = 0  # the step whose deadline comes next
        self.computed = -1  # the last step whose events are queued
        self.current: Step | None = None
        self.bar = 0
        self.beat = 0
        self.chord_name = "N.C."
        self.engine_errors = 0
        self.pending_model: Model | None = None
        self.model_name = getattr(getattr(engine, "model", None), "name", "?")
        self.on_model_swapped: Callable[[Model], None] | None = None
        self._restart = False
        self._last_step: Step | None = None

    # --- thread-safe control (any thread) ------------------------------------------------------
    def command(self, name: str, *args: Any, urgent: bool = False) -> None:
        """Queue a command for the real-time thread (``urgent`` wakes it now instead of at the next step)."""
        self.commands.put((name, args))
        if urgent:
            self.wake.set()

    def request_stop(self) -> None:
        """Ask the loop to finish (signal-safe): it releases every note and returns."""
        self.stop_requested.set()
        self.wake.set()

    def set_params(self, **changes: Any) -> None:
        """Swap in a new immutable Params with ``changes`` (read at the next step)."""
        self.params = dataclasses.replace(self.params, **changes)

    # --- the loop ------------------------------------------------------------------------------
    def run(self, duration_s: float = 0.0, *, start_ns: int | None = None) -> None:
        """Play until :meth:`request_stop` or ``duration_s`` seconds (0 = no limit), then release all notes."""
        clock = self.clock
        source = clock.source
        spin_ns = getattr(source, "spin_ns", 0)
        fake = isinstance(source, FakeTime)
        t0 = clock.start(start_ns if start_ns is not None else source.now_ns() + START_LEAD_NS)
        end_ns = t0 + int(duration_s * 1e9) if duration_s > 0 else None
        sched = self.scheduler
        self._prepare(0)
        # objects made so far live for the whole run: keep the collector from walking them during the loop
        gc.collect()
        gc.freeze()
        try:
            while not self.stop_requested.is_set():
                step_t = clock.deadline(self.next_step)
                target = step_t
                nt = sched.next_time()
                if nt is not None and nt < target:
                    target = nt
                if end_ns is not None and end_ns < target:
                    target = end_ns
                if fake:
                    now = source.wait_until(target)
                else:
                    now = source.now_ns()
                    sleep_ns = min(target - now - spin_ns, MAX_WAIT_NS)
                    if sleep_ns > 0:
                        self.wake.wait(sleep_ns / 1e9)
                        self.wake.clear()
                    now = source.now_ns()
                    if target - now <= spin_ns:
                        while now < target:
                            now = source.now_ns()
                if end_ns is not None and now >= end_ns:
                    break
                if now < target and not self.stop_requested.is_set():
                    self._drain()  # woken early by a command
                    continue
                sched.send_due(now)
                if now >= step_t:
                    clock.stats.add(now - step_t)
                    self._tick(self.next_step)
                    self._drain()
                    self.next_step += 1
                    self._prepare(self.next_step)
        finally:
            self._drain_final()
            sched.stop()
            gc.unfreeze()

    def _tick(self, k: int) -> None:
        """Step ``k`` starts now: feedback (beat, chord)."""
        step = self.steps.pop(k, None)
        if step is None:
            return
        self.current = step
        self.bar = step.bar
        beat_steps = max(1, getattr(step, "beat_steps", STEPS_PER_BEAT))
        self.beat = step.position // beat_steps
        fb = self.feedback
        name = step.chord_name
        if fb is not None and fb.subscribers:
            if step.position % beat_steps == 0:
                fb.beat(step.bar + 1, self.beat + 1)
            if name != self.chord_name:
                fb.chord(name)
        self.chord_name = name

    def _prepare(self, k: int) -> None:
        """Compute step ``k`` (engine + voicer) and queue its events at their exact times."""
        self.computed = k
        if not self.playing:
            return
        clock = self.clock
        params = self.params
        last = self._last_step
        if self.pending_model is not None and (last is None or last.position + 1 >= last.bar_steps):
            self._swap_model_now(clock.deadline(k))  # on a bar line: the last step ended its bar
        if self._restart:
            self._restart = False
            self.engine.reset()
        try:
            step = self.engine.step(params)
            events = self.voicer.voice(step, params)
        except Exception as err:
            self.engine_errors += 1
            if self.engine_errors <= 3:
                log.exception("engine step %d failed (%d so far); skipping it", k, self.engine_errors)
            if self.feedback is not None:
                self.feedback.error(f"engine step failed: {err}")
            return
        self.steps[k] = step
        self._last_step = step
        self.scheduler.add_notes(events, clock.deadline(k), clock.step_ns)

    def _swap_model_now(self, at_ns: int) -> None:
        model = self.pending_model
        self.pending_model = None
        if model is None:
            return
        self.scheduler.add_notes(self.voicer.release_all(), at_ns, self.clock.step_ns)
        self.engine.swap_model(model)
        self.model_name = model.name
        log.info("switched to model %s (%s)", model.name, model.path)
        if self.on_model_swapped is not None:
            self.on_model_swapped(model)

    def _release_voicer(self) -> None:
        # the scheduler's book has already sent the offs; this only resets the voicer's own state
        try:
            self.voicer.release_all()
        except Exception as err:  # pragma: no cover - defensive
            log.warning("voicer release failed: %s", err)

    def _drain(self) -> None:
        while True:
            try:
                name, args = self.commands.get_nowait()
            except queue.Empty:
                return
            try:
                self._apply(name, args)
            except Exception as err:
                log.exception("command %s%r failed", name, args)
                if self.feedback is not None:
                    self.feedback.error(f"{name}: {err}")

    def _drain_final(self) -> None:
        try:
            self._drain()
        except Exception:  # pragma: no cover - shutdown must go on
            log.exception("draining commands at shutdown failed")

    def _apply(self, name: str, args: tuple[Any, ...]) -> None:
        sched = self.scheduler
        if name == "play":
            if not self.playing:
                self.playing = True
                self._restart = True
        elif name == "stop":
            if self.playing:
                self.playing = False
                sched.stop()
                self._release_voicer()
                self.steps.clear()
        elif name == "panic":
            sched.panic()
            self._release_voicer()
        elif name == "tempo":
            self.clock.set_tempo(float(args[0]), self.computed + 1)
            for sink in sched.sinks:
                set_tempo = getattr(sink, "set_tempo", None)
                if set_tempo is not None:
                    set_tempo(float(args[0]), self.clock.deadline(self.computed + 1))
        elif name == "instrument":
            part, program = args
            self._set_parts(_replace_part(self.parts, part, program=program))
            ch = self.parts.get(part).channel - 1
            sched.send_now((PROGRAM_CHANGE | ch, program))
        elif name == "volume":
            part, volume = args
            self._set_parts(_replace_part(self.parts, part, volume=volume))
            ch = self.parts.get(part).channel - 1
            sched.send_now((CONTROL_CHANGE | ch, 7, round(volume * 127)))
        elif name == "pan":
            part, pan = args
            self._set_parts(_replace_part(self.parts, part, pan=pan))
            ch = self.parts.get(part).channel - 1
            sched.send_now((CONTROL_CHANGE | ch, 10, min(127, round((pan + 1) * 64))))
        elif name == "seed":
            sched.release_all()
            self._release_voicer()
            self.steps.clear()
            self._last_step = None
            self.engine.reset(int(args[0]))
        elif name == "swing":
            self.swing = float(args[0])
            if hasattr(self.voicer, "swing"):
                self.voicer.swing = self.swing
        elif name == "mode":
            self.mode = str(args[0])
            if self.mode != "autonomous":
                log.warning("mode %s comes with the play-along issue; still playing autonomous", self.mode)
        elif name == "model":
            self.pending_model = args[0]
        elif name == "call":
            args[0]()  # a closure that must run on the real-time thread (e.g. a soundfont switch)
        else:
            raise ValueError(f"unknown command {name!r}")

    def _set_parts(self, parts: PartsConfig) -> None:
        self.parts = parts
        offs = self.voicer.set_parts(parts)  # note-offs for notes on channels that changed
        if offs:
            self.scheduler.add_notes(offs, self.clock.now_ns(), self.clock.step_ns)

    def send_parts_setup(self) -> None:
        """Program change, volume (CC7) and pan (CC10) for every part: at start-up, on the RT thread."""
        for name in PART_NAMES:
            part = self.parts.get(name)
            if not part.enabled:
                continue
            ch = part.channel - 1
            self.scheduler.send_now((PROGRAM_CHANGE | ch, part.program))
            self.scheduler.send_now((CONTROL_CHANGE | ch, 7, round(part.volume * 127)))
            self.scheduler.send_now((CONTROL_CHANGE | ch, 10, min(127, round((part.pan + 1) * 64))))


def _replace_part(parts: PartsConfig, name: str, **changes: Any) -> PartsConfig:
    current = parts.get(name)
    return dataclasses.replace(parts, **{name: dataclasses.replace(current, **changes)})


class Daemon:
    """``rtgen run``: opens the model, outputs, OSC server and status line, then plays.

    Start-up fails fast with :class:`~rtgen.errors.RtgenError` subclasses whose
    messages say what to do (unknown port -> the ports there are; missing soundfont
    -> where we looked; no audio device -> warn and keep playing to MIDI).

    Args:
        config: the validated configuration (CLI overrides already applied).
        status: optional status reporter (TTY line / JSON log), see :mod:`rtgen.status`.
    """

    def __init__(self, config: Config, *, status: Any | None = None) -> None:
        self.config = config
        self.status_reporter = status
        self.sinks: list[SinkLike] = []
        self.osc: OscServer | None = None
        self.player: Player | None = None
        self.synth: Any | None = None
        self.realtime = False
        self.synth_sink: Any | None = None
        self.model: Model | None = None
        self.midi_name: str | None = None
        self.started_ns = 0
        self._swap_lock = threading.Lock()  # only serialises background loaders, never taken by the RT thread

    # --- start-up ----------------------------------------------------------------------------
    def open(self) -> None:
        """Load the model and open every output; raises RtgenError with a fix on failure."""
        from rtgen.engine import Engine, Params
        from rtgen.model import Model
        from rtgen.voicing import Voicer

        cfg = self.config
        try:
            self.model = Model.load(cfg.model_path)
            self._open_outputs()
            gen = cfg.generation
            params = Params.from_config(gen)
            engine = Engine(self.model, params, seed=gen.seed)
            voicer = Voicer(cfg.parts, swing=gen.swing, humanize_ms=gen.humanize_ms, seed=gen.seed)
            clock = StepClock(gen.tempo, time_source=RealTime())
            feedback = None
            if cfg.osc.enabled:
                from rtgen.osc import OscServer

                self.osc = OscServer(cfg.osc.host, cfg.osc.port, self)
                feedback = self.osc.feedback
            sched = Scheduler(self.sinks, on_note=self._on_note if feedback is not None else None)
            self.player = Player(engine, voicer, sched, clock, params, cfg.parts, feedback=feedback)
            self.player.mode = cfg.daemon.mode
        except BaseException:
            self.close()
            raise

    def _open_outputs(self) -> None:
        from rtgen.sinks import MidiOutSink, RecorderSink

        cfg = self.config
        midi_error: PortError | None = None
        if cfg.midi.enabled:
            from rtgen.midi_io import open_output

            try:
                out = open_output(
                    cfg.midi.backend, cfg.midi.out or None, cfg.midi.client_name, cfg.midi.virtual_port_name
                )
            except PortError as err:
                if cfg.midi.out or not cfg.synth.enabled:
                    raise  # a port the user named must exist; and without the synth there is nothing left
                midi_error = err  # no MIDI system for a virtual port: the synth may still play
            else:
                self.midi_name = out.name
                self.sinks.append(MidiOutSink(out))
        if cfg.synth.enabled:
            self._open_synth()
        if midi_error is not None:
            if self.synth is None:
                raise RtgenError(f"no output left to play to: MIDI: {midi_error}; synth: no audio device (see above)")
            log.warning("no MIDI output (%s); playing through the synth only", midi_error)
        if cfg.daemon.record:
            ts = cfg.generation.parsed_time_signature()
            names = {cfg.parts.get(n).channel - 1: n for n in PART_NAMES}
            self.sinks.append(
                RecorderSink(
                    cfg.resolve(cfg.daemon.record),
                    cfg.generation.tempo,
                    time_signature=(ts.numerator, ts.denominator),
                    track_names=names,
                )
            )
        live = [s for s in self.sinks if not s.name.startswith("record:")]
        if not live:
            raise RtgenError(
                "no output left to play to: MIDI out is disabled and the synth is off or has no audio device; "
                "enable one (--synth with a working --audio-driver, or MIDI out with [midi] enabled = true)"
            )

    def _open_synth(self) -> None:
        from rtgen.sinks import SynthSink
        from rtgen.synth import Synth, find_soundfont

        cfg = self.config.synth
        sf = find_soundfont(self.config.resolve(cfg.soundfont) if cfg.soundfont else None)  # SoundfontError
        synth = Synth(sf, sample_rate=cfg.sample_rate, gain=cfg.gain, reverb=cfg.reverb, chorus=cfg.chorus)
        try:
            synth.start_audio(cfg.audio_driver or None)
        except AudioError as err:
            synth.close()
            rest = "playing to MIDI only" if self.midi_name else "no synth"
            log.warning("no audio device for the synth (%s); %s", err, rest)
            if self.status_reporter is not None:
                self.status_reporter.event("warning", message=f"no audio device: {err}; {rest}")
            return
        self.synth = synth
        self.synth_sink = SynthSink(synth)
        self.sinks.append(self.synth_sink)

    def _on_note(self, part: str | None, channel: int, pitch: int, velocity: int) -> None:
        fb = self.osc.feedback if self.osc is not None else None
        if fb is not None and fb.subscribers:
            fb.note(part or f"channel{channel + 1}", pitch, velocity)

    # --- running -----------------------------------------------------------------------------
    def run(self) -> int:
        """Play until SIGINT/SIGTERM, ``/rtgen/...`` never stops it, or ``daemon.duration``. Returns 0."""
        if self.player is None:
            self.open()
        player = self.player
        assert player is not None
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, lambda signum, frame: player.request_stop())
        try:
            if self.osc is not None:
                self.osc.start()
            if self.status_reporter is not None:
                self.status_reporter.start(self)
            player.send_parts_setup()
            self.started_ns = time.perf_counter_ns()
            log.info(
                "playing: model %s, tempo %.1f, outputs %s, OSC %s",
                player.model_name,
                player.clock.tempo,
                ", ".join(s.name for s in self.sinks),
                f"{self.config.osc.host}:{self.osc.port}" if self.osc is not None else "off",
            )
            self.realtime = request_realtime(self.config.daemon.realtime_priority)
            player.run(self.config.daemon.duration)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.close()
        return 0

    def close(self) -> None:
        """Release every note, close sinks, stop the OSC server and status line (idempotent)."""
        if self.status_reporter is not None:
            try:
                self.status_reporter.stop(self)
            except Exception:  # pragma: no cover
                log.exception("status reporter failed to stop")
        if self.player is not None:
            self.player.scheduler.close()
            self.player = None
        else:
            for sink in self.sinks:
                try:
                    sink.close()
                except Exception as err:
                    log.warning("closing %s failed: %s", sink.name, err)
        self.sinks = []
        if self.osc is not None:
            self.osc.close()
            self.osc = None

    # --- Controller (called from the OSC thread) ---------------------------------------------
    def _p(self) -> Player:
        if self.player is None:
            raise RtgenError("the daemon is not running")
        return self.player

    def play(self) -> None:
        """Start playing."""
        self._p().command("play", urgent=True)

    def stop(self) -> None:
        """Stop playing (notes released now)."""
        self._p().command("stop", urgent=True)

    def panic(self) -> None:
        """Release everything."""
        self._p().command("panic", urgent=True)

    def set_tempo(self, bpm: float) -> None:
        """Tempo from the next step on."""
        self._p().command("tempo", bpm)

    def set_params(self, **changes: Any) -> None:
        """Swap generation parameters."""
        self._p().set_params(**changes)

    def set_mode(self, mode: str) -> None:
        """Switch mode."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; allowed: {', '.join(MODES)}")
        self._p().command("mode", mode)

    def set_instrument(self, part: str, program: int) -> None:
        """Program change for a part."""
        self._p().command("instrument", part, program, urgent=True)

    def set_volume(self, part: str, volume: float) -> None:
        """CC7 for a part."""
        self._p().command("volume", part, volume, urgent=True)

    def set_pan(self, part: str, pan: float) -> None:
        """CC10 for a part."""
        self._p().command("pan", part, pan, urgent=True)

    def set_key(self, key: str) -> None:
        """Key lock (or "off")."""
        from rtgen.contract import Key

        self._p().set_params(key=None if key.strip().lower() == "off" else Key.parse(key))

    def set_seed(self, seed: int) -> None:
        """Re-seed (restarts the piece at the next step)."""
        self._p().command("seed", seed)

    def set_swing(self, swing: float) -> None:
        """Swing amount."""
        self._p().command("swing", swing)

    def swap_model(self, path: str, reply: Callable[[str], None] | None = None) -> None:
        """Load ``path`` in the background; the RT thread switches at the next bar line."""
        player = self._p()
        target = self.config.resolve(path)

        def load() -> None:
            from rtgen.model import Model

            with self._swap_lock:
                try:
                    model = Model.load(target)
                except Exception as err:
                    text = f"/rtgen/model: cannot load {target}: {err}; keeping {player.model_name}"
                    log.error("%s", text)
                    if self.osc is not None:
                        self.osc.feedback.error(text)
                    if reply is not None:
                        reply(text)
                    return
                player.command("model", model)

        threading.Thread(target=load, name="rtgen-model-loader", daemon=True).start()

    def swap_soundfont(self, path: str, reply: Callable[[str], None] | None = None) -> None:
        """Load another soundfont into the synth (in the background)."""
        player = self._p()
        synth = self.synth

        def fail(text: str) -> None:
            log.error("%s", text)
            if self.osc is not None:
                self.osc.feedback.error(text)
            if reply is not None:
                reply(text)

        if synth is None:
            fail("/rtgen/soundfont: the internal synth is not running (start with --synth and an audio device)")
            return
        target = self.config.resolve(path)

        def work() -> None:
            from rtgen.synth import find_soundfont

            try:
                sf = find_soundfont(target)
                sfid = synth.load_soundfont(sf)  # the slow part, off the real-time thread
            except (SoundfontError, OSError) as err:
                fail(f"/rtgen/soundfont: {err}")
                return
            # the synth's programs are driven by the RT thread: switch there, between two sends
            player.command("call", lambda: _switch_soundfont(player, synth, sfid, sf))

        threading.Thread(target=work, name="rtgen-soundfont-loader", daemon=True).start()

    def status(self) -> dict[str, Any]:
        """The full state as JSON-ready data (read without locks: a snapshot may be a step stale)."""
        p = self._p()
        params = p.params
        stats = p.clock.stats
        parts = {
            n: {
                "channel": p.parts.get(n).channel,
                "program": p.parts.get(n).program,
                "volume": p.parts.get(n).volume,
                "pan": p.parts.get(n).pan,
            }
            for n in PART_NAMES
        }
        return {
            "playing": p.playing,
            "mode": p.mode,
            "tempo": p.clock.tempo,
            "bar": p.bar + 1,
            "beat": p.beat + 1,
            "chord": p.chord_name,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "density": params.density,
            "key": params.key.name if params.key is not None else "off",
            "swing": p.swing,
            "seed": getattr(p.engine, "seed", None),
            "model": p.model_name,
            "realtime": self.realtime,
            "parts": parts,
            "steps": stats.steps,
            "late_steps": stats.late_steps,
            "max_late_us": stats.max_late_ns / 1000,
            "sent": p.scheduler.sent,
            "sounding": p.scheduler.book.count(),
            "outputs": [s.name for s in p.scheduler.sinks],
            "osc_errors": self.osc.control.errors if self.osc is not None else 0,
            "engine_errors": p.engine_errors,
        }


def _switch_soundfont(player: Player, synth: Any, sfid: int, sf: Path) -> None:
    player.scheduler.release_all()
    player._release_voicer()
    synth.use_soundfont(sfid, sf)
    player.send_parts_setup()
    log.info("soundfont switched to %s", sf)

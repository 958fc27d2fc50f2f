"""The daemon behind ``rtgen run``: the stages wired together around the live loop.

Opening (:mod:`~rtgen.live.opening`) gives the outputs and the player's input; the model, engine, voicer,
scheduler and clock source make a :class:`~rtgen.live.loop.LiveLoop`; OSC and the web page reach it
through the controller facade (:mod:`~rtgen.live.controller`); JACK is watched (:mod:`~rtgen.live.jack`)
and signals stop it (:mod:`~rtgen.live.signals`). :meth:`Daemon.run` plays on the main thread (signals
reach it there) and always leaves every note released and the recording written.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rtgen import logs
from rtgen.config import Config, needs_poly
from rtgen.errors import PortError, RtgenError
from rtgen.io.sinks import RecorderSink
from rtgen.live import loaders
from rtgen.live.controller import Controller
from rtgen.live.jack import JackSupervisor
from rtgen.live.learning import CcSaver
from rtgen.live.loop import LiveLoop
from rtgen.live.opening import Outputs, open_link, open_outputs, open_player_input
from rtgen.live.polyload import load_poly, model_folders
from rtgen.live.signals import SignalStop
from rtgen.live.snapshot import snapshot
from rtgen.timing.clock import RealTime, StepClock, realtime_loop
from rtgen.timing.source import ClockSource, InternalClock, LinkClock, MidiClockIn

if TYPE_CHECKING:
    from rtgen.control.osc import OscServer
    from rtgen.control.web.server import WebServer
    from rtgen.generation.model import Model
    from rtgen.io.ports import MidiInput
    from rtgen.io.sinks import MidiOutSink, Sink, SynthSink
    from rtgen.io.synth import Synth
    from rtgen.live.status import StatusReporter
    from rtgen.timing.link import LinkFollower

log = logging.getLogger(__name__)


class Daemon(Controller):
    """``rtgen run``: opens the model, inputs, outputs, OSC server and status line, then plays.

    Start-up fails fast with :class:`~rtgen.errors.RtgenError` subclasses whose
    messages say what to do (unknown port -> the ports there are; missing soundfont
    -> where we looked; no audio device -> warn and keep playing to MIDI).

    Args:
        config: the validated configuration (CLI overrides already applied).
        status: optional status reporter (TTY line / JSON log), see :mod:`rtgen.live.status`.
        cc_file: where MIDI learn saves the ``[cc]`` table (``rtgen run``: the user config); None: learned
            mappings are live only.
    """

    def __init__(self, config: Config, *, status: StatusReporter | None = None, cc_file: Path | None = None) -> None:
        self.config = config
        self.cc_file = cc_file
        self.cc_saver: CcSaver | None = None
        self.status_reporter = status
        self.outputs = Outputs()
        self.osc: OscServer | None = None
        self.web: WebServer | None = None
        self.loop: LiveLoop | None = None
        self.realtime = False
        self.model: Model | None = None
        self.poly_folder: Path | None = None  # the polyphonic model --model names (None: the shipped chorale)
        self.input: MidiInput | None = None
        self.link: LinkFollower | None = None
        self.started_ns = 0
        self.closing = threading.Event()
        self.fatal: RtgenError | None = None  # why the supervisor ended the run (raised by run())
        self.jack = JackSupervisor(self)
        self.loader = loaders.BackgroundLoader()  # model and soundfont loads, one at a time, newest wins
        self._closers: list[threading.Thread] = []
        self._signals = SignalStop(self._request_stop)

    # --- what was opened ---------------------------------------------------------------------------
    @property
    def sinks(self) -> list[Sink]:
        """Every output (MIDI out, synth, the recording at start-up)."""
        return self.outputs.sinks

    @property
    def midi_sinks(self) -> list[MidiOutSink]:
        """The MIDI outputs."""
        return self.outputs.midi_sinks

    @property
    def synth(self) -> Synth | None:
        """The internal synth, when it plays."""
        return self.outputs.synth

    @synth.setter
    def synth(self, synth: Synth | None) -> None:
        self.outputs.synth = synth

    @property
    def synth_sink(self) -> SynthSink | None:
        """The synth's sink, when it plays."""
        return self.outputs.synth_sink

    # --- start-up ----------------------------------------------------------------------------
    def open(self) -> None:
        """Load the model and open every input and output; raises RtgenError with a fix on failure."""
        from rtgen.arrange.voicing import Voicer
        from rtgen.generation.conductor import needs_harmoniser
        from rtgen.generation.engine import Engine, Params
        from rtgen.generation.model import Model
        from rtgen.io.scheduler import Scheduler

        cfg = self.config
        if cfg.web.enabled and not cfg.osc.enabled:
            raise RtgenError(
                "[web] enabled needs [osc] enabled = true: the page sends the OSC commands and reads the OSC "
                "feedback (drop --no-osc)"
            )
        try:
            engine_path, self.poly_folder = model_folders(cfg)
            self.model = Model.load(engine_path)
            mode = cfg.daemon.mode
            if needs_harmoniser(mode):
                self.model.require_harmony(mode)
            poly = load_poly(cfg, self.poly_folder, mode) if needs_poly(mode, cfg.parts) else None
            self.outputs = open_outputs(cfg, self._warn)
            gen = cfg.generation
            params = Params.from_config(gen)
            engine = Engine(self.model, params, seed=gen.seed)
            voicer = Voicer(cfg.parts, swing=gen.swing, humanize_ms=gen.humanize_ms, seed=gen.seed)
            clock = StepClock(gen.tempo, time_source=RealTime())
            feedback = None
            if cfg.osc.enabled:
                from rtgen.control.osc import OscServer

                self.osc = OscServer(cfg.osc.host, cfg.osc.port, self, cfg.osc.allowed_networks())
                feedback = self.osc.feedback
            if cfg.web.enabled:
                self.web = self._open_web()
            drop_ms = cfg.daemon.late_drop_ms
            sched = Scheduler(
                self.sinks,
                on_note=self._on_note if feedback is not None else None,
                drop_late_ns=int(drop_ms * 1_000_000) if drop_ms > 0 else None,
            )
            player = open_player_input(cfg)
            self.input = player.port if player is not None else None
            source: ClockSource = InternalClock(clock)
            if player is not None and player.clock is not None:
                source = MidiClockIn(player.clock)
            elif cfg.clock.source == "link":
                self.link = open_link(cfg, params)
                source = LinkClock(self.link)
            clock_out: list[Sink] = []
            if cfg.clock.send:
                if not source.leads:
                    log.warning("clock.send ignored: rtgen follows a %s clock (it cannot lead and follow)", source.name)
                else:
                    clock_out = list(self.midi_sinks)
                    if not clock_out:
                        log.warning("clock.send: there is no MIDI output to send the clock to")
            self.loop = LiveLoop(
                engine, voicer, sched, clock, params, cfg.parts, source=source, feedback=feedback, mode=mode,
                config=cfg, tracker=player.tracker if player is not None else None, input_queue=self.input,
                clock_out=clock_out, thru=cfg.input.thru and player is not None, poly=poly,
            )  # fmt: skip
            self.loop.recorder = next((s for s in self.sinks if isinstance(s, RecorderSink)), None)
            if self.cc_file is not None and player is not None:
                self.cc_saver = CcSaver(self.cc_file, feedback.error if feedback is not None else None)
                self.loop.on_cc_changed = self.cc_saver.save
            self._signals.catch()
        except BaseException:
            self.close()
            raise

    def _warn(self, text: str) -> None:
        if self.status_reporter is not None:
            self.status_reporter.event("warning", message=text)

    def _open_web(self) -> WebServer:
        """The web control surface, on the OSC server's feedback."""
        from rtgen.control.web.server import WebServer

        assert self.osc is not None
        try:
            return WebServer(self.config.web.host, self.config.web.port, self, self.osc.feedback)
        except OSError as err:
            raise PortError(str(err)) from err

    def _on_note(self, part: str | None, channel: int, pitch: int, velocity: int) -> None:
        fb = self.osc.feedback if self.osc is not None else None
        if fb is not None and fb.subscribers and part != "player":
            fb.note(part or f"channel{channel + 1}", pitch, velocity)

    def _request_stop(self) -> None:
        loop = self.loop
        if loop is not None:
            loop.request_stop()

    # --- running -----------------------------------------------------------------------------
    def run(self) -> int:
        """Play until SIGINT/SIGTERM or ``daemon.duration``; returns 0. The recording is written on the way out.

        Raises:
            PortError: the JACK server died and came back, but the MIDI ports could not be reopened
                (everything is released and closed first).
        """
        if self.loop is None:
            self.open()
        loop = self.loop
        assert loop is not None
        try:
            if self.osc is not None:
                self.osc.start()
            if self.web is not None:
                self.web.start()
            self.jack.start()
            loop.output_quantum_ns = min((s.quantum_ns for s in self.sinks if s.live), default=0)
            if self.status_reporter is not None:
                self.status_reporter.start(self)
            loop.send_parts_setup()
            self.started_ns = time.perf_counter_ns()
            log.info(
                "playing: model %s, mode %s, tempo %.1f, clock %s, input %s, outputs %s, OSC %s",
                loop.model_name,
                loop.mode,
                loop.clock.tempo,
                loop.source.name,
                self.input.name if self.input is not None else "off",
                ", ".join(s.name for s in self.sinks),
                f"{self.config.osc.host}:{self.osc.port}" if self.osc is not None else "off",
            )
            # rtmidi calls back on JACK's own real-time thread, which needs the GIL: with Python's default 5 ms
            # switch interval a spinning loop makes it miss JACK cycles (a synchronous server then stalls)
            with realtime_loop(self.config.daemon.realtime_priority) as self.realtime, logs.off_thread():
                loop.run(self.config.daemon.duration)
        finally:
            self.close()
        if self.fatal is not None:
            raise self.fatal
        return 0

    def status(self) -> dict[str, Any]:
        """The full state as JSON-ready data (read without locks: a snapshot may be a step stale)."""
        return snapshot(
            self._live(),
            realtime=self.realtime,
            player_input=self.input,
            osc_errors=self.osc.control.errors if self.osc is not None else 0,
            jack=self.jack,
        )

    def close(self) -> None:
        """Release every note, close inputs and sinks (the recording is written), stop OSC (idempotent)."""
        self.closing.set()
        self.jack.join(timeout=10)  # it may be closing dead JACK clients (about a second each)
        if self.status_reporter is not None:
            try:
                self.status_reporter.stop(self)
            except Exception:  # pragma: no cover
                log.exception("status reporter failed to stop")
        if self.input is not None:
            try:
                self.input.close()
            except Exception as err:
                log.warning("closing the MIDI input failed: %s", err)
            self.input = None
        self.loader.close()  # a running load ends first: the synth is not deleted under it
        if self.loop is not None:
            self.loop.scheduler.close()  # closes every sink, the recorder (written safely) included
            self.loop = None
        else:
            self.outputs.close()
        if self.cc_saver is not None:
            self.cc_saver.close()  # a learned mapping still queued is written
            self.cc_saver = None
        for t in self._closers:
            t.join(timeout=30)
        self._closers = []
        self.outputs = Outputs()
        if self.web is not None:
            self.web.close()
            self.web = None
        if self.osc is not None:
            self.osc.close()
            self.osc = None
        if self.link is not None:
            self.link.close()
            self.link = None
        self._signals.release()

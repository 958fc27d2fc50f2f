"""Polyphonic models in onnxruntime: one graph call per step gives a whole sampled frame.

A polyphonic model folder (``meta.json`` ``"kind": "poly"``) holds ``poly.onnx``, written by
``rtgen-train poly-export`` from a time-axis GRU with a NADE head (``training/poly.py``). The graph
takes the previous frame, the recurrent state, one uniform draw per pitch, the clamped pitches, the
position in bar and a temperature, and returns the sampled frame, each pitch's log-probability and the
next state (the within-step loop and the sampling are inside the graph).

Pitch index ``j`` of a frame is MIDI pitch ``low_pitch + j`` (21..108 for the 88 keys). The NADE decides
pitches from the top down, so clamping a melody pitch and everything above it conditions the voices
below on the melody exactly.

A three-state model (``meta.json`` ``poly.states`` 3, trained by ``rtgen-train all --kind poly`` on a folder
of MIDI) plays the step grid: a frame holds per pitch a state code (:data:`OFF`, :data:`ONSET`, :data:`HELD`;
a repeated note is a new onset) and :attr:`PolyStepper.velocity` a velocity bin per onset
(``contract.bin_velocity`` gives its MIDI velocity); its graph takes the previous frame's velocities, three
draws per pitch for the state and one for the velocity (:data:`INPUTS3`, :data:`OUTPUTS3`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from rtgen import library
from rtgen.errors import ModelError
from rtgen.generation.model import session_options

model_kind = library.model_kind
"""The kind of model a ``meta.json`` describes (:func:`rtgen.library.model_kind`)."""
POLY_KIND = library.POLY_KIND
MELODY_KIND = library.MELODY_KIND
GRAPH_FILE = "poly.onnx"
INPUTS = ("prev", "state", "draws", "clamp", "observed", "pos", "temperature")
OUTPUTS = ("frame", "logp", "state_out")
INPUTS3 = ("prev", "prev_velocity", "state", "draws", "velocity_draws", "clamp", "observed", "pos", "temperature")
"""Inputs of a three-state graph."""
OUTPUTS3 = ("frame", "velocity", "logp", "state_out")
"""Outputs of a three-state graph."""
OFF, ONSET, HELD = 0, 1, 2
"""A three-state frame's codes."""
LOW_PITCH = 21
"""MIDI pitch of frame index 0 (A0, the piano's lowest key)."""


class PolyModel:
    """A loaded polyphonic model: its session and what ``meta.json`` says about its frames.

    Attributes:
        path: the model folder.
        meta: its ``meta.json``.
        n_pitches: pitches per frame.
        low_pitch: MIDI pitch of index 0.
        bar_steps: steps per bar of the position input; 0 = the model has none.
        step_beats: one frame's length in beats.
        centred_key: trained on pieces transposed to C major / C minor (play it in C, transpose around it).
        states: 2 (a frame is the sounding pitches, 0/1) or 3 (codes off / onset / held per pitch).
        velocity_bins: velocity bins of an onset (three-state models; 0 = none).
    """

    def __init__(self, path: Path, meta: dict[str, Any], session: ort.InferenceSession) -> None:
        self.path = path
        self.meta = meta
        block = meta["poly"]
        self.n_pitches = int(block["n_pitches"])
        self.low_pitch = int(block["low_pitch"])
        self.bar_steps = int(block["bar_steps"])
        self.step_beats = float(block["step_beats"])
        self.centred_key = bool(block["centred_key"])
        self.states = int(block.get("states", 2))
        self.velocity_bins = int(block.get("velocity_bins", 0))
        layers, hidden = block["state_shape"]
        self.state_shape = (int(layers), int(hidden))
        self._session = session
        self.input_names = frozenset(i.name for i in session.get_inputs())

    def __repr__(self) -> str:
        return f"PolyModel({str(self.path)!r}, pitches={self.n_pitches}, step_beats={self.step_beats})"

    @classmethod
    def load(cls, path: str | Path, *, threads: int = 1) -> PolyModel:
        """Load the folder ``path``.

        Raises:
            ModelError: no such folder, not a polyphonic model (the message says what it is), or a bad graph.
        """
        folder = Path(path)
        meta = library.read_meta(folder)
        kind = model_kind(meta)
        if kind != POLY_KIND:
            raise ModelError(f"{folder} is a {kind} model, not a polyphonic one (e.g. the shipped 'chorale')")
        block = meta.get("poly")
        keys = ("n_pitches", "low_pitch", "bar_steps", "step_beats", "centred_key", "state_shape")
        if not isinstance(block, dict) or any(k not in block for k in keys):
            raise ModelError(f"{folder / library.META_FILE}: the 'poly' block needs {', '.join(keys)}; re-export it")
        graph = folder / GRAPH_FILE
        if not graph.is_file():
            raise ModelError(f"no {GRAPH_FILE} in {folder}; re-export it with rtgen-train poly-export")
        try:
            session = ort.InferenceSession(str(graph), session_options(threads), providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own exception types for a bad file
            raise ModelError(f"cannot load {graph}: {err}") from err
        names = tuple(i.name for i in session.get_inputs())
        inputs = INPUTS3 if int(block.get("states", 2)) == 3 else INPUTS
        expected = tuple(n for n in inputs if n != "pos" or int(block["bar_steps"]) > 0)
        if names != expected:
            raise ModelError(f"{graph} has inputs {names}, expected {expected}; re-export it")
        return cls(folder, meta, session)

    def warm_up(self, rows: tuple[int, ...] = (1,)) -> None:
        """Run the graph once at each batch size in ``rows``: onnxruntime's first run of a session (and of a new
        batch size) plans its memory and takes ~15 ms, so a loader thread does it, not the real-time thread that
        later makes a stepper (then ~1 ms)."""
        for r in rows:
            self.stepper(0, r).warm_up()

    def stepper(self, seed: int | None = None, rows: int = 1) -> PolyStepper:
        """A new stream (state, previous frame and random generator of its own) drawing ``rows`` candidates a step."""
        return PolyStepper(self, seed, rows)


class PolyStepper:
    """One stream of frames: the recurrent state and the previous frame, bound once to the graph.

    With ``rows`` > 1 each call draws that many candidate frames from the same place in the stream (the graph's
    batch: eight rows cost about 1.6 times one), :meth:`draw`, and the caller :meth:`take` s the one that sounds;
    the recurrent state does not depend on the frame drawn (the GRU reads a frame at the next step), so every row
    goes on from the same state.

    Not thread-safe; a step allocates nothing (the inputs and outputs are bound onnxruntime values).
    """

    def __init__(self, model: PolyModel, seed: int | None = None, rows: int = 1) -> None:
        self.model = model
        self.rows = max(1, int(rows))
        P, R = model.n_pitches, self.rows  # noqa: N806
        layers, hidden = model.state_shape
        self._rng = np.random.default_rng(seed)
        self.prev = np.zeros((R, P), np.float32)
        self._states = [np.zeros((layers, R, hidden), np.float32) for _ in range(2)]
        self.draws = np.zeros((R, P, 3) if model.states == 3 else (R, P), np.float32)
        self.clamp = np.zeros((R, P), np.float32)
        self.observed = np.zeros((R, P), bool)
        self.pos = np.zeros(R, np.int64)
        self.temperature = np.ones(R, np.float32)
        self.frame = np.zeros((R, P), np.float32)
        self.logp = np.zeros((R, P), np.float32)
        self.prev_velocity = np.zeros((R, P), np.float32)
        self.velocity_draws = np.zeros((R, P), np.float32)
        self.velocity = np.zeros((R, P), np.float32)
        """Velocity bins of the last frame's onsets (three-state models; 0 elsewhere)."""
        self._values: list[ort.OrtValue] = []
        self._io = [self._bind(cur) for cur in range(2)]
        self._cur = 0

    def _bind(self, cur: int) -> ort.IOBinding:
        io = self.model._session.io_binding()
        ins = {"prev": self.prev, "prev_velocity": self.prev_velocity, "state": self._states[cur],
               "draws": self.draws, "velocity_draws": self.velocity_draws, "clamp": self.clamp,
               "observed": self.observed, "pos": self.pos, "temperature": self.temperature}  # fmt: skip
        for name, arr in ins.items():
            if name not in self.model.input_names:  # ``pos`` without position in bar; a binary graph's
                continue
            value = ort.OrtValue.ortvalue_from_numpy(arr)
            self._values.append(value)
            io.bind_ortvalue_input(name, value)
        outs = {"frame": self.frame, "velocity": self.velocity, "logp": self.logp, "state_out": self._states[1 - cur]}
        for name, arr in outs.items():
            if name == "velocity" and self.model.states == 2:
                continue
            value = ort.OrtValue.ortvalue_from_numpy(arr)
            self._values.append(value)
            io.bind_ortvalue_output(name, value)
        return io

    @property
    def state(self) -> np.ndarray:
        """The current recurrent state ``(layers, 1, hidden)`` (a live buffer: copy to keep)."""
        return self._states[self._cur]

    def reset(self) -> None:
        """A fresh stream: zero state, empty previous frame."""
        for buf in self._states:
            buf.fill(0.0)
        self.prev.fill(0.0)
        self.prev_velocity.fill(0.0)
        self._cur = 0

    def start(self, frame: np.ndarray) -> None:
        """A fresh stream whose first frame is ``frame`` (given, not scored), as every training sequence began:
        the next step predicts the frame after it."""
        self.reset()
        self.prev[:] = frame

    def _run(self) -> np.ndarray:
        self.model._session.run_with_iobinding(self._io[self._cur])
        self._cur = 1 - self._cur
        return self.frame

    def step(
        self,
        clamp: np.ndarray | None = None,
        observed: np.ndarray | None = None,
        pos: int = 0,
        temperature: float = 1.0,
    ) -> np.ndarray:
        """Sample the next frame and advance to it (the first row's, with ``rows`` > 1).

        Args:
            clamp: ``(P,)`` values of the observed pitches (0/1).
            observed: ``(P,)`` bool, the pitches that are given rather than drawn.
            pos: position in bar (models with ``bar_steps``).
            temperature: > 0; the NADE's logits are divided by it.

        Returns:
            The frame, ``(P,)`` float32 of 0/1, or of the codes 0 off / 1 onset / 2 held for a three-state
            model (a live buffer: copy to keep). :attr:`logp` holds each pitch's log-probability,
            :attr:`velocity` a three-state model's velocity bins.
        """
        frames = self.draw(clamp, observed, pos, temperature)
        self.take(0)
        return frames[0]

    def draw(
        self,
        clamp: np.ndarray | None = None,
        observed: np.ndarray | None = None,
        pos: int = 0,
        temperature: float = 1.0,
    ) -> np.ndarray:
        """Draw :attr:`rows` candidates for the next frame (arguments as :meth:`step`); :meth:`take` one to go on.

        Returns:
            ``(rows, P)`` float32 of 0/1, a live buffer.
        """
        if observed is None:
            self.observed.fill(False)
            self.clamp.fill(0.0)
        else:
            self.observed[:] = observed
            self.clamp[:] = 0.0 if clamp is None else clamp
        self.pos[:] = pos
        self.temperature[:] = max(float(temperature), 1e-3)
        self._rng.random(out=self.draws, dtype=np.float32)
        if self.model.states == 3:
            self._rng.random(out=self.velocity_draws, dtype=np.float32)
        return self._run()

    def take(self, row: int) -> None:
        """The candidate ``row`` of the last :meth:`draw` is the frame played: the stream goes on from it."""
        self.prev[...] = self.frame[row]
        self.prev_velocity[...] = self.velocity[row]

    def feed(self, frame: np.ndarray, pos: int = 0, velocity: np.ndarray | None = None) -> float:
        """Observe a whole frame (e.g. the player's) and advance; returns its log-probability.

        A three-state model takes codes (0 off, 1 onset, 2 held) and, in ``velocity``, its onsets' bins
        (default: the bins the graph draws).
        """
        self.observed.fill(True)
        self.clamp[:] = frame
        self.pos[:] = pos
        self.temperature.fill(1.0)
        self._run()
        self.take(0)
        if velocity is not None:
            self.prev_velocity[:] = np.where(self.frame[0] == ONSET, velocity, 0.0)
        return float(self.logp[0].sum())

    def index(self, pitch: int) -> int:
        """Frame index of MIDI ``pitch``, clipped to the model's range."""
        return min(max(int(pitch) - self.model.low_pitch, 0), self.model.n_pitches - 1)

    def soprano_clamp(self, pitch: int) -> tuple[np.ndarray, np.ndarray]:
        """``(clamp, observed)`` that give MIDI ``pitch`` as the top voice: it is on and nothing above it."""
        P = self.model.n_pitches  # noqa: N806
        j = self.index(pitch)
        clamp = np.zeros(P, np.float32)
        clamp[j] = 1.0
        observed = np.zeros(P, bool)
        observed[j:] = True
        return clamp, observed

    def warm_up(self) -> None:
        """Run the graph once and reset: onnxruntime's first run allocates and is several times slower."""
        self.step()
        self.reset()

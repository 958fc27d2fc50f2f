"""Load an exported model folder and run its two ONNX graphs one step at a time.

A model folder holds ``chord.onnx``, ``note.onnx`` and ``meta.json`` (see
docs/internals.md §3). :meth:`Model.load` checks the token-contract version, the
sha256 of each file and the ONNX input/output names before creating the two
onnxruntime sessions, once.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from rtgen import contract, library
from rtgen.errors import ModelError

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]
GRAPH_FILES = ("chord.onnx", "note.onnx")
HARMONY_FILE = "harmony.onnx"  # contract v2; v1 folders have none and cannot accompany
_NOTE_TOKEN_INPUTS = contract.NOTE_MODEL_INPUTS[:-1]  # all but "state"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _model_folders_near(path: Path) -> list[str]:
    """Model folders (those with a meta.json) next to ``path`` or inside it, for error messages."""
    found: list[str] = []
    for parent in (path, path.parent):
        if parent.is_dir():
            found.extend(str(p.parent) for p in sorted(parent.glob(f"*/{library.META_FILE}")))
    return sorted(set(found))


def _missing_message(path: Path, what: str) -> str:
    near = _model_folders_near(path)
    hint = f"model folders found nearby: {', '.join(near)}" if near else "no model folders found nearby"
    return (
        f"{what}; {hint}. Choose one with --model NAME|DIR (or [model] path in config.toml; "
        "rtgen models list shows the models there are), or train one with rtgen-train all"
    )


def session_options(threads: int = 1) -> ort.SessionOptions:
    """onnxruntime options for low-latency single-step inference."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, int(threads))
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # warnings about unused initialisers etc. are noise here
    return opts


class Model:
    """One pair of ONNX sessions (chord and note model), created once.

    Attributes:
        path: the model folder.
        meta: the parsed ``meta.json``.
        name: the model's name (``meta["name"]`` or the folder name).
        state_shape: ``(layers, hidden)`` of the recurrent state.
    """

    def __init__(self, path: Path, meta: dict[str, Any], chord: ort.InferenceSession, note: ort.InferenceSession,
                 state_shape: tuple[int, int], harmony: ort.InferenceSession | None = None) -> None:  # fmt: skip
        self.path = path
        self._harmony = harmony
        self.meta = meta
        self.name = str(meta.get("name") or path.name)
        self.state_shape = state_shape
        self._chord = chord
        self._note = note
        self._chord_outputs = list(contract.CHORD_MODEL_OUTPUTS)
        self._note_outputs = list(contract.NOTE_MODEL_OUTPUTS)

    def __repr__(self) -> str:
        return f"Model({self.name!r}, path={str(self.path)!r}, state_shape={self.state_shape})"

    @property
    def can_harmonise(self) -> bool:
        """True when the folder has the harmoniser (contract v2): needed to accompany a player."""
        return self._harmony is not None

    def require_harmony(self, what: str = "accompany") -> None:
        """Raise :class:`ModelError` with the fix when this model has no harmoniser."""
        if self._harmony is None:
            raise ModelError(
                f"model {self.name} ({self.path}) has no harmony.onnx (token contract v1), so it cannot {what}: "
                "it can only play autonomously or over observed chords; re-train and export it with this rtgen "
                "(rtgen-train all), or use the shipped model"
            )

    @classmethod
    def load(cls, path: str | Path, *, threads: int = 1) -> Model:
        """Load and check a model folder.

        Args:
            path: folder with ``chord.onnx``, ``note.onnx`` and ``meta.json``.
            threads: onnxruntime intra-op threads per session (1 is fastest for one step).

        Raises:
            ModelError: the folder or a file is missing, the contract version differs,
                a file's sha256 does not match, or the ONNX I/O names are not the contract's.
        """
        try:
            path = Path(path).expanduser().resolve()
        except (OSError, RuntimeError, ValueError) as err:  # "~nobody/x", a NUL byte
            raise ModelError(f"cannot use {str(path)!r} as a model folder: {err}") from err
        if not path.is_dir():
            raise ModelError(_missing_message(path, f"model folder {path} does not exist"))
        meta_path = path / library.META_FILE
        if not meta_path.is_file():
            raise ModelError(_missing_message(path, f"model folder {path} has no meta.json"))
        reexport = "re-export the model with rtgen-train export"
        meta = library.read_meta(path)
        block = meta.get("contract")
        version = block.get("version") if isinstance(block, dict) else None
        speaks = f"v{', v'.join(map(str, contract.COMPATIBLE_VERSIONS))}"
        if not isinstance(version, int) or isinstance(version, bool):
            raise ModelError(
                f"{meta_path} has no integer contract.version (got {version!r}; this rtgen speaks token contract "
                f"{speaks}); {reexport}"
            )
        if version not in contract.COMPATIBLE_VERSIONS:
            raise ModelError(
                f"model {path} speaks token contract v{version} ({meta_path}), this rtgen speaks {speaks}; "
                "re-export it with rtgen-train export from this rtgen, or use a model made for it"
            )
        graph_files = GRAPH_FILES + ((HARMONY_FILE,) if version >= 2 else ())
        missing = [f for f in graph_files if not (path / f).is_file()]
        if missing:
            raise ModelError(_missing_message(path, f"model folder {path} is missing {', '.join(missing)}"))
        files = meta.get("files")
        if not isinstance(files, dict):
            raise ModelError(f'{meta_path} has no "files" table of sha256 hashes; {reexport}')
        for fname in graph_files:
            entry = files.get(fname)
            want = entry.get("sha256") if isinstance(entry, dict) else None
            if not isinstance(want, str) or not want:
                raise ModelError(f"{meta_path} has no sha256 for {fname}; {reexport}")
            try:
                got = _sha256(path / fname)
            except OSError as err:
                raise ModelError(f"cannot read {path / fname}: {err}") from err
            if got != want:
                raise ModelError(
                    f"{path / fname} does not match its sha256 in meta.json (got {got[:12]}…, "
                    f"expected {want[:12]}…): the file is corrupt or was changed; re-export the model"
                )
        opts = session_options(threads)
        sessions = []
        for fname in graph_files:
            try:
                sessions.append(
                    ort.InferenceSession(str(path / fname), sess_options=opts, providers=["CPUExecutionProvider"])
                )
            except Exception as err:  # onnxruntime raises its own exception types
                raise ModelError(f"onnxruntime cannot load {path / fname}: {err}") from err
        chord, note, *rest = sessions
        harmony = rest[0] if rest else None
        checks = [
            ("chord.onnx", chord, contract.CHORD_MODEL_INPUTS, contract.CHORD_MODEL_OUTPUTS),
            ("note.onnx", note, contract.NOTE_MODEL_INPUTS, contract.NOTE_MODEL_OUTPUTS),
        ]
        if harmony is not None:
            checks.append((HARMONY_FILE, harmony, contract.HARMONY_MODEL_INPUTS, contract.HARMONY_MODEL_OUTPUTS))
        for fname, sess, inputs, outputs in checks:
            got_in = {i.name for i in sess.get_inputs()}
            got_out = {o.name for o in sess.get_outputs()}
            if got_in != set(inputs) or not set(outputs) <= got_out:
                raise ModelError(
                    f"{path / fname} has inputs {sorted(got_in)} and outputs {sorted(got_out)}; the token contract "
                    f"v{contract.CONTRACT_VERSION} needs inputs {list(inputs)} and outputs {list(outputs)}; "
                    "re-export it with rtgen-train export"
                )
        state_shape = cls._state_shape(meta, chord, meta_path)
        log.info("loaded model %s from %s (state %s, %d thread(s))", meta.get("name"), path, state_shape, threads)
        if harmony is None:
            log.info("model %s is contract v%s: no harmoniser, it cannot accompany a player", meta.get("name"), version)
        return cls(path, meta, chord, note, state_shape, harmony)

    @staticmethod
    def _state_shape(meta: dict[str, Any], chord: ort.InferenceSession, meta_path: Path) -> tuple[int, int]:
        block = meta.get("model")
        shape = block.get("state_shape") if isinstance(block, dict) else None
        if isinstance(shape, list) and len(shape) == 2 and all(isinstance(v, int) and v > 0 for v in shape):
            return int(shape[0]), int(shape[1])
        # Fall back to the graph's static dims (layers, batch, hidden).
        dims = next(i.shape for i in chord.get_inputs() if i.name == "state")
        if len(dims) == 3 and isinstance(dims[0], int) and isinstance(dims[2], int):
            return dims[0], dims[2]
        raise ModelError(f"{meta_path} has no model.state_shape [layers, hidden]; re-export the model")

    def initial_state(self, batch: int = 1) -> FloatArray:
        """An all-zero recurrent state of shape ``(layers, batch, hidden)``."""
        layers, hidden = self.state_shape
        return np.zeros((layers, batch, hidden), dtype=np.float32)

    def chord_step(self, feeds: dict[str, np.ndarray], state: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Run the chord model one step.

        Args:
            feeds: at least the ``contract.COMMON_INPUTS`` arrays (int64, shape ``(B,)``); other keys
                (such as ``chord_now``) are ignored. Not modified.
            state: ``(layers, B, hidden)`` float32.

        Returns:
            ``(chord_logits (B, V), state_out)``.
        """
        run_feeds = {name: feeds[name] for name in contract.COMMON_INPUTS}
        run_feeds["state"] = state
        logits, new_state = self._chord.run(self._chord_outputs, run_feeds)
        return logits, new_state

    def note_step(self, feeds: dict[str, np.ndarray], state: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Run the note model one step.

        Args:
            feeds: the ``contract.COMMON_INPUTS`` arrays plus ``chord_now`` (int64, shape ``(B,)``).
                Not modified.
            state: ``(layers, B, hidden)`` float32.

        Returns:
            ``(melody_logits (B, Vm), velocity_logits (B, Vv), state_out)``.
        """
        run_feeds = {name: feeds[name] for name in _NOTE_TOKEN_INPUTS}
        run_feeds["state"] = state
        mel, vel, new_state = self._note.run(self._note_outputs, run_feeds)
        return mel, vel, new_state


class StepBinding:
    """Batch-1 runs of a model's two graphs on caller-owned input arrays bound once (the engine's hot path).

    ``run()`` through a feeds dict converts every input and allocates every output on each call;
    here the inputs, outputs and states are onnxruntime values bound once, so a step is just the
    graph. The caller updates the arrays of ``feeds`` in place between runs (they must stay the
    same C-contiguous int64 arrays of batch 1). Logits land in preallocated buffers that the next
    run overwrites (copy them to keep them); each model's state is double-buffered, one IOBinding
    per buffer order, so nothing is re-bound per step.

    Args:
        model: the loaded model pair.
        feeds: ``contract.NOTE_MODEL_INPUTS`` token arrays (all but ``state``), batch 1.
    """

    def __init__(self, model: Model, feeds: dict[str, np.ndarray]) -> None:
        self.model = model
        layers, hidden = model.state_shape
        missing = [n for n in _NOTE_TOKEN_INPUTS if n not in feeds]
        if missing:
            raise ModelError(f"StepBinding needs the inputs {list(_NOTE_TOKEN_INPUTS)}; missing {missing}")
        for name in _NOTE_TOKEN_INPUTS:
            arr = feeds[name]
            if arr.dtype != np.int64 or not arr.flags.c_contiguous or arr.shape[0] != 1:
                raise ModelError(f"StepBinding input {name!r} must be a C-contiguous int64 array of batch 1")
        self.chord_logits: FloatArray = np.zeros((1, contract.CHORD_VOCAB_SIZE), dtype=np.float32)
        self.melody_logits: FloatArray = np.zeros((1, contract.MELODY_VOCAB_SIZE), dtype=np.float32)
        self.velocity_logits: FloatArray = np.zeros((1, contract.NUM_VELOCITY_BINS), dtype=np.float32)
        self._chord_states = [np.zeros((layers, 1, hidden), dtype=np.float32) for _ in range(2)]
        self._note_states = [np.zeros((layers, 1, hidden), dtype=np.float32) for _ in range(2)]
        self._values: list[ort.OrtValue] = []  # keeps every bound value (and its array) alive
        chord_out = {"chord_logits": self.chord_logits}
        note_out = {"melody_logits": self.melody_logits, "velocity_logits": self.velocity_logits}
        self._chord_io = [
            self._bind(model._chord, feeds, contract.COMMON_INPUTS, self._chord_states, i, chord_out) for i in range(2)
        ]
        self._note_io = [
            self._bind(model._note, feeds, _NOTE_TOKEN_INPUTS, self._note_states, i, note_out) for i in range(2)
        ]
        self._chord_sess = model._chord
        self._note_sess = model._note
        self._chord_cur = 0
        self._note_cur = 0
        self.harmony_logits: FloatArray = np.zeros((1, contract.CHORD_VOCAB_SIZE), dtype=np.float32)
        self._harmony_states = [np.zeros((layers, 1, hidden), dtype=np.float32) for _ in range(2)]
        self._harmony_sess = model._harmony
        self._harmony_cur = 0
        self._harmony_io: list[ort.IOBinding] = []
        names = contract.HARMONY_MODEL_INPUTS[:-1]
        if model._harmony is not None and all(n in feeds for n in names):
            out = {"harmony_logits": self.harmony_logits}
            self._harmony_io = [
                self._bind(model._harmony, feeds, names, self._harmony_states, i, out) for i in range(2)
            ]

    def _bind(
        self,
        sess: ort.InferenceSession,
        feeds: dict[str, np.ndarray],
        names: tuple[str, ...],
        states: list[FloatArray],
        cur: int,
        outputs: dict[str, FloatArray],
    ) -> ort.IOBinding:
        io = sess.io_binding()
        arrays = [(name, feeds[name]) for name in names] + [("state", states[cur])]
        for name, arr in arrays:
            value = ort.OrtValue.ortvalue_from_numpy(arr)
            self._values.append(value)
            io.bind_ortvalue_input(name, value)
        for name, arr in [*outputs.items(), ("state_out", states[1 - cur])]:
            value = ort.OrtValue.ortvalue_from_numpy(arr)
            self._values.append(value)
            io.bind_ortvalue_output(name, value)
        return io

    @property
    def chord_state(self) -> FloatArray:
        """The chord model's current state ``(layers, 1, hidden)`` (a live buffer: copy to keep)."""
        return self._chord_states[self._chord_cur]

    @property
    def note_state(self) -> FloatArray:
        """The note model's current state ``(layers, 1, hidden)`` (a live buffer: copy to keep)."""
        return self._note_states[self._note_cur]

    @property
    def can_harmonise(self) -> bool:
        """The harmoniser is bound (a contract-v2 model)."""
        return bool(self._harmony_io)

    @property
    def harmony_state(self) -> FloatArray:
        """The harmoniser's current state ``(layers, 1, hidden)`` (a live buffer: copy to keep)."""
        return self._harmony_states[self._harmony_cur]

    def warm_up(self) -> None:
        """Run each bound graph once and zero the states again: onnxruntime's first run of a session
        allocates and is several times slower, so a loader thread does it before the real-time thread steps.

        The inputs are read as they are (the engine may be changing them meanwhile: the results are discarded).
        """
        self.run_chord()
        self.run_note()
        if self._harmony_io:
            self.run_harmony()
        self.reset()

    def reset(self) -> None:
        """Zero every recurrent state (a fresh sequence)."""
        for buf in (*self._chord_states, *self._note_states, *self._harmony_states):
            buf.fill(0.0)
        self._chord_cur = self._note_cur = self._harmony_cur = 0

    def run_chord(self) -> FloatArray:
        """One chord step on the bound inputs; returns :attr:`chord_logits` ``(1, V)``."""
        cur = self._chord_cur
        self._chord_sess.run_with_iobinding(self._chord_io[cur])
        self._chord_cur = 1 - cur
        return self.chord_logits

    def run_harmony(self) -> FloatArray:
        """One harmoniser step on the bound inputs (``melody_now`` / ``sounding_now`` included); returns
        :attr:`harmony_logits` ``(1, V)``."""
        if not self._harmony_io:
            self.model.require_harmony()
            raise ModelError("StepBinding was made without melody_now / sounding_now feeds")
        assert self._harmony_sess is not None
        cur = self._harmony_cur
        self._harmony_sess.run_with_iobinding(self._harmony_io[cur])
        self._harmony_cur = 1 - cur
        return self.harmony_logits

    def run_note(self) -> tuple[FloatArray, FloatArray]:
        """One note step on the bound inputs (``chord_now`` included); returns melody and velocity logits."""
        cur = self._note_cur
        self._note_sess.run_with_iobinding(self._note_io[cur])
        self._note_cur = 1 - cur
        return self.melody_logits, self.velocity_logits

"""Small random-weight ONNX models with exactly the contract's I/O, for tests.

A test helper (it imports torch; ``rtgen`` never does). The models are single-step
GRUs like the real ones: one embedding per input token, concatenated, a GRU over
one step, linear heads. Their outputs are random but deterministic for a seed.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import torch
from torch import nn

from rtgen import contract as C

_VOCABS = {
    "prev_melody": C.MELODY_VOCAB_SIZE,
    "prev_sounding": C.MELODY_VOCAB_SIZE,
    "prev_velocity": C.NUM_VELOCITY_BINS,
    "prev_chord": C.CHORD_VOCAB_SIZE,
    "prev_chord_now": C.CHORD_VOCAB_SIZE,
    "position": C.MAX_BAR_STEPS,
    "phrase": C.PHRASE_BARS,
    "chord_now": C.CHORD_VOCAB_SIZE,
}


class _StepGRU(nn.Module):
    """One step: token inputs (B,) each + state (layers, B, hidden) -> logits..., state_out."""

    def __init__(self, inputs: tuple[str, ...], heads: tuple[int, ...], hidden: int, layers: int) -> None:
        super().__init__()
        self.inputs = inputs
        emb = 16
        self.emb = nn.ModuleList(nn.Embedding(_VOCABS[name], emb) for name in inputs)
        self.gru = nn.GRU(emb * len(inputs), hidden, num_layers=layers)
        self.heads = nn.ModuleList(nn.Linear(hidden, v) for v in heads)

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        *tokens, state = args
        x = torch.cat([e(t) for e, t in zip(self.emb, tokens, strict=True)], dim=-1)  # (B, E*n)
        out, new_state = self.gru(x.unsqueeze(0), state)  # (1, B, H), (L, B, H)
        h = out[0]
        return (*(head(h) for head in self.heads), new_state)


def _export(module: nn.Module, inputs: tuple[str, ...], outputs: tuple[str, ...], hidden: int, layers: int,
            path: Path) -> None:
    batch = 2
    args = tuple(torch.zeros(batch, dtype=torch.int64) for _ in inputs[:-1]) + (torch.zeros(layers, batch, hidden),)
    dynamic = {name: {0: "batch"} for name in inputs[:-1]}
    dynamic["state"] = {1: "batch"}
    for name in outputs[:-1]:
        dynamic[name] = {0: "batch"}
    dynamic["state_out"] = {1: "batch"}
    module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the GRU batch-size warning does not apply: state is an input
        torch.onnx.export(
            module, args, str(path), input_names=list(inputs), output_names=list(outputs),
            dynamic_axes=dynamic, opset_version=17, dynamo=False,
        )  # fmt: skip


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_random_model(directory: Path, hidden: int = 32, layers: int = 1, seed: int = 0, *,
                      name: str = "random") -> Path:
    """Write ``chord.onnx``, ``note.onnx`` and ``meta.json`` of a random model into ``directory``.

    Args:
        directory: the model folder to create (parents included).
        hidden: GRU width.
        layers: GRU layers.
        seed: torch seed for the weights.
        name: the model name in meta.json.

    Returns:
        ``directory``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    chord = _StepGRU(C.CHORD_MODEL_INPUTS[:-1], (C.CHORD_VOCAB_SIZE,), hidden, layers)
    note = _StepGRU(C.NOTE_MODEL_INPUTS[:-1], (C.MELODY_VOCAB_SIZE, C.NUM_VELOCITY_BINS), hidden, layers)
    # Make the random models less uniform so sampling exercises HOLD/REST/NOTE_ON mixes.
    with torch.no_grad():
        for m in (chord, note):
            for head in m.heads:
                head.weight.mul_(3.0)
    _export(chord, C.CHORD_MODEL_INPUTS, C.CHORD_MODEL_OUTPUTS, hidden, layers, directory / "chord.onnx")
    _export(note, C.NOTE_MODEL_INPUTS, C.NOTE_MODEL_OUTPUTS, hidden, layers, directory / "note.onnx")
    n_params = {k: sum(p.numel() for p in m.parameters()) for k, m in (("chord", chord), ("note", note))}
    meta = {
        "format": "rtgen-model",
        "format_version": 1,
        "name": name,
        "contract": C.contract_summary(),
        "model": {"backbone": "gru", "layers": layers, "hidden": hidden, "params": n_params,
                  "state_shape": [layers, hidden]},
        "data": {"source": "random weights (tests/model_factory.py)", "description": "untrained", "license": "n/a"},
        "files": {f: {"sha256": _sha256(directory / f)} for f in ("chord.onnx", "note.onnx")},
    }  # fmt: skip
    (directory / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return directory

"""Small random-weight ONNX models with exactly the contract's I/O, for tests.

A test helper (it imports torch; ``rtgen`` never does). The models are single-step
GRUs like the real ones: one embedding per input token (the lookback inputs are
``(B, NUM_LOOKBACKS)``, flattened), concatenated, a GRU over
one step, linear heads. Their outputs are random but deterministic for a seed.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import torch
from torch import nn

from rtgen import contract as ct

_VOCABS = {
    "prev_melody": ct.MELODY_VOCAB_SIZE,
    "prev_sounding": ct.MELODY_VOCAB_SIZE,
    "prev_velocity": ct.NUM_VELOCITY_BINS,
    "prev_chord": ct.CHORD_VOCAB_SIZE,
    "prev_chord_now": ct.CHORD_VOCAB_SIZE,
    "position": ct.MAX_BAR_STEPS,
    "phrase": ct.PHRASE_BARS,
    "chord_now": ct.CHORD_VOCAB_SIZE,
    "lookback_melody": ct.MELODY_VOCAB_SIZE,
    "lookback_chord": ct.CHORD_VOCAB_SIZE,
    "melody_now": ct.MELODY_VOCAB_SIZE,
    "sounding_now": ct.MELODY_VOCAB_SIZE,
}
_WIDTH = {"lookback_melody": ct.NUM_LOOKBACKS, "lookback_chord": ct.NUM_LOOKBACKS}  # (B, W) inputs; others (B,)


class _StepGRU(nn.Module):
    """One step: token inputs (B,) each + state (layers, B, hidden) -> logits..., state_out."""

    def __init__(self, inputs: tuple[str, ...], heads: tuple[int, ...], hidden: int, layers: int) -> None:
        super().__init__()
        self.inputs = inputs
        emb = 16
        self.emb = nn.ModuleList(nn.Embedding(_VOCABS[name], emb) for name in inputs)
        self.gru = nn.GRU(emb * sum(_WIDTH.get(name, 1) for name in inputs), hidden, num_layers=layers)
        self.heads = nn.ModuleList(nn.Linear(hidden, v) for v in heads)

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        *tokens, state = args
        x = torch.cat([e(t).flatten(1) for e, t in zip(self.emb, tokens, strict=True)], dim=-1)  # (B, E*n)
        out, new_state = self.gru(x.unsqueeze(0), state)  # (1, B, H), (L, B, H)
        h = out[0]
        return (*(head(h) for head in self.heads), new_state)


def _export(
    module: nn.Module, inputs: tuple[str, ...], outputs: tuple[str, ...], hidden: int, layers: int, path: Path
) -> None:
    batch = 2
    tokens = tuple(
        torch.zeros((batch, _WIDTH[name]) if name in _WIDTH else (batch,), dtype=torch.int64) for name in inputs[:-1]
    )
    args = (*tokens, torch.zeros(layers, batch, hidden))
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


def make_random_model(
    directory: Path,
    hidden: int = 32,
    layers: int = 1,
    seed: int = 0,
    *,
    name: str = "random",
    contract: int = 2,
    quiet: bool = False,
) -> Path:
    """Write ``chord.onnx``, ``note.onnx``, ``harmony.onnx`` and ``meta.json`` of a random model into ``directory``.

    Args:
        directory: the model folder to create (parents included).
        hidden: GRU width.
        layers: GRU layers.
        seed: torch seed for the weights.
        name: the model name in meta.json.
        contract: token contract version; 1 writes no harmoniser (an old model folder).
        quiet: a model that would rather rest: REST, N.C. and HOLD get a large bias (a model trained on too
            little, unusual data sits there).

    Returns:
        ``directory``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    chord = _StepGRU(ct.CHORD_MODEL_INPUTS[:-1], (ct.CHORD_VOCAB_SIZE,), hidden, layers)
    note = _StepGRU(ct.NOTE_MODEL_INPUTS[:-1], (ct.MELODY_VOCAB_SIZE, ct.NUM_VELOCITY_BINS), hidden, layers)
    # Make the random models less uniform so sampling exercises HOLD/REST/NOTE_ON mixes.
    with torch.no_grad():
        for m in (chord, note):
            for head in m.heads:
                head.weight.mul_(3.0)
        if quiet:
            note.heads[0].bias[ct.MEL_REST] += 12.0
            note.heads[0].bias[ct.MEL_HOLD] += 12.0
            chord.heads[0].bias[ct.CHORD_NC] += 12.0
            chord.heads[0].bias[ct.CHORD_HOLD] += 12.0
    _export(chord, ct.CHORD_MODEL_INPUTS, ct.CHORD_MODEL_OUTPUTS, hidden, layers, directory / "chord.onnx")
    _export(note, ct.NOTE_MODEL_INPUTS, ct.NOTE_MODEL_OUTPUTS, hidden, layers, directory / "note.onnx")
    files = ["chord.onnx", "note.onnx"]
    if contract >= 2:
        harmony = _StepGRU(ct.HARMONY_MODEL_INPUTS[:-1], (ct.CHORD_VOCAB_SIZE,), hidden, layers)
        with torch.no_grad():
            harmony.heads[0].weight.mul_(3.0)
        _export(harmony, ct.HARMONY_MODEL_INPUTS, ct.HARMONY_MODEL_OUTPUTS, hidden, layers, directory / "harmony.onnx")
        files.append("harmony.onnx")
    n_params = {k: sum(p.numel() for p in m.parameters()) for k, m in (("chord", chord), ("note", note))}
    meta = {
        "format": "rtgen-model",
        "format_version": 1,
        "name": name,
        "contract": {**ct.contract_summary(), "version": contract},
        "model": {"backbone": "gru", "layers": layers, "hidden": hidden, "params": n_params,
                  "state_shape": [layers, hidden]},
        "data": {"source": "random weights (tests/model_factory.py)", "description": "untrained", "license": "n/a"},
        "files": {f: {"sha256": _sha256(directory / f)} for f in files},
    }  # fmt: skip
    (directory / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return directory

"""Export a training run to a model folder (``rtgen-train export``): two single-step ONNX graphs.

Writes ``chord.onnx`` and ``note.onnx`` (inputs and outputs named exactly as in
``rtgen.contract``, dynamic batch axis), checks them against PyTorch step by step
(export fails if any logit differs by more than :data:`PARITY_TOLERANCE`), and writes
``meta.json`` and ``MODEL_CARD.md`` (docs/internals.md §3).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from rtgen import contract as C  # noqa: N812 (short alias, used on every line)
from rtgen import library
from rtgen.errors import ModelError, RtgenError
from training.dataset import INPUT_KEYS, LOOKBACK_KEYS, Split
from training.model import (
    _CHORD_INPUTS,
    _MELODY_INPUTS,
    INPUT_VOCAB,
    LOOKBACK_INPUTS,
    ChordModel,
    CopyHead,
    Embedder,
    HarmonyModel,
    ModelConfig,
    Models,
    NoteModel,
    _Recurrent,
)
from training.prepared import read_manifest

log = logging.getLogger(__name__)

PARITY_STEPS = 1000
PARITY_TOLERANCE = 1e-4
ONNX_FILES = ("chord.onnx", "note.onnx", "harmony.onnx")
WEIGHTS_FILE = "weights.pt"  # the PyTorch weights beside the graphs, so `--init-from MODEL` can fine-tune
OPSET = 17


class _ChordStep(nn.Module):
    """ONNX signature of the chord model: contract.CHORD_MODEL_INPUTS -> CHORD_MODEL_OUTPUTS."""

    def __init__(self, model: ChordModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: Tensor) -> tuple[Tensor, Tensor]:
        *tokens, state = args
        feeds = dict(zip(C.CHORD_MODEL_INPUTS[:-1], tokens, strict=True))
        return self.model.step(feeds, state)


class _NoteStep(nn.Module):
    """ONNX signature of the note model: contract.NOTE_MODEL_INPUTS -> NOTE_MODEL_OUTPUTS."""

    def __init__(self, model: NoteModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        *tokens, state = args
        feeds = dict(zip(C.NOTE_MODEL_INPUTS[:-1], tokens, strict=True))
        return self.model.step(feeds, state)


class _HarmonyStep(nn.Module):
    """ONNX signature of the harmoniser: contract.HARMONY_MODEL_INPUTS -> HARMONY_MODEL_OUTPUTS."""

    def __init__(self, model: HarmonyModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: Tensor) -> tuple[Tensor, Tensor]:
        *tokens, state = args
        feeds = dict(zip(C.HARMONY_MODEL_INPUTS[:-1], tokens, strict=True))
        return self.model.step(feeds, state)


def _embedding(embed: Embedder, name: str) -> nn.Embedding:
    emb = embed.emb[name]
    assert isinstance(emb, nn.Embedding)
    return emb


def _gru_param(gru: nn.GRU, name: str, layer: int) -> Tensor:
    param: Tensor = getattr(gru, f"{name}_l{layer}")
    return param


def _embedder_columns(embed: Embedder) -> list[tuple[str, int | None, str, int, int]]:
    """Where each input's contribution sits in the Embedder output, in its concatenation order.

    Returns:
        ``(name, slot, kind, start, width)`` per block: ``slot`` is the lookback slot (``None`` for plain
        inputs), ``kind`` is ``"emb"`` or ``"feat"``; columns ``start:start + width`` of the first GRU layer's
        input weights read that block.
    """
    blocks: list[tuple[str, int | None, str, int, int]] = []
    col = 0
    for n in embed.names:
        if n not in LOOKBACK_INPUTS:
            dim = _embedding(embed, n).embedding_dim
            blocks.append((n, None, "emb", col, dim))
            col += dim
    for n in embed.names:
        if n in LOOKBACK_INPUTS:
            dim = _embedding(embed, n).embedding_dim
            for k in range(C.NUM_LOOKBACKS):
                blocks.append((n, k, "emb", col, dim))
                col += dim
    if embed.features:
        for n in embed.names:
            if n in _MELODY_INPUTS + _CHORD_INPUTS:
                dim = int((embed.mel_feat if n in _MELODY_INPUTS else embed.chord_feat).shape[1])
                blocks.append((n, None, "feat", col, dim))
                col += dim
    if col != embed.out_dim:
        raise ModelError(f"fused export: embedder columns add up to {col}, expected {embed.out_dim}")
    return blocks


class _FusedRecurrent(nn.Module):
    """The embedder + GRU of a trained model, rewritten to be cheap at batch 1 (and exact in eval mode).

    Each input's embedding (and its fixed feature table) is folded through the first GRU layer's input
    weights into one ``(vocab, 3H)`` table per input slot (one slot per lookback position); all tables
    are stacked into one, so the first layer's input gates are one Gather of the offset token indices
    and a sum over the slots. Both GRU biases of the r and z gates (and the first layer's input bias) are folded
    into the tables / input biases. The GRU cells are written out (r, z, n exactly as ``torch.nn.GRU``),
    so ONNX gets a few Gemm/Add/Sigmoid/Tanh/Mul nodes instead of the GRU op and its reshapes.
    Dropout is the identity in eval mode, so it is left out.
    """

    offsets: Tensor
    table: Tensor
    ones: Tensor
    w_ih: nn.ParameterList
    b_ih: nn.ParameterList
    w_hh: nn.ParameterList
    b_hh: nn.ParameterList

    def __init__(self, rec: _Recurrent) -> None:
        super().__init__()
        embed, gru, cfg = rec.embed, rec.rnn, rec.cfg
        hidden = cfg.hidden
        self.hidden = hidden
        self.layers = cfg.layers
        self.input_names = rec.input_names
        with torch.no_grad():
            w_ih0 = _gru_param(gru, "weight_ih", 0).detach().double()  # (3H, E)
            # Table order = index column order in forward: the (B,) inputs, then each lookback slot.
            slots: list[tuple[str, int | None]] = [(n, None) for n in rec.input_names if n not in LOOKBACK_INPUTS]
            for n in rec.input_names:
                if n in LOOKBACK_INPUTS:
                    slots += [(n, k) for k in range(C.NUM_LOOKBACKS)]
            tables: dict[tuple[str, int | None], Tensor] = {
                s: torch.zeros(INPUT_VOCAB[s[0]], 3 * hidden, dtype=torch.float64) for s in slots
            }
            for n, k, kind, start, width in _embedder_columns(embed):
                if kind == "emb":
                    src = _embedding(embed, n).weight.detach().double()
                else:
                    src = (embed.mel_feat if n in _MELODY_INPUTS else embed.chord_feat).double()
                tables[(n, k)] += src @ w_ih0[:, start : start + width].T
            # The r and z gates add both biases: fold the hidden-side ones into the input side too.
            b_hh0 = _gru_param(gru, "bias_hh", 0).detach().double()
            bias0 = _gru_param(gru, "bias_ih", 0).detach().double().clone()
            bias0[: 2 * hidden] += b_hh0[: 2 * hidden]
            tables[slots[0]] += bias0  # every step reads exactly one row of slot 0's table
            offsets, start_row = [], 0
            for s in slots:
                offsets.append(start_row)
                start_row += tables[s].shape[0]
            self.register_buffer("table", torch.cat([tables[s] for s in slots]).float())
            self.register_buffer("offsets", torch.tensor(offsets, dtype=torch.int64))
            self.register_buffer("ones", torch.ones(1, len(slots)))
            self.w_ih = nn.ParameterList()
            self.b_ih = nn.ParameterList()
            self.w_hh = nn.ParameterList()
            self.b_hh = nn.ParameterList()
            for layer in range(cfg.layers):
                b_ih = _gru_param(gru, "bias_ih", layer).detach().double().clone()
                b_hh = _gru_param(gru, "bias_hh", layer).detach().double().clone()
                b_ih[: 2 * hidden] += b_hh[: 2 * hidden]
                b_hh[: 2 * hidden] = 0.0  # only b_hn stays inside r * (W_hn h + b_hn)
                if layer > 0:
                    self.w_ih.append(nn.Parameter(_gru_param(gru, "weight_ih", layer).detach().clone()))
                    self.b_ih.append(nn.Parameter(b_ih.float()))
                self.w_hh.append(nn.Parameter(_gru_param(gru, "weight_hh", layer).detach().clone()))
                self.b_hh.append(nn.Parameter(b_hh.float()))

    def _cell(self, gi: Tensor, h: Tensor, layer: int) -> Tensor:
        """One GRU cell from the input gates ``gi`` (B, 3H) (biases included) and the state ``h`` (B, H)."""
        hidden = self.hidden
        gh = nn.functional.linear(h, self.w_hh[layer], self.b_hh[layer])  # (B, 3H)
        i_rz, i_n = gi.split([2 * hidden, hidden], dim=1)
        h_rz, h_n = gh.split([2 * hidden, hidden], dim=1)
        r, z = torch.sigmoid(i_rz + h_rz).split([hidden, hidden], dim=1)
        n = torch.tanh(i_n + r * h_n)
        return n + z * (h - n)  # == (1 - z) * n + z * h

    def forward(self, tokens: list[Tensor], state: Tensor) -> tuple[Tensor, Tensor]:
        """tokens: one (B,) or (B, K) int64 tensor per input name; state (L, B, H) -> top output (B, H), state."""
        plain = [t for n, t in zip(self.input_names, tokens, strict=True) if n not in LOOKBACK_INPUTS]
        lookbacks = [t for n, t in zip(self.input_names, tokens, strict=True) if n in LOOKBACK_INPUTS]
        # One Concat + Reshape + Transpose instead of an Unsqueeze per (B,) input.
        idx = torch.cat([torch.cat(plain).reshape(len(plain), -1).t(), *lookbacks], dim=1) + self.offsets  # (B, S)
        rows = nn.functional.embedding(idx, self.table)  # (B, S, 3H)
        # Sum over the slots as a MatMul with ones: onnxruntime's ReduceSum over a middle axis is several
        # times slower at batch 1. (1, S) @ (B, S, 3H) -> (B, 1, 3H)
        x = torch.matmul(self.ones, rows).squeeze(1)  # (B, 3H): layer 0's input gates, biases included
        outs = []
        for layer in range(self.layers):
            if layer > 0:
                x = nn.functional.linear(x, self.w_ih[layer - 1], self.b_ih[layer - 1])
            x = self._cell(x, state[layer], layer)
            outs.append(x)
        return x, torch.stack(outs, dim=0)


class _FusedChordStep(nn.Module):
    """Fused ONNX graph of the chord model or the harmoniser (same signature as :class:`_ChordStep`)."""

    def __init__(self, model: ChordModel | HarmonyModel) -> None:
        super().__init__()
        self.rec = _FusedRecurrent(model)
        with torch.no_grad():
            # head(h) + pc_head(h) @ templates.T == h @ (W_head + templates @ W_pc).T + b_head
            w = model.head.weight.detach().double() + model.templates.double() @ model.pc_head.weight.detach().double()
            self.w_head = nn.Parameter(w.float())
            self.b_head = nn.Parameter(model.head.bias.detach().clone())
        copy_head = model.copy_head if isinstance(model, ChordModel) else None
        self.copy = _FusedCopy(copy_head, model.input_names, "lookback_chord")

    def forward(self, *args: Tensor) -> tuple[Tensor, Tensor]:
        *tokens, state = args
        h, state_out = self.rec(list(tokens), state)
        return self.copy(nn.functional.linear(h, self.w_head, self.b_head), h, tokens), state_out


class _FusedCopy(nn.Module):
    """The copy head (if the model has one) added to the fused graph's logits; the identity without one."""

    def __init__(self, head: CopyHead | None, input_names: tuple[str, ...], lookback: str) -> None:
        super().__init__()
        self.head = head
        self.index = input_names.index(lookback) if head is not None else -1

    def forward(self, logits: Tensor, h: Tensor, tokens: list[Tensor]) -> Tensor:
        """logits (B, V), top GRU output h (B, H), the graph's token inputs."""
        return logits if self.head is None else logits + self.head(h, tokens[self.index])


class _FusedNoteStep(nn.Module):
    """Fused ONNX graph of the note model (same signature as :class:`_NoteStep`)."""

    def __init__(self, model: NoteModel) -> None:
        super().__init__()
        self.rec = _FusedRecurrent(model)
        self.melody_head = model.melody_head
        self.velocity_head = model.velocity_head
        self.copy = _FusedCopy(model.copy_head, model.input_names, "lookback_melody")

    def forward(self, *args: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        *tokens, state = args
        h, state_out = self.rec(list(tokens), state)
        return self.copy(self.melody_head(h), h, tokens), self.velocity_head(h), state_out


def step_modules(models: Models, *, fused: bool = True) -> tuple[nn.Module, nn.Module]:
    """The chord and note step modules that get exported to ONNX (contract signatures, eval mode).

    Args:
        models: the trained models.
        fused: fold the embeddings into the first GRU layer and write the GRU cells out (fast at batch 1,
            the default); ``False`` exports the training modules as they are (the GRU op).
    """
    chord: nn.Module
    note: nn.Module
    if fused:
        chord, note = _FusedChordStep(models.chord), _FusedNoteStep(models.note)
    else:
        chord, note = _ChordStep(models.chord), _NoteStep(models.note)
    return chord.eval(), note.eval()


def harmony_module(models: Models, *, fused: bool = True) -> nn.Module:
    """The harmoniser's step module for ONNX (fused like the chord model's: same head structure)."""
    module = _FusedChordStep(models.harmony) if fused else _HarmonyStep(models.harmony)
    return module.eval()


def _dummy_inputs(names: tuple[str, ...], cfg: ModelConfig, batch: int = 2) -> tuple[Tensor, ...]:
    args: list[Tensor] = []
    for name in names[:-1]:
        shape = (batch, C.NUM_LOOKBACKS) if name in LOOKBACK_KEYS else (batch,)
        args.append(torch.zeros(shape, dtype=torch.int64))
    args.append(torch.zeros(cfg.layers, batch, cfg.hidden))
    return tuple(args)


def _export_graph(module: nn.Module, inputs: tuple[str, ...], outputs: tuple[str, ...], cfg: ModelConfig,
                  path: Path) -> None:  # fmt: skip
    dynamic: dict[str, dict[int, str]] = {name: {0: "batch"} for name in inputs[:-1]}
    dynamic["state"] = {1: "batch"}
    dynamic |= {name: {0: "batch"} for name in outputs[:-1]}
    dynamic["state_out"] = {1: "batch"}
    module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the GRU batch-size warning does not apply: the state is an input
        torch.onnx.export(
            module, _dummy_inputs(inputs, cfg), str(path), input_names=list(inputs), output_names=list(outputs),
            dynamic_axes=dynamic, opset_version=OPSET, dynamo=False,
        )  # fmt: skip


def load_run(run: Path) -> tuple[Models, dict[str, Any]]:
    """The best (else latest) weights of a run, in eval mode, and the checkpoint dict."""
    run = Path(run)
    for name in ("best.pt", "checkpoint.pt"):
        path = run / name
        if path.is_file():
            try:
                ckpt = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as err:
                raise RtgenError(f"cannot read {path} ({err}); train again (`rtgen-train train`)") from err
            cfg_dict = ckpt.get("model_config") or ckpt["config"]["model"]
            models = Models(ModelConfig.from_dict(cfg_dict))
            models.load_state_dict(ckpt["models"])
            models.eval()
            return models, ckpt
    raise RtgenError(f"no trained weights in {run} (best.pt or checkpoint.pt); run `rtgen-train train --out {run}`")


def _parity_streams(data: Path | None, steps: int, batch: int = 2) -> tuple[dict[str, np.ndarray], str]:
    """Token streams (steps, batch[, K]) per input: held-out data if there is enough, else random tokens."""
    if data is not None:
        for split_name in ("valid", "test", "train"):
            try:
                split = Split(data, split_name)
            except RtgenError:
                continue
            if split.steps >= steps * batch:
                streams = {
                    k: np.stack([split.arrays[k][i * steps : (i + 1) * steps] for i in range(batch)], axis=1)
                    for k in INPUT_KEYS
                }
                return streams, f"{split_name} data"
    rng = np.random.default_rng(0)
    out = {}
    for k in INPUT_KEYS:
        shape = (steps, batch, C.NUM_LOOKBACKS) if k in LOOKBACK_KEYS else (steps, batch)
        out[k] = rng.integers(0, INPUT_VOCAB[k], size=shape, dtype=np.int64)
    return out, "random tokens"


def check_parity(
    models: Models, model_dir: Path, data: Path | None = None, steps: int = PARITY_STEPS
) -> dict[str, Any]:
    """Run ``steps`` steps through PyTorch and onnxruntime side by side, each feeding back its own state.

    Returns:
        ``{"steps": n, "batch": b, "source": "valid data" | "random tokens",
        "max_abs_diff": {"chord": x, "note": y, "harmony": z}}`` (the largest difference over every logit
        and state output).

    Raises:
        ModelError: if a difference exceeds :data:`PARITY_TOLERANCE`.
    """
    import onnxruntime as ort

    streams, source = _parity_streams(data, steps)
    batch = streams["position"].shape[1]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = {
        m: ort.InferenceSession(str(model_dir / f"{m}.onnx"), opts, providers=["CPUExecutionProvider"])
        for m in ("chord", "note", "harmony")
    }
    cfg = models.cfg
    zeros = np.zeros((cfg.layers, batch, cfg.hidden), dtype=np.float32)
    st_t = {m: torch.from_numpy(zeros.copy()) for m in ("chord", "note", "harmony")}
    st_o = {m: zeros.copy() for m in ("chord", "note", "harmony")}
    diff = {"chord": 0.0, "note": 0.0, "harmony": 0.0}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one-step batches are tiny: more threads only spin (badly, on a busy machine)
    try:
        _parity_loop(models, sess, streams, st_t, st_o, diff)
    finally:
        torch.set_num_threads(threads)
    worst = max(diff, key=lambda k: diff[k])
    if diff[worst] >= PARITY_TOLERANCE:
        raise ModelError(
            f"ONNX parity check failed for {model_dir / (worst + '.onnx')}: max |difference| to PyTorch "
            f"{diff[worst]:.2e} over {steps} steps (tolerance {PARITY_TOLERANCE:.0e}); "
            "the exported graph does not compute what the trained model does"
        )
    return {"steps": steps, "batch": batch, "source": source, "max_abs_diff": diff}


def _parity_loop(
    models: Models,
    sess: dict[str, Any],
    streams: dict[str, np.ndarray],
    st_t: dict[str, Tensor],
    st_o: dict[str, np.ndarray],
    diff: dict[str, float],
) -> None:
    """Step both runtimes through ``streams``; updates ``diff`` with the largest |difference| per model."""
    steps = streams["position"].shape[0]
    with torch.no_grad():
        for t in range(steps):
            feeds = {k: v[t] for k, v in streams.items()}
            tf = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()}
            for m, names, fn in (
                ("chord", C.CHORD_MODEL_INPUTS, models.chord.step),
                ("note", C.NOTE_MODEL_INPUTS, models.note.step),
                ("harmony", C.HARMONY_MODEL_INPUTS, models.harmony.step),
            ):
                *logits_t, st_t[m] = fn({k: tf[k] for k in names[:-1]}, st_t[m])
                *logits_o, st_o[m] = sess[m].run(None, {**{k: feeds[k] for k in names[:-1]}, "state": st_o[m]})
                for a, b in zip([*logits_t, st_t[m]], [*logits_o, st_o[m]], strict=True):
                    diff[m] = max(diff[m], float(np.abs(a.numpy() - b).max()))


def sha256(path: Path) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _portable(source: str) -> str:
    """A source folder relative to the working directory when that is shorter (no machine paths in cards)."""
    try:
        rel = os.path.relpath(source)
    except ValueError:  # another drive on Windows
        return source
    return rel if len(rel) < len(source) else source


def _data_meta(data: Path | None) -> dict[str, Any]:
    if data is None:
        return {"source": "unknown", "description": "not recorded (export without --data)", "license": "unknown"}
    m = read_manifest(data)
    splits: dict[str, Any] = m.get("splits", {})  # type: ignore[assignment]
    source = _portable(str(m.get("source", "unknown")))
    nottingham = "nottingham" in source.lower()
    files = {k: len(v.get("files", [])) for k, v in splits.items()}
    desc = (
        "Nottingham Music Database folk tunes as cleaned by Jukedeck (jukedeck/nottingham-dataset, GNU GPLv3): "
        "ABC transcriptions rendered to MIDI, melody and chord tracks"
        if nottingham
        else f"MIDI files from {source}"
    )
    return {
        "source": source,
        "description": desc,
        "license": "GPL-3.0-or-later" if nottingham else "see the license of the source files",
        "files": files,
        "steps": {k: v.get("steps") for k, v in splits.items()},
        "split_method": m.get("split_method"),
        "skipped": m.get("skipped", {}),
        "prepared": m.get("created"),
    }


def _training_meta(run: Path, ckpt: dict[str, Any]) -> dict[str, Any]:
    hist_path = run / "history.json"
    history: list[dict[str, Any]] = json.loads(hist_path.read_text()) if hist_path.is_file() else []
    cfg_path = run / "config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    best_epoch = ckpt.get("epoch", history[-1]["epoch"] if history else 0)
    best = next((h for h in history if h["epoch"] == best_epoch), None)
    tok = [h["tokens_per_s"] for h in history if h.get("tokens_per_s")]
    return {
        "epochs": len(history),
        "seconds": round(sum(h.get("seconds", 0.0) for h in history), 1),
        "best_epoch": best_epoch,
        "valid_nll": best["valid"] if best else ckpt.get("valid"),
        "train_nll": best["train"] if best else None,
        "tokens_per_s": round(float(np.mean(tok)), 1) if tok else None,
        "config": {k: v for k, v in cfg.items() if k not in ("data", "model")},
    }


def export(
    run: Path, out: Path, data: Path | None = None, name: str | None = None, *, fused: bool = True
) -> dict[str, Any]:
    """Export a run's best weights to a model folder and verify ONNX-vs-PyTorch parity.

    Beside the graphs goes :data:`WEIGHTS_FILE` (the PyTorch weights and architecture, read by
    ``rtgen-train train --init-from MODEL``); the daemon never reads it.

    Args:
        run: training run folder (``best.pt`` or ``checkpoint.pt``).
        out: model folder to write (created).
        data: prepared data folder, for meta.json's data description and real parity streams.
        name: model name in meta.json (default: the folder name).
        fused: export the fused single-step graphs (see :func:`step_modules`); the parity check always
            compares against the original training model.

    Returns:
        The meta.json content.

    Raises:
        RtgenError: no trained weights; ModelError: the parity check failed.
    """
    run, out = Path(run), Path(out)
    t0 = time.perf_counter()
    models, ckpt = load_run(run)
    cfg = models.cfg
    out.mkdir(parents=True, exist_ok=True)
    chord_step, note_step = step_modules(models, fused=fused)
    _export_graph(chord_step, C.CHORD_MODEL_INPUTS, C.CHORD_MODEL_OUTPUTS, cfg, out / "chord.onnx")
    _export_graph(note_step, C.NOTE_MODEL_INPUTS, C.NOTE_MODEL_OUTPUTS, cfg, out / "note.onnx")
    _export_graph(harmony_module(models, fused=fused), C.HARMONY_MODEL_INPUTS, C.HARMONY_MODEL_OUTPUTS, cfg,
                  out / "harmony.onnx")  # fmt: skip
    parity = check_parity(models, out, data)
    torch.save({"models": models.state_dict(), "model_config": cfg.to_dict()}, out / WEIGHTS_FILE)
    meta = {
        "format": "rtgen-model",
        "format_version": 1,
        "name": name or out.name,
        "contract": C.contract_summary(),
        "model": {
            "backbone": cfg.backbone, "layers": cfg.layers, "hidden": cfg.hidden, "params": models.param_counts(),
            "state_shape": [cfg.layers, cfg.hidden], "config": cfg.to_dict(), "opset": OPSET,
            "graph": "fused" if fused else "gru",
        },
        "data": _data_meta(data),
        "training": _training_meta(run, ckpt),
        "parity": parity,
        "exported": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "files": {f: {"sha256": sha256(out / f), "bytes": (out / f).stat().st_size} for f in ONNX_FILES},
    }  # fmt: skip
    library.write_meta(out, meta)
    write_model_card(out)
    log.info(
        "exported %s in %.1f s: parity max diff chord %.1e note %.1e",
        out, time.perf_counter() - t0, parity["max_abs_diff"]["chord"], parity["max_abs_diff"]["note"],
    )  # fmt: skip
    return meta


def record_timings(model_dir: Path, timings: dict[str, float]) -> None:
    """Merge phase timings (seconds) into meta.json ``timings`` and re-render the model card.

    The sha256 entries cover the .onnx files only, so they stay valid.
    """
    meta = library.read_meta(model_dir)
    meta["timings"] = {**meta.get("timings", {}), **{k: round(float(v), 2) for k, v in timings.items()}}
    library.write_meta(Path(model_dir), meta)
    write_model_card(model_dir)


def _fmt(x: Any, digits: int = 3) -> str:
    if isinstance(x, bool) or not isinstance(x, int | float):
        return "—"
    return str(x) if isinstance(x, int) else f"{x:.{digits}f}"


def write_model_card(model_dir: Path) -> Path:
    """Render ``MODEL_CARD.md`` from meta.json (call again after adding metrics or timings)."""
    model_dir = Path(model_dir)
    meta = library.read_meta(model_dir)
    m, d, tr = meta.get("model", {}), meta.get("data", {}), meta.get("training", {})
    files = d.get("files", {})
    valid = tr.get("valid_nll") or {}
    lines = [
        f"# rtgen model `{meta.get('name')}`",
        "",
        "Small recurrent models that generate and accompany music one sixteenth-note step at a time, for the",
        "rtgen real-time instrument: a **chord model** p(chord_t | melody_<t, chord_<t, position), a **note model**",
        "p(melody_t, velocity_t | melody_<t, chord_<=t, position) and a **harmoniser** p(chord sounding at t |",
        "melody_<=t, position), which accompanies a player (it hears the note of the step, never its own chords).",
        "All are single-step ONNX graphs "
        f"(`chord.onnx`, `note.onnx`, `harmony.onnx`, opset {m.get('opset', OPSET)}) with a recurrent state of shape "
        f"(layers={m.get('layers')}, batch, hidden={m.get('hidden')}), token contract version "
        f"{meta.get('contract', {}).get('version')}.",
        "",
        "## Model",
        "",
        f"- backbone: {m.get('backbone')} {m.get('layers')} x {m.get('hidden')}; parameters: chord "
        f"{m.get('params', {}).get('chord', '?'):,}, note {m.get('params', {}).get('note', '?'):,}, harmoniser "
        f"{m.get('params', {}).get('harmony', 0):,}",
        "- inputs: previous melody and chord tokens (raw and resolved), velocity bin, position in bar, bar in",
        "  phrase, the tokens at the same position 1/2/4/8 bars earlier; the note model also sees the current chord",
        *(
            [
                "- copy head (chord and note models): a score per lookback, from the GRU's state, added to the logit "
                "of the token it points at",
                "  (repeating what was played 1, 2, 4 or 8 bars back)",
            ]
            if (m.get("config") or {}).get("copy")
            else []
        ),
        f"- ONNX-vs-PyTorch parity over {meta.get('parity', {}).get('steps', '?')} steps: max |diff| chord "
        f"{meta.get('parity', {}).get('max_abs_diff', {}).get('chord', float('nan')):.1e}, note "
        f"{meta.get('parity', {}).get('max_abs_diff', {}).get('note', float('nan')):.1e}, harmoniser "
        f"{meta.get('parity', {}).get('max_abs_diff', {}).get('harmony', float('nan')):.1e}",
        "",
        "## Data",
        "",
        f"- {d.get('description', 'unknown')}",
        f"- source: `{d.get('source', 'unknown')}`; license of the data: {d.get('license', 'unknown')}",
        "- files per split: " + (", ".join(f"{k} {v}" for k, v in files.items()) or "unknown"),
        f"- split: {d.get('split_method') or 'unknown'} (by file, so no tune is in two splits)",
        "- training windows are transposed at random to all 12 keys",
        "- this model is derived from GPLv3 data and is distributed under GPL-3.0-or-later, like rtgen",
        "",
        "## Training",
        "",
        f"- {tr.get('epochs', '?')} epochs in {_fmt(tr.get('seconds'), 0)} s, best epoch {tr.get('best_epoch', '?')},"
        f" {_fmt(tr.get('tokens_per_s'), 0)} tokens/s",
        f"- valid NLL per step (nats): chord {_fmt(valid.get('chord'))} (at chord changes "
        f"{_fmt(valid.get('chord_change'))}), melody {_fmt(valid.get('melody'))} (at note-ons "
        f"{_fmt(valid.get('melody_note_on'))}), harmoniser {_fmt(valid.get('harmony'))} (the sounding chord)",
        "",
        "## Evaluation (test split)",
        "",
    ]
    metrics = meta.get("metrics", {}).get("test")
    if metrics:
        lines += [
            "Per-step NLL in nats on the held-out test tunes. Baselines on the same split and tokens: `*_ngram` is",
            "the plain n-gram of each stream in the original keys; `*_strongest` the strongest baseline that sees what",
            "the model sees (n-grams on the 12 transposed keys, given the other stream and the lookbacks; named in",
            "`note_strongest` / `chord_strongest`); `*_ratio*` is the model's NLL over the baseline's:",
            "",
        ]
        lines += ["| metric | value |", "|---|---|"]
        scalar = {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        lines += [f"| {k} | {_fmt(v)} |" for k, v in scalar.items()]
        acc = (metrics.get("accompaniment") or {}).get("model")
        if isinstance(acc, dict):
            lines += ["", f"Accompanying the human melodies (the daemon's accompany path): hit {_fmt(acc.get('hit'))}, "
                      f"F1 vs the human chords {_fmt(acc.get('f1'))}, {_fmt(acc.get('changes_per_bar'), 2)} chord "
                      "changes per bar (see EVALUATION.md for the baselines)."]  # fmt: skip
        if (model_dir / "EVALUATION.md").is_file():
            lines += ["", "Full report: [EVALUATION.md](EVALUATION.md)."]
    else:
        lines.append("Not evaluated yet: run `rtgen-train evaluate --model MODEL_DIR --data DATA`.")
    timings = meta.get("timings")
    if timings:
        lines += ["", "## Build times", "", ", ".join(f"{k} {_fmt(v, 0)} s" for k, v in timings.items())]
    lines += [
        "",
        "## Retraining",
        "",
        "```",
        "make train",
        "# or",
        "rtgen-train all --midi-dir ../shared/data/nottingham/MIDI --out exported_models/default",
        "```",
        "",
        "## Limits",
        "",
        "Trained on one folk-tune corpus: expect reels, jigs and waltzes in major and minor keys with simple",
        "triadic harmony; other styles are out of its experience.",
        "",
    ]
    path = model_dir / "MODEL_CARD.md"
    path.write_text("\n".join(lines))
    return path


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``export`` phase to the ``rtgen-train`` parser."""
    p = subparsers.add_parser("export", help="export a run to ONNX (with a parity check), meta.json and MODEL_CARD.md")
    p.add_argument("--run", type=Path, required=True, help="training run folder")
    p.add_argument("--out", type=Path, required=True, help="model folder to write")
    p.add_argument("--data", type=Path, default=None, help="prepared data (describes the data in meta.json)")
    p.add_argument("--name", default=None, help="model name (default: the folder name)")
    p.add_argument(
        "--unfused", action="store_true", help="export the training graphs as they are (ONNX GRU op; slower)"
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    meta = export(run=args.run, out=args.out, data=args.data, name=args.name, fused=not args.unfused)
    sizes = ", ".join(f"{f} {v['bytes'] / 1e6:.2f} MB" for f, v in meta["files"].items())
    diff = meta["parity"]["max_abs_diff"]
    print(f"export: {args.out} ({sizes}); parity max |diff| chord {diff['chord']:.1e}, note {diff['note']:.1e}")
    return 0

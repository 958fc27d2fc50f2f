"""Export a polyphonic checkpoint (:mod:`training.poly`) to a model folder rtgen plays without torch.

One ONNX graph, ``poly.onnx``, makes one whole step::

    prev (B, P), state (L, B, H), draws (B, P), clamp (B, P), observed (B, P) bool, pos (B,), temperature (B,)
      -> frame (B, P), logp (B, P), state_out (L, B, H)

The GRU cell is written out (as :class:`training.export._FusedRecurrent` does for the melody models) and the
NADE's within-step loop is unrolled over the pitches, top pitch first, with the sampling inside: pitch ``k``
is on when ``z_k / T > logit(draw_k)``, i.e. ``draw_k < sigmoid(z_k / T)``, the draw passed in so the caller
owns the randomness. The comparison is rearranged so an unrolled pitch costs five nodes (Sigmoid, MatMul,
Greater, Add, Where): ``s . V_k > T logit(draw_k) - b_v,k``, with observed pitches' thresholds set to -inf
(clamped on) or +inf (clamped off). ``logp`` is each pitch's log-probability of its value at temperature
``T``; with everything observed the graph only scores a frame and advances the state (the daemon's
``feed``).

A three-state model (``states=3``: off, onset, held per pitch, and a velocity bin per onset) exports
:class:`PolyStep3` instead, with the inputs and outputs of ``rtgen.generation.poly.INPUTS3`` / ``OUTPUTS3``::

    prev (B, P) codes, prev_velocity (B, P) bins, state, draws (B, P, 3), velocity_draws (B, P), clamp (B, P) codes,
    observed, pos, temperature -> frame (B, P) codes, velocity (B, P) bins, logp (B, P), state_out

``draws`` is ``(B, P, 3)`` there: a pitch's state is drawn as :meth:`training.poly.PolyModel.sample_step3`
draws it, Gumbel-max (``argmax(z + T g)``, ``g = -log(-log(draw))``), with the noise, the biases and the
clamped pitches (``+inf`` on the clamped code, ``-inf`` on the others) folded into one ``(B, P, 3)`` offset
before the loop, so an unrolled pitch costs six nodes (Sigmoid, MatMul, Add, ArgMax, Gather, Add). The
onsets' velocity bins are drawn after the loop for all pitches at once; ``logp`` is each pitch's state
log-probability (the velocities' are left out).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor, nn

from rtgen import library
from rtgen.errors import ModelError, RtgenError
from rtgen.generation import poly as rt_poly
from training import poly

log = logging.getLogger(__name__)

OPSET = 17
GRAPH_FILE = rt_poly.GRAPH_FILE
INPUTS = rt_poly.INPUTS
OUTPUTS = rt_poly.OUTPUTS


class PolyStep(nn.Module):
    """One step of a NADE :class:`training.poly.PolyModel` with the sampling in the graph (module docstring)."""

    def __init__(self, model: poly.PolyModel) -> None:
        super().__init__()
        cfg = model.cfg
        if cfg.head != "nade":
            raise RtgenError(f"only the nade head exports to a sampling step graph, not {cfg.head!r}")
        self.cfg = cfg
        self.inp = model.inp
        self.pos = model.pos
        self.rnn = model.rnn
        self.to_bv = model.to_bv
        self.to_bh = model.to_bh
        P = cfg.n_pitches  # noqa: N806
        with torch.no_grad():
            # One constant per unrolled pitch, so no Gather is left per step.
            self.v_cols = [model.V[k].detach().clone().reshape(-1, 1) for k in range(P)]  # (Hn, 1)
            self.w_rows = [model.W[k].detach().clone().reshape(1, -1) for k in range(P)]  # (1, Hn)

    def _cell(self, x: Tensor, h: Tensor, layer: int) -> Tensor:
        """``torch.nn.GRU``'s cell, written out (r, z, n as PyTorch defines them)."""
        w_ih = getattr(self.rnn, f"weight_ih_l{layer}")
        w_hh = getattr(self.rnn, f"weight_hh_l{layer}")
        b_ih = getattr(self.rnn, f"bias_ih_l{layer}")
        b_hh = getattr(self.rnn, f"bias_hh_l{layer}")
        hidden = self.cfg.hidden
        gi = nn.functional.linear(x, w_ih, b_ih)
        gh = nn.functional.linear(h, w_hh, b_hh)
        i_rz, i_n = gi.split([2 * hidden, hidden], dim=1)
        h_rz, h_n = gh.split([2 * hidden, hidden], dim=1)
        r, z = torch.sigmoid(i_rz + h_rz).split([hidden, hidden], dim=1)
        n = torch.tanh(i_n + r * h_n)
        return n + z * (h - n)

    def _recur(self, x: Tensor, state: Tensor, pos: Tensor) -> tuple[Tensor, Tensor]:
        """The GRU stack on input ``x`` (B, E) (plus the position embedding): top output (B, H), state_out."""
        if self.pos is not None:
            x = x + self.pos(pos)
        outs = []
        for layer in range(self.cfg.layers):
            x = self._cell(x, state[layer], layer)
            outs.append(x)
        return x, torch.stack(outs, dim=0)

    def forward(
        self,
        prev: Tensor,
        state: Tensor,
        draws: Tensor,
        clamp: Tensor,
        observed: Tensor,
        pos: Tensor,
        temperature: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """See the module docstring; pitch order is MIDI order (column j = pitch j) in and out."""
        x, state_out = self._recur(self.inp(prev), state, pos)
        t = temperature.unsqueeze(1)  # (B, 1)
        bv = self.to_bv(x)  # (B, P) NADE order
        a = self.to_bh(x)  # (B, Hn)
        logit_draw = torch.log(draws) - torch.log1p(-draws)
        inf = torch.full_like(draws, float("inf"))
        fixed = torch.where(clamp > 0.5, -inf, inf)
        thr = torch.where(observed, fixed, t * logit_draw).flip(1) - bv  # (B, P) NADE order
        thresholds = thr.split(1, dim=1)
        cs, vs = [], []
        for k in range(self.cfg.n_pitches):
            c = torch.sigmoid(a) @ self.v_cols[k]  # (B, 1)
            v = c > thresholds[k]
            cs.append(c)
            vs.append(v)
            if k + 1 < self.cfg.n_pitches:
                a = torch.where(v, a + self.w_rows[k], a)
        z = (torch.cat(cs, dim=1) + bv).flip(1) / t  # (B, P) pitch order
        frame = torch.cat(vs[::-1], dim=1).float()  # (B, P) pitch order
        # log sigmoid(+-z), written out: the exported BCE-with-logits gives 0 * log(0) = NaN for far-off pitches
        signed = torch.where(frame > 0.5, -z, z)
        logp = -(torch.relu(signed) + torch.log(1.0 + torch.exp(-signed.abs())))
        return frame, logp, state_out


class PolyStep3(PolyStep):
    """One step of a three-state :class:`training.poly.PolyModel` (module docstring), sampling in the graph."""

    def __init__(self, model: poly.PolyModel) -> None:
        nn.Module.__init__(self)
        cfg = model.cfg
        self.cfg = cfg
        self.model = model
        self.inp, self.pos, self.rnn, self.to_bv, self.to_bh = model.inp, model.pos, model.rnn, model.to_bv, model.to_bh
        P = cfg.n_pitches  # noqa: N806
        with torch.no_grad():
            self.cols = [model.V[k].T.detach().clone() for k in range(P)]  # (Hn, 3)
            zero = torch.zeros(1, cfg.nade_hidden)
            self.w3 = [torch.cat([zero, model.W[k].detach()], dim=0).clone() for k in range(P)]  # (3, Hn): off adds 0
            self.vel_p = model.vel_p.detach().flip(0).clone() if cfg.velocity_bins else None  # (P, bins) pitch order

    def forward(  # type: ignore[override]
        self,
        prev: Tensor,
        prev_velocity: Tensor,
        state: Tensor,
        draws: Tensor,
        velocity_draws: Tensor,
        clamp: Tensor,
        observed: Tensor,
        pos: Tensor,
        temperature: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """See the module docstring; pitch order is MIDI order (column j = pitch j) in and out."""
        P, VB = self.cfg.n_pitches, self.cfg.velocity_bins  # noqa: N806
        x, state_out = self._recur(self.inp(self.model.inputs(prev, prev_velocity)), state, pos)
        t = temperature.reshape(-1, 1, 1)  # (B, 1, 1)
        bv = self.to_bv(x).unflatten(1, (P, 3)).flip(1)  # (B, P, 3) pitch order
        noise = -torch.log(-torch.log(draws))
        inf = torch.full_like(noise, float("inf"))
        fixed = torch.where(nn.functional.one_hot(clamp.long(), 3) > 0, inf, -inf)
        offset = torch.where(observed.unsqueeze(2), fixed, bv + t * noise).flip(1)  # (B, P, 3) NADE order
        offsets = offset.unbind(1)
        a = self.to_bh(x)
        cs, codes, hidden = [], [], []
        for k in range(P):
            h = torch.sigmoid(a)
            c = h @ self.cols[k]  # (B, 3)
            s = (c + offsets[k]).argmax(1)  # (B,) 0 off, 1 onset, 2 held
            cs.append(c)
            codes.append(s)
            hidden.append(h)
            if k + 1 < P:
                a = a + self.w3[k][s]
        code = torch.stack(codes[::-1], dim=1)  # (B, P) pitch order
        frame = code.float()
        z = (torch.stack(cs[::-1], dim=1) + bv) / t  # (B, P, 3)
        logp = (z.log_softmax(-1) * nn.functional.one_hot(code, 3).float()).sum(-1)
        if not VB:
            return frame, torch.zeros_like(frame), logp, state_out
        hid = torch.stack(hidden[::-1], dim=1)  # (B, P, Hn)
        vl = self.model.vel_u(x).unsqueeze(1) + self.model.vel_h(hid) + self.vel_p  # (B, P, bins)
        q = torch.softmax(vl / t, dim=2).cumsum(2)
        vb = (velocity_draws.unsqueeze(2) >= q[:, :, : VB - 1]).float().sum(2)
        velocity = torch.where(code == 1, vb, torch.zeros_like(vb))
        return frame, velocity, logp, state_out


def _dummy(cfg: poly.PolyConfig, batch: int = 2) -> tuple[Tensor, ...]:
    P, L, H = cfg.n_pitches, cfg.layers, cfg.hidden  # noqa: N806
    if cfg.states == 3:
        return (
            torch.zeros(batch, P), torch.zeros(batch, P), torch.zeros(L, batch, H), torch.full((batch, P, 3), 0.5),
            torch.full((batch, P), 0.5), torch.zeros(batch, P), torch.zeros(batch, P, dtype=torch.bool),
            torch.zeros(batch, dtype=torch.int64), torch.ones(batch),
        )  # fmt: skip
    return (
        torch.zeros(batch, P), torch.zeros(L, batch, H), torch.full((batch, P), 0.5), torch.zeros(batch, P),
        torch.zeros(batch, P, dtype=torch.bool), torch.zeros(batch, dtype=torch.int64), torch.ones(batch),
    )  # fmt: skip


def export_graph(model: poly.PolyModel, path: Path) -> None:
    """Write the step graph of ``model`` to ``path``."""
    three = model.cfg.states == 3
    step = (PolyStep3(model) if three else PolyStep(model)).eval()
    inputs, outputs = (rt_poly.INPUTS3, rt_poly.OUTPUTS3) if three else (INPUTS, OUTPUTS)
    dynamic: dict[str, dict[int, str]] = {n: {0: "batch"} for n in inputs if n != "state"}
    dynamic |= {n: {0: "batch"} for n in outputs if n != "state_out"}
    dynamic |= {"state": {1: "batch"}, "state_out": {1: "batch"}}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            step, _dummy(model.cfg), str(path), input_names=list(inputs), output_names=list(outputs),
            dynamic_axes=dynamic, opset_version=OPSET, dynamo=False,
        )  # fmt: skip


@torch.no_grad()
def check_parity(model: poly.PolyModel, path: Path, steps: int = 64, batch: int = 4, seed: int = 0) -> dict[str, Any]:
    """Run PyTorch and the ONNX graph side by side for ``steps`` sampled steps (each feeding its own frames).

    Checked: the sampled frames are equal (the same draws); the graph's log-probabilities equal PyTorch's
    teacher-forced ones for those frames; the states agree; and clamped pitches are kept.

    Raises:
        ModelError: a difference over tolerance.
    """
    cfg = model.cfg
    if cfg.states == 3:
        return check_parity3(model, path, steps, batch, seed)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}  # a model without position in bar has no ``pos``
    gen = np.random.default_rng(seed)
    P = cfg.n_pitches  # noqa: N806
    prev = np.zeros((batch, P), np.float32)
    state = np.zeros((cfg.layers, batch, cfg.hidden), np.float32)
    h_t: Tensor | None = None
    prev_t = torch.zeros(batch, P)
    worst = {"logp": 0.0, "state": 0.0}
    finite = True
    mismatched = 0
    for i in range(steps):
        draws = gen.random((batch, P), dtype=np.float32)
        observed = np.zeros((batch, P), bool)
        clamp = np.zeros((batch, P), np.float32)
        if i % 2:  # every other step clamps a "soprano" and everything above it
            top = gen.integers(30, 60, batch)
            for b in range(batch):
                observed[b, top[b] :] = True
                clamp[b, top[b]] = 1.0
        pos = np.full((batch,), i % max(cfg.bar_steps, 1), np.int64)
        feeds = {"prev": prev, "state": state, "draws": draws, "clamp": clamp, "observed": observed, "pos": pos,
                 "temperature": np.ones(batch, np.float32)}  # fmt: skip
        frame, logp, state = sess.run(list(OUTPUTS), {k: v for k, v in feeds.items() if k in names})
        pos_t = torch.from_numpy(pos).unsqueeze(1) if cfg.bar_steps else None
        u, h_t = model.state(prev_t.unsqueeze(1), pos_t, h_t)
        u = u[:, 0]
        ref = model.sample_step(u, torch.from_numpy(draws), torch.from_numpy(clamp), torch.from_numpy(observed))
        mismatched += int((ref.numpy() != frame).any(axis=1).sum())
        if not np.array_equal(frame[observed], clamp[observed]):
            raise ModelError("poly.onnx parity: a clamped pitch was not kept")
        lp = -nn.functional.binary_cross_entropy_with_logits(
            model.logits(u, torch.from_numpy(frame)), torch.from_numpy(frame), reduction="none"
        )
        finite = finite and bool(np.isfinite(logp).all() and np.isfinite(state).all())
        worst["logp"] = max(worst["logp"], float((lp - torch.from_numpy(logp)).abs().max()))
        worst["state"] = max(worst["state"], float((h_t - torch.from_numpy(state)).abs().max()))
        prev = frame
        prev_t = torch.from_numpy(frame)
    result = {"steps": steps, "batch": batch, "frames_differing": mismatched, "max_abs_diff": worst, "finite": finite}
    # A draw within float rounding of its probability may fall either way: allow one such frame in a run.
    if not finite or mismatched > 1 or worst["logp"] > 1e-3 or worst["state"] > 1e-4:
        raise ModelError(f"poly.onnx does not match PyTorch: {result}")
    return result


@torch.no_grad()
def check_parity3(model: poly.PolyModel, path: Path, steps: int = 64, batch: int = 4, seed: int = 0) -> dict[str, Any]:
    """:func:`check_parity` for a three-state graph: codes and velocity bins equal to
    :meth:`training.poly.PolyModel.sample_step3`'s for the same draws, state log-probabilities equal to the
    teacher-forced ones, the states in agreement, clamped pitches kept.

    Raises:
        ModelError: a difference over tolerance.
    """
    cfg = model.cfg
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    gen = np.random.default_rng(seed)
    P = cfg.n_pitches  # noqa: N806
    prev = np.zeros((batch, P), np.float32)
    prev_vel = np.zeros((batch, P), np.float32)
    state = np.zeros((cfg.layers, batch, cfg.hidden), np.float32)
    h_t: Tensor | None = None
    worst = {"logp": 0.0, "state": 0.0}
    finite = True
    mismatched = 0
    for i in range(steps):
        draws = gen.random((batch, P, 3), dtype=np.float32)
        vdraws = gen.random((batch, P), dtype=np.float32)
        observed = np.zeros((batch, P), bool)
        clamp = np.zeros((batch, P), np.float32)
        if i % 2:  # every other step clamps a "soprano" onset and everything above it
            top = gen.integers(30, 60, batch)
            for b in range(batch):
                observed[b, top[b] :] = True
                clamp[b, top[b]] = 1.0
        pos = np.full((batch,), i % max(cfg.bar_steps, 1), np.int64)
        feeds = {"prev": prev, "prev_velocity": prev_vel, "state": state, "draws": draws,
                 "velocity_draws": vdraws, "clamp": clamp, "observed": observed, "pos": pos,
                 "temperature": np.ones(batch, np.float32)}  # fmt: skip
        frame, vel, logp, state = sess.run(list(rt_poly.OUTPUTS3), {k: v for k, v in feeds.items() if k in names})
        pos_t = torch.from_numpy(pos).unsqueeze(1) if cfg.bar_steps else None
        x = model.inputs(torch.from_numpy(prev).unsqueeze(1), torch.from_numpy(prev_vel).unsqueeze(1))
        u, h_t = model.state(x, pos_t, h_t)
        u = u[:, 0]
        code, vel_t = model.sample_step3(
            u, torch.from_numpy(draws), torch.from_numpy(vdraws), torch.from_numpy(clamp).long(),
            torch.from_numpy(observed),
        )  # fmt: skip
        mismatched += int(((code.numpy() != frame) | (vel_t.numpy() != vel)).any(axis=1).sum())
        if not np.array_equal(frame[observed], clamp[observed]):
            raise ModelError("poly.onnx parity: a clamped pitch was not kept")
        logits, _ = model.logits3(u, torch.from_numpy(frame).long())
        lp = logits.log_softmax(-1).gather(-1, torch.from_numpy(frame).long().unsqueeze(-1)).squeeze(-1)
        finite = finite and bool(np.isfinite(logp).all() and np.isfinite(state).all())
        worst["logp"] = max(worst["logp"], float((lp - torch.from_numpy(logp)).abs().max()))
        worst["state"] = max(worst["state"], float((h_t - torch.from_numpy(state)).abs().max()))
        prev, prev_vel = frame, vel
    result = {"steps": steps, "batch": batch, "frames_differing": mismatched, "max_abs_diff": worst, "finite": finite}
    if not finite or mismatched > 1 or worst["logp"] > 1e-3 or worst["state"] > 1e-4:
        raise ModelError(f"poly.onnx does not match PyTorch: {result}")
    return result


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def export(
    checkpoint: Path,
    out: Path,
    *,
    name: str | None = None,
    step_beats: float = 1.0,
    centred_key: bool = False,
    data: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Export the checkpoint folder ``checkpoint`` (``config.json`` + ``model.pt``) to the model folder ``out``.

    Args:
        checkpoint: a :func:`training.poly.save` folder.
        out: the model folder to write.
        name: the model's name in ``meta.json`` (default: the folder's name).
        step_beats: one frame's length in beats (a JSB frame is a quarter note: 1.0; the other benchmark sets
            are eighths: 0.5).
        centred_key: the training pieces were all transposed to C major / C minor.
        data: what it was trained on, for ``meta.json``.
        metrics: figures for ``meta.json`` (e.g. the benchmark NLLs).

    Returns:
        The ``meta.json`` content.
    """
    t0 = time.perf_counter()
    model = poly.load(Path(checkpoint))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    export_graph(model, out / GRAPH_FILE)
    parity = check_parity(model, out / GRAPH_FILE)
    cfg = model.cfg
    meta: dict[str, Any] = {
        "format": "rtgen-model",
        "format_version": 1,
        "kind": rt_poly.POLY_KIND,
        "name": name or out.name,
        "poly": {
            "n_pitches": cfg.n_pitches, "low_pitch": rt_poly.LOW_PITCH, "bar_steps": cfg.bar_steps,
            "step_beats": step_beats, "centred_key": centred_key, "state_shape": [cfg.layers, cfg.hidden],
            "states": cfg.states, "velocity_bins": cfg.velocity_bins,
        },
        "model": {"head": cfg.head, "config": json.loads((Path(checkpoint) / poly.CONFIG_FILE).read_text()),
                  "params": {"poly": poly.n_params(model)}, "opset": OPSET},
        "data": data or {},
        "metrics": metrics or {},
        "parity": parity,
        "exported": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "files": {GRAPH_FILE: {"sha256": _sha256(out / GRAPH_FILE), "bytes": (out / GRAPH_FILE).stat().st_size}},
    }  # fmt: skip
    library.write_meta(out, meta)
    log.info("exported %s in %.1f s: parity %s", out, time.perf_counter() - t0, parity)
    return meta


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``rtgen-train poly-export``."""
    p = subparsers.add_parser("poly-export", help="export a polyphonic checkpoint to a model folder (ONNX)")
    p.add_argument("--checkpoint", type=Path, required=True, help="a polyphonic run folder (config.json, model.pt)")
    p.add_argument("--out", type=Path, required=True, help="the model folder to write")
    p.add_argument("--name", help="the model's name (default: the folder's)")
    p.add_argument("--step-beats", type=float, default=1.0, help="one frame's length in beats (JSB: 1, others: 0.5)")
    p.add_argument("--dataset", help="what it was trained on, for meta.json (e.g. JSB_Chorales)")
    p.add_argument("--license", help="the data's licence, for meta.json and `rtgen models info`")
    p.add_argument("--centred-key", action="store_true", help="the data was transposed to C major / C minor")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    bench = args.checkpoint / "poly_bench.json"
    metrics = json.loads(bench.read_text()) if bench.exists() else {}
    data = {"dataset": args.dataset, "split": "trained on train, selected on valid"} if args.dataset else {}
    if args.license:
        data["license"] = args.license
    meta = export(
        args.checkpoint, args.out, name=args.name, step_beats=args.step_beats, centred_key=args.centred_key,
        data=data, metrics={k: metrics[k] for k in ("valid", "test", "epochs", "train_minutes") if k in metrics},
    )  # fmt: skip
    print(json.dumps({"out": str(args.out), "parity": meta["parity"]}))
    return 0

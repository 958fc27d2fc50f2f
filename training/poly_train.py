"""Train and score the three-state polyphonic model on prepared MIDI rolls (``rtgen-train all --kind poly``).

Data: :mod:`training.poly_midi`. Each sequence is read after one empty step, so its first step is predicted
from nothing (a stepper's reset state) and every step of a piece is scored. Training windows of
``window`` steps start at a random phase each epoch (a window's GRU starts from zeros), optionally transposed
by -5..+6 semitones (notes pushed off the keyboard are dropped); the loss is the mean NLL per step, states
plus onsets' velocities. Adam with gradient-norm clipping; the learning rate is halved when valid NLL stops
improving; early stopping; the best-on-valid weights are kept as ``RUN/model.pt`` + ``RUN/config.json``
(:func:`training.poly.save`). ``RUN/last.pt`` (weights, optimiser, history) makes a rerun resume; a finished
run returns at once.

Distributed as :mod:`training.train`: under ``torchrun`` every process trains on its share of the windows in
a ``DistributedDataParallel`` wrapper (gloo on CPU), valid is scored in shares and summed, rank 0 writes.

Scoring (:func:`score`) runs whole sequences in time chunks that carry the GRU state, so a piece of any
length is scored exactly as one pass.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from rtgen.errors import RtgenError
from training import poly
from training.poly_midi import BAR_STEPS, N_STATES, OFF, ONSET, VELOCITY_BINS, PolySplit, load_poly_split
from training.train import DEBUG_ENV, Dist, param_hash, setup_distributed

log = logging.getLogger(__name__)

LAST_FILE = "last.pt"
"""Resume state of a run."""
TRAIN_FILE = "train.json"
"""The run's training settings and figures."""
SHIFTS = range(-5, 7)
"""Transpositions of the augmentation (semitones)."""
SCORE_CHUNK = 256
"""Steps per scoring pass (the GRU state is carried between chunks)."""


def default_model(hidden: int = 256, **kw: Any) -> poly.PolyConfig:
    """The model for MIDI rolls: three states, velocity bins, position in bar."""
    args = {"states": N_STATES, "velocity_bins": VELOCITY_BINS, "bar_steps": BAR_STEPS, "hidden": hidden, **kw}
    return poly.PolyConfig(**args)


@dataclass
class PolyTrainConfig:
    """A training run's settings (saved in ``RUN/train.json``).

    Attributes:
        epochs: most passes over the training windows.
        batch_size: windows per batch (per process under DDP).
        window: steps per window.
        lr: Adam's learning rate.
        clip: gradient-norm clip.
        patience: epochs without a better valid NLL before stopping.
        lr_patience: epochs without a better valid NLL before the learning rate is halved.
        max_minutes: training-time budget (0 = none).
        augment: transpose each training window by a random shift in :data:`SHIFTS`.
        seed: seed of the weights, the windows and the shifts.
        threads: torch threads per process (0 = cores / processes).
        min_batches: batches an epoch holds at least (passes over the windows, each at a new phase, are added
            until it does), so that a small folder's epoch still trains.
    """

    epochs: int = 30
    batch_size: int = 16
    window: int = 128
    lr: float = 2e-3
    clip: float = 1.0
    patience: int = 5
    lr_patience: int = 2
    max_minutes: float = 15.0
    augment: bool = True
    seed: int = 0
    threads: int = 0
    min_batches: int = 20

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PolyTrainConfig:
        """The settings in ``d`` (unknown keys ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


Batch = dict[str, torch.Tensor]


def _shift(a: npt.NDArray[np.uint8], s: int) -> npt.NDArray[np.uint8]:
    """``a (..., P)`` moved ``s`` columns up (pitches pushed past either end dropped)."""
    if s == 0:
        return a
    out = np.zeros_like(a)
    if s > 0:
        out[..., s:] = a[..., :-s]
    else:
        out[..., :s] = a[..., -s:]
    return out


def _windows(split: PolySplit, window: int, rng: np.random.Generator | None) -> list[tuple[int, int]]:
    """``(sequence, start)`` of every window; ``start`` counts in the sequence read after one empty step."""
    out = []
    for i in range(split.sequences):
        n = int(split.offsets[i + 1] - split.offsets[i])
        phase = int(rng.integers(window)) if rng is not None else 0
        starts = [0, *range(phase or window, n, window)]  # the piece's beginning is always a window's
        out += [(i, s) for s in starts]
    return out


def collate(split: PolySplit, wins: list[tuple[int, int]], window: int, shifts: list[int] | None = None) -> Batch:
    """A padded batch of windows: ``prev_code``, ``prev_vel`` (the steps before), ``pos``, ``code``, ``vel``
    (the predicted steps) and ``mask`` (real steps)."""
    P = split.state.shape[1]  # noqa: N806
    B = len(wins)  # noqa: N806
    code = np.zeros((B, window + 1, P), dtype=np.uint8)
    vel = np.zeros((B, window + 1, P), dtype=np.uint8)
    pos = np.zeros((B, window), dtype=np.int64)
    mask = np.zeros((B, window), dtype=bool)
    for b, (i, s) in enumerate(wins):
        st, ve, po = split.seq(i)
        if s >= len(st):  # a sequence already scored to its end, beside longer ones
            continue
        lo = max(s - 1, 0)  # padded index s is step s - 1 of the piece (index 0 the empty step)
        hi = min(s + window, len(st))
        k = hi - lo
        dst = 1 if s == 0 else 0
        sh = shifts[b] if shifts else 0
        code[b, dst : dst + k] = _shift(st[lo:hi], sh)
        vel[b, dst : dst + k] = _shift(ve[lo:hi], sh)
        n = min(window, len(st) - s)
        pos[b, :n] = po[s : s + n]
        mask[b, :n] = True
    c, v = torch.from_numpy(code).long(), torch.from_numpy(vel).long()
    return {"prev_code": c[:, :-1], "prev_vel": v[:, :-1], "code": c[:, 1:], "vel": v[:, 1:],
            "pos": torch.from_numpy(pos), "mask": torch.from_numpy(mask)}  # fmt: skip


class Objective(nn.Module):
    """The training loss as a module (what DDP wraps): summed state and velocity NLL of a batch."""

    def __init__(self, model: poly.PolyModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, b: Batch, h0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(state NLL sum, velocity NLL sum, final GRU state)`` over the batch's real steps."""
        u, h = self.model.state(self.model.inputs(b["prev_code"], b["prev_vel"]), b["pos"], h0)
        s, v = self.model.log_prob_parts(u, b["code"], b["vel"])
        m = b["mask"].float()
        return -(s * m).sum(), -(v * m).sum(), h


@torch.no_grad()
def score(model: poly.PolyModel, split: PolySplit, d: Dist | None = None, batch: int = 16) -> dict[str, float]:
    """Summed NLL (nats) of this rank's share of ``split``'s sequences, all ranks summed: ``states``,
    ``velocity``, ``steps``, ``onsets``."""
    d = d or Dist()
    model.eval()
    obj = Objective(model)
    seqs = sorted(range(split.sequences)[d.rank :: d.world], key=lambda i: split.offsets[i + 1] - split.offsets[i])
    sums = [0.0, 0.0, 0.0, 0.0]
    for g in range(0, len(seqs), batch):
        group = seqs[g : g + batch]
        longest = max(int(split.offsets[i + 1] - split.offsets[i]) for i in group)
        h = None
        for start in range(0, longest, SCORE_CHUNK):
            b = collate(split, [(i, start) for i in group], SCORE_CHUNK)
            s, v, h = obj(b, h)
            sums[0] += float(s)
            sums[1] += float(v)
            sums[2] += float(b["mask"].sum())
            sums[3] += float(((b["code"] == ONSET) & b["mask"].unsqueeze(-1)).sum())
    total = d.all_sum(sums)
    return dict(zip(("states", "velocity", "steps", "onsets"), total, strict=True))


def per_step(s: dict[str, float]) -> dict[str, float]:
    """NLL per step (states, velocity, total) and velocity NLL per onset from :func:`score`'s sums."""
    n = max(s["steps"], 1.0)
    return {"nll_per_step": (s["states"] + s["velocity"]) / n, "state_nll_per_step": s["states"] / n,
            "velocity_nll_per_step": s["velocity"] / n, "velocity_nll_per_onset": s["velocity"] / max(s["onsets"], 1.0),
            "steps": int(s["steps"])}  # fmt: skip


def _finished(cfg: PolyTrainConfig, st: dict[str, Any]) -> str | None:
    if len(st["history"]) >= cfg.epochs:
        return f"all {cfg.epochs} epochs done"
    if st["since_best"] >= cfg.patience:
        return f"early stopped: no better valid NLL for {cfg.patience} epochs"
    if cfg.max_minutes and st["train_s"] >= 60 * cfg.max_minutes:
        return f"time budget of {cfg.max_minutes:g} min used"
    return None


def train_poly(
    data: Path, run: Path, model_cfg: poly.PolyConfig, cfg: PolyTrainConfig, progress: bool = True
) -> dict[str, Any]:
    """Train on ``data``'s train split, keep the best on valid in ``run``; the run's summary.

    Resumes from ``run/last.pt`` (the same model arguments); a finished run returns at once.

    Raises:
        RtgenError: ``run`` holds a run of other model arguments, or the data has no train or valid steps.
    """
    d = setup_distributed()
    torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // d.world))
    train_split, valid_split = load_poly_split(data, "train"), load_poly_split(data, "valid")
    if train_split.steps == 0 or valid_split.steps == 0:
        raise RtgenError(f"{data} has an empty train or valid split; give the folder more MIDI files")
    torch.manual_seed(cfg.seed)
    model = poly.PolyModel(model_cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    st: dict[str, Any] = {"history": [], "best": math.inf, "since_best": 0, "since_lr": 0, "train_s": 0.0}
    last = run / LAST_FILE
    if last.exists():
        saved = json.loads((run / poly.CONFIG_FILE).read_text())
        if saved != asdict(model_cfg):
            raise RtgenError(f"{run} holds a run of other model arguments ({saved}); pick another --out or --work")
        state = torch.load(last, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        st = json.loads(state["state"])
        log.info("resuming %s at epoch %d (best valid %.4f)", run, len(st["history"]), st["best"])
    if d.main:
        run.mkdir(parents=True, exist_ok=True)
    obj: nn.Module = Objective(model)
    if d.world > 1:
        obj = DistributedDataParallel(obj)
    reason = _finished(cfg, st)
    seen = hashlib.sha256()  # this rank's windows, for the DDP test (DEBUG_ENV)
    while reason is None:
        epoch = len(st["history"])
        rng = np.random.default_rng([cfg.seed, epoch])
        wins = _windows(train_split, cfg.window, rng)
        while len(wins) < cfg.min_batches * cfg.batch_size * d.world:
            wins += _windows(train_split, cfg.window, rng)
        order = rng.permutation(len(wins))
        n_batches = len(wins) // (cfg.batch_size * d.world) or 1
        shift = rng.choice(list(SHIFTS), size=len(wins)) if cfg.augment else np.zeros(len(wins), dtype=np.int64)
        mine = [(wins[i], int(shift[i])) for i in order[d.rank :: d.world]]
        seen.update(repr(mine).encode())
        model.train()
        t0 = time.perf_counter()
        sums = np.zeros(3)
        bar = tqdm(total=n_batches, desc=f"epoch {epoch}", unit="batch", disable=not (progress and d.main), leave=False)
        for k in range(n_batches):
            chunk = mine[k * cfg.batch_size : (k + 1) * cfg.batch_size] or mine[: cfg.batch_size]
            b = collate(train_split, [w for w, _ in chunk], cfg.window, [sh for _, sh in chunk])
            s, v, _ = obj(b)
            n = b["mask"].sum()
            loss = (s + v) / n
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            opt.step()
            sums += [float(s.detach()), float(v.detach()), float(n)]
            bar.update()
            bar.set_postfix(
                nll=f"{(sums[0] + sums[1]) / sums[2]:.3f}", steps_s=f"{sums[2] / (time.perf_counter() - t0):.0f}"
            )
        bar.close()
        seconds = d.all_max(time.perf_counter() - t0)
        tr = d.all_sum(sums.tolist())
        valid = per_step(score(model, valid_split, d))
        st["train_s"] += seconds
        st["history"].append({"epoch": epoch, "train": (tr[0] + tr[1]) / tr[2], "valid": valid["nll_per_step"],
                              "valid_states": valid["state_nll_per_step"], "seconds": round(seconds, 2),
                              "steps_per_s": round(tr[2] / seconds, 1), "lr": opt.param_groups[0]["lr"]})  # fmt: skip
        if valid["nll_per_step"] < st["best"]:
            st["best"], st["since_best"], st["since_lr"] = valid["nll_per_step"], 0, 0
            if d.main:
                poly.save(model, run)
        else:
            st["since_best"] += 1
            st["since_lr"] += 1
            if st["since_lr"] >= cfg.lr_patience:
                st["since_lr"] = 0
                for g in opt.param_groups:
                    g["lr"] *= 0.5
        h = st["history"][-1]
        msg = (f"epoch {epoch}: train {h['train']:.3f} valid {h['valid']:.3f} (states {h['valid_states']:.3f}) "
               f"best {st['best']:.3f}, {h['steps_per_s']:.0f} steps/s")  # fmt: skip
        if d.main:
            if progress:
                tqdm.write(msg)
            else:
                log.info(msg)
            tmp = last.with_suffix(".tmp")
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "state": json.dumps(st)}, tmp)
            tmp.replace(last)
        if d.world > 1:
            dist.barrier()
        reason = _finished(cfg, st)
    summary = {"run": str(run), "epochs": len(st["history"]), "best_valid": st["best"],
               "train_minutes": st["train_s"] / 60, "stopped": reason, "params": poly.n_params(model),
               "model": asdict(model_cfg), "train_config": asdict(cfg), "history": st["history"]}  # fmt: skip
    if d.main:
        (run / TRAIN_FILE).write_text(json.dumps(summary, indent=1) + "\n")
    if os.environ.get(DEBUG_ENV):
        info = {"rank": d.rank, "world": d.world, "params": param_hash(model), "data": seen.hexdigest()}
        (run / f"rank{d.rank}.json").write_text(json.dumps(info) + "\n")
    return summary


# --- baselines ------------------------------------------------------------------------------------------------
def _prev_states(split: PolySplit) -> npt.NDArray[np.uint8]:
    """The state before each step (off before a piece's first step)."""
    prev = np.zeros_like(split.state)
    prev[1:] = split.state[:-1]
    prev[split.offsets[:-1][split.offsets[:-1] < split.steps]] = OFF
    return prev


def baselines(train: PolySplit, test: PolySplit, alpha: float = 0.5) -> dict[str, dict[str, float]]:
    """State NLL per step of two per-pitch baselines fitted on ``train`` (add-``alpha`` smoothing):

    - ``frequency``: each pitch's state an independent draw from its frequency of off / onset / held;
    - ``markov``: each pitch's state given its own state at the step before (includes "repeat the previous
      frame": held after onset or held is its most frequent move).

    Plus ``velocity_nll_per_onset`` of one velocity-bin frequency for all onsets.
    """
    P = train.state.shape[1]  # noqa: N806
    cols = np.arange(P)
    freq = np.full((P, N_STATES), alpha)
    np.add.at(freq, (np.broadcast_to(cols, train.state.shape), train.state), 1.0)
    freq /= freq.sum(1, keepdims=True)
    trans = np.full((P, N_STATES, N_STATES), alpha)
    np.add.at(trans, (np.broadcast_to(cols, train.state.shape), _prev_states(train), train.state), 1.0)
    trans /= trans.sum(2, keepdims=True)
    n = max(test.steps, 1)
    onsets_tr = train.state == ONSET
    vfreq = np.bincount(train.velocity[onsets_tr], minlength=VELOCITY_BINS) + alpha
    vfreq = vfreq / vfreq.sum()
    on_te = test.state == ONSET
    return {
        "frequency": {"state_nll_per_step": float(-np.log(freq[cols, test.state]).sum() / n)},
        "markov": {"state_nll_per_step": float(-np.log(trans[cols, _prev_states(test), test.state]).sum() / n)},
        "velocity": {
            "velocity_nll_per_onset": float(-np.log(vfreq[test.velocity[on_te]]).mean()) if on_te.any() else 0.0
        },
    }

"""Train the chord and note models together (``rtgen-train train``), on one CPU or many GPUs.

One optimizer trains both models on the sum of their losses (one pass over the
data trains both; the losses are reported separately). Each epoch is one pass over
the training windows (see :mod:`training.dataset`), followed by a validation pass
over whole held-out sequences. The run folder (docs/internals.md §2) gets
``config.json``, ``checkpoint.pt`` every epoch, ``best.pt`` on the best valid loss,
``history.json`` and ``loss.png``. Re-running resumes from ``checkpoint.pt``; a
finished run returns at once.

Distributed: under ``torchrun --nproc_per_node N -m training.cli train ...`` every
process trains on its own share of the batches in a DistributedDataParallel wrapper
(gloo on CPU, nccl on CUDA); only rank 0 writes files and shows progress.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from rtgen import contract as C  # noqa: N812 (short alias, used on every line)
from rtgen.errors import RtgenError
from training.dataset import IGNORE, Split, eval_plan
from training.model import ModelConfig, Models, harmony_target
from training.prepared import read_manifest

log = logging.getLogger(__name__)

DEBUG_ENV = "RTGEN_TRAIN_DEBUG"
"""When set, every rank writes ``RUN/rank{N}.json`` (parameter and data hashes) at the end."""


@dataclass
class TrainConfig:
    """Everything that defines a training run; saved as ``RUN/config.json``.

    Attributes:
        data: prepared data folder.
        epochs: maximum passes over the training windows.
        batch_size: windows per batch (per process under DDP).
        window: steps per training window.
        lr: peak learning rate (AdamW), reached after ``warmup_steps``.
        min_lr_ratio: final learning rate as a fraction of ``lr`` (cosine decay).
        warmup_steps: linear warm-up steps.
        weight_decay: AdamW weight decay (not on biases, norms and embeddings).
        grad_clip: gradient norm clip.
        patience: stop after this many epochs without a better valid loss.
        max_minutes: wall-clock budget for the whole run (0 = none); the schedule decays
            to the end of whichever comes first, the epochs or the budget.
        augment: random transposition (-6..5) of each training window.
        seed: seed of the weights, the windows and the transpositions.
        threads: torch threads per process (0 = all cores / processes).
        eval_batch_size: sequences per validation batch.
        init_from: a PyTorch checkpoint (``best.pt`` or ``checkpoint.pt`` of an earlier run) whose weights a
            new run starts from (fine-tuning); its architecture replaces ``model``. Empty: random weights.
        model: the architecture.
    """

    data: str = ""
    epochs: int = 30
    batch_size: int = 32
    window: int = 256
    lr: float = 3e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 30
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    patience: int = 4
    max_minutes: float = 15.0
    augment: bool = True
    seed: int = 0
    threads: int = 0
    eval_batch_size: int = 32
    init_from: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy (the model config nested)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys are ignored."""
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names and k != "model"}
        return cls(**kw, model=ModelConfig.from_dict(d.get("model", {})))

    @classmethod
    def with_overrides(cls, data: Path, epochs: int | None, overrides: dict[str, Any]) -> TrainConfig:
        """Defaults, then ``overrides`` (TrainConfig or ModelConfig field names; None = keep)."""
        train_names = {f.name for f in fields(cls)} - {"model", "data"}
        model_names = {f.name for f in fields(ModelConfig)}
        unknown = set(overrides) - train_names - model_names
        if unknown:
            allowed = ", ".join(sorted(train_names | model_names))
            raise RtgenError(f"unknown training option(s) {', '.join(sorted(unknown))}; allowed: {allowed}")
        kw = {k: v for k, v in overrides.items() if k in train_names and v is not None}
        mkw = {k: v for k, v in overrides.items() if k in model_names and v is not None}
        if epochs is not None:
            kw["epochs"] = epochs
        try:
            return cls(data=str(Path(data).resolve()), **kw, model=ModelConfig(**mkw))
        except ValueError as err:
            raise RtgenError(f"bad training option: {err}") from err


# --- starting from another run's weights -------------------------------------------
INIT_FILES = ("best.pt", "checkpoint.pt", "weights.pt")  # a run's, then a model folder's (export)
"""What ``--init-from FOLDER`` looks for, in order (a run folder, or a model folder with weights beside it)."""


def init_checkpoint(spec: str | Path) -> Path:
    """The PyTorch checkpoint that ``--init-from SPEC`` means.

    SPEC is a ``.pt`` file, a run folder (``best.pt``, else ``checkpoint.pt``), or a model folder or name
    (``rtgen models list``; the shipped ``default`` too): a model trained by ``rtgen-train all`` keeps its run
    in its work folder (``OUT.work/run``, or ``.work/NAME/run`` in the models folder), which is looked at
    first; else the ``weights.pt`` that ``export`` writes beside the graphs.

    Raises:
        RtgenError: nothing of that name, or a model folder with only ONNX graphs (exported before
            ``weights.pt`` existed, or by another tool): those cannot be trained further, and the message
            says what is possible instead.
    """
    from rtgen.config import default_config_path, load_config
    from rtgen.library import is_name, resolve_model

    path = Path(spec).expanduser()
    if path.is_file():
        return path
    user_dir = load_config(default_config_path()).models_dir
    folder = resolve_model(spec, base=Path.cwd(), user_dir=user_dir)
    places = [folder, folder / "run", folder.with_name(folder.name + ".work") / "run"]
    if is_name(str(spec)):
        places.append(user_dir / ".work" / str(spec) / "run")
    for name in INIT_FILES:  # a run's checkpoint anywhere before the weights an export put beside its graphs
        for place in places:
            if (place / name).is_file():
                return place / name
    onnx = sorted(p.name for p in folder.glob("*.onnx"))
    shipped = f"ships only ONNX graphs ({', '.join(onnx)})" if onnx else "holds no PyTorch weights"
    raise RtgenError(
        f"cannot start from {spec}: {folder} {shipped}, and ONNX graphs cannot be trained further. "
        "Fine-tuning needs PyTorch weights (a run's best.pt, or the weights.pt rtgen-train export writes beside "
        "the graphs): --init-from the run folder or the model "
        "folder of an earlier rtgen-train run of yours (its OUT.work/run is found). Without them, train from "
        "random weights (leave out --init-from); on a small folder a smaller model often does better "
        "(rtgen-train train --hidden 64 --layers 1 --dropout 0.3)"
    )


def read_init(path: Path) -> tuple[dict[str, Any], ModelConfig]:
    """``(state dict, architecture)`` of a checkpoint to start from.

    Raises:
        RtgenError: the file cannot be read or is not an rtgen training checkpoint.
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise RtgenError(f"cannot read {path} to start from ({err})") from err
    model = ckpt.get("model_config") or (ckpt.get("config") or {}).get("model") if isinstance(ckpt, dict) else None
    if not isinstance(model, dict) or "models" not in ckpt:
        raise RtgenError(f"{path} is not an rtgen training checkpoint (best.pt or checkpoint.pt of a run)")
    return ckpt["models"], ModelConfig.from_dict(model)


# --- distributed helpers ------------------------------------------------------
@dataclass
class Dist:
    """Where this process sits in a (possibly single-process) run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    initialized_here: bool = False

    @property
    def main(self) -> bool:
        """True on the process that writes files and shows progress."""
        return self.rank == 0

    def all_sum(self, values: list[float]) -> list[float]:
        """Sum a list of floats over all ranks (identity in a single process)."""
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def all_max(self, value: float) -> float:
        """Maximum of a float over all ranks, so every rank takes the same decision."""
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t.item())


def setup_distributed() -> Dist:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world <= 1:
        return Dist(device=torch.device("cuda" if cuda else "cpu"))
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    made = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
        made = True
    log.info("rank %d of %d on %s", rank, world, device)
    return Dist(rank, world, local, device, made)


# --- evaluation -----------------------------------------------------------------
@torch.no_grad()
def evaluate_nll(models: Models, split: Split, batch_size: int, d: Dist | None = None) -> dict[str, float]:
    """Per-step NLL (nats) of both models over whole sequences of ``split``.

    Returns:
        ``chord`` (all steps), ``chord_change`` (steps whose chord token is not HOLD), ``harmony`` and
        ``harmony_change`` (the harmoniser's NLL of the sounding chord, all steps and at changes),
        ``melody`` (all steps), ``melody_note_on`` (NOTE_ON steps), ``velocity`` (NOTE_ON
        steps) and ``loss`` (chord + harmony + melody, the early-stopping criterion).
    """
    d = d or Dist()
    was_training = models.training
    models.eval()
    keys = ("chord", "chord_change", "harmony", "harmony_change", "melody", "melody_note_on", "velocity")
    sums = dict.fromkeys(keys, 0.0)
    counts = dict.fromkeys(keys, 0.0)
    for wins in eval_plan(split, batch_size, d.rank, d.world):
        b = {k: v.to(d.device) for k, v in split.collate(wins).items()}
        chord_logits, _ = models.chord(b)
        harmony_logits, _ = models.harmony(b)
        mel_logits, vel_logits, _ = models.note(b)
        change = (b["chord"] != IGNORE) & (b["chord"] != C.CHORD_HOLD)
        h_target = harmony_target(b)
        for name, logits, target, mask in (
            ("chord", chord_logits, b["chord"], b["chord"] != IGNORE),
            ("chord_change", chord_logits, b["chord"], change),
            ("harmony", harmony_logits, h_target, b["chord"] != IGNORE),
            ("harmony_change", harmony_logits, h_target, change),
            ("melody", mel_logits, b["melody"], b["melody"] != IGNORE),
            ("melody_note_on", mel_logits, b["melody"], b["melody"] >= C.MEL_NOTE_OFFSET),
            ("velocity", vel_logits, b["velocity"], b["velocity"] != IGNORE),
        ):
            nll = nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none")
            m = mask.flatten()
            sums[name] += float(nll[m].sum())
            counts[name] += float(m.sum())
    total = d.all_sum([*sums.values(), *counts.values()])
    n = len(keys)
    out = {k: total[i] / max(total[n + i], 1.0) for i, k in enumerate(keys)}
    out["loss"] = out["chord"] + out["harmony"] + out["melody"]
    models.train(was_training)
    return out


# --- the run --------------------------------------------------------------------
def _lr_factor(cfg: TrainConfig, step: int, total_steps: int, elapsed: float) -> float:
    """Warm-up, then cosine decay over the progress made towards the epochs or the time budget."""
    warm = min(1.0, (step + 1) / max(1, min(cfg.warmup_steps, total_steps // 5)))  # short runs warm up fast
    progress = step / max(1, total_steps)
    if cfg.max_minutes > 0:
        progress = max(progress, elapsed / (cfg.max_minutes * 60.0))
    progress = min(1.0, progress)
    return warm * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def _optimizer(models: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in models.named_parameters():
        (decay if p.ndim >= 2 and ".emb." not in name else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.99))


def _finished(cfg: TrainConfig, state: dict[str, Any]) -> str | None:
    if state["epoch"] >= cfg.epochs:
        return f"all {cfg.epochs} epochs done"
    if state["bad_epochs"] >= cfg.patience:
        return f"early stopped: no better valid loss for {cfg.patience} epochs"
    if cfg.max_minutes > 0 and state["elapsed"] >= cfg.max_minutes * 60.0:
        return f"time budget of {cfg.max_minutes:g} min used"
    return None


def _summary(out: Path, cfg: TrainConfig, state: dict[str, Any], reason: str | None) -> dict[str, Any]:
    hist = state["history"]
    best = next((h for h in hist if h["epoch"] == state["best_epoch"]), None)
    tok = [h["tokens_per_s"] for h in hist if h.get("tokens_per_s")]
    return {
        "run": str(out),
        "epochs": state["epoch"],
        "steps": state["step"],
        "seconds": round(state["elapsed"], 1),
        "best_epoch": state["best_epoch"],
        "valid": best["valid"] if best else None,
        "tokens_per_s": round(float(np.mean(tok)), 1) if tok else None,
        "stopped": reason,
        "model": cfg.model.to_dict(),
    }


def param_hash(models: nn.Module) -> str:
    """sha256 over every tensor of a state dict, in name order (equal weights <=> equal hash)."""
    h = hashlib.sha256()
    for name, t in sorted(models.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _save(obj: dict[str, Any], path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # atomic: an interrupted save never leaves a half-written checkpoint


def plot_history(history: list[dict[str, Any]], path: Path) -> None:
    """Train/valid loss curves of both models into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    ep = [h["epoch"] for h in history]
    for ax, name, title in zip(axes, ("chord", "melody"), ("chord model", "note model (melody)"), strict=True):
        ax.plot(ep, [h["train"][name] for h in history], "o-", label="train")
        ax.plot(ep, [h["valid"][name] for h in history], "o-", label="valid")
        ax.set_title(f"{title}: NLL per step (nats)")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def train(
    data: Path, out: Path, epochs: int | None = None, *, progress: bool = True, **overrides: Any
) -> dict[str, Any]:
    """Train (or resume training) both models.

    Args:
        data: prepared data folder (docs/internals.md §1).
        out: run folder to write (created; resumed if it holds a checkpoint).
        epochs: maximum epochs (default: :class:`TrainConfig`'s).
        progress: show a tqdm progress bar (rank 0 only).
        **overrides: :class:`TrainConfig` or :class:`~training.model.ModelConfig` fields,
            e.g. ``hidden=32, layers=1, lr=1e-3, max_minutes=2``; ``None`` values keep the default.

    Returns:
        A summary: epochs, steps, seconds, best epoch and its valid NLLs, tokens/s, why it stopped.

    Raises:
        RtgenError: missing/incompatible data, or a run folder trained with another model.
    """
    data, out = Path(data), Path(out)
    cfg = TrainConfig.with_overrides(data, epochs, overrides)
    if cfg.init_from:  # fine-tuning keeps the architecture of the weights it starts from
        asked = {k: v for k, v in overrides.items() if k in ModelConfig.__dataclass_fields__ and v is not None}
        cfg.model = read_init(Path(cfg.init_from))[1]
        clash = {k: v for k, v in asked.items() if getattr(cfg.model, k) != v}
        if clash:
            raise RtgenError(f"--init-from {cfg.init_from} fixes the architecture ({cfg.model}); drop {clash}")
    d = setup_distributed()
    try:
        return _train(cfg, data, out, d, progress)
    finally:
        if d.initialized_here:
            dist.destroy_process_group()


def _train(cfg: TrainConfig, data: Path, out: Path, d: Dist, progress: bool) -> dict[str, Any]:
    manifest = read_manifest(data)
    torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // d.world))
    ckpt_path, cfg_path = out / "checkpoint.pt", out / "config.json"
    if d.main:
        out.mkdir(parents=True, exist_ok=True)

    state: dict[str, Any] = {
        "epoch": 0, "step": 0, "elapsed": 0.0, "best": math.inf, "best_epoch": 0, "bad_epochs": 0, "history": [],
    }  # fmt: skip
    ckpt: dict[str, Any] | None = None
    if ckpt_path.is_file():
        try:
            ckpt = torch.load(ckpt_path, map_location=d.device, weights_only=True)
        except Exception as err:
            raise RtgenError(f"cannot read checkpoint {ckpt_path} ({err}); delete it to start over") from err
        old = TrainConfig.from_dict(ckpt["config"])
        if old.model != cfg.model:
            raise RtgenError(
                f"{out} holds a run of another model ({old.model} vs {cfg.model}); "
                "choose a new --out or delete the folder to start over"
            )
        state = {k: ckpt[k] for k in state}
        done = _finished(cfg, state)
        if done:
            if d.main:
                log.info("%s: already finished (%s)", out, done)
            return _summary(out, cfg, state, f"already finished ({done})")
        log.info("resuming %s from epoch %d", out, state["epoch"])

    torch.manual_seed(cfg.seed)
    models = Models(cfg.model).to(d.device)
    opt = _optimizer(models, cfg)
    if ckpt is None and cfg.init_from:
        try:
            models.load_state_dict(read_init(Path(cfg.init_from))[0])
        except RuntimeError as err:  # tensors missing, unexpected or of another shape than its config says
            raise RtgenError(
                f"--init-from {cfg.init_from}: its weights do not fit the architecture it names ({err}); "
                "start from a run or model made by this rtgen-train, or leave out --init-from"
            ) from err
        log.info("starting from the weights of %s", cfg.init_from)
    if ckpt is not None:
        models.load_state_dict(ckpt["models"])
        opt.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["torch_rng"].cpu())
    net: nn.Module = models
    if d.world > 1:
        net = DistributedDataParallel(models, device_ids=[d.device.index] if d.device.type == "cuda" else None)
    if d.main:
        cfg_path.write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")

    train_split, valid_split = Split(data, "train"), Split(data, "valid")
    if train_split.steps == 0 or valid_split.steps == 0:
        raise RtgenError(f"{data} has an empty train or valid split; prepare more files")
    batches_per_epoch = len(train_split.plan(cfg.batch_size, cfg.window, cfg.seed, 0, rank=0, world=d.world))
    total_steps = batches_per_epoch * cfg.epochs
    counts = models.param_counts()
    if d.main:
        log.info(
            "training on %s: %d train steps in %d sequences, %d batches/epoch/process, %d process(es), params %s",
            manifest.get("source"), train_split.steps, train_split.sequences, batches_per_epoch, d.world, counts,
        )  # fmt: skip

    debug_data = hashlib.sha256()
    t_start = time.perf_counter() - state["elapsed"]
    reason: str | None = None
    models.train()
    while reason is None:
        epoch = state["epoch"] + 1
        plan = train_split.plan(
            cfg.batch_size, cfg.window, cfg.seed, epoch, rank=d.rank, world=d.world, augment=cfg.augment
        )
        sums = np.zeros(6)  # chord, melody, velocity sums; then counts
        tokens, t_ep = 0, time.perf_counter()
        bar = tqdm(total=len(plan), desc=f"epoch {epoch}", disable=not (progress and d.main), leave=False, unit="batch")
        t_int, tok_int, stopped_mid = time.perf_counter(), 0, False
        for i, wins in enumerate(plan):
            elapsed = d.all_max(time.perf_counter() - t_start)
            if cfg.max_minutes > 0 and elapsed >= cfg.max_minutes * 60.0:
                stopped_mid = True
                break
            debug_data.update(np.array([(w.start, w.length, w.shift) for w in wins], dtype=np.int64).tobytes())
            batch = {k: v.to(d.device, non_blocking=True) for k, v in train_split.collate(wins).items()}
            lr = cfg.lr * _lr_factor(cfg, state["step"], total_steps, elapsed)
            for g in opt.param_groups:
                g["lr"] = lr
            res = net(batch)
            opt.zero_grad(set_to_none=True)
            res["loss"].backward()
            nn.utils.clip_grad_norm_(models.parameters(), cfg.grad_clip)
            opt.step()
            state["step"] += 1
            n_tok = int(res["melody_n"])
            tokens += n_tok
            tok_int += n_tok
            sums += [float(res[f"{k}_{s}"]) for s in ("sum", "n") for k in ("chord", "melody", "velocity")]
            bar.update(1)
            if (i + 1) % 10 == 0 or i + 1 == len(plan):
                now = time.perf_counter()
                rate = tok_int * d.world / max(now - t_int, 1e-9)
                t_int, tok_int = now, 0
                bar.set_postfix(
                    chord=f"{sums[0] / max(sums[3], 1):.3f}", melody=f"{sums[1] / max(sums[4], 1):.3f}",
                    tok_s=f"{rate:.0f}", lr=f"{lr:.1e}",
                )  # fmt: skip
                log.debug("epoch %d batch %d: %.0f tokens/s", epoch, i + 1, rate)
        bar.close()
        train_secs = time.perf_counter() - t_ep
        total = d.all_sum([*sums.tolist(), float(tokens)])
        if total[3] == 0:  # the budget ran out before this epoch trained anything
            reason = _finished(cfg, state | {"elapsed": cfg.max_minutes * 60.0}) or "time budget used"
            break
        valid = evaluate_nll(models, valid_split, cfg.eval_batch_size, d)
        state["epoch"] = epoch
        state["elapsed"] = d.all_max(time.perf_counter() - t_start)
        tr = {k: total[j] / max(total[3 + j], 1.0) for j, k in enumerate(("chord", "melody", "velocity"))}
        rec = {
            "epoch": epoch, "steps": state["step"], "train": tr, "valid": valid, "lr": lr,
            "tokens_per_s": round(total[6] / max(train_secs, 1e-9), 1), "seconds": round(time.perf_counter() - t_ep, 1),
            "partial": stopped_mid,
        }  # fmt: skip
        state["history"].append(rec)
        improved = valid["loss"] < state["best"]
        if improved:
            state["best"], state["best_epoch"], state["bad_epochs"] = valid["loss"], epoch, 0
        else:
            state["bad_epochs"] += 1
        reason = _finished(cfg, state)
        if d.main:
            msg = (
                f"epoch {epoch}: train chord {tr['chord']:.3f} melody {tr['melody']:.3f} | valid chord "
                f"{valid['chord']:.3f} (changes {valid['chord_change']:.2f}) harmony {valid['harmony']:.3f} "
                f"(changes {valid['harmony_change']:.2f}) melody {valid['melody']:.3f} "
                f"(note-on {valid['melody_note_on']:.2f}) | {rec['tokens_per_s']:.0f} tok/s, {rec['seconds']:.0f} s"
            )
            log.info(msg)
            if progress:
                tqdm.write(msg)
            if improved:
                _save(
                    {"models": models.state_dict(), "model_config": cfg.model.to_dict(), "epoch": epoch,
                     "valid": valid},
                    out / "best.pt",
                )  # fmt: skip
            _save(
                {"models": models.state_dict(), "optimizer": opt.state_dict(), "config": cfg.to_dict(),
                 "scheduler": {"step": state["step"], "elapsed": state["elapsed"], "total_steps": total_steps},
                 "torch_rng": torch.get_rng_state(), **state},
                ckpt_path,
            )  # fmt: skip
            (out / "history.json").write_text(json.dumps(state["history"], indent=1) + "\n")
            plot_history(state["history"], out / "loss.png")
        if d.world > 1:
            dist.barrier()

    if os.environ.get(DEBUG_ENV):
        info = {"rank": d.rank, "world": d.world, "params": param_hash(models), "data": debug_data.hexdigest()}
        (out / f"rank{d.rank}.json").write_text(json.dumps(info) + "\n")
    return _summary(out, cfg, state, reason)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``train`` phase to the ``rtgen-train`` parser."""
    p = subparsers.add_parser("train", help="train the chord and note models (resumes; runs under torchrun too)")
    p.add_argument("--data", type=Path, required=True, help="prepared data folder (from `prepare`)")
    p.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, history, loss.png)")
    p.add_argument("--epochs", type=int, default=None, help=f"maximum epochs (default {TrainConfig.epochs})")
    p.add_argument("--batch-size", type=int, default=None, help=f"windows per batch (default {TrainConfig.batch_size})")
    p.add_argument("--window", type=int, default=None, help=f"steps per window (default {TrainConfig.window})")
    p.add_argument("--lr", type=float, default=None, help=f"peak learning rate (default {TrainConfig.lr})")
    p.add_argument("--hidden", type=int, default=None, help=f"GRU width (default {ModelConfig.hidden})")
    p.add_argument("--layers", type=int, default=None, help=f"GRU layers (default {ModelConfig.layers})")
    p.add_argument("--dropout", type=float, default=None, help=f"dropout (default {ModelConfig.dropout})")
    p.add_argument(
        "--copy", action=argparse.BooleanOptionalAction, default=None,
        help=f"the copy head over the 1-8 bar lookbacks (default {'on' if ModelConfig.copy else 'off'})",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=None, help="seed (default 0)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per process (default: cores / processes)")
    p.add_argument(
        "--patience", type=int, default=None, help=f"early-stopping patience (default {TrainConfig.patience})"
    )
    p.add_argument(
        "--max-minutes", type=float, default=None,
        help=f"time budget; training ends cleanly when it is used (default {TrainConfig.max_minutes:g}, 0 = none)",
    )  # fmt: skip
    p.add_argument(
        "--init-from", default=None, metavar="RUN|MODEL|FILE.pt",
        help="start from the weights of an earlier run (fine-tuning; see init_checkpoint)",
    )  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    keys = ("batch_size", "window", "lr", "hidden", "layers", "dropout", "copy", "seed", "threads", "patience",
            "max_minutes")  # fmt: skip
    init = str(init_checkpoint(args.init_from)) if args.init_from else None
    summary = train(
        data=args.data, out=args.out, epochs=args.epochs, progress=not args.no_progress, init_from=init,
        **{k: getattr(args, k) for k in keys},
    )  # fmt: skip
    if int(os.environ.get("RANK", "0")) == 0:
        v = summary["valid"] or {}
        print(
            f"train: {summary['run']}: {summary['epochs']} epochs in {summary['seconds']:.0f} s, best epoch "
            f"{summary['best_epoch']}: valid chord {v.get('chord', float('nan')):.3f} melody "
            f"{v.get('melody', float('nan')):.3f} nats/step, {summary['tokens_per_s'] or 0:.0f} tokens/s"
            f" ({summary['stopped']})"
        )
    return 0

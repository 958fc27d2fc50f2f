"""Train and score a polyphonic model on the benchmark (``rtgen-train poly-bench``, ``evaluate --roll``).

The score is ``locuslab/TCN``'s ``poly_music/music_test.py`` ``evaluate()``: for each sequence the model
reads frames ``0..T-2`` and predicts frames ``1..T-1`` (the first frame is never scored); the summed
negative log-likelihood (natural log) of every predicted frame, over the split, is divided by the number of
predicted frames (pooled: long pieces weigh more). For the Bernoulli head a frame's NLL is TCN's
``-sum_k [y_k log p_k + (1 - y_k) log(1 - p_k)]``; for the NADE head it is the exact ``-log p(frame)``.
Sequences are batched (padded at the end, padding masked out); the GRU is causal, so a sequence's
scores are those of batch size 1.

Training: Adam on the mean NLL per frame over whole sequences (bucketed by length into batches of at
most ``batch_frames`` padded frames), gradient-norm clipping, the learning rate halved when valid NLL
stops improving, early stopping, the best-on-valid weights kept (``OUT/model.pt`` + ``OUT/config.json``).
``OUT/last.pt`` (weights, optimiser, epoch, history) makes a rerun resume.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from rtgen.errors import RtgenError
from training import poly
from training.poly_data import Roll, load_rolls, scored_frames

log = logging.getLogger(__name__)

SHARED_DATA = Path(os.environ.get("RTGEN_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
DATA_DIR = SHARED_DATA / "poly_music"
"""The benchmark files: ``poly_music`` in ``$RTGEN_SHARED_DATA``, else beside a checkout (``--data-dir`` overrides)."""
BENCH_FILE = "poly_bench.json"
"""The figures of a ``poly-bench`` run, in its output folder."""
LAST_FILE = "last.pt"
"""Resume state of a ``poly-bench`` run."""


@dataclass
class BenchConfig:
    """A training run's settings (saved in ``poly_bench.json``).

    Attributes:
        epochs: most passes over train.
        batch_frames: padded frames per batch (sequences are bucketed by length).
        lr: Adam's learning rate.
        clip: gradient-norm clip.
        patience: epochs without a better valid NLL before stopping.
        lr_patience: epochs without a better valid NLL before the learning rate is halved.
        max_minutes: wall-clock budget of the training loop (0 = none).
        seed: seed of initialisation and batch order.
        threads: torch threads.
    """

    epochs: int = 200
    batch_frames: int = 1024
    lr: float = 2e-3
    clip: float = 1.0
    patience: int = 8
    lr_patience: int = 3
    max_minutes: float = 0.0
    seed: int = 0
    threads: int = 1


def batches(
    rolls: list[Roll], batch_frames: int, rng: np.random.Generator | None
) -> Iterator[tuple[torch.Tensor, ...]]:
    """Padded batches ``(prev (B, T, P), target (B, T, P), mask (B, T))`` of whole sequences.

    Sequences are sorted by length and cut into batches of at most ``batch_frames`` padded frames
    (a longer sequence is a batch of one); ``rng`` shuffles within equal lengths and the batch order.
    """
    lengths = np.array([len(r) - 1 for r in rolls])
    keys = rng.random(len(rolls)) if rng is not None else np.zeros(len(rolls))
    order = [i for i in np.lexsort((keys, lengths)) if lengths[i] > 0]
    groups: list[list[int]] = []
    for i in order:
        if groups and (len(groups[-1]) + 1) * lengths[i] <= batch_frames:
            groups[-1].append(i)
        else:
            groups.append([i])
    if rng is not None:
        rng.shuffle(groups)  # type: ignore[arg-type]
    for g in groups:
        t = int(lengths[g].max())
        seq = np.zeros((len(g), t + 1, rolls[g[0]].shape[1]), dtype=np.float32)
        mask = np.zeros((len(g), t), dtype=bool)
        for b, i in enumerate(g):
            seq[b, : lengths[i] + 1] = rolls[i]
            mask[b, : lengths[i]] = True
        s = torch.from_numpy(seq)
        yield s[:, :-1], s[:, 1:], torch.from_numpy(mask)  # TCN: x = seq[:-1], y = seq[1:]


@torch.no_grad()
def score(model: poly.PolyModel, rolls: list[Roll], batch_frames: int = 1024) -> tuple[float, int]:
    """``(summed NLL in nats, scored frames)`` of ``rolls`` under ``model`` (TCN's ``evaluate()``)."""
    model.eval()
    total, count = 0.0, 0
    for prev, target, mask in batches(rolls, batch_frames, None):
        u, _ = model.state(prev)
        lp = model.log_prob(u, target)  # (B, T)
        total += float(-lp[mask].double().sum())
        count += int(mask.sum())
    return total, count


def score_exported(folder: Path, rolls: list[Roll]) -> tuple[float, int]:
    """:func:`score` with an exported model folder's ONNX graph as rtgen plays it (batch 1, one call per
    frame): each sequence starts on its first frame and every later frame is fed whole and scored."""
    from rtgen.generation.poly import PolyModel

    stepper = PolyModel.load(folder).stepper()
    total, count = 0.0, 0
    for roll in rolls:
        frames = roll.astype(np.float32)
        stepper.start(frames[0])
        for frame in frames[1:]:
            total -= stepper.feed(frame)
            count += 1
    return total, count


def evaluate_roll(model_dir: Path, roll: Path, split: str = "test") -> dict[str, Any]:
    """``{"nll_per_frame", "frames", ...}`` of the model in ``model_dir`` (a checkpoint, or an exported
    folder scored by its ONNX graph) on a benchmark file's split."""
    rolls = load_rolls(roll)[split]
    if (model_dir / "meta.json").is_file() and not (model_dir / poly.WEIGHTS_FILE).is_file():
        total, count = score_exported(model_dir, rolls)
        assert count == scored_frames(rolls)
        return {"nll_per_frame": total / count, "frames": count, "split": split, "roll": str(roll), "graph": "onnx"}
    model = poly.load(model_dir)
    total, count = score(model, rolls)
    assert count == scored_frames(rolls)
    return {"nll_per_frame": total / count, "frames": count, "split": split, "roll": str(roll),
            "head": model.cfg.head, "params": poly.n_params(model)}  # fmt: skip


def train(
    rolls: dict[str, list[Roll]], out: Path, model_cfg: poly.PolyConfig, cfg: BenchConfig, progress: bool = True
) -> dict[str, Any]:
    """Train on ``rolls["train"]``, keep the best on ``rolls["valid"]`` in ``out``; the run's figures.

    Resumes from ``out/last.pt`` when it is there (same model arguments).
    """
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = poly.PolyModel(model_cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    history: list[dict[str, float]] = []
    best, since_best, since_lr, train_s = math.inf, 0, 0, 0.0
    last = out / LAST_FILE
    if last.exists():
        state = torch.load(last, map_location="cpu", weights_only=True)
        saved = json.loads((out / poly.CONFIG_FILE).read_text())
        if saved != asdict(model_cfg):
            raise RtgenError(f"{out} holds a run of other model arguments ({saved}); pick another --out")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        history = json.loads(state["history"])
        rng = np.random.default_rng(cfg.seed + len(history))
        best, since_best, since_lr = min(h["valid"] for h in history), int(state["since_best"]), int(state["since_lr"])
        train_s = sum(h["seconds"] for h in history)
        log.info("resuming %s at epoch %d (best valid %.4f)", out, len(history), best)
    out.mkdir(parents=True, exist_ok=True)
    n_train = scored_frames(rolls["train"])
    for epoch in range(len(history), cfg.epochs):
        if since_best >= cfg.patience or (cfg.max_minutes and train_s >= 60 * cfg.max_minutes):
            break
        model.train()
        t0 = time.perf_counter()
        tot, n = 0.0, 0
        bar = tqdm(total=n_train, desc=f"epoch {epoch}", unit="frame", disable=not progress, leave=False)
        for prev, target, mask in batches(rolls["train"], cfg.batch_frames, rng):
            u, _ = model.state(prev)
            lp = model.log_prob(u, target)  # (B, T)
            frames = int(mask.sum())
            loss = -lp[mask].sum() / frames
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            opt.step()
            tot += loss.item() * frames
            n += frames
            bar.update(frames)
            bar.set_postfix(nll=f"{tot / n:.3f}", fps=f"{n / (time.perf_counter() - t0):.0f}")
        bar.close()
        seconds = time.perf_counter() - t0
        t1 = time.perf_counter()
        v_total, v_count = score(model, rolls["valid"])
        valid = v_total / v_count
        valid_seconds = time.perf_counter() - t1
        history.append({"epoch": epoch, "train": tot / n, "valid": valid, "seconds": seconds,
                        "frames_per_s": n / seconds, "lr": opt.param_groups[0]["lr"],
                        "valid_seconds": valid_seconds})  # fmt: skip
        train_s += seconds
        if valid < best:
            best, since_best, since_lr = valid, 0, 0
            poly.save(model, out)
        else:
            since_best += 1
            since_lr += 1
            if since_lr >= cfg.lr_patience:
                since_lr = 0
                for g in opt.param_groups:
                    g["lr"] *= 0.5
        msg = (f"epoch {epoch}: train {tot / n:.4f} valid {valid:.4f} (best {best:.4f}) "
               f"{n / seconds:.0f} frames/s lr {opt.param_groups[0]['lr']:.2g}")  # fmt: skip
        if progress:
            tqdm.write(msg)
        else:
            log.warning(msg)  # the run's one line per epoch, shown without -v
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "history": json.dumps(history),
                    "since_best": since_best, "since_lr": since_lr}, last)  # fmt: skip
    best_model = poly.load(out)
    figures: dict[str, Any] = {"params": poly.n_params(best_model), "epochs": len(history),
                               "train_minutes": train_s / 60,
                               "with_valid_minutes": (train_s + sum(h.get("valid_seconds", 0.0) for h in history)) / 60,
                               "frames_per_s": n_train * len(history) / train_s if train_s else 0.0}  # fmt: skip
    for split in ("valid", "test"):
        total, count = score(best_model, rolls[split])
        figures[split] = {"nll_per_frame": total / count, "frames": count}
    figures |= {"model": asdict(model_cfg), "train_config": asdict(cfg), "history": history}
    (out / BENCH_FILE).write_text(json.dumps(figures, indent=2) + "\n")
    return figures


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``poly-bench`` subcommand to ``rtgen-train``."""
    p = subparsers.add_parser("poly-bench", help="train, select and test a polyphonic model on a benchmark dataset")
    p.add_argument("--dataset", required=True, help="JSB_Chorales, Nottingham, MuseData or Piano_midi")
    p.add_argument("--out", type=Path, required=True, help="folder for the checkpoint and poly_bench.json")
    p.add_argument("--data-dir", type=Path, default=DATA_DIR, help=f"folder of the .mat files (default: {DATA_DIR})")
    d, b = poly.PolyConfig(), BenchConfig()
    p.add_argument("--head", choices=poly.HEADS, default=d.head)
    for name in ("embed", "hidden", "layers", "nade_hidden"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(d, name))
    p.add_argument("--dropout", type=float, default=d.dropout)
    for name in ("epochs", "batch_frames", "patience", "lr_patience", "seed", "threads"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(b, name))
    for name in ("lr", "clip", "max_minutes"):
        p.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(b, name))
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    path = args.data_dir / f"{args.dataset}.mat"
    if not path.exists():
        found = sorted(f.stem for f in args.data_dir.glob("*.mat"))
        raise RtgenError(f"no {path} (datasets there: {', '.join(found) or 'none'})")
    model_cfg = poly.PolyConfig(head=args.head, embed=args.embed, hidden=args.hidden, layers=args.layers,
                                nade_hidden=args.nade_hidden, dropout=args.dropout)  # fmt: skip
    cfg = BenchConfig(epochs=args.epochs, batch_frames=args.batch_frames, lr=args.lr, clip=args.clip,
                      patience=args.patience, lr_patience=args.lr_patience, max_minutes=args.max_minutes,
                      seed=args.seed, threads=args.threads)  # fmt: skip
    figures = train(load_rolls(path), args.out, model_cfg, cfg, progress=not args.quiet)
    summary = {k: figures[k] for k in ("params", "epochs", "train_minutes", "frames_per_s", "valid", "test")}
    print(json.dumps({"dataset": args.dataset, "head": args.head, **summary}))
    return 0

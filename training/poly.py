"""The polyphonic step model: a time-axis GRU under a within-step head over the 88 pitches.

One step (a frame of the piano roll) is predicted from the frames before it (and, where the data has
bars, from the position in the bar)::

    prev frame (B, T, 88) --Linear--> (B, T, E) [+ position embedding] --GRU--> u (B, T, H)

and ``u`` parameterises the distribution of the frame. Two heads:

- ``bernoulli``: each pitch an independent Bernoulli, ``p = sigmoid(Linear(u))`` (the TCN / RRU
  benchmark baseline).
- ``pitch_rnn`` (the pitch-axis alternative): a small GRU runs over the pitches of the frame, top pitch
  first, its state started from ``u``; at pitch ``i`` it reads a learnt embedding of the pitch and the value
  of the pitch decided before it, and its output plus a per-pitch bias from ``u`` is pitch ``i``'s logit.
  Also a proper joint distribution of the frame; measured against ``nade`` on the benchmark (not exported).
- ``nade`` (RNN-NADE, Boulanger-Lewandowski et al. 2012; NADE: Larochelle & Murray 2011): the pitches of a
  frame are decided one after another, top pitch first. The GRU state gives the NADE's biases,
  ``b_v(t) = Linear(u_t)`` (one per pitch) and ``b_h(t) = Linear(u_t)`` (one per NADE hidden unit); pitch
  ``i`` (in that order) is on with probability
  ``sigmoid(b_v_i + V_i . sigmoid(b_h + sum_{j<i} W_j v_j))``: one weight-shared hidden layer accumulates
  the pitches already decided. The product over pitches is a proper joint distribution of the frame
  (all 2^88 frames sum to 1), and with teacher forcing its exact log-likelihood is one pass.

Clamping: ``log_prob(..., observed=mask)`` leaves the observed pitches' terms out; ``sample_step`` sets
them instead of drawing them. When the observed pitches come first in the order (a melody and everything
above it, since the order is top down) that is the exact conditional ``p(rest | observed)``; otherwise it
is the usual clamped-chain approximation.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 (torch's own alias)
from torch import nn

from rtgen.errors import RtgenError

HEADS = ("nade", "bernoulli", "pitch_rnn")
"""The within-step heads :class:`PolyModel` knows."""
CONFIG_FILE = "config.json"
"""A checkpoint folder's model arguments (JSON)."""
WEIGHTS_FILE = "model.pt"
"""A checkpoint folder's weights: a plain state dict of tensors (loaded with ``weights_only=True``)."""


@dataclass
class PolyConfig:
    """Model arguments; a checkpoint carries them in ``config.json``.

    Attributes:
        n_pitches: pitches per frame (88 for the benchmark).
        embed: size of a frame's embedding, the GRU's input.
        hidden: GRU state size.
        layers: GRU layers.
        head: ``"nade"`` (joint within a step) or ``"bernoulli"`` (independent pitches).
        nade_hidden: the NADE's hidden units.
        bar_steps: steps per bar for the position-in-bar input; 0 = no position (the benchmark).
        dropout: dropout on the GRU's input and output.
    """

    n_pitches: int = 88
    embed: int = 128
    hidden: int = 256
    layers: int = 1
    head: str = "nade"
    nade_hidden: int = 128
    bar_steps: int = 0
    dropout: float = 0.3

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise RtgenError(f"head must be one of {', '.join(HEADS)}, not {self.head!r}")
        if self.bar_steps < 0:
            raise RtgenError(f"bar_steps must be >= 0, not {self.bar_steps}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PolyConfig:
        """The config in ``d``; unknown keys are refused by name."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise RtgenError(f"unknown model argument(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return cls(**d)


class PolyModel(nn.Module):
    """Time-axis GRU plus a within-step head (see the module docstring)."""

    def __init__(self, cfg: PolyConfig) -> None:
        super().__init__()
        self.cfg = cfg
        P, E, H = cfg.n_pitches, cfg.embed, cfg.hidden  # noqa: N806 (shape names)
        self.inp = nn.Linear(P, E)
        self.pos = nn.Embedding(cfg.bar_steps, E) if cfg.bar_steps else None
        self.rnn = nn.GRU(E, H, cfg.layers, batch_first=True, dropout=cfg.dropout if cfg.layers > 1 else 0.0)
        self.drop = nn.Dropout(cfg.dropout)
        if cfg.head == "bernoulli":
            self.out = nn.Linear(H, P)
        elif cfg.head == "pitch_rnn":
            Hn = cfg.nade_hidden  # noqa: N806 (the pitch GRU's state size)
            self.to_bv = nn.Linear(H, P)
            self.to_h0 = nn.Linear(H, Hn)
            self.pitch_emb = nn.Parameter(torch.randn(P, 16) * 0.1)  # NADE order
            self.pitch_rnn = nn.GRU(17, Hn, batch_first=True)
            self.pitch_out = nn.Linear(Hn, 1)
        else:
            Hn = cfg.nade_hidden  # noqa: N806
            self.to_bv = nn.Linear(H, P)  # visible biases b_v(t), in NADE order (top pitch first)
            self.to_bh = nn.Linear(H, Hn)  # hidden biases b_h(t)
            self.W = nn.Parameter(torch.randn(P, Hn) * 0.01)  # decided pitch -> NADE hidden (NADE order)
            self.V = nn.Parameter(torch.randn(P, Hn) * 0.01)  # NADE hidden -> pitch logit (NADE order)
            # strictly lower triangle: a matmul sums the W rows of earlier pitches (faster than a cumsum here)
            self.register_buffer("before", torch.tril(torch.ones(P, P), -1), persistent=False)

    def state(
        self, prev: torch.Tensor, pos: torch.Tensor | None = None, h0: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The GRU's output for each step and its final state.

        Args:
            prev: ``(B, T, P)`` the frame before each predicted one (0/1 floats).
            pos: ``(B, T)`` position in bar of each predicted frame (long), when ``bar_steps`` > 0.
            h0: ``(layers, B, H)`` initial state, or None for zeros.

        Returns:
            ``u (B, T, H)`` and ``h (layers, B, H)``.
        """
        x = self.inp(prev)  # (B, T, E)
        if self.pos is not None:
            if pos is None:
                raise RtgenError("this model was trained with position in bar: pass pos")
            x = x + self.pos(pos)
        u, h = self.rnn(self.drop(x), h0)  # (B, T, H), (layers, B, H)
        return self.drop(u), h

    def logits(self, u: torch.Tensor, frame: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logit of each pitch given the pitches before it in the head's order.

        Args:
            u: ``(..., H)`` GRU outputs.
            frame: ``(..., P)`` the frames (0/1 floats); the Bernoulli head ignores it.

        Returns:
            ``(..., P)`` logits, in pitch order (column j = pitch j).
        """
        if self.cfg.head == "bernoulli":
            return self.out(u)
        if self.cfg.head == "pitch_rnn":
            return self._pitch_rnn_logits(u, frame)
        v = frame.flip(-1)  # (..., P) NADE order: top pitch first
        bh = self.to_bh(u)  # (..., Hn)
        bv = self.to_bv(u)  # (..., P)
        before = v.unsqueeze(-2) * self.before  # (..., P, P) row i: the pitches decided before pitch i
        hid = torch.sigmoid(bh.unsqueeze(-2) + before @ self.W)  # (..., P, Hn)
        out = bv + torch.einsum("...ph,ph->...p", hid, self.V)  # (..., P)
        return out.flip(-1)

    def _pitch_rnn_logits(self, u: torch.Tensor, frame: torch.Tensor) -> torch.Tensor:
        lead, P = u.shape[:-1], self.cfg.n_pitches  # noqa: N806
        flat_u = u.reshape(-1, u.shape[-1])  # (N, H)
        v = frame.reshape(-1, P).flip(-1)  # (N, P) NADE order
        shifted = torch.cat([torch.zeros_like(v[:, :1]), v[:, :-1]], dim=1)  # the pitch decided before each
        x = torch.cat([shifted.unsqueeze(-1), self.pitch_emb.expand(v.shape[0], P, 16)], dim=-1)  # (N, P, 17)
        h0 = torch.tanh(self.to_h0(flat_u)).unsqueeze(0)  # (1, N, Hn)
        out, _ = self.pitch_rnn(x, h0)  # (N, P, Hn)
        logits = self.pitch_out(out).squeeze(-1) + self.to_bv(flat_u)  # (N, P) NADE order
        return logits.flip(-1).reshape(*lead, P)

    def log_prob(self, u: torch.Tensor, frame: torch.Tensor, observed: torch.Tensor | None = None) -> torch.Tensor:
        """Log-probability of each frame (of its unobserved pitches given the observed ones).

        Args:
            u: ``(..., H)`` GRU outputs.
            frame: ``(..., P)`` frames (0/1 floats).
            observed: ``(..., P)`` bool, pitches given rather than predicted; None = none.

        Returns:
            ``(...)`` natural-log probabilities.
        """
        lp = -F.binary_cross_entropy_with_logits(self.logits(u, frame), frame, reduction="none")  # (..., P)
        if observed is not None:
            lp = lp.masked_fill(observed, 0.0)
        return lp.sum(-1)

    @torch.no_grad()
    def sample_step(
        self,
        u: torch.Tensor,
        uniforms: torch.Tensor,
        clamp: torch.Tensor | None = None,
        observed: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Draw one frame per row, pitch by pitch in the head's order; observed pitches are set, not drawn.

        Args:
            u: ``(B, H)`` GRU outputs for the step.
            uniforms: ``(B, P)`` random draws in [0, 1) (passed in, so a caller owns the randomness).
            clamp: ``(B, P)`` values of the observed pitches.
            observed: ``(B, P)`` bool, which pitches are observed.

        Returns:
            ``(B, P)`` the frame (0/1 floats), column j = pitch j.
        """
        P = self.cfg.n_pitches  # noqa: N806
        if clamp is None or observed is None:
            clamp = torch.zeros_like(uniforms)
            observed = torch.zeros_like(uniforms, dtype=torch.bool)
        if self.cfg.head == "bernoulli":
            drawn = (uniforms < torch.sigmoid(self.out(u))).float()
            return torch.where(observed, clamp, drawn)
        if self.cfg.head == "pitch_rnn":
            return self._pitch_rnn_sample(u, uniforms, clamp, observed)
        bv, a = self.to_bv(u), self.to_bh(u)  # (B, P), (B, Hn)
        out = torch.zeros_like(uniforms)
        for k in range(P):  # NADE order position k is pitch P-1-k
            j = P - 1 - k
            p = torch.sigmoid(bv[:, k] + torch.sigmoid(a) @ self.V[k])  # (B,)
            vj = torch.where(observed[:, j], clamp[:, j], (uniforms[:, j] < p).float())
            out[:, j] = vj
            a = a + vj.unsqueeze(-1) * self.W[k]
        return out

    def _pitch_rnn_sample(
        self, u: torch.Tensor, uniforms: torch.Tensor, clamp: torch.Tensor, observed: torch.Tensor
    ) -> torch.Tensor:
        P = self.cfg.n_pitches  # noqa: N806
        bv = self.to_bv(u)
        h = torch.tanh(self.to_h0(u)).unsqueeze(0)  # (1, B, Hn)
        out = torch.zeros_like(uniforms)
        last = torch.zeros(u.shape[0], 1)
        for k in range(P):
            j = P - 1 - k
            x = torch.cat([last, self.pitch_emb[k].expand(u.shape[0], 16)], dim=-1).unsqueeze(1)  # (B, 1, 17)
            o, h = self.pitch_rnn(x, h)
            p = torch.sigmoid(self.pitch_out(o[:, 0]).squeeze(-1) + bv[:, k])
            vj = torch.where(observed[:, j], clamp[:, j], (uniforms[:, j] < p).float())
            out[:, j] = vj
            last = vj.unsqueeze(-1)
        return out


def save(model: PolyModel, folder: Path) -> None:
    """Write ``folder/config.json`` and ``folder/model.pt`` (a state dict of tensors; no pickled objects)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(json.dumps(asdict(model.cfg), indent=2) + "\n")
    tmp = folder / (WEIGHTS_FILE + ".tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(folder / WEIGHTS_FILE)


def load(folder: Path) -> PolyModel:
    """The model saved in ``folder`` by :func:`save`, in eval mode.

    Raises:
        RtgenError: the folder is not a polyphonic checkpoint.
    """
    try:
        cfg = PolyConfig.from_dict(json.loads((folder / CONFIG_FILE).read_text()))
        state = torch.load(folder / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    except (OSError, ValueError) as err:
        raise RtgenError(f"{folder} is not a polyphonic model folder ({CONFIG_FILE} + {WEIGHTS_FILE}): {err}") from err
    model = PolyModel(cfg)
    model.load_state_dict(state)
    return model.eval()


def n_params(model: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

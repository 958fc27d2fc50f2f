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

Three states (``states=3``, the MIDI step grid of :mod:`training.poly_midi`): per pitch off, onset or held,
and a velocity bin per onset. The GRU reads the previous step as ``[sounding, onset, onset x velocity]`` per
pitch (:meth:`PolyModel.inputs`). The NADE decides each pitch's state as a 3-way categorical, top pitch
first: ``softmax(b_v_i + V_i . sigmoid(b_h + sum_{j<i} W_j[s_j]))`` with ``b_v (P, 3)``, ``V_i (3, Hn)`` and
a learnt embedding ``W_j[s]`` of each decided pitch's state (onset or held; off adds nothing). An onset's
velocity bin is ``softmax(A u + B h_i + c_i)``: the time state, the NADE hidden ``h_i`` at that pitch and a
per-pitch bias. The frame's log-likelihood is the states' plus the onsets' velocities': exact, one pass.

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
OFF_BIAS = 3.0
"""Initial logit of "off" above onset and held in a three-state model (p(off) about 0.9 at the start)."""
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
        states: 2 = a frame is the set of sounding pitches (the benchmark); 3 = per pitch off, onset or held.
        velocity_bins: with 3 states, velocity bins of an onset (0 = no velocity head).
    """

    n_pitches: int = 88
    embed: int = 128
    hidden: int = 256
    layers: int = 1
    head: str = "nade"
    nade_hidden: int = 128
    bar_steps: int = 0
    dropout: float = 0.3
    states: int = 2
    velocity_bins: int = 0

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise RtgenError(f"head must be one of {', '.join(HEADS)}, not {self.head!r}")
        if self.states not in (2, 3):
            raise RtgenError(f"states must be 2 (sounding or not) or 3 (off, onset, held), not {self.states}")
        if self.states == 3 and self.head != "nade":
            raise RtgenError("three states (off, onset, held) need the nade head")
        if self.velocity_bins < 0 or (self.velocity_bins and self.states != 3):
            raise RtgenError(f"velocity_bins ({self.velocity_bins}) needs states 3 and must be >= 0")
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
        self.inp = nn.Linear(P if cfg.states == 2 else (3 if cfg.velocity_bins else 2) * P, E)
        self.pos = nn.Embedding(cfg.bar_steps, E) if cfg.bar_steps else None
        self.rnn = nn.GRU(E, H, cfg.layers, batch_first=True, dropout=cfg.dropout if cfg.layers > 1 else 0.0)
        self.drop = nn.Dropout(cfg.dropout)
        if cfg.head == "bernoulli":
            self.out = nn.Linear(H, P)
        elif cfg.states == 3:
            Hn, VB = cfg.nade_hidden, cfg.velocity_bins  # noqa: N806
            self.to_bv = nn.Linear(H, 3 * P)  # (P, 3) state biases, NADE order
            with torch.no_grad():  # start where music is: most pitches off most of the time
                self.to_bv.bias.view(P, 3)[:, 0] += OFF_BIAS
            self.to_bh = nn.Linear(H, Hn)
            self.W = nn.Parameter(torch.randn(P, 2, Hn) * 0.01)  # decided pitch's onset / held -> NADE hidden
            self.V = nn.Parameter(torch.randn(P, 3, Hn) * 0.01)  # NADE hidden -> state logits
            self.register_buffer("before", torch.tril(torch.ones(P, P), -1), persistent=False)
            if VB:
                self.vel_u = nn.Linear(H, VB)  # time state -> velocity logits
                self.vel_h = nn.Linear(Hn, VB, bias=False)  # NADE hidden at the pitch -> velocity logits
                self.vel_p = nn.Parameter(torch.zeros(P, VB))  # per-pitch velocity bias (NADE order)
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

    def inputs(self, frame: torch.Tensor, velocity: torch.Tensor | None = None) -> torch.Tensor:
        """The GRU's input for a step after ``frame``: the frame itself (2 states) or, for 3 states,
        ``[sounding, onset, onset x velocity / (bins - 1)]`` per pitch.

        Args:
            frame: ``(..., P)`` 0/1 (2 states) or state codes 0 off, 1 onset, 2 held (any dtype).
            velocity: ``(..., P)`` velocity bins (at onsets); needed when the model has a velocity head.
        """
        if self.cfg.states == 2:
            return frame.float()
        code = frame.long()
        onset = (code == 1).float()
        parts = [(code > 0).float(), onset]
        if self.cfg.velocity_bins:
            if velocity is None:
                raise RtgenError("this model reads velocities: pass velocity")
            parts.append(onset * velocity.float() / max(self.cfg.velocity_bins - 1, 1))
        return torch.cat(parts, -1)

    def state(
        self, prev: torch.Tensor, pos: torch.Tensor | None = None, h0: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The GRU's output for each step and its final state.

        Args:
            prev: ``(B, T, P)`` the frame before each predicted one (0/1 floats), or :meth:`inputs` of it.
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

    def logits3(self, u: torch.Tensor, code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Teacher-forced state logits and velocity logits of a three-state model.

        Args:
            u: ``(..., H)`` GRU outputs.
            code: ``(..., P)`` state codes (0 off, 1 onset, 2 held).

        Returns:
            ``(..., P, 3)`` state logits and ``(..., P, bins)`` velocity logits (None without a velocity head),
            in pitch order.
        """
        P = self.cfg.n_pitches  # noqa: N806
        decided = F.one_hot(code.long().flip(-1), 3)[..., 1:].float()  # (..., P, 2) NADE order
        emb = torch.einsum("...ps,psh->...ph", decided, self.W)  # (..., P, Hn)
        hid = torch.sigmoid(self.to_bh(u).unsqueeze(-2) + self.before @ emb)  # (..., P, Hn)
        bv = self.to_bv(u).unflatten(-1, (P, 3))  # (..., P, 3)
        out = bv + torch.einsum("...ph,psh->...ps", hid, self.V)
        if not self.cfg.velocity_bins:
            return out.flip(-2), None
        vel = self.vel_u(u).unsqueeze(-2) + self.vel_h(hid) + self.vel_p  # (..., P, bins)
        return out.flip(-2), vel.flip(-2)

    def log_prob_parts(
        self,
        u: torch.Tensor,
        frame: torch.Tensor,
        velocity: torch.Tensor | None = None,
        observed: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(states, velocities)`` log-probabilities of each frame: the velocities' term is the onsets' bins
        (zeros for a model without velocities or when ``velocity`` is None).

        Args:
            u: ``(..., H)`` GRU outputs.
            frame: ``(..., P)`` frames: 0/1 floats (2 states) or state codes (3 states).
            velocity: ``(..., P)`` velocity bins (read at onsets).
            observed: ``(..., P)`` bool, pitches given rather than predicted (their terms left out); None = none.
        """
        if self.cfg.states == 2:
            return self.log_prob(u, frame, observed), torch.zeros(frame.shape[:-1])
        code = frame.long()
        state_logits, vel_logits = self.logits3(u, code)
        lp = state_logits.log_softmax(-1).gather(-1, code.unsqueeze(-1)).squeeze(-1)  # (..., P)
        vlp = torch.zeros_like(lp)
        if vel_logits is not None and velocity is not None:
            got = vel_logits.log_softmax(-1).gather(-1, velocity.long().unsqueeze(-1)).squeeze(-1)
            vlp = torch.where(code == 1, got, vlp)
        if observed is not None:
            lp, vlp = lp.masked_fill(observed, 0.0), vlp.masked_fill(observed, 0.0)
        return lp.sum(-1), vlp.sum(-1)

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
            frame: ``(..., P)`` frames (0/1 floats; for 3 states, state codes: the states' term alone,
                :meth:`log_prob_parts` adds the velocities').
            observed: ``(..., P)`` bool, pitches given rather than predicted; None = none.

        Returns:
            ``(...)`` natural-log probabilities.
        """
        if self.cfg.states == 3:
            return self.log_prob_parts(u, frame, None, observed)[0]
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

    @torch.no_grad()
    def sample_step3(
        self,
        u: torch.Tensor,
        uniforms: torch.Tensor,
        vel_uniforms: torch.Tensor,
        clamp: torch.Tensor | None = None,
        observed: torch.Tensor | None = None,
        temperature: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw one three-state frame and its onsets' velocities per row, top pitch first.

        A pitch's state is the Gumbel-max draw ``argmax(z + T g)`` of its logits ``z`` at temperature ``T``,
        ``g = -log(-log(uniform))`` from its three uniforms (a draw from ``softmax(z / T)``); an onset's velocity
        bin is its uniform against the cumulative probabilities of the bins at ``T``. Observed pitches take
        ``clamp``'s code.

        Args:
            u: ``(B, H)`` GRU outputs for the step.
            uniforms: ``(B, P, 3)`` random draws in [0, 1) for the states.
            vel_uniforms: ``(B, P)`` random draws in [0, 1) for the velocities.
            clamp: ``(B, P)`` codes of the observed pitches.
            observed: ``(B, P)`` bool, which pitches are observed.
            temperature: divides every logit.

        Returns:
            ``(B, P)`` state codes (long) and ``(B, P)`` velocity bins (long, 0 where no onset).
        """
        P, VB = self.cfg.n_pitches, self.cfg.velocity_bins  # noqa: N806
        B = u.shape[0]  # noqa: N806
        if clamp is None or observed is None:
            clamp = torch.zeros(B, P, dtype=torch.long)
            observed = torch.zeros(B, P, dtype=torch.bool)
        noise = temperature * -torch.log(-torch.log(uniforms))  # (B, P, 3) pitch order
        bv, a = self.to_bv(u).unflatten(-1, (P, 3)), self.to_bh(u)  # (B, P, 3) NADE order, (B, Hn)
        code = torch.zeros(B, P, dtype=torch.long)
        hidden = []
        for k in range(P):  # NADE order position k is pitch P-1-k
            j = P - 1 - k
            h = torch.sigmoid(a)
            hidden.append(h)
            drawn = (h @ self.V[k].T + bv[:, k] + noise[:, j]).argmax(-1)
            s = torch.where(observed[:, j], clamp[:, j].long(), drawn)
            code[:, j] = s
            a = a + F.one_hot(s, 3)[:, 1:].float() @ self.W[k]
        if not VB:
            return code, torch.zeros_like(code)
        hid = torch.stack(hidden[::-1], dim=1)  # (B, P, Hn) pitch order
        vl = self.vel_u(u).unsqueeze(1) + self.vel_h(hid) + self.vel_p.flip(0)  # (B, P, bins)
        q = torch.softmax(vl / temperature, -1).cumsum(-1)
        bins = (vel_uniforms.unsqueeze(-1) >= q[..., : VB - 1]).sum(-1)
        return code, torch.where(code == 1, bins, torch.zeros_like(bins))

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

"""The chord and note models: small stateful GRUs that run one grid step at a time.

Both models read the inputs of the token contract (``rtgen.contract.COMMON_INPUTS``;
the note model also ``chord_now``), embed each token, concatenate the embeddings
(plus fixed musical features: pitch class and octave of melody tokens, chord tones
and root of chord tokens), run them through a GRU and project to logits:

* :class:`ChordModel`: p(chord_t | melody_<t, chord_<t, position) -> ``chord_logits``;
* :class:`NoteModel`: p(melody_t, velocity_t | melody_<t, chord_<=t, position)
  -> ``melody_logits``, ``velocity_logits``;
* :class:`HarmonyModel`: p(chord sounding at t | melody_<=t, position) -> ``harmony_logits``
  (the accompanist; it never sees chords, so live it hears what it heard in training).

``forward`` runs whole sequences (training, teacher forcing); ``step`` runs one step
with inputs of shape (B,) and is what gets exported to ONNX. The recurrent state is
``(layers, B, hidden)`` and a fresh sequence starts from zeros.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from rtgen import contract as C  # noqa: N812 (short alias, used on every line)

BACKBONES = ("gru",)

# Vocabulary size of each token input.
INPUT_VOCAB: dict[str, int] = {
    "prev_melody": C.MELODY_VOCAB_SIZE,
    "prev_sounding": C.MELODY_VOCAB_SIZE,
    "prev_velocity": C.NUM_VELOCITY_BINS,
    "prev_chord": C.CHORD_VOCAB_SIZE,
    "prev_chord_now": C.CHORD_VOCAB_SIZE,
    "position": C.MAX_BAR_STEPS,
    "phrase": C.PHRASE_BARS,
    "chord_now": C.CHORD_VOCAB_SIZE,
    "lookback_melody": C.MELODY_VOCAB_SIZE,  # (B, NUM_LOOKBACKS) per step
    "lookback_chord": C.CHORD_VOCAB_SIZE,
    "melody_now": C.MELODY_VOCAB_SIZE,
    "sounding_now": C.MELODY_VOCAB_SIZE,
}
_MELODY_INPUTS = ("prev_melody", "prev_sounding", "melody_now", "sounding_now")
_CHORD_INPUTS = ("prev_chord", "prev_chord_now", "chord_now")
LOOKBACK_INPUTS = ("lookback_melody", "lookback_chord")


@dataclass
class ModelConfig:
    """Architecture of one model; saved in checkpoints and meta.json.

    Attributes:
        backbone: sequence model; only ``"gru"`` for now.
        hidden: GRU hidden size.
        layers: GRU layers.
        token_emb: embedding size of melody and chord tokens.
        small_emb: embedding size of velocity, position and phrase tokens, and of each lookback token.
        dropout: dropout on the GRU input, between layers and before the heads.
        features: add fixed musical features (pitch class, octave, chord tones, root).
        copy: the chord and note models add a copy head (:class:`CopyHead`): a learnt score, per
            lookback, for repeating the token 1, 2, 4 or 8 bars back. Checkpoints from before it
            existed load without it.
    """

    backbone: str = "gru"
    hidden: int = 128
    layers: int = 2
    token_emb: int = 48
    small_emb: int = 16
    dropout: float = 0.05
    features: bool = True
    copy: bool = True

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}, got {self.backbone!r}")
        if self.hidden < 1 or self.layers < 1:
            raise ValueError(f"hidden and layers must be >= 1, got hidden={self.hidden} layers={self.layers}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys are ignored (forward compatible)."""
        names = {f.name for f in fields(cls)}
        return cls(**({"copy": False} | {k: v for k, v in d.items() if k in names}))


def _melody_features() -> np.ndarray:
    """(MELODY_VOCAB_SIZE, 12 + 1 + 2): pitch-class one-hot, scaled octave, is-rest, is-hold."""
    f = np.zeros((C.MELODY_VOCAB_SIZE, 15), dtype=np.float32)
    f[C.MEL_REST, 13] = 1.0
    f[C.MEL_HOLD, 14] = 1.0
    for tok in range(C.MEL_NOTE_OFFSET, C.MELODY_VOCAB_SIZE):
        pitch = C.melody_pitch(tok)
        assert pitch is not None
        f[tok, pitch % 12] = 1.0
        f[tok, 12] = (pitch - 72) / 12.0
    return f


def chord_templates() -> np.ndarray:
    """(CHORD_VOCAB_SIZE, 12): chord-tone pitch classes of each chord token (HOLD, N.C. all zero)."""
    t = np.zeros((C.CHORD_VOCAB_SIZE, 12), dtype=np.float32)
    for tok in range(C.CHORD_OFFSET, C.CHORD_VOCAB_SIZE):
        for pc in C.Chord.from_token(tok).pitch_classes:
            t[tok, pc] = 1.0
    return t


def _chord_features() -> np.ndarray:
    """(CHORD_VOCAB_SIZE, 12 + 12 + 2): chord tones, root one-hot, is-hold, is-N.C."""
    f = np.zeros((C.CHORD_VOCAB_SIZE, 26), dtype=np.float32)
    f[:, :12] = chord_templates()
    f[C.CHORD_HOLD, 24] = 1.0
    f[C.CHORD_NC, 25] = 1.0
    for tok in range(C.CHORD_OFFSET, C.CHORD_VOCAB_SIZE):
        f[tok, 12 + C.Chord.from_token(tok).root] = 1.0
    return f


class Embedder(nn.Module):
    """Embeds a dict of token tensors and concatenates them along the last axis."""

    mel_feat: Tensor
    chord_feat: Tensor

    def __init__(self, names: tuple[str, ...], cfg: ModelConfig) -> None:
        super().__init__()
        self.names = names
        self.features = cfg.features
        self.emb = nn.ModuleDict()
        self.out_dim = 0
        for name in names:
            dim = cfg.token_emb if name in _MELODY_INPUTS + _CHORD_INPUTS else cfg.small_emb
            self.emb[name] = nn.Embedding(INPUT_VOCAB[name], dim)
            self.out_dim += dim * (C.NUM_LOOKBACKS if name in LOOKBACK_INPUTS else 1)
        if cfg.features:
            self.register_buffer("mel_feat", torch.from_numpy(_melody_features()), persistent=False)
            self.register_buffer("chord_feat", torch.from_numpy(_chord_features()), persistent=False)
            self.out_dim += sum(
                self.mel_feat.shape[1] if n in _MELODY_INPUTS else self.chord_feat.shape[1]
                for n in names
                if n in _MELODY_INPUTS + _CHORD_INPUTS
            )

    def forward(self, feeds: dict[str, Tensor]) -> Tensor:
        """feeds: name -> (B, T) or (B,) int64 (lookbacks: (B, T, K) or (B, K)); returns (B, [T,] out_dim)."""
        parts = [self.emb[n](feeds[n]) for n in self.names if n not in LOOKBACK_INPUTS]
        for n in self.names:
            if n in LOOKBACK_INPUTS:
                parts.append(self.emb[n](feeds[n]).flatten(-2))  # (..., K, E) -> (..., K*E)
        if self.features:
            for n in self.names:
                if n in _MELODY_INPUTS:
                    parts.append(nn.functional.embedding(feeds[n], self.mel_feat))
                elif n in _CHORD_INPUTS:
                    parts.append(nn.functional.embedding(feeds[n], self.chord_feat))
        return torch.cat(parts, dim=-1)


class CopyHead(nn.Module):
    """Logits for repeating what was played 1, 2, 4 and 8 bars back at this position.

    ``logits += sum_k s_k(h) * onehot(lookback_k)``: the GRU decides, step by step, how much to trust
    each lookback (the repetition folk tunes are made of), and the token it points at gets that score
    directly instead of through the embedding, the recurrence and the head.
    """

    eye: Tensor

    def __init__(self, hidden: int, vocab: int) -> None:
        super().__init__()
        self.proj = nn.Linear(hidden, C.NUM_LOOKBACKS)
        self.register_buffer("eye", torch.eye(vocab), persistent=False)

    def forward(self, h: Tensor, lookback: Tensor) -> Tensor:
        """h (..., H), lookback (..., K) int64 -> copy logits (..., V)."""
        scores = self.proj(h).unsqueeze(-2)  # (..., 1, K)
        return torch.matmul(scores, nn.functional.embedding(lookback, self.eye)).squeeze(-2)


class _Recurrent(nn.Module):
    """Embedder + GRU shared by both models."""

    def __init__(self, names: tuple[str, ...], cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.input_names = names
        self.embed = Embedder(names, cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.rnn = nn.GRU(
            self.embed.out_dim,
            cfg.hidden,
            num_layers=cfg.layers,
            batch_first=True,
            dropout=cfg.dropout if cfg.layers > 1 else 0.0,
        )

    def initial_state(self, batch: int = 1) -> Tensor:
        """All-zero state (layers, B, hidden)."""
        p = next(self.parameters())
        return torch.zeros(self.cfg.layers, batch, self.cfg.hidden, dtype=p.dtype, device=p.device)

    def _run(self, feeds: dict[str, Tensor], state: Tensor | None) -> tuple[Tensor, Tensor]:
        x = self.drop(self.embed(feeds))  # (B, T, E)
        if state is None:
            state = self.initial_state(x.shape[0])
        h, state = self.rnn(x, state)  # (B, T, H), (L, B, H)
        return self.drop(h), state


class ChordModel(_Recurrent):
    """p(chord_t | melody_<t, chord_<t, position, phrase)."""

    templates: Tensor

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(C.COMMON_INPUTS, cfg)
        self.head = nn.Linear(cfg.hidden, C.CHORD_VOCAB_SIZE)
        # Pitch-class scores shared by all chords containing that pitch class: a
        # transposition-aware bias that lets rare chords borrow strength from common ones.
        self.pc_head = nn.Linear(cfg.hidden, 12, bias=False)
        self.register_buffer("templates", torch.from_numpy(chord_templates()), persistent=False)
        self.copy_head = CopyHead(cfg.hidden, C.CHORD_VOCAB_SIZE) if cfg.copy else None

    def forward(self, feeds: dict[str, Tensor], state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Sequences: feeds name -> (B, T); returns chord logits (B, T, V) and state (L, B, H)."""
        h, state = self._run(feeds, state)
        logits = self.head(h) + self.pc_head(h) @ self.templates.T  # (B, T, V)
        if self.copy_head is not None:
            logits = logits + self.copy_head(h, feeds["lookback_chord"])
        return logits, state

    def step(self, feeds: dict[str, Tensor], state: Tensor) -> tuple[Tensor, Tensor]:
        """One step: feeds name -> (B,) (lookbacks (B, K)); returns chord logits (B, V) and the new state."""
        logits, state = self.forward({k: v.unsqueeze(1) for k, v in feeds.items()}, state)
        return logits[:, 0], state


class HarmonyModel(_Recurrent):
    """p(chord sounding at t | melody_<=t, position, phrase): the accompanist's harmoniser.

    Reads only the melody (up to and including step t) and the position, never the chords: live it
    hears the player exactly as it heard the human melodies in training. Predicts the resolved chord
    (N.C. or a chord, never HOLD); the engine turns it into a HOLD or a change.
    """

    templates: Tensor

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(C.HARMONY_MODEL_INPUTS[:-1], cfg)
        self.head = nn.Linear(cfg.hidden, C.CHORD_VOCAB_SIZE)
        self.pc_head = nn.Linear(cfg.hidden, 12, bias=False)
        self.register_buffer("templates", torch.from_numpy(chord_templates()), persistent=False)

    def forward(self, feeds: dict[str, Tensor], state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Sequences: feeds name -> (B, T); returns harmony logits (B, T, V) and state (L, B, H)."""
        h, state = self._run(feeds, state)
        return self.head(h) + self.pc_head(h) @ self.templates.T, state

    def step(self, feeds: dict[str, Tensor], state: Tensor) -> tuple[Tensor, Tensor]:
        """One step: feeds name -> (B,) (lookbacks (B, K)); returns harmony logits (B, V) and the new state."""
        logits, state = self.forward({k: v.unsqueeze(1) for k, v in feeds.items()}, state)
        return logits[:, 0], state


class NoteModel(_Recurrent):
    """p(melody_t, velocity_t | melody_<t, chord_<=t, position, phrase)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__((*C.COMMON_INPUTS, "chord_now"), cfg)
        self.melody_head = nn.Linear(cfg.hidden, C.MELODY_VOCAB_SIZE)
        self.velocity_head = nn.Linear(cfg.hidden, C.NUM_VELOCITY_BINS)
        self.copy_head = CopyHead(cfg.hidden, C.MELODY_VOCAB_SIZE) if cfg.copy else None

    def forward(self, feeds: dict[str, Tensor], state: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Sequences: returns melody logits (B, T, Vm), velocity logits (B, T, Vv), state (L, B, H)."""
        h, state = self._run(feeds, state)
        melody = self.melody_head(h)
        if self.copy_head is not None:
            melody = melody + self.copy_head(h, feeds["lookback_melody"])
        return melody, self.velocity_head(h), state

    def step(self, feeds: dict[str, Tensor], state: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One step: feeds name -> (B,) (lookbacks (B, K)); returns melody (B, Vm), velocity (B, Vv) logits, state."""
        mel, vel, state = self.forward({k: v.unsqueeze(1) for k, v in feeds.items()}, state)
        return mel[:, 0], vel[:, 0], state


def harmony_target(batch: dict[str, Tensor]) -> Tensor:
    """The harmoniser's target: the chord sounding at each step (``chord_now``), ignored where ``chord`` is."""
    return torch.where(batch["chord"] == -100, -100, batch["chord_now"])


class Models(nn.Module):
    """Both models in one module, so one optimizer (and one DDP wrapper) trains them together.

    ``forward`` takes a batch from :mod:`training.dataset` and returns the summed
    cross-entropies and per-target sums, so that DDP sees a single forward.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.chord = ChordModel(cfg)
        self.note = NoteModel(cfg)
        self.harmony = HarmonyModel(cfg)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """batch: inputs (B, T) plus targets ``chord``, ``melody``, ``velocity`` (B, T; -100 = ignore).

        Returns:
            ``loss`` (mean chord + mean melody + mean velocity NLL, the training objective) and,
            per target, ``<name>_sum`` and ``<name>_n`` (summed NLL and counted steps) as detached tensors.
        """
        chord_logits, _ = self.chord(batch)
        harmony_logits, _ = self.harmony(batch)
        mel_logits, vel_logits, _ = self.note(batch)
        out: dict[str, Tensor] = {}
        loss = torch.zeros((), device=chord_logits.device)
        for name, target_name, logits in (
            ("chord", "chord", chord_logits),
            ("harmony", "harmony", harmony_logits),
            ("melody", "melody", mel_logits),
            ("velocity", "velocity", vel_logits),
        ):
            target = harmony_target(batch) if target_name == "harmony" else batch[target_name]
            nll = nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="sum")
            n = (target != -100).sum()
            loss = loss + nll / n.clamp(min=1)
            out[f"{name}_sum"] = nll.detach()
            out[f"{name}_n"] = n
        out["loss"] = loss
        return out

    def param_counts(self) -> dict[str, int]:
        """Trainable parameters per model."""
        return {
            "chord": sum(p.numel() for p in self.chord.parameters()),
            "note": sum(p.numel() for p in self.note.parameters()),
            "harmony": sum(p.numel() for p in self.harmony.parameters()),
        }

"""``rtgen-train accompany``: how well the model accompanies a human melody, against honest baselines.

Offline, on a split of prepared data: the human melody is the player, each *accompanist* chooses the
sounding chord step by step (online ones may use the melody up to and including the current step,
never the future) and the result is compared with the human chords of the tune.

Metrics, pooled over all tunes of the split (all meters):

* **hit**: at *counted* steps -- strong beats (``contract.strong_positions``) where the melody starts a
  note -- the share where the melody's pitch class is a tone of the accompanist's chord (N.C. = miss);
* **f1**: at the same steps, the mean pitch-class F1 between the accompanist's chord and the human
  chord sounding there (both N.C. = 1, one N.C. = 0);
* **changes_per_bar**: steps where the sounding chord differs from the previous step's (step 0 is
  compared with N.C., the contract's initial chord), per bar;
* **entropy_bits**: Shannon entropy of the chord symbols entered at those changes.

Meters. The prepared data carries positions in bar but no time signature, and 12-step bars are 3/4 or
6/8. The meter of each bar is read from the tune's MIDI file (the manifest's ``source`` + ``files``):
the file's time signature whose bar length equals the bar's; a bar of another length (a final bar cut
short, a mid-bar meter change) takes the previous bar's meter. No Nottingham file holds two meters of
the same bar length, so this is exact there. When the MIDI file cannot be read the meter is guessed
from the bar length (N/4, or N/8 for odd eighths): simple meters only, reported as ``meters.guessed``.

The rule in minor keys: the diatonic triads of natural minor in the order i, V, iv, VI, III, VII --
V major (the raised leading tone of harmonic minor, as folk minor tunes cadence) instead of v, ii°
skipped (diminished triads are rare in the data: 61 of ~50,000 chord onsets), VII last (never reached:
the first five already hold every natural-minor degree and the leading tone). Chosen before looking at
results; on the 25 valid tunes estimated minor, v instead of V gave F1 0.697 (vs 0.684) and VII before V
0.708, hit 0.96-0.97 for all: the choice barely matters.
"""

from __future__ import annotations

import argparse
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from rtgen import contract as ct
from rtgen.contract import Chord, Key, TimeSignature
from rtgen.generation.keys import estimate_key
from rtgen.generation.model import Model
from rtgen.generation.sampling import sample, sample_split
from training.prepared import load_split, read_manifest

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

BAYES_TOP_K = 16
"""Chord candidates scored by the note model in the Bayes accompanist (the chord model's most likely).

On 60 valid tunes with the shipped model, top-4/8/16/32/all-170 gave hit 0.65/0.65/0.62/0.64/0.65 and F1
0.57/0.57/0.54/0.54/0.55 (one seed: differences within sampling noise) at 2/3/6/13/65 s: 16 keeps the
tail without the cost of scoring all 170."""

_MAJ, _MIN = 0, 1  # indices into contract.QUALITIES
RULE_MAJOR = ((0, _MAJ), (7, _MAJ), (5, _MAJ), (9, _MIN), (2, _MIN), (4, _MIN))
"""I, V, IV, vi, ii, iii as (degree in semitones above the tonic, quality)."""
RULE_MINOR = ((0, _MIN), (7, _MAJ), (5, _MIN), (8, _MAJ), (3, _MAJ), (10, _MAJ))
"""i, V, iv, VI, III, VII (see the module docstring)."""

ACCOMPANISTS = {
    "human": "the human chords",
    "best_triad": "best single triad held through the tune (hindsight)",
    "rule": "rule: first of I, V, IV, vi, ii, iii holding the note (key from the whole tune)",
    "rule_online": "rule, key from the melody so far (online)",
    "chord_model": "chord model online (chord_t sampled before melody_t)",
    "bayes": "Bayes at the step: p(c_t \\| past) x p(m_t \\| c_t, past), top-{k} chords",
    "model": "the model's accompanist (rtgen.arrange.performer.accompany_offline)",
}
"""Row labels of the report, in order."""

# Pitch classes of each chord token (HOLD and N.C. have none).
_PCS = np.zeros((ct.CHORD_VOCAB_SIZE, 12), dtype=bool)
for _tok in range(ct.CHORD_OFFSET, ct.CHORD_VOCAB_SIZE):
    _PCS[_tok, list(Chord.from_token(_tok).pitch_classes)] = True
_PCS_COUNT = _PCS.sum(axis=1)
_TRIADS = np.array([Chord(r, q).token for r in range(12) for q in (_MAJ, _MIN)], dtype=np.int64)


# --- tunes -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tune:
    """One tune of a split, with the meter of every step.

    Attributes:
        melody, velocity, chord, position, phrase: the prepared arrays (docs/internals.md §1).
        bar_steps: steps in a full bar of the meter in force at each step.
        beat_steps: steps per counted beat of that meter.
        name: the source file (for messages).
    """

    melody: IntArray
    velocity: IntArray
    chord: IntArray
    position: IntArray
    phrase: IntArray
    bar_steps: IntArray
    beat_steps: IntArray
    name: str = ""

    @property
    def steps(self) -> int:
        """Number of steps."""
        return int(self.melody.size)

    @property
    def bars(self) -> int:
        """Number of bars (a partial first or last bar counts as one)."""
        if self.steps == 0:
            return 0
        return int(np.count_nonzero(self.position == 0) + (self.position[0] != 0))

    @property
    def strong(self) -> BoolArray:
        """True at strong-beat steps (``contract.strong_positions`` of each step's meter)."""
        out = np.zeros(self.steps, dtype=bool)
        for bs, beat in {(int(a), int(b)) for a, b in zip(self.bar_steps, self.beat_steps, strict=True)}:
            here = (self.bar_steps == bs) & (self.beat_steps == beat)
            out |= here & np.isin(self.position, ct.strong_positions(bs, beat))
        return out

    @property
    def counted(self) -> BoolArray:
        """Steps that are scored: strong beats where the melody starts a note."""
        return self.strong & (self.melody >= ct.MEL_NOTE_OFFSET)

    @property
    def pitch_class(self) -> IntArray:
        """Pitch class of the melody token at each step (-1 on REST and HOLD)."""
        return np.where(self.melody >= ct.MEL_NOTE_OFFSET, (self.melody - ct.MEL_NOTE_OFFSET + ct.PITCH_MIN) % 12, -1)

    @property
    def human(self) -> IntArray:
        """The human chord sounding at each step (N.C. or a chord token)."""
        return ct.resolve_holds(self.chord, ct.CHORD_HOLD, ct.CHORD_NC)


def bar_meters(position: npt.ArrayLike, meters: Sequence[TimeSignature]) -> tuple[IntArray, IntArray]:
    """Per-step ``(bar_steps, beat_steps)`` of a tune from its positions and the meters its file uses.

    Each bar (a bar starts where position is 0) takes the first of ``meters`` whose bar length equals
    its own; a bar of another length takes the previous bar's meter (the next bar's for the first one).
    With no ``meters`` (or none fitting any bar) the meter is guessed from the length: N/4, or N/8 when
    the bar is an odd number of eighths.

    Returns:
        Two int64 arrays aligned with ``position``.
    """
    pos = np.asarray(position, dtype=np.int64)
    starts = np.flatnonzero(pos == 0)
    if pos.size and (starts.size == 0 or starts[0] != 0):
        starts = np.concatenate([[0], starts])
    ends = np.append(starts[1:], pos.size)
    chosen: list[TimeSignature | None] = []
    for b in ends:
        length = int(pos[b - 1]) + 1  # a first partial bar starts late: its last position gives the length
        chosen.append(next((m for m in meters if m.bar_steps == length), None))
    for i in range(len(chosen)):  # partial bars inherit the previous bar's meter
        if chosen[i] is None and i > 0:
            chosen[i] = chosen[i - 1]
    for i in range(len(chosen) - 2, -1, -1):  # a leading run of partial bars takes the first full bar's
        if chosen[i] is None:
            chosen[i] = chosen[i + 1]
    bar_steps = np.zeros(pos.size, dtype=np.int64)
    beat_steps = np.zeros(pos.size, dtype=np.int64)
    for (a, b), m in zip(zip(starts, ends, strict=True), chosen, strict=True):
        ts = m if m is not None else guess_meter(int(pos[b - 1]) + 1)
        bar_steps[a:b], beat_steps[a:b] = ts.bar_steps, ts.beat_steps
    return bar_steps, beat_steps


def guess_meter(bar_steps: int) -> TimeSignature:
    """A simple meter with ``bar_steps`` steps (12 steps -> 3/4, never 6/8: the length cannot tell)."""
    quarter = ct.STEPS_PER_BEAT
    if bar_steps % quarter == 0:
        return TimeSignature(max(1, bar_steps // quarter), 4)
    eighth = quarter // 2
    return TimeSignature(max(1, min(32, round(bar_steps / eighth))), 8)


def file_meters(path: Path) -> list[TimeSignature] | None:
    """The time signatures of a MIDI file in order of first use (4/4 when it has none), ``None`` if unreadable."""
    try:
        import symusic

        score = symusic.Score(str(path))
    except Exception:  # symusic raises its own exception types for unreadable files
        return None
    out: list[TimeSignature] = []
    for sig in sorted(score.time_signatures, key=lambda s: s.time):  # type: ignore[attr-defined]
        try:
            ts = TimeSignature(int(sig.numerator), int(sig.denominator))
        except ValueError:
            continue
        if ts not in out:
            out.append(ts)
    return out or [TimeSignature(4, 4)]


def load_tunes(data: Path, split: str = "test", limit: int | None = None) -> tuple[list[Tune], dict[str, int]]:
    """The tunes of one split of prepared data, with meters from their MIDI files where readable.

    Args:
        data: prepared-data folder.
        split: ``train``, ``valid`` or ``test``.
        limit: keep only the first ``limit`` tunes.

    Returns:
        ``(tunes, {"midi": n, "guessed": n})``: how many tunes got their meters from the MIDI file.

    Raises:
        DataError: the prepared data is missing or malformed.
    """
    s = load_split(data, split)
    manifest = read_manifest(data)
    source = manifest.get("source")
    files = ((manifest.get("splits") or {}).get(split) or {}).get("files") or []
    n = s.sequences if limit is None else min(limit, s.sequences)
    tunes: list[Tune] = []
    counts = {"midi": 0, "guessed": 0}
    for i in range(n):
        name = files[i] if i < len(files) else f"{split}[{i}]"
        meters = file_meters(Path(source) / name) if source and i < len(files) else None
        counts["guessed" if meters is None else "midi"] += 1
        arrays = {k: np.ascontiguousarray(s.seq(k, i)) for k in ("melody", "velocity", "chord", "position", "phrase")}
        bar_steps, beat_steps = bar_meters(arrays["position"], meters or [])
        tunes.append(Tune(**arrays, bar_steps=bar_steps, beat_steps=beat_steps, name=name))
    return tunes, counts


# --- metrics ---------------------------------------------------------------------------------------------
def pc_f1(a: npt.ArrayLike, b: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Pitch-class F1 between chord tokens ``a`` and ``b`` (element-wise; both N.C. = 1, one N.C. = 0)."""
    x, y = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    inter = (_PCS[x] & _PCS[y]).sum(axis=-1)
    size = _PCS_COUNT[x] + _PCS_COUNT[y]
    both_nc = size == 0
    return np.where(both_nc, 1.0, 2.0 * inter / np.maximum(size, 1))  # type: ignore[no-any-return]


def chord_changes(chord_now: npt.ArrayLike) -> BoolArray:
    """Steps where the sounding chord differs from the previous step's (step 0 against N.C.)."""
    c = np.asarray(chord_now, dtype=np.int64)
    return c != ct.previous(c, ct.CHORD_NC)  # type: ignore[no-any-return]


def entropy_bits(counts: Counter[int]) -> float:
    """Shannon entropy in bits of a distribution given as counts (nan when empty)."""
    total = sum(counts.values())
    if total == 0:
        return float("nan")
    p = np.array([v / total for v in counts.values() if v > 0])
    return float(-(p * np.log2(p)).sum()) + 0.0  # + 0.0: a single symbol gives 0.0, not -0.0


@dataclass
class Tally:
    """Running sums behind the metrics of one accompanist."""

    counted: int = 0
    hits: int = 0
    f1: float = 0.0
    changes: int = 0
    bars: int = 0
    symbols: Counter[int] | None = None

    def add(self, tune: Tune, chord_now: npt.ArrayLike) -> None:
        """Score one tune's sounding chords."""
        c = np.asarray(chord_now, dtype=np.int64)
        if c.shape != (tune.steps,):
            raise ValueError(f"{tune.name}: accompanist gave {c.shape} chords for {tune.steps} steps")
        mask = tune.counted
        pcs = tune.pitch_class[mask]
        self.counted += int(mask.sum())
        self.hits += int(_PCS[c[mask], pcs].sum())
        self.f1 += float(pc_f1(c[mask], tune.human[mask]).sum())
        change = chord_changes(c)
        self.changes += int(change.sum())
        self.bars += tune.bars
        if self.symbols is None:
            self.symbols = Counter()
        self.symbols.update(c[change].tolist())

    def metrics(self) -> dict[str, float]:
        """``{hit, f1, changes_per_bar, entropy_bits}`` (nan where nothing was counted)."""
        nan = float("nan")
        return {
            "hit": self.hits / self.counted if self.counted else nan,
            "f1": self.f1 / self.counted if self.counted else nan,
            "changes_per_bar": self.changes / self.bars if self.bars else nan,
            "entropy_bits": entropy_bits(self.symbols or Counter()),
        }


def score(tunes: Sequence[Tune], chords: Sequence[npt.ArrayLike]) -> dict[str, float]:
    """The four metrics of one accompanist's sounding chords (one array per tune), pooled over the tunes."""
    tally = Tally()
    for tune, c in zip(tunes, chords, strict=True):
        tally.add(tune, c)
    return tally.metrics()


# --- accompanists without a model ------------------------------------------------------------------------
def human(tune: Tune) -> IntArray:
    """The human chords (the reference)."""
    return tune.human


def best_triad(tune: Tune) -> IntArray:
    """The major or minor triad holding the most counted melody notes, held through the tune (hindsight)."""
    pcs = tune.pitch_class[tune.counted]
    hits = _PCS[_TRIADS][:, pcs].sum(axis=1) if pcs.size else np.zeros(_TRIADS.size)
    return np.full(tune.steps, _TRIADS[int(np.argmax(hits))], dtype=np.int64)


def rule_key(histogram: npt.ArrayLike) -> Key:
    """The key the rule harmonises in (:func:`rtgen.generation.keys.estimate_key`); C major when the histogram
    is empty, which no counted step sees (a counted step's own note is in it)."""
    return estimate_key(histogram) or Key(0, "major")


def _pc_durations(tune: Tune) -> npt.NDArray[np.float64]:
    """(T, 12): 1 where the pitch class sounds at the step (REST rows are zero)."""
    sounding = ct.resolve_holds(tune.melody, ct.MEL_HOLD, ct.MEL_REST)
    out = np.zeros((tune.steps, 12))
    on = sounding >= ct.MEL_NOTE_OFFSET
    out[np.flatnonzero(on), (sounding[on] - ct.MEL_NOTE_OFFSET + ct.PITCH_MIN) % 12] = 1.0
    return out


def rule_chords(key: Key) -> tuple[int, ...]:
    """The rule's candidate chord tokens for a major or minor key, in order of preference."""
    degrees = RULE_MINOR if key.scale == "minor" else RULE_MAJOR
    return tuple(Chord((key.tonic + d) % 12, q).token for d, q in degrees)


def rule(tune: Tune, *, online: bool = False) -> IntArray:
    """At each counted step choose the first candidate chord (:func:`rule_chords`) holding the note.

    Nothing sounds (N.C.) before the first counted step; a note no candidate holds keeps the chord.

    Args:
        tune: the tune.
        online: estimate the key from the melody up to and including the step (else the whole tune).
    """
    durations = _pc_durations(tune)
    counted, pcs = tune.counted, tune.pitch_class
    fixed = None if online else rule_chords(rule_key(durations.sum(axis=0)))
    cumulative = np.cumsum(durations, axis=0) if online else None
    out = np.empty(tune.steps, dtype=np.int64)
    current = ct.CHORD_NC
    for t in np.flatnonzero(counted):
        cands = fixed if cumulative is None else rule_chords(rule_key(cumulative[t]))
        assert cands is not None
        pc = int(pcs[t])
        current = next((c for c in cands if _PCS[c, pc]), current)
        out[t] = current
    # fill between decisions: each chord holds until the next counted step
    decided = np.full(tune.steps, -1, dtype=np.int64)
    idx = np.flatnonzero(counted)
    decided[idx] = out[idx]
    return ct.resolve_holds(np.where(decided < 0, ct.CHORD_HOLD, decided), ct.CHORD_HOLD, ct.CHORD_NC)


def rule_online(tune: Tune) -> IntArray:
    """:func:`rule` with the key estimated online."""
    return rule(tune, online=True)


# --- accompanists with the model -------------------------------------------------------------------------
def online_model(
    model: Model,
    tunes: Sequence[Tune],
    *,
    seed: int = 0,
    top_k: int = 0,
    temperature: float = 0.9,
    top_p: float = 0.95,
) -> list[IntArray]:
    """The chord model (and, with ``top_k``, the note model) choosing chords online, all tunes batched.

    ``top_k = 0``: the chord model samples chord_t from its past alone, before hearing melody_t (as
    ``Engine.step(melody=...)`` does: with the melody and velocity observed the note graph cannot change
    the chord, so it is not run). ``top_k > 0``: Bayes at the step -- the chord model's ``top_k`` most
    likely tokens are rescored by ``log p(c_t | past) + log p(m_t | c_t, past)`` (the note graph run
    once per candidate, batched) and one is sampled from that posterior; the note state then follows
    the chosen chord. Tune ``i`` samples with ``numpy.random.default_rng(seed + i)``, one draw per step,
    like an ``Engine`` seeded ``seed + i``. Position and phrase come from the data (pickups included).

    Returns:
        The sounding chord per step, one array per tune.
    """
    k = min(int(top_k), ct.CHORD_VOCAB_SIZE)
    out: list[IntArray] = [np.zeros(0, dtype=np.int64)] * len(tunes)
    lengths = np.array([t.steps for t in tunes], dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    rngs = [np.random.default_rng(seed + i) for i in range(len(tunes))]
    batch = 256
    for b0 in range(0, order.size, batch):
        idx = order[b0 : b0 + batch]
        chords = _online_batch(model, [tunes[i] for i in idx], [rngs[i] for i in idx], k, temperature, top_p)
        for i, c in zip(idx, chords, strict=True):
            out[int(i)] = c
    return out


def _online_batch(
    model: Model, tunes: list[Tune], rngs: list[np.random.Generator], k: int, temperature: float, top_p: float
) -> list[IntArray]:
    b = len(tunes)
    lengths = np.array([t.steps for t in tunes])
    steps = int(lengths.max()) if b else 0
    # (T, B, ...) so the rows fed at step t are contiguous
    fixed = ("prev_melody", "prev_sounding", "prev_velocity", "position", "phrase", "lookback_melody")
    feeds = {name: np.zeros((steps, b, ct.NUM_LOOKBACKS) if name.startswith("lookback") else (steps, b), np.int64)
             for name in fixed}  # fmt: skip
    melody_now = np.zeros((steps, b), dtype=np.int64)
    sources = np.full((steps, b, ct.NUM_LOOKBACKS), -1, dtype=np.int64)
    for col, tune in enumerate(tunes):
        inputs = ct.step_inputs(tune.melody, tune.velocity, tune.chord, tune.position)
        inputs.update(position=np.minimum(tune.position, ct.MAX_BAR_STEPS - 1), phrase=tune.phrase)
        for name in fixed:
            feeds[name][: tune.steps, col] = inputs[name]
        melody_now[: tune.steps, col] = tune.melody
        sources[: tune.steps, col] = ct.lookback_sources(tune.position)
    raw = np.zeros((b, max(steps, 1)), dtype=np.int64)  # the accompanist's own raw chord tokens
    now = np.zeros((b, max(steps, 1)), dtype=np.int64)
    prev_chord = np.full(b, ct.CHORD_NC, dtype=np.int64)
    prev_now = np.full(b, ct.CHORD_NC, dtype=np.int64)
    chord_state = model.initial_state(b)
    note_state = model.initial_state(b)
    rows = np.arange(b)
    active = b
    for t in range(steps):
        while active > 0 and lengths[active - 1] <= t:
            active -= 1
        if chord_state.shape[1] != active:
            chord_state = np.ascontiguousarray(chord_state[:, :active])
            note_state = np.ascontiguousarray(note_state[:, :active])
        r = rows[:active]
        src = sources[t, :active]
        lb_chord = np.where(src >= 0, raw[r[:, None], np.maximum(src, 0)], ct.CHORD_NC)
        step = {name: feeds[name][t, :active] for name in fixed}
        step.update(prev_chord=prev_chord[:active], prev_chord_now=prev_now[:active], lookback_chord=lb_chord)
        logits, chord_state = model.chord_step(step, chord_state)
        if k == 0:
            tok = np.array([sample_split(logits[i], rngs[i], head=ct.CHORD_OFFSET, temperature=temperature, top_p=top_p)
                            for i in range(active)], dtype=np.int64)  # fmt: skip
        else:
            tok, note_state = _bayes_step(model, step, logits, note_state, melody_now[t, :active], prev_now[:active],
                                          rngs, k, temperature, top_p)  # fmt: skip
        chord_now = np.where(tok == ct.CHORD_HOLD, prev_now[:active], tok)
        raw[:active, t], now[:active, t] = tok, chord_now
        prev_chord[:active], prev_now[:active] = tok, chord_now
    return [now[i, : lengths[i]].copy() for i in range(b)]


def _log_softmax(x: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    y = x.astype(np.float64)
    y -= y.max(axis=-1, keepdims=True)
    return y - np.log(np.exp(y).sum(axis=-1, keepdims=True))  # type: ignore[no-any-return]


def _bayes_step(
    model: Model,
    step: dict[str, IntArray],
    chord_logits: npt.NDArray[np.float32],
    note_state: npt.NDArray[np.float32],
    melody: IntArray,
    prev_now: IntArray,
    rngs: list[np.random.Generator],
    k: int,
    temperature: float,
    top_p: float,
) -> tuple[IntArray, npt.NDArray[np.float32]]:
    a = chord_logits.shape[0]
    prior = _log_softmax(chord_logits)
    if k >= prior.shape[1]:
        cand = np.broadcast_to(np.arange(prior.shape[1]), prior.shape).copy()
    else:
        cand = np.argpartition(-prior, k - 1, axis=1)[:, :k]
    kk = cand.shape[1]
    cand_now = np.where(cand == ct.CHORD_HOLD, prev_now[:, None], cand)
    feeds = {name: np.repeat(v, kk, axis=0) for name, v in step.items()}
    feeds["chord_now"] = cand_now.reshape(-1)
    state = np.repeat(note_state, kk, axis=1)
    mel_logits, _, new_state = model.note_step(feeds, state)
    like = _log_softmax(mel_logits)[np.arange(a * kk), np.repeat(melody, kk)].reshape(a, kk)
    post = np.take_along_axis(prior, cand, axis=1) + like
    pick = np.array([sample(post[i], rngs[i], temperature=temperature, top_p=top_p) for i in range(a)])
    chosen = np.arange(a) * kk + pick
    return cand[np.arange(a), pick].astype(np.int64), np.ascontiguousarray(new_state[:, chosen])


def engine_chords(
    model: Model, tune: Tune, *, seed: int = 0, temperature: float = 0.9, top_p: float = 0.95
) -> IntArray:
    """The chord model online through the real :class:`~rtgen.generation.engine.Engine` (checks :func:`online_model`).

    The engine counts bars from step 0 in the tune's first meter, so its phrase position differs from the
    data's in a tune with a pickup bar.
    """
    from rtgen.generation.engine import Engine, Params, Steer

    params = Params(temperature=temperature, top_p=top_p, time_signature=_meter_at(tune, 0))
    engine = Engine(model, params, seed=seed)
    out = np.empty(tune.steps, dtype=np.int64)
    for t in range(tune.steps):
        p = replace(params, time_signature=_meter_at(tune, t)) if tune.position[t] == 0 else None
        if p is not None and p.time_signature == params.time_signature:
            p = None
        if p is not None:
            params = p
        s = engine.step(p, steer=Steer(melody=int(tune.melody[t]), velocity=ct.bin_velocity(int(tune.velocity[t]))))
        out[t] = s.chord_now
    return out


def _meter_at(tune: Tune, t: int) -> TimeSignature:
    bs, beat = int(tune.bar_steps[t]), int(tune.beat_steps[t])
    if beat == 3 * ct.STEPS_PER_BEAT // 2:
        return TimeSignature(bs // (ct.STEPS_PER_BEAT // 2), 8)
    return TimeSignature(bs // beat, 4 * ct.STEPS_PER_BEAT // beat)


def performer_chords(model: Model, tunes: Sequence[Tune], *, seed: int = 0) -> list[IntArray] | str:
    """The daemon's own accompanist (``rtgen.arrange.performer.accompany_offline``), or why it cannot run.

    Daemon defaults (``rtgen.config.Config()``) except key lock off and the full pitch range, so the
    player's melody is never masked. Tune ``i`` is played with seed ``seed + i``.
    """
    try:
        from rtgen.arrange.performer import accompany_offline
    except ImportError as err:
        return f"rtgen.arrange.performer.accompany_offline is not available ({err})"
    if not getattr(model, "can_harmonise", False):
        return f"model {model.name} has no harmoniser (harmony.onnx, token contract v2)"
    from rtgen.config import Config

    config = Config()
    config = replace(config, generation=replace(config.generation, key="off", pitch_low=ct.PITCH_MIN,
                                                pitch_high=ct.PITCH_MAX))  # fmt: skip
    out: list[IntArray] = []
    for i, t in enumerate(tunes):
        beat = int(t.beat_steps[0]) if t.steps else ct.STEPS_PER_BEAT
        chords = accompany_offline(model, config, t.melody, t.velocity, t.position, seed=seed + i, beat_steps=beat,
                                   phrase=t.phrase)  # fmt: skip
        out.append(np.asarray(chords, dtype=np.int64))
    return out


def chord_tone_share(tunes: Sequence[Tune], melodies: Sequence[npt.ArrayLike]) -> tuple[float, int]:
    """Share of melody onsets on strong beats that are tones of the human chord sounding there (N.C. excluded)."""
    n = hits = 0
    for t, m in zip(tunes, melodies, strict=True):
        mel = np.asarray(m, dtype=np.int64)
        human = t.human
        mask = t.strong & (mel >= ct.MEL_NOTE_OFFSET) & (human >= ct.CHORD_OFFSET)
        pcs = (mel[mask] - ct.MEL_NOTE_OFFSET + ct.PITCH_MIN) % 12
        n += int(mask.sum())
        hits += int(_PCS[human[mask], pcs].sum())
    return (hits / n if n else float("nan")), n


def improvise_tones(model: Model, tunes: Sequence[Tune], *, seed: int = 0) -> dict[str, Any]:
    """The daemon's improvise path over each tune's human chords: chord-tone share on strong beats, model vs data."""
    from rtgen.arrange.performer import improvise_offline
    from rtgen.config import Config

    config = Config()
    melodies = []
    for i, t in enumerate(tunes):
        beat = int(t.beat_steps[0]) if t.steps else ct.STEPS_PER_BEAT
        melodies.append(improvise_offline(model, config, t.chord, t.position, seed=seed + i, beat_steps=beat,
                                          phrase=t.phrase))  # fmt: skip
    share, n = chord_tone_share(tunes, melodies)
    data_share, data_n = chord_tone_share(tunes, [t.melody for t in tunes])
    return {"chord_tone_strong": share, "onsets": n, "chord_tone_strong_data": data_share, "onsets_data": data_n,
            "tone_fit": config.improvise.tone_fit}  # fmt: skip


# --- the evaluation --------------------------------------------------------------------------------------
def evaluate_accompaniment(
    model_dir: Path | Model,
    data: Path,
    split: str = "test",
    seed: int = 0,
    limit: int | None = None,
    *,
    bayes_top_k: int = BAYES_TOP_K,
) -> dict[str, Any]:
    """Score every accompanist on one split of prepared data.

    Args:
        model_dir: model folder (or a loaded :class:`~rtgen.generation.model.Model`).
        data: prepared-data folder.
        split: ``test`` for the report; ``valid`` to tune parameters without looking at test.
        seed: sampling seed of the model accompanists (tune ``i`` uses ``seed + i``).
        limit: score only the first ``limit`` tunes.
        bayes_top_k: chord candidates rescored by the Bayes accompanist (170 = every chord token).

    Returns:
        ``{accompanist: {hit, f1, changes_per_bar, entropy_bits}, "data": {changes_per_bar, entropy_bits},
        "steps", "tunes", "seconds", "split", "seed", "bayes_top_k", "meters", "skipped", "timings"}``;
        an accompanist that cannot run (the model's, before contract v2) is listed under ``skipped``
        with the reason.

    Raises:
        DataError: the prepared data is missing or malformed.
        ModelError: the model folder cannot be loaded.
    """
    t_start = time.perf_counter()
    model = model_dir if isinstance(model_dir, Model) else Model.load(model_dir, threads=1)
    tunes, meters = load_tunes(Path(data), split, limit)
    gen_temperature, gen_top_p = _daemon_sampling()
    result: dict[str, Any] = {}
    timings: dict[str, float] = {}
    skipped: dict[str, str] = {}
    plain: dict[str, Callable[[Tune], IntArray]] = {
        "human": human, "best_triad": best_triad, "rule": rule, "rule_online": rule_online,
    }  # fmt: skip
    for name, fn in plain.items():
        t0 = time.perf_counter()
        result[name] = score(tunes, [fn(t) for t in tunes])
        timings[name] = time.perf_counter() - t0
    for name, k in (("chord_model", 0), ("bayes", bayes_top_k)):
        t0 = time.perf_counter()
        chords = online_model(model, tunes, seed=seed, top_k=k, temperature=gen_temperature, top_p=gen_top_p)
        result[name] = score(tunes, chords)
        timings[name] = time.perf_counter() - t0
    t0 = time.perf_counter()
    performed = performer_chords(model, tunes, seed=seed)
    if isinstance(performed, str):
        skipped["model"] = performed
    else:
        result["model"] = score(tunes, performed)
        timings["model"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    result["improvise"] = improvise_tones(model, tunes, seed=seed)
    timings["improvise"] = time.perf_counter() - t0
    data_row = result["human"]
    result["data"] = {"changes_per_bar": data_row["changes_per_bar"], "entropy_bits": data_row["entropy_bits"]}
    result.update(
        steps=int(sum(t.steps for t in tunes)),
        tunes=len(tunes),
        counted=int(sum(int(t.counted.sum()) for t in tunes)),
        split=split,
        seed=seed,
        bayes_top_k=min(bayes_top_k, ct.CHORD_VOCAB_SIZE),
        sampling={"temperature": gen_temperature, "top_p": gen_top_p},
        meters=meters,
        skipped=skipped,
        timings={k: round(v, 2) for k, v in timings.items()},
        seconds=round(time.perf_counter() - t_start, 2),
    )
    return result


def _daemon_sampling() -> tuple[float, float]:
    from rtgen.config import Config
    from rtgen.generation.engine import Params

    p = Params.from_config(Config().generation)
    return p.temperature, p.top_p


def _fmt(x: Any, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def report_markdown(result: dict[str, Any]) -> str:
    """The accompaniment table (Markdown) of an :func:`evaluate_accompaniment` result."""
    k = result.get("bayes_top_k", BAYES_TOP_K)
    lines = [
        "| accompanist | hit | F1 vs human | changes/bar | entropy (bits) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, label in ACCOMPANISTS.items():
        row = result.get(name)
        if row is None:
            continue
        label = label.format(k="all 170" if k >= ct.CHORD_VOCAB_SIZE else k)
        lines.append(f"| {label} | {_fmt(row.get('hit'))} | {_fmt(row.get('f1'))} | "
                     f"{_fmt(row.get('changes_per_bar'), 2)} | {_fmt(row.get('entropy_bits'), 2)} |")  # fmt: skip
    d = result.get("data") or {}
    lines.append(f"| *the data (human chords)* | | | {_fmt(d.get('changes_per_bar'), 2)} | "
                 f"{_fmt(d.get('entropy_bits'), 2)} |")  # fmt: skip
    s = result.get("sampling") or {}
    meters = result.get("meters") or {}
    lines += [
        "",
        f"{result.get('split', 'test')} split, {result.get('tunes')} tunes (all meters; meters of "
        f"{meters.get('midi', 0)} tunes from their MIDI files, {meters.get('guessed', 0)} guessed from bar lengths), "
        f"{result.get('counted')} scored steps (strong beats where the melody starts a note) of "
        f"{result.get('steps')}. Model accompanists sample at temperature {s.get('temperature')}, top-p "
        f"{s.get('top_p')} (the daemon's defaults), seed {result.get('seed')}; {result.get('seconds')} s.",
    ]
    imp = result.get("improvise")
    if imp:
        lines.append(
            f"Improvise (the model's melody over the human chords, the daemon's path, tone_fit {imp.get('tone_fit')}): "
            f"{_fmt(imp.get('chord_tone_strong'))} of its {imp.get('onsets')} onsets on strong beats are chord tones; "
            f"the human melodies: {_fmt(imp.get('chord_tone_strong_data'))}."
        )
    for name, why in (result.get("skipped") or {}).items():
        lines.append(f"Not run: {ACCOMPANISTS.get(name, name)}: {why}.")
    return "\n".join(lines) + "\n"


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``accompany`` subcommand to ``rtgen-train``."""
    p = subparsers.add_parser("accompany", help="accompaniment of the human melody: model vs baselines")
    p.add_argument("--model", type=Path, required=True, help="model folder")
    p.add_argument("--data", type=Path, required=True, help="prepared-data folder (rtgen-train prepare --out)")
    p.add_argument("--split", choices=("test", "valid", "train"), default="test",
                   help="split to score (default: test; tune parameters on valid)")  # fmt: skip
    p.add_argument("--limit", type=int, default=None, help="score only the first N tunes")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    p.add_argument("--bayes-top-k", type=int, default=BAYES_TOP_K,
                   help=f"chord candidates of the Bayes accompanist (default: {BAYES_TOP_K}; 170 = all)")  # fmt: skip
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    result = evaluate_accompaniment(args.model, args.data, split=args.split, seed=args.seed, limit=args.limit,
                                    bayes_top_k=args.bayes_top_k)  # fmt: skip
    print(report_markdown(result), end="")
    return 0

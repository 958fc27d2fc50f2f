"""Song form: sections in order, with memory, an intro that sets up the key and an outro that cadences.

A form is a sequence of :class:`FormSection` (``"intro:4 A:8 A:8 B:8 A:8 outro:4"``:
name and bars, in order). The :class:`Arranger` sits between the transport and the
performer: for each step it says what the engine observes instead of sampling.

* The first time a section plays, the models play freely and the arranger keeps its
  tokens (melody, velocity, chord per step), bar by bar.
* When it returns, the kept tokens are fed back as observations, except in a seeded
  share of its bars (``vary``, never the first) where the melody is sampled again over
  the kept chords: the listener recognises the section, and no two returns are copies.
* The first section of an offline form, when it is called ``intro``, sets up the key:
  the tonic chord on every bar (the dominant on its last bar, leading in) under a
  sparse melody. The piece's last bars cadence V7 - I into the tonic, the melody
  landing on the tonic note (whatever the last section is called).

Live, :meth:`Arranger.cue` switches to a section at the next phrase boundary (or bar
line); the daemon reports the current section. :func:`section_similarity` measures
how much returns of a section resemble each other against different sections.

Pure: no clocks, no I/O.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rtgen import contract as ct
from rtgen.generation.conductor import Heard, Plan
from rtgen.generation.engine import Engine, Params, Step
from rtgen.generation.keys import dominant_chord, estimate_key
from rtgen.timing.transport import Position, Transport

INTRO = "intro"
PIECE = "piece"
"""The one section of a render without a form."""
CUES = ("phrase", "bar")
MAX_SECTION_NAME = 32
MAX_FORM_BARS = 4096
INTRO_DENSITY = 0.15  # multiplies the intro's odds of a melody onset: the key is heard, not yet a tune
MAJOR_TRIAD = next(i for i, (name, _) in enumerate(ct.QUALITIES) if name == "")
MINOR_TRIAD = next(i for i, (name, _) in enumerate(ct.QUALITIES) if name == "m")

_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,32}")


@dataclass(frozen=True, slots=True)
class FormSection:
    """One section of a form: a name the user chooses and its length in bars."""

    name: str
    bars: int


@dataclass(frozen=True, slots=True)
class SectionCue:
    """Where a step sits in the form, for the voicer (a drummer's fill into a boundary, a crash after it).

    Attributes:
        name: the section playing.
        start: the step lies in the first bar of a section.
        end: the step lies in the last bar before another section (or the end of the piece).
    """

    name: str
    start: bool = False
    end: bool = False


def check_section_name(name: str) -> str:
    """``name`` if it is a usable section name (1..32 of letters, digits, ``_ . -``).

    Raises:
        ValueError: naming what is allowed.
    """
    if not _NAME.fullmatch(name):
        raise ValueError(f"section name {name[:40]!r} must be 1..{MAX_SECTION_NAME} letters, digits, '_', '.' or '-'")
    return name


def parse_form(text: str) -> tuple[FormSection, ...]:
    """Parse ``"intro:4 A:8 A:8 B:8 A:8 outro:4"`` (name:bars, separated by spaces or commas).

    Raises:
        ValueError: an item is not ``name:bars``, a name is not allowed, bars are not 1..256, or the
            whole form is empty or longer than 4096 bars.
    """
    items = [t for t in re.split(r"[\s,]+", text.strip()) if t]
    if not items:
        raise ValueError("the form is empty; expected name:bars items such as 'intro:4 A:8 B:8 A:8 outro:4'")
    out = []
    for item in items:
        name, sep, bars = item.rpartition(":")
        if not sep or not name:
            raise ValueError(f"form item {item[:40]!r} is not name:bars (e.g. A:8)")
        check_section_name(name)
        if not bars.isdigit() or not 1 <= int(bars) <= 256:
            raise ValueError(f"form item {item[:40]!r}: bars must be an integer in range 1..256")
        out.append(FormSection(name, int(bars)))
    total = sum(s.bars for s in out)
    if total > MAX_FORM_BARS:
        raise ValueError(f"the form has {total} bars; at most {MAX_FORM_BARS}")
    return tuple(out)


def tonic_chord(key: ct.Key) -> int:
    """The tonic triad's chord token (minor when the scale has a minor third)."""
    minor = 3 in ct.SCALES[key.scale] and 4 not in ct.SCALES[key.scale]
    return ct.Chord(key.tonic, MINOR_TRIAD if minor else MAJOR_TRIAD).token


# A stored step: raw melody token, MIDI velocity, raw chord token, resolved chord, sounding pitch (-1: none).
_Stored = tuple[int, int, int, int, int]


class Arranger:
    """Section memory and the roles of intro and ending, step by step (offline and live).

    Args:
        seed: seeds the choice of the bars that vary on a return (not the engine's sampler).
        vary: share of a returning section's bars (the first excepted) whose melody is sampled again.
        cue: live switching point: ``"phrase"`` (the next bar where a phrase starts) or ``"bar"``.
        max_bars: bars remembered per section (live sections have no length).
        max_sections: section names remembered (the oldest is forgotten first).
    """

    def __init__(self, *, seed: int = 0, vary: float = 0.25, cue: str = "phrase", max_bars: int = 64,
                 max_sections: int = 16) -> None:  # fmt: skip
        if cue not in CUES:
            raise ValueError(f"section cue must be one of {', '.join(CUES)}, got {cue!r}")
        if not 0.0 <= vary <= 1.0:
            raise ValueError(f"vary must be in range 0..1, got {vary}")
        self.seed = seed
        self.vary = vary
        self.cue_at = cue
        self.max_bars = max_bars
        self.max_sections = max_sections
        self.memory: dict[str, list[list[_Stored | None]]] = {}
        self.section: str | None = None  # the section playing (None: no form, the engine plays freely)
        self.occurrence = 0  # how many times the current section has started, this one included
        self.key: ct.Key | None = None  # the piece's key, for the intro and the cadence (offline)
        self._rng = np.random.default_rng([seed, 0x5EC7])
        self._start_bar = 0
        self._bars: int | None = None  # the current section's length (offline), None live
        self._role = ""  # "intro" or ""
        self._recording = False
        self._varied: frozenset[int] = frozenset()
        self._next: tuple[str, int] | None = None  # (name, bar) cued
        self._end_bar: int | None = None  # last bar of the piece (offline)
        self._lead_pitch: int | None = None  # last melody pitch heard (for the final tonic note)
        self._sounding = -1  # the melody pitch sounding after the last step played (-1: none)
        self._params_cache: tuple[Params, Params] | None = None
        self._counts: dict[str, int] = {}
        self._range = (ct.PITCH_MIN, ct.PITCH_MAX)  # the melody's range (the final tonic note)

    # --- where we are -------------------------------------------------------------------------
    @property
    def cued(self) -> tuple[str, int] | None:
        """``(name, bar)`` of a cued section not started yet (bar 0-based), or None."""
        return self._next

    @property
    def occurrence_bar(self) -> int:
        """The bar the current section started on (0-based)."""
        return self._start_bar

    def begin(self, name: str, bar: int, *, bars: int | None = None, role: str = "") -> None:
        """Start section ``name`` at bar ``bar`` (its first step is the next one steered).

        Args:
            name: the section's name (its memory key).
            bar: the transport bar it starts on.
            bars: its length (offline); None live.
            role: ``"intro"`` (tonic pedal, sparse melody, not remembered) or ``""`` (the ending is
                :meth:`end_at`'s, whatever section plays there).
        """
        check_section_name(name)
        self.section = name
        self._start_bar = bar
        self._bars = bars
        self._role = role
        self.occurrence = self._counts.get(name, 0) + 1
        self._counts[name] = self.occurrence
        stored = self.memory.get(name)
        self._recording = stored is None and role != "intro"
        if self._recording:
            while len(self.memory) >= self.max_sections:
                self.memory.pop(next(iter(self.memory)))
            self.memory[name] = []
            self._varied = frozenset()
        elif stored is not None:
            candidates = list(range(1, len(stored) if bars is None else min(len(stored), bars)))
            n = min(len(candidates), max(1, round(self.vary * len(stored)))) if self.vary > 0 else 0
            picked = self._rng.choice(candidates, size=n, replace=False) if n and candidates else ()
            self._varied = frozenset(int(b) for b in picked)

    def cue(self, name: str, next_pos: Position) -> int:
        """Live: switch to ``name`` at the next boundary not yet decided; returns that bar (0-based).

        Args:
            name: the section to play next.
            next_pos: the position of the next step still to be decided.
        """
        check_section_name(name)
        bar = next_pos.bar if next_pos.position == 0 else next_pos.bar + 1
        if self.cue_at == "phrase":
            bar += -bar % ct.PHRASE_BARS
        self._next = (name, bar)
        return bar

    def end_at(self, last_bar: int) -> None:
        """Offline: the piece ends with bar ``last_bar`` (0-based); its last bars cadence into the tonic."""
        self._end_bar = last_bar

    # --- one step -----------------------------------------------------------------------------
    def steer(self, pos: Position, plan: Plan, heard: Heard, params: Params) -> tuple[Plan, Heard, Params]:
        """What the engine observes at ``pos``: the plan, the tokens heard and the parameters to use.

        Steps outside any section (no form, nothing cued yet) pass through unchanged.
        """
        nxt = self._next
        if nxt is not None and pos.position == 0 and pos.bar >= nxt[1]:
            self._next = None
            self.begin(nxt[0], pos.bar)
        if self.section is None:
            return plan, heard, params
        rel = pos.bar - self._start_bar
        if self._role == "intro":
            params = self._sparse(params)
            if self.key is not None:
                last = self._bars is not None and self._bars >= 2 and rel == self._bars - 1
                chord = (dominant_chord if last else tonic_chord)(self.key) if pos.position == 0 else ct.CHORD_HOLD
                return dataclasses.replace(plan, observe_chords=True), Heard(chord=chord), params
            return plan, heard, params
        end = self._end_bar
        if end is not None and self.key is not None and pos.bar >= end - 1 and end - pos.bar <= 1:
            return self._cadence(pos, plan, end - pos.bar, params)
        if not self._recording:
            stored = self.memory.get(self.section, [])
            if 0 <= rel < len(stored):
                bar = stored[rel]
                cell = bar[pos.position] if pos.position < len(bar) else None
                if cell is not None:
                    mel, vel, chord, chord_now, pitch = cell
                    if pos.position == 0 and rel == 0:
                        # the section's own chord and note, not whatever the bar before left sounding
                        if chord == ct.CHORD_HOLD:
                            chord = chord_now
                        if mel == ct.MEL_HOLD and pitch >= 0 and rel not in self._varied:
                            mel = ct.melody_note_on(pitch)
                    if rel in self._varied:
                        return dataclasses.replace(plan, observe_chords=True), Heard(chord=chord), params
                    velocity = vel if mel >= ct.MEL_NOTE_OFFSET else None
                    plan = dataclasses.replace(plan, observe_melody=True, observe_chords=True)
                    return plan, Heard(mel, velocity, chord), params
        return plan, heard, params

    def _sparse(self, params: Params) -> Params:
        cached = self._params_cache
        if cached is not None and cached[0] is params:
            return cached[1]
        out = dataclasses.replace(params, density=params.density * INTRO_DENSITY)
        self._params_cache = (params, out)
        return out

    def _cadence(self, pos: Position, plan: Plan, bars_left: int, params: Params) -> tuple[Plan, Heard, Params]:
        """The last two bars: V7 then I, the melody on the tonic from the last downbeat to the end."""
        assert self.key is not None
        if bars_left == 1:
            chord = dominant_chord(self.key) if pos.position == 0 else ct.CHORD_HOLD
            return dataclasses.replace(plan, observe_chords=True), Heard(chord=chord), params
        chord = tonic_chord(self.key) if pos.position == 0 else ct.CHORD_HOLD
        mel = ct.melody_note_on(self._tonic_pitch()) if pos.position == 0 else ct.MEL_HOLD
        return dataclasses.replace(plan, observe_melody=True, observe_chords=True), Heard(mel, None, chord), params

    def _tonic_pitch(self) -> int:
        assert self.key is not None
        lo, hi = self._range
        near = self._lead_pitch if self._lead_pitch is not None else (lo + hi) // 2
        candidates = [p for p in range(max(lo, ct.PITCH_MIN), min(hi, ct.PITCH_MAX) + 1) if p % 12 == self.key.tonic]
        if not candidates:
            candidates = [p for p in range(ct.PITCH_MIN, ct.PITCH_MAX + 1) if p % 12 == self.key.tonic]
        return min(candidates, key=lambda p: (abs(p - near), p))

    def played(self, pos: Position, step: Step) -> None:
        """The engine decided ``step`` at ``pos``: a first hearing keeps it (bounded)."""
        pitch = step.pitch
        if pitch is not None:
            self._lead_pitch = self._sounding = pitch
        elif step.melody_token == ct.MEL_REST:
            self._sounding = -1
        if not self._recording or self.section is None:
            return
        rel = pos.bar - self._start_bar
        if not 0 <= rel < self.max_bars:
            return
        bars = self.memory[self.section]
        while len(bars) <= rel:
            bars.append([None] * pos.bar_steps)
        bar = bars[rel]
        if pos.position < len(bar):
            bar[pos.position] = (step.melody_token, step.velocity, step.chord_token, step.chord_now, self._sounding)

    def cue_for(self, pos: Position) -> SectionCue | None:
        """The section boundary flags of the step at ``pos`` (after :meth:`steer` for it), or None outside a form."""
        if self.section is None:
            return None
        rel = pos.bar - self._start_bar
        if self._bars is not None:
            end = rel == self._bars - 1
        else:
            nxt = self._next
            end = nxt is not None and nxt[1] == pos.bar + 1
        return SectionCue(self.section, start=rel == 0, end=end)

    def prepare_ending(self, params: Params) -> None:
        """Offline: the melody range the final tonic note must lie in."""
        self._range = (params.pitch_low, params.pitch_high)


# --- offline helpers ----------------------------------------------------------------------------
def estimate_piece_key(engine: Engine, params: Params, bars: int) -> ct.Key | None:
    """The key of the first ``bars`` bars the engine would play from where it is (a what-if: it is put back).

    Melody onsets weigh by how long they sound, chords by their tones; Krumhansl-Kessler profiles decide.
    """
    snap = engine.snapshot()
    weights = [0.0] * 12
    sounding: int | None = None
    try:
        transport = Transport(params.time_signature)
        while True:
            pos = transport.advance()
            if pos.bar >= bars:
                break
            step = engine.step(params, at=pos)
            if step.pitch is not None:
                sounding = step.pitch
            elif step.melody_token == ct.MEL_REST:
                sounding = None
            if sounding is not None:
                weights[sounding % 12] += 1.0
            if step.chord_now >= ct.CHORD_OFFSET:
                for pc in ct.Chord.from_token(step.chord_now).pitch_classes:
                    weights[pc] += 0.5
    finally:
        engine.restore(snap)
    return estimate_key(weights)


@dataclass(frozen=True)
class FormReport:
    """How a rendered form holds together (see :func:`section_similarity`).

    Attributes:
        same_melody: mean share of equal steps (sounding melody pitch) between returns of one section.
        same_chords: the same for the sounding chord.
        different_melody: mean share between occurrences of different sections (intro and the last
            section's cadence bars left out).
        different_chords: the same for the chords.
        same_pairs: pairs of returns compared.
        different_pairs: pairs of different sections compared.
        final_chord: name of the chord sounding at the last step.
        final_is_tonic: that chord is the key's tonic triad.
        final_note_is_tonic: the last melody note sounding is the tonic (pitch class).
        key: the key the piece was played in.
    """

    same_melody: float | None
    same_chords: float | None
    different_melody: float | None
    different_chords: float | None
    same_pairs: int
    different_pairs: int
    final_chord: str
    final_is_tonic: bool
    final_note_is_tonic: bool
    key: str


def section_spans(form: Sequence[FormSection], steps: Sequence[Step], first: int = 0) -> list[tuple[str, int, int]]:
    """``(name, first step, end step)`` of each section of ``form`` in ``steps`` (bars counted from ``first``)."""
    spans = []
    bar = 0
    for sec in form:
        lo = next((i for i in range(first, len(steps)) if steps[i].bar >= bar), len(steps))
        hi = next((i for i in range(lo, len(steps)) if steps[i].bar >= bar + sec.bars), len(steps))
        spans.append((sec.name, lo, hi))
        bar += sec.bars
    return spans


def _sounding(steps: Sequence[Step]) -> tuple[list[int], list[int]]:
    """Sounding melody pitch (-1 = rest) and sounding chord per step."""
    mel, chords = [], []
    now = -1
    for s in steps:
        if s.melody_token >= ct.MEL_NOTE_OFFSET:
            now = ct.melody_pitch(s.melody_token) or -1
        elif s.melody_token == ct.MEL_REST:
            now = -1
        mel.append(now)
        chords.append(s.chord_now)
    return mel, chords


def _share(a: Sequence[int], b: Sequence[int]) -> float:
    n = min(len(a), len(b))
    return sum(1 for i in range(n) if a[i] == b[i]) / n if n else 0.0


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def section_similarity(steps: Sequence[Step], form: Sequence[FormSection], key: ct.Key) -> FormReport:
    """Compare the sections of a rendered form: returns of one section against different sections.

    Sections are aligned at their first step (they start on bar lines); the share of equal steps is counted
    over the shorter of the two. The intro (its chords are set, not played) and the last two bars (the
    cadence) are left out of the comparison.

    Args:
        steps: the rendered steps (``Rendered.steps`` after any prime).
        form: the form they were rendered with.
        key: the piece's key.
    """
    mel, chords = _sounding(steps)
    total_bars = sum(s.bars for s in form)
    cadence_from = next((i for i, s in enumerate(steps) if s.bar >= total_bars - 2), len(steps))
    spans = [
        (name, lo, min(hi, cadence_from))
        for i, (name, lo, hi) in enumerate(section_spans(form, steps))
        if not (i == 0 and name.lower() == INTRO)
    ]
    same_m, same_c, diff_m, diff_c = [], [], [], []
    for (na, la, ha), (nb, lb, hb) in itertools.combinations(spans, 2):
        if ha <= la or hb <= lb:
            continue
        m = _share(mel[la:ha], mel[lb:hb])
        c = _share(chords[la:ha], chords[lb:hb])
        if na == nb:
            same_m.append(m)
            same_c.append(c)
        else:
            diff_m.append(m)
            diff_c.append(c)
    last = steps[-1] if steps else None
    final_chord = last.chord_now if last is not None else ct.CHORD_NC
    sounding = [p for p in mel if p >= 0]
    return FormReport(
        same_melody=_mean(same_m),
        same_chords=_mean(same_c),
        different_melody=_mean(diff_m),
        different_chords=_mean(diff_c),
        same_pairs=len(same_m),
        different_pairs=len(diff_m),
        final_chord=ct.chord_token_name(final_chord),
        final_is_tonic=final_chord == tonic_chord(key),
        final_note_is_tonic=bool(sounding) and mel[-1] >= 0 and mel[-1] % 12 == key.tonic,
        key=key.name,
    )

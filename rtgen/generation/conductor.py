"""Conductors: one per mode, deciding per part and per step who plays.

Each part (melody, chords, bass) at each step is either *sampled* by the models or
*observed* from the player, and either *voiced* (rtgen plays it) or not. The
voicer never echoes an observed part back. A conductor also says whether a step is
*reactive*: decided only once the player's notes for that step are known (the
step's grid time plus a short window, or at once when the player's onset arrives),
instead of one step ahead.

=================  ==================  =================  ==========  ========
mode               melody              chords             bass        reactive
=================  ==================  =================  ==========  ========
autonomous         sampled, voiced     sampled, voiced    voiced      no
accompany          observed (top)      harmonised, voiced voiced      yes
improvise          sampled, voiced     observed           silent      yes (no window)
call-and-response  listen: observed    harmonised         silent      yes
                   answer: sampled     sampled, voiced    voiced      no
band               observed (top)      the left hand's,   voiced      yes (no window)
                                       voiced (comping)
duet               listen: the whole polyphony is heard               yes (no window)
                   answer: a polyphonic model's frames (chords part)  no
chorale            observed (top):     observed; alto and the model's yes
                   the soprano         tenor from the     bass
                                       polyphonic model
=================  ==================  =================  ==========  ========

The drums (a part of the voicer, not of the engine) play wherever rtgen plays chords and bass and
in improvise; they are silent while call-and-response listens. In band mode the arranger controls
(:data:`BAND_CONTROLS`) are cued by :meth:`Band.cue` and land on the next bar line.

Duet's conductor (:class:`Duet`, on :class:`rtgen.generation.duet.DuetAnswer`) plays its answer itself, from a
polyphonic model (:meth:`~rtgen.generation.duet.DuetAnswer.play`): the engine's parts stay silent in that mode.

Pure: the daemon feeds what it heard; the same conductors drive ``evaluate`` offline.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from rtgen import contract as ct
from rtgen.config import POLY_MODES as CONFIG_POLY_MODES
from rtgen.config import AccompanyConfig, CallResponseConfig, ImproviseConfig, check_mode
from rtgen.errors import ModelError
from rtgen.generation.duet import DuetAnswer
from rtgen.generation.engine import Steer
from rtgen.generation.keys import dominant_chord, estimate_key
from rtgen.input.tracker import SILENT_FRAME, StepFrame
from rtgen.timing.transport import Position

if TYPE_CHECKING:
    from rtgen.generation.poly import PolyModel

_ALL = frozenset(("melody", "chords", "bass", "drums"))
_BACKING = frozenset(("chords", "bass", "drums"))  # the drummer keeps time whenever rtgen backs the player
_NONE: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Heard:
    """What the player did at one step, quantised to the grid (for the models' conditioning only).

    Attributes:
        melody: the player's melody token (NOTE_ON on an onset, HOLD while the note sounds, REST).
        velocity: MIDI velocity of the onset, if any.
        chord: the player's chord token (HOLD while it stays, a CHORD token on a change, N.C.).
        left: the chord the player's left hand holds under the melody (a CHORD token), N.C. when none is clear.
        left_struck: the left hand's chord where it changed (a CHORD token), HOLD elsewhere: while the hand is
            lifted (``left`` N.C.) the last chord goes on (band mode follows it).
        poly: the player's whole polyphony at this step (both hands, the pedal's notes; duet hears it).
        pitch: the MIDI pitch of the player's melody note sounding at this step (struck or held), unfolded (the
            melody token folds it into the contract's range); None when the melody rests.
    """

    melody: int = ct.MEL_REST
    velocity: int | None = None
    chord: int = ct.CHORD_HOLD
    left: int = ct.CHORD_NC
    left_struck: int = ct.CHORD_HOLD
    poly: StepFrame = SILENT_FRAME
    pitch: int | None = None

    @property
    def onset(self) -> bool:
        """The player struck a note at this step."""
        return self.melody >= ct.MEL_NOTE_OFFSET

    @property
    def active(self) -> bool:
        """The player is playing (an onset or a held note)."""
        return self.melody != ct.MEL_REST


NOBODY = Heard()
"""Nothing heard (autonomous play, or a silent player)."""


@dataclass(frozen=True, slots=True)
class Plan:
    """Who plays at one step.

    Attributes:
        observe_melody: feed the player's melody to the models (instead of sampling one).
        observe_chords: feed the player's chords (instead of sampling them).
        harmonise: sample the chord with the harmoniser, which hears this step's melody.
        voiced: the parts rtgen plays at this step (a subset of melody, chords, bass, drums).
        reactive: decide this step when the player's notes for it are known, not one step ahead.
        window_ms: how long past the grid time a reactive step waits for the player.
        key: a key lock for this step that overrides the parameters' (the answer in the call's key).
        tone_fit: log-odds bonus for sampled melody onsets on chord tones on strong beats (improvise).
        temperature_scale: the step samples at the parameters' temperature times this.
        hold: with ``harmonise``, log-odds bonus for keeping the sounding chord.
        weak_hold: with ``harmonise``, a further bonus for keeping it on a beat that is not strong.
        enter: a silent sampled melody starts a note at this step (the first step of an answer).
        left_hand: with ``harmonise``, log-odds bonus for the chord the player's left hand holds.
        left_chords: with ``observe_chords``, the chords observed are the left hand's (``Heard.left_struck``).
        fill: the drummer plays a fill in this step's bar (and a crash on the next downbeat).
        ending: the step lies in the last bar of the piece (the bass ends on the root, held).
        sync: rtgen waits for the player's first chord: nothing is voiced until the left hand strikes one, and
            from that step on ``voiced`` is (see :meth:`voicing`).
        density_scale: the step plays at the parameters' density times this (the drummer's busyness).
        variation: the band's arrangement, ``"A"`` or ``"B"`` (the drummer's groove: see
            :attr:`rtgen.patterns.drums.Drummer.variation`).
        chord: with ``observe_chords``, the chord token the conductor plays at this step instead of the player's
            (the band's ending cadence).
        dominant: the step plays the dominant seventh of the left hand's chord struck here, else of ``chord``
            (the cadence's first chord).
        chorale: the chorale voicer sings alto, tenor and bass under the player's melody at this step
            (:mod:`rtgen.arrange.chorale`).
    """

    observe_melody: bool = False
    observe_chords: bool = False
    harmonise: bool = False
    voiced: frozenset[str] = frozenset(("melody", "chords", "bass", "drums"))
    reactive: bool = False
    window_ms: float = 0.0
    key: ct.Key | None = None
    tone_fit: float = 0.0
    temperature_scale: float = 1.0
    hold: float = 0.0
    weak_hold: float = 0.0
    enter: bool = False
    left_hand: float = 0.0
    left_chords: bool = False
    fill: bool = False
    ending: bool = False
    sync: bool = False
    density_scale: float = 1.0
    variation: str = "A"
    chord: int | None = None
    dominant: bool = False
    chorale: bool = False

    def voicing(self, heard: Heard) -> frozenset[str]:
        """The parts rtgen plays at this step, given what the player did (``sync``: none before a chord)."""
        if self.sync and heard.left_struck < ct.CHORD_OFFSET:
            return _NONE
        return self.voiced

    def _chord(self, heard: Heard) -> int:
        if self.dominant:
            tonic = heard.left_struck if heard.left_struck >= ct.CHORD_OFFSET else self.chord
            return ct.CHORD_HOLD if tonic is None else dominant_chord(ct.Key(ct.Chord.from_token(tonic).root))
        if self.chord is not None:
            return self.chord
        return heard.left_struck if self.left_chords else heard.chord

    def steering(self, heard: Heard, fit: float = 0.0) -> Steer:
        """How the engine is steered at this step, given what the player did (``fit``: the harmoniser's bonus for
        chords holding the player's onset)."""
        melody = heard.melody if self.observe_melody else None
        return Steer(
            melody=melody,
            velocity=heard.velocity if self.observe_melody else None,
            chord=self._chord(heard) if self.observe_chords else None,
            harmonise=self.harmonise and melody is not None,
            fit=fit if self.harmonise else 0.0,
            tone_fit=self.tone_fit,
            hold=self.hold,
            weak_hold=self.weak_hold,
            enter=self.enter,
            guide=heard.left if self.harmonise else None,
            guide_bonus=self.left_hand if self.harmonise else 0.0,
        )


class Conductor(Protocol):
    """Decides the :class:`Plan` of each step; :meth:`heard` tells it what the player did there.

    Attributes:
        mode: the mode it conducts (one of :data:`rtgen.config.MODES`).
        needs_harmoniser: its plans ask the engine to harmonise the player's melody (a contract-v2 model).
        answering: rtgen is playing an answer to the player now (call-and-response; False elsewhere).
        fit: the harmoniser's log-odds bonus for chords holding the player's onset (0 where nothing is harmonised).
    """

    mode: str
    needs_harmoniser: bool
    answering: bool
    fit: float

    def plan(self, pos: Position) -> Plan:
        """The plan for the step at ``pos`` (called before the step is decided)."""
        ...

    def heard(self, pos: Position, heard: Heard) -> None:
        """What the player did at ``pos`` (called once per step, after :meth:`plan`)."""
        ...

    def interrupt(self) -> bool:
        """The player started to play while rtgen was answering: True if rtgen must fall silent now."""
        ...


class Autonomous:
    """rtgen plays every part by itself."""

    mode = "autonomous"
    needs_harmoniser = False
    answering = False
    fit = 0.0
    _PLAN = Plan()

    def plan(self, pos: Position) -> Plan:
        """Every part sampled and voiced, one step ahead."""
        return self._PLAN

    def heard(self, pos: Position, heard: Heard) -> None:
        """The player is not listened to."""

    def interrupt(self) -> bool:
        """Never."""
        return False


class Accompany:
    """The player plays the melody; rtgen harmonises it as it hears it (chords and bass).

    With two hands the melody is the top line, and the chord the left hand holds under it draws the harmoniser's
    choice toward it (``[accompany] left_hand``); with no clear chord under the tune, the tune alone is harmonised.

    Args:
        config: the reactive window, the fit, hold and left-hand bonuses.
    """

    mode = "accompany"
    needs_harmoniser = True
    answering = False

    def __init__(self, config: AccompanyConfig | None = None) -> None:
        cfg = config or AccompanyConfig()
        self.fit = cfg.fit
        self._plan = Plan(observe_melody=True, harmonise=True, voiced=_BACKING, reactive=True,
                          window_ms=cfg.reactive_window_ms, temperature_scale=cfg.temperature_scale,
                          hold=cfg.hold, weak_hold=cfg.weak_hold, left_hand=cfg.left_hand)  # fmt: skip

    def plan(self, pos: Position) -> Plan:
        """Melody observed, chords from the harmoniser, decided reactively."""
        return self._plan

    def heard(self, pos: Position, heard: Heard) -> None:
        """Nothing to track: every step is the same plan."""

    def interrupt(self) -> bool:
        """Never."""
        return False


class Improvise:
    """The player holds chords; rtgen plays a melody over them, landing on chord tones on strong beats.

    Args:
        tone_fit: the log-odds bonus for chord tones on strong beats.
    """

    mode = "improvise"
    needs_harmoniser = False
    answering = False
    fit = 0.0

    def __init__(self, tone_fit: float = 1.0) -> None:
        self._PLAN = Plan(observe_chords=True, voiced=frozenset(("melody", "drums")), reactive=True, window_ms=0.0,
                          tone_fit=tone_fit)  # fmt: skip

    def plan(self, pos: Position) -> Plan:
        """Chords observed (recognised live), melody sampled, decided at the grid time."""
        return self._PLAN

    def heard(self, pos: Position, heard: Heard) -> None:
        """Nothing to track."""

    def interrupt(self) -> bool:
        """Never."""
        return False


class CallAndResponse:
    """The player plays a phrase; after a silence rtgen answers, continuing it, then listens again.

    While listening the models are fed the player's melody (and harmonise it silently), so the
    answer continues from the call. The answer lasts as long as the call (or ``answer_bars``
    bars), in the call's key (estimated from its notes unless a key lock is set), and stops the
    moment the player plays again.

    Args:
        config: the silence that ends a call and the answer's length.
        fit: the harmoniser's fit bonus while listening.
    """

    mode = "call-and-response"
    needs_harmoniser = True

    def __init__(self, config: CallResponseConfig | None = None, fit: float = 2.0) -> None:
        cfg = config or CallResponseConfig()
        self.silence_beats = cfg.silence_beats
        self.answer_bars = cfg.answer_bars
        self.fit = fit
        self.answering = False
        self._listen = Plan(observe_melody=True, harmonise=True, voiced=_NONE, reactive=True, window_ms=0.0)
        self.reset()

    def reset(self) -> None:
        """Listen from scratch."""
        self.answering = False
        self._entering = False
        self.call_steps = 0  # from the call's first onset to its last sounding step
        self.silence_steps = 0
        self.answer_left = 0
        self.answers = 0
        self._weights = [0.0] * 12  # pitch-class weights of the call (for its key)
        self._key: ct.Key | None = None

    @property
    def call_key(self) -> ct.Key | None:
        """The key of the last call (None before any)."""
        return self._key

    def plan(self, pos: Position) -> Plan:
        """Listening: observe and harmonise silently, reactively. Answering: play everything, one step ahead."""
        if not self.answering:
            return self._listen
        return Plan(voiced=_ALL, key=self._key, enter=self._entering)

    def heard(self, pos: Position, heard: Heard) -> None:
        """Count the call, the silence after it and the answer's steps."""
        beat = max(1, pos.beat_steps)
        if self.answering:
            self._entering = False
            self.answer_left -= 1
            if self.answer_left <= 0:
                self.answering = False
                self.call_steps = self.silence_steps = 0
                self._weights = [0.0] * 12
            return
        if heard.active:
            if heard.onset:
                pitch = ct.melody_pitch(heard.melody)
                if pitch is not None:
                    self._weights[pitch % 12] += 1.0
            self.call_steps += self.silence_steps + 1 if self.call_steps else 1
            self.silence_steps = 0
            return
        if self.call_steps == 0:
            return  # silence before any call
        self.silence_steps += 1
        if self.silence_steps >= math.ceil(self.silence_beats * beat):
            self.answering = True
            self._entering = True  # the answer's first step starts a note: an answer that waits is no answer
            self.answers += 1
            bars = self.answer_bars
            self.answer_left = bars * pos.bar_steps if bars > 0 else self.call_steps
            self._key = estimate_key(self._weights)

    def interrupt(self) -> bool:
        """The player plays while rtgen answers: the answer ends now and a new call starts."""
        if not self.answering:
            return False
        self.answering = False
        self.answer_left = 0
        self.call_steps = self.silence_steps = 0
        self._weights = [0.0] * 12
        return True


BAND_CONTROLS = ("sync", "intro", "fill", "variation_a", "variation_b", "break", "ending")
"""The band's arranger controls (:meth:`Band.cue`); all but ``sync`` land on the next bar line:

* ``sync``: sync start: the band stops now and starts again with the next chord the player strikes;
* ``intro``: :data:`INTRO_BARS` bars of intro: sparse drums (density x :data:`INTRO_DENSITY`) under the chord the
  left hand holds, if any, a fill in the last bar and a crash on the line after it (it starts a waiting band);
* ``fill``: the drummer fills the next bar (a crash on the downbeat after it);
* ``variation_a`` / ``variation_b``: the arrangement from the next bar on: A as configured, B busier (density x
  :data:`VARIATION_B_DENSITY`) on the drum style's other groove;
* ``break``: one bar of silence (every note released on its line), then the band goes on;
* ``ending``: the last bar, a cadence on the left hand's last chord as the tonic: its dominant seventh on the
  downbeat, the tonic from the middle of the bar, the bass ending on its root and holding it, the drummer filling;
  then the band stops and starts again, as with ``sync``, with the next chord the player strikes.
"""

INTRO_BARS = 2
INTRO_DENSITY = 0.5  # below 0.6 the grooves' sparse lines play
VARIATION_B_DENSITY = 1.5


class Band:
    """The player's left hand gives the chords, the right hand the melody; rtgen is the band: bass, drums and a
    comping part in the parts' styles, following the left hand's chord at the step it is heard, never playing the
    melody back. The arranger controls (:data:`BAND_CONTROLS`) are cued with :meth:`cue`.

    Attributes:
        waiting: the band is stopped (sync start, or after an ending) until the player's next chord.
        variation: the arrangement playing, ``"A"`` or ``"B"``.
    """

    mode = "band"
    needs_harmoniser = False
    answering = False
    fit = 0.0

    def __init__(self) -> None:
        self.waiting = False
        self.variation = "A"
        self._cues: dict[int, str] = {}  # bar -> the control landing on it (an intro: each of its bars)
        self._switch: tuple[int, str] | None = None  # (bar, variation) cued
        self._plans = {v: self._plans_for(v) for v in ("A", "B")}
        self._tonic = ct.CHORD_NC  # the left hand's last chord: the ending's tonic
        self._cadence: dict[tuple[str, int, bool], Plan] = {}

    @staticmethod
    def _plans_for(variation: str) -> dict[str, Plan]:
        play = Plan(observe_melody=True, observe_chords=True, left_chords=True, voiced=_BACKING, reactive=True,
                    window_ms=0.0, variation=variation,
                    density_scale=VARIATION_B_DENSITY if variation == "B" else 1.0)  # fmt: skip
        intro = dataclasses.replace(play, density_scale=play.density_scale * INTRO_DENSITY)
        return {
            "play": play,
            "break": dataclasses.replace(play, voiced=_NONE),
            "fill": dataclasses.replace(play, fill=True),
            "ending": dataclasses.replace(play, fill=True, ending=True),
            "waiting": dataclasses.replace(play, sync=True),
            "intro": intro,
            "intro_end": dataclasses.replace(intro, fill=True),
        }

    @property
    def cued(self) -> dict[int, str]:
        """The controls cued, by the bar they land on (a variation included)."""
        cues = dict(self._cues)
        switch = self._switch
        if switch is not None:
            cues.setdefault(switch[0], f"variation_{switch[1].lower()}")
        return cues

    def cue(self, control: str, next_pos: Position) -> int:
        """Cue arranger control ``control`` (one of :data:`BAND_CONTROLS`) on the next bar line at or after
        ``next_pos`` (the next step to decide); returns that bar (``sync``: at once).

        Raises:
            ValueError: an unknown control; the message lists them.
        """
        if control not in BAND_CONTROLS:
            raise ValueError(f"band control must be one of {', '.join(BAND_CONTROLS)}, got {control!r}")
        bar = next_pos.bar if next_pos.position == 0 else next_pos.bar + 1
        if control == "sync":
            self.waiting = True
            self._cues.clear()
        elif control.startswith("variation_"):
            self._switch = (bar, control.removeprefix("variation_").upper())
        elif control == "intro":
            for b in range(bar, bar + INTRO_BARS):
                self._cues[b] = "intro"
        else:
            self._cues[bar] = control
        return bar

    def plan(self, pos: Position) -> Plan:
        """The left hand's chords observed and voiced by the band, decided at the grid time; a cued control
        changes the plan of its bar."""
        switch = self._switch
        plans = self._plans[switch[1] if switch is not None and pos.bar >= switch[0] else self.variation]
        control = self._cues.get(pos.bar)
        if control == "intro":
            return plans["intro" if self._cues.get(pos.bar + 1) == "intro" else "intro_end"]
        if control == "ending":
            return self._ending(plans["ending"], pos)
        if self.waiting:
            return plans["waiting"]
        return plans.get(control or "play", plans["play"])

    def _ending(self, plan: Plan, pos: Position) -> Plan:
        """The ending bar's plan at ``pos``: on the downbeat the dominant seventh of the left hand's chord (struck
        there, else the last), that chord from the counted beat in the middle of the bar on (4/4: the third, 3/4:
        the second)."""
        beat = max(1, pos.beat_steps)
        if pos.position == 0:
            key = (plan.variation, self._tonic, True)
        elif pos.position == pos.bar_steps // beat // 2 * beat and self._tonic != ct.CHORD_NC:  # on a counted beat
            key = (plan.variation, self._tonic, False)
        else:
            return plan
        found = self._cadence.get(key)
        if found is None:
            tonic = None if self._tonic == ct.CHORD_NC else self._tonic
            found = self._cadence[key] = dataclasses.replace(plan, chord=tonic, dominant=key[2])
        return found

    def heard(self, pos: Position, heard: Heard) -> None:
        """Start on the player's chord when waiting; at the end of a bar, take what was cued for it."""
        if heard.left_struck >= ct.CHORD_OFFSET:
            self._tonic = heard.left_struck
        if self.waiting and (heard.left_struck >= ct.CHORD_OFFSET or self._cues.get(pos.bar) == "intro"):
            self.waiting = False
        if pos.position != pos.bar_steps - 1:
            return
        switch = self._switch
        if switch is not None and switch[0] <= pos.bar + 1:
            self.variation, self._switch = switch[1], None
        self.waiting = self.waiting or self._cues.get(pos.bar) == "ending"  # the ending played: the band stops
        for bar in [b for b in self._cues if b <= pos.bar]:
            del self._cues[bar]

    def interrupt(self) -> bool:
        """Never."""
        return False

    def forget_cues(self) -> None:
        """Drop what was cued (the transport stopped: its bar numbers start again); sync start stays armed."""
        self._cues.clear()
        self._switch = None


class Chorale:
    """The player's melody is the soprano; rtgen sings alto, tenor and bass under it from a polyphonic model,
    decided the moment the player's note for a beat arrives (:mod:`rtgen.arrange.chorale`). The engine only hears
    the player (melody and chords observed, nothing sampled), so a switch to another mode finds it current.

    Args:
        config: the reactive window (accompany's).
    """

    mode = "chorale"
    needs_harmoniser = False
    answering = False
    fit = 0.0

    def __init__(self, config: AccompanyConfig | None = None) -> None:
        cfg = config or AccompanyConfig()
        self._plan = Plan(observe_melody=True, observe_chords=True, voiced=_NONE, reactive=True,
                          window_ms=cfg.reactive_window_ms, chorale=True)  # fmt: skip

    def plan(self, pos: Position) -> Plan:
        """The player observed, the chorale voicer sings, decided reactively."""
        return self._plan

    def heard(self, pos: Position, heard: Heard) -> None:
        """Nothing to track: the voicer follows the soprano."""

    def interrupt(self) -> bool:
        """Never."""
        return False


class Duet(DuetAnswer):
    """The player plays a phrase with both hands; after the call-and-response silence rtgen answers it
    polyphonically (:class:`rtgen.generation.duet.DuetAnswer`; its notes come from :meth:`play`, the engine's parts
    stay silent).

    Args:
        model: the polyphonic model that answers.
        config: the silence that ends a phrase and the answer's length (call-and-response's settings).
        seed: the model's random draws (None: fresh entropy).
    """

    mode = "duet"
    needs_harmoniser = False
    fit = 0.0
    _LISTEN = Plan(observe_melody=True, voiced=_NONE, reactive=True, window_ms=0.0)
    _ANSWER = Plan(voiced=_NONE)

    def plan(self, pos: Position) -> Plan:
        """Listening: hear the player at each step's grid time. Answering: decided a step ahead."""
        return self._ANSWER if self.answering else self._LISTEN

    def heard(self, pos: Position, heard: Heard) -> None:
        """The player's whole polyphony at ``pos`` (see :meth:`~rtgen.generation.duet.DuetAnswer.hear`)."""
        self.hear(pos, heard.poly)


POLY_MODES = CONFIG_POLY_MODES
"""The modes that play a polyphonic model (:mod:`rtgen.generation.poly`) beside the engine's
(:data:`rtgen.config.POLY_MODES`)."""


def needs_harmoniser(mode: str) -> bool:
    """Whether ``mode``'s conductor asks the engine to harmonise the player's melody (a contract-v2 model)."""
    kinds: tuple[type[Conductor], ...] = (Autonomous, Accompany, Improvise, CallAndResponse, Band, Chorale)
    conductors = {c.mode: c.needs_harmoniser for c in kinds}
    return conductors.get(check_mode(mode), False)


def make_conductor(mode: str, accompany: AccompanyConfig | None = None,
                   call_response: CallResponseConfig | None = None,
                   improvise: ImproviseConfig | None = None, poly: PolyModel | None = None,
                   seed: int | None = None) -> Conductor:  # fmt: skip
    """The conductor for ``mode`` (one of :data:`rtgen.config.MODES`).

    Args:
        mode: the mode.
        accompany: ``[accompany]`` (also the call-and-response harmoniser's fit).
        call_response: ``[call_response]`` (also duet's silence and answer length).
        improvise: ``[improvise]``.
        poly: the polyphonic model the modes of :data:`POLY_MODES` play.
        seed: their model's random draws (None: fresh entropy).

    Raises:
        ValueError: an unknown mode; the message lists the modes.
        ModelError: a mode of :data:`POLY_MODES` without a polyphonic model.
    """
    check_mode(mode)
    if mode == "chorale":  # its voicer holds the polyphonic model (the performer's)
        return Chorale(accompany)
    if mode in POLY_MODES:
        if poly is None:
            raise ModelError(f"mode {mode} plays a polyphonic model (the shipped chorale, or --model NAME of one)")
        return Duet(poly, call_response, seed=seed)
    if mode == "autonomous":
        return Autonomous()
    if mode == "accompany":
        return Accompany(accompany)
    if mode == "improvise":
        return Improvise((improvise or ImproviseConfig()).tone_fit)
    if mode == "band":
        return Band()
    return CallAndResponse(call_response, fit=(accompany or AccompanyConfig()).fit)

"""The live input stage: the player's MIDI in, turned into state the real-time thread can read.

Data path::

    rtmidi thread                      real-time thread (the daemon's loop)
    open_input(..., InputQueue()) ──▶  queue.drain() ──▶ PlayerTracker.feed(t_ns, msg) ──▶ [Control, ...]
                                                         tracker.sounding() / melody_note() / chord(now_ns)
                                                         tracker.take_onsets() / take_frame()

:class:`InputQueue` is the rtmidi callback: it only copies the bytes with the arrival
time ``open_input`` stamped, enqueues them (``SimpleQueue.put``) and optionally wakes the loop. :class:`PlayerTracker`
runs on the real-time thread: per message it does a few integer comparisons and set
operations, never logs and never raises (bad bytes are counted in ``bad``). Chord
recognition (numpy template matching) runs lazily in :meth:`PlayerTracker.chord`, at
most once per change of the sounding notes.

Control Change mapping (``[cc]`` in the config; 0 = unmapped), 0..127 onto:

* ``temperature`` 0.05..3, piecewise geometric: 0..64 → 0.05..1 and 64..127 → 1..3,
  so the middle of the wheel is the default 1 and each step changes the temperature
  by a constant *ratio* (what the ear hears) within each half;
* ``top_p`` 0.05..1 and ``swing`` 0..0.75, linear;
* ``density`` 0..4, piecewise linear: 0..64 → 0..1 (thinner) and 64..127 → 1..4 (busier);
* ``mode``: four ranges of 32 → ``autonomous``, ``accompany``, ``improvise``,
  ``call-and-response`` (:data:`CC_MODES`), emitted only when the range changes; ``mode_extra``: the other
  modes (``band``, ``duet``, ``chorale``: :data:`CC_EXTRA_MODES`) in equal ranges, the same way;
* ``panic`` and the band's arranger controls (``band_fill``, ``band_break``, ...; :data:`SWITCH_CONTROLS`):
  emitted once when the value rises through 64.

Two hands (``[input] split``): the melody is the top line and the notes under it are harmony. ``auto`` is a
skyline with a little hysteresis: a note takes the line when it is the highest struck (notes struck within
:data:`TOGETHER_NS` of each other are one chord: its top note is the melody), or when it is struck alone at most
:data:`LEGATO_SEMITONES` under the line's held note (a legato step down); when the line's note ends, the notes
still held under it do not take it, and a note struck while the line rests takes it only above every held key
and above the top of the left hand's last chord. A fixed split (a MIDI pitch) makes the notes at and above it the
right hand's tune (its latest struck note is the melody) and those below the left hand's chords.
:meth:`PlayerTracker.left_chord` names the chord the harmony notes make.

Polyphony heard whole: :meth:`PlayerTracker.sounding` is every note sounding (keys down and notes the sustain pedal,
CC 64 >= 64, holds after their keys were released, until it lifts), and :meth:`PlayerTracker.take_frame` hands the
loop one :class:`StepFrame` per grid step: the pitches struck in it (a key struck again under the pedal is a new
onset) and those that sounded in it, for the modes that hear the player as more than a line (duet).

The mapping is a :class:`CcMap`, an immutable value the tracker holds by one reference: a new mapping
(MIDI learn, :meth:`PlayerTracker.set_mapping`) is built whole, then swapped in. MIDI learn: while a control
is armed (:attr:`PlayerTracker.learning`), the next CC in ``LEARNABLE_CCS`` on a channel the tracker listens to
is mapped to it (and taken from any other control), and :meth:`PlayerTracker.feed` returns
``Control("learned", name)``; that CC does not move anything itself.
"""

from __future__ import annotations

import dataclasses
import queue
from collections import deque
from collections.abc import Callable, Sequence
from typing import NamedTuple

from rtgen.config import (
    CC_CONTROLS,
    LEARNABLE_CCS,
    MODES,
    CcConfig,
    Config,
    GenerationConfig,
    check_cc_control,
    field_range,
)
from rtgen.contract import CHORD_NC, Chord, recognize_chord
from rtgen.midi.messages import (
    CC_ALL_NOTES_OFF,
    CC_ALL_SOUND_OFF,
    CC_SUSTAIN,
    CHANNEL_MASK,
    CONTROL_CHANGE,
    KIND_MASK,
    NOTE_OFF,
    NOTE_ON,
    SWITCH_ON,
    SYSTEM,
)

Message = tuple[int, ...]

CONTINUOUS_CONTROLS = ("temperature", "top_p", "density", "swing")
"""Controls whose value is a number scaled from the CC value (see :func:`scale_cc`)."""

SWITCH_CONTROLS = tuple(name for name in CC_CONTROLS if name == "panic" or name.startswith("band_"))
"""Controls emitted once (value 1.0) when their CC rises through 64: a button, or a pedal pressed."""

CC_MODES = MODES[:4]
"""The modes the mode CC selects, in four ranges of 32 (a fifth range would move the boundaries players' knobs
and presets already have: the later modes have a CC of their own, :data:`CC_EXTRA_MODES`)."""
CC_EXTRA_MODES = MODES[4:]
"""The modes the ``mode_extra`` CC selects, in equal ranges of 0..127 (three: band, duet, chorale)."""

CONTROL_RANGES: dict[str, tuple[float, float]] = {
    name: field_range(GenerationConfig, name) for name in CONTINUOUS_CONTROLS
}
"""Output range of each continuous control: the config schema's ``[generation]`` range."""

_DEFAULT_TEMPERATURE = GenerationConfig.temperature  # the middle of the wheel
_DEFAULT_DENSITY = GenerationConfig.density
# Bytes per channel message, indexed by the status nibble (0x8n..0xEn); 0 = not a channel message.
_LENGTH = (0, 0, 0, 0, 0, 0, 0, 0, 3, 3, 3, 3, 2, 2, 3, 0)


TOGETHER_NS = 40_000_000
"""Notes struck within this time of each other are struck together (a chord): only its top note can be the melody."""
LEGATO_SEMITONES = 4
"""A note struck alone this close under the melody's held note takes the line (a legato step down)."""
LEFT_RING_NS = 200_000_000
"""The left hand's chord is still heard this long after its notes end (it rings; it is struck again)."""


LEARNED = "learned"
"""The name of the :class:`Control` that says MIDI learn mapped a CC: its value is the control's name."""


class Control(NamedTuple):
    """A mapped controller moved: ``Control("temperature", 1.2)``, ``Control("mode", "accompany")``.

    ``panic`` carries the value 1.0; ``Control(LEARNED, "temperature")`` says the armed control was just
    mapped (its CC is in :attr:`PlayerTracker.mapping`).
    """

    name: str
    value: float | str


@dataclasses.dataclass(frozen=True)
class CcMap:
    """The controller mapping as the real-time thread reads it: an immutable value, swapped whole.

    Attributes:
        config: the mapping as ``[cc]`` writes it (0 = not mapped).
        by_number: for each CC number 0..127, the names of the controls mapped to it.
    """

    config: CcConfig
    by_number: tuple[tuple[str, ...], ...]

    @classmethod
    def of(cls, cc: CcConfig) -> CcMap:
        """The map of ``[cc]`` (several controls may share a CC)."""
        by_number: list[tuple[str, ...]] = [() for _ in range(128)]
        for name in CC_CONTROLS:
            number = getattr(cc, name)
            if number:
                by_number[number] = (*by_number[number], name)
        return cls(cc, tuple(by_number))

    def mapped(self, name: str, number: int) -> CcMap:
        """A copy with control ``name`` on CC ``number`` (0 = unmapped), which no other control keeps.

        Raises:
            ValueError: ``name`` is not a control or ``number`` is outside 0..119.
        """
        check_cc_control(name)
        if not 0 <= number <= LEARNABLE_CCS[1]:
            raise ValueError(f"CC number must be in range 0..{LEARNABLE_CCS[1]}, got {number}")
        changes = {n: 0 for n in CC_CONTROLS if number and n != name and getattr(self.config, n) == number}
        changes[name] = number
        return CcMap.of(dataclasses.replace(self.config, **changes))

    def as_dict(self) -> dict[str, int]:
        """``{control: CC number}`` (0 = not mapped), as the status shows it."""
        return {name: getattr(self.config, name) for name in CC_CONTROLS}


class StepFrame(NamedTuple):
    """The player's whole polyphony over one grid step (see :meth:`PlayerTracker.take_frame`).

    Attributes:
        onsets: pitches struck during the step, ascending (a key struck again under the pedal included).
        sounding: pitches that sounded during the step, ascending: those sounding at its end (keys down and notes
            the pedal holds) and those struck and already released within it.
        velocity: the loudest onset's velocity (0 without an onset).
    """

    onsets: tuple[int, ...] = ()
    sounding: tuple[int, ...] = ()
    velocity: int = 0


SILENT_FRAME = StepFrame()
"""A step where the player sounded nothing."""


class Onset(NamedTuple):
    """A note the player struck, with its arrival time on ``time.perf_counter_ns``."""

    t_ns: int
    pitch: int
    velocity: int


def scale_cc(name: str, value: int) -> float:
    """Map a CC value onto a continuous control's range (see the module docstring for the curves).

    Args:
        name: one of :data:`CONTINUOUS_CONTROLS`.
        value: the CC value; anything outside 0..127 is clamped first.

    Returns:
        The control value, clamped to :data:`CONTROL_RANGES` ``[name]``.

    Raises:
        ValueError: ``name`` is not a continuous control.
    """
    if name not in CONTROL_RANGES:
        raise ValueError(f"control must be one of {', '.join(CONTINUOUS_CONTROLS)}, got {name!r}")
    lo, hi = CONTROL_RANGES[name]
    v = min(max(int(value), 0), 127)
    if name == "temperature":
        mid = _DEFAULT_TEMPERATURE
        out = lo * (mid / lo) ** (v / 64) if v <= 64 else mid * (hi / mid) ** ((v - 64) / 63)
    elif name == "density":
        mid = _DEFAULT_DENSITY
        out = lo + (mid - lo) * v / 64 if v <= 64 else mid + (hi - mid) * (v - 64) / 63
    else:
        out = lo + (hi - lo) * v / 127
    return min(max(out, lo), hi)


def mode_for_cc(value: int, extra: bool = False) -> str:
    """The playing mode selected by a mode CC value (clamped to 0..127): four ranges of 32, see :data:`CC_MODES`;
    with ``extra``, the ``mode_extra`` CC's equal ranges over :data:`CC_EXTRA_MODES`."""
    return _cc_mode(value, extra)[1]


def _cc_mode(value: int, extra: bool) -> tuple[int, str]:
    """``(index in MODES, mode)`` a mode CC's value selects."""
    value = min(max(int(value), 0), 127)
    index = len(CC_MODES) + value * len(CC_EXTRA_MODES) // 128 if extra else value >> 5
    return index, MODES[index]


def nearest_step(t_ns: int, step_start_ns: int, step_ns: int) -> tuple[int, int]:
    """Quantise a time to the nearest grid step.

    Args:
        t_ns: the time to quantise (e.g. an onset's arrival).
        step_start_ns: start of step 0.
        step_ns: length of one step (> 0).

    Returns:
        ``(steps, offset_ns)``: the nearest step counted from ``step_start_ns`` (negative before
        it) and how far ``t_ns`` lies from that step's start (negative = early). A time exactly
        half-way goes to the later step.

    Raises:
        ValueError: ``step_ns`` is not positive.
    """
    if step_ns <= 0:
        raise ValueError(f"step_ns must be positive, got {step_ns}")
    half = step_ns // 2
    steps, rest = divmod(t_ns - step_start_ns + half, step_ns)
    return steps, rest - half


class InputQueue:
    """The rtmidi callback: enqueue ``(t_ns, bytes)`` and wake the loop; drained by the real-time thread.

    Pass an instance as ``callback`` to :func:`rtgen.io.ports.open_input`.

    Args:
        on_arrival: called after every put, on rtmidi's thread (e.g. ``threading.Event.set``
            to wake the loop); it must not block.

    Attributes:
        received: messages enqueued so far (written only by the callback thread).
    """

    def __init__(self, on_arrival: Callable[[], None] | None = None) -> None:
        self._queue: queue.SimpleQueue[tuple[int, Message]] = queue.SimpleQueue()
        self._put = self._queue.put
        self._get = self._queue.get_nowait
        self._on_arrival = on_arrival
        self.received = 0

    def __call__(self, message: Sequence[int], t_ns: int) -> None:
        """Enqueue one message with its arrival time (``perf_counter_ns``)."""
        self._put((t_ns, tuple(message)))
        self.received += 1
        if self._on_arrival is not None:
            self._on_arrival()

    def drain(self, limit: int = 256) -> list[tuple[int, Message]]:
        """Take up to ``limit`` queued ``(t_ns, message)`` pairs, oldest first; never blocks."""
        out: list[tuple[int, Message]] = []
        if self._queue.empty():
            return out
        get = self._get
        try:
            for _ in range(limit):
                out.append(get())
        except queue.Empty:
            pass
        return out

    def __len__(self) -> int:
        """Messages waiting (approximate while the callback thread is putting)."""
        return self._queue.qsize()


class PlayerTracker:
    """What the player is doing, fed one MIDI message at a time on the real-time thread.

    Keys held, notes sustained by the pedal, the latest onsets, the melody line and the
    harmony under it, the recognised chords and the mapped controllers. Chord recognition waits for the sounding
    notes to settle (``settle_ms``) so a rolled chord is one chord; when the hands lift
    (or a single note remains) the last chord is kept, as the listener still hears it ring.

    Args:
        channel: 1..16 to listen to one channel, 0 for omni.
        settle_ms: how long the sounding notes must stay unchanged before the chord is re-recognised.
        cc: the controller mapping (default: :class:`~rtgen.config.CcConfig` defaults).
        history: how many recent onsets :attr:`onsets` keeps.

    Attributes:
        onsets: recent :class:`Onset` s, oldest first (bounded by ``history``).
        last_onset_ns: arrival of the latest note-on, or None.
        last_release_ns: when the last sounding note ended (silence started), or None.
        pedal: the sustain pedal (CC 64 >= 64) is down.
        bad: malformed messages dropped (wrong length, data bytes > 127, not bytes at all).
        filtered: channel messages dropped by the channel filter.
        split: the split between the hands (a MIDI pitch: the right hand is it and above), or None: the top
            line is the melody (see the module docstring); set it with :meth:`set_split`.
        melody_onset: the onset of the latest note that took the melody (kept after the note ends, so a short
            note is still heard at its step), or None.

    Raises:
        ValueError: ``channel`` outside 0..16, ``settle_ms`` negative or ``history`` < 1.
    """

    def __init__(
        self, *, channel: int = 0, settle_ms: float = 40.0, cc: CcConfig | None = None, history: int = 64
    ) -> None:
        if not 0 <= channel <= 16:
            raise ValueError(f"channel must be in range 0..16 (0 = omni), got {channel}")
        if settle_ms < 0:
            raise ValueError(f"settle_ms must be >= 0, got {settle_ms}")
        if history < 1:
            raise ValueError(f"history must be >= 1, got {history}")
        self._channel = channel - 1  # -1: omni
        self.split: int | None = None  # None: auto (the skyline)
        self.settle_ns = int(settle_ms * 1_000_000)
        self._map = CcMap.of(cc if cc is not None else CcConfig())
        self.learning: str | None = None
        # scaled values precomputed per CC value
        self._tables = {name: tuple(scale_cc(name, v) for v in range(128)) for name in CONTINUOUS_CONTROLS}
        self.onsets: deque[Onset] = deque(maxlen=history)
        self.bad = 0
        self.filtered = 0
        self.reset()

    @classmethod
    def from_config(cls, cfg: Config) -> PlayerTracker:
        """A tracker for ``[input]`` (channel, settle_ms, split) and ``[cc]``."""
        tracker = cls(channel=cfg.input.channel, settle_ms=cfg.input.settle_ms, cc=cfg.cc)
        tracker.set_split(cfg.input.parsed_split())
        return tracker

    def reset(self) -> None:
        """Forget every note, the pedal, the chord, the onsets and the controller edges (counters stay)."""
        self._held: set[int] = set()
        self._sustained: set[int] = set()
        self._struck: list[int] = []  # sounding pitches in the order struck; the last is the melody
        self._frame_onsets: set[int] = set()  # pitches struck since the last take_frame()
        self._frame_passed: set[int] = set()  # ... of which those already silent again
        self._frame_velocity = 0
        self.pedal = False
        self.onsets.clear()
        self._untaken = 0
        self.last_onset_ns: int | None = None
        self.last_release_ns: int | None = None
        self._version = 0  # bumped whenever the sounding set changes
        self._changed_ns = 0
        self._sounding: tuple[int, ...] = ()
        self._sounding_version = 0
        self._chord: Chord | None = None
        self._chord_version = 0
        self._mode = -1
        self._switched_on: set[str] = set()  # switch controls whose CC is at 64 or above
        self._reset_hands()

    def _reset_hands(self) -> None:
        self._line: int | None = None  # the melody's pitch while it sounds
        self.melody_onset: Onset | None = None  # the onset of the latest note that took the line (kept after it ends)
        self._harmony: set[int] = set()  # sounding pitches that are harmony (the left hand, inner voices)
        self._hands_version = 0  # bumped whenever the harmony notes change
        self._left_notes: tuple[int, ...] = ()  # the latest harmony notes of two pitch classes or more
        self._left: Chord | None = None
        self._left_version = -1
        self._left_quiet_ns: int | None = None  # when the last harmony note ended (None while one sounds)
        self._legato_from: tuple[int, Onset | None] | None = None  # the line before a legato step, for a revert
        # the left hand's register: its chords' top notes (a chord = harmony notes struck together)
        self._group_ns = -(1 << 62)
        self._group_top = 0
        self._group_size = 0
        self._prev_group_top: int | None = None

    # -- the controller mapping -------------------------------------------------------------------------------

    @property
    def mapping(self) -> CcMap:
        """The controller mapping in force (an immutable value; read it once)."""
        return self._map

    def set_mapping(self, mapping: CcMap) -> None:
        """Swap in another mapping (one reference assignment: the next message reads it)."""
        self._map = mapping

    def learn(self, name: str | None) -> None:
        """Arm MIDI learn for control ``name`` (replacing any armed one), or disarm it (None).

        Raises:
            ValueError: ``name`` is not one of :data:`~rtgen.config.CC_CONTROLS`.
        """
        self.learning = None if name is None else check_cc_control(name)

    # -- reading (real-time thread) --------------------------------------------------------------------------

    @property
    def held(self) -> frozenset[int]:
        """Pitches whose keys are down."""
        return frozenset(self._held)

    def sounding(self) -> tuple[int, ...]:
        """Pitches held or sustained by the pedal, ascending."""
        if self._sounding_version != self._version:
            self._sounding = tuple(sorted(self._held | self._sustained))
            self._sounding_version = self._version
        return self._sounding

    @property
    def sustained(self) -> frozenset[int]:
        """Pitches whose keys are up but which the sustain pedal holds."""
        return frozenset(self._sustained)

    def take_frame(self) -> StepFrame:
        """The player's whole polyphony since the last call: call it once per grid step (the step's frame).

        Every sounding note counts, not only the melody's: keys down and notes the pedal holds. A note struck and
        released within the step is in its ``sounding`` (a short note still sounded there); a key struck again
        under the pedal is an onset. Cheap when nothing was struck (the sounding tuple is cached).
        """
        sounding = self.sounding()
        onsets = self._frame_onsets
        if not onsets:
            return StepFrame((), sounding, 0) if sounding else SILENT_FRAME
        passed = self._frame_passed
        frame = StepFrame(
            tuple(sorted(onsets)),
            tuple(sorted(passed.union(sounding))) if passed else sounding,
            self._frame_velocity,
        )
        onsets.clear()
        passed.clear()
        self._frame_velocity = 0
        return frame

    @property
    def is_silent(self) -> bool:
        """No note is held or sustained."""
        return not self._held and not self._sustained

    def melody_note(self) -> int | None:
        """The player's melody, the top line of two hands (see the module docstring), while it sounds; or None."""
        return self._line

    def harmony(self) -> tuple[int, ...]:
        """The sounding pitches under the melody (the left hand's, and inner voices), ascending."""
        return tuple(sorted(self._harmony))

    def set_split(self, split: int | None) -> None:
        """Split the hands at MIDI pitch ``split`` (the right hand is it and above), or ``None`` for the skyline.

        The notes sounding now are sorted into the new hands at once.

        Raises:
            ValueError: ``split`` outside 0..127.
        """
        if split is not None and not 0 <= split <= 127:
            raise ValueError(f"split must be a MIDI pitch in range 0..127 or None (auto), got {split}")
        self.split = split
        sounding = self._held | self._sustained
        if split is None:
            line = self._line if self._line in sounding else None
        else:
            line = next((p for p in reversed(self._struck) if p >= split), None)
        self._line = line
        self._harmony = {p for p in sounding if p != line and (split is None or p < split)}
        self._left_notes, self._left_quiet_ns = (), None  # the left hand is heard afresh
        self._harmony_changed(grew=True)
        self._legato_from = None

    def left_chord(self, now_ns: int) -> Chord | None:
        """The chord the harmony notes make (the left hand's, held or under the pedal) at ``now_ns``, or None when
        none is clear.

        Recognised (:func:`rtgen.contract.recognize_chord`) as the notes stand, without :meth:`chord`'s settle
        window: the accompanist decides a step when the player's notes for it are known, and a block chord struck
        with the tune's note is heard whole (a chord rolled slowly, as far as it has come). A single pitch class
        keeps the chord before it (a bass note under the chord still ringing, as the training data reads it);
        when the harmony notes have all ended the chord rings on for :data:`LEFT_RING_NS` (a chord struck again,
        or one whose notes come a little after the tune's), then there is none until two pitch classes sound.
        """
        quiet = self._left_quiet_ns
        if quiet is not None and now_ns - quiet > LEFT_RING_NS:
            return None
        if self._left_version != self._hands_version:
            self._left_version = self._hands_version
            self._left = recognize_chord(self._left_notes) if self._left_notes else None
        return self._left

    def left_chord_token(self, now_ns: int) -> int:
        """:meth:`left_chord` as a contract CHORD token, or ``CHORD_NC`` when the left hand holds no clear chord."""
        chord = self.left_chord(now_ns)
        return CHORD_NC if chord is None else chord.token

    def take_onsets(self) -> list[Onset]:
        """Onsets not taken before, oldest first (each onset is returned once)."""
        n = min(self._untaken, len(self.onsets))
        self._untaken = 0
        if n == 0:
            return []
        return list(self.onsets)[-n:]

    def chord(self, now_ns: int) -> Chord | None:
        """The player's chord at ``now_ns``, or None before any chord was recognised.

        The sounding notes are matched (:func:`rtgen.contract.recognize_chord`) once they have
        been unchanged for ``settle_ns``; until then the previous chord stays, so a rolled or
        arpeggiated chord never shows up as its partial chords. Fewer than two pitch classes
        (one note, or hands lifted) keep the previous chord: it is still ringing for the listener.
        """
        if self._chord_version != self._version and now_ns - self._changed_ns >= self.settle_ns:
            self._chord_version = self._version
            chord = recognize_chord(self.sounding())
            if chord is not None:
                self._chord = chord
        return self._chord

    def chord_token(self, now_ns: int) -> int:
        """:meth:`chord` as a contract CHORD token, or ``CHORD_NC`` before any chord was recognised."""
        chord = self.chord(now_ns)
        return CHORD_NC if chord is None else chord.token

    # -- feeding (real-time thread) --------------------------------------------------------------------------

    def feed(self, t_ns: int, message: Sequence[int]) -> list[Control]:
        """Take one message the player sent; returns the mapped controllers it moved (usually none).

        System messages (status >= 0xF0) are ignored here. Malformed messages are counted in
        :attr:`bad` and dropped; this never raises.
        """
        try:
            status = message[0]
            if status >= SYSTEM:
                if status > 0xFF:
                    self.bad += 1
                return []
            if status < NOTE_OFF or len(message) != _LENGTH[status >> 4]:
                self.bad += 1
                return []
            d1 = message[1]
            d2 = message[2] if len(message) == 3 else 0
            if not (0 <= d1 <= 127 and 0 <= d2 <= 127):
                self.bad += 1
                return []
        except (TypeError, IndexError):
            self.bad += 1
            return []
        if self._channel >= 0 and status & CHANNEL_MASK != self._channel:
            self.filtered += 1
            return []
        kind = status & KIND_MASK
        if kind == NOTE_ON:
            if d2:
                self._note_on(d1, d2, t_ns)
            else:
                self._note_off(d1, t_ns)
        elif kind == NOTE_OFF:
            self._note_off(d1, t_ns)
        elif kind == CONTROL_CHANGE:
            learning = self.learning
            if learning is not None and LEARNABLE_CCS[0] <= d1 <= LEARNABLE_CCS[1]:
                self._map = self._map.mapped(learning, d1)  # built once per learn (~10 us), then swapped
                self.learning = None
                return [Control(LEARNED, learning)]
            names = self._map.by_number[d1]
            if names:
                return self._controls(names, d2)
            if d1 == CC_SUSTAIN:  # a [cc] mapping onto 64 wins: that controller is a knob, not a pedal
                self._sustain(d2 >= SWITCH_ON, t_ns)
            elif d1 in (CC_ALL_NOTES_OFF, CC_ALL_SOUND_OFF):
                self._all_off(t_ns)
        return []

    def _note_on(self, pitch: int, velocity: int, t_ns: int) -> None:
        if pitch not in self._held and pitch not in self._sustained:
            self._version += 1
            self._changed_ns = t_ns
        self._held.add(pitch)
        self._sustained.discard(pitch)
        struck = self._struck
        if pitch in struck:
            struck.remove(pitch)
        struck.append(pitch)
        self._frame_onsets.add(pitch)
        self._frame_passed.discard(pitch)
        if velocity > self._frame_velocity:
            self._frame_velocity = velocity
        onset = Onset(t_ns, pitch, velocity)
        previous = self.last_onset_ns
        self.onsets.append(onset)
        self._untaken += 1
        self.last_onset_ns = t_ns
        self._classify(onset, previous)

    # -- two hands -------------------------------------------------------------------------------------------

    def _classify(self, onset: Onset, previous_ns: int | None) -> None:
        """Give a struck note to the melody or to the harmony (see the module docstring)."""
        pitch, t_ns = onset.pitch, onset.t_ns
        together = previous_ns is not None and t_ns - previous_ns <= TOGETHER_NS
        legato, self._legato_from = self._legato_from, None
        if self.split is not None:
            if pitch >= self.split:
                self._take(onset)
            else:
                self._to_harmony(pitch, t_ns)
            return
        line = self._line
        if line is not None and line != pitch and line in self._held:  # the line's key is down
            line_ns = self.melody_onset.t_ns if self.melody_onset is not None else t_ns
            if pitch > line:
                if t_ns - line_ns <= TOGETHER_NS:
                    self._to_harmony(line, line_ns)  # struck together: the top note is the melody
                self._take(onset)
            elif legato is not None and together and legato[0] in self._held:
                # the legato step was a chord's first note: the line goes back to the note it left
                self._to_harmony(line, line_ns)
                self._to_harmony(pitch, t_ns)
                self._line, self.melody_onset = legato
            elif t_ns - line_ns <= TOGETHER_NS:
                self._to_harmony(pitch, t_ns)
            elif not together and line - pitch <= LEGATO_SEMITONES and pitch > max(self._harmony, default=-1):
                self._legato_from = (line, self.melody_onset)
                self._take(onset)
            else:
                self._to_harmony(pitch, t_ns)
            return
        others = self._held - {pitch}
        register = self._register(t_ns)
        if (not others or pitch > max(others)) and (register is None or pitch > register):
            self._take(onset)
        else:
            self._to_harmony(pitch, t_ns)

    def _take(self, onset: Onset) -> None:
        """``onset``'s note becomes the melody."""
        self._line = onset.pitch
        self.melody_onset = onset
        if onset.pitch in self._harmony:
            self._harmony.discard(onset.pitch)
            self._harmony_changed()

    def _harmony_changed(self, grew: bool = False) -> None:
        self._hands_version += 1
        harmony = self._harmony
        # a chord is named as it is struck: the notes left while the hand lifts are what rings of it, no new chord
        if grew and len(harmony) >= 2 and len({p % 12 for p in harmony}) >= 2:
            self._left_notes = tuple(harmony)

    def _to_harmony(self, pitch: int, t_ns: int) -> None:
        """``pitch`` (struck at ``t_ns``) sounds under the melody: the left hand's, or an inner voice."""
        if self._line == pitch:
            self._line = None
        quiet = self._left_quiet_ns
        if quiet is not None and t_ns - quiet > LEFT_RING_NS:
            self._left_notes = ()  # the left hand comes back after a rest: nothing rings from before it
        self._left_quiet_ns = None
        self._harmony.add(pitch)
        self._harmony_changed(grew=True)
        if t_ns - self._group_ns > TOGETHER_NS:
            if self._group_size >= 2:
                self._prev_group_top = self._group_top
            self._group_ns, self._group_top, self._group_size = t_ns, pitch, 1
        else:
            self._group_top = max(self._group_top, pitch)
            self._group_size += 1

    def _register(self, t_ns: int) -> int | None:
        """The top of the left hand's latest chord (a chord still being struck counts with the one before)."""
        if self._group_size >= 2:
            if t_ns - self._group_ns > TOGETHER_NS:
                return self._group_top
            return max(self._group_top, self._prev_group_top or 0)
        return self._prev_group_top

    def _silenced(self, pitch: int, t_ns: int) -> None:
        """``pitch`` stopped sounding at ``t_ns``: it leaves the harmony; the melody, if it was, rests (``auto``)
        or falls back to the right hand's latest struck note still sounding (a fixed split)."""
        if pitch in self._frame_onsets:
            self._frame_passed.add(pitch)  # struck and silent again within one frame: it sounded there
        if pitch in self._harmony:
            self._harmony.discard(pitch)
            self._harmony_changed()
            if not self._harmony:
                self._left_quiet_ns = t_ns
        if self._line == pitch:
            split = self.split
            self._line = None if split is None else next((p for p in reversed(self._struck) if p >= split), None)

    def _note_off(self, pitch: int, t_ns: int) -> None:
        if pitch not in self._held:
            return  # a key pressed before we started listening, or a double note-off
        self._held.discard(pitch)
        if self.pedal:
            self._sustained.add(pitch)
            return
        self._struck.remove(pitch)
        self._silenced(pitch, t_ns)
        self._ended(t_ns)

    def _ended(self, t_ns: int) -> None:
        self._version += 1
        self._changed_ns = t_ns
        if not self._held and not self._sustained:
            self.last_release_ns = t_ns

    def _sustain(self, down: bool, t_ns: int) -> None:
        if down == self.pedal:
            return
        self.pedal = down
        if down or not self._sustained:
            return
        struck = self._struck
        for pitch in self._sustained:
            struck.remove(pitch)
        for pitch in self._sustained:
            self._silenced(pitch, t_ns)
        self._sustained.clear()
        self._ended(t_ns)

    def _all_off(self, t_ns: int) -> None:
        # Players send it as their own panic: everything stops sounding, the pedal notwithstanding.
        if self._held or self._sustained:
            struck = self._frame_onsets
            self._frame_passed.update(p for p in self._held | self._sustained if p in struck)
            self._held.clear()
            self._sustained.clear()
            self._struck.clear()
            self._line = None
            if self._harmony:
                self._harmony.clear()
                self._harmony_changed()
                self._left_quiet_ns = t_ns
            self._ended(t_ns)

    def _controls(self, names: tuple[str, ...], value: int) -> list[Control]:
        out: list[Control] = []
        for name in names:
            if name in ("mode", "mode_extra"):
                index, mode = _cc_mode(value, name == "mode_extra")
                if index != self._mode:
                    self._mode = index
                    out.append(Control("mode", mode))
            elif name in SWITCH_CONTROLS:
                high = value >= SWITCH_ON
                if high and name not in self._switched_on:
                    out.append(Control(name, 1.0))
                (self._switched_on.add if high else self._switched_on.discard)(name)
            else:
                out.append(Control(name, self._tables[name][value]))
        return out

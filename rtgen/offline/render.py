"""Offline rendering: the engine and voicer driven by a virtual clock, written to MIDI (and audio).

:func:`render_midi` is pure (model + config + seed in, :class:`mido.MidiFile` out):
the same seed gives a byte-identical file. :func:`midi_to_audio` plays a MIDI
file through :class:`~rtgen.io.synth.Synth` offline; :func:`write_wav` writes it.
:func:`load_prime` turns a MIDI file into token arrays for ``Engine.prime``.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import wave
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import mido
import numpy as np
import numpy.typing as npt

from rtgen import contract as ct
from rtgen.arrange.form import INTRO, PIECE, Arranger, FormSection, estimate_piece_key
from rtgen.arrange.voicing import NoteEvent, Voicer
from rtgen.config import PART_NAMES, Config, needs_poly
from rtgen.contract import Key
from rtgen.errors import RtgenError
from rtgen.generation.conductor import NOBODY
from rtgen.generation.engine import Engine, Params, Step
from rtgen.generation.model import Model
from rtgen.io.synth import Synth
from rtgen.midi.extract import extract_file
from rtgen.midi.messages import CC_PAN, CC_VOLUME
from rtgen.midi.midifile import TICKS_PER_BEAT, build_midi, pan_cc, volume_cc
from rtgen.timing.transport import Transport

if TYPE_CHECKING:
    from rtgen.arrange.performer import Performer

log = logging.getLogger(__name__)

TICKS_PER_STEP = TICKS_PER_BEAT // ct.STEPS_PER_BEAT
RELEASE_TAIL_S = 1.5
PRIME_MARKER = "prime"
GENERATED_MARKER = "generated"

TokenArrays = Mapping[str, npt.ArrayLike]

# Key signature for a key lock: modes use the signature of their parent major/minor scale.
_PARENT = {
    "major": (0, ""),
    "minor": (0, "m"),
    "harmonic minor": (0, "m"),
    "pentatonic": (0, ""),
    "minor pentatonic": (0, "m"),
    "blues": (0, "m"),
    "dorian": (-2, ""),
    "mixolydian": (-7, ""),
}


def key_signature_name(key: Key) -> str:
    """The MIDI key signature (mido spelling: ``"D"``, ``"Em"``) for a key lock."""
    shift, suffix = _PARENT[key.scale]
    return ct.NOTE_NAMES[(key.tonic + shift) % 12] + suffix


@dataclass
class Rendered:
    """The result of a render, before it becomes a MIDI file.

    Attributes:
        steps: every engine step (prime first).
        events: ``(tick, seq, event)`` for every note event, in generation order.
        prime_steps: how many of ``steps`` are the prime.
        tempo: BPM.
        time_signature: the meter at the start.
        params: the parameters the piece was played with (its key lock included).
        notes: note-ons per part.
        sections: ``(step index, name)`` where each section of a form starts.
    """

    steps: list[Step]
    events: list[tuple[int, int, NoteEvent]]
    prime_steps: int
    tempo: float
    params: Params
    notes: dict[str, int] = field(default_factory=dict)
    sections: list[tuple[int, str]] = field(default_factory=list)

    @property
    def bars(self) -> int:
        """Bars covered (prime included)."""
        return self.steps[-1].bar + 1 if self.steps else 0


def render_steps(
    model: Model,
    config: Config,
    bars: int,
    seed: int,
    prime: TokenArrays | None = None,
    *,
    form: Sequence[FormSection] | None = None,
) -> Rendered:
    """Run the engine and the voicer for ``bars`` bars (after the prime, if any).

    Args:
        model: the loaded model.
        config: the configuration (generation parameters and parts).
        bars: bars to generate after the prime (ignored with a ``form``: its sections say how many).
        seed: seeds the engine's sampling and the voicer's humanize.
        prime: token arrays ``melody``, ``chord`` and optionally ``velocity`` (bins) to feed first.
        form: song-form sections in order (see :mod:`rtgen.arrange.form`): returns replay their first hearing with
            variation, an ``intro`` first sets up the key, the last bars cadence into the tonic. The key is
            the configured lock, else the key of the first section as the model would play it.

    Returns:
        The steps and the timed note events.
    """
    from rtgen.arrange.performer import Performer
    from rtgen.generation.conductor import Autonomous, Heard, Plan

    gen = config.generation
    params = Params.from_config(gen)
    engine = Engine(model, params, seed=seed)
    voicer = Voicer(config.parts, swing=gen.swing, humanize_ms=gen.humanize_ms, seed=seed)
    performer = Performer(engine, voicer, Autonomous(), config.parts)  # the daemon's wiring
    if needs_poly("autonomous", config.parts):  # the chords part in the chorale style
        from rtgen.arrange.chorale import DRAWS, ChoraleVoicer
        from rtgen.generation.poly import PolyModel
        from rtgen.library import DEFAULT_POLY_MODEL

        poly = PolyModel.load(config.model_folder(DEFAULT_POLY_MODEL, strict=True))
        performer.chorale = ChoraleVoicer(poly.stepper(seed, DRAWS), low_pitch=poly.low_pitch,
                                          n_pitches=poly.n_pitches, step_beats=poly.step_beats,
                                          centred_key=poly.centred_key,
                                          channel=config.parts.chords.channel - 1)  # fmt: skip
    transport = Transport(params.time_signature)
    ticks_per_ms = TICKS_PER_BEAT * gen.tempo / 60_000.0
    events: list[tuple[int, int, NoteEvent]] = []
    last_tick: dict[tuple[int, int], int] = {}
    steps: list[Step] = []

    def place(step: Step, evs: list[NoteEvent]) -> None:
        for ev in evs:
            tick = round((step.index + ev.step_offset) * TICKS_PER_STEP + ev.ms_offset * ticks_per_ms)
            key = (ev.channel, ev.pitch)
            # humanize may not reorder the events of one key (a note-off before its own note-on)
            tick = max(tick, 0, last_tick.get(key, 0))
            last_tick[key] = tick
            events.append((tick, len(events), ev))

    prime_steps = 0
    if prime is not None:
        observe = Plan(observe_melody=True, observe_chords=True)  # the prime plays as written, every part voiced
        mel = np.asarray(prime["melody"], dtype=np.int64).ravel()
        ch = np.asarray(prime["chord"], dtype=np.int64).ravel()
        if mel.size != ch.size:
            raise ValueError(f"prime: melody has {mel.size} steps but chord has {ch.size}")
        vel = prime.get("velocity")
        bins = np.full(mel.size, ct.DEFAULT_VELOCITY_BIN) if vel is None else np.asarray(vel, dtype=np.int64).ravel()
        for i in range(mel.size):
            v = ct.bin_velocity(int(np.clip(bins[i], 0, ct.NUM_VELOCITY_BINS - 1)))
            step, evs = performer.perform(transport.advance(), params, Heard(int(mel[i]), v, int(ch[i])), observe)
            steps.append(step)
            place(step, evs)
        prime_steps = len(steps)
    start_bar = steps[-1].bar + 1 if steps else 0
    sections: list[tuple[int, str]] = []
    if form:
        params = _play_form(
            performer, transport, params, form, seed, start_bar, steps, place, sections, config.form.vary
        )
    elif bars > 0:
        # a piece without a form is one section: its last bars cadence into the key the model is in (not locked)
        _play_form(
            performer, transport, params, [FormSection(PIECE, bars)], seed, start_bar, steps, place, [], 0.0,
            lock_key=False, cue_sections=False,
        )  # fmt: skip
    end = steps[-1] if steps else None
    end_index = end.index + 1 if end else 0
    final = Step(end_index, 0, 0, ct.CHORD_NC, ct.CHORD_NC, ct.MEL_REST, 0)
    place(final, voicer.release_all())
    notes = {p: sum(1 for _, _, ev in events if ev.on and ev.part == p) for p in PART_NAMES}
    return Rendered(steps, events, prime_steps, gen.tempo, params, notes, sections)


def _play_form(
    performer: Performer,
    transport: Transport,
    params: Params,
    form: Sequence[FormSection],
    seed: int,
    start_bar: int,
    steps: list[Step],
    place: Callable[[Step, list[NoteEvent]], None],
    sections: list[tuple[int, str]],
    vary: float,
    *,
    lock_key: bool = True,
    cue_sections: bool = True,
) -> Params:
    """Play ``form`` from ``start_bar`` through ``performer``; returns the parameters used.

    The piece's key is the configured lock, else the key of the first section as the model would play it:
    locked for the whole piece (``lock_key``), or only told to the arranger for the intro and the cadence.
    The last bar is the piece's ending (the bass on the final root, held). ``cue_sections``: the voicer hears
    where sections start and end (the drummer's phrases and fills).
    """
    arranger = Arranger(seed=seed, vary=vary)
    key = params.key
    if key is None:
        body = next((s for s in form if s.name.lower() != INTRO), form[0])
        key = estimate_piece_key(performer.engine, params, body.bars)
        if key is not None and lock_key:
            params = dataclasses.replace(params, key=key)
    arranger.key = key
    arranger.prepare_ending(params)
    total = sum(s.bars for s in form)
    arranger.end_at(start_bar + total - 1)
    bounds = list(itertools.accumulate((s.bars for s in form), initial=start_bar))
    index = 0
    while True:
        pos = transport.advance()
        if pos.bar >= start_bar + total:
            break
        while index < len(form) and pos.bar >= bounds[index]:
            sec = form[index]
            role = INTRO if index == 0 and sec.name.lower() == INTRO and len(form) > 1 else ""
            arranger.begin(sec.name, pos.bar, bars=sec.bars, role=role)
            sections.append((len(steps), sec.name))
            index += 1
        plan, heard, step_params = arranger.steer(pos, performer.plan(pos), NOBODY, params)
        cue = arranger.cue_for(pos) if cue_sections else None
        start, end = (cue.start, cue.end) if cue is not None else (False, False)
        if start and pos.position == 0:
            performer.engine.lookback_floor = performer.engine.index  # a new section does not copy the last one
        ending = pos.bar == start_bar + total - 1
        step, evs = performer.perform(
            pos, step_params, heard, plan, section_start=start, section_end=end, ending=ending
        )
        arranger.played(pos, step)
        steps.append(step)
        place(step, evs)
    return params


def to_midi(rendered: Rendered, config: Config) -> mido.MidiFile:
    """A type-1 MIDI file: a tempo track (tempo, meter, key, chord and prime markers) and one track per part."""
    params = rendered.params
    ts = params.time_signature
    markers: list[tuple[int, str]] = []
    if rendered.prime_steps:
        markers = [(0, PRIME_MARKER), (rendered.prime_steps * TICKS_PER_STEP, GENERATED_MARKER)]
    markers += [(index * TICKS_PER_STEP, name) for index, name in rendered.sections]
    cues = [
        (step.index * TICKS_PER_STEP, ct.chord_token_name(step.chord_token))
        for step in rendered.steps
        if step.chord_token != ct.CHORD_HOLD and step.chord_token != ct.CHORD_NC
    ]
    end_tick = max([t for t, _, _ in rendered.events] + [len(rendered.steps) * TICKS_PER_STEP])
    ordered = sorted(rendered.events, key=lambda e: (e[0], e[1]))
    tracks: list[tuple[str, list[tuple[int, mido.Message]]]] = []
    for part in PART_NAMES:
        cfg = config.parts.get(part)
        if not cfg.enabled:
            continue
        ch = cfg.channel - 1
        events = [
            (0, mido.Message("program_change", channel=ch, program=cfg.program)),
            (0, mido.Message("control_change", channel=ch, control=CC_VOLUME, value=volume_cc(cfg.volume))),
            (0, mido.Message("control_change", channel=ch, control=CC_PAN, value=pan_cc(cfg.pan))),
        ]
        for tick, _, ev in ordered:
            if ev.part != part:
                continue
            if ev.on:
                msg = mido.Message("note_on", channel=ev.channel, note=ev.pitch, velocity=ev.velocity)
            else:
                msg = mido.Message("note_off", channel=ev.channel, note=ev.pitch, velocity=0)
            events.append((tick, msg))
        tracks.append((part, events))
    return build_midi(
        tracks,
        tempo_map=[(0, rendered.tempo)],
        time_signature=(ts.numerator, ts.denominator),
        key_signature=key_signature_name(params.key) if params.key is not None else None,
        markers=markers,
        cue_markers=cues,
        end_tick=end_tick,
        ticks_per_beat=TICKS_PER_BEAT,
    )


def render_midi(model: Model, config: Config, bars: int, seed: int, prime: TokenArrays | None = None) -> mido.MidiFile:
    """Render ``bars`` bars (after an optional prime) to a MIDI file; pure and deterministic for a seed.

    Args:
        model: the loaded model.
        config: generation parameters and parts.
        bars: bars to generate (after the prime).
        seed: the random seed.
        prime: token arrays (``melody``, ``chord``, optional ``velocity`` bins) fed through first; they
            are part of the output, between the ``prime`` and ``generated`` markers.
    """
    return to_midi(render_steps(model, config, bars, seed, prime), config)


# --- audio -----------------------------------------------------------------------
def midi_to_audio(mid: mido.MidiFile, synth: Synth, tail: float = RELEASE_TAIL_S) -> npt.NDArray[np.int16]:
    """Play ``mid`` through ``synth`` offline; int16 stereo frames including a release tail."""
    rate = synth.sample_rate
    chunks: list[npt.NDArray[np.int16]] = []
    now = 0.0
    done = 0
    for msg in mid:  # merged tracks, times in seconds (tempo-aware)
        now += msg.time
        frame = round(now * rate)
        if frame > done:
            chunks.append(synth.render_frames(frame - done))
            done = frame
        if msg.is_meta:
            continue
        if msg.type == "note_on":
            synth.note_on(msg.channel, msg.note, msg.velocity)
        elif msg.type == "note_off":
            synth.note_off(msg.channel, msg.note)
        elif msg.type == "program_change":
            synth.program(msg.channel, msg.program)
        elif msg.type == "control_change":
            synth.cc(msg.channel, msg.control, msg.value)
    synth.all_notes_off()
    chunks.append(synth.render(tail))
    return np.concatenate(chunks) if chunks else np.zeros((0, 2), dtype=np.int16)


def write_wav(path: Path, frames: npt.NDArray[np.int16], sample_rate: int) -> None:
    """Write int16 stereo frames as a 16-bit PCM .wav."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(np.ascontiguousarray(frames, dtype="<i2").tobytes())


# --- prime -----------------------------------------------------------------------
def load_prime(path: Path) -> tuple[dict[str, npt.NDArray[np.int64]], ct.TimeSignature | None]:
    """Token arrays (melody, velocity, chord, position) of a MIDI file, and its first time signature.

    The same extractor as training's (:func:`rtgen.midi.extract.extract_file`): a prime is heard as the
    models learnt their data.

    Raises:
        RtgenError: the file is missing, unreadable or has no usable melody.
    """
    if not path.is_file():
        raise RtgenError(f"prime file {path} does not exist")
    try:
        midi = mido.MidiFile(str(path))
    except (OSError, ValueError, EOFError) as err:
        raise RtgenError(f"cannot read prime file {path}: {err}") from err
    ts: ct.TimeSignature | None = None
    for msg in mido.merge_tracks(midi.tracks):
        if msg.type == "time_signature":
            try:
                ts = ct.TimeSignature(msg.numerator, msg.denominator)
            except ValueError:
                ts = None
            break
    tokens = extract_file(path)
    if isinstance(tokens, str):
        raise RtgenError(f"cannot use {path} as a prime: {tokens}")
    return {k: np.asarray(v, dtype=np.int64) for k, v in tokens.items()}, ts

"""The runtime: model loading, sampling, the pure engine and the voicer (real onnxruntime, random-weight models)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from rtgen import contract as ct
from rtgen.arrange.voicing import (
    BASS_HIGH,
    BASS_LOW,
    CHORD_HIGH,
    CHORD_LOW,
    NoteEvent,
    Voicer,
    chord_voicings,
    voice_lead,
)
from rtgen.config import GenerationConfig, PartConfig, PartsConfig
from rtgen.contract import Key, TimeSignature
from rtgen.errors import ModelError
from rtgen.generation.engine import Engine, Params, Steer, Step
from rtgen.generation.model import Model
from rtgen.generation.sampling import mask_bias, sample, sample_batch, sample_split


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model_factory import make_random_model

    return make_random_model(tmp_path_factory.mktemp("models") / "random", hidden=32, layers=1, seed=0)


@pytest.fixture(scope="module")
def model(model_dir: Path) -> Model:
    return Model.load(model_dir)


def run(engine: Engine, n: int, params: Params | None = None) -> list[Step]:
    return [engine.step(params) for _ in range(n)]


# --- model loading -------------------------------------------------------------------------------
def test_model_loads_and_steps(model: Model) -> None:
    assert model.state_shape == (1, 32)
    feeds = {
        n: np.zeros((2, ct.NUM_LOOKBACKS) if n.startswith("lookback") else 2, np.int64)
        for n in ct.NOTE_MODEL_INPUTS[:-1]
    }
    logits, state = model.chord_step(feeds, model.initial_state(2))
    assert logits.shape == (2, ct.CHORD_VOCAB_SIZE) and state.shape == (1, 2, 32)
    mel, vel, state2 = model.note_step(feeds, state)
    assert mel.shape == (2, ct.MELODY_VOCAB_SIZE) and vel.shape == (2, ct.NUM_VELOCITY_BINS)
    assert np.isfinite(mel).all() and not np.array_equal(state, state2)


def test_model_missing_folder_lists_neighbours(model_dir: Path) -> None:
    with pytest.raises(ModelError) as err:
        Model.load(model_dir.parent / "nope")
    assert "nope" in str(err.value) and str(model_dir) in str(err.value)


def test_model_refuses_other_contract_version(model_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "old"
    bad.mkdir()
    for f in ("chord.onnx", "note.onnx"):
        (bad / f).write_bytes((model_dir / f).read_bytes())
    meta = json.loads((model_dir / "meta.json").read_text())
    meta["contract"]["version"] = ct.CONTRACT_VERSION + 1
    (bad / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match=rf"speaks token contract v{ct.CONTRACT_VERSION + 1}.*re-export"):
        Model.load(bad)


def test_model_refuses_changed_file(model_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "changed"
    bad.mkdir()
    (bad / "meta.json").write_text((model_dir / "meta.json").read_text())
    (bad / "chord.onnx").write_bytes((model_dir / "chord.onnx").read_bytes() + b"\0")
    (bad / "note.onnx").write_bytes((model_dir / "note.onnx").read_bytes())
    (bad / "harmony.onnx").write_bytes((model_dir / "harmony.onnx").read_bytes())
    with pytest.raises(ModelError, match=r"chord\.onnx does not match its sha256"):
        Model.load(bad)
    (bad / "note.onnx").unlink()
    with pytest.raises(ModelError, match=r"missing note\.onnx"):
        Model.load(bad)


# --- sampling ------------------------------------------------------------------------------------
def test_sampling_follows_probabilities_and_top_p() -> None:
    rng = np.random.default_rng(0)
    logits = np.log(np.array([0.5, 0.3, 0.2]))
    counts = np.bincount([sample(logits, rng) for _ in range(4000)], minlength=3) / 4000
    assert np.allclose(counts, [0.5, 0.3, 0.2], atol=0.04)
    nucleus = {sample(logits, rng, top_p=0.6) for _ in range(500)}
    assert nucleus == {0, 1}
    cold = np.bincount([sample(logits, rng, temperature=0.05) for _ in range(200)], minlength=3)
    assert cold[0] == 200
    batch = sample_batch(np.tile(logits, (1000, 1)), rng, top_p=0.6)
    assert set(batch.tolist()) == {0, 1}


def test_sampling_masks_and_fallbacks() -> None:
    rng = np.random.default_rng(1)
    logits = np.array([3.0, 2.0, 1.0, 0.0])
    bias = mask_bias([False, True, False, True])
    assert {sample(logits, rng, bias=bias) for _ in range(200)} == {1, 3}
    nothing = mask_bias([False] * 4)
    assert sample(logits, rng, bias=nothing) == 0  # unmasked argmax
    assert sample(logits, rng, bias=nothing, fallback=2) == 2
    nan = np.array([np.nan, 1.0, np.nan, 0.5])
    assert sample(nan, rng) in (1, 3)
    assert sample_batch(np.stack([logits, logits]), rng, bias=nothing, fallback=3).tolist() == [3, 3]


def test_split_sampling_keeps_the_models_rhythm() -> None:
    """HOLD 0.96, four notes 0.04 together: a plain nucleus of 0.95 never starts a note, the split sampler
    starts one 4 % of the time (as the model says) and sharpens only which note."""
    rng = np.random.default_rng(2)
    logits = np.log(np.array([0.0, 0.96, 0.016, 0.012, 0.008, 0.004]) + 1e-300)
    plain = [sample(logits, rng, temperature=0.9, top_p=0.95) for _ in range(4000)]
    assert set(plain) == {1}
    split = np.array([sample_split(logits, rng, head=2, temperature=0.9, top_p=0.95) for _ in range(20000)])
    onset = split >= 2
    assert abs(onset.mean() - 0.04) < 0.006
    assert 0 not in split  # REST had no mass
    notes = np.bincount(split[onset] - 2, minlength=4) / onset.sum()
    assert notes[0] > 0.4 and notes[3] < 0.1  # the likeliest note gains (0.4 by the model), the tail thins
    cold = {sample_split(logits, rng, head=2, temperature=0.01) for _ in range(3000)}
    assert cold == {1, 2}  # a cold sampler still starts notes, always the likeliest one
    masked = mask_bias([True, True, False, True, True, True])
    assert 2 not in {sample_split(logits, rng, head=2, bias=masked) for _ in range(3000)}
    nothing = mask_bias([False] * 6)
    assert sample_split(logits, rng, head=2, bias=nothing, fallback=0) == 0


def test_typical_nucleus_drops_the_tail_and_never_only_keeps_the_likeliest() -> None:
    """The second stage's nucleus fills in order of |surprisal - entropy|: at 0.95 the far-too-unlikely tail
    goes as with top-p, while a mass of 0.5 is made of the typical notes around the entropy, not of the
    likeliest one alone (which top-p over probabilities would keep on its own)."""
    from rtgen.generation.sampling import sample_typical

    p = np.array([0.4] + [0.0598] * 10 + [0.0004] * 5)
    logits = np.log(p)
    rng = np.random.default_rng(5)
    draws = np.array([sample_typical(logits, rng, temperature=1.0, top_p=0.95) for _ in range(20000)])
    assert not (draws >= 11).any()  # the tail (4 in 10,000 each) is never drawn
    assert abs((draws == 0).mean() - 0.4 / 0.998) < 0.015  # the rest keep the model's proportions
    half = {sample_typical(logits, rng, temperature=1.0, top_p=0.5) for _ in range(3000)}
    assert 0 not in half and half <= set(range(1, 11))  # the typical ones fill half the mass first
    assert {sample(logits, rng, temperature=1.0, top_p=0.4) for _ in range(300)} == {0}  # top-p: the likeliest
    masked = logits + mask_bias([True] + [False] * 15)
    assert {sample_typical(masked, rng, temperature=0.9, top_p=0.95) for _ in range(100)} == {0}
    a, b = np.random.default_rng(9), np.random.default_rng(9)
    assert sample_typical(logits, a, temperature=1.0, top_p=0.9) == sample_typical(
        logits, b, temperature=1.0, top_p=0.9
    )
    assert a.random() == b.random()  # one draw each


# --- engine --------------------------------------------------------------------------------------
def test_params_from_config() -> None:
    p = Params.from_config(GenerationConfig(key="D major", time_signature="3/4", pitch_low=60))
    assert p.key == Key.parse("D major") and p.time_signature == TimeSignature(3, 4) and p.pitch_low == 60


def test_same_seed_same_music_other_seed_other_music(model: Model) -> None:
    params = Params(temperature=1.0, top_p=1.0)
    a = run(Engine(model, params, seed=7), 128)
    b = run(Engine(model, params, seed=7), 128)
    c = run(Engine(model, params, seed=8), 128)
    assert a == b
    assert a != c
    e = Engine(model, params, seed=7)
    run(e, 10)
    e.reset()
    assert run(e, 128) == a


def test_key_lock_keeps_melody_and_chords_in_scale(model: Model) -> None:
    key = Key.parse("Eb major")
    steps = run(Engine(model, Params(temperature=1.5, top_p=1.0, key=key), seed=3), 600)
    pitches = [s.pitch for s in steps if s.pitch is not None]
    chords = {s.chord_token for s in steps if s.chord_token >= ct.CHORD_OFFSET}
    assert len(pitches) > 50 and len(chords) > 5  # the random model plays plenty
    assert all(p % 12 in key.pitch_classes for p in pitches)
    assert all(key.contains_chord(ct.Chord.from_token(t)) for t in chords)
    free = run(Engine(model, Params(temperature=1.5, top_p=1.0), seed=3), 600)
    assert any(s.pitch is not None and s.pitch % 12 not in key.pitch_classes for s in free)


def test_pitch_range_and_density(model: Model) -> None:
    steps = run(Engine(model, Params(temperature=1.5, pitch_low=60, pitch_high=67), seed=4), 400)
    pitches = [s.pitch for s in steps if s.pitch is not None]
    assert pitches and all(60 <= p <= 67 for p in pitches)
    silent = run(Engine(model, Params(density=0.0), seed=4), 300)
    assert all(s.melody_token == ct.MEL_REST for s in silent)
    sparse = run(Engine(model, Params(density=0.05), seed=4), 400)
    dense = run(Engine(model, Params(density=4.0), seed=4), 400)
    onsets = [sum(s.pitch is not None for s in x) for x in (sparse, dense)]
    assert onsets[0] < onsets[1]


def test_hold_only_while_sounding(model: Model) -> None:
    steps = run(Engine(model, Params(temperature=2.0, top_p=1.0), seed=5), 800)
    sounding = False
    for s in steps:
        if s.melody_token == ct.MEL_HOLD:
            assert sounding, f"HOLD after REST at step {s.index}"
        elif s.melody_token == ct.MEL_REST:
            sounding = False
        else:
            sounding = True
    assert any(s.melody_token == ct.MEL_HOLD for s in steps)
    # chord HOLD resolves to the previous chord; at step 0 it means N.C.
    first = Engine(model, Params(), seed=0).step(steer=Steer(chord=ct.CHORD_HOLD))
    assert first.chord_now == ct.CHORD_NC
    prev = ct.CHORD_NC
    for s in steps:
        assert s.chord_now == (prev if s.chord_token == ct.CHORD_HOLD else s.chord_token)
        prev = s.chord_now


def test_observed_tokens_pass_through(model: Model) -> None:
    e = Engine(model, Params(), seed=0)
    g7 = ct.Chord.parse("G7").token
    s = e.step(steer=Steer(chord=g7, melody=ct.melody_note_on(67), velocity=100))
    assert (s.chord_token, s.chord_now, s.pitch, s.velocity) == (g7, g7, 67, 100)
    s = e.step(steer=Steer(chord=ct.CHORD_HOLD, melody=ct.MEL_HOLD))
    assert (s.chord_now, s.melody_token) == (g7, ct.MEL_HOLD)
    s = e.step(steer=Steer(melody=ct.MEL_REST))  # chord sampled, melody observed
    assert s.melody_token == ct.MEL_REST
    assert e.step(steer=Steer(melody=ct.MEL_HOLD)).melody_token == ct.MEL_REST  # HOLD after REST is REST
    with pytest.raises(ValueError, match="chord token"):
        e.step(steer=Steer(chord=ct.CHORD_VOCAB_SIZE))


def test_prime_then_continue_and_lookback(model: Model) -> None:
    e = Engine(model, Params(), seed=0)
    mel = [ct.melody_note_on(60 + (i % 8)) if i % 2 == 0 else ct.MEL_HOLD for i in range(32)]
    chords = [ct.Chord.parse("C").token if i % 16 == 0 else ct.CHORD_HOLD for i in range(32)]
    primed = e.prime(mel, None, chords)
    assert [s.melody_token for s in primed] == mel and [s.chord_token for s in primed] == chords
    assert [s.bar for s in primed[::16]] == [0, 1]
    s = e.step()
    assert (s.index, s.bar, s.position) == (32, 2, 0)
    # the lookback inputs of step 32 are the tokens at position 0 of bars 1 and 0
    lb_mel, lb_ch = e._feeds["lookback_melody"][0], e._feeds["lookback_chord"][0]
    assert lb_mel.tolist() == [mel[16], mel[0], ct.MEL_REST, ct.MEL_REST]
    assert lb_ch.tolist() == [chords[16], chords[0], ct.CHORD_NC, ct.CHORD_NC]


def test_time_signature_change_waits_for_bar_line(model: Model) -> None:
    e = Engine(model, Params(), seed=0)
    run(e, 5)
    three = Params(time_signature=TimeSignature(3, 4))
    rest = run(e, 11 + 12 + 1, three)
    assert [s.position for s in rest[:11]] == list(range(5, 16))  # the 4/4 bar finishes
    assert rest[11].position == 0 and rest[11].bar == 1 and rest[11].bar_steps == 12
    assert rest[23].position == 0 and rest[23].bar == 2


def test_swap_model_at_next_step(model: Model, model_dir: Path, tmp_path: Path) -> None:
    from model_factory import make_random_model

    other = Model.load(make_random_model(tmp_path / "other", hidden=16, layers=2, seed=1))
    e = Engine(model, Params(), seed=0)
    run(e, 8)
    e.swap_model(other)
    assert e.model is model
    s = e.step()
    assert e.model is other and s.index == 8 and e._note_state.shape == (2, 1, 16)


# --- voicing (styles and drums: tests/test_styles.py, tests/test_drums.py) -------------------------
NO_DRUMS = PartConfig(channel=10, enabled=False)


def voice_all(model: Model, n: int, voicer: Voicer, params: Params, seed: int = 0) -> list[tuple[Step, NoteEvent]]:
    e = Engine(model, params, seed=seed)
    out = []
    for _ in range(n):
        s = e.step()
        out += [(s, ev) for ev in voicer.voice(s, params)]
    return out


def test_voicing_invariants(model: Model) -> None:
    params = Params(temperature=1.0)
    voicer = Voicer(PartsConfig(), swing=0.3, humanize_ms=8.0, seed=1)
    events = voice_all(model, 400, voicer, params)
    tail = voicer.release_all()
    assert voicer.release_all() == []
    on: set[tuple[int, int]] = set()
    for ev in [e for _, e in events] + tail:
        key = (ev.channel, ev.pitch)
        if ev.on:
            assert key not in on, f"overlapping note {key}"
            on.add(key)
        else:
            assert key in on, f"note-off without note-on {key}"
            on.discard(key)
    assert not on, "every note-on gets its note-off"
    by_part = {p: [e for _, e in events if e.on and e.part == p] for p in ("melody", "chords", "bass")}
    assert all(by_part.values())
    assert {e.channel for e in by_part["melody"]} == {0}
    assert {e.channel for e in by_part["chords"]} == {1}
    assert {e.channel for e in by_part["bass"]} == {2}
    assert all(BASS_LOW <= e.pitch < BASS_HIGH for e in by_part["bass"])
    assert all(CHORD_LOW <= e.pitch <= CHORD_HIGH for e in by_part["chords"])
    for s, ev in events:  # swing moves odd sixteenths only; humanize stays within 2 sd
        assert ev.step_offset == (0.3 if s.position % 2 else 0.0)
        assert abs(ev.ms_offset) <= 16.0
    assert any(ev.ms_offset != 0 for _, ev in events)


def test_swing_and_humanize_are_deterministic(model: Model) -> None:
    params = Params()
    a = voice_all(model, 200, Voicer(PartsConfig(), swing=0.5, humanize_ms=10, seed=3), params)
    b = voice_all(model, 200, Voicer(PartsConfig(), swing=0.5, humanize_ms=10, seed=3), params)
    c = voice_all(model, 200, Voicer(PartsConfig(), swing=0.5, humanize_ms=10, seed=4), params)
    assert a == b and a != c


def test_melody_voicing_retrigger_hold_rest() -> None:
    parts = PartsConfig(melody=PartConfig(channel=5, octave=1, velocity_scale=0.5), drums=NO_DRUMS)
    v = Voicer(parts)
    p = Params()

    def step(i: int, mel: int, vel: int = 100) -> Step:
        return Step(i, 0, i, ct.CHORD_HOLD, ct.CHORD_NC, mel, vel)

    on = v.voice(step(0, ct.melody_note_on(60)), p)
    assert on == [NoteEvent(0.0, 0.0, True, "melody", 4, 72, 50)]
    assert v.voice(step(1, ct.MEL_HOLD), p) == []
    again = v.voice(step(2, ct.melody_note_on(60)), p)  # retrigger: off, then on
    assert [(e.on, e.pitch) for e in again] == [(False, 72), (True, 72)]
    assert [(e.on, e.pitch) for e in v.voice(step(3, ct.MEL_REST), p)] == [(False, 72)]
    assert v.voice(step(4, ct.MEL_REST), p) == []


def test_chords_are_voice_led_and_bass_plays_roots() -> None:
    v = Voicer(PartsConfig(drums=NO_DRUMS))
    p = Params()
    prog = ["C", "Am", "F", "G7", "C"]
    voicings = []
    bass = []
    for i, name in enumerate(prog):
        tok = ct.Chord.parse(name).token
        evs = v.voice(Step(i * 16, i, 0, tok, tok, ct.MEL_REST, 80), p)
        voicings.append(tuple(sorted(e.pitch for e in evs if e.on and e.part == "chords")))
        bass += [e.pitch for e in evs if e.on and e.part == "bass"]
    for chord, voicing in zip(prog, voicings, strict=True):
        assert {x % 12 for x in voicing} == ct.Chord.parse(chord).pitch_classes
    for prev, cur in itertools.pairwise(voicings):
        moved = sum(min(abs(a - b) for b in prev) for a in cur)
        worst = max(sum(min(abs(a - b) for b in prev) for a in cand) for cand in chord_voicings(_chord_of(cur)))
        assert moved < worst  # voice leading beats the worst placement
        assert voice_lead(_chord_of(cur), prev) == cur
    assert [b % 12 for b in bass] == [0, 9, 5, 7, 0]
    # beat 3 of a 4/4 bar with the chord held: the fifth
    c = ct.Chord.parse("C").token
    evs = v.voice(Step(72, 4, 8, ct.CHORD_HOLD, c, ct.MEL_REST, 80), p)
    assert [e.pitch % 12 for e in evs if e.on and e.part == "bass"] == [7]
    nc = v.voice(Step(73, 4, 9, ct.CHORD_NC, ct.CHORD_NC, ct.MEL_REST, 80), p)
    assert {e.part for e in nc if not e.on} == {"chords", "bass"} and not any(e.on for e in nc)


def _chord_of(voicing: tuple[int, ...]) -> ct.Chord:
    chord = ct.recognize_chord(list(voicing))
    assert chord is not None
    return chord


def test_disabled_parts_and_set_parts(model: Model) -> None:
    parts = PartsConfig(bass=PartConfig(channel=3, enabled=False))
    v = Voicer(parts)
    events = voice_all(model, 100, v, Params())
    assert events and not any(e.part == "bass" for _, e in events)
    sounding = v.sounding
    offs = v.set_parts(PartsConfig(bass=PartConfig(channel=3, enabled=False), chords=PartConfig(channel=9)))
    assert {(e.channel, e.pitch) for e in offs} == set(sounding["chords"])
    assert all(not e.on for e in offs)


def test_v1_model_plays_but_cannot_accompany(tmp_path: Path) -> None:
    """An old (contract v1) folder has no harmoniser: it still plays, and asking it to accompany says why not."""
    from model_factory import make_random_model

    old = Model.load(make_random_model(tmp_path / "v1", contract=1))
    assert not old.can_harmonise
    engine = Engine(old, Params(), seed=1)
    engine.step()
    with pytest.raises(ModelError, match=r"no harmony\.onnx.*cannot accompany"):
        engine.step(steer=Steer(melody=ct.melody_note_on(60), harmonise=True))


def test_harmonise_hears_the_melody_and_fit_favours_chord_tones(model_dir: Path) -> None:
    """With harmonise the chord comes from the harmoniser; it changes only on beats, where a large fit makes
    every onset a chord tone; between beats it holds."""
    model = Model.load(model_dir)
    assert model.can_harmonise
    engine = Engine(model, Params(temperature=1.0, top_p=1.0), seed=3)
    hits = on_beats = 0
    rng = np.random.default_rng(0)
    for i in range(128):
        pitch = int(rng.integers(60, 72))
        step = engine.step(steer=Steer(melody=ct.melody_note_on(pitch), harmonise=True, fit=50.0))
        assert step.chord_now != ct.CHORD_NC
        if step.position % step.beat_steps == 0:
            on_beats += 1
            hits += (pitch % 12) in ct.Chord.from_token(step.chord_now).pitch_classes
        else:
            assert step.chord_token == ct.CHORD_HOLD, i
    assert on_beats == 32 and hits == 32


def test_weak_hold_keeps_the_chord_off_the_strong_beats(model_dir: Path) -> None:
    """``weak_hold`` favours keeping the chord only on beats that are not strong: with it far above the fit, beats
    2 and 4 of 4/4 keep the chord whatever note they hear, while beats 1 and 3 still take a chord holding theirs."""
    engine = Engine(Model.load(model_dir), Params(temperature=1.0, top_p=1.0), seed=3)
    rng = np.random.default_rng(0)
    strong_hits = strong = 0
    for _ in range(128):
        pitch = int(rng.integers(60, 72))
        step = engine.step(steer=Steer(melody=ct.melody_note_on(pitch), harmonise=True, fit=50.0, weak_hold=500.0))
        if step.position in (4, 12):
            assert step.chord_token == ct.CHORD_HOLD, step
        elif step.position in (0, 8):
            strong += 1
            strong_hits += (pitch % 12) in ct.Chord.from_token(step.chord_now).pitch_classes
    assert strong == 16 and strong_hits == 16


def test_snapshot_restore_replays_the_same_step(model_dir: Path) -> None:
    """A what-if query (snapshot, step, restore) leaves the engine exactly where it was."""
    engine = Engine(Model.load(model_dir), Params(temperature=1.0), seed=5)
    for _ in range(10):
        engine.step()
    snap = engine.snapshot()
    first = engine.step()
    engine.step(steer=Steer(melody=ct.melody_note_on(64), harmonise=True))
    engine.restore(snap)
    again = engine.step()
    assert again == first


def test_transport_position_drives_bars(model_dir: Path) -> None:
    """The engine takes bar and position from the transport: a relocation moves the bar line."""
    from rtgen.timing.transport import Transport

    engine = Engine(Model.load(model_dir), Params(), seed=0)
    tr = Transport(ct.TimeSignature(3, 4))
    tr.locate(10)  # bar 0, position 10 of 12
    steps = [engine.step(at=tr.advance()) for _ in range(4)]
    assert [(s.bar, s.position) for s in steps] == [(0, 10), (0, 11), (1, 0), (1, 1)]
    assert all(s.bar_steps == 12 and s.beat_steps == 4 for s in steps)


def test_feed_query_peek(model_dir: Path) -> None:
    """feed observes everything; peek answers a what-if and leaves the engine where it was; query commits."""
    engine = Engine(Model.load(model_dir), Params(temperature=1.0), seed=9)
    fed = engine.feed(None, ct.melody_note_on(62), ct.Chord.parse("D").token, velocity=90)
    assert fed.melody_token == ct.melody_note_on(62) and fed.chord_name == "D" and fed.velocity == 90
    a = engine.peek(steer=Steer(melody=ct.melody_note_on(66), harmonise=True))
    b = engine.peek(steer=Steer(melody=ct.melody_note_on(66), harmonise=True))
    assert a == b and engine.index == 1
    assert engine.query(steer=Steer(melody=ct.melody_note_on(66), harmonise=True)) == a and engine.index == 2


def test_prepared_params_need_no_mask_building_at_the_step(model: Model, monkeypatch: pytest.MonkeyPatch) -> None:
    """A density sweep prepared by the control thread: the stepping thread only looks the masks up."""
    import rtgen.generation.engine as engine_module

    built: list[float] = []
    real_build = engine_module._build_masks

    def counting(params: Params) -> object:
        built.append(params.density)
        return real_build(params)

    monkeypatch.setattr(engine_module, "_build_masks", counting)
    engine = Engine(model, Params(), seed=1)
    sweep = [Params(density=0.5 + i / 100) for i in range(50)]
    for p in sweep:
        engine.prepare(p)
    assert len(built) == 50
    for p in sweep:
        engine.step(p)
    assert len(built) == 50  # none built while stepping
    engine.step(Params(density=3.0))  # an unprepared one still works (built at the step)
    assert built[-1] == 3.0


def test_the_mask_cache_is_bounded(model: Model) -> None:
    engine = Engine(model, Params(), seed=1)
    for i in range(engine_size := 300):
        engine.prepare(Params(density=0.1 + i / engine_size))
    from rtgen.generation.engine import MASK_CACHE_SIZE

    assert len(engine._mask_cache) == MASK_CACHE_SIZE

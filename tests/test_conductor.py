"""Conductors and the performer: who plays which part, and the offline accompany path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from model_factory import make_random_model

from rtgen import contract as ct
from rtgen.arrange.performer import Performer, accompany_offline, positions_from_bars
from rtgen.arrange.voicing import Voicer
from rtgen.config import CallResponseConfig, Config
from rtgen.generation.conductor import (
    Accompany,
    Autonomous,
    CallAndResponse,
    Heard,
    Improvise,
    make_conductor,
)
from rtgen.generation.engine import Engine, Params, Steer
from rtgen.generation.keys import estimate_key
from rtgen.generation.model import Model
from rtgen.timing.transport import Position, Transport


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Model:
    return Model.load(make_random_model(tmp_path_factory.mktemp("models") / "random", seed=2))


def _performer(model: Model, mode: str, cfg: Config | None = None) -> Performer:
    cfg = cfg or Config()
    return Performer(
        Engine(model, Params(), seed=1), Voicer(cfg.parts), make_conductor(mode, cfg.accompany, cfg.call_response),
        cfg.parts,
    )  # fmt: skip


def test_plans_by_mode() -> None:
    pos = Position(0, 0, 0)
    assert Autonomous().plan(pos).voiced == {"melody", "chords", "bass", "drums"}
    acc = Accompany().plan(pos)
    assert acc.observe_melody and acc.harmonise and acc.reactive and acc.voiced == {"chords", "bass", "drums"}
    imp = Improvise().plan(pos)
    assert imp.observe_chords and not imp.observe_melody and imp.voiced == {"melody", "drums"}


def test_accompany_never_echoes_the_players_melody(model: Model) -> None:
    perf = _performer(model, "accompany")
    tr = Transport()
    parts_heard = set()
    for i in range(64):
        tok = ct.melody_note_on(60 + (i % 8)) if i % 4 == 0 else ct.MEL_HOLD
        _, events = perf.perform(tr.advance(), Params(), Heard(melody=tok, velocity=90))
        parts_heard |= {e.part for e in events}
    assert "melody" not in parts_heard
    assert {"chords", "bass"} <= parts_heard


def test_mode_switch_releases_parts_the_new_mode_does_not_play(model: Model) -> None:
    perf = _performer(model, "autonomous")
    tr = Transport()
    sounding: set[tuple[int, int]] = set()
    for _ in range(32):
        _, events = perf.perform(tr.advance(), Params(temperature=1.0))
        for e in events:
            (sounding.add if e.on else sounding.discard)((e.channel, e.pitch))
    melody_ch = Config().parts.melody.channel - 1
    offs = perf.set_conductor(make_conductor("accompany"))
    for e in offs:
        assert not e.on
        sounding.discard((e.channel, e.pitch))
    assert not any(ch == melody_ch for ch, _ in sounding)


def test_call_and_response_answers_after_the_silence_for_the_calls_length() -> None:
    cr = CallAndResponse(CallResponseConfig(silence_beats=1.0, answer_bars=0))
    tr = Transport()
    phrase = [
        ct.melody_note_on(p) if i % 2 == 0 else ct.MEL_HOLD for i, p in enumerate([60, 60, 62, 62, 64, 64, 65, 65])
    ]
    for tok in phrase * 4:  # a 2-bar call in C
        cr.heard(tr.advance(), Heard(melody=tok))
    assert not cr.answering
    for _ in range(4):  # one beat of silence
        assert not cr.plan(tr.peek()).voiced
        cr.heard(tr.advance(), Heard())
    assert cr.answering and cr.answer_left == 32
    assert cr.call_key is not None and cr.call_key.name in ("C major", "A minor", "F major")
    plan = cr.plan(tr.peek())
    assert plan.voiced == {"melody", "chords", "bass", "drums"} and not plan.observe_melody and plan.key == cr.call_key
    assert plan.enter  # the answer's first step starts a note
    cr.heard(tr.advance(), Heard())
    assert cr.answering and not cr.plan(tr.peek()).enter
    assert cr.interrupt() and not cr.answering and not cr.interrupt()


def test_an_answer_comes_in_at_once_whatever_the_model_would_rather_do(model: Model) -> None:
    """``enter``: a silent sampled melody starts a note at that step, in the key lock's range (the random
    model rests at most steps; an answer must not wait for it)."""
    from rtgen.contract import Key

    key = Key.parse("D major")
    engine = Engine(model, Params(key=key), seed=4)
    plain = 0
    for seed in range(40):
        engine.reset(seed)
        pitch = engine.step(steer=Steer(enter=True)).pitch
        assert pitch is not None and pitch % 12 in key.pitch_classes, pitch
        engine.reset(seed)
        plain += engine.step().pitch is not None
    assert plain < 40  # without it the model does rest


def test_estimate_key() -> None:
    w = [0.0] * 12
    for pc, n in ((0, 4), (2, 2), (4, 3), (5, 1), (7, 4), (9, 1), (11, 1)):
        w[pc] = n
    key = estimate_key(w)
    assert key is not None and key.name == "C major"
    w = [0.0] * 12
    for pc, n in ((9, 4), (11, 1), (0, 3), (2, 1), (4, 3), (5, 1), (8, 2)):  # A harmonic minor
        w[pc] = n
    key = estimate_key(w)
    assert key is not None and key.name == "A minor"
    assert estimate_key([0.0] * 12) is None
    assert estimate_key([1.0] * 12) == ct.Key(0, "major")  # no profile fits better: ties go to major, lowest tonic


def test_positions_from_bars_with_pickup() -> None:
    position = [12, 13, 14, 15] + list(range(16)) * 2
    pos = positions_from_bars(position)
    assert [(p.bar, p.position, p.bar_steps) for p in pos[:5]] == [(-1, 12, 16), (-1, 13, 16), (-1, 14, 16),
                                                                    (-1, 15, 16), (0, 0, 16)]  # fmt: skip
    assert pos[-1].bar == 1 and pos[-1].position == 15


def test_accompany_offline_is_deterministic_and_follows_the_melody(model: Model) -> None:
    rng = np.random.default_rng(0)
    melody = np.where(np.arange(64) % 4 == 0, rng.integers(ct.MEL_NOTE_OFFSET, ct.MELODY_VOCAB_SIZE, 64), ct.MEL_HOLD)
    position = np.arange(64) % 16
    a = accompany_offline(model, Config(), melody, None, position, seed=3)
    b = accompany_offline(model, Config(), melody, None, position, seed=3)
    assert a.shape == (64,) and np.array_equal(a, b)
    assert all(t == ct.CHORD_NC or ct.CHORD_OFFSET <= t < ct.CHORD_VOCAB_SIZE for t in a)


def test_accompany_offline_refuses_a_model_without_harmoniser(tmp_path: Path) -> None:
    from rtgen.errors import ModelError

    old = Model.load(make_random_model(tmp_path / "v1", contract=1))
    with pytest.raises(ModelError, match="cannot accompany"):
        accompany_offline(old, Config(), [2] * 16, None, list(range(16)))


def _issue_tune(repeats: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Issue #19's right hand in quarter notes, a rest ending each phrase: C C G G A A G - F F E E D D C -."""
    melody: list[int] = []
    for p in (60, 60, 67, 67, 69, 69, 67, None, 65, 65, 64, 64, 62, 62, 60, None):
        melody += [ct.MEL_REST] * 4 if p is None else [ct.melody_note_on(p), ct.MEL_HOLD, ct.MEL_HOLD, ct.MEL_HOLD]
    mel = np.array(melody * repeats)
    return mel, np.arange(mel.size) % 16


def test_the_left_hands_chord_draws_the_accompaniment(shipped_model_dir: Path) -> None:
    model = Model.load(shipped_model_dir)
    melody, position = _issue_tune()
    c_major = ct.Chord.parse("C").token
    beats = range(0, melody.size, 4)
    for seed in range(4):
        alone = accompany_offline(model, Config(), melody, None, position, seed=seed)
        held = accompany_offline(model, Config(), melody, None, position, seed=seed, left=np.full(melody.size, c_major))
        print(f"seed {seed}: the tune alone {[ct.chord_token_name(int(alone[i])) for i in beats]}")
        # under the A (and the D) over the player's C E G: C major, not F (nor G)
        assert [int(held[i]) for i in beats] == [c_major] * len(beats), [ct.chord_token_name(int(t)) for t in held]


def test_no_left_hand_or_no_bonus_leaves_the_harmoniser_alone(model: Model) -> None:
    melody, position = _issue_tune(1)
    alone = accompany_offline(model, Config(), melody, None, position, seed=5)
    nc = accompany_offline(model, Config(), melody, None, position, seed=5, left=np.full(melody.size, ct.CHORD_NC))
    cfg = Config().replace("accompany", left_hand=0.0)
    off = accompany_offline(model, cfg, melody, None, position, seed=5, left=np.full(melody.size, 30))
    assert np.array_equal(alone, nc) and np.array_equal(alone, off)


def test_a_left_hand_chord_change_is_followed_on_the_next_counted_beat(model: Model) -> None:
    """A random model's harmoniser, a bonus no logit outweighs: the chord follows the left hand on counted beats."""
    engine = Engine(model, Params(), seed=0)
    tr = Transport()
    c, f = ct.Chord.parse("C").token, ct.Chord.parse("F").token
    sounding = []
    for i in range(32):
        left = c if i < 18 else f  # F comes on step 18, the half beat after beat 1 of bar 2 (no onset there)
        melody = ct.melody_note_on(72) if i == 0 else ct.MEL_HOLD
        steer = Steer(melody=melody, harmonise=True, guide=left, guide_bonus=1000.0)
        sounding.append(engine.step(Params(), at=tr.advance(), steer=steer).chord_now)
    assert sounding[:20] == [c] * 20  # held through F's first steps: they are not on a counted beat
    assert sounding[20:] == [f] * 12

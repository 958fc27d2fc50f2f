"""Baselines that see what the models see, and the near-duplicate detector, on data with a known answer."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rtgen import contract as C  # noqa: N812 (the project's short alias)
from training import evaluate as ev
from training import prepared
from training.dedup import WindowIndex, bar_windows, window_key
from training.ngram import KneserNey, Stream, fit_select_score, select_order

H, R = C.MEL_HOLD, C.MEL_REST
CHORDS = ("C", "Am", "G7", "Fmaj7", "Dm7", "Bdim")
"""One chord per quality: in any of the 12 keys a chord token comes from one chord of one key only."""


def n(pitch: int) -> int:
    return C.melody_note_on(pitch)


def _split(tunes: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> prepared.Split:
    """A prepared.Split from (melody, chord, position) per tune."""
    mel, ch, pos = (np.concatenate([t[k] for t in tunes]).astype(np.int64) for k in range(3))
    offsets = np.concatenate([[0], np.cumsum([t[0].size for t in tunes])]).astype(np.int64)
    return prepared.Split(
        mel, np.full(mel.size, 4, dtype=np.int64), ch, pos, (np.cumsum(pos == 0) % C.PHRASE_BARS), offsets
    )


def _chord_tunes(rng: np.random.Generator, tunes: int, bars: int, shift: int = 0) -> prepared.Split:
    """A random chord every 4 steps; the melody plays its root (C4..B4) at the change, all ``shift`` semitones up."""
    out = []
    for _ in range(tunes):
        steps = bars * 16
        chords = [C.Chord.parse(x) for x in rng.choice(CHORDS, steps // 4)]
        chord = np.full(steps, C.CHORD_HOLD)
        chord[::4] = [c.token for c in chords]
        melody = np.full(steps, H)
        melody[::4] = [n(60 + c.root) for c in chords]
        out.append((C.transpose_melody(melody, shift), C.transpose_chords(chord, shift), np.arange(steps) % 16))
    return _split(out)


# --- the n-gram with context features -------------------------------------------------------------------
def test_melody_that_follows_the_chord_is_certain_only_with_the_chord() -> None:
    rng = np.random.default_rng(0)
    chords = rng.integers(0, 6, 3000)
    melody = (chords * 5 + 1) % 7  # a fixed function of the chord at the same step
    positions = np.arange(3000) % 4
    train = Stream.from_arrays(melody[:2000], positions[:2000], context=chords[:2000])
    valid = Stream.from_arrays(melody[2000:2500], positions[2000:2500], context=chords[2000:2500])
    test = Stream.from_arrays(melody[2500:], positions[2500:], context=chords[2500:])
    cond = fit_select_score(train, valid, {"test": test}, 7, max_order=4)
    assert -cond.log_prob["test"].mean() < 0.02
    plain = Stream.from_arrays(melody[:2000], positions[:2000])
    sel = select_order(plain, Stream.from_arrays(melody[2000:2500], positions[2000:2500]), 7, max_order=4)
    plain_nll = -sel.model.log_prob(Stream.from_arrays(melody[2500:], positions[2500:]), sel.order).mean()
    assert plain_nll > math.log(6) - 0.1  # six chords equally likely: the melody cannot be guessed without them


def test_context_distribution_is_proper_and_streamed_fit_is_the_full_fit() -> None:
    rng = np.random.default_rng(3)
    tok, pos, ctx = rng.integers(0, 5, 600), rng.integers(0, 3, 600), rng.integers(0, 4, (600, 2))
    train = Stream.from_arrays(tok[:400], pos[:400], [0, 150, 400], ctx[:400])
    valid = Stream.from_arrays(tok[400:500], pos[400:500], None, ctx[400:500])
    test = Stream.from_arrays(tok[500:], pos[500:], [0, 30, 100], ctx[500:])
    full = KneserNey.fit(train, 6, max_order=5)  # token 5 never occurs
    for order in (1, 2, 3, 5):  # 1: position, 2-3: + the features, 5: + two previous tokens
        probs = full.distribution(test, order)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-12)
        assert (probs > 0).all()
    streamed = fit_select_score(train, valid, {"test": test}, 6, max_order=5)
    valid_nll = {k: float(-v.mean()) for k, v in full.log_probs_all_orders(valid).items()}
    assert streamed.valid_nll == pytest.approx(valid_nll, rel=1e-12)
    assert streamed.order == min(valid_nll, key=lambda k: valid_nll[k])
    np.testing.assert_allclose(streamed.log_prob["test"], full.log_prob(test, streamed.order), rtol=1e-12)
    # without features the streamed fit is the plain one too
    plain = Stream.from_arrays(tok[:400], pos[:400], [0, 150, 400])
    p_valid = Stream.from_arrays(tok[400:500], pos[400:500])
    ref = select_order(plain, p_valid, 6, max_order=4)
    got = fit_select_score(plain, p_valid, {"v": p_valid}, 6, max_order=4)
    assert got.order == ref.order and got.valid_nll == pytest.approx(ref.valid_nll, rel=1e-12)
    with pytest.raises(ValueError, match="context features"):
        fit_select_score(train, Stream.from_arrays(tok[:5], pos[:5]), {}, 6, max_order=2)
    with pytest.raises(ValueError, match="context must be"):
        Stream.from_arrays(tok[:5], pos[:5], None, ctx[:4])


def test_chord_conditioned_melody_baseline_needs_the_twelve_keys() -> None:
    rng = np.random.default_rng(1)
    splits = {"train": _chord_tunes(rng, 6, 16), "valid": _chord_tunes(rng, 2, 16, shift=3),
              "test": _chord_tunes(rng, 3, 16, shift=3)}  # fmt: skip
    features = {k: ev.step_features(v) for k, v in splits.items()}
    onsets = splits["test"].melody >= C.MEL_NOTE_OFFSET
    chord12 = ev.Baseline("c12", "melody", ("chord_now",), 12, "")
    chord1 = ev.Baseline("c1", "melody", ("chord_now",), 1, "")
    plain12 = ev.Baseline("p12", "melody", (), 12, "")
    _, _, nll12 = ev.fit_baseline(chord12, splits, features, max_order=4)
    _, _, nll1 = ev.fit_baseline(chord1, splits, features, max_order=4)
    _, _, plain = ev.fit_baseline(plain12, splits, features, max_order=4)
    # test and valid are a minor third up: their chords occur in train only once train is transposed
    assert nll12[onsets].mean() < 0.1
    assert nll1[onsets].mean() > 1.0
    assert plain[onsets].mean() > math.log(6) - 0.3  # the root of a random chord: about log(6) without the chord


def test_baseline_stream_transposes_tokens_and_features_together() -> None:
    split = _chord_tunes(np.random.default_rng(2), 2, 2)
    features = ev.step_features(split)
    b = ev.Baseline("x", "melody", ("chord_now", "prev_sounding", "phrase"), 12, "")
    stream = ev.baseline_stream(split, features, b, (0, 2))
    steps = split.melody.size
    assert len(stream) == 2 * steps and stream.offsets.tolist() == [0, 32, 64, 96, 128]
    np.testing.assert_array_equal(stream.tokens[steps:], C.transpose_melody(split.melody, 2))
    assert stream.context is not None
    np.testing.assert_array_equal(stream.context[steps:, 0], C.transpose_chords(features["chord_now"], 2))
    np.testing.assert_array_equal(stream.context[steps:, 1], C.transpose_melody(features["prev_sounding"], 2))
    np.testing.assert_array_equal(stream.context[steps:, 2], split.phrase)
    np.testing.assert_array_equal(stream.positions, np.tile(split.position, 2))


def test_compare_takes_the_strongest_fair_baseline_per_column() -> None:
    test = _split([(np.array([n(60), H, n(62), H]), np.array([2, 0, 0, 3]), np.arange(4))])
    model = {"melody": np.array([1.0, 0.1, 1.0, 0.1]), "chord": np.array([2.0, 0.0, 0.0, 2.0])}
    base = {"a": np.array([2.0, 0.1, 2.0, 0.1]), "b": np.array([1.5, 1.0, 1.5, 1.0]),
            "cheat": np.array([0.1, 0.1, 0.1, 0.1]), "c": np.array([4.0, 0.0, 4.0, 0.0])}  # fmt: skip
    streams = {"a": "melody", "b": "melody", "cheat": "melody", "c": "chord"}
    out = ev.compare(model, base, streams, {"a", "b", "c"}, test)
    assert out["note"]["strongest"] == "a" and out["note"]["ratio"] == pytest.approx(0.55 / 1.05)
    assert out["note"]["strongest_onset"] == "b" and out["note"]["ratio_onset"] == pytest.approx(1.0 / 1.5)
    assert out["note"]["baselines"]["cheat"] == pytest.approx(0.1)  # reported, never the strongest
    assert out["chord"]["ratio_change"] == pytest.approx(2.0 / 2.0)
    kept = ev.compare(model, base, streams, {"a", "b", "c"}, test, keep=np.array([False, True, False, True]))
    assert kept["steps"] == 2 and kept["note"]["strongest"] == "a"
    assert kept["note"]["ratio"] == pytest.approx(1.0)


# --- near-duplicates ----------------------------------------------------------------------------------
def _tune(rng: np.random.Generator, bars: int, bar_steps: int = 16, pickup: int = 0) -> tuple[np.ndarray, np.ndarray]:
    steps = pickup + bars * bar_steps
    melody = np.where(rng.random(steps) < 0.5, [n(int(p)) for p in rng.integers(55, 80, steps)], H)
    melody[0] = n(67)
    return melody.astype(np.int64), (np.arange(steps) - pickup) % bar_steps


def test_bar_windows_and_keys() -> None:
    pos = np.array([2, 3] + [0, 1, 2, 3] * 5 + [0, 1])  # a pickup, 5 bars, a partial last bar
    assert bar_windows(pos, 4) == [(2, 18), (6, 22), (10, 24)]
    assert bar_windows(np.array([1, 2, 3]), 1) == []
    a = np.array([n(60), H, n(64), R, n(67), H])
    assert window_key(a) == window_key(C.transpose_melody(a, 5)) == window_key(C.transpose_melody(a, -6))
    assert window_key(a) != window_key(np.array([n(60), n(64), H, R, n(67), H]))  # same notes, other rhythm
    assert window_key(a) != window_key(np.array([n(60), H, n(63), R, n(67), H]))  # one interval changed
    assert window_key(np.array([n(60), H, H, R])) is None  # a single onset says nothing about a tune


def test_transposed_copy_is_found_and_an_unrelated_tune_is_not() -> None:
    rng = np.random.default_rng(5)
    tunes = [_tune(rng, 8, pickup=3) for _ in range(3)]
    train = _split([(m, np.zeros(m.size), p) for m, p in tunes])
    copy_mel, copy_pos = tunes[1]
    variant = C.transpose_melody(copy_mel, -5).copy()
    variant[3 + 5 * 16 :] = _tune(rng, 3)[0]  # the last 3 bars differ: windows over bars 0-4 still match
    unrelated = _tune(rng, 8, bar_steps=12)
    one_bar = _tune(rng, 8)
    one_bar[0][16:32] = copy_mel[3 + 16 : 3 + 32]  # a single shared bar is idiom, not the tune
    test = _split([(C.transpose_melody(copy_mel, 4), np.zeros(copy_mel.size), copy_pos),
                   (variant, np.zeros(variant.size), copy_pos),
                   (unrelated[0], np.zeros(unrelated[0].size), unrelated[1]),
                   (one_bar[0], np.zeros(one_bar[0].size), one_bar[1])])  # fmt: skip
    ov = WindowIndex(train.melody, train.position, train.offsets).overlap(test.melody, test.position, test.offsets)
    assert ov.windows.tolist() == [5, 5, 5, 5]
    assert ov.shared.tolist() == [5, 2, 0, 0]
    assert ov.flagged().tolist() == [True, True, False, False]
    assert ov.flagged(0.5).tolist() == [True, False, False, False]
    assert ov.partners[0] == (1,) and ov.partners[1] == (1,) and ov.partners[2] == ()
    a = int(test.offsets[1])
    assert ov.covered[3 : copy_mel.size].all() and not ov.covered[:3].any()  # the pickup is in no window
    assert ov.covered[a + 3 : a + 3 + 5 * 16].all() and not ov.covered[a + 3 + 5 * 16 :].any()
    assert not ov.covered[int(test.offsets[2]) :].any()

    nd = ev.near_duplicates(train, test, files={"train": ["a.mid", "b.mid", "c.mid"], "test": ["w", "x", "y", "z"]})
    assert nd["tunes"] == 2 and nd["tune_share"] == 0.5
    assert nd["steps"] == 2 * copy_mel.size and nd["found"][0] == {"test": "w", "train": ["b.mid"], "share": 1.0}
    np.testing.assert_array_equal(nd["mask"], np.repeat([True, True, False, False], np.diff(test.offsets)))
    assert nd["by_bars_8"]["tunes"] == 1  # the variant has no 8 bars in common with train

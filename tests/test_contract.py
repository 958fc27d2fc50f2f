"""Property tests of the token contract (rtgen/contract.py)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rtgen import contract as ct

roots = st.integers(0, 11)
qualities = st.integers(0, ct.NUM_QUALITIES - 1)
pitches = st.integers(ct.PITCH_MIN, ct.PITCH_MAX)
melody_tokens = st.integers(0, ct.MELODY_VOCAB_SIZE - 1)
chord_tokens = st.integers(0, ct.CHORD_VOCAB_SIZE - 1)
shifts = st.integers(-6, 5)
LIFTS = st.lists(st.integers(0, 2), min_size=4, max_size=4)  # octaves added to each upper chord tone


@given(roots, qualities)
def test_chord_token_name_parse_round_trip(root: int, quality: int) -> None:
    chord = ct.Chord(root, quality)
    assert ct.Chord.from_token(chord.token) == chord
    assert ct.Chord.parse(chord.name) == chord
    assert ct.chord_token_name(chord.token) == chord.name
    assert ct.CHORD_OFFSET <= chord.token < ct.CHORD_VOCAB_SIZE


def test_special_chord_tokens() -> None:
    assert ct.chord_token_name(ct.CHORD_HOLD) == "HOLD" and ct.chord_token_name(ct.CHORD_NC) == "N.C."
    with pytest.raises(ValueError, match="chord token"):
        ct.Chord.from_token(ct.CHORD_NC)
    with pytest.raises(ValueError, match="allowed"):
        ct.Chord.parse("Cxyz")


@given(pitches)
def test_melody_token_pitch_round_trip(pitch: int) -> None:
    tok = ct.melody_note_on(pitch)
    assert ct.melody_pitch(tok) == pitch
    for far in (pitch - 60, pitch + 60):  # out of range: folded by octaves, same pitch class
        folded = ct.melody_pitch(ct.melody_note_on(far))
        assert folded is not None and folded % 12 == pitch % 12
    assert ct.melody_pitch(ct.MEL_REST) is None and ct.melody_pitch(ct.MEL_HOLD) is None


@given(st.integers(0, 127))
def test_fold_pitch_keeps_pitch_class(pitch: int) -> None:
    folded = ct.fold_pitch(pitch)
    assert ct.PITCH_MIN <= folded <= ct.PITCH_MAX and folded % 12 == pitch % 12


@given(st.lists(melody_tokens, min_size=1, max_size=64), shifts)
def test_melody_transposition_inverts_on_in_range_tokens(tokens: list[int], k: int) -> None:
    t = np.array(tokens)
    up = ct.transpose_melody(t, k)
    back = ct.transpose_melody(up, -k)
    pitch = np.where(t >= ct.MEL_NOTE_OFFSET, t - ct.MEL_NOTE_OFFSET + ct.PITCH_MIN, 0)
    in_range = (t < ct.MEL_NOTE_OFFSET) | ((pitch + k >= ct.PITCH_MIN) & (pitch + k <= ct.PITCH_MAX))
    assert np.array_equal(back[in_range], t[in_range])
    assert np.array_equal(up[t < ct.MEL_NOTE_OFFSET], t[t < ct.MEL_NOTE_OFFSET])
    onsets = t >= ct.MEL_NOTE_OFFSET
    assert np.array_equal((up[onsets] - ct.MEL_NOTE_OFFSET + ct.PITCH_MIN) % 12, (pitch[onsets] + k) % 12)


@given(st.lists(chord_tokens, min_size=1, max_size=64), shifts)
def test_chord_transposition_is_invertible(tokens: list[int], k: int) -> None:
    t = np.array(tokens)
    up = ct.transpose_chords(t, k)
    assert np.array_equal(ct.transpose_chords(up, -k), t)
    for a, b in zip(t, up, strict=True):
        if a >= ct.CHORD_OFFSET:
            assert ct.Chord.from_token(int(b)) == ct.Chord.from_token(int(a)).transpose(k)
        else:
            assert a == b


def _unambiguous(chord: ct.Chord) -> bool:
    """True when no other chord has the same pitch classes with the same root in the bass."""
    same = [
        ct.Chord(r, q)
        for r in range(12)
        for q in range(ct.NUM_QUALITIES)
        if ct.Chord(r, q).pitch_classes == chord.pitch_classes and r == chord.root
    ]
    return same == [chord]


@given(
    roots, qualities, st.integers(3, 5), st.permutations(range(4)), st.lists(st.integers(0, 2), min_size=4, max_size=4)
)
def test_recognize_chord_tones_with_root_in_bass(
    root: int, quality: int, octave: int, order: list[int], lifts: list[int]
) -> None:
    chord = ct.Chord(root, quality)
    if not _unambiguous(chord):
        return
    bass = 12 * octave + root
    upper = [bass + iv + 12 * lifts[i % 4] for i, iv in enumerate(chord.intervals) if iv]
    upper = [upper[i] for i in sorted(range(len(upper)), key=lambda j: order[j % 4])]
    assert ct.recognize_chord([bass, *upper]) == chord


def test_recognize_chord_needs_two_pitch_classes() -> None:
    assert ct.recognize_chord([]) is None and ct.recognize_chord([60, 72]) is None


@given(st.integers(1, 127))
def test_velocity_bin_round_trip(velocity: int) -> None:
    b = ct.velocity_bin(velocity)
    assert 0 <= b < ct.NUM_VELOCITY_BINS
    assert ct.velocity_bin(ct.bin_velocity(b)) == b
    assert abs(ct.bin_velocity(b) - velocity) <= 128 // ct.NUM_VELOCITY_BINS


@given(st.integers(1, 32), st.sampled_from([1, 2, 4, 8, 16, 32]))
def test_time_signature_bar_steps(num: int, den: int) -> None:
    ts = ct.TimeSignature(num, den)
    assert ts.bar_steps == max(1, num * 4 * ct.STEPS_PER_BEAT // den)
    assert ct.TimeSignature.parse(str(ts)) == ts
    strong = ts.strong_steps()
    assert strong.shape == (ts.bar_steps,) and strong[0]


def test_common_bar_lengths() -> None:
    assert [ct.TimeSignature.parse(s).bar_steps for s in ("4/4", "3/4", "6/8", "2/2")] == [16, 12, 12, 16]
    assert ct.TimeSignature.parse("6/8").beat_steps == 6


@given(roots, st.sampled_from(sorted(ct.SCALES)))
def test_key_parse_round_trip(tonic: int, scale: str) -> None:
    key = ct.Key(tonic, scale)
    assert ct.Key.parse(key.name) == key
    mel = ct.scale_melody_mask(key)
    assert mel[ct.MEL_REST] and mel[ct.MEL_HOLD]
    allowed = [ct.melody_pitch(t) for t in np.flatnonzero(mel) if t >= ct.MEL_NOTE_OFFSET]
    assert {p % 12 for p in allowed} == key.pitch_classes
    chords = ct.scale_chord_mask(key)
    assert chords[ct.CHORD_HOLD] and chords[ct.CHORD_NC]
    for tok in np.flatnonzero(chords[ct.CHORD_OFFSET :]) + ct.CHORD_OFFSET:
        assert key.contains_chord(ct.Chord.from_token(int(tok)))


@given(
    st.lists(st.tuples(melody_tokens, st.integers(0, ct.NUM_VELOCITY_BINS - 1), chord_tokens), min_size=1, max_size=80)
)
def test_step_inputs_invariants(seq: list[tuple[int, int, int]]) -> None:
    mel, vel, ch = (np.array(x) for x in zip(*seq, strict=True))
    position = np.arange(len(mel)) % 16
    f = ct.step_inputs(mel, vel, ch, position)
    n = len(mel)
    assert all(v.shape[0] == n for v in f.values())
    assert f["prev_melody"][0] == ct.MEL_REST and np.array_equal(f["prev_melody"][1:], mel[:-1])
    assert f["prev_chord"][0] == ct.CHORD_NC and np.array_equal(f["prev_chord"][1:], ch[:-1])
    assert ct.MEL_HOLD not in f["prev_sounding"] and ct.CHORD_HOLD not in f["chord_now"]
    assert ct.CHORD_HOLD not in f["prev_chord_now"]
    assert np.array_equal(f["prev_chord_now"][1:], f["chord_now"][:-1])
    for i in range(n):  # chord_now = last non-HOLD chord (N.C. at the start)
        held = [c for c in ch[: i + 1] if c != ct.CHORD_HOLD]
        assert f["chord_now"][i] == (held[-1] if held else ct.CHORD_NC)
    assert f["lookback_melody"].shape == (n, ct.NUM_LOOKBACKS)
    for i in range(n):
        for j, k in enumerate(ct.LOOKBACK_BARS):
            src = i - 16 * k
            assert f["lookback_melody"][i, j] == (mel[src] if src >= 0 else ct.MEL_REST)
            assert f["lookback_chord"][i, j] == (ch[src] if src >= 0 else ct.CHORD_NC)

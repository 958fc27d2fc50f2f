"""Issue 18 part 1 and part 4: ``rtgen-train all --kind poly`` on a small folder of polyphonic MIDI made here
(chords of three and four notes on a track of their own, a melody with repeated notes, four velocities, 4/4
and 3/4, a drum track, one corrupt file) keeps the texture: every non-drum note is on the grid, the corrupt
file is skipped and counted, the exported graph matches PyTorch, and renders sampled with onnxruntime hold
chords (steps with three or more notes sounding)."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import mido
import numpy as np
import pytest
import torch

from rtgen import library
from rtgen.generation.poly import HELD, ONSET, PolyModel
from training import poly
from training.cli import main as train_main
from training.poly_all import TINY_MODEL, TINY_TRAIN, render, texture
from training.poly_midi import load_poly_split
from training.poly_train import PolyTrainConfig, default_model, train_poly

TPB = 480
PIECES = 13
EPOCHS = 6
PROGRESSION = [(0, (0, 4, 7)), (5, (0, 4, 7)), (7, (0, 4, 7, 10)), (9, (0, 3, 7))]
VELOCITIES = (40, 64, 90, 115)
DRUM = 42
"""The closed hi-hat: a drum note no pitched part plays here, so it would show if drums leaked in."""


def _track(channel: int, notes: list[tuple[int, int, int, int]]) -> mido.MidiTrack:
    """A track of ``(start tick, length ticks, pitch, velocity)`` notes."""
    events = []
    for start, length, pitch, vel in notes:
        events.append((start, 1, mido.Message("note_on", channel=channel, note=pitch, velocity=vel)))
        events.append((start + length, 0, mido.Message("note_off", channel=channel, note=pitch, velocity=0)))
    events.sort(key=lambda e: (e[0], e[1]))
    track, now = mido.MidiTrack(), 0
    for tick, _, msg in events:
        track.append(msg.copy(time=tick - now))
        now = tick
    return track


def write_piece(path: Path, seed: int) -> int:
    """A piece of 12 bars: block chords on the beat, a melody of repeated eighths above, hi-hats; returns its
    pitched notes."""
    rng = np.random.default_rng(seed)
    beats = 3 if seed % 3 == 0 else 4
    shift = int(seed % 5)
    chords, melody, drums = [], [], []
    t = 0
    for bar in range(12):
        root, intervals = PROGRESSION[bar % len(PROGRESSION)]
        base = 48 + root + shift
        for _ in range(beats):
            vel = int(rng.choice(VELOCITIES))
            chords += [(t, TPB - 40, base + i, vel) for i in intervals]
            top = base + 12 + int(rng.choice(intervals))
            melody += [(t, TPB // 2 - 20, top, min(vel + 10, 127)), (t + TPB // 2, TPB // 2 - 20, top, vel)]
            drums.append((t, TPB // 4, DRUM, 80))
            t += TPB
    mid = mido.MidiFile(ticks_per_beat=TPB)
    meta = mido.MidiTrack([mido.MetaMessage("time_signature", numerator=beats, denominator=4, time=0)])
    mid.tracks += [meta, _track(0, melody), _track(1, chords), _track(9, drums)]
    mid.save(path)
    return len(chords) + len(melody)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("polymidi")
    midi = root / "midi"
    midi.mkdir()
    notes = {f"piece{i:02d}.mid": write_piece(midi / f"piece{i:02d}.mid", i) for i in range(PIECES)}
    # a MIDI header and a track chunk of garbage: sniff passes it, the parser fails
    (midi / "corrupt.mid").write_bytes(b"MThd\0\0\0\6\0\1\0\1\1\xe0MTrk\0\0\0\x08" + b"\xff" * 8)
    out, work = root / "model", root / "work"
    argv = ["all", "--kind", "poly", "--midi-dir", str(midi), "--out", str(out), "--work", str(work), "--tiny"]
    assert train_main([*argv, "--epochs", str(EPOCHS)]) == 0
    return {"out": out, "work": work, "notes": notes}


def test_corrupt_file_is_skipped_and_counted_and_every_pitched_note_kept(trained: dict[str, Any]) -> None:
    data = trained["work"] / "data"
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["skipped"]["corrupt"] == 1 and manifest["skipped_files"]["corrupt"] == ["corrupt.mid"]
    assert manifest["splits"]["valid"]["sequences"] >= 3 and manifest["splits"]["test"]["sequences"] >= 3
    for split, info in manifest["splits"].items():
        rolls = load_poly_split(data, split)
        want = sum(trained["notes"][f] for f in info["files"])
        assert int((rolls.state == ONSET).sum()) == want  # every track merged, the drums left out
        assert not rolls.state[:, DRUM - 21].any()
    train = load_poly_split(data, "train")
    repeated = (train.state[1:] == ONSET) & (train.state[:-1] != 0)  # a note struck again while sounding
    assert repeated.any() and (train.state == HELD).any()
    assert len(np.unique(train.velocity[train.state == ONSET])) >= 3


def test_export_matches_pytorch_and_beats_the_baselines(trained: dict[str, Any]) -> None:
    meta = library.read_meta(trained["out"])
    assert meta["kind"] == "poly" and meta["poly"]["states"] == 3 and meta["poly"]["velocity_bins"] == 8
    parity = meta["parity"]
    assert parity["frames_differing"] <= 1 and parity["max_abs_diff"]["logp"] < 1e-3
    test = meta["metrics"]["test"]
    assert test["state_nll_per_step"] < test["baselines"]["markov"]["state_nll_per_step"]
    assert test["velocity_nll_per_onset"] < test["baselines"]["velocity"]["velocity_nll_per_onset"] + 0.5


def test_renders_keep_chords(trained: dict[str, Any]) -> None:
    model = PolyModel.load(trained["out"])
    assert (model.states, model.step_beats) == (3, 0.25)
    codes, vel = zip(*(render(model, 64, seed) for seed in range(3)), strict=True)
    for c, v in zip(codes, vel, strict=True):
        tex = texture(c)
        assert tex["chord_share"] >= 0.5, tex  # steps with three or more notes sounding
        onsets = c == ONSET
        assert onsets.any() and (v[onsets] >= 0).all() and not v[~onsets].any()


def test_a_finished_run_resumes_at_once(trained: dict[str, Any]) -> None:
    run = trained["work"] / "run"
    cfg = PolyTrainConfig(**{**TINY_TRAIN, "epochs": EPOCHS})
    summary = train_poly(trained["work"] / "data", run, default_model(**TINY_MODEL), cfg, progress=False)
    assert summary["epochs"] == EPOCHS and summary["stopped"] == f"all {EPOCHS} epochs done"


def test_three_state_head_is_a_joint_distribution_and_the_sampler_draws_from_it() -> None:
    torch.manual_seed(0)
    k = 4
    cfg = poly.PolyConfig(n_pitches=k, embed=8, hidden=12, nade_hidden=6, dropout=0.0, states=3, velocity_bins=3)
    model = poly.PolyModel(cfg).eval().requires_grad_(False)
    with torch.no_grad():  # weights big enough that the pitches really depend on each other
        for p in model.parameters():
            p.normal_(0.0, 1.0)
    frames = torch.tensor(list(itertools.product((0, 1, 2), repeat=k)))  # all 81 frames
    u = torch.randn(1, 12)
    states_lp = model.log_prob(u.expand(len(frames), 12), frames)
    assert float(torch.logsumexp(states_lp, 0)) == pytest.approx(0.0, abs=1e-5)
    onset = torch.tensor([1, 0, 1, 2])  # its onsets' velocities: 9 combinations, summing to 1
    bins = torch.tensor([[a, 0, b, 0] for a in range(3) for b in range(3)])
    _, vel_lp = model.log_prob_parts(u.expand(9, 12), onset.expand(9, k), bins)
    assert float(torch.logsumexp(vel_lp, 0)) == pytest.approx(0.0, abs=1e-5)
    n = 40_000
    code, _ = model.sample_step3(u.expand(n, 12), torch.rand(n, k, 3), torch.rand(n, k))
    freq = torch.bincount((code * torch.tensor([27, 9, 3, 1])).sum(-1), minlength=81).float() / n
    p = states_lp.exp()
    assert (freq - p).abs().max() < 5 * math.sqrt(0.25 / n)


def test_duet_answers_with_the_players_own_three_state_model(trained: dict[str, Any]) -> None:
    """``--mode duet --model MINE``: the phrase is fed as onsets and held pitches, the answer re-strikes a pitch the
    model strikes again, and every note struck is released."""
    from rtgen.config import CallResponseConfig
    from rtgen.generation.conductor import Duet, Heard
    from rtgen.generation.engine import Params
    from rtgen.generation.poly import PolyModel
    from rtgen.input.tracker import SILENT_FRAME
    from rtgen.timing.transport import Position
    from tests.duet_phrase import phrase_frames

    model = PolyModel.load(trained["out"])
    assert model.states == 3 and model.step_beats == 0.25
    duet = Duet(model, CallResponseConfig(silence_beats=1.0, answer_bars=2), seed=0)
    params = Params()
    frames = phrase_frames()
    k, played = 0, []
    for f in [*frames, *[SILENT_FRAME] * 48]:
        at = Position(k, k // 16, k % 16, 16, 4)
        if not duet.answering:
            duet.heard(at, Heard(poly=f))
        played.append(duet.play(at, params))
        k += 1
    assert duet.answers == 1
    sounding: set[int] = set()
    again = ons = offs = chords = 0
    for n in played:
        again += len(set(n.offs) & set(n.ons))
        assert set(n.offs) <= sounding
        sounding -= set(n.offs)
        assert not set(n.ons) & sounding  # every pitch struck is free (struck again: released first)
        sounding |= set(n.ons)
        ons, offs = ons + len(n.ons), offs + len(n.offs)
        chords += len(sounding) >= 3
    assert ons > 0 and chords > 0
    assert again > 0, "the model's onsets of sounding pitches are struck again"
    for _ in range(40):  # the answer ends: everything released
        if not sounding:
            break
        n = duet.play(Position(k, k // 16, k % 16, 16, 4), params)
        sounding -= set(n.offs)
        offs += len(n.offs)
        k += 1
    assert not sounding and ons == offs

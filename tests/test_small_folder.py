"""Issue #20 part 5: your own folder gives a model that plays. A small folder of multi-part, non-folk MIDI
files (a string quartet's four tracks over a minor progression with secondary dominants, a madrigal-like
texture in 3/4, a rag-like left hand) and two broken files goes through the real ``rtgen-train all`` with tiny
settings; prepare skips and counts the broken files, the valid split holds pieces even though the folder is
tiny, and every 16-bar render holds melody, chords and bass."""

from __future__ import annotations

import json
from pathlib import Path

import mido
import pytest

from rtgen.config import Config
from rtgen.generation.model import Model
from rtgen.offline.render import render_steps
from training import prepare as P  # noqa: N812
from training.cli import main as train_main

# (root pitch class, chord intervals): i - V7/iv - iv - V7 - VI - ii°7 - V7 - i, and a major-key set with
# secondary dominants; never the folk I-IV-V of the Nottingham tunes
MINOR = [(9, (0, 3, 7)), (9, (0, 4, 7, 10)), (2, (0, 3, 7)), (4, (0, 4, 7, 10)),
         (5, (0, 4, 7)), (11, (0, 3, 6, 9)), (4, (0, 4, 7, 10)), (9, (0, 3, 7))]  # fmt: skip
MAJOR = [(0, (0, 4, 7, 11)), (9, (0, 3, 7, 10)), (2, (0, 4, 7, 10)), (7, (0, 4, 7, 10)),
         (4, (0, 4, 7, 10)), (9, (0, 3, 7)), (2, (0, 3, 7, 10)), (7, (0, 4, 7, 10))]  # fmt: skip
TPB = 480


def _track(name: str, program: int, channel: int, notes: list[tuple[int, int, int, int]]) -> mido.MidiTrack:
    """A track from ``(start tick, length ticks, pitch, velocity)`` notes."""
    events: list[tuple[int, int, mido.Message]] = []
    for start, length, pitch, vel in notes:
        events.append((start, 1, mido.Message("note_on", channel=channel, note=pitch, velocity=vel)))
        events.append((start + length, 0, mido.Message("note_off", channel=channel, note=pitch, velocity=0)))
    events.sort(key=lambda e: (e[0], e[1]))
    track = mido.MidiTrack([mido.MetaMessage("track_name", name=name, time=0)])
    track.append(mido.Message("program_change", channel=channel, program=program, time=0))
    now = 0
    for tick, _, msg in events:
        track.append(msg.copy(time=tick - now))
        now = tick
    return track


def write_piece(path: Path, seed: int) -> None:
    """One multi-part piece: melody, two inner voices and a bass on their own tracks and channels."""
    style = seed % 3
    prog = MINOR if style != 1 else MAJOR
    shift = (seed * 5) % 12 - 5
    beats = 3 if style == 1 else 4
    bar = beats * TPB
    mel, inner, bass = [], [], []
    for rep in range(4):
        for b, (root, chord) in enumerate(prog):
            t0 = (rep * len(prog) + b) * bar
            base = 48 + root + shift
            tones = [base + 12 + i for i in chord]
            bass.append((t0, bar // 2, base - 12 + 12 * (base < 48), 70))
            bass.append((t0 + bar // 2, bar // 2, base - 5 + 12 * (base < 53), 64))
            if style == 2:  # rag-like left hand: bass on the beat, chord off the beat
                for k in range(beats):
                    inner += [(t0 + k * TPB + TPB // 2, TPB // 2, p, 58) for p in tones[:3]]
            else:
                inner += [(t0, bar, p, 56) for p in tones[1:]]
            step = TPB // 2 if style != 1 else TPB
            for k in range(bar // step):
                pc = chord[(k + seed + rep) % len(chord)]
                pitch = 72 + (root + shift + pc) % 12 + (k % 2) * (2 if style == 2 else 0)
                mel.append((t0 + k * step, step - 20, pitch, 80 + (k % 3) * 8))
    mid = mido.MidiFile(ticks_per_beat=TPB)
    meta = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(96), time=0)])
    meta.append(mido.MetaMessage("time_signature", numerator=beats, denominator=4, time=0))
    mid.tracks += [meta, _track("violin", 40, 0, mel), _track("viola", 41, 1, inner), _track("cello", 42, 2, bass)]
    mid.save(str(path))


def write_folder(root: Path, pieces: int = 12) -> None:
    """``pieces`` good files and two broken ones (a truncated piece, a text file named .mid)."""
    root.mkdir(parents=True)
    for i in range(pieces):
        write_piece(root / f"piece{i:02d}.mid", i)
    whole = (root / "piece00.mid").read_bytes()
    (root / "broken_cut.mid").write_bytes(whole[: len(whole) // 2])
    (root / "notes.mid").write_text("my favourite quartets\n")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(model folder, work folder)`` of ``rtgen-train all`` on the small folder (tiny settings)."""
    base = tmp_path_factory.mktemp("small")
    write_folder(base / "midi")
    out, work = base / "mine", base / "mine.work"
    args = ["all", "--midi-dir", str(base / "midi"), "--out", str(out), "--work", str(work), "--tiny"]
    assert train_main([*args, "--epochs", "3"]) == 0
    return out, work


def test_prepare_skips_the_broken_files_and_keeps_a_valid_split(trained: tuple[Path, Path]) -> None:
    manifest = json.loads((trained[1] / "data" / "manifest.json").read_text())
    assert manifest["skipped_files"] == {"truncated": ["broken_cut.mid"], "not_midi": ["notes.mid"]}
    used = [f for s in P.SPLITS for f in manifest["splits"][s]["files"]]
    assert sorted(used) == [f"piece{i:02d}.mid" for i in range(12)]
    assert manifest["splits"]["valid"]["sequences"] >= P.MIN_HELD_OUT
    assert manifest["splits"]["test"]["sequences"] >= P.MIN_HELD_OUT
    assert manifest["splits"]["train"]["sequences"] == 12 - 2 * P.MIN_HELD_OUT


def test_every_render_of_16_bars_holds_melody_chords_and_bass(trained: tuple[Path, Path]) -> None:
    model = Model.load(trained[0])
    for seed in range(4):
        r = render_steps(model, Config(), 16, seed)
        parts = {ev.part for _, _, ev in r.events if ev.on}
        assert {"melody", "chords", "bass"} <= parts, f"seed {seed}: only {sorted(parts)}"


def test_init_from_an_earlier_run_fine_tunes_its_weights(trained: tuple[Path, Path], tmp_path: Path) -> None:
    out, work = trained
    run = work / "run"
    args = ["all", "--midi-dir", str(work.parent / "midi"), "--out", str(tmp_path / "again"), "--tiny"]
    assert train_main([*args, "--epochs", "1", "--init-from", str(out)]) == 0  # the model folder finds its run
    config = json.loads((tmp_path / "again.work" / "run" / "config.json").read_text())
    assert config["init_from"] == str(run / "best.pt")
    assert config["model"] == json.loads((run / "config.json").read_text())["model"]
    first = json.loads((run / "history.json").read_text())[0]["valid"]["loss"]
    tuned = json.loads((tmp_path / "again.work" / "run" / "history.json").read_text())[0]["valid"]["loss"]
    assert tuned < first  # its first epoch starts where the earlier run ended, not from random weights


def test_init_from_the_shipped_model_finds_its_weights() -> None:
    from training.train import init_checkpoint, read_init

    path = init_checkpoint("default")
    assert path.name == "weights.pt"
    state, cfg = read_init(path)
    meta = json.loads((path.parent / "meta.json").read_text())
    assert cfg.to_dict() == meta["model"]["config"]
    assert sum(v.numel() for k, v in state.items() if not k.endswith(("eye", "templates"))) == sum(
        meta["model"]["params"].values()
    )


def test_init_from_weights_that_do_not_fit_their_config_is_an_error_not_a_traceback(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    import torch

    from rtgen.errors import RtgenError
    from training.model import ModelConfig, Models
    from training.train import train

    bad = tmp_path / "bad.pt"
    weights = Models(ModelConfig(hidden=24, layers=1)).state_dict()
    torch.save({"models": weights, "model_config": ModelConfig(hidden=16, layers=1).to_dict()}, bad)
    data = trained[1] / "data"
    with pytest.raises(RtgenError, match=r"init-from .*bad\.pt.*do not fit"):
        train(data, tmp_path / "run", epochs=1, init_from=str(bad), progress=False)


def test_init_from_a_folder_of_only_onnx_graphs_says_what_is_possible(tmp_path: Path, capsys) -> None:
    graphs = tmp_path / "graphs"
    graphs.mkdir()
    default = Path(__file__).resolve().parents[1] / "exported_models" / "default"
    for name in ("note.onnx", "chord.onnx", "harmony.onnx", "meta.json"):
        (graphs / name).write_bytes((default / name).read_bytes())
    args = ["all", "--midi-dir", str(tmp_path), "--out", str(tmp_path / "x"), "--init-from", str(graphs)]
    assert train_main(args) == 2
    err = capsys.readouterr().err
    assert "only ONNX" in err and "note.onnx" in err and "best.pt" in err and "leave out --init-from" in err
    assert not (tmp_path / "x.work").exists()  # said before any work is done


def test_a_small_folder_trains_a_smaller_more_regularised_model(
    trained: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from training import cli

    data = trained[1] / "data"
    assert cli.small_data_overrides(data) == cli.SMALL_DATA_TRAIN
    assert "a small folder" in capsys.readouterr().out
    monkeypatch.setattr(cli, "SMALL_DATA_STEPS", 1)
    assert cli.small_data_overrides(data) == {}

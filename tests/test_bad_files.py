"""Bad files at the boundaries (issue #7): a training folder of truncated, zero-length, non-MIDI and huge files
beside good ones, and model folders with a wrong contract version, a bad hash, a missing file or a malformed
meta.json -- loaded directly, through ``rtgen render --model DIR`` and hot-swapped into a playing daemon.
Each gives a clear message, and nothing is lost: prepare keeps the good files, the daemon keeps its model."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import serve_jack
from test_daemon import Daemon, Peer

from rtgen.bench.harness import daemon_command, daemon_env, note_ons, sounding_notes
from rtgen.cli import main as rtgen_main
from rtgen.errors import ModelError
from rtgen.generation.model import Model
from rtgen.midi import extract as midi_extract
from training import prepare as P  # noqa: N812

GOOD_TUNES = ("ashover1.mid", "jigs1.mid", "jigs2.mid")
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"


# --- the training side -----------------------------------------------------------------------------------------
def _bad_training_folder(root: Path, nottingham: Path) -> dict[str, list[str]]:
    """Good tunes and one or two of each kind of bad file; returns the expected skipped files by reason."""
    root.mkdir()
    for name in GOOD_TUNES:
        shutil.copy(nottingham / name, root / name)
    tune = (nottingham / "ashover2.mid").read_bytes()
    (root / "cut_in_half.mid").write_bytes(tune[: len(tune) // 2])
    # a tiny file whose track claims 4 GB: a parser that trusted the length field would try to read it all
    (root / "giant_track_header.mid").write_bytes(tune[:14] + b"MTrk" + struct.pack(">I", 0xFFFFFFF0) + tune[22:64])
    (root / "zero.mid").write_bytes(b"")
    (root / "readme.mid").write_text("These are my favourite tunes.\n")
    (root / "cover.midi").write_bytes(PNG + bytes(200))
    with (root / "huge.mid").open("wb") as f:  # 200 MB on paper, a few kB on disk (sparse)
        f.write(tune)
        f.truncate(200 << 20)
    return {
        "truncated": ["cut_in_half.mid", "giant_track_header.mid"],
        "zero_length": ["zero.mid"],
        "not_midi": ["cover.midi", "readme.mid"],
        "too_large": ["huge.mid"],
    }


def test_prepare_skips_and_counts_bad_files_by_reason_and_keeps_the_good_ones(
    tmp_path: Path, nottingham_dir: Path
) -> None:
    expected = _bad_training_folder(tmp_path / "midi", nottingham_dir)
    assert (tmp_path / "midi" / "huge.mid").stat().st_size == 200 << 20
    out = tmp_path / "data"
    t0 = time.perf_counter()
    summary = P.prepare(midi_dir=tmp_path / "midi", out=out, workers=2, progress=False, quiet=True)
    seconds = time.perf_counter() - t0
    manifest = json.loads((out / "manifest.json").read_text())
    print(f"\nprepare of {len(GOOD_TUNES)} good and 6 bad files (one of 200 MB): {seconds:.2f} s")
    assert manifest["skipped_files"] == expected
    assert {k: v for k, v in summary.skipped.items() if v} == {k: len(v) for k, v in expected.items()}
    used = sorted(f for s in P.SPLITS for f in manifest["splits"][s]["files"])
    assert used == sorted(GOOD_TUNES)
    assert sum(manifest["splits"][s]["sequences"] for s in P.SPLITS) == len(GOOD_TUNES)
    assert manifest["files_seen"] == len(GOOD_TUNES) + 6
    line = summary.line()
    assert all(f"{reason} {len(files)}" in line for reason, files in expected.items()), line


def test_sniff_reads_no_more_than_the_headers(tmp_path: Path, nottingham_dir: Path) -> None:
    expected = _bad_training_folder(tmp_path / "midi", nottingham_dir)
    for reason, files in expected.items():
        for name in files:
            assert midi_extract.sniff(tmp_path / "midi" / name) == reason, name
            assert midi_extract.extract_file(tmp_path / "midi" / name) == reason, name
    for name in GOOD_TUNES:
        assert midi_extract.sniff(tmp_path / "midi" / name) is None
    assert midi_extract.sniff(tmp_path / "midi" / "huge.mid", max_bytes=300 << 20) is None  # its header is fine
    assert midi_extract.sniff(tmp_path / "no-such-file.mid") == "corrupt"


# --- the model side --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def good_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real model (random weights, the contract's I/O) made by tests/model_factory.py."""
    import model_factory  # torch comes with the [train] extra

    return model_factory.make_random_model(tmp_path_factory.mktemp("good") / "model", name="good-random")


def _edit_meta(folder: Path, change: Callable[[dict[str, Any]], None]) -> None:
    meta = json.loads((folder / "meta.json").read_text())
    change(meta)
    (folder / "meta.json").write_text(json.dumps(meta))


def _wrong_contract(folder: Path) -> None:
    _edit_meta(folder, lambda m: m["contract"].update(version=99))


def _bad_hash(folder: Path) -> None:
    data = bytearray((folder / "note.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the weights
    (folder / "note.onnx").write_bytes(bytes(data))


def _missing_file(folder: Path) -> None:
    (folder / "harmony.onnx").unlink()


def _truncated_meta(folder: Path) -> None:
    text = (folder / "meta.json").read_text()
    (folder / "meta.json").write_text(text[: len(text) // 2])


def _meta_not_utf8(folder: Path) -> None:
    (folder / "meta.json").write_bytes(b'{"name": "\xff\xfe"}')


def _contract_not_an_object(folder: Path) -> None:
    _edit_meta(folder, lambda m: m.update(contract=2))


def _files_not_a_table(folder: Path) -> None:
    _edit_meta(folder, lambda m: m.update(files=["chord.onnx", "note.onnx", "harmony.onnx"]))


# (breakage, the file the message must name, what it must say)
BROKEN: dict[str, tuple[Callable[[Path], None], str, str]] = {
    "wrong_contract": (_wrong_contract, "meta.json", "speaks token contract v99"),
    "bad_hash": (_bad_hash, "note.onnx", "does not match its sha256"),
    "missing_file": (_missing_file, "harmony.onnx", "is missing harmony.onnx"),
    "truncated_meta": (_truncated_meta, "meta.json", "cannot read"),
    "meta_not_utf8": (_meta_not_utf8, "meta.json", "cannot read"),
    "contract_not_an_object": (_contract_not_an_object, "meta.json", "no integer contract.version"),
    "files_not_a_table": (_files_not_a_table, "meta.json", 'no "files" table'),
}
FIX_WORDS = ("rtgen-train export", "re-export", "--model")  # every message says what to do


def _broken(good: Path, where: Path, kind: str) -> Path:
    folder = where / kind
    shutil.copytree(good, folder)
    BROKEN[kind][0](folder)
    return folder


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_a_broken_model_folder_is_a_clear_error(good_model: Path, tmp_path: Path, kind: str) -> None:
    folder = _broken(good_model, tmp_path, kind)
    _, names, says = BROKEN[kind]
    with pytest.raises(ModelError) as info:
        Model.load(folder)
    text = str(info.value)
    assert says in text and names in text and str(folder) in text, text
    assert any(w in text for w in FIX_WORDS), text
    Model.load(good_model)  # the good one still loads


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_render_with_a_broken_model_exits_2_with_the_message(
    good_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    folder = _broken(good_model, tmp_path, kind)
    out = tmp_path / "piece.mid"
    code = rtgen_main(["render", "--model", str(folder), "--bars", "2", "--out", str(out)])
    err = capsys.readouterr().err
    _, names, says = BROKEN[kind]
    assert code == 2
    assert err.startswith("rtgen render: error: ") and says in err and names in err, err
    assert "Traceback" not in err
    assert not out.exists()


def test_render_cli_process_with_a_bad_hash_exits_2(good_model: Path, tmp_path: Path) -> None:
    folder = _broken(good_model, tmp_path, "bad_hash")
    proc = subprocess.run(
        daemon_command("render", "--model", str(folder), "--bars", "2", "--out", str(tmp_path / "x.mid")),
        env=daemon_env("unused"), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert f"{folder / 'note.onnx'} does not match its sha256" in proc.stderr
    assert "Traceback" not in proc.stderr
    ok = subprocess.run(
        daemon_command("render", "--model", str(good_model), "--bars", "2", "--out", str(tmp_path / "y.mid")),
        env=daemon_env("unused"), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert ok.returncode == 0 and (tmp_path / "y.mid").is_file(), ok.stderr


@pytest.fixture
def jack_server() -> Iterator[str]:
    """An asynchronous JACK server of this module's own (daemon end-to-end, as tests/test_playalong.py)."""
    yield from serve_jack(f"rtgen-badfiles-{os.getpid()}", sync=False)


def test_hot_swap_to_a_broken_model_replies_the_error_and_keeps_playing(
    jack_server: str, good_model: Path, tmp_path: Path
) -> None:
    d = Daemon(jack_server, good_model, tmp_path, listen=False)
    rec = d.record()
    peer = Peer(d.osc_port)
    try:
        assert rec.wait_until(lambda ev: len(note_ons([m for _, m in ev])) >= 3, timeout=20), d.output()
        for kind in sorted(BROKEN):
            folder = _broken(good_model, tmp_path / "models", kind)  # the test daemon's model library
            _, names, says = BROKEN[kind]
            peer.received.clear()
            peer.send("/rtgen/model", folder.name)
            errors = peer.wait_for("/rtgen/error", timeout=20)
            assert errors, f"{kind}: no /rtgen/error reply; received {peer.received}\n{d.output()[-2000:]}"
            text = errors[0][0]
            assert text.startswith("/rtgen/model: cannot load") and says in text and names in text, text
            assert "keeping good-random" in text, text
            n = len(note_ons(rec.messages()))
            assert rec.wait_until(lambda ev, n=n: len(note_ons([m for _, m in ev])) >= n + 3, timeout=10), kind
        peer.received.clear()
        peer.send("/rtgen/status")
        state = json.loads(peer.wait_for("/rtgen/status")[0][0])
        assert state["model"] == "good-random" and state["playing"] is True
        assert state["command_errors"] == 0 and state["engine_errors"] == 0, state
        d.proc.send_signal(signal.SIGINT)
        assert d.wait(15) == 0, d.output()[-2000:]
        rec.settle(0.3)
        assert sounding_notes(rec.messages()) == set(), "a note-on has no note-off"
        output = d.output()
        assert "Traceback" not in output
        assert output.count("/rtgen/model: cannot load") >= len(BROKEN), "each failure is logged"
    finally:
        rec.close()
        peer.close()
        d.stop()

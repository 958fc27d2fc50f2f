"""``rtgen ports`` and ``rtgen doctor`` against the real JACK server, FluidSynth and a real ONNX model."""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import require

from rtgen.bench.harness import daemon_command, daemon_env, wait_for_port
from rtgen.commands import doctor as doctor_cmd
from rtgen.commands import ports as ports_cmd
from rtgen.contract import CONTRACT_VERSION
from rtgen.io import ports as midi_io

pytestmark = pytest.mark.jack


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="rtgen")
    sub = parser.add_subparsers(dest="command", required=True)
    ports_cmd.register(sub)
    doctor_cmd.register(sub)
    return parser.parse_args(argv)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real ONNX model folder with the contract's I/O (random weights)."""
    import model_factory as factory  # tests/model_factory.py (torch comes with the [train] extra)

    return factory.make_random_model(tmp_path_factory.mktemp("doctor") / "model", name="doctor-test")


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """FluidSynth's "file" audio driver writes fluidsynth.wav into the working directory."""
    monkeypatch.chdir(tmp_path)


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(
    tmp_path: Path, model: Path, osc_port: int, midi_out: str = "", backend: str = "jack", extra: str = ""
) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f'[model]\npath = "{model}"\n[midi]\nbackend = "{backend}"\nout = "{midi_out}"\n'
        f'[osc]\nport = {osc_port}\n[synth]\naudio_driver = "file"\n{extra}'
    )
    return path


def _doctor_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, dict[str, str]]]:
    args = _parse("doctor", "--json", *argv)
    code = args.func(args)
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] == (code == 0)
    return code, {c["name"]: c for c in out["checks"]}


def test_ports_lists_the_virtual_port_on_jack(jack_server: str, capsys: pytest.CaptureFixture[str]) -> None:
    with midi_io.open_output("jack", None, client_name="portslist"):
        wait_for_port("portslist:out")
        args = _parse("ports", "--backend", "jack")
        assert args.func(args) == 0
        text = capsys.readouterr().out
        assert "jack:" in text and "portslist:out" in text
        args = _parse("ports", "--backend", "jack", "--json")
        assert args.func(args) == 0
        data = json.loads(capsys.readouterr().out)
    assert data["backends"]["jack"]["available"] is True
    assert "portslist:out" in data["backends"]["jack"]["inputs"]


def test_ports_cli_backend_that_cannot_start_is_a_clear_message(jack_server: str) -> None:
    # a JACK server that does not run fails the same way on every machine (JACK_NO_START_SERVER is set)
    missing = f"{jack_server}-not-running"
    proc = subprocess.run(
        daemon_command("ports", "--backend", "jack"),
        env=daemon_env(missing),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.returncode == 1
    assert "jack: unavailable" in proc.stdout and f"{missing!r} not running" in proc.stdout
    # libjack's own complaints are swallowed, not dumped on the user
    assert "Cannot connect to server" not in proc.stderr + proc.stdout


def test_doctor_all_good(jack_server: str, model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        from rtgen.io.synth import find_soundfont

        find_soundfont()
    except Exception as err:  # ImportError before engineer B's synth lands, SoundfontError without one
        require(False, f"rtgen.io.synth with a soundfont ({err})")
    config = _config(tmp_path, model_dir, _free_udp_port())
    code, checks = _doctor_json(capsys, "--config", str(config))
    failed = {n: c for n, c in checks.items() if c["status"] == "FAIL"}
    assert code == 0, failed
    assert checks["midi backends"]["status"] == "OK" and "jack" in checks["midi backends"]["detail"]
    assert checks["jack server"]["status"] == "OK"
    assert checks["soundfont"]["status"] == "OK" and ".sf2" in checks["soundfont"]["detail"].lower()
    assert checks["model"]["status"] == "OK"
    assert "doctor-test" in checks["model"]["detail"] and f"contract v{CONTRACT_VERSION}" in checks["model"]["detail"]
    assert checks["osc port"]["status"] == "OK"
    assert checks["midi input port"]["status"] == "OK"
    assert "virtual input rtgen:in" in checks["midi input port"]["detail"]
    assert checks["audio driver"]["status"] in ("OK", "WARN")
    if checks["audio driver"]["status"] == "WARN":
        assert "MIDI only" in checks["audio driver"]["detail"] and checks["audio driver"]["fix"]


def test_doctor_bad_model_fails_with_the_fix(
    jack_server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, tmp_path / "no-such-model", _free_udp_port())
    code, checks = _doctor_json(capsys, "--config", str(config))
    assert code == 1
    model = checks["model"]
    assert model["status"] == "FAIL"
    assert "no-such-model" in model["detail"]
    assert "--model" in model["fix"] and "rtgen-train" in model["fix"]


def test_doctor_corrupt_model_fails_on_the_hash(
    jack_server: str, model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in model_dir.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    with (broken / "note.onnx").open("ab") as fh:
        fh.write(b"\0")
    code, checks = _doctor_json(
        capsys, "--config", str(_config(tmp_path, model_dir, _free_udp_port())), "--model", str(broken)
    )
    assert code == 1
    assert checks["model"]["status"] == "FAIL" and "sha256" in checks["model"]["detail"]


def test_doctor_busy_osc_port_and_missing_midi_out(
    jack_server: str, model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        config = _config(tmp_path, model_dir, port, midi_out="nonexistent-daw")
        args = _parse("doctor", "--config", str(config))
        code = args.func(args)
    text = capsys.readouterr().out
    assert code == 1
    lines = text.splitlines()
    osc = next(i for i, line in enumerate(lines) if "osc port" in line)
    assert lines[osc].startswith("FAIL") and str(port) in lines[osc]
    assert lines[osc + 1].strip().startswith("fix:") and "--osc-port" in lines[osc + 1]
    out_line = next(i for i, line in enumerate(lines) if "midi output port" in line)
    assert lines[out_line].startswith("FAIL") and "nonexistent-daw" in lines[out_line]
    assert "rtgen ports" in lines[out_line + 1]
    assert "failure(s)" in lines[-1]


def _alsa_cannot_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make rtmidi's ALSA clients fail as they do without a sequencer, whether or not this machine has one."""
    import rtmidi

    def failing(kind: type[Any]) -> Callable[..., Any]:
        def make(api: int = rtmidi.API_UNSPECIFIED, *args: Any, **kwargs: Any) -> Any:
            if api == rtmidi.API_LINUX_ALSA:
                raise rtmidi.SystemError(f"{kind.__name__}Alsa::initialize: error creating ALSA sequencer client")
            return kind(api, *args, **kwargs)

        return make

    monkeypatch.setattr(rtmidi, "MidiOut", failing(rtmidi.MidiOut))
    monkeypatch.setattr(rtmidi, "MidiIn", failing(rtmidi.MidiIn))
    if "alsa" not in midi_io.compiled_backends():
        monkeypatch.setattr(rtmidi, "get_compiled_api", lambda: [rtmidi.API_LINUX_ALSA, rtmidi.API_UNIX_JACK])


def test_doctor_configured_alsa_points_to_jack(
    jack_server: str,
    model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _alsa_cannot_start(monkeypatch)
    config = _config(tmp_path, model_dir, _free_udp_port(), backend="alsa")
    code, checks = _doctor_json(capsys, "--config", str(config))
    assert code == 1
    check = checks["midi backend (configured)"]
    assert check["status"] == "FAIL" and "alsa" in check["detail"].lower()
    assert "cannot start" in check["detail"] and "--backend jack" in check["fix"]
    assert checks["midi backends"]["status"] == "OK" and "usable: jack" in checks["midi backends"]["detail"]


def test_doctor_missing_input_port_lists_the_inputs(
    jack_server: str, model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with midi_io.open_output("jack", None, client_name="doctorkeys"):
        wait_for_port("doctorkeys:out")
        config = _config(tmp_path, model_dir, _free_udp_port(), extra='[input]\nport = "no-such-keyboard"\n')
        code, checks = _doctor_json(capsys, "--config", str(config))
    assert code == 1
    check = checks["midi input port"]
    assert check["status"] == "FAIL"
    assert "no MIDI input port matches 'no-such-keyboard'; available input ports:" in check["detail"]
    assert "doctorkeys:out" in check["detail"]  # a virtual output is a source we could read from
    assert "rtgen ports" in check["fix"] and "--midi-in" in check["fix"] and "--no-input" in check["fix"]


def test_doctor_input_port_found_or_disabled(
    jack_server: str, model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with midi_io.open_output("jack", None, client_name="DoctorPiano"):
        wait_for_port("DoctorPiano:out")
        config = _config(tmp_path, model_dir, _free_udp_port(), extra='[input]\nport = "doctorpiano"\n')
        _, checks = _doctor_json(capsys, "--config", str(config))
    assert checks["midi input port"]["status"] == "OK"
    assert "DoctorPiano:out" in checks["midi input port"]["detail"]
    config = _config(tmp_path, model_dir, _free_udp_port(), extra='[input]\nenabled = false\nport = "nothing"\n')
    _, checks = _doctor_json(capsys, "--config", str(config))
    assert checks["midi input port"]["status"] == "OK" and "disabled" in checks["midi input port"]["detail"]


def test_doctor_input_on_a_backend_that_cannot_start_fails_with_the_fix(
    jack_server: str,
    model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("JACK_DEFAULT_SERVER", f"{jack_server}-not-running")  # JACK_NO_START_SERVER is set
    config = _config(tmp_path, model_dir, _free_udp_port())
    code, checks = _doctor_json(capsys, "--config", str(config))
    assert code == 1
    check = checks["midi input port"]
    assert check["status"] == "FAIL" and "virtual MIDI input" in check["detail"]
    assert "not running" in check["detail"] and "--no-input" in check["fix"]

"""``rtgen service``: the systemd user unit (checked by ``systemd-analyze verify``) and the launchd agent."""

from __future__ import annotations

import os
import plistlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require

from rtgen.errors import ConfigError
from rtgen.ops import service as svc

REPO = Path(__file__).resolve().parent.parent


def isolated_env(tmp_path: Path) -> dict[str, str]:
    """A user with a temporary home, config folder and runtime folder, and no session bus: no systemctl
    or launchctl call can reach the real user's service manager."""
    env = {k: v for k, v in os.environ.items() if k not in ("DBUS_SESSION_BUS_ADDRESS", "XDG_CONFIG_HOME")}
    run = tmp_path / "run"
    run.mkdir(mode=0o700, exist_ok=True)
    env.update(HOME=str(tmp_path / "home"), XDG_CONFIG_HOME=str(tmp_path / "xdg"), XDG_RUNTIME_DIR=str(run))
    env["PYTHONPATH"] = str(REPO)
    return env


def make(tmp_path: Path, platform: str, config: Path | None = None, **extra: str) -> svc.Service:
    env = isolated_env(tmp_path)
    if config is None:
        config = tmp_path / "config.toml"
        config.write_text("[generation]\ntempo = 100.0\n")
    return svc.Service(name="rtgen", config=config, command=svc.rtgen_command(), platform=platform,
                       home=Path(env["HOME"]), env=env, extra_env=extra)  # fmt: skip


def verify(unit: Path, env: dict[str, str]) -> list[str]:
    """``systemd-analyze verify --user UNIT``: the lines it reports about this unit (empty when clean)."""
    require(shutil.which("systemd-analyze") is not None, "systemd-analyze (apt-get install systemd)")
    run = subprocess.run(["systemd-analyze", "verify", "--user", str(unit)], env=env, capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    about = [line for line in (run.stdout + run.stderr).splitlines() if unit.name in line]
    assert run.returncode == 0 or about, f"systemd-analyze failed without naming the unit: {run.stderr}"
    return about


def test_install_writes_a_systemd_user_unit_that_verifies(tmp_path: Path) -> None:
    folder = tmp_path / "my songs 100%"  # a space and a systemd specifier character in the config's path
    folder.mkdir()
    config = folder / "config.toml"
    config.write_text("")
    s = make(tmp_path, svc.LINUX, config, JACK_DEFAULT_SERVER="studio")
    lines = svc.install(s)
    assert s.path == tmp_path / "xdg" / "systemd" / "user" / "rtgen.service", "XDG_CONFIG_HOME is honoured"
    assert s.path.is_file() and f"wrote {s.path}" in lines
    assert "systemctl --user enable --now rtgen.service" in "\n".join(lines), "no session: it says what to run"
    text = s.path.read_text()
    quoted = '"' + str(config).replace("%", "%%") + '"'  # one word, and % is not a specifier
    assert f"ExecStart={' '.join(s.command)} run --config {quoted} --log-json" in text.splitlines()
    for line in ("Restart=on-failure", f"RestartSec={svc.RESTART_SEC}", "WantedBy=default.target",
                 'Environment=JACK_DEFAULT_SERVER=studio', "Type=simple"):  # fmt: skip
        assert line in text.splitlines(), line
    assert Path(s.command[0]).is_absolute()
    assert verify(s.path, s.env) == []


def test_systemd_analyze_catches_a_broken_unit(tmp_path: Path) -> None:
    # the check above can fail: the same unit with a bad restart policy and a relative command is reported
    s = make(tmp_path, svc.LINUX)
    bad = tmp_path / "broken.service"
    text = s.render().decode().replace("Restart=on-failure", "Restart=sometimes")
    bad.write_text(text.replace(f"ExecStart={s.command[0]}", "ExecStart=rtgen-nowhere"))
    assert verify(bad, s.env), "systemd-analyze found nothing wrong with a broken unit"


def test_install_writes_a_launchd_agent(tmp_path: Path) -> None:
    s = make(tmp_path, svc.MACOS, JACK_DEFAULT_SERVER="studio")  # the macOS file, generated on any system
    lines = svc.install(s)
    home = Path(s.env["HOME"])
    assert s.path == home / "Library" / "LaunchAgents" / "org.rtgen.rtgen.plist" and s.path.is_file()
    assert "launchctl bootstrap gui/" in "\n".join(lines) or any(line.startswith("ran: launchctl") for line in lines)
    agent = plistlib.loads(s.path.read_bytes())
    assert plistlib.loads(plistlib.dumps(agent)) == agent
    assert agent["Label"] == "org.rtgen.rtgen"
    assert agent["ProgramArguments"] == [*s.command, "run", "--config", str(s.config), "--log-json"]
    assert agent["KeepAlive"] == {"SuccessfulExit": False} and agent["RunAtLoad"] is True
    assert agent["WorkingDirectory"] == str(s.config.parent)
    assert agent["EnvironmentVariables"]["JACK_DEFAULT_SERVER"] == "studio"
    log = Path(agent["StandardErrorPath"])
    assert agent["StandardOutPath"] == str(log) and log.parent.is_dir() and log.is_relative_to(home)
    if shutil.which("plutil"):  # macOS
        assert subprocess.run(["plutil", "-lint", str(s.path)], capture_output=True, timeout=30).returncode == 0


@pytest.mark.parametrize("platform", [svc.LINUX, svc.MACOS])
def test_uninstall_removes_the_file_and_status_follows(tmp_path: Path, platform: str) -> None:
    s = make(tmp_path, platform)
    assert not svc.status(s).installed
    svc.install(s)
    found = svc.status(s)
    assert found.installed and found.path == s.path and found.running is None  # no manager answers here
    lines = svc.uninstall(s)
    assert not s.path.exists() and f"removed {s.path}" in lines
    assert not svc.status(s).installed
    with pytest.raises(svc.ServiceError, match="no service 'rtgen' installed"):
        svc.uninstall(s)


def test_the_cli_installs_reports_and_uninstalls(tmp_path: Path) -> None:
    env = isolated_env(tmp_path)
    config = tmp_path / "config.toml"
    config.write_text("")
    unit = tmp_path / "xdg" / "systemd" / "user" / "night.service"

    def rtgen(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "rtgen", "service", *args, "--name", "night"], env=env,
                              cwd=tmp_path, capture_output=True, text=True, timeout=60)  # fmt: skip

    if sys.platform != "linux":
        pytest.skip("the CLI picks the platform it runs on; the file tests above cover macOS")
    printed = rtgen("install", "--print")
    assert printed.returncode == 0 and "Restart=on-failure" in printed.stdout and not unit.exists()
    assert rtgen("status").returncode == 1
    installed = rtgen("install")  # the config: ./config.toml of the working folder
    assert installed.returncode == 0, installed.stderr
    assert unit.is_file() and f"--config {config} --log-json" in unit.read_text()
    status = rtgen("status")
    assert status.returncode == 0 and "night: installed" in status.stdout
    assert rtgen("uninstall").returncode == 0 and not unit.exists()
    assert "not installed" in rtgen("status").stdout


def test_a_bad_config_or_name_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[generation]\ntempo = 9000.0\n")
    s = make(tmp_path, svc.LINUX, config)
    with pytest.raises(ConfigError, match="tempo"):
        svc.install(s)
    assert not s.path.exists()
    with pytest.raises(ConfigError, match="service name"):
        svc.Service(name="../evil", config=config, command=("rtgen",), platform=svc.LINUX, home=tmp_path)
    with pytest.raises(svc.ServiceError, match=r"Linux .* and macOS"):
        svc.Service(name="rtgen", config=config, command=("rtgen",), platform="Windows", home=tmp_path)


def test_the_command_is_the_running_rtgen(tmp_path: Path) -> None:
    script = tmp_path / "bin" / "rtgen"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    assert svc.rtgen_command(str(script), "/usr/bin/python3") == (str(script),)
    python = tmp_path / "bin" / "python"
    assert svc.rtgen_command("/x/rtgen/__main__.py", str(python)) == (str(script),)  # the venv's script
    alone = tmp_path / "elsewhere" / "python"
    assert svc.rtgen_command("/x/rtgen/__main__.py", str(alone)) == (str(alone), "-m", "rtgen")

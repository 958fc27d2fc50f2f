"""``rtgen run`` as a headless service: a systemd user unit (Linux) or a launchd agent (macOS).

The service runs ``rtgen run --config ABS --log-json`` from the config's folder, restarts it when it
fails (a clean stop -- SIGTERM, ``--duration`` -- exits 0 and stays stopped) and logs JSON lines:
to the journal on Linux (``journalctl --user -u NAME``), to ``~/Library/Logs/rtgen/NAME.log`` on macOS.

Everything here takes the platform, the home folder and the environment as arguments, so the files
of both platforms can be generated (and tested) anywhere; only :func:`install`, :func:`uninstall` and
:func:`status` touch the machine, and they call ``systemctl``/``launchctl`` only where a user session
of that service manager answers -- otherwise they say what to run.
"""

from __future__ import annotations

import os
import plistlib
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rtgen.errors import ConfigError, RtgenError

LINUX = "Linux"
MACOS = "Darwin"
PLATFORMS = (LINUX, MACOS)
DEFAULT_NAME = "rtgen"
RESTART_SEC = 2  # wait before a restart after a failure
START_LIMIT_BURST = 5  # failures within START_LIMIT_INTERVAL_SEC that stop the restarts (a broken config)
START_LIMIT_INTERVAL_SEC = 120
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TIMEOUT = 15.0  # seconds for one systemctl / launchctl call


class ServiceError(RtgenError):
    """The service cannot be installed, removed or queried (the message says why and what to do)."""


@dataclass(frozen=True)
class Service:
    """One headless rtgen service: what it runs and where its file goes.

    Attributes:
        name: the service's name (letters, digits, ``_ . -``): ``NAME.service`` / ``org.rtgen.NAME``.
        config: absolute path of the config file ``rtgen run`` reads.
        command: the argv that starts rtgen (``[/abs/rtgen]`` or ``[python, -m, rtgen]``).
        platform: :data:`LINUX` (systemd) or :data:`MACOS` (launchd).
        home: the user's home folder.
        env: the environment (``XDG_CONFIG_HOME`` decides where a systemd user unit goes).
        extra_env: variables set for the daemon, e.g. ``JACK_DEFAULT_SERVER``.
    """

    name: str
    config: Path
    command: tuple[str, ...]
    platform: str
    home: Path
    env: Mapping[str, str] = field(default_factory=dict)
    extra_env: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ConfigError(f"service name {self.name!r} must be 1..64 letters, digits, '_', '.' or '-'")
        if self.platform not in PLATFORMS:
            raise ServiceError(
                f"rtgen service supports Linux (systemd) and macOS (launchd), not {self.platform}; "
                "run `rtgen run --config FILE --log-json` under your platform's service manager"
            )
        if not self.config.is_absolute():
            raise ConfigError(f"the service's config path must be absolute, got {self.config}")
        for key in self.extra_env:
            if not _ENV_KEY.fullmatch(key):
                raise ConfigError(f"environment variable name {key!r} must be letters, digits and '_'")

    @property
    def argv(self) -> list[str]:
        """What the service runs."""
        return [*self.command, "run", "--config", str(self.config), "--log-json"]

    @property
    def label(self) -> str:
        """The launchd label (``org.rtgen.NAME``)."""
        return f"org.rtgen.{self.name}"

    @property
    def unit(self) -> str:
        """The systemd unit name (``NAME.service``)."""
        return f"{self.name}.service"

    @property
    def path(self) -> Path:
        """Where the unit or agent file goes."""
        if self.platform == MACOS:
            return self.home / "Library" / "LaunchAgents" / f"{self.label}.plist"
        config_home = self.env.get("XDG_CONFIG_HOME") or str(self.home / ".config")
        return Path(config_home) / "systemd" / "user" / self.unit

    @property
    def log_path(self) -> Path:
        """macOS: where launchd writes the daemon's output (Linux: the journal)."""
        return self.home / "Library" / "Logs" / "rtgen" / f"{self.name}.log"

    def render(self) -> bytes:
        """The unit file or the agent's property list."""
        return systemd_unit(self).encode() if self.platform == LINUX else launchd_plist(self)


def rtgen_command(argv0: str | None = None, executable: str | None = None) -> tuple[str, ...]:
    """The absolute argv of the rtgen that is running now.

    ``argv0`` (default ``sys.argv[0]``) when it is the ``rtgen`` script; else the ``rtgen`` script next
    to the interpreter (a virtualenv's ``bin``); else ``python -m rtgen`` with this interpreter.
    """
    argv0 = sys.argv[0] if argv0 is None else argv0
    executable = sys.executable if executable is None else executable
    script = Path(argv0)
    if script.name == "rtgen" and script.is_file():
        return (str(script.absolute()),)
    beside = Path(executable).absolute().parent / "rtgen"
    if beside.is_file() and os.access(beside, os.X_OK):
        return (str(beside),)
    return (str(Path(executable).absolute()), "-m", "rtgen")


def _systemd_quote(arg: str) -> str:
    """One ExecStart word: quoted when it must be, with systemd's ``%`` specifiers and ``$`` escaped."""
    arg = arg.replace("%", "%%").replace("$", "$$")
    if arg and not re.search(r"[\s\"'\\;]", arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def systemd_unit(service: Service) -> str:
    """The text of the systemd user unit running ``service``."""
    env = {"PYTHONUNBUFFERED": "1", **service.extra_env}
    env_lines = "".join(f"Environment={_systemd_quote(f'{k}={v}')}\n" for k, v in env.items())
    return (
        "# Written by `rtgen service install`; `rtgen service uninstall` removes it.\n"
        "[Unit]\n"
        f"Description=rtgen real-time MIDI generation ({service.name})\n"
        f"StartLimitIntervalSec={START_LIMIT_INTERVAL_SEC}\n"
        f"StartLimitBurst={START_LIMIT_BURST}\n"
        "\n"
        "[Service]\n"
        "Type=simple\n"
        f"ExecStart={' '.join(_systemd_quote(a) for a in service.argv)}\n"
        f"WorkingDirectory={str(service.config.parent).replace('%', '%%')}\n"  # taken whole: no quotes
        f"{env_lines}"
        "Restart=on-failure\n"
        f"RestartSec={RESTART_SEC}\n"
        "# SIGTERM: rtgen run releases every note, writes its recording and exits 0\n"
        "KillSignal=SIGTERM\n"
        "TimeoutStopSec=15\n"
        "\n"
        "[Install]\n"
        "WantedBy=default.target\n"
    )


def launchd_plist(service: Service) -> bytes:
    """The property list of the launchd agent running ``service``."""
    log = str(service.log_path)
    data = {
        "Label": service.label,
        "ProgramArguments": service.argv,
        "WorkingDirectory": str(service.config.parent),
        "EnvironmentVariables": {"PYTHONUNBUFFERED": "1", **service.extra_env},
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},  # restart after a failure, not after a clean stop
        "ThrottleInterval": RESTART_SEC,
        "ProcessType": "Interactive",  # scheduled like an app: the clock thread keeps its timing
        "StandardOutPath": log,
        "StandardErrorPath": log,
    }
    return plistlib.dumps(data, fmt=plistlib.FMT_XML, sort_keys=False)


def _run(argv: Sequence[str], env: Mapping[str, str]) -> subprocess.CompletedProcess[str] | None:
    """Run a service-manager command; None when it is not installed or does not answer in time."""
    if shutil.which(argv[0], path=env.get("PATH")) is None:
        return None
    try:
        return subprocess.run(list(argv), env=dict(env), capture_output=True, text=True, timeout=_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired):
        return None


def has_manager(service: Service) -> bool:
    """Whether this user's service manager answers (a systemd user session; launchd's GUI domain)."""
    if service.platform == LINUX:
        probe = _run(["systemctl", "--user", "show-environment"], service.env)
    else:
        probe = _run(["launchctl", "print", f"gui/{os.getuid()}"], service.env)
    return probe is not None and probe.returncode == 0


def activation_commands(service: Service) -> list[list[str]]:
    """The commands that load and start the installed service."""
    if service.platform == LINUX:
        return [["systemctl", "--user", "daemon-reload"], ["systemctl", "--user", "enable", "--now", service.unit]]
    return [["launchctl", "bootstrap", f"gui/{os.getuid()}", str(service.path)]]


def deactivation_commands(service: Service) -> list[list[str]]:
    """The commands that stop and unload the service (before its file is removed)."""
    if service.platform == LINUX:
        return [["systemctl", "--user", "disable", "--now", service.unit]]
    return [["launchctl", "bootout", f"gui/{os.getuid()}/{service.label}"]]


def _show(commands: list[list[str]]) -> str:
    return "\n".join("    " + " ".join(c) for c in commands)


def _apply(service: Service, commands: list[list[str]], what: str, check: bool) -> list[str]:
    """Run ``commands`` where the manager answers, else say what to run; the lines to print."""
    if not has_manager(service):
        manager = "systemd user session" if service.platform == LINUX else "launchd GUI session"
        return [f"no {manager} answers here; to {what}, run:", _show(commands)]
    lines = []
    for argv in commands:
        result = _run(argv, service.env)
        if result is None or (check and result.returncode != 0):
            err = result.stderr.strip() if result is not None else "did not answer"
            raise ServiceError(f"`{' '.join(argv)}` failed: {err}")
        lines.append(f"ran: {' '.join(argv)}")
    return lines


def install(service: Service, activate: bool = True) -> list[str]:
    """Write the service's file (replacing an older one) and, where possible, load and start it.

    Returns:
        What happened, as lines for the terminal.

    Raises:
        ServiceError: the file cannot be written or the service manager refused.
    """
    from rtgen.config import load_config

    load_config(service.config)  # a config that fails here would only fail-loop as a service
    lines = []
    if service.platform == MACOS and service.path.is_file() and activate and has_manager(service):
        lines += _apply(service, deactivation_commands(service), "unload the old agent", check=False)
    try:
        service.path.parent.mkdir(parents=True, exist_ok=True)
        if service.platform == MACOS:
            service.log_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = service.path.with_name(service.path.name + ".tmp")
        tmp.write_bytes(service.render())
        tmp.replace(service.path)
    except OSError as err:
        raise ServiceError(f"cannot write {service.path}: {err}") from err
    lines.append(f"wrote {service.path}")
    if activate:
        lines += _apply(service, activation_commands(service), "start it (and at every login)", check=True)
    return lines


def uninstall(service: Service, activate: bool = True) -> list[str]:
    """Stop and unload the service where possible, then remove its file.

    Raises:
        ServiceError: there is nothing installed under this name, or the file cannot be removed.
    """
    if not service.path.is_file():
        raise ServiceError(f"no service {service.name!r} installed ({service.path} does not exist)")
    lines = []
    if activate:
        lines += _apply(service, deactivation_commands(service), "stop it where it runs", check=False)
    # what `systemctl --user disable` removes, for when no session could run it
    wants = service.path.parent / "default.target.wants" / service.unit
    try:
        service.path.unlink()
        if service.platform == LINUX and wants.is_symlink():
            wants.unlink()
    except OSError as err:
        raise ServiceError(f"cannot remove {service.path}: {err}") from err
    lines.append(f"removed {service.path}")
    if activate and service.platform == LINUX and has_manager(service):
        lines += _apply(service, [["systemctl", "--user", "daemon-reload"]], "reload", check=False)
    return lines


@dataclass(frozen=True)
class Status:
    """What :func:`status` found.

    Attributes:
        installed: the unit or agent file exists.
        path: where it is (or would be).
        running: the manager says it runs; None when no manager answered.
        detail: the manager's own words (``active``, ``failed``, ``state = running``, ...), or why unknown.
    """

    installed: bool
    path: Path
    running: bool | None
    detail: str


def status(service: Service) -> Status:
    """Whether the service is installed and, where the service manager answers, whether it runs."""
    installed = service.path.is_file()
    if not has_manager(service):
        return Status(installed, service.path, None, "no service manager session answers here")
    if service.platform == LINUX:
        result = _run(["systemctl", "--user", "is-active", service.unit], service.env)
        state = result.stdout.strip() if result is not None else "unknown"
        return Status(installed, service.path, state == "active", state)
    result = _run(["launchctl", "print", f"gui/{os.getuid()}/{service.label}"], service.env)
    if result is None or result.returncode != 0:
        return Status(installed, service.path, False, "not loaded")
    found = re.search(r"^\s*state = (\S+)", result.stdout, re.MULTILINE)
    state = found.group(1) if found else "loaded"
    return Status(installed, service.path, state == "running", f"state = {state}")

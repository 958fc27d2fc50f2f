"""A plain (not editable) install plays from any folder: the wheel carries the shipped model and the default
config. Builds the sdist and the wheel of a copy of the checkout, installs the wheel into a fresh virtual
environment outside it, and runs its ``rtgen`` from a temporary folder with an empty HOME."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import mido
import pytest
from conftest import REPO

pytestmark = pytest.mark.slow

SOURCES = ("pyproject.toml", "README.md", "LICENSE", "config.toml", "rtgen", "training")
PACKAGE_DATA = {f"rtgen/data/models/default/{f}" for f in ("meta.json", "chord.onnx", "note.onnx", "MODEL_CARD.md")}
PACKAGE_DATA.add("rtgen/data/config.toml")
# where the runtime dependencies are imported from (the venv under test gets them without a download)
DEPENDENCIES = ("numpy", "onnxruntime", "mido", "rtmidi", "fluidsynth", "pythonosc", "matplotlib", "jack")


def run(
    cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 90
) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def copy_checkout(dst: Path) -> Path:
    """What a build sees: the sources (symlinks kept) and the shipped model folders (not training leftovers)."""
    dst.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in SOURCES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dst / name, symlinks=True, ignore=ignore)
        else:
            shutil.copy2(src, dst / name)
    for model in (REPO / "exported_models").glob("*/meta.json"):
        shutil.copytree(model.parent, dst / "exported_models" / model.parent.name, ignore=shutil.ignore_patterns("*/"))
    return dst


def site_dirs_of_dependencies() -> list[str]:
    """The folders the dependencies are imported from (never a folder holding an rtgen source tree)."""
    import importlib

    dirs: set[str] = set()
    for name in DEPENDENCIES:
        module = importlib.import_module(name)
        assert module.__file__ is not None
        path = Path(module.__file__).resolve().parent
        dirs.add(str(path.parent if path.name == name else path))
    return sorted(d for d in dirs if not (Path(d) / "rtgen" / "cli.py").is_file())


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Build sdist and wheel, install the wheel into a fresh venv; ``{"venv", "wheel", "sdist", "tmp"}``."""
    tmp = tmp_path_factory.mktemp("install")
    src = copy_checkout(tmp / "src")
    dist = tmp / "dist"
    build = run(
        [sys.executable, "-c", f"from setuptools.build_meta import build_sdist; print(build_sdist({str(dist)!r}))"],
        src,
    )
    assert build.returncode == 0, build.stderr
    sdist = dist / build.stdout.split()[-1]
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q"]
    wheel_run = run([*pip_wheel, "-w", str(dist), str(src)], tmp)
    assert wheel_run.returncode == 0, wheel_run.stderr
    (wheel,) = dist.glob("rtgen-*.whl")
    from_sdist = run([*pip_wheel, "-w", str(tmp / "from_sdist"), str(sdist)], tmp)
    assert from_sdist.returncode == 0, from_sdist.stderr
    venv = tmp / "venv"
    made = run([sys.executable, "-m", "venv", str(venv)], tmp, timeout=120)
    assert made.returncode == 0, made.stderr
    py = venv / "bin" / "python"
    # install first: with the dependencies' folders on its path pip would take the editable rtgen as installed
    inst = run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], tmp, env=clean_env(tmp))
    assert inst.returncode == 0, inst.stderr
    purelib = run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp).stdout.strip()
    (Path(purelib) / "rtgen_test_dependencies.pth").write_text("\n".join(site_dirs_of_dependencies()) + "\n")
    return {"venv": venv, "wheel": wheel, "sdist": sdist, "tmp": tmp}


def clean_env(tmp: Path, **extra: str) -> dict[str, str]:
    """The environment of a user who never ran rtgen: no PYTHONPATH, no checkout, an empty HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "XDG_", "RTGEN_", "VIRTUAL_ENV"))}
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    env.update(HOME=str(home), **extra)
    return env


def payload(wheel: Path) -> set[str]:
    """The files a wheel installs, without its metadata."""
    with zipfile.ZipFile(wheel) as whl:
        return {n for n in whl.namelist() if ".dist-info/" not in n}


def play_folder(tmp: Path, name: str) -> Path:
    folder = tmp / name
    folder.mkdir()
    return folder


def test_wheel_and_sdist_carry_the_model_and_config(installed: dict[str, Path]) -> None:
    with zipfile.ZipFile(installed["wheel"]) as whl:
        names = set(whl.namelist())
        assert names >= PACKAGE_DATA
        meta = json.loads(whl.read("rtgen/data/models/default/meta.json"))
        onnx = whl.getinfo("rtgen/data/models/default/chord.onnx")
        assert onnx.file_size == meta["files"]["chord.onnx"]["bytes"]  # the real file, not a symlink
        assert whl.read("rtgen/data/config.toml") == (REPO / "config.toml").read_bytes()
    with tarfile.open(installed["sdist"]) as sd:
        root = sd.getnames()[0].split("/")[0]
        members = {m.name.removeprefix(root + "/"): m for m in sd.getmembers()}
        for name in PACKAGE_DATA:
            assert name in members and members[name].isfile(), name  # real files: the sdist builds anywhere
    (rebuilt,) = (installed["tmp"] / "from_sdist").glob("rtgen-*.whl")
    assert payload(rebuilt) == payload(installed["wheel"])  # the wheel built from the sdist holds the same files


def test_the_installed_rtgen_is_the_wheel(installed: dict[str, Path]) -> None:
    venv, tmp = installed["venv"], installed["tmp"]
    where = play_folder(tmp, "where")
    probe = "import rtgen, rtgen.library as L; print(rtgen.__file__); print(L.SHIPPED_MODELS_DIR)"
    out = run([str(venv / "bin" / "python"), "-c", probe], where, env=clean_env(tmp))
    assert out.returncode == 0, out.stderr
    module, shipped = (Path(line) for line in out.stdout.split())
    assert module.is_relative_to(venv) and not module.is_relative_to(REPO) and not module.is_relative_to("/work/main")
    assert shipped.is_relative_to(venv) and not shipped.is_symlink()


def test_render_from_any_folder(installed: dict[str, Path]) -> None:
    venv, tmp = installed["venv"], installed["tmp"]
    where = play_folder(tmp, "play")
    out = run([str(venv / "bin" / "rtgen"), "render", "--bars", "4", "--out", "x.mid"], where, env=clean_env(tmp))
    assert out.returncode == 0, out.stderr
    notes = [m for t in mido.MidiFile(where / "x.mid").tracks for m in t if m.type == "note_on" and m.velocity > 0]
    assert len(notes) > 8
    assert "rendered 4 bars" in out.stdout
    # rtgen run loads its model through the same lookup: doctor checks that model (the rest needs hardware)
    doctor = run([str(venv / "bin" / "rtgen"), "doctor", "--json"], where, env=clean_env(tmp))
    (check,) = [c for c in json.loads(doctor.stdout)["checks"] if c["name"] == "model"]
    assert check["status"] == "OK" and str(venv) in check["detail"], check


def test_models_by_name_in_the_installed_rtgen(installed: dict[str, Path]) -> None:
    venv, tmp = installed["venv"], installed["tmp"]
    rtgen = str(venv / "bin" / "rtgen")
    where = play_folder(tmp, "names")
    lib = tmp / "lib"
    lib.mkdir()
    shutil.copytree(REPO / "exported_models" / "default", lib / "mine")
    env = clean_env(tmp, RTGEN_MODELS=str(lib))
    listed = run([rtgen, "models", "list", "--json"], where, env=env)
    assert listed.returncode == 0, listed.stderr
    models = {m["name"]: m for m in json.loads(listed.stdout)["models"]}
    assert models["default"]["origin"] == "shipped" and Path(models["default"]["path"]).is_relative_to(venv)
    assert models["mine"]["origin"] == "user" and models["mine"]["path"] == str(lib / "mine")
    info = run([rtgen, "models", "info", "default"], where, env=env)
    assert info.returncode == 0, info.stderr
    assert "Small recurrent models" in info.stdout and "metrics (test):" in info.stdout and "note_nll" in info.stdout
    mine = run([rtgen, "render", "--model", "mine", "--bars", "2", "--out", "m.mid"], where, env=env)
    assert mine.returncode == 0, mine.stderr
    assert any(m.type == "note_on" for t in mido.MidiFile(where / "m.mid").tracks for m in t)
    unknown = run([rtgen, "render", "--model", "nosuch", "--bars", "2", "--out", "n.mid"], where, env=env)
    assert unknown.returncode == 2
    assert "no model named 'nosuch'" in unknown.stderr
    assert "default (shipped)" in unknown.stderr and "mine (user)" in unknown.stderr


def assert_renders(rtgen: Path, where: Path, env: dict[str, str]) -> None:
    """``rtgen render`` from ``where`` writes a MIDI file with notes."""
    out = run([str(rtgen), "render", "--bars", "4", "--out", "x.mid"], where, env=env)
    assert out.returncode == 0, out.stderr
    notes = [m for t in mido.MidiFile(where / "x.mid").tracks for m in t if m.type == "note_on" and m.velocity > 0]
    assert len(notes) > 8


def assert_imports_from(py: Path, root: Path, where: Path, env: dict[str, str]) -> None:
    """``py`` imports rtgen from under ``root`` (the installed wheel, not a checkout)."""
    module = run([str(py), "-c", "import rtgen; print(rtgen.__file__)"], where, env=env).stdout.strip()
    assert Path(module).is_relative_to(root), module


def test_pipx_installs_the_wheel_as_an_app(installed: dict[str, Path]) -> None:
    """``pipx install`` of the wheel: the app's own venv, its ``rtgen`` on a bin folder, playing from anywhere."""
    tmp, wheel = installed["tmp"], installed["wheel"]
    pipx_home, bin_dir = tmp / "pipx", tmp / "pipx-bin"
    env = clean_env(tmp, PIPX_HOME=str(pipx_home), PIPX_BIN_DIR=str(bin_dir), PIPX_MAN_DIR=str(tmp / "pipx-man"))
    # pipx reads the dependencies' metadata, so they are installed for real (pip's cache or the package index)
    inst = run([sys.executable, "-m", "pipx", "install", str(wheel)], tmp, env=env, timeout=600)
    assert inst.returncode == 0, inst.stdout + inst.stderr
    py = pipx_home / "venvs" / "rtgen" / "bin" / "python"
    where = play_folder(tmp, "pipx-play")
    assert_renders(bin_dir / "rtgen", where, env)
    assert_imports_from(py, pipx_home, where, env)


def test_uv_tool_installs_the_wheel_as_an_app(installed: dict[str, Path]) -> None:
    """``uv tool install`` of the wheel: the same as pipx, with uv's own resolver and tool folders."""
    tmp, wheel = installed["tmp"], installed["wheel"]
    tools, bin_dir = tmp / "uv-tools", tmp / "uv-bin"
    env = clean_env(
        tmp, UV_TOOL_DIR=str(tools), UV_TOOL_BIN_DIR=str(bin_dir), UV_CACHE_DIR=str(tmp / "uv-cache"),
        UV_PYTHON=sys.executable,
    )  # fmt: skip
    inst = run([sys.executable, "-m", "uv", "tool", "install", str(wheel)], tmp, env=env, timeout=600)
    assert inst.returncode == 0, inst.stdout + inst.stderr
    where = play_folder(tmp, "uv-play")
    assert_renders(bin_dir / "rtgen", where, env)
    py = tools / "rtgen" / "bin" / "python"
    assert_imports_from(py, tools, where, env)

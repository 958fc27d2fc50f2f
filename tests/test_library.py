"""The model library and the config lookup: names and paths, the user models folder, ``rtgen models``,
``rtgen-train all --out NAME`` (real model folders, the real CLI, the shipped model)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mido
import pytest
from conftest import REPO

from rtgen import library
from rtgen.cli import main
from rtgen.config import PACKAGED_CONFIG, default_config_path, load_config, user_config_path
from rtgen.errors import ModelError

SHIPPED = REPO / "exported_models" / "default"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A clean HOME and XDG folders in tmp, no RTGEN_MODELS, and the current folder an empty ``work``."""
    for var in ("RTGEN_MODELS", "XDG_DATA_HOME", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    return tmp_path / "home"


def user_model(root: Path, name: str) -> Path:
    """A copy of the shipped model as ``root/name`` (a real, loadable model folder)."""
    root.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copytree(SHIPPED, root / name))


def test_the_package_carries_the_shipped_model_and_config() -> None:
    # one copy in git: the package data are symlinks into the checkout
    assert (library.SHIPPED_MODELS_DIR / "default").resolve() == SHIPPED.resolve()
    assert PACKAGED_CONFIG.resolve() == (REPO / "config.toml").resolve()
    assert '"data/models/*/*"' in (REPO / "pyproject.toml").read_text()


def test_user_models_folder_precedence(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert library.user_models_dir() == home / ".local" / "share" / "rtgen" / "models"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/is/ignored")
    assert library.user_models_dir() == home / ".local" / "share" / "rtgen" / "models"
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert library.user_models_dir() == tmp_path / "xdg" / "rtgen" / "models"
    cfg_file = tmp_path / "conf" / "config.toml"
    cfg_file.parent.mkdir()
    cfg_file.write_text('[model]\nlibrary = "lib"\n')
    assert load_config(cfg_file).models_dir == tmp_path / "conf" / "lib"  # relative to the config file
    monkeypatch.setenv("RTGEN_MODELS", str(tmp_path / "env"))
    assert load_config(cfg_file).models_dir == tmp_path / "env"  # the environment wins


def test_config_lookup_order(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_config_path() == PACKAGED_CONFIG.resolve()
    cfg = load_config(default_config_path())
    assert cfg.model_path == SHIPPED.resolve()  # the packaged config plays the shipped model from any folder
    user = user_config_path()
    assert user == home / ".config" / "rtgen" / "config.toml"
    user.parent.mkdir(parents=True)
    user.write_text("[generation]\ntempo = 90\n")
    assert default_config_path() == user
    assert load_config(default_config_path()).generation.tempo == 90
    (Path.cwd() / "config.toml").write_text("[generation]\ntempo = 70\n")
    assert default_config_path() == Path.cwd() / "config.toml"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdgconf"))
    assert user_config_path() == tmp_path / "xdgconf" / "rtgen" / "config.toml"


def test_names_and_paths(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lib = tmp_path / "lib"
    monkeypatch.setenv("RTGEN_MODELS", str(lib))
    mine = user_model(lib, "mine")
    cfg = load_config(None)
    assert cfg.with_model("default").model_path == SHIPPED.resolve()
    assert cfg.with_model("mine").model_path == mine.resolve()
    # an existing path wins over a name, relative to the current folder
    local = user_model(Path.cwd(), "default")
    assert cfg.with_model("default").model_path == local.resolve()
    assert cfg.with_model(str(mine)).model_path == mine.resolve()
    with pytest.raises(ModelError) as err:
        cfg.with_model("nosuch")
    text = str(err.value)
    assert "no model named 'nosuch'" in text and "default (shipped)" in text and "mine (user)" in text
    assert str(lib) in text
    with pytest.raises(ModelError, match="does not exist"):
        cfg.with_model("no/such/folder")
    # a config file's model.path is a name or a path relative to that file
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "config.toml").write_text('[model]\npath = "mine"\n')
    assert load_config(conf / "config.toml").model_path == mine.resolve()


def test_a_user_model_named_like_a_shipped_one_is_shadowed(home: Path, tmp_path: Path, monkeypatch) -> None:
    lib = tmp_path / "lib"
    monkeypatch.setenv("RTGEN_MODELS", str(lib))
    user_model(lib, "default")
    entries = {(e.name, e.origin): e for e in library.list_models(lib)}
    assert entries[("default", "shipped")].problem == ""
    assert "shadowed" in entries[("default", "user")].problem
    assert load_config(None).with_model("default").model_path == SHIPPED.resolve()
    with pytest.raises(ModelError, match="shipped model"):
        library.output_folder("default", lib)


def test_models_list_and_info(home: Path, tmp_path: Path, monkeypatch, capsys: pytest.CaptureFixture[str]) -> None:
    lib = tmp_path / "lib"
    monkeypatch.setenv("RTGEN_MODELS", str(lib))
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "default" in out and "shipped" in out and f"no models of yours yet in {lib}" in out
    mine = user_model(lib, "mine")
    (lib / ".work").mkdir()  # training work folders are not models
    (lib / "notamodel").mkdir()
    broken = user_model(lib, "broken")
    (broken / "meta.json").write_text("{not json")
    assert main(["models", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["user_dir"] == str(lib)
    by_name = {m["name"]: m for m in listed["models"]}
    assert set(by_name) == {"default", "chorale", "mine", "broken"}
    assert (
        by_name["default"]["origin"] == by_name["chorale"]["origin"] == "shipped"
        and by_name["mine"]["origin"] == "user"
    )
    assert (by_name["default"]["kind"], by_name["chorale"]["kind"], by_name["mine"]["kind"]) == (
        "melody",
        "poly",
        "melody",
    )
    assert by_name["mine"]["path"] == str(mine.resolve()) and by_name["mine"]["contract"] == 2
    assert by_name["mine"]["params"] > 100_000 and by_name["mine"]["problem"] == ""
    assert "cannot read" in by_name["broken"]["problem"] and "meta.json" in by_name["broken"]["problem"]

    meta = json.loads((SHIPPED / "meta.json").read_text())
    assert main(["models", "info", "default"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"default (shipped): {SHIPPED.resolve()}")
    assert "Small recurrent models" in out  # the card's summary
    assert "metrics (test):" in out and "note_nll" in out and f"{meta['metrics']['test']['note_nll']:.4g}" in out
    assert main(["models", "info", "mine", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["origin"] == "user" and info["metrics"]["test"]["chord_nll"] == meta["metrics"]["test"]["chord_nll"]
    assert main(["models", "info", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert "no model named 'nosuch'" in err and "default (shipped)" in err and "mine (user)" in err


def test_render_by_name_from_any_folder(home: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    lib = tmp_path / "lib"
    monkeypatch.setenv("RTGEN_MODELS", str(lib))
    user_model(lib, "mine")
    assert main(["render", "--bars", "2", "--out", "a.mid"]) == 0  # no config here: the packaged one
    assert main(["render", "--model", "mine", "--bars", "2", "--out", "b.mid"]) == 0
    a, b = mido.MidiFile("a.mid"), mido.MidiFile("b.mid")
    notes = [m for t in a.tracks for m in t if m.type == "note_on" and m.velocity > 0]
    assert notes
    assert [str(m) for t in a.tracks for m in t] == [str(m) for t in b.tracks for m in t]  # the same model, seed 0
    capsys.readouterr()
    assert main(["render", "--model", "nosuch", "--out", "c.mid"]) == 2
    assert "mine (user)" in capsys.readouterr().err and not Path("c.mid").exists()


def test_train_out_folders(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from training.cli import output_folders

    lib = tmp_path / "lib"
    monkeypatch.setenv("RTGEN_MODELS", str(lib))
    assert output_folders("mine", None) == (lib / "mine", lib / ".work" / "mine")
    assert output_folders("mine", tmp_path / "w") == (lib / "mine", tmp_path / "w")
    assert output_folders("./mine", None) == (Path("mine"), Path("mine.work"))
    assert output_folders("out/m", None) == (Path("out/m"), Path("out/m.work"))
    Path("here").mkdir()  # an existing folder wins, as for --model
    assert output_folders("here", None) == (Path("here"), Path("here.work"))
    with pytest.raises(ModelError, match="shipped model"):
        output_folders("default", None)


@pytest.mark.slow
def test_train_all_into_the_library_by_name(
    nottingham_dir: Path, home: Path, tmp_path: Path, monkeypatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from training.cli import main as train_main

    lib = tmp_path / "lib"
    monkeypatch.setenv("RTGEN_MODELS", str(lib))
    args = ["all", "--midi-dir", str(nottingham_dir), "--limit", "20", "--epochs", "1", "--tiny"]
    assert train_main([*args, "--out", "default"]) == 2
    assert "shipped model" in capsys.readouterr().err
    assert train_main([*args, "--out", "folk"]) == 0
    assert (lib / "folk" / "meta.json").is_file() and (lib / ".work" / "folk" / "run").is_dir()
    assert not any(Path.cwd().iterdir())  # nothing written where it ran
    capsys.readouterr()
    assert main(["models", "list", "--json"]) == 0
    names = {m["name"]: m for m in json.loads(capsys.readouterr().out)["models"]}
    assert set(names) == {"default", "chorale", "folk"} and names["folk"]["origin"] == "user"
    assert main(["render", "--model", "folk", "--bars", "2", "--out", "f.mid"]) == 0
    assert any(m.type == "note_on" for t in mido.MidiFile("f.mid").tracks for m in t)

"""Configuration loading: every bad key or value names the key and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from rtgen.config import Config, config_from_dict, default_config_path, load_config
from rtgen.contract import note_name, parse_note
from rtgen.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def test_repo_config_toml_loads_and_equals_defaults() -> None:
    cfg = load_config(REPO / "config.toml")
    defaults = config_from_dict({}, REPO)
    assert cfg == defaults
    assert cfg.base_dir == REPO and cfg.model_path == REPO / "exported_models" / "default"
    assert default_config_path() is not None


@pytest.mark.parametrize(
    ("data", "key", "allowed"),
    [
        ({"generation": {"temprature": 1.0}}, "generation.temprature", "temperature"),
        ({"bogus": {}}, "bogus", "generation"),
        ({"parts": {"melody": {"chanel": 2}}}, "parts.melody.chanel", "channel"),
        ({"generation": {"temperature": 9.0}}, "generation.temperature", "0.05..3.0"),
        ({"parts": {"bass": {"channel": 17}}}, "parts.bass.channel", "1..16"),
        ({"generation": {"seed": "one"}}, "generation.seed", "integer"),
        ({"synth": {"reverb": "yes"}}, "synth.reverb", "true or false"),
        ({"generation": {"tempo": True}}, "generation.tempo", "number"),
        ({"generation": {"key": "H major"}}, "generation.key", "'off'"),
        ({"generation": {"key": "D lydian"}}, "generation.key", "dorian"),
        ({"generation": {"time_signature": "4/5"}}, "generation.time_signature", "1, 2, 4, 8, 16, 32"),
        ({"midi": {"backend": "coreaudio"}}, "midi.backend", "jack"),
        ({"daemon": {"mode": "solo"}}, "daemon.mode", "accompany"),
        ({"generation": {"pitch_low": 80, "pitch_high": 60}}, "generation.pitch_low", "pitch_high"),
        ({"parts": "loud"}, "parts", "table"),
        ({"web": {"port": 70000}}, "web.port", "0..65535"),
        ({"web": {"enabled": "yes"}}, "web.enabled", "true or false"),
        ({"input": {"split": "H4"}}, "input.split", "'auto' or a note such as 'C4'"),
        ({"input": {"split": "C10"}}, "input.split", "'auto'"),
        ({"input": {"split": 60}}, "input.split", "string"),
        ({"accompany": {"left_hand": 30.0}}, "accompany.left_hand", "0.0..20.0"),
    ],
)
def test_bad_values_name_the_key_and_what_is_allowed(data: dict, key: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as err:
        config_from_dict(data)
    msg = str(err.value)
    assert key in msg and allowed in msg


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[generation\nseed = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    wrong = tmp_path / "wrong.toml"
    wrong.write_text("[generation]\ndensity = 7\n")
    with pytest.raises(ConfigError, match=r"wrong\.toml: generation\.density must be in range 0\.0\.\.4\.0"):
        load_config(wrong)


def test_partial_tables_keep_defaults_and_paths_resolve(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[parts.chords]\nprogram = 0\n[model]\npath = "models/x"\n[generation]\nkey = "E minor"\n')
    cfg = load_config(f)
    assert cfg.parts.chords.program == 0 and cfg.parts.chords.channel == 2
    assert cfg.model_path == tmp_path / "models" / "x"
    assert cfg.generation.parsed_key() is not None and cfg.generation.parsed_key().name == "E minor"


def test_replace_validates_like_the_file() -> None:
    cfg = Config()
    assert cfg.replace("generation", tempo=90.0).generation.tempo == 90.0
    with pytest.raises(ConfigError, match=r"generation\.top_p must be in range"):
        cfg.replace("generation", top_p=0.0)
    with pytest.raises(ConfigError, match=r"generation\.swing"):
        cfg.replace("generation", swing=0.9)


@pytest.mark.parametrize(
    ("text", "pitch"),
    [("auto", None), ("AUTO", None), ("C4", 60), ("c4", 60), ("F#3", 54), ("Bb2", 46), ("B#3", 60), ("Cb4", 59),
     ("C-1", 0), ("G9", 127)],
)  # fmt: skip
def test_split_names_a_note_middle_c_being_c4(text: str, pitch: int | None) -> None:
    assert config_from_dict({"input": {"split": text}}).input.parsed_split() == pitch
    if pitch is not None:
        assert parse_note(note_name(pitch)) == pitch

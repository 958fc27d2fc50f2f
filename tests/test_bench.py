"""``rtgen bench``: the JSON it writes (a short run; the real figures come from the full 60 s run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rtgen.cli import main


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model_factory import make_random_model

    return make_random_model(tmp_path_factory.mktemp("bench-model") / "random")


def test_bench_writes_the_figures(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    assert main(["bench", "--model", str(model_dir), "--seconds", "2", "--steps", "2000", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    for key in ("inference_us", "schedule_error_us"):
        assert set(data[key]) >= {"p50", "p99", "max", "count"}
        assert 0 <= data[key]["p50"] <= data[key]["p99"] <= data[key]["max"]
    assert data["inference_us"]["count"] == 2000
    assert data["schedule_error_us"]["count"] > 100  # 2 s at 300 BPM: 40 steps of three parts
    assert data["schedule"]["steps"] == 40
    assert data["private_memory_mb"] > 0
    assert 0 < data["cpu_percent"] <= 200
    assert data["machine"]["cpu_count"] >= 1 and data["machine"]["onnxruntime"]

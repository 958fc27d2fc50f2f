"""``rtgen bench``: the JSON it writes (a short run; the real figures come from the full 60 s run)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import require

from rtgen.cli import main


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model_factory import make_random_model

    return make_random_model(tmp_path_factory.mktemp("bench-model") / "random")


def test_bench_writes_the_figures(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    args = ["bench", "--model", str(model_dir), "--seconds", "2", "--steps", "2000", "--reactive-seconds", "0"]
    code = main([*args, "--out", str(out)])
    assert code == 0
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
    assert data["reactive_latency_us"] is None and data["reactive_latency_skipped"]


def _own_bench_server() -> list[str]:
    """Command lines of jackd servers this process's bench started (named after its pid)."""
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=False).stdout
    return [line for line in out.splitlines() if "jackd" in line and f"-n rtgen-bench-{os.getpid()} " in line]


def test_bench_measures_the_reactive_latency_through_jack(model_dir: Path, tmp_path: Path) -> None:
    """A short reactive run on the bench's own JACK server: the figures' shape, and every probe answered.

    No timing threshold here: the target is the bench's (``targets.reactive_latency_ok``), the machine is shared.
    """
    require(shutil.which("jackd") is not None, "jackd (apt-get install jackd2)")
    out = tmp_path / "bench.json"
    args = ["bench", "--model", str(model_dir), "--seconds", "1", "--steps", "200", "--reactive-seconds", "5"]
    assert main([*args, "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    lat = data["reactive_latency_us"]
    assert lat is not None, data.get("reactive_latency_skipped")
    assert set(lat) == {"p50", "p99", "max", "n"}
    assert lat["n"] >= 6  # 5 s at 240 BPM: 10 probes on beats 1 and 3 (a random model may leave a few unanswered)
    assert 0 < lat["p50"] <= lat["p99"] <= lat["max"]
    assert data["jack_period_us"] == pytest.approx(256 / 48000 * 1e6, abs=0.1)
    reactive = data["reactive"]
    assert reactive["jack_mode"] in ("realtime", "sync-nonrealtime")
    assert reactive["probes"] == 10 and reactive["probes"] - reactive["unanswered"] == lat["n"]
    assert reactive["daemon_exit_code"] == 0
    assert set(reactive["jack_xruns"]) == {"driver", "clients"}
    targets = data["targets"]
    assert targets["reactive_latency_p99_us"] == pytest.approx(2 * 256 / 48000 * 1e6 + 1000, abs=0.1)
    assert targets["reactive_latency_ok"] in (True, False)
    assert not _own_bench_server()  # the bench stopped its JACK server

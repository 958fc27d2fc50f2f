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
    args += ["--chorale-seconds", "0"]
    args += ["--grid-seconds", "0", "--cpu-seconds", "0", "--poly-model", "chorale"]
    args += ["--jack-seconds", "0", "--load-seconds", "0", "--swap-seconds", "0", "--web-seconds", "0"]
    code = main([*args, "--json", str(out)])
    assert code == 0
    data = json.loads(out.read_text())
    for key in ("inference_us", "schedule_error_us"):
        assert set(data[key]) >= {"p50", "p99", "max", "count"}
        assert 0 <= data[key]["p50"] <= data[key]["p99"] <= data[key]["max"]
    assert data["inference_us"]["count"] == 2000
    assert data["poly_step_us"]["count"] == 2000 and data["poly_model"].endswith("chorale")
    assert 0 < data["poly_step_us"]["p50"] <= data["poly_step_us"]["p99"]
    duet = data["duet_answer_us"]
    assert duet["start"]["count"] == 20 and duet["frame"]["count"] >= 20 * 4 and duet["phrase_bars"] == 8
    assert duet["listen"]["count"] >= 20 * 30
    assert data["schedule_error_us"]["count"] > 100  # 2 s at 300 BPM: 40 steps of three parts
    assert data["schedule"]["steps"] == 40
    assert data["private_memory_mb"] > 0
    assert 0 < data["cpu_percent"] <= 200
    assert data["machine"]["cpu_count"] >= 1 and data["machine"]["onnxruntime"]
    assert data["reactive_latency_us"] is None and data["reactive_latency_skipped"]
    assert data["chorale_latency_us"] is None and data["chorale_reactive_skipped"]


def _own_bench_server() -> list[str]:
    """Command lines of jackd servers this process's bench started (named after its pid)."""
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=False).stdout
    names = [f"-n rtgen-{kind}-{os.getpid()} " for kind in ("bench", "grid", "load", "web", "cpu")]
    return [line for line in out.splitlines() if "jackd" in line and any(n in line for n in names)]


def test_bench_measures_the_reactive_latency_through_jack(model_dir: Path, tmp_path: Path) -> None:
    """A short reactive run on the bench's own JACK server: the figures' shape, and every probe answered.

    No timing threshold here: the target is the bench's (``targets.reactive_latency_ok``), the machine is shared.
    """
    require(shutil.which("jackd") is not None, "jackd (apt-get install jackd2)")
    out = tmp_path / "bench.json"
    args = ["bench", "--model", str(model_dir), "--seconds", "1", "--steps", "200", "--reactive-seconds", "5"]
    args += ["--chorale-seconds", "0"]
    args += ["--grid-seconds", "0", "--cpu-seconds", "0"]
    args += ["--jack-seconds", "0", "--load-seconds", "0", "--swap-seconds", "0", "--web-seconds", "0"]
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


def test_bench_measures_chorale_modes_latency_through_jack(model_dir: Path, tmp_path: Path) -> None:
    """A short chorale run (the shipped chorale model) on the bench's own JACK server: every probe answered by the
    voices. No timing threshold here: the target is the bench's (``targets.chorale_latency_ok``)."""
    require(shutil.which("jackd") is not None, "jackd (apt-get install jackd2)")
    out = tmp_path / "bench.json"
    args = ["bench", "--model", str(model_dir), "--seconds", "1", "--steps", "200", "--reactive-seconds", "0"]
    args += ["--chorale-seconds", "5", "--grid-seconds", "0", "--cpu-seconds", "0"]
    args += ["--jack-seconds", "0", "--load-seconds", "0", "--swap-seconds", "0", "--web-seconds", "0"]
    assert main([*args, "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    lat = data["chorale_latency_us"]
    assert lat is not None, data.get("chorale_reactive_skipped")
    run = data["chorale_reactive"]
    assert run["probes"] == 10 and run["unanswered"] == 0 and lat["n"] == 10, run
    assert 0 < lat["p50"] <= lat["p99"] <= lat["max"] and run["daemon_exit_code"] == 0
    assert run["model"].endswith("chorale") and run["answer_channels"] == [2]
    assert data["targets"]["chorale_latency_p99_us"] == data["targets"]["reactive_latency_p99_us"]
    assert data["targets"]["chorale_latency_ok"] in (True, False)
    assert not _own_bench_server()


def test_bench_times_the_chords_after_the_beat_for_a_tight_and_a_loose_player(model_dir: Path, tmp_path: Path) -> None:
    """A short accompany-grid phase: both players measured, struck and held apart (no timing thresholds here)."""
    require(shutil.which("jackd") is not None, "jackd (apt-get install jackd2)")
    out = tmp_path / "bench.json"
    args = ["bench", "--model", str(model_dir), "--seconds", "1", "--steps", "200", "--reactive-seconds", "0"]
    args += ["--chorale-seconds", "0"]
    args += [
        "--grid-seconds",
        "12",
        "--cpu-seconds",
        "0",
        "--jack-seconds",
        "0",
        "--load-seconds",
        "0",
        "--swap-seconds",
        "0",
    ]
    assert main([*args, "--web-seconds", "0", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    grid = data["accompany_grid_us"]
    assert grid is not None, data.get("accompany_grid_skipped")
    assert "accompany_grid_fixed_us" not in data  # only with --grid-fixed
    for player in ("tight", "jittered"):
        figures = grid[player]
        assert figures["n"] == figures["struck"]["n"] + figures["held"]["n"] >= 1, figures
        assert 0 < figures["p50"] <= figures["p99"] <= figures["max"]
        # 12 s at 120 BPM after a bar of clock: two lines of the tune, 16 notes; the daemon's JSON stop line was read
        assert figures["notes"] == 16 and 1 <= figures["decided_on_note"] <= figures["reactive_steps"]
    settings = data["accompany_grid"]
    assert settings["tune"] == "Old Hundredth" and settings["jitter_ms"] == 15.0
    assert {run["daemon_exit_code"] for run in settings["runs"].values()} == {0}
    assert set(settings["runs"]) == {"tight_adaptive", "jittered_adaptive"}
    targets = data["targets"]
    assert targets["accompany_grid_tight_p99_us"] == targets["reactive_latency_p99_us"]
    assert targets["accompany_grid_tight_ok"] in (True, False)
    assert not _own_bench_server()


def test_the_grid_players_schedule_is_the_tune_on_the_clock() -> None:
    from rtgen.bench.reactive import OLD_HUNDREDTH, _player_schedule

    tight, struck = _player_schedule(4.0, 120.0, 0.0, seed=1)  # a bar of clock, then 4 s of the tune
    ticks = [t for t, m in tight if m == [0xF8]]
    assert len(ticks) == 12 * 24 and ticks[1] - ticks[0] == round(60e9 / (120 * 24))
    ons = [(t, m[1]) for t, m in tight if m[0] == 0x90]
    assert [p for _, p in ons] == [p for p, _ in OLD_HUNDREDTH[: len(ons)]]
    assert [t for t, _ in ons][:3] == [ticks[96], ticks[96 + 48], ticks[96 + 72]]  # a half note, then quarters
    assert sorted(struck)[:3] == [16, 24, 28]
    loose, _ = _player_schedule(4.0, 120.0, 15e6, seed=1)
    offsets = [t - tt for (t, _), (tt, _) in zip([(t, m) for t, m in loose if m[0] == 0x90], ons, strict=True)]
    assert max(abs(o) for o in offsets) <= 15_000_000 and len(set(offsets)) == len(offsets)
    assert [t for t, _ in loose] == sorted(t for t, _ in loose)


def test_grid_deviation_is_the_jitter_around_the_best_fitting_grid() -> None:
    import numpy as np

    from rtgen.bench.measure import grid_deviation_us

    rate, step_us = 48_000, 125_000.0
    k = np.array([0, 1, 2, 4, 8, 9, 13, 20])
    jitter_us = np.array([0, 300, -300, 0, 300, -300, 0, 0])
    # a phase of 7 ms and a clock 0.01 % fast are fitted away; what is left is the jitter
    frames = np.round((7000 + k * step_us * 1.0001 + jitter_us) * rate / 1e6).astype(np.int64)
    dev = grid_deviation_us(frames, rate, step_us)
    assert dev.max() == pytest.approx(np.abs(jitter_us - jitter_us.mean()).max(), abs=60)
    assert dev.max() < 400
    on_grid = np.round((k * step_us) * rate / 1e6).astype(np.int64)
    assert grid_deviation_us(on_grid, rate, step_us).max() < 21  # frame rounding only (1 frame = 20.8 us)


def test_bench_runs_the_daemon_through_jack_and_under_osc_load(model_dir: Path, tmp_path: Path) -> None:
    """Short JACK-grid and OSC-load phases: every figure present and sane (no timing thresholds here)."""
    require(shutil.which("jackd") is not None, "jackd (apt-get install jackd2)")
    out = tmp_path / "bench.json"
    args = ["bench", "--model", str(model_dir), "--seconds", "1", "--steps", "200", "--reactive-seconds", "0"]
    args += ["--chorale-seconds", "0"]
    args += ["--grid-seconds", "0", "--cpu-seconds", "0"]
    args += ["--jack-seconds", "3", "--load-seconds", "3", "--swap-seconds", "0", "--web-seconds", "0", "--no-busy"]
    assert main([*args, "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    grid = data["jack_grid_dev_us"]
    assert grid is not None, data.get("jack_grid_skipped")
    assert grid["count"] >= 3 and 0 <= grid["p50"] <= grid["p99"] <= grid["max"]
    assert data["jack_grid"]["daemon_exit_code"] == 0
    runs = data["jack_grid"]["first_note_runs_ms"]
    assert len(runs) == 5 and all(0 < ms < 60_000 for ms in runs)
    assert data["first_note_ms"] == round(sorted(runs)[2], 1)  # the median start
    assert 0 < data["jack_grid"]["cpu_percent"] < 100
    assert data["cpu_percent_120bpm"] is None and data["cpu_skipped"] == "--cpu-seconds 0"
    assert data["uss_mb"] > 10
    load = data["osc_load"]
    assert load is not None, data.get("osc_load_skipped")
    assert load["osc_sent"] >= 1000 and load["status_replies"] > 0 and load["feedback_messages"] > 0
    assert load["osc_errors"] == 0  # every message of the load is well-formed
    assert load["steps"] > 0 and load["daemon_exit_code"] == 0
    assert set(data["targets"]) >= {"cpu_ok", "uss_ok", "first_note_ok", "jack_grid_dev_ok", "osc_load_late_steps_ok"}
    assert not _own_bench_server()


def test_bench_plays_with_the_web_page_closed_fed_and_open_in_chromium(model_dir: Path, tmp_path: Path) -> None:
    """A short web phase: its three windows measured in one daemon run (no timing thresholds here)."""
    require(shutil.which("jackd") is not None, "jackd (apt-get install jackd2)")
    require(shutil.which("chromium") is not None, "chromium (apt-get install chromium)")
    out = tmp_path / "bench.json"
    args = ["bench", "--model", str(model_dir), "--seconds", "1", "--steps", "200", "--reactive-seconds", "0"]
    args += ["--chorale-seconds", "0"]
    args += ["--grid-seconds", "0", "--cpu-seconds", "0"]
    args += ["--jack-seconds", "0", "--load-seconds", "0", "--swap-seconds", "0", "--web-seconds", "3", "--no-busy"]
    assert main([*args, "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    web = data["web_page"]
    assert web is not None, data.get("web_page_skipped")
    assert web["daemon_exit_code"] == 0 and "browser_skipped" not in web
    for name in ("none", "socket", "browser"):
        window = web[name]
        assert window["steps"] >= 3 * 400 / 60 * 4 * 0.9, (name, window)  # 3 s of sixteenths at 400 BPM
        sched = window["schedule_error_us"]
        assert sched["count"] >= window["steps"] and 0 <= sched["p50"] <= sched["p99"] <= sched["max"], window
        assert window["jack_grid_dev_us"]["count"] >= 3 and window["realtime"] in (True, False)
    assert web["socket"]["feed_messages"] >= 3 * 10, web["socket"]  # status ten times a second, notes and beats
    assert web["browser"]["browser_cpu_percent"] > 0, web["browser"]  # the page ran (and drew) in Chromium
    assert data["targets"]["web_page_ok"] in (True, False)
    assert not _own_bench_server()


def test_the_cpu_phase_runs_the_daemon_as_a_user_starts_it_idle_and_playing(model_dir: Path) -> None:
    """One short window of each at one tempo: the figures present and sane (no thresholds: rtgen bench's job)."""
    require(shutil.which("jackd") is not None, "jackd (apt-get install jackd2)")
    from rtgen.bench.cpu import bench_cpu

    data = bench_cpu(model_dir, window_s=1.0, windows=1, tempos=(120.0,))
    run = data["cpu"]["by_tempo"]["120"]
    assert run["daemon_exit_code"] == 0
    assert len(run["idle_windows"]) == len(run["playing_windows"]) == 1
    assert 0 < run["idle"] < 100 and 0 < run["playing"] < 100
    assert data["cpu_percent_120bpm"] == run["idle"]
    assert not _own_bench_server()

"""``rtgen run --clock link`` against a second, real Ableton Link peer, in a network namespace of its own.

Link finds its peers by multicast on every interface, and these machines must send nothing beyond
loopback: the whole session (JACK server, the peer, the daemon, the recorder) runs in
``tests/link_scenario.py`` under ``unshare --net`` with loopback alone (``ip link set lo up; ip link
set lo multicast on; ip route add 224.0.0.0/4 dev lo``). This module judges the JSON it writes.

Every time compared is on Link's shared clock (µs): the peer's beat times, and rtgen's MIDI events at
their JACK frame times. rtmidi's JACK backend writes a message at the start of the next period, so an
onset reaches JACK 0 to 1 period (5.33 ms) after rtgen sent it: that period is the stated transport
allowance on top of the 2 ms.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import REPO, require, run_in_namespace

from rtgen.bench.harness import is_note_off, sounding_notes
from rtgen.timing.link import ClockMap

NAMESPACE_SETUP = "ip link set lo up && ip link set lo multicast on && ip route add 224.0.0.0/4 dev lo"
OFFSET_US = 2000.0  # rtgen's beat onsets against the peer's beats
LEAD_US = 4000.0  # rtgen.timing.link.LEAD_NS: a stop is seen at the capture before the next step at the latest
FIRST_BPM, SECOND_BPM = 120.0, 97.0  # the scenario's tempi (tests/link_scenario.py)
MATCH_US = 30_000.0  # an onset this close to a beat belongs to it (steps are 125 ms or more apart here)


def _run_scenario(scenario: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run ``tests/link_scenario.py SCENARIO`` in a fresh network namespace; its result."""
    require(shutil.which("jackd") is not None, "jackd (apt-get install jackd2)")
    require(importlib.util.find_spec("link") is not None, "the Link binding (pip install linkpython-extern)")
    out = tmp_path_factory.mktemp("link") / f"{scenario}.json"
    script = REPO / "tests" / "link_scenario.py"
    proc = run_in_namespace(NAMESPACE_SETUP, sys.executable, script, out, scenario)
    assert proc.returncode == 0 and out.exists(), f"scenario failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    result: dict[str, Any] = json.loads(out.read_text())
    assert not result["errors"], f"{result['errors']}\ndaemon log:\n{result['daemon_log']}"
    return result


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory, shipped_model_dir: Path) -> dict[str, Any]:
    """The peer leads: it starts the session, changes the tempo to 97 BPM, stops; then rtgen proposes 133."""
    return _run_scenario("follow", tmp_path_factory)


@pytest.fixture(scope="module")
def led(tmp_path_factory: pytest.TempPathFactory, shipped_model_dir: Path) -> dict[str, Any]:
    """rtgen leads: ``/rtgen/play`` and ``/rtgen/stop`` over OSC start and stop the session."""
    return _run_scenario("lead", tmp_path_factory)


def _note_ons(result: dict[str, Any]) -> list[tuple[float, list[int]]]:
    return [(t, m) for t, m in result["events"] if len(m) == 3 and m[0] & 0xF0 == 0x90 and m[2] > 0]


def _near_xrun(result: dict[str, Any], t_us: float) -> bool:
    """The server reported an xrun in the 100 ms before ``t_us`` or the 200 ms after (its notice comes late)."""
    return any(-100_000 <= x - t_us <= 200_000 for x in result.get("xruns_us", []))


def _beat_offsets(
    result: dict[str, Any], since_us: float, until_us: float
) -> tuple[list[int], np.ndarray, list[float]]:
    """The peer's beats in [since, until) without an rtgen onset, each matched onset's offset (µs), and the
    matched beats' times."""
    onsets = np.array([t for t, _ in _note_ons(result)])
    missed: list[int] = []
    offsets: list[float] = []
    times: list[float] = []
    for beat, t in result["beats"]:
        if not since_us <= t < until_us:
            continue
        d = onsets - t
        i = int(np.argmin(np.abs(d)))
        if abs(d[i]) > MATCH_US:
            missed.append(beat)
        else:
            offsets.append(float(d[i]))
            times.append(float(t))
    return missed, np.array(offsets), times


@pytest.mark.jack
def test_joins_and_follows_the_peer_beat_for_beat(session: dict[str, Any]) -> None:
    """From the first bar line of the peer's start to its stop, every beat has an rtgen onset on it: within
    2 ms plus the JACK period, at 120 BPM and at 97 BPM from one bar after the peer's change."""
    period = session["jack_period_us"]
    first_bar, change, stop = session["first_bar_us"], session["tempo_change_us"], session["stop_us"]
    bar_97 = 4 * 60e6 / SECOND_BPM
    missed_120, off_120, at_120 = _beat_offsets(session, first_bar - MATCH_US, change)
    missed_97, off_97, at_97 = _beat_offsets(session, change + bar_97, stop)
    # a beat the JACK server itself ran late on (an xrun: the dummy driver's thread or a client was held off
    # by the machine) is no measure of rtgen, which cannot send into a cycle that does not run; a few are
    # excused and reported, every other beat must be on time
    beat_at = dict(session["beats"])
    excused = [b for b in missed_120 + missed_97 if _near_xrun(session, beat_at[b])]
    missed_120 = [b for b in missed_120 if b not in excused]
    missed_97 = [b for b in missed_97 if b not in excused]
    offsets = np.concatenate([off_120, off_97])
    report = (
        f"offsets µs: median {np.median(offsets):.0f}, p99 {np.percentile(offsets, 99):.0f}, "
        f"min {offsets.min():.0f}, max {offsets.max():.0f} over {offsets.size} beats (JACK period {period:.0f}); "
        # each onset puts rtgen's send within (offset - period, offset]: a steady error lies in this window
        f"a steady send error lies in ({offsets.max() - period:.0f}, {offsets.min():.0f}]; "
        f"xruns {session['jack_xruns']}"
    )
    print(report)
    print(f"beats excused by an xrun near them: {excused}")
    assert len(excused) <= 2, f"the JACK server ran late on beats {excused}: {report}"
    assert not missed_120 and not missed_97, f"beats without an onset: {missed_120} {missed_97}; {report}"
    assert off_120.size >= 8 and off_97.size >= 12 - len(excused), report
    # where an onset lands: rtmidi hands a message to the JACK cycle whose output callback runs next, at frame 0
    # of that cycle. Sent before the cycle starts, it is stamped up to a period after the send; sent in the
    # moment between the cycle's start and rtmidi's callback in it (late in a cycle on a loaded machine), it is
    # stamped at the cycle's start, up to a period before the send. So an on-time send puts the onset within a
    # period either side of the beat, plus rtgen's own error (2 ms)
    low, high = -OFFSET_US - period, OFFSET_US + period
    onset_at = [t + d for t, d in zip(at_120 + at_97, offsets, strict=True)]
    outside = (offsets < low) | (offsets > high)
    bad = np.flatnonzero(outside & ~np.array([_near_xrun(session, t) for t in onset_at], dtype=bool))
    late_excused = int(outside.sum()) - bad.size
    assert len(excused) + late_excused <= 2, f"the JACK server ran late on {late_excused} more beats: {report}"
    where = [f"{'120' if i < off_120.size else '97'}#{i if i < off_120.size else i - off_120.size}" for i in bad]
    assert bad.size == 0, f"{report}; outside ({low:.0f}, {high:.0f}): {offsets[bad].round()} at beats {where}"
    # the tempo really is 97: consecutive onsets on the beats one bar after the change are 618.6 ms apart
    # (gaps across an excused beat span two beats)
    beats_97 = np.array(sorted(t + d for t, d in zip(at_97, off_97, strict=True)))
    gaps = np.diff(beats_97)
    beats_apart = np.round(gaps / (60e6 / SECOND_BPM))
    assert np.all(np.abs(gaps - beats_apart * 60e6 / SECOND_BPM) <= 2 * period + 2 * OFFSET_US), gaps
    assert np.all(beats_apart >= 1) and (beats_apart > 1).sum() <= len(excused), gaps
    assert session["status_playing"]["tempo"] == pytest.approx(SECOND_BPM, abs=0.01)
    # rtgen's own recording keeps the session's tempo map, so its bars line up in a DAW
    tempi = session["daemon_record_tempi"]
    assert tempi is not None and tempi[0] == pytest.approx(FIRST_BPM, abs=0.01), tempi
    assert any(abs(t - SECOND_BPM) <= 0.01 for t in tempi[1:]), tempi
    # ... and its bar 1 is the session's first bar line: every note on the file's own 16th grid (issue 19 part 7)
    recorded = session["daemon_record_onsets"]
    assert recorded is not None and recorded[1], recorded
    tpb, onsets = recorded[0], np.array(recorded[1])
    step_ticks = tpb // 4
    off_grid = (onsets + step_ticks // 2) % step_ticks - step_ticks // 2
    print(
        f"rtgen's recording: first note-on at tick {onsets[0]}, off the 16th grid by {off_grid.min()}..{off_grid.max()}"
    )
    assert np.abs(off_grid).max() <= 8, off_grid  # the tempo map's tolerance (1/64 beat: 7.5 ticks)
    assert session["status_playing"]["link"]["peers"] == 1


def _own(result: dict[str, Any]) -> str:
    """What rtgen's ``--record`` file left sounding (its sends, before the JACK transport)."""
    own = result["daemon_record_sounding"]
    return "no recording" if own is None else f"{own or 'nothing'}; daemon log:\n{result['daemon_log'][-2000:]}"


@pytest.mark.jack
def test_nothing_plays_before_the_session_transport(session: dict[str, Any]) -> None:
    """rtgen joined the session well before the peer started it, and stayed silent until its first bar line."""
    first_onset = min(t for t, _ in _note_ons(session))
    assert first_onset >= session["first_bar_us"] - OFFSET_US, (first_onset - session["first_bar_us"]) / 1000


@pytest.mark.jack
def test_peer_stop_stops_rtgen_with_every_note_released(session: dict[str, Any]) -> None:
    """The peer stops the session: no note-on after it, and every note-on rtgen sent has its own note-off
    (all-notes-off counts for nothing), sent within a step of the stop."""
    period = session["jack_period_us"]
    stop = session["stop_us"]
    step_97 = 60e6 / (SECOND_BPM * 4)
    late_ons = [(t - stop) / 1000 for t, _ in _note_ons(session) if t > stop + LEAD_US + OFFSET_US + period]
    assert not late_ons, f"note-ons after the peer's stop (ms after it): {late_ons}"
    before_shutdown = [(t, tuple(m)) for t, m in session["events"] if t <= stop + 1_400_000]
    left = sounding_notes([m for _, m in before_shutdown])
    assert not left, f"{left} left sounding after the peer's stop; in rtgen's own recording: {_own(session)}"
    offs = [t for t, m in before_shutdown if is_note_off(m)]
    assert offs and max(offs) <= stop + step_97 + LEAD_US + OFFSET_US + period, (max(offs) - stop) / 1000
    assert session["status_stopped"]["playing"] is False
    assert session["status_stopped"]["sounding"] == 0


@pytest.mark.jack
def test_tempo_over_osc_is_proposed_to_the_session(session: dict[str, Any]) -> None:
    """``/rtgen/tempo 133`` with ``--clock link``: the peer's session moves to 133 BPM."""
    seen = session["proposed_tempo_seen_ms"]
    assert seen is not None and seen < 1000, seen
    assert session["daemon_exit"] == 0, session["daemon_log"]
    assert "Traceback" not in session["daemon_log"], session["daemon_log"]


@pytest.mark.jack
def test_play_and_stop_over_osc_start_and_stop_the_session(led: dict[str, Any]) -> None:
    """With start/stop sync, ``/rtgen/play`` starts the session's transport (in phase, on a bar line, where
    rtgen's first onset falls) and ``/rtgen/stop`` stops it, every note released by its own note-off."""
    period = led["jack_period_us"]
    onsets = [t for t, _ in _note_ons(led)]
    assert onsets, led["daemon_log"]
    assert led["play_seen_us"] - led["play_sent_us"] < 500_000
    first = min(onsets) - led["first_bar_us"]
    assert -OFFSET_US <= first <= OFFSET_US + period, f"first onset {first / 1000:.2f} ms from the bar line"
    assert led["stop_seen_us"] - led["stop_sent_us"] < 500_000
    stop = led["stop_us"]
    late_ons = [(t - stop) / 1000 for t in onsets if t > stop + OFFSET_US + period]
    assert not late_ons, f"note-ons after /rtgen/stop (ms after it): {late_ons}"
    before_shutdown = [(t, tuple(m)) for t, m in led["events"] if t <= stop + 900_000]
    left = sounding_notes([m for _, m in before_shutdown])
    assert not left, f"{left} left sounding after /rtgen/stop; in rtgen's own recording: {_own(led)}"
    # the stop may fall where every part rests: then there is nothing to release, and nothing to time
    held = sounding_notes([m for t, m in before_shutdown if t <= stop])
    offs = [t for t, m in before_shutdown if is_note_off(m) and t > stop]
    print(f"{len(held)} notes sounding at the stop; their note-offs came within "
          f"{(max(offs) - stop) / 1000 if offs else 0:.2f} ms")  # fmt: skip
    assert not held or (offs and max(offs) <= stop + 50_000 + period), (held, [(t - stop) / 1000 for t in offs])
    status = led["status_stopped"]
    assert status["playing"] is False and status["sounding"] == 0 and status["link"]["playing"] is False
    assert led["daemon_exit"] == 0, led["daemon_log"]
    # stopped, rtgen listens for the session's start every 5 ms without spinning up to each look
    print(f"first onset {first / 1000:.2f} ms after the bar line; CPU while stopped {led['stopped_cpu_percent']:.1f} %")
    assert led["stopped_cpu_percent"] < 15, led["stopped_cpu_percent"]


def test_clock_map_puts_perf_counter_on_the_raw_monotonic_clock() -> None:
    """Link's clock on Linux is CLOCK_MONOTONIC_RAW in µs, ``perf_counter`` is CLOCK_MONOTONIC: another base and
    another rate. The map, measured again and again, puts one on the other within a few µs."""
    if not sys.platform.startswith("linux"):
        pytest.skip("Link's clock is CLOCK_MONOTONIC_RAW on Linux only")

    def raw_us() -> int:
        return time.clock_gettime_ns(time.CLOCK_MONOTONIC_RAW) // 1000

    cmap = ClockMap(raw_us, time.perf_counter_ns, tries=3)
    errors = []
    for _ in range(200):
        cmap.measure()
        perf = time.perf_counter_ns()
        raw = time.clock_gettime_ns(time.CLOCK_MONOTONIC_RAW)
        errors.append(cmap.to_link_us(perf) - raw / 1000)
        assert abs(cmap.to_perf_ns(cmap.to_link_us(perf)) - perf) <= 1000  # µs rounding only
    errors.sort()
    assert abs(errors[len(errors) // 2]) < 5, errors[len(errors) // 2]
    assert cmap.width_ns < 50_000


def test_clock_map_keeps_its_offset_when_every_sandwich_was_preempted() -> None:
    """A sandwich the daemon lost the CPU in is wide and its offset off by up to half of it: a recent narrow
    measurement is kept instead (for a second, well inside what NTP's slew can move the two clocks apart)."""
    perf = iter([10_000, 11_000, 12_000, 13_000])  # two sandwiches of 1 µs
    perf2 = [2_000_000, 40_000_000, 40_001_000, 82_000_000]  # 38 and 42 ms: preempted in both
    micros = iter([1_000_010, 1_000_012, 1_002_000, 1_040_000, 3_002_000, 3_040_000])
    cmap = ClockMap(lambda: next(micros), lambda: next(perf), tries=2)
    good = 1_000_010_500 - 10_500
    assert (cmap.offset_ns, cmap.width_ns, cmap.rejected) == (good, 1_000, 0)
    perf = iter(perf2)
    assert cmap.measure() == good and (cmap.width_ns, cmap.rejected) == (1_000, 1)
    perf = iter([t + 2_000_000_000 for t in perf2])  # two seconds on: a wide offset beats an old one
    assert cmap.measure() == 3_002_000_500 - 2_021_000_000 and (cmap.width_ns, cmap.rejected) == (38_000_000, 1)

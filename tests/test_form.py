"""Song form: ``rtgen render --form`` (bars, markers, memory, the cadence) and ``/rtgen/section`` live.

The musical claims (returns resemble each other more than different sections do, the piece ends on the
tonic) are checked on renders of the shipped model; the mechanics (exact replay without variation, the
cue landing on the next phrase boundary) on a random model and the real live loop with a fake clock; the
live path end to end on the daemon through JACK and UDP OSC.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import mido
import pytest
from conftest import serve_jack
from test_scheduler import RecordingSink, sounding

from rtgen import contract as ct
from rtgen.arrange.form import FormSection, dominant_chord, parse_form, section_similarity, tonic_chord
from rtgen.bench.harness import note_ons, sounding_notes
from rtgen.cli import main
from rtgen.config import Config, load_config
from rtgen.io.scheduler import Scheduler
from rtgen.live.commands import SetSection
from rtgen.live.loop import LiveLoop
from rtgen.offline.render import TICKS_PER_STEP, render_steps
from rtgen.timing.clock import FakeTime, StepClock

FORM = "intro:4 A:8 A:8 B:8 A:8 outro:4"
SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def random_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model_factory import make_random_model

    return make_random_model(tmp_path_factory.mktemp("models") / "random", hidden=32, layers=1, seed=4)


@pytest.fixture(scope="module")
def shipped(shipped_model_dir: Path) -> Any:
    from rtgen.generation.model import Model

    return Model.load(shipped_model_dir)


def shipped_config() -> Config:
    return load_config(Path(__file__).resolve().parent.parent / "config.toml")


# --- parsing ---------------------------------------------------------------------------------------------------
def test_parse_form_reads_name_bars_in_order_and_names_what_is_wrong() -> None:
    assert parse_form(" intro:4 A:8,B:2  outro:1 ") == (
        FormSection("intro", 4),
        FormSection("A", 8),
        FormSection("B", 2),
        FormSection("outro", 1),
    )
    for bad, words in (
        ("", "empty"),
        ("A", "not name:bars"),
        (":4", "not name:bars"),
        ("A:0", "1..256"),
        ("A:x", "1..256"),
        ("A:300", "1..256"),
        ("vérse:4", "letters, digits"),
        (" ".join(["A:256"] * 17), "at most 4096"),
    ):
        with pytest.raises(ValueError, match=words):
            parse_form(bad)


# --- offline: the shipped model ---------------------------------------------------------------------------------
def meta_events(mid: mido.MidiFile) -> list[tuple[int, mido.MetaMessage]]:
    now, out = 0, []
    for msg in mid.tracks[0]:
        now += msg.time
        if msg.is_meta:
            out.append((now, msg))
    return out


def test_form_render_has_the_asked_bars_markers_and_a_note_off_for_every_note_on(
    shipped_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "form.mid"
    assert main(["render", "--model", str(shipped_model_dir), "--out", str(out), "--form", FORM, "--seed", "4"]) == 0
    summary = capsys.readouterr().out
    assert "rendered 40 bars in 6 sections" in summary
    mid = mido.MidiFile(str(out))
    bar = 16 * TICKS_PER_STEP
    markers = [(t, m.text) for t, m in meta_events(mid) if m.type == "marker"]
    assert markers == [
        (0, "intro"),
        (4 * bar, "A"),
        (12 * bar, "A"),
        (20 * bar, "B"),
        (28 * bar, "A"),
        (36 * bar, "outro"),
    ]
    ends = {sum(m.time for m in track) for track in mid.tracks}
    assert min(ends) >= 40 * bar and max(ends) <= 40 * bar + TICKS_PER_STEP  # the asked bars, and only those
    keys = [m.key for _, m in meta_events(mid) if m.type == "key_signature"]
    assert len(keys) == 1  # the piece's key (estimated from its first section) is written
    for track in mid.tracks[1:]:  # every note-on has its own note-off (a real one, per note)
        messages = [tuple(m.bytes()) for m in track if m.type in ("note_on", "note_off")]
        assert note_ons(messages), track.name
        assert sounding_notes(messages) == set(), track.name


def test_returns_of_a_section_resemble_each_other_more_than_different_sections(shipped: Any) -> None:
    cfg = shipped_config()
    form = parse_form(FORM)
    for seed in SEEDS:
        r = render_steps(shipped, cfg, 0, seed, form=form)
        assert r.params.key is not None
        rep = section_similarity(r.steps, form, r.params.key)
        assert rep.same_pairs == 3 and rep.different_pairs == 7
        assert rep.same_melody is not None and rep.different_melody is not None
        assert rep.same_chords is not None and rep.different_chords is not None
        assert rep.same_melody > rep.different_melody + 0.2, (seed, rep)
        assert rep.same_chords > rep.different_chords + 0.2, (seed, rep)
        assert rep.same_melody < 1.0, (seed, rep)  # recognisable, not a copy
        # and no two returns are copies of each other: their varied bars differ
        spans = [(lo, hi) for i, (lo, hi) in enumerate(zip(*_starts(r.sections, len(r.steps)), strict=True))
                 if r.sections[i][1] == "A"]  # fmt: skip
        melodies = [tuple(s.melody_token for s in r.steps[lo:hi]) for lo, hi in spans]
        assert len(set(melodies)) == len(melodies), seed


def _starts(sections: list[tuple[int, str]], n: int) -> tuple[list[int], list[int]]:
    lo = [i for i, _ in sections]
    return lo, [*lo[1:], n]


@pytest.mark.parametrize("key", [None, "D minor"])
def test_the_piece_ends_on_a_cadence_to_the_tonic(shipped: Any, key: str | None) -> None:
    cfg = shipped_config()
    if key is not None:
        cfg = cfg.replace("generation", key=key)
    form = parse_form(FORM)
    for seed in SEEDS:
        r = render_steps(shipped, cfg, 0, seed, form=form)
        k = r.params.key
        assert k is not None and (key is None or k == ct.Key.parse(key))
        rep = section_similarity(r.steps, form, k)
        assert rep.final_is_tonic and rep.final_note_is_tonic, rep
        last_bar = [s for s in r.steps if s.bar == 39]
        before = [s for s in r.steps if s.bar == 38]
        assert before[0].chord_now == dominant_chord(k) and last_bar[0].chord_now == tonic_chord(k)
        assert last_bar[0].pitch is not None and last_bar[0].pitch % 12 == k.tonic
        assert all(s.chord_now == tonic_chord(k) for s in last_bar)


def test_the_intro_sets_up_the_key(shipped: Any) -> None:
    cfg = shipped_config()
    form = parse_form(FORM)
    r = render_steps(shipped, cfg, 0, 7, form=form)
    k = r.params.key
    assert k is not None
    downbeats = [s.chord_now for s in r.steps if s.bar < 4 and s.position == 0]
    assert downbeats == [tonic_chord(k)] * 3 + [dominant_chord(k)]  # tonic pedal, the dominant leading in
    intro = [s.pitch for s in r.steps if s.bar < 4 and s.pitch is not None]
    assert intro and all(p % 12 in k.pitch_classes for p in intro)
    body = [s.pitch for s in r.steps if 4 <= s.bar < 36 and s.pitch is not None]
    assert len(intro) / 4 < 0.6 * len(body) / 32  # a sparse melody over the pedal


# --- mechanics: a random model --------------------------------------------------------------------------------
def test_without_variation_a_return_is_the_first_hearing_again(random_model: Path) -> None:
    from rtgen.generation.model import Model

    model = Model.load(random_model)
    form = parse_form("A:4 B:4 A:4 A:4 B:4 end:2")
    exact = replace(Config(), form=replace(Config().form, vary=0.0))
    r = render_steps(model, exact, 0, 3, form=form)
    assert r.params.key is not None
    rep = section_similarity(r.steps, form, r.params.key)
    assert rep.same_melody == 1.0 and rep.same_chords == 1.0
    varied = render_steps(model, Config(), 0, 3, form=form)
    rep2 = section_similarity(varied.steps, form, varied.params.key or r.params.key)
    assert rep2.same_chords == 1.0 and rep2.same_melody is not None and rep2.same_melody < 1.0


# --- live: the real live loop with a fake clock --------------------------------------------------------------------
class FeedbackLog:
    """Stands in for the OSC sender: keeps the section messages the loop sends to subscribers."""

    subscribers = (("127.0.0.1", 9),)

    def __init__(self) -> None:
        self.sections: list[tuple[str, int]] = []

    def section(self, name: str, bar: int) -> None:
        self.sections.append((name, bar))

    def beat(self, bar: int, beat: int) -> None:
        pass

    def chord(self, name: str) -> None:
        pass

    def note(self, part: str, pitch: int, velocity: int) -> None:
        pass

    def error(self, text: str) -> None:
        raise AssertionError(text)


def live_loop(model_dir: Path, ft: FakeTime, sink: RecordingSink, cue: str = "phrase") -> tuple[LiveLoop, Any]:
    from rtgen.arrange.voicing import Voicer
    from rtgen.generation.engine import Engine, Params
    from rtgen.generation.model import Model

    cfg = Config()
    cfg = cfg.replace("form", cue=cue)
    params = Params()
    fb = FeedbackLog()
    loop = LiveLoop(
        Engine(Model.load(model_dir), params, seed=5),
        Voicer(cfg.parts, seed=5),
        Scheduler([sink], now_ns=ft.now_ns),
        StepClock(300.0, time_source=ft),
        params,
        cfg.parts,
        feedback=fb,  # type: ignore[arg-type]
        config=cfg,
    )
    return loop, fb


BAR_NS = 16 * 50_000_000  # 300 BPM, sixteenths


def test_a_live_section_cue_lands_on_the_next_phrase_boundary_and_a_return_replays(random_model: Path) -> None:
    ft = FakeTime()
    sink = RecordingSink()
    loop, fb = live_loop(random_model, ft, sink)
    cues = [(int(1.3 * BAR_NS), "A"), (int(10.5 * BAR_NS), "B"), (int(17.2 * BAR_NS), "A")]
    cued: list[tuple[int, Any]] = []

    def hook(t: int, m: tuple[int, ...]) -> None:
        while cues and t >= cues[0][0]:
            _, name = cues.pop(0)
            loop.command(SetSection(name))
            cued.append((loop.bar, name))

    sink.hook = hook
    loop.run(33 * BAR_NS / 1e9, start_ns=0)
    assert [name for _, name in cued] == ["A", "B", "A"]
    # each lands on the first phrase boundary (bar 8k, 0-based) after the bar playing when it was cued
    expected = [(name, (bar // ct.PHRASE_BARS + 1) * ct.PHRASE_BARS + 1) for bar, name in cued]
    assert fb.sections == expected == [("A", 9), ("B", 17), ("A", 25)]
    assert loop.section == "A" and loop.section_bar == 24
    assert sounding(sink.events) == set()  # every note-on got its own note-off (CC 123 counts for nothing)

    def melody_bar(bar: int) -> list[tuple[int, int]]:
        lo = bar * BAR_NS
        return [(t - lo, m[1]) for t, m in sink.events if lo <= t < lo + BAR_NS and m[0] == 0x90 and m[2] > 0]

    # the return's first bar (never varied) replays the first hearing's: same notes at the same times
    assert melody_bar(8) and melody_bar(24) == melody_bar(8)
    assert melody_bar(16) != melody_bar(8)


def test_with_cue_bar_a_section_starts_at_the_next_bar_line(random_model: Path) -> None:
    ft = FakeTime()
    sink = RecordingSink()
    loop, fb = live_loop(random_model, ft, sink, cue="bar")
    sent: list[int] = []

    def hook(t: int, m: tuple[int, ...]) -> None:
        if t >= int(2.4 * BAR_NS) and not sent:
            sent.append(loop.bar)
            loop.command(SetSection("verse"))

    sink.hook = hook
    loop.run(5 * BAR_NS / 1e9, start_ns=0)
    assert sent == [2] and fb.sections == [("verse", 4)]
    assert sounding(sink.events) == set()


# --- live end to end: the daemon through JACK, steered over UDP OSC --------------------------------------------
_servers = itertools.count(1)


@pytest.fixture
def async_jack() -> Iterator[str]:
    """A JACK server of this test's own, asynchronous (as tests/test_playalong.py runs daemons)."""
    yield from serve_jack(f"rtgen-form-{os.getpid()}-{next(_servers)}", sync=False)


@pytest.mark.jack
def test_osc_section_changes_on_the_next_phrase_boundary_with_no_stuck_note(
    async_jack: str, shipped_model_dir: Path, tmp_path: Path
) -> None:
    from test_daemon import Daemon, Peer

    d = Daemon(async_jack, shipped_model_dir, tmp_path, tempo=300.0, listen=False)
    peer = None
    try:
        rec = d.record()
        peer = Peer(d.osc_port)
        peer.send("/rtgen/subscribe", "127.0.0.1", peer.port)

        def status() -> dict[str, Any]:
            seen = len(peer.wait_for("/rtgen/status", timeout=0))
            peer.send("/rtgen/status")
            got = peer.wait_for("/rtgen/status", timeout=5, count=seen + 1)
            assert len(got) > seen, d.output()
            return dict(json.loads(got[-1][0]))

        assert status()["section"] is None
        peer.send("/rtgen/section", "bad name!")
        assert peer.wait_for("/rtgen/error", timeout=5), d.output()
        for n, name in enumerate(("verse", "chorus")):
            peer.send("/rtgen/section", name)
            deadline = time.monotonic() + 5
            while (st := status())["section_cued"] != name and time.monotonic() < deadline:
                time.sleep(0.02)  # the command reaches the real-time thread at its next wake-up
            assert st["section_cued"] == name, st
            bar_then, cued_bar = st["bar"], st["section_cued_bar"]
            assert (cued_bar - 1) % ct.PHRASE_BARS == 0 and bar_then < cued_bar <= bar_then + ct.PHRASE_BARS, st
            got = peer.wait_for("/rtgen/section", timeout=15, count=n + 1)  # a phrase is 6.4 s at 300 BPM
            assert len(got) == n + 1, d.output()
            assert (got[-1][0], got[-1][1]) == (name, cued_bar)
            now = status()
            assert now["section"] == name and now["section_bar"] == cued_bar and now["section_cued"] is None, now
        peer.send("/rtgen/stop")
        rec.settle(quiet=0.5, timeout=10)
        messages = rec.messages()
        assert len(note_ons(messages)) > 50  # it played on through both changes
        assert sounding_notes(messages) == set()  # real note-offs only
    finally:
        if peer is not None:
            peer.close()
        d.stop()
        with contextlib.suppress(Exception):
            rec.close()

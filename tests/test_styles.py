"""Accompaniment styles: each style's onsets sit where its pattern says for its meters, the bass follows, every
note-on has its own note-off, and switching styles or muting parts while playing leaves no note hanging."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from pathlib import Path

import mido
import pytest

from rtgen import contract as ct
from rtgen.arrange.voicing import BASS_HIGH, BASS_LOW, CHORD_HIGH, CHORD_LOW, NoteEvent, Voicer
from rtgen.cli import main
from rtgen.config import Config, PartConfig, PartsConfig, config_from_dict
from rtgen.errors import ConfigError
from rtgen.generation.engine import Engine, Params, Step
from rtgen.generation.model import Model
from rtgen.io.scheduler import Scheduler
from rtgen.io.sinks import BaseSink
from rtgen.live.commands import SetPartEnabled, SetStyle
from rtgen.live.loop import LiveLoop
from rtgen.offline.render import TICKS_PER_STEP
from rtgen.patterns.styles import styles
from rtgen.timing.clock import FakeTime, StepClock

OFF = PartConfig(enabled=False)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model_factory import make_random_model

    return make_random_model(tmp_path_factory.mktemp("models") / "random", hidden=32, layers=1, seed=0)


def parts(chords: str = "auto", bass: str = "auto") -> PartsConfig:
    p = PartsConfig()
    return PartsConfig(
        melody=OFF,
        chords=dataclasses.replace(p.chords, style=chords),
        bass=dataclasses.replace(p.bass, style=bass),
        drums=dataclasses.replace(p.drums, enabled=False),
    )


def progression(meter: str, names: Sequence[str], bars_each: int = 1, bars: int = 4) -> list[Step]:
    """Steps of a progression: one chord per ``bars_each`` bars, struck on its first downbeat."""
    ts = ct.TimeSignature.parse(meter)
    out = []
    for i in range(bars * ts.bar_steps):
        bar, pos = divmod(i, ts.bar_steps)
        tok = ct.Chord.parse(names[(bar // bars_each) % len(names)]).token
        struck = pos == 0 and bar % bars_each == 0
        out.append(
            Step(i, bar, pos, tok if struck else ct.CHORD_HOLD, tok, ct.MEL_REST, 80, ts.bar_steps, ts.beat_steps)
        )
    return out


def play(v: Voicer, steps: Sequence[Step]) -> list[tuple[Step, NoteEvent]]:
    return [(s, e) for s in steps for e in v.voice(s, Params())]


def onsets(events: list[tuple[Step, NoteEvent]], part: str) -> dict[int, list[NoteEvent]]:
    """Step index -> that step's note-ons of ``part``."""
    out: dict[int, list[NoteEvent]] = {}
    for s, e in events:
        if e.on and e.part == part:
            out.setdefault(s.index, []).append(e)
    return out


def assert_paired(events: Sequence[NoteEvent]) -> None:
    on: set[tuple[int, int]] = set()
    for e in events:
        key = (e.channel, e.pitch)
        if e.on:
            assert key not in on, f"{key} struck again before its note-off"
            on.add(key)
        else:
            assert key in on, f"note-off without note-on {key}"
            on.remove(key)
    assert not on, f"left sounding: {sorted(on)}"


def test_block_strikes_on_changes_and_downbeats() -> None:
    v = Voicer(parts("block"))
    ev = play(v, progression("4/4", ["C", "G"], bars_each=2))
    chord_on = onsets(ev, "chords")
    assert sorted(chord_on) == [0, 32]  # a held chord is not re-struck; a new one is
    assert [len(n) for n in chord_on.values()] == [3, 3]
    assert sorted(onsets(ev, "bass")) == [0, 8, 16, 24, 32, 40, 48, 56]  # root-fifth: roots on 1, fifths on 3
    assert [e.pitch % 12 for i in (0, 8, 16, 24) for e in onsets(ev, "bass")[i]] == [0, 7, 0, 7]


@pytest.mark.parametrize("meter", ["4/4", "3/4", "6/8"])
@pytest.mark.parametrize("order", ["up", "down", "updown"])
def test_arpeggios_walk_the_chord_one_note_at_a_time(meter: str, order: str) -> None:
    style = styles().chords[f"arpeggio-{order}"]
    v = Voicer(parts(style.name))
    steps = progression(meter, ["C", "Am", "F", "G7"])
    ev = play(v, steps)
    chord_on = onsets(ev, "chords")
    bar_steps = steps[0].bar_steps
    assert sorted(chord_on) == [s.index for s in steps if s.position % style.rate == 0]
    assert all(len(n) == 1 for n in chord_on.values())
    for bar in range(4):
        pitches = [chord_on[i][0].pitch for i in sorted(chord_on) if i // bar_steps == bar]
        assert all(CHORD_LOW <= p <= CHORD_HIGH for p in pitches)
        assert {p % 12 for p in pitches} == ct.Chord.parse(["C", "Am", "F", "G7"][bar]).pitch_classes
        cycle = sorted(set(pitches))
        want = {"up": cycle, "down": cycle[::-1], "updown": cycle + cycle[-2:0:-1]}[order]
        assert pitches == (want * 8)[: len(pitches)]
    # the notes ring through the bar and are released at the next downbeat
    offs_at = {s.index for s, e in ev if not e.on and e.part == "chords"}
    assert {bar_steps, 2 * bar_steps, 3 * bar_steps} <= offs_at
    assert_paired([e for _, e in ev] + v.release_all())


@pytest.mark.parametrize("meter", ["4/4", "3/4", "2/4", "6/8", "9/8"])
def test_strum_strokes_sit_on_its_hits_with_spread_strings(meter: str) -> None:
    style = styles().chords["strum"]
    key = (ct.TimeSignature.parse(meter).bar_steps, ct.TimeSignature.parse(meter).beat_steps)
    v = Voicer(parts("strum"), seed=3)
    steps = progression(meter, ["C", "G7"])
    ev = play(v, steps)
    chord_on = onsets(ev, "chords")
    assert sorted(chord_on) == [s.index for s in steps if s.position in style.hits[key]]
    for index, notes in chord_on.items():
        pos = steps[index].position
        gaps = [b.ms_offset - a.ms_offset for a, b in itertools.pairwise(notes)]
        assert gaps and all(10.0 <= g <= 25.0 for g in gaps), gaps  # each string 10-25 ms after the one before
        assert max(gaps) - min(gaps) < 1e-9  # one even stroke
        pitches = [e.pitch for e in notes]
        if pos in style.up[key]:
            assert pitches == sorted(pitches, reverse=True) and len(pitches) <= style.up_strings
        else:
            assert pitches == sorted(pitches) and len(pitches) >= 3
    downs = {steps[i].position for i in chord_on if steps[i].position not in style.up[key]}
    assert 0 in downs and all(p % 2 == 0 for p in downs)  # down strokes on the downbeat and the eighths
    assert all(p % key[1] for p in style.up[key])  # up strokes between the beats
    assert_paired([e for _, e in ev] + v.release_all())


def test_waltz_plays_oom_pah_pah_in_three_four() -> None:
    v = Voicer(parts())  # auto: waltz in 3/4
    ev = play(v, progression("3/4", ["G", "D7"], bars_each=2))
    chord_on = onsets(ev, "chords")
    assert sorted(chord_on) == [b * 12 + p for b in range(4) for p in (4, 8)]  # chord on 2 and 3
    bass_on = onsets(ev, "bass")
    assert sorted(bass_on) == [0, 12, 24, 36]  # bass on 1
    assert [bass_on[i][0].pitch % 12 for i in (0, 12, 24, 36)] == [7, 2, 2, 9]  # G, its fifth D; D, its fifth A
    # each stab is short (3 steps): released before the next
    chord_offs = sorted(s.index for s, e in ev if not e.on and e.part == "chords")
    assert chord_offs[:6] == [7, 7, 7, 11, 11, 11]
    assert_paired([e for _, e in ev] + v.release_all())


@pytest.mark.parametrize(("meter", "bass_steps"), [("6/8", [0, 6]), ("9/8", [0, 6, 12]), ("12/8", [0, 6, 12, 18])])
def test_jig_puts_the_bass_on_the_beats_and_stabs_between(meter: str, bass_steps: list[int]) -> None:
    v = Voicer(parts())  # auto: jig in compound time
    steps = progression(meter, ["D", "A"])
    ev = play(v, steps)
    n = steps[0].bar_steps
    hits = styles().chords["jig"].hits[(n, 6)]
    assert sorted(onsets(ev, "chords")) == [b * n + p for b in range(4) for p in hits]
    assert sorted(onsets(ev, "bass")) == [b * n + p for b in range(4) for p in bass_steps]
    assert all(p % 6 for p in hits)  # the stabs never land on a beat: the bass has it
    assert_paired([e for _, e in ev] + v.release_all())


def test_walking_bass_approaches_the_next_downbeat() -> None:
    v = Voicer(parts("block", "walking"), seed=1)
    ev = play(v, progression("4/4", ["C", "F"], bars_each=2, bars=8))
    bass_on = onsets(ev, "bass")
    assert sorted(bass_on) == list(range(0, 128, 4))  # a note on every beat
    assert all(BASS_LOW <= e.pitch < BASS_HIGH for n in bass_on.values() for e in n)
    for bar in range(7):
        root_now = [0, 5][(bar // 2) % 2]
        assert bass_on[bar * 16][0].pitch % 12 == root_now
        approach, target = bass_on[bar * 16 + 12][0].pitch, bass_on[bar * 16 + 16][0].pitch
        if bar % 2 == 0:  # the chord holds into the next bar: the approach leads into its root by a step
            assert 1 <= abs(approach - target) <= 2, (bar, approach, target)
    assert [bass_on[i][0].pitch % 12 for i in (4, 8)] == [4, 7]  # third and fifth of C


def test_defaults_per_meter_and_styles_that_do_not_fit_the_meter() -> None:
    lib = styles()
    for meter, name in (("4/4", "block"), ("2/4", "block"), ("3/4", "waltz"), ("6/8", "jig"), ("9/8", "jig")):
        ts = ct.TimeSignature.parse(meter)
        assert lib.chord_style("auto", (ts.bar_steps, ts.beat_steps)).name == name
    # waltz serves 3/4 only: asked for in 4/4 it plays the 4/4 default, onset for onset
    a = play(Voicer(parts("waltz")), progression("4/4", ["C", "G"]))
    b = play(Voicer(parts("block")), progression("4/4", ["C", "G"]))
    assert a == b
    assert not lib.chords["jig"].serves((16, 4)) and lib.chords["strum"].serves((12, 6))


def test_every_style_pairs_its_notes_with_a_model(model_dir: Path) -> None:
    model = Model.load(model_dir)
    for chords in ("block", "arpeggio-up", "arpeggio-updown", "strum", "waltz", "jig"):
        for bass in ("auto", "walking", "root"):
            for meter in ("4/4", "3/4", "6/8"):
                params = Params(temperature=1.2, time_signature=ct.TimeSignature.parse(meter))
                engine = Engine(model, params, seed=2)
                v = Voicer(
                    dataclasses.replace(PartsConfig(), chords=parts(chords).chords, bass=parts(chords, bass).bass)
                )
                evs = [e for _ in range(200) for e in v.voice(engine.step(params), params)]
                assert {e.part for e in evs if e.on} >= {"chords", "bass", "drums"}, (chords, bass, meter)
                assert_paired(evs + v.release_all())


def test_switching_styles_in_the_voicer_releases_first() -> None:
    v = Voicer(parts("arpeggio-up"))
    steps = progression("4/4", ["C", "G"], bars=4)
    ev = [e for _, e in play(v, steps[:22])]
    sounding = v.sounding["chords"]
    assert sounding
    offs = v.set_style("chords", "strum")
    assert {(e.channel, e.pitch) for e in offs} == set(sounding) and not any(e.on for e in offs)
    ev += offs + [e for _, e in play(v, steps[22:])]
    assert_paired(ev + v.release_all())
    with pytest.raises(ValueError, match="unknown chords style 'polka'; allowed: auto, block, arpeggio-up"):
        v.set_style("chords", "polka")
    with pytest.raises(ValueError, match="unknown bass style 'slap'"):
        v.set_style("bass", "slap")


def test_config_and_cli_name_the_styles(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config_from_dict({"parts": {"chords": {"style": "strum"}, "bass": {"style": "walking"}}})
    assert cfg.parts.chords.style == "strum" and cfg.parts.bass.style == "walking" and cfg.parts.drums.channel == 10
    with pytest.raises(ConfigError, match=r"parts\.chords\.style must be one of auto, block, .*got 'polka'"):
        config_from_dict({"parts": {"chords": {"style": "polka"}}})
    with pytest.raises(ConfigError, match=r"parts\.drums\.style must be one of auto, backbeat"):
        config_from_dict({"parts": {"drums": {"style": "walking"}}})
    out = tmp_path / "strum.mid"
    assert main(["render", "--model", str(model_dir), "--out", str(out), "--bars", "4", "--style", "strum"]) == 0
    track = next(t for t in mido.MidiFile(str(out)).tracks if t.name == "chords")
    now, ons = 0, []
    for msg in track:
        now += msg.time
        if msg.type == "note_on" and msg.velocity > 0:
            ons.append(now)
    # no swing, no humanize: a stroke starts on the grid, its strings follow; at 110 BPM a tick is
    # 60000 / 110 / 480 = 1.14 ms, so strings 10-25 ms apart are 9-22 ticks apart (rounded: 8-23)
    strokes: list[list[int]] = []
    for t in ons:
        if t % TICKS_PER_STEP == 0 or not strokes:
            strokes.append([t])
        else:
            strokes[-1].append(t)
    gaps = [b - a for stroke in strokes for a, b in itertools.pairwise(stroke)]
    assert len(strokes) >= 16 and all(len(stroke) >= 3 for stroke in strokes)
    assert all(8 <= g <= 23 for g in gaps), gaps
    assert main(["render", "--model", str(model_dir), "--out", str(out), "--style", "polka"]) == 2
    assert "parts.chords.style must be one of" in capsys.readouterr().err


# --- live: the loop with a recording sink, styles switched and parts muted while it plays -------------------
class RecordingSink(BaseSink):
    """Every (time, message) it is sent; ``hook`` sees each one (to steer the loop at given times)."""

    def __init__(self) -> None:
        super().__init__("recording")
        self.events: list[tuple[int, tuple[int, ...]]] = []
        self.hook: object = None

    def _send(self, message: Sequence[int], time_ns: int) -> None:
        self.events.append((time_ns, tuple(message)))
        if callable(self.hook):
            self.hook(time_ns)


def sounding_at(events: list[tuple[int, tuple[int, ...]]], t_ns: int, channel: int) -> set[int]:
    """Keys sounding on ``channel`` after every message up to ``t_ns``: real note-offs only (CC123 counts not)."""
    on: set[int] = set()
    for t, m in events:
        if t > t_ns:
            break
        if m[0] & 0x0F != channel or m[0] & 0xF0 not in (0x80, 0x90):
            continue
        if m[0] & 0xF0 == 0x90 and m[2] > 0:
            assert m[1] not in on, f"channel {channel + 1} key {m[1]} struck again before its note-off"
            on.add(m[1])
        else:
            on.discard(m[1])
    return on


def test_live_style_switches_and_mutes_leave_nothing_hanging(model_dir: Path) -> None:
    ft = FakeTime()
    sink = RecordingSink()
    params = Params()
    loop = LiveLoop(
        Engine(Model.load(model_dir), params, seed=5),
        Voicer(Config().parts, seed=5),
        Scheduler([sink], now_ns=ft.now_ns),
        StepClock(240.0, time_source=ft),
        params,
        Config().parts,
    )
    step_ns = 62_500_000  # a sixteenth at 240 BPM
    plan = [
        (1_000_000_000, SetStyle("chords", "arpeggio-up")),
        (1_500_000_000, SetPartEnabled("drums", False)),
        (2_000_000_000, SetStyle("chords", "strum")),
        (2_300_000_000, SetPartEnabled("chords", False)),
        (2_600_000_000, SetPartEnabled("drums", True)),
        (2_900_000_000, SetPartEnabled("chords", True)),
        (3_200_000_000, SetStyle("bass", "walking")),
        (3_500_000_000, SetStyle("drums", "ride")),
    ]
    sent: list[tuple[int, int, object]] = []  # (time, messages sent before it, command)

    def hook(t: int) -> None:
        while plan and t >= plan[0][0]:
            _, cmd = plan.pop(0)
            sent.append((t, len(sink.events), cmd))
            loop.command(cmd)

    sink.hook = hook
    loop.run(4.5, start_ns=0)
    assert not plan, "every command was sent while playing"
    events = sink.events
    at = {cmd: t for t, _, cmd in sent}
    before = {cmd: n for _, n, cmd in sent}
    chords, drums = 1, 9

    def ons(channel: int, lo: int, hi: int) -> list[int]:
        return [m[1] for t, m in events if lo < t < hi and m[0] == 0x90 | channel and m[2] > 0]

    # a muted part is silent at once (real note-offs for what it had sounding) and stays silent until unmuted
    mute_drums = at[SetPartEnabled("drums", False)]
    unmute_drums = at[SetPartEnabled("drums", True)]
    assert ons(drums, 0, mute_drums)
    assert sounding_at(events, mute_drums + step_ns, drums) == set()
    assert ons(drums, mute_drums + step_ns, unmute_drums) == []
    assert ons(drums, unmute_drums + step_ns, 10**12), "drums came back"
    mute_chords = at[SetPartEnabled("chords", False)]
    assert sounding_at(events, mute_chords + step_ns, chords) == set()
    assert ons(chords, mute_chords + step_ns, at[SetPartEnabled("chords", True)]) == []
    # a style switch releases the old style's notes: after it only the new style's sound
    to_arp = at[SetStyle("chords", "arpeggio-up")]
    n = before[SetStyle("chords", "arpeggio-up")]
    old = sounding_at(events[:n], to_arp, chords)
    released = {m[1] for t, m in events[n:] if t <= to_arp + step_ns and m[0] & 0xF0 == 0x80 and m[0] & 0x0F == chords}
    assert old and old <= released, "the block chord sounding at the switch is released at once"
    arp_times = [t for t, m in events if to_arp + step_ns < t < mute_drums and m[0] == 0x90 | chords and m[2] > 0]
    assert arp_times and len(arp_times) == len(set(arp_times)), "arpeggio: one note at a time"
    to_strum = at[SetStyle("chords", "strum")]
    strum = [t for t, m in events if to_strum + step_ns < t < mute_chords and m[0] == 0x90 | chords and m[2] > 0]
    assert any(0 < b - a < step_ns // 2 for a, b in itertools.pairwise(strum)), "strum: spread strings"
    # a note decided ahead of a mute or a switch (queued for a later step) is dropped, not struck and cut at
    # once at its step (a zero-length blip); one struck just as the command came is released then
    struck: dict[tuple[int, int], int] = {}
    for t, m in events:
        key = (m[0] & 0x0F, m[1])
        if m[0] & 0xF0 == 0x90 and m[2] > 0:
            struck[key] = t
        elif m[0] & 0xF0 in (0x80, 0x90) and struck.pop(key, -1) == t:
            assert t in at.values(), f"{key} struck and released at the same moment {t}"
    # every note-on has its own note-off (the end of the run releases the rest with real note-offs)
    for channel in range(16):
        assert sounding_at(events, 10**15, channel) == set()
    assert loop.scheduler.dropped_offs == 0
    assert loop.parts.drums.enabled and loop.parts.chords.style == "strum" and loop.parts.bass.style == "walking"

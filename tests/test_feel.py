"""The player's feel (rtgen/input/feel.py) and the reactive wait it sets in the live loop (rtgen/live/deciding.py).

The loop tests run the real loop on a fake clock whose waits deliver the player's messages at their exact
times, so every decision time is exact and nothing here depends on the host's speed.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

import pytest

from rtgen.arrange.voicing import Voicer
from rtgen.config import Config, PartsConfig
from rtgen.generation.engine import Engine, Params
from rtgen.generation.model import Model
from rtgen.input.feel import MARGIN_NS, MIN_ONSETS, PlayerFeel
from rtgen.input.tracker import InputQueue, PlayerTracker
from rtgen.io.scheduler import Scheduler
from rtgen.io.sinks import BaseSink
from rtgen.live.loop import LiveLoop
from rtgen.timing.clock import FakeTime, StepClock

MS = 1_000_000
WINDOW_NS = 12 * MS  # [accompany] reactive_window_ms default


# --- the estimator -----------------------------------------------------------------------------------------------
def test_an_unknown_player_gets_the_whole_window() -> None:
    feel = PlayerFeel()
    assert feel.late_ns is None and feel.wait_ns(WINDOW_NS) == WINDOW_NS
    for _ in range(MIN_ONSETS - 1):
        feel.observe(0)
    assert feel.wait_ns(WINDOW_NS) == WINDOW_NS == feel.held_wait_ns(WINDOW_NS)
    feel.observe(0)
    assert feel.onsets == MIN_ONSETS and feel.late_ns == 0


def test_a_tight_player_gets_a_short_wait_and_a_held_note_none() -> None:
    feel = PlayerFeel()
    rng = random.Random(1)
    for _ in range(40):
        feel.observe(rng.randrange(-300_000, 300_000))  # a sequencer: within the input's polling
    late = feel.late_ns
    assert late is not None and 0 < late < 300_000
    assert feel.wait_ns(WINDOW_NS) == late + MARGIN_NS
    assert feel.held_wait_ns(WINDOW_NS) == late
    early = PlayerFeel()
    for _ in range(40):
        early.observe(-5 * MS)  # always ahead of the beat: nothing to wait for at all
    assert early.late_ns == 0 and early.held_wait_ns(WINDOW_NS) == 0 and early.wait_ns(WINDOW_NS) == MARGIN_NS


def test_a_jittered_player_gets_a_wait_that_covers_its_spread() -> None:
    rng = random.Random(2)
    offsets = [rng.randint(-8 * MS, 8 * MS) for _ in range(32)]
    feel = PlayerFeel()
    for o in offsets:
        feel.observe(o)
    wait = feel.wait_ns(50 * MS)
    assert sum(o <= wait for o in offsets) >= 0.95 * len(offsets)
    assert 6 * MS < wait <= max(offsets) + MARGIN_NS
    loose = PlayerFeel()
    for _ in range(32):
        loose.observe(rng.randint(-15 * MS, 15 * MS))
    assert loose.wait_ns(WINDOW_NS) == WINDOW_NS  # later than the window allows: the window, never more


def test_one_stray_late_note_is_not_followed_but_a_player_loosening_up_is() -> None:
    feel = PlayerFeel()
    for _ in range(31):
        feel.observe(0)
    feel.observe(40 * MS)
    assert feel.late_ns == 0
    for _ in range(5):
        feel.observe(9 * MS)
    assert feel.late_ns == 9 * MS  # the last 32 hold six late notes: the player is late now
    feel.reset()
    assert feel.late_ns is None and feel.onsets == 0


@pytest.mark.parametrize(
    "kwargs", [{"history": 0}, {"min_onsets": 0}, {"min_onsets": 40}, {"quantile": 0.0}, {"margin_ns": -1}]
)
def test_bad_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        PlayerFeel(**kwargs)  # type: ignore[arg-type]


# --- the loop: when a reactive step is decided -------------------------------------------------------------------
class Silent(BaseSink):
    def __init__(self) -> None:
        super().__init__("silent")

    def _send(self, message: Sequence[int], time_ns: int) -> None:
        pass


class PlayerTime(FakeTime):
    """A fake clock that hands the player's ``(t_ns, message)`` to the loop's input queue at their times."""

    def __init__(self, queue: InputQueue, messages: list[tuple[int, tuple[int, ...]]]) -> None:
        super().__init__(0)
        self.queue = queue
        self.messages = sorted(messages)

    def wait_until(self, deadline_ns: int, *, max_sleep_ns: int | None = None) -> int:
        if self.messages:
            deadline_ns = max(self.t, min(deadline_ns, self.messages[0][0]))
        t = super().wait_until(deadline_ns, max_sleep_ns=max_sleep_ns)
        while self.messages and self.messages[0][0] <= t:
            t_ns, msg = self.messages.pop(0)
            self.queue(msg, t_ns)
        return t


class Recorded(LiveLoop):
    """The loop, keeping when each reactive step was decided: ``(step start, decision time, on an onset)``."""

    decisions: list[tuple[int, int, bool]]

    def _decide_waiting(self, now: int) -> None:
        assert self._step_start is not None
        self.decisions.append((self._step_start, now, self._onset_for_step()))
        super()._decide_waiting(now)


@pytest.fixture(scope="module")
def harmonising_model(tmp_path_factory: pytest.TempPathFactory) -> Model:
    from model_factory import make_random_model

    return Model.load(make_random_model(tmp_path_factory.mktemp("feel") / "model", hidden=16, layers=2, seed=5))


TEMPO = 120.0
STEP_NS = 125 * MS  # a 16th at 120 BPM
BEAT_NS = 4 * STEP_NS
# a chorale-like line in quarters and halves: (step, duration in steps); two bars, played four times
RHYTHM = [(0, 4), (4, 4), (8, 8), (16, 4), (20, 4), (24, 4), (28, 4)]
PITCHES = [67, 69, 71, 72, 71, 69, 67]


def tune(offset: object, bars: int = 8) -> list[tuple[int, int, tuple[int, ...]]]:
    """``(grid step, t_ns, message)`` of the player: each note ``offset()`` ns from its grid time, released 5 ms
    before the next note's grid time (legato)."""
    out: list[tuple[int, int, tuple[int, ...]]] = []
    for rep in range(bars // 2):
        for (step, length), pitch in zip(RHYTHM, PITCHES, strict=True):
            s = rep * 32 + step
            on = s * STEP_NS + offset()  # type: ignore[operator]
            out.append((s, on, (0x90, pitch, 90)))
            out.append((s, (s + length) * STEP_NS - 5 * MS, (0x80, pitch, 0)))
    return out


def play(model: Model, player: list[tuple[int, int, tuple[int, ...]]], *, adapt: bool = True) -> Recorded:
    cfg = Config()
    cfg = dataclasses.replace(cfg, accompany=dataclasses.replace(cfg.accompany, adapt_window=adapt))
    queue = InputQueue()
    ft = PlayerTime(queue, [(t, m) for _, t, m in player])
    params = Params()
    loop = Recorded(
        Engine(model, params, seed=1), Voicer(PartsConfig(), seed=1),
        Scheduler([Silent()], now_ns=ft.now_ns), StepClock(TEMPO, time_source=ft), params, PartsConfig(),
        mode="accompany", config=cfg, tracker=PlayerTracker(), input_queue=queue,
    )  # fmt: skip
    loop.decisions = []
    loop.run((max(t for _, t, _ in player) + BEAT_NS) / 1e9, start_ns=0)
    return loop


def waits(loop: Recorded, player: list[tuple[int, int, tuple[int, ...]]], after: int = 0) -> dict[str, list[int]]:
    """How long each reactive step from step ``after`` on waited past its grid time, by what the player did there:
    ``struck`` (a note for it), ``held_long`` (a note struck a beat or more before), ``held`` (a shorter one),
    ``rest`` (after the tune's last note)."""
    struck = {s for s, _, m in player if m[0] == 0x90}
    onsets = sorted(struck)
    out: dict[str, list[int]] = {"struck": [], "held_long": [], "held": [], "rest": []}
    for start, decided, _ in loop.decisions:
        s = round(start / STEP_NS)
        if s < after:
            continue
        if s in struck:
            out["struck"].append(decided - start)
        elif s >= onsets[-1] + 4:
            out["rest"].append(decided - start)
        else:
            last = max((o for o in onsets if o < s), default=None)
            kind = "held_long" if last is not None and s - last >= 4 else "held"
            out[kind].append(decided - start)
    return out


def test_a_tight_player_gets_every_step_decided_at_once_or_within_the_margin(harmonising_model: Model) -> None:
    player = tune(lambda: 0)
    loop = play(harmonising_model, player)
    assert loop.feel is not None and loop.feel.late_ns == 0
    got = waits(loop, player, after=33)  # by step 33 the loop has heard MIN_ONSETS notes
    assert got["struck"] and set(got["struck"]) == {0}  # decided on the note as it arrives with the beat
    assert got["held_long"] and set(got["held_long"]) == {0}  # a half note's second beat: no onset is due
    assert got["held"] and set(got["held"]) == {MARGIN_NS}  # inside a quarter note: the margin only
    assert got["rest"] and set(got["rest"]) == {MARGIN_NS}  # silent: the margin only
    assert all(on for start, _, on in loop.decisions if round(start / STEP_NS) in {s for s, *_ in player})
    fixed = waits(play(harmonising_model, player, adapt=False), player, after=33)
    assert set(fixed["held_long"]) == set(fixed["held"]) == {WINDOW_NS}  # the old fixed window
    assert set(fixed["struck"]) == {0}


def test_a_jittered_player_still_gets_chords_decided_on_their_notes(harmonising_model: Model) -> None:
    rng = random.Random(7)
    player = tune(lambda: rng.randint(-15 * MS, 15 * MS))
    loop = play(harmonising_model, player)
    late = loop.feel.late_ns if loop.feel is not None else None
    assert late is not None and late > WINDOW_NS
    sent = {s: t - s * STEP_NS for s, t, m in player if m[0] == 0x90}
    decided = {round(start / STEP_NS): (d - start, on) for start, d, on in loop.decisions}
    for s, offset in sent.items():
        wait, on_note = decided[s]
        if offset <= WINDOW_NS:  # within the window: decided on the note, as it arrives
            assert on_note and wait == max(0, offset), (s, offset, wait)
    got = waits(loop, player, after=33)
    assert set(got["held"]) == set(got["held_long"]) == {WINDOW_NS}  # a note could still come: the whole window


def test_onsets_are_measured_from_the_nearest_grid_step(harmonising_model: Model) -> None:
    offsets = [3 * MS, -2 * MS] * 5
    player = [(s, s * STEP_NS + d, (0x90, 60 + s % 12, 90)) for s, d in zip(range(0, 40, 4), offsets, strict=True)]
    loop = play(harmonising_model, player)
    assert loop.feel is not None and loop.feel.onsets == len(player)
    assert loop.feel.late_ns == 3 * MS


def test_a_note_a_beat_old_counts_as_held_long_though_its_stamp_is_a_little_late(harmonising_model: Model) -> None:
    """The step's start and the note are stamped when the input is read, on JACK's period: a note struck on the
    beat before may look a few ms less than a beat old, and still counts (within half a step)."""
    loop = play(harmonising_model, tune(lambda: 0, bars=2))
    tracker = loop.tracker
    assert tracker is not None
    start = 100 * STEP_NS
    tracker.feed(start - BEAT_NS + 5 * MS, (0x90, 60, 90))  # stamped a JACK period late
    assert loop._holding_long(start)
    assert not loop._holding_long(start - STEP_NS)  # three steps after the note: not a beat old
    tracker.feed(start - MS, (0x80, 60, 0))
    assert not loop._holding_long(start)  # nothing held

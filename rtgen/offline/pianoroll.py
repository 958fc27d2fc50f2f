"""Piano-roll pictures of rendered MIDI files (matplotlib, Agg backend, no display needed)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import mido

PART_COLOURS = {"melody": "#d1495b", "chords": "#2e86ab", "bass": "#3b8b45", "drums": "#e09f3e"}
OTHER_COLOURS = ("#8e5ea2", "#c06c84", "#6c5b7b", "#355c7d", "#99b898")  # parts without a colour of their own
DRUM_CHANNEL = 9  # 0-based: General MIDI channel 10
DRUM_NAMES = {
    35: "kick", 36: "kick", 37: "stick", 38: "snare", 39: "clap", 40: "snare", 41: "tom", 42: "hat", 43: "tom",
    44: "hat", 45: "tom", 46: "open hat", 47: "tom", 48: "tom", 49: "crash", 50: "tom", 51: "ride", 52: "china",
    53: "ride bell", 54: "tambourine", 55: "splash", 56: "cowbell", 57: "crash", 59: "ride",
}  # fmt: skip

Note = tuple[int, int, int, int]
"""``(start_tick, end_tick, pitch, velocity)``."""


def _notes(track: mido.MidiTrack) -> list[tuple[int, int, int, int, int]]:
    """``(start_tick, end_tick, pitch, velocity, channel)`` for every note of a track."""
    now = 0
    open_: dict[tuple[int, int], tuple[int, int]] = {}
    out = []
    for msg in track:
        now += msg.time
        if msg.type == "note_on" and msg.velocity > 0:
            open_[(msg.channel, msg.note)] = (now, msg.velocity)
        elif msg.type in ("note_on", "note_off") and (msg.channel, msg.note) in open_:
            start, vel = open_.pop((msg.channel, msg.note))
            out.append((start, now, msg.note, vel, msg.channel))
    return out


@dataclass
class Roll:
    """What a piano roll shows, read from a MIDI file.

    Attributes:
        parts: ``(track name, notes)`` of every track with pitched notes (drum-channel notes excluded).
        drums: ``(start_tick, drum note, velocity)`` of every note on the drum channel (channel 10).
        chords: ``(tick, name)`` cue markers.
        markers: ``(tick, text)`` markers (song-form sections, prime / generated).
        meter: ``(numerator, denominator)`` at tick 0.
        ticks_per_beat: the file's resolution.
        end: the last tick.
    """

    parts: list[tuple[str, list[Note]]] = field(default_factory=list)
    drums: list[tuple[int, int, int]] = field(default_factory=list)
    chords: list[tuple[int, str]] = field(default_factory=list)
    markers: list[tuple[int, str]] = field(default_factory=list)
    meter: tuple[int, int] = (4, 4)
    ticks_per_beat: int = 480
    end: int = 0

    @property
    def bar_ticks(self) -> int:
        """Ticks per bar of the first meter."""
        return self.meter[0] * self.ticks_per_beat * 4 // self.meter[1]


def read_roll(mid: mido.MidiFile) -> Roll:
    """Everything :func:`plot_pianoroll` draws: parts by track, drum hits by channel, chords, markers."""
    roll = Roll(ticks_per_beat=mid.ticks_per_beat)
    for track in mid.tracks:
        name = ""
        now = 0
        for msg in track:
            now += msg.time
            if msg.type == "track_name":
                name = msg.name
            elif msg.type == "time_signature" and now == 0:
                roll.meter = (msg.numerator, msg.denominator)
            elif msg.type == "cue_marker":
                roll.chords.append((now, msg.text))
            elif msg.type == "marker":
                roll.markers.append((now, msg.text))
        roll.end = max(roll.end, now)
        notes = _notes(track)
        pitched = [(a, b, p, v) for a, b, p, v, ch in notes if ch != DRUM_CHANNEL]
        roll.drums += [(a, p, v) for a, _, p, v, ch in notes if ch == DRUM_CHANNEL]
        if pitched:
            roll.parts.append((name, pitched))
    roll.drums.sort()
    roll.markers.sort()
    return roll


def plot_pianoroll(mid: mido.MidiFile, path: Path, title: str = "") -> Path:
    """Draw ``mid`` as a piano roll: one colour per part track, a lane of drum hits, bar lines, chord names
    above, song-form sections (markers) as labelled bands.

    Args:
        mid: a file as written by :func:`rtgen.offline.render.to_midi` (track names = part names, chord names as
            cue markers, sections as markers and the meter in the first track); other files work too.
        path: the PNG to write (parent folders are created).
        title: the figure title.

    Returns:
        ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch, Rectangle

    roll = read_roll(mid)
    bar_ticks = roll.bar_ticks
    bars = max(1, -(-roll.end // bar_ticks))
    kits = sorted({p for _, p, _ in roll.drums})

    fig = Figure(figsize=(max(8.0, min(40.0, bars * 0.9)), 6.5 if kits else 5.5), dpi=100)
    FigureCanvasAgg(fig)
    if kits:
        grid = fig.add_gridspec(2, 1, height_ratios=(4, max(1.0, len(kits) * 0.35)), hspace=0.05)
        ax = fig.add_subplot(grid[0])
        drum_ax = fig.add_subplot(grid[1], sharex=ax)
    else:
        ax = fig.add_subplot(1, 1, 1)
        drum_ax = None
    lo, hi = 127, 0
    handles = []
    spare = iter(OTHER_COLOURS * 4)
    for name, notes in roll.parts:
        colour = PART_COLOURS.get(name) or next(spare, "#777777")
        for start, stop, pitch, vel in notes:
            alpha = 0.35 + 0.65 * vel / 127  # louder = more opaque
            width = (stop - start) / bar_ticks
            ax.add_patch(Rectangle((start / bar_ticks, pitch - 0.4), width, 0.8, facecolor=colour, alpha=alpha))
            lo, hi = min(lo, pitch), max(hi, pitch)
        handles.append(Patch(color=colour, label=name or "track"))
    if lo > hi:
        lo, hi = 48, 84
    axes = [ax] if drum_ax is None else [ax, drum_ax]
    for a in axes:
        for b in range(bars + 1):
            a.axvline(b, color="#bbbbbb", linewidth=0.6, zorder=0)
    top = hi + 2
    for tick, text in roll.chords:
        ax.text(tick / bar_ticks, top, text, fontsize=7, rotation=45, ha="left", va="bottom", clip_on=True)
    ends = [t for t, _ in roll.markers[1:]] + ([roll.end] if roll.markers else [])
    for i, ((tick, text), stop) in enumerate(zip(roll.markers, ends, strict=True)):
        x = tick / bar_ticks
        for a in axes:
            a.axvline(x, color="#444444", linewidth=1.2, linestyle="--")
        if i % 2 == 0:
            ax.axvspan(x, stop / bar_ticks, color="#f2f2f2", zorder=-1)
        ax.text(x + 0.05, lo - 4.5, text, fontsize=9, fontweight="bold", ha="left", va="bottom")
    ax.set_xlim(0, bars)
    ax.set_ylim(lo - 5, hi + 7)
    ax.set_ylabel("MIDI pitch")
    if drum_ax is not None:
        row = {p: i for i, p in enumerate(kits)}
        colour = PART_COLOURS["drums"]
        xs = [t / bar_ticks for t, _, _ in roll.drums]
        ys = [row[p] for _, p, _ in roll.drums]
        sizes = [6 + 18 * v / 127 for _, _, v in roll.drums]
        drum_ax.scatter(xs, ys, s=sizes, color=colour, marker="|" if len(xs) > 2000 else "o", linewidths=0.8)
        drum_ax.set_yticks(range(len(kits)), [DRUM_NAMES.get(p, str(p)) for p in kits], fontsize=7)
        drum_ax.set_ylim(-0.7, len(kits) - 0.3)
        drum_ax.set_xlabel(f"bar ({roll.meter[0]}/{roll.meter[1]})")
        handles.append(Patch(color=colour, label="drums"))
        ax.tick_params(labelbottom=False)
    else:
        ax.set_xlabel(f"bar ({roll.meter[0]}/{roll.meter[1]})")
    if handles:
        ax.legend(handles=handles, loc="upper right", fontsize=8)
    if title:
        ax.set_title(title)
    if drum_ax is None:
        fig.tight_layout()
    else:  # tight_layout cannot place a gridspec with a shared axis
        fig.subplots_adjust(left=0.05, right=0.99, top=0.93, bottom=0.08)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path), format="png")
    return path

"""Piano-roll pictures of rendered MIDI files (matplotlib, Agg backend, no display needed)."""

from __future__ import annotations

from pathlib import Path

import mido

PART_COLOURS = {"melody": "#d1495b", "chords": "#2e86ab", "bass": "#3b8b45"}
OTHER_COLOUR = "#777777"


def _notes(track: mido.MidiTrack) -> list[tuple[int, int, int, int]]:
    """``(start_tick, end_tick, pitch, velocity)`` for every note of a track."""
    now = 0
    open_: dict[tuple[int, int], tuple[int, int]] = {}
    out = []
    for msg in track:
        now += msg.time
        if msg.type == "note_on" and msg.velocity > 0:
            open_[(msg.channel, msg.note)] = (now, msg.velocity)
        elif msg.type in ("note_on", "note_off") and (msg.channel, msg.note) in open_:
            start, vel = open_.pop((msg.channel, msg.note))
            out.append((start, now, msg.note, vel))
    return out


def plot_pianoroll(mid: mido.MidiFile, path: Path, title: str = "") -> Path:
    """Draw ``mid`` as a piano roll: one colour per part track, bar lines, chord names above.

    Args:
        mid: a file as written by :func:`rtgen.render.to_midi` (track names = part names,
            chord names as cue markers and the meter in the first track); other files work too.
        path: the PNG to write (parent folders are created).
        title: the figure title.

    Returns:
        ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch, Rectangle

    tpb = mid.ticks_per_beat
    numerator, denominator = 4, 4
    chords: list[tuple[int, str]] = []
    markers: list[tuple[int, str]] = []
    end = 0
    parts: list[tuple[str, list[tuple[int, int, int, int]]]] = []
    for track in mid.tracks:
        name = ""
        now = 0
        for msg in track:
            now += msg.time
            if msg.type == "track_name":
                name = msg.name
            elif msg.type == "time_signature" and now == 0:
                numerator, denominator = msg.numerator, msg.denominator
            elif msg.type == "cue_marker":
                chords.append((now, msg.text))
            elif msg.type == "marker":
                markers.append((now, msg.text))
        end = max(end, now)
        notes = _notes(track)
        if notes:
            parts.append((name, notes))
    bar_ticks = numerator * tpb * 4 // denominator
    bars = max(1, -(-end // bar_ticks))

    fig = Figure(figsize=(max(8.0, min(40.0, bars * 0.9)), 5.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    lo, hi = 127, 0
    handles = []
    for name, notes in parts:
        colour = PART_COLOURS.get(name, OTHER_COLOUR)
        for start, stop, pitch, vel in notes:
            alpha = 0.35 + 0.65 * vel / 127  # louder = more opaque
            width = (stop - start) / bar_ticks
            ax.add_patch(Rectangle((start / bar_ticks, pitch - 0.4), width, 0.8, facecolor=colour, alpha=alpha))
            lo, hi = min(lo, pitch), max(hi, pitch)
        handles.append(Patch(color=colour, label=name or "track"))
    if lo > hi:
        lo, hi = 48, 84
    for b in range(bars + 1):
        ax.axvline(b, color="#bbbbbb", linewidth=0.6, zorder=0)
    top = hi + 2
    for tick, text in chords:
        ax.text(tick / bar_ticks, top, text, fontsize=7, rotation=45, ha="left", va="bottom", clip_on=True)
    for tick, text in markers:
        ax.axvline(tick / bar_ticks, color="#444444", linewidth=1.2, linestyle="--")
        ax.text(tick / bar_ticks, lo - 3, text, fontsize=8, ha="left", va="top")
    ax.set_xlim(0, bars)
    ax.set_ylim(lo - 5, hi + 7)
    ax.set_xlabel(f"bar ({numerator}/{denominator})")
    ax.set_ylabel("MIDI pitch")
    if handles:
        ax.legend(handles=handles, loc="upper right", fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path), format="png")
    return path

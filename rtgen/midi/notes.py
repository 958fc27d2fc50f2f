"""Which notes are sounding: one tracker, counted per (channel, pitch), used by every stage.

The scheduler's note-off book, each sink's view of its receiver, the synth and the
voicer (one tracker per part) all keep their sounding notes in a :class:`NoteTracker`.
It is cheap enough for the real-time thread: one dict update per message.
"""

from __future__ import annotations

from collections.abc import Sequence

from rtgen.midi.messages import (
    CC_ALL_NOTES_OFF,
    CC_ALL_SOUND_OFF,
    CHANNEL_MASK,
    CONTROL_CHANGE,
    DATA_MASK,
    KIND_MASK,
    NOTE_OFF,
    NOTE_ON,
)


class NoteTracker:
    """Sounding notes, counted per (channel, pitch).

    A count above one means the key was struck again before it was released (two parts
    doubling a note on one channel, say). :meth:`off` takes one away; :meth:`release`
    forgets the key, which is what a receiver does with a note-off (FluidSynth and DAWs
    end every voice of the key on one note-off).
    """

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts: dict[int, int] = {}  # (channel << 7 | pitch) -> note-ons not yet released

    def on(self, channel: int, pitch: int) -> None:
        """Count a note-on of ``pitch`` (0..127) on ``channel`` (0..15)."""
        key = (channel << 7) | pitch
        counts = self._counts
        counts[key] = counts.get(key, 0) + 1

    def off(self, channel: int, pitch: int) -> bool:
        """Count a note-off; False when the note was not sounding (the note-off is redundant)."""
        key = (channel << 7) | pitch
        counts = self._counts
        n = counts.get(key, 0)
        if n <= 0:
            return False
        if n == 1:
            del counts[key]
        else:
            counts[key] = n - 1
        return True

    def release(self, channel: int, pitch: int) -> int:
        """Forget the key however often it was struck; returns that count (0: it was not sounding)."""
        return self._counts.pop((channel << 7) | pitch, 0)

    def get(self, channel: int, pitch: int) -> int:
        """How many note-ons of this key are not yet released."""
        return self._counts.get((channel << 7) | pitch, 0)

    def __contains__(self, note: tuple[int, int]) -> bool:
        return ((note[0] << 7) | note[1]) in self._counts

    def track(self, message: Sequence[int], *, all_notes_off: bool = True) -> None:
        """Follow a raw MIDI message as a receiver would.

        A note-on counts, a note-off (or velocity-0 note-on) releases the key, and with
        ``all_notes_off`` CC123/CC120 clear the channel. Other messages are ignored.
        """
        if len(message) < 3:
            return
        status = message[0]
        kind = status & KIND_MASK
        if kind == NOTE_ON and message[2]:
            self.on(status & CHANNEL_MASK, message[1] & DATA_MASK)
        elif kind in (NOTE_OFF, NOTE_ON):
            self._counts.pop(((status & CHANNEL_MASK) << 7) | (message[1] & DATA_MASK), None)
        elif all_notes_off and kind == CONTROL_CHANGE and message[1] in (CC_ALL_NOTES_OFF, CC_ALL_SOUND_OFF):
            self.clear_channel(status & CHANNEL_MASK)

    def sounding(self, channel: int | None = None) -> list[tuple[int, int]]:
        """The sounding (channel, pitch) pairs (one per key), in channel then pitch order."""
        keys = sorted(self._counts)
        if channel is not None:
            keys = [k for k in keys if k >> 7 == channel]
        return [(k >> 7, k & 0x7F) for k in keys]

    def notes(self) -> list[tuple[int, int]]:
        """Same as :meth:`sounding` (the scheduler's note-off book always called it this)."""
        return self.sounding()

    def count(self) -> int:
        """Number of sounding (channel, pitch) pairs."""
        return len(self._counts)

    def __len__(self) -> int:
        return len(self._counts)

    def __bool__(self) -> bool:
        return bool(self._counts)

    def clear(self) -> None:
        """Forget every note."""
        self._counts.clear()

    def clear_channel(self, channel: int) -> int:
        """Forget every note of ``channel``; returns how many keys were sounding there."""
        keys = [k for k in self._counts if k >> 7 == channel]
        for k in keys:
            del self._counts[k]
        return len(keys)

    def __repr__(self) -> str:
        return f"NoteTracker({self.sounding()})"

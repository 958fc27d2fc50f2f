"""MIDI messages as raw bytes: the one home of every status byte and controller number rtgen uses.

A channel message's status byte is its kind (the high nibble, e.g. :data:`NOTE_ON`) ``|`` its channel
(0..15); :data:`KIND_MASK` and :data:`CHANNEL_MASK` take them apart again. System messages have a status
of :data:`SYSTEM` or above; the real-time ones rtgen follows and sends are the clock and transport bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

# Channel voice messages (the status byte's high nibble).
NOTE_OFF: Final = 0x80
NOTE_ON: Final = 0x90
CONTROL_CHANGE: Final = 0xB0
PROGRAM_CHANGE: Final = 0xC0

KIND_MASK: Final = 0xF0
CHANNEL_MASK: Final = 0x0F
DATA_MASK: Final = 0x7F
CHANNELS: Final = 16

# System messages: common and real-time.
SYSTEM: Final = 0xF0
SONG_POSITION: Final = 0xF2
CLOCK: Final = 0xF8
START: Final = 0xFA
CONTINUE: Final = 0xFB
STOP: Final = 0xFC

CLOCK_MESSAGES: Final = frozenset({CLOCK, START, CONTINUE, STOP, SONG_POSITION})
"""The status bytes a MIDI clock follower reads (:class:`rtgen.timing.midiclock.ClockFollower`)."""

# Control Change numbers.
CC_VOLUME: Final = 7
CC_PAN: Final = 10
CC_SUSTAIN: Final = 64
CC_ALL_SOUND_OFF: Final = 120
CC_ALL_NOTES_OFF: Final = 123

SWITCH_ON: Final = 64
"""A switch controller (sustain, panic) is on at this value and above."""


def all_notes_off(channel: int) -> tuple[int, int, int]:
    """CC123 (all notes off) on ``channel`` (0..15)."""
    return (CONTROL_CHANGE | channel, CC_ALL_NOTES_OFF, 0)


def panic_messages(sounding: Sequence[tuple[int, int]]) -> list[list[int]]:
    """Note-offs for ``sounding`` (channel, pitch) then CC123 (all notes off) and CC120 (all sound off) on all
    16 channels."""
    msgs = [[NOTE_OFF | ch, pitch, 0] for ch, pitch in sounding]
    for ch in range(CHANNELS):
        msgs.append([CONTROL_CHANGE | ch, CC_ALL_NOTES_OFF, 0])
        msgs.append([CONTROL_CHANGE | ch, CC_ALL_SOUND_OFF, 0])
    return msgs

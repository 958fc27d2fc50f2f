"""Errors that reach the user: each carries a message that says what to do."""

from __future__ import annotations

from typing import Any


def brief(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters: an error quoting untrusted input (a fuzzer's 60 kB string)
    must not carry it whole."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


class RtgenError(Exception):
    """Base class: the CLI prints the message (no traceback) and exits non-zero."""


class ConfigError(RtgenError, ValueError):
    """A configuration key or value is wrong; the message names the key and what is allowed."""


class ModelError(RtgenError):
    """A model folder is missing, corrupt, or speaks another token contract."""


class PortError(RtgenError, OSError):
    """A MIDI port or backend cannot be opened; the message lists what there is."""


class SoundfontError(RtgenError, FileNotFoundError):
    """No usable soundfont; the message says where we looked and how to install one."""


class AudioError(RtgenError, OSError):
    """The synth's audio driver cannot start."""


class JackError(RtgenError, RuntimeError):
    """A JACK server or JACK tool of the bench or the tests failed; the message carries its log or output."""

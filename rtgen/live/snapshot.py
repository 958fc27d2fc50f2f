"""The status snapshot: the daemon's whole state as JSON-ready data (``/rtgen/status``, the web page, JSON logs).

Read without locks from other threads: the loop keeps writing, so a snapshot may be a step stale, never torn
in a way that matters (each field is one attribute read).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rtgen.config import PART_NAMES, split_name
from rtgen.generation.conductor import Band
from rtgen.timing.clock import LatenessHistogram

if TYPE_CHECKING:
    from rtgen.io.ports import MidiInput
    from rtgen.live.jack import JackSupervisor
    from rtgen.live.loop import LiveLoop


def snapshot(
    loop: LiveLoop, *, realtime: bool, player_input: MidiInput | None, osc_errors: int, jack: JackSupervisor
) -> dict[str, Any]:
    """The state of ``loop`` and of what the daemon around it opened (its input, the JACK watch)."""
    p = loop
    params = p.params
    stats = p.clock.stats
    sends = p.scheduler.errors
    histogram = sends.histogram
    assert histogram is not None  # the scheduler's stats keep one
    parts = {
        n: {
            "channel": p.parts.get(n).channel,
            "program": p.parts.get(n).program,
            "volume": p.parts.get(n).volume,
            "pan": p.parts.get(n).pan,
            "enabled": p.parts.get(n).enabled,
            "style": p.parts.get(n).style,
        }
        for n in PART_NAMES
    }
    tracker = p.tracker
    late = p.feel.late_ns if p.feel is not None else None
    cued = p.arranger.cued  # read once: the real-time thread may start the section meanwhile
    band = p.performer.conductor
    band_cues = band.cued if isinstance(band, Band) else {}  # a copy
    return {
        "playing": p.playing,
        "mode": p.mode,
        "answering": p.performer.conductor.answering,
        "tempo": p.tempo,
        "clock": p.source.name,
        "link": p.source.stats(),
        "clock_out": bool(p.clock_out.sinks),
        "bar": p.bar + 1,
        "beat": p.beat + 1,
        "chord": p.chord_name,
        "section": p.section,
        "section_bar": p.section_bar + 1 if p.section is not None else None,
        "section_cued": cued[0] if cued is not None else None,
        "section_cued_bar": cued[1] + 1 if cued is not None else None,
        "band_waiting": band.waiting if isinstance(band, Band) else None,  # sync start, or after an ending
        "band_cued": {str(bar + 1): control for bar, control in sorted(band_cues.items())},
        "band_variation": band.variation if isinstance(band, Band) else None,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "density": params.density,
        "key": params.key.name if params.key is not None else "off",
        "swing": p.swing,
        "seed": p.engine.seed,
        "model": p.model_name,
        "can_accompany": bool(p.engine.can_harmonise),
        "realtime": realtime,
        "parts": parts,
        "input": player_input.name if player_input is not None else None,
        "player_sounding": list(tracker.sounding()) if tracker is not None else [],
        "player_melody": tracker.melody_note() if tracker is not None else None,
        "split": split_name(tracker.split) if tracker is not None else None,
        "learning": tracker.learning if tracker is not None else None,
        "cc": tracker.mapping.as_dict() if tracker is not None else {},
        "recording": str(p.recorder.path) if p.recorder is not None else None,
        "steps": stats.steps,
        "late_steps": stats.late_steps,
        "max_late_us": stats.max_late_ns / 1000,
        "schedule_error_us": {
            **LatenessHistogram.percentiles_us(histogram.counts),
            "max": sends.max_late_ns / 1000,
        },
        "schedule_error_histogram": list(histogram.counts),
        "midi_overflowed": sum(s.overflowed for s in p.scheduler.sinks),
        "dropped_late_notes": p.scheduler.dropped_late,
        "skipped_steps": p.skipped_steps,
        "output_quantum_us": p.output_quantum_ns / 1000,
        "spin_us": p.spin_ns / 1000 if p.spin_ns is not None else None,
        "worst_wakeup_us": p.spin_tuner.worst_ns / 1000 if p.spin_tuner is not None else None,
        "reactive_steps": p.reactive_decisions,
        "reactive_on_onset": p.early_decisions,  # of those, decided with the player's note for them
        "player_late_ms": late / 1e6 if late is not None else None,  # how late the player's notes land (learned)
        "sent": p.scheduler.sent,
        "sounding": p.scheduler.book.count(),
        "outputs": [s.name for s in p.scheduler.sinks],
        "osc_errors": osc_errors,
        "engine_errors": p.engine_errors,
        "command_errors": p.command_errors,
        "input_received": player_input.received if player_input is not None else 0,
        "jack": jack.state,
        "jack_losses": jack.losses,
    }

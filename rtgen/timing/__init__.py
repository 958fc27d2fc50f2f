"""Time: the drift-free step clock, the transport, and the clock sources (internal, MIDI clock, Link)."""

"""The real-time instrument: the loop and the daemon's wiring."""

"""MIDI as data: message bytes, sounding-note books, standard MIDI files, MIDI to tokens."""

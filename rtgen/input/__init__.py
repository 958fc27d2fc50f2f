"""The player's side: MIDI in turned into state the real-time loop reads (notes, hands, chords, controls)."""

"""Where notes go and come from: MIDI ports (the JACK backend), the synth, the sinks and the scheduler."""

"""Playing the decisions as a band: the voicer, song form, and the performer that wires them."""

"""The pattern libraries (accompaniment styles, drum grooves): data the config schema validates against."""

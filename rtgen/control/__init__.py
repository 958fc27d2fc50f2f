"""Steering: OSC, the web page and controller layouts."""

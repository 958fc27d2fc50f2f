"""Measurements: every figure of ``rtgen bench`` and the soak, on one JACK harness the tests share."""

"""Measurements: every figure of ``rtgen bench`` and the soak, on one JACK harness the tests share.

Bottom to top (an import-linter contract keeps the order): :mod:`~rtgen.bench.measure` (figures, /proc
readings); :mod:`~rtgen.bench.harness` (JACK server, recorders, ports, the daemon as a subprocess) and
:mod:`~rtgen.bench.oscload`; one module per phase (:mod:`~rtgen.bench.loop`, :mod:`~rtgen.bench.jackrun`,
:mod:`~rtgen.bench.reactive`, :mod:`~rtgen.bench.swaps`, :mod:`~rtgen.bench.webpage`); on top
:mod:`~rtgen.bench.runner` (``rtgen bench``) and :mod:`~rtgen.bench.soak`.
"""

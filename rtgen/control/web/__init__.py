"""The web control surface (``rtgen run --web``): see :mod:`rtgen.control.web.server`."""

"""Offline: render, master and piano rolls."""

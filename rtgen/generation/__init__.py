"""Deciding the music: ONNX models, sampling, the engine, and the conductors (one per mode)."""

"""rtgen: a real-time MIDI generation instrument.

The daemon and CLI run small ONNX models with onnxruntime; this package never
imports torch (training lives in the separate ``training`` package).
"""

__version__ = "0.1.0"

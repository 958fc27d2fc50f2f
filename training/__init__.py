"""Training pipeline for rtgen models: prepare -> train -> export -> evaluate (PyTorch)."""

"""The PyTorch backend: the same model, names and checkpoints as the NumPy core, at the paper's scale."""

"""The NumPy core: config, binarize, layers (forward/backward pairs), model, optim, compare.
NumPy only and no file I/O: it imports nothing else of tinyfbi, and no torch or numba."""

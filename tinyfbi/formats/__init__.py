"""Every on-disk format: the one atomic write, checkpoints and run state, HF folders in and out,
the .fbipack container. Imports only tinyfbi.core."""

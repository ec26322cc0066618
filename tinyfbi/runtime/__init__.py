"""Inference: the KV-cache runner (float weights) and the packed 1-bit runner on the kernels."""

"""Building a .fbipack (the format: formats.fbipack) from a checkpoint: its binarized linears as sign
bits in the kernels' layout. runtime.packed_runner runs the result.

sign(W) is decided by the one binarize rule (tinyfbi.core.binarize, via kernels.bitpack.sign_mask);
alpha/beta go to fp16, as the paper counts its 1.01 bits (arXiv 2407.07093, section 4.1).

    python -m tinyfbi.pack runs/tiny-ad tiny.fbipack
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from kernels.bitpack import pack_blocked_mask, sign_mask

from ..core.errors import TinyFBIError
from ..formats.checkpoint import load_checkpoint
from ..formats.fbipack import write_packed
from ..formats.run_checkpoint import resolve_checkpoint


def pack_checkpoint(ckpt, out, dense_dtype="float16") -> dict:
    """Pack a checkpoint folder; returns size statistics (bits per parameter etc.)."""
    ckpt = resolve_checkpoint(ckpt)
    config, params, raw = load_checkpoint(ckpt)
    if not config.binarized or not config.has_scales:
        raise TinyFBIError(f"{ckpt} is not an FBI (column-scaled binarized) checkpoint: nothing to pack")
    binarized = set(config.binarized_weight_names())
    tensors, stats = {}, {"binarized_params": 0, "binarized_bytes": 0, "other_params": 0, "other_bytes": 0,
                          "exact_zeros": 0, "sign_of_zero": config.sign_of_zero}
    for name, value in params.items():
        prefix = name.rsplit(".", 1)[0]
        if name in binarized:
            bits = pack_blocked_mask(sign_mask(value))                        # (out, 32*ceil(in/256))
            tensors[name] = ("signs", bits, value.shape[1])
            stats["binarized_params"] += value.size
            stats["exact_zeros"] += int(np.count_nonzero(value == 0))
            stats["binarized_bytes"] += bits.nbytes
        elif name.endswith((".wscale", ".wbias")) and prefix + ".weight" in binarized:
            tensors[name] = ("dense", value.astype(np.float16))               # alpha/beta: fp16, as the paper counts
            stats["binarized_bytes"] += value.size * 2
        else:
            tensors[name] = ("dense", value.astype(dense_dtype))
            stats["other_params"] += value.size
            stats["other_bytes"] += tensors[name][1].nbytes
    tok_spec = (raw.get("fbi") or {}).get("tokenizer")
    tokenizer = None
    if tok_spec and tok_spec.get("file"):
        tokenizer = {"spec": tok_spec, "file_hex": (ckpt / tok_spec["file"]).read_bytes().hex()}
    elif tok_spec:
        tokenizer = {"spec": tok_spec}
    write_packed(out, raw, tensors, tokenizer)
    total_params = stats["binarized_params"] + stats["other_params"]
    stats.update(
        bits_per_binarized_param=8 * stats["binarized_bytes"] / stats["binarized_params"],
        bits_per_param=8 * Path(out).stat().st_size / total_params,
        file_bytes=Path(out).stat().st_size,
        float32_bytes=4 * sum(v.size for v in params.values()))
    return stats

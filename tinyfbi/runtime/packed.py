"""The packed 1-bit runtime: inference straight from sign bits with the Numba kernels.

Each binarized linear is held as packed sign bits + alpha/beta (kernels.bitpack.PackedSigns) and computed
as y = sign(W) @ (alpha * x) + (beta . x) by kernels.dispatch.matvec; embeddings, norms and lm_head stay
dense. The KV-cache loop is runtime.inference's, shared with the float runtime.

    runner, tokenizer = load_packed("tiny.fbipack")            # kind="exact" | "int8"
    python -m tinyfbi.generate --ckpt tiny.fbipack --prompt "ROMEO:" --greedy
    python -m tinyfbi.generate --random-init 7b --packed --bench
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from kernels.bitpack import BLOCK, PackedSigns, pack_blocked_mask, unpack_blocked_mask
from kernels.dispatch import matvec

from ..core.config import ModelConfig
from ..corpus.tokenizers import load_tokenizer
from ..formats.checkpoint import config_from_json
from ..formats.fbipack import read_packed
from .inference import Runner


class PackedRunner(Runner):
    def __init__(self, config: ModelConfig, dense: dict, linears: dict, kind: str = "exact"):
        super().__init__(config, dense)
        self.linears = linears            # prefix -> (PackedSigns, alpha (in,), beta (in,))
        self.kind = kind

    def linear(self, prefix, x):
        packed, alpha, beta = self.linears[prefix]
        return matvec(packed, alpha, beta, x, self.kind)

    def weight_bytes(self) -> int:
        packed = sum(p.nbytes + a.nbytes + b.nbytes for p, a, b in self.linears.values())
        return packed + sum(v.nbytes for v in self.params.values())

    @classmethod
    def from_arrays(cls, config, arrays: dict, kind="exact", lut=None):
        """arrays: name -> array as stored in a packed file (signs as blocked uint8 bits)."""
        lut = (kind == "exact") if lut is None else lut  # the lut3 layout speeds up the exact kernel
        dense, linears = {}, {}
        for name in config.binarized_weight_names():
            prefix = name.removesuffix(".weight")
            out_f, in_f = config.linear_shapes()[prefix.rsplit(".", 1)[-1]]
            packed = PackedSigns(out_f, in_f, arrays[name])
            linears[prefix] = (packed.with_lut() if lut else packed,
                               np.asarray(arrays[prefix + ".wscale"], np.float32).reshape(-1),
                               np.asarray(arrays[prefix + ".wbias"], np.float32).reshape(-1))
        for name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
            dense[name] = arrays[name]
        for i in range(config.num_hidden_layers):
            for norm in ("input_layernorm", "post_attention_layernorm"):
                dense[f"model.layers.{i}.{norm}.weight"] = np.asarray(arrays[f"model.layers.{i}.{norm}.weight"],
                                                                      np.float32)
        dense["model.norm.weight"] = np.asarray(dense["model.norm.weight"], np.float32)
        # lm_head is one dense GEMV per token: float32 for BLAS (numpy has no fast fp16 matmul);
        # the embedding stays fp16 and memory-mapped, only looked up
        dense["lm_head.weight"] = np.asarray(dense["lm_head.weight"], np.float32)
        return cls(config, dense, linears, kind)

    @classmethod
    def random(cls, config: ModelConfig, seed=0, kind="int8"):
        """A randomly initialized FBI model built directly in packed form (no float32 weights)."""
        rng = np.random.default_rng(seed)
        arrays = {}
        for name in config.binarized_weight_names():
            prefix = name.removesuffix(".weight")
            out_f, in_f = config.linear_shapes()[prefix.rsplit(".", 1)[-1]]
            nbytes = 32 * -(-in_f // BLOCK)
            bits = rng.integers(0, 256, (out_f, nbytes), dtype=np.uint8)
            if in_f % BLOCK:  # padding bits past in_features are zero, like pack_blocked_mask's
                bits = pack_blocked_mask(unpack_blocked_mask(bits, in_f))
            arrays[name] = bits
            # |N(0, 0.02)| has mean 0.016: the FBI init's alpha for std-0.02 weights; beta near 0
            arrays[prefix + ".wscale"] = np.full((1, in_f), 0.016, np.float16)
            arrays[prefix + ".wbias"] = (rng.standard_normal((1, in_f)) * 1e-3).astype(np.float16)
        C, V = config.hidden_size, config.vocab_size
        arrays["model.embed_tokens.weight"] = (rng.standard_normal((V, C), dtype=np.float32) * 0.02).astype(np.float16)
        arrays["lm_head.weight"] = rng.standard_normal((V, C), dtype=np.float32) * 0.02
        arrays["model.norm.weight"] = np.ones(C, np.float32)
        for i in range(config.num_hidden_layers):
            for norm in ("input_layernorm", "post_attention_layernorm"):
                arrays[f"model.layers.{i}.{norm}.weight"] = np.ones(C, np.float32)
        return cls.from_arrays(config, arrays, kind, lut=False)


def load_packed(path, kind="exact"):
    """(PackedRunner, tokenizer or None) from a .fbipack file."""
    header, arrays = read_packed(path)
    config = config_from_json(header["config"], str(path), binarized_default=True)
    runner = PackedRunner.from_arrays(config, arrays, kind)
    tokenizer = None
    tok = header.get("tokenizer")
    if tok:
        with tempfile.TemporaryDirectory() as tmp:
            if "file_hex" in tok:
                (Path(tmp) / tok["spec"]["file"]).write_bytes(bytes.fromhex(tok["file_hex"]))
            tokenizer = load_tokenizer(tok["spec"], tmp)
    return runner, tokenizer

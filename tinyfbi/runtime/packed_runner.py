"""The packed 1-bit runtime: inference straight from sign bits with the Numba kernels.

Each block linear is held as packed sign bits + alpha/beta and computed as
y = sign(W) @ (alpha * x) + (beta . x) (arXiv 2407.07093, eq. 3). Linears that read the same input
are stacked (kernels/stacked.py): per layer, q/k/v are one kernel call after one RMSNorm, gate/up
another. Embeddings and norms stay dense; lm_head is fp16 by default, int8 per row or float32
(kernels/dense_head.py). Same sections as the float runtime (runtime.inference), two paths:

- decode (one new token): compiled calls on vectors per layer: norm, q/k/v, rope + cache append +
  attention (kernels/decode_ops.py), o, norm, gate/up, SwiGLU, down; no NumPy temporaries. The int8
  runner holds one copy of the signs, in the layout its file stores, read into huge-page memory or
  mapped (formats.fbipack.read_packed's load): nib4 tiles for v9 (the fastest decode with AVX2 alone)
  or blocked bits for v13 (AVX-512 VNNI; v5 with AVX2). load_packed runs a file whose layout is not the
  one this CPU decodes fastest from a copy rewritten once into the cache (as llama.cpp repacks weights
  for its CPU); `layout=` the file's own runs it as it is;
- prefill (many tokens): the batch kernels (v10 / v7 int8, v6 exact) per linear, on the blocked bits, or
  on the nib4 tiles: v7 rewrites one 32-row tile at a time in a core's cache, the others a linear's tiles
  per call (kernels/nib4_blocked.py); compiled
  attention over the heads in parallel, compiled RMSNorm and SwiGLU.

A released checkpoint's exact-zero latent weights (the authors' sign(0) = 0, W~ = beta there) are
stored as +1 bits plus their positions (formats.fbipack's zero lists): each linear that has any
subtracts alpha_j * x_j from y_i for its zeros (i, j) after the kernel (ZeroFix), in both kinds on
the float activations; a model without zeros pays one None check per layer.

`runner.times` accumulates seconds per part (the benchmark's breakdown). The KV cache (`kv`) is fp16
by default with int8 activations (half the bytes attention reads per token; rounding 2^-11 relative,
far below int8's) and float32 with exact ones; kv="f32" / "f16" chooses.

    runner, tokenizer = load_packed("tiny.fbipack", kind="int8", head="f16")
    python -m tinyfbi.generate --ckpt tiny.fbipack --prompt "ROMEO:" --greedy
    python -m tinyfbi.generate --random-init 7b --packed --bench --kind int8
"""
from __future__ import annotations

import hashlib
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np

from kernels.bitpack import PackedSigns
from kernels.decode_ops import attend_fn, attend_parallel, rmsnorm_into, rmsnorm_rows_into, swiglu_into
from kernels.dense_head import DenseHead
from kernels.dispatch import READS_NIB4, int8_decode_layout, is_batch_kernel, kernel_name, matvec
from kernels.nib4_blocked import blocked_from_nib4
from kernels.simd import ISA
from kernels.stacked import StackedSigns, stack_linears, stacked_kernel_name, stacked_matvec
from kernels.zero_fix import subtract_zeros

from ..core import layers as L
from ..core.config import ModelConfig
from ..corpus.tokenizers import load_tokenizer
from ..formats.config_json import config_from_json
from ..formats.fbipack import (
    SIGN_LAYOUTS,
    FileRows,
    drop_mapped_pages,
    load_tensors,
    plan_spans,
    read_header,
    sign_layout,
)
from .build_fbipack import GROUPS, cache_dir, iter_random_packed, made_once, random_once, relayout, storage_plan
from .inference import KVCache, Runner

EMBED = "model.embed_tokens.weight"     # looked up a row at a time, never multiplied


@dataclass
class PackedLayer:
    """One transformer block: its linears stacked by shared input, and its two RMSNorm weights."""
    qkv: StackedSigns       # q (C), k (kv), v (kv) rows over the normed residual
    o: StackedSigns         # (C) over the attention output
    gate_up: StackedSigns   # gate (I), up (I) over the normed residual
    down: StackedSigns      # (C) over silu(gate) * up
    norm1: np.ndarray       # (C,) input_layernorm
    norm2: np.ndarray       # (C,) post_attention_layernorm
    zeros: "ZeroFix | None" = None   # the block's exact-zero weights, if its checkpoint had any


@dataclass
class Zeros:
    """One linear's exact-zero latent weights: zero k sits at output row rows[k], input column cols[k]."""
    out_features: int
    rows: np.ndarray        # (n,) int64 output rows
    cols: np.ndarray        # (n,) int64 input columns
    coef: np.ndarray        # (n,) float32 alpha at each column, as the kernels use it

    @classmethod
    def from_positions(cls, positions: np.ndarray, out_features: int, alpha: np.ndarray) -> "Zeros":
        """positions (n, 2) of (row, column), as the file stores them; alpha (in,)."""
        cols = positions[:, 1].astype(np.int64)
        return cls(out_features, positions[:, 0].astype(np.int64), cols, np.asarray(alpha, np.float32)[cols])

    def subtract(self, y: np.ndarray, x: np.ndarray):
        """y (..., out) -= the +1 the bits gave each zero: y_i -= sum over its zeros j of alpha_j x_j, for
        x (..., in); in place (y may be a view). kernels.zero_fix, about a nanosecond per zero and token."""
        x2 = np.ascontiguousarray(x, np.float32).reshape(-1, x.shape[-1])            # (N, in)
        y2 = y[None] if y.ndim == 1 else y.reshape(-1, self.out_features)            # (N, out), a view if it can be
        subtract_zeros(y2, x2, self.rows, self.cols, self.coef)
        if not np.shares_memory(y2, y):                                              # reshape had to copy
            y[...] = y2.reshape(y.shape)


@dataclass
class ZeroFix:
    """A block's exact-zero weights per stacked group: group -> ((segment s, Zeros), ...)."""
    groups: dict

    def stacked(self, group: str, st: StackedSigns, y: np.ndarray, x: np.ndarray):
        """y (R,) a stacked call's output for x (in,): each segment's rows corrected in place."""
        for s, zeros in self.groups.get(group, ()):
            r0 = int(st.starts[s])
            zeros.subtract(y[r0:r0 + st.out_features[s]], x)

    def per_linear(self, group: str, ys: list, x: np.ndarray):
        """ys [(N, out_s)] the group's outputs for x (N, in), corrected in place."""
        for s, zeros in self.groups.get(group, ()):
            zeros.subtract(ys[s], x)


class PackedRunner(Runner):
    def __init__(self, config: ModelConfig, dense: dict, layers: list, kind: str = "exact", head: str = "f16",
                 kv: str = "auto"):
        super().__init__(config, dense)
        if kind not in ("exact", "int8"):
            raise ValueError(f"kind must be 'exact' or 'int8', got {kind!r}")
        if kv not in ("auto", "f16", "f32"):
            raise ValueError(f"kv must be 'auto', 'f16' or 'f32', got {kv!r}")
        self.layers, self.kind = layers, kind
        self.kv = ("f16" if kind == "int8" else "f32") if kv == "auto" else kv
        self.load = "memory"                # built in memory; load_packed sets "read" or "map" (its file's load)
        self.head = DenseHead(dense.pop("lm_head.weight"), head)        # the head owns it (int8: only its copy)
        self.times = defaultdict(float)                                 # part -> seconds, summed
        positions = np.arange(config.max_position_embeddings)
        self.cos, self.sin = L.rope_cos_sin(positions, config.head_dim, config.rope_theta)  # (P, D) each
        # prefix -> (PackedSigns view, alpha, beta): each linear on its own, for linear() and tests
        self.linears, self.zeros = {}, {}
        for i, layer in enumerate(layers):
            for group, names in GROUPS.items():
                st = getattr(layer, group)
                for s, name in enumerate(names):
                    self.linears[f"model.layers.{i}.{name}"] = (st.segment(s), st.alpha[s], st.beta[s])
                for s, zeros in (layer.zeros.groups.get(group, ()) if layer.zeros else ()):
                    self.zeros[f"model.layers.{i}.{names[s]}"] = zeros

    def new_cache(self, batch=1, max_len=None) -> KVCache:
        """float32, or float16 for kv 'f16' (the kernels read its bits as uint16: see _kv_bits)."""
        dtype = np.float16 if self.kv == "f16" else np.float32
        return KVCache(self.config, batch, max_len or self.config.max_position_embeddings, dtype)

    def linear(self, prefix, x):
        packed, alpha, beta = self.linears[prefix]
        y = matvec(packed, alpha, beta, x, self.kind)
        if prefix in self.zeros:
            self.zeros[prefix].subtract(y, np.asarray(x, np.float32))
        return y

    def weight_bytes(self) -> int:
        packed = sum(getattr(layer, g).nbytes for layer in self.layers for g in GROUPS)
        zeros = sum(a.nbytes for z in self.zeros.values() for a in (z.rows, z.cols, z.coef))
        return packed + zeros + sum(v.nbytes for v in self.params.values()) + self.head.nbytes

    def kernel_names(self, tokens: int) -> dict:
        """Which kernel runs each part for a step of this many tokens."""
        layer = self.layers[0]
        body = kernel_name(layer.qkv.segment(0), tokens, self.kind)
        if not is_batch_kernel(body):                                   # decode, short prompts: stacked rows
            body = f"stacked {stacked_kernel_name(layer.qkv, self.kind)}" + (" per token" if tokens > 1 else "")
        elif layer.qkv.bits is None:
            body += " on nib4 tiles" + ("" if body in READS_NIB4 else " rewritten to blocked per call")
        return {"linears": body, "head": f"dense_head_{self.head.kind}" if self.head.kind != "f32" else "numpy_f32"}

    def describe(self) -> dict:
        """Runtime, activation kind, head storage, sign layout, how the file was loaded, instruction set and
        kernel threads, for reports."""
        return {"runtime": type(self).__name__, "kind": self.kind, "head": self.head.kind, "kv": self.kv,
                "layout": self.layout if self.kind == "int8" else None, "load": self.load, "isa": ISA,
                "threads": numba.get_num_threads()}

    def _lap(self, part: str, t0: float) -> float:
        t1 = time.perf_counter()
        self.times[part] += t1 - t0
        return t1

    # ---- forward ----

    def forward(self, tokens: np.ndarray, cache: KVCache, last_only: bool = False) -> np.ndarray:
        """tokens (B, T_new) continuing the cache -> logits (B, T_new, V), or (B, 1, V) if last_only."""
        B, T = tokens.shape
        if cache.length + T > cache.max_len:
            raise ValueError(f"sequence of {cache.length + T} tokens exceeds the cache ({cache.max_len})")
        t = time.perf_counter()
        x = self.params[EMBED][tokens].astype(np.float32)                                # (B, T, C)
        t = self._lap("embed", t)
        if B == 1 and T == 1:
            h = self._decode(x.reshape(-1), cache)[None]                                 # (1, C)
        else:
            h = self._prefill(x, cache)                                                  # (B, T, C)
            h = (h[:, -1:] if last_only else h).reshape(-1, h.shape[-1])
        t = time.perf_counter()
        logits = self.head(h)                                                            # (B*T', V)
        self._lap("head", t)
        return logits.reshape(B, -1, logits.shape[-1])

    def _decode(self, x: np.ndarray, cache: KVCache) -> np.ndarray:
        """x (C,) the new token's embedding -> final-normed (C,); appends to the cache."""
        cfg, kind, lap = self.config, self.kind, self._lap
        C, I, kv = cfg.hidden_size, cfg.intermediate_size, cfg.num_key_value_heads * cfg.head_dim
        pos = cache.length
        cos, sin = self.cos[pos:pos + 1], self.sin[pos:pos + 1]                          # (1, D)
        attend = attend_fn(cfg.num_attention_heads, pos + 1, cfg.head_dim)             # serial for small work
        h = np.empty(C, np.float32)
        a = np.empty((1, C), np.float32)                                                 # attention out (1, H*D)
        m = np.empty(I, np.float32)                                                      # silu(gate) * up
        t = time.perf_counter()
        for i, layer in enumerate(self.layers):
            rmsnorm_into(x, layer.norm1, cfg.rms_norm_eps, h)
            t = lap("norm", t)
            y = stacked_matvec(layer.qkv, h, kind)                                       # (R,) q | k | v
            if layer.zeros is not None:
                layer.zeros.stacked("qkv", layer.qkv, y, h)
            t = lap("qkv", t)
            q0, k0, v0 = layer.qkv.starts
            attend(y[None, q0:q0 + C], y[None, k0:k0 + kv], y[None, v0:v0 + kv], cos, sin,
                   _kv_bits(cache.k[i][0]), _kv_bits(cache.v[i][0]), pos, a)
            t = lap("attention", t)
            y = stacked_matvec(layer.o, a[0], kind)
            if layer.zeros is not None:
                layer.zeros.stacked("o", layer.o, y, a[0])
            x += y[:C]
            t = lap("o", t)
            rmsnorm_into(x, layer.norm2, cfg.rms_norm_eps, h)
            t = lap("norm", t)
            gu = stacked_matvec(layer.gate_up, h, kind)                                  # (R,) gate | up
            if layer.zeros is not None:
                layer.zeros.stacked("gate_up", layer.gate_up, gu, h)
            t = lap("gate_up", t)
            g0, u0 = layer.gate_up.starts
            swiglu_into(gu[g0:g0 + I], gu[u0:u0 + I], m)
            t = lap("swiglu", t)
            y = stacked_matvec(layer.down, m, kind)
            if layer.zeros is not None:
                layer.zeros.stacked("down", layer.down, y, m)
            x += y[:C]
            t = lap("down", t)
        cache.length = pos + 1
        out = np.empty(C, np.float32)
        rmsnorm_into(x, self.params["model.norm.weight"], cfg.rms_norm_eps, out)
        lap("norm", t)
        return out

    def _batch_linears(self, layer: PackedLayer, group: str, x2: np.ndarray, outs: list) -> list:
        """x2 (N, in) -> [(N, out_s) for each linear of the layer's group]: the batch kernels when N is
        large enough for them (each writing into its buffer of outs), else the stacked batch-1 call token by
        token (one call for all linears)."""
        st = getattr(layer, group)
        if is_batch_kernel(kernel_name(st.segment(0), x2.shape[0], self.kind)):
            ys = [matvec(st.segment(s), st.alpha[s], st.beta[s], x2, self.kind, out=outs[s]) for s in range(len(st.starts))]
        else:
            y = np.stack([stacked_matvec(st, row, self.kind) for row in x2])             # (N, R)
            ys = [y[:, r0:r0 + n] for r0, n in zip(st.starts, st.out_features)]
        if layer.zeros is not None:
            layer.zeros.per_linear(group, ys, x2)
        return ys

    def _prefill(self, x: np.ndarray, cache: KVCache) -> np.ndarray:
        """x (B, T, C) embeddings -> final-normed (B, T, C); appends T positions to the cache."""
        cfg, lap, lin = self.config, self._lap, self._batch_linears
        B, T, C = x.shape
        start, end = cache.length, cache.length + T
        cos, sin = self.cos[start:end], self.sin[start:end]                              # (T, D)
        t = time.perf_counter()
        # one buffer per intermediate for every layer (and x updated in place): a fresh array per layer and
        # linear (5.6 MB for a 7B's gate with 128 tokens) is fresh pages from the OS, each faulted in and
        # zeroed again (glibc maps such sizes anew per allocation or not, by its history: a 7B's prefill
        # varied by about 10% from one call to the next; docs/runtime.md). x is forward's own new array.
        h2 = np.empty((B * T, C), np.float32)                                            # normed rows
        a = np.empty((B, T, C), np.float32)                                              # attention (B, T, H*D)
        mlp = np.empty((B * T, cfg.intermediate_size), np.float32)                       # silu(gate) * up
        outs = {g: [np.empty((B * T, n), np.float32) for n in getattr(self.layers[0], g).out_features]
                for g in GROUPS} if self.layers else {}                                  # each linear's output
        for i, layer in enumerate(self.layers):
            rmsnorm_rows_into(x.reshape(B * T, C), layer.norm1, cfg.rms_norm_eps, h2)
            t = lap("norm", t)
            q, k, v = (np.ascontiguousarray(y).reshape(B, T, -1) for y in lin(layer, "qkv", h2, outs["qkv"]))
            t = lap("qkv", t)                                                            # (B, T, C | kv | kv)
            for b in range(B):  # BLAS-free: numpy's batched matmul beside spinning kernel threads stalls
                attend_parallel(q[b], k[b], v[b], cos, sin, _kv_bits(cache.k[i][b]), _kv_bits(cache.v[i][b]), start, a[b])
            t = lap("attention", t)
            x += lin(layer, "o", a.reshape(B * T, C), outs["o"])[0].reshape(B, T, C)
            t = lap("o", t)
            rmsnorm_rows_into(x.reshape(B * T, C), layer.norm2, cfg.rms_norm_eps, h2)
            t = lap("norm", t)
            gate, up = (np.ascontiguousarray(y) for y in lin(layer, "gate_up", h2, outs["gate_up"]))  # (B*T, I)
            t = lap("gate_up", t)
            swiglu_into(gate.reshape(-1), up.reshape(-1), mlp.reshape(-1))
            t = lap("swiglu", t)
            x += lin(layer, "down", mlp, outs["down"])[0].reshape(B, T, C)
            t = lap("down", t)
        cache.length = end
        h = np.empty((B, T, C), np.float32)
        rmsnorm_rows_into(x.reshape(B * T, C), self.params["model.norm.weight"], cfg.rms_norm_eps, h.reshape(B * T, C))
        lap("norm", t)
        return h

    # ---- construction ----

    @property
    def layout(self) -> str:
        """The layout int8 decode reads: 'nib4' (v9) where the tiles are held, else 'blocked'."""
        return "nib4" if self.layers and self.layers[0].qkv.nib4 is not None else "blocked"

    @classmethod
    def from_arrays(cls, config, arrays: dict, kind="exact", lut=None, head="f16", kv="auto", layout="auto"):
        """arrays: name -> array as stored in a packed file (signs as blocked bits (out, 32*nblk) or nib4
        tiles (tiles, 32*nblk, 32), zero lists if any). layout: the one int8 decode reads (auto: the stored
        one, so the runner holds one copy of the signs, viewed where they lie); another is built from them
        at load. kind exact reads blocked bits (and lut3 rows): nib4 tiles are rewritten to them."""
        if layout not in ("auto",) + SIGN_LAYOUTS:
            raise ValueError(f"layout must be auto or one of {SIGN_LAYOUTS}, got {layout!r}")
        stored = "nib4" if arrays["model.layers.0.self_attn.q_proj.weight"].ndim == 3 else "blocked"
        lut = (kind == "exact") if lut is None else lut  # the lut3 layout speeds up the exact batch-1 kernel
        run = (stored if layout == "auto" else layout) if kind == "int8" else "blocked"
        shapes = config.linear_shapes()
        layers = []
        for i in range(config.num_hidden_layers):
            pre = f"model.layers.{i}."
            stacks, zeros = {}, {}
            for group, names in GROUPS.items():
                linears = []
                for name in names:
                    out_f, in_f = shapes[name.rsplit(".", 1)[-1]]
                    signs = arrays[pre + name + ".weight"]
                    packed = PackedSigns(out_f, in_f, signs) if stored == "blocked" else \
                        PackedSigns(out_f, in_f, None, nib4=signs) if run == "nib4" else \
                        PackedSigns(out_f, in_f, blocked_from_nib4(signs, out_f))
                    linears.append((packed, arrays[pre + name + ".wscale"], arrays[pre + name + ".wbias"]))
                stacks[group] = stack_linears(linears, lut, nib4=run == "nib4", bits=run == "blocked")
                found = [(s, Zeros.from_positions(np.asarray(arrays[pre + name + ".zeros"]), linears[s][0].out_features,
                                                  stacks[group].alpha[s]))
                         for s, name in enumerate(names) if pre + name + ".zeros" in arrays]
                if found:
                    zeros[group] = tuple(found)
            norms = [np.asarray(arrays[pre + n + ".weight"], np.float32) for n in ("input_layernorm", "post_attention_layernorm")]
            layers.append(PackedLayer(**stacks, norm1=norms[0], norm2=norms[1], zeros=ZeroFix(zeros) if zeros else None))
        # the embedding stays as stored (fp16), only looked up: mapped, or FileRows (load_packed's "read")
        dense = {EMBED: arrays[EMBED],
                 "model.norm.weight": np.asarray(arrays["model.norm.weight"], np.float32),
                 "lm_head.weight": arrays["lm_head.weight"]}
        return cls(config, dense, layers, kind, head, kv)

    @classmethod
    def random(cls, config: ModelConfig, seed=0, kind="int8", head="f16", kv="auto", layout="auto"):
        """A randomly initialized FBI model built directly in packed form (no float32 weights), its signs
        drawn in the layout it runs (auto: the one this CPU decodes fastest), so it holds what a file would."""
        stored = run_layout(kind, layout)
        plan = storage_plan(config, layout=stored)
        spans, end = plan_spans(plan)        # one buffer laid out as the file is: each group's signs back
        buffer = np.empty(end, np.uint8)     # to back, so the runner views them, never copies
        into = {name: buffer[o:o + n].view(plan[name][1]).reshape(plan[name][2]) for name, (o, n) in spans.items()}
        arrays = dict(iter_random_packed(config, seed, stored, into))
        return cls.from_arrays(config, arrays, kind, lut=kind == "exact", head=head, kv=kv)


def run_layout(kind: str, layout: str = "auto") -> str:
    """The sign layout a runner of this kind reads: int8 decode's (kernels.dispatch.int8_decode_layout:
    auto is this CPU's fastest), blocked for exact."""
    return int8_decode_layout(layout) if kind == "int8" else "blocked"


def _kv_bits(a: np.ndarray) -> np.ndarray:
    """A cache array as the attention kernels take it: float16 as its bits (uint16; Numba has no float16)."""
    return a.view(np.uint16) if a.dtype == np.float16 else a


def relayout_cached(path, have: str, layout: str) -> Path:
    """The cache's copy of the .fbipack at `path` (its signs in `have`) with its signs in `layout`: rewritten
    on first use (atomically), reused while the source is unchanged (its path, size and modification time
    name it)."""
    path = Path(path).resolve()
    stat = path.stat()
    key = hashlib.sha1(f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return made_once(cache_dir() / "layouts" / f"{path.stem}-{key}.{layout}.fbipack",
                     f"{path.name} stores its signs in the {have} layout; this CPU decodes fastest from {layout} "
                     f"(--layout {have} runs the file as it is): rewriting them", lambda out: relayout(path, out, layout))


def load_random(config: ModelConfig, seed=0, kind="int8", head="f16", kv="auto", layout="auto", load="read"):
    """A randomly initialized model run as a file is (the same memory: the embedding read a row at a time),
    from the cache's copy (random_once: drawn on first use). Where the cache cannot be written, the model
    is built in memory instead (PackedRunner.random, which holds the embedding table too), and says so."""
    stored = run_layout(kind, layout)
    try:
        path = random_once(config, seed, stored)
    except OSError as e:
        print(f"cannot write the random model into the cache ({e}): building it in memory instead, "
              "its embedding table held whole", file=sys.stderr, flush=True)
        return PackedRunner.random(config, seed, kind, head, kv, layout)
    return load_packed(path, kind, head, kv, layout=stored, load=load)[0]


def load_packed(path, kind="exact", head="f16", kv="auto", layout="auto", load="read"):
    """(PackedRunner, tokenizer or None) from a .fbipack file; load: formats.fbipack.read_packed's.
    layout: the one int8 decode reads. auto: this CPU's fastest, from a copy rewritten once into the
    cache (relayout_cached) where the file stores the other; a named one runs the file as it is where it
    matches, else builds that layout at load (the file's copy is held too)."""
    header, data_start = read_header(path)
    if kind == "int8" and layout == "auto" and sign_layout(header) != run_layout(kind):
        path = relayout_cached(path, sign_layout(header), run_layout(kind))
        header, data_start = read_header(path)
    stored = header["tensors"]["lm_head.weight"]["dtype"]
    # a head stored in another type than it runs in is read once, to convert: left mapped, not read
    converted = () if np.dtype(stored) == DenseHead.storage_dtype(head) else ("lm_head.weight",)
    arrays = load_tensors(path, header, data_start, load, mapped=converted)
    if load == "read":                      # the embedding read a row at a time, unmapped (FileRows says why)
        embed = header["tensors"][EMBED]
        arrays[EMBED] = FileRows(path, data_start + embed["offset"], embed["shape"], embed["dtype"])
    config = config_from_json(header["config"], str(path), binarized_default=True)
    runner = PackedRunner.from_arrays(config, arrays, kind, head=head, kv=kv, layout=layout)
    for name in converted:                                          # its fp16 pages leave the process's memory
        drop_mapped_pages(arrays[name])
    runner.load = load
    tokenizer = None
    tok = header.get("tokenizer")
    if tok:
        with tempfile.TemporaryDirectory() as tmp:
            if "file_hex" in tok:
                (Path(tmp) / tok["spec"]["file"]).write_bytes(bytes.fromhex(tok["file_hex"]))
            tokenizer = load_tokenizer(tok["spec"], tmp)
    return runner, tokenizer

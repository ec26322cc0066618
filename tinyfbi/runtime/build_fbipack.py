"""Building a .fbipack (the format: formats.fbipack) from a checkpoint: its binarized linears as sign
bits in the kernels' layout. runtime.packed_runner runs the result.

sign(W) is decided by the one binarize rule (tinyfbi.core.binarize, via kernels.bitpack.sign_mask);
alpha/beta go to fp16, as the paper counts its 1.01 bits (arXiv 2407.07093, section 4.1). A released
checkpoint (the authors' sign(0) = 0) also gets the positions of its exact-zero latent weights, which
one bit stores as +1 and the runner corrects.

The checkpoint is streamed tensor by tensor from its files (formats.hf_folder.iter_hf_tensors) into
the file (formats.fbipack.PackedWriter): the memory held is one tensor and its packed form, never
the model (a legacy non-zip `.bin` is read one shard at a time), so a 7B's 27 GB of fp32 latent
weights pack on a laptop. Measured on a 1.3B-shaped release (5.46 GB of fp32 in 3 `.bin` shards):
peak RSS 0.64 GB, was 6.13 GB when the whole checkpoint was loaded first.

    python -m tinyfbi.pack runs/tiny-ad tiny.fbipack
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from kernels.bitpack import BLOCK, NIB_ROWS, nib4_from_blocked, pack_blocked_mask, sign_mask, unpack_blocked_mask

from ..core.config import ModelConfig
from ..core.errors import TinyFBIError
from ..formats.atomic import atomic_open
from ..formats.checkpoint import read_layout, with_checkpoint
from ..formats.config_json import config_from_json, config_to_json
from ..formats.fbipack import (
    SIGN_LAYOUTS,
    VERSION,
    VERSION_NIB4,
    PackedWriter,
    read_packed,
    sign_layout,
    zeros_name,
)
from ..formats.hf_folder import iter_hf_tensors

TOKENIZER_FILE = "tokenizer.model"   # a released folder's LLaMA sentencepiece model, packed with it when present
CACHE_ENV = "TINYFBI_CACHE"          # where packed copies of downloaded models are kept


def cache_dir() -> Path:
    """$TINYFBI_CACHE, else $XDG_CACHE_HOME/tinyfbi, else ~/.cache/tinyfbi."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tinyfbi"


def made_once(out: Path, doing: str, make) -> Path:
    """`out`, made by make(out) (an atomic write: a killed one leaves nothing half-written) on first use and
    reused after; the one time it is made, says on stderr what is being done, where, and in how long."""
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        print(f"{doing} once into {out} (later runs reuse it)", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        make(out)
        print(f"done in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    return out


def packed_once(folder, name: str) -> Path:
    """The cache's `name`.fbipack of a checkpoint folder: packed on first use, reused after."""
    return made_once(cache_dir() / f"{name}.fbipack", f"packing {folder}", lambda out: pack_checkpoint(folder, out))


def file_layout(layout: str = "auto") -> str:
    """The sign layout a new file gets: `layout`, or for auto the one this CPU's int8 decode reads fastest
    (nib4 with AVX2 alone, blocked with AVX-512 VNNI or without AVX2)."""
    if layout not in ("auto",) + SIGN_LAYOUTS:
        raise TinyFBIError(f"--layout must be auto, blocked or nib4, got {layout!r}")
    if layout != "auto":
        return layout
    from kernels.dispatch import int8_decode_layout  # Numba's CPU features: not on the NumPy path (generate)
    return int8_decode_layout()


def pack_checkpoint(ckpt, out, dense_dtype="float16", on_file=None, layout="auto") -> dict:
    """Pack a checkpoint folder (or a run folder's checkpoint) into `out`, atomically, streaming its
    files; on_file(path) is called as each weight file is opened. Returns size statistics."""
    def pack_folder(folder):
        config, raw = read_layout(folder)
        return pack_tensors(out, config, raw, iter_hf_tensors(folder, on_file), dense_dtype, folder, layout)
    return with_checkpoint(ckpt, pack_folder)


# a layer's linears by the input they read, in the order the packed runner stacks them (one kernel call per
# group); the file stores each group's signs back to back
GROUPS = {"qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "o": ("self_attn.o_proj",),
          "gate_up": ("mlp.gate_proj", "mlp.up_proj"), "down": ("mlp.down_proj",)}
STACKED = tuple(g for g in GROUPS.values() if len(g) > 1)


def stacking_order(shapes: dict) -> dict:
    """The checkpoint's names, with each layer's q/k/v signs and gate/up signs placed back to back: the
    runner then maps each group as one (rows, bytes) array of the file, with no copy."""
    ordered = {}
    for name, shape in shapes.items():
        if name in ordered:
            continue
        group = next((g for g in STACKED if any(name.endswith(f".{m}.weight") for m in g)), None)
        if group is None:
            ordered[name] = shape
            continue
        layer = name[:name.index(".", len("model.layers.")) + 1]                 # "model.layers.{i}."
        for member in group:
            ordered[f"{layer}{member}.weight"] = shapes[f"{layer}{member}.weight"]
    return ordered


def signs_shape(out_features: int, in_features: int, layout: str) -> tuple:
    """The stored shape of one linear's signs: blocked (out, 32*nblk) or nib4 (ceil(out/32), 32*nblk, 32)."""
    width = 32 * -(-in_features // BLOCK)
    return (out_features, width) if layout == "blocked" else (-(-out_features // NIB_ROWS), width, NIB_ROWS)


def signs_in_layout(blocked: np.ndarray, layout: str) -> np.ndarray:
    """Blocked bits (out, 32*nblk) as `layout` stores them."""
    return blocked if layout == "blocked" else nib4_from_blocked(blocked)


def storage_plan(config: ModelConfig, dense_dtype="float16", layout="blocked") -> dict:
    """name -> (kind, dtype, shape[, in_features, out_features]) of every tensor a .fbipack of this model
    holds. alpha/beta are fp16, as the paper counts its 1.01 bits, unless everything dense is float32."""
    binarized = set(config.binarized_weight_names())
    scale_dtype = np.float32 if np.dtype(dense_dtype) == np.float32 else np.float16
    plan = {}
    for name, shape in stacking_order(config.param_shapes()).items():
        prefix = name.rsplit(".", 1)[0]
        if name in binarized:
            plan[name] = ("signs", np.uint8, signs_shape(shape[0], shape[1], layout), shape[1], shape[0])
        elif name.endswith((".wscale", ".wbias")) and prefix + ".weight" in binarized:
            plan[name] = ("dense", scale_dtype, shape)
        else:
            plan[name] = ("dense", np.dtype(dense_dtype), shape)
    return plan


def pack_tensors(out, config: ModelConfig, raw: dict, tensors, dense_dtype="float16", folder=None,
                 layout="auto") -> dict:
    """Write `out` from (name, array) pairs in any order (a checkpoint streamed, or one in memory).
    raw: its config.json dict; folder: where its tokenizer file lies; layout: the signs' (file_layout)."""
    layout = file_layout(layout)
    if not config.binarized or not config.has_scales:
        raise TinyFBIError(f"{folder or 'this checkpoint'} is not an FBI (column-scaled binarized) checkpoint: "
                           "nothing to pack")
    if config.scaling != "column":
        raise TinyFBIError(f"{folder or 'this checkpoint'} scales its linears per {config.scaling}; "
                           "the packed runtime has per-column alpha/beta only")
    plan, shapes = storage_plan(config, dense_dtype, layout), config.param_shapes()
    binarized = set(config.binarized_weight_names())
    scales = {p.removesuffix(".weight") + s for p in binarized for s in (".wscale", ".wbias")}
    correct_zeros = config.sign_of_zero == 0              # the authors' sign(0) = 0: keep where the zeros are
    stats = {"binarized_params": 0, "binarized_bytes": 0, "other_params": 0, "other_bytes": 0, "exact_zeros": 0,
             "zero_lists": 0, "sign_of_zero": config.sign_of_zero, "layout": layout}
    with atomic_open(out) as f:
        writer = PackedWriter(f, raw, plan, _tokenizer(raw, folder), zero_lists=correct_zeros, layout=layout)
        for name, value in tensors:
            if shapes.get(name) != tuple(value.shape):
                raise TinyFBIError(f"{folder}: tensor {name!r} of shape {tuple(value.shape)} is not in the "
                                   "model its config.json describes")
            if name in binarized:
                bits = signs_in_layout(pack_blocked_mask(sign_mask(value)), layout)   # 1 bit per weight
                writer.write(name, bits)
                zeros = np.argwhere(value == 0)                           # (n, 2): (out row, in column) each
                stats["exact_zeros"] += len(zeros)
                if correct_zeros:
                    writer.write_zeros(zeros_name(name), zeros)
                    stats["zero_lists"] += bool(len(zeros))
                stats["binarized_params"] += value.size
                stats["binarized_bytes"] += bits.nbytes
            else:
                stored = np.asarray(value).astype(plan[name][1])
                writer.write(name, stored)
                if name in scales:                                        # alpha/beta count with the signs
                    stats["binarized_bytes"] += stored.nbytes
                else:
                    stats["other_params"] += stored.size
                    stats["other_bytes"] += stored.nbytes
            del value                 # a view of a mapped .bin shard: let it go before the next shard opens
        writer.finish()
    total_params = config.num_params()
    file_bytes = Path(out).stat().st_size
    stats.update(bits_per_binarized_param=8 * stats["binarized_bytes"] / stats["binarized_params"],
                 bits_per_param=8 * file_bytes / total_params, file_bytes=file_bytes,
                 float32_bytes=4 * total_params)
    return stats


def _tokenizer(raw: dict, folder) -> dict | None:
    """The tokenizer entry of the header: the checkpoint's spec and its file's bytes (hex); a released
    folder (no spec) with a tokenizer.model gets a sentencepiece spec for it."""
    spec = (raw.get("fbi") or {}).get("tokenizer")
    if spec is None and folder is not None and (Path(folder) / TOKENIZER_FILE).is_file():
        spec = {"kind": "sentencepiece", "file": TOKENIZER_FILE}
    if not spec:
        return None
    if spec.get("file") and folder is not None:
        return {"spec": spec, "file_hex": (Path(folder) / spec["file"]).read_bytes().hex()}
    return {"spec": spec}


RANDOM_CHUNK = 16 << 20      # bytes of a tensor drawn at a time: a 7B's embeddings never exist in float32


def _draw_rows(out: np.ndarray, draw):
    """Fill out (rows, ...) a block of rows at a time with draw(shape) (so that the temporaries of a draw
    stay small); the same blocks in the same order give the same values wherever out lives."""
    step = max(1, RANDOM_CHUNK // max(1, out[:1].nbytes * 4))
    for r in range(0, out.shape[0], step):
        out[r:r + step] = draw(out[r:r + step].shape)
    return out


def iter_random_packed(config: ModelConfig, seed=0, layout="blocked", into=None):
    """(name, array) of a randomly initialized FBI model as a .fbipack of this sign layout stores it
    (random signs, no float32 weights), in the file's order, one at a time: what `PackedRunner.random`
    runs and `pack --random-init` writes. into: name -> an array of the planned dtype and shape to draw
    into (PackedRunner.random's one buffer), else each tensor is new. Random bytes are random signs in
    either layout; only a shape with padding (in % 256, or out % 32 for nib4) goes through the blocked
    bits to keep its padding 0."""
    rng = np.random.default_rng(seed)
    for name, (kind, dtype, shape, *features) in storage_plan(config, layout=layout).items():
        out = into[name] if into is not None else np.empty(shape, dtype)
        if kind == "signs":
            in_f, out_f = features
            if in_f % BLOCK or (layout == "nib4" and out_f % NIB_ROWS):
                bits = rng.integers(0, 256, signs_shape(out_f, in_f, "blocked"), dtype=np.uint8)
                out[...] = signs_in_layout(pack_blocked_mask(unpack_blocked_mask(bits, in_f)), layout)
            else:
                _draw_rows(out, lambda s: rng.integers(0, 256, s, dtype=np.uint8))
        elif name.endswith(".wscale"):
            out[...] = 0.016                                   # |N(0, 0.02)| has mean 0.016: FBI's init alpha
        elif name.endswith(".wbias"):
            out[...] = rng.standard_normal(shape) * 1e-3       # beta near 0
        elif name.endswith("norm.weight"):
            out[...] = 1
        else:                                                  # embeddings and lm_head, N(0, 0.02)
            _draw_rows(out, lambda s: rng.standard_normal(s, dtype=np.float32) * 0.02)
        yield name, out


def pack_random(config: ModelConfig, out, seed=0, layout="auto"):
    """Write a randomly initialized model of `config` as a .fbipack, atomically (benchmarks of a file
    without a download: load time, memory); one tensor in memory at a time."""
    layout = file_layout(layout)
    with atomic_open(out) as f:
        writer = PackedWriter(f, config_to_json(config), storage_plan(config, layout=layout), layout=layout)
        for name, array in iter_random_packed(config, seed, layout):
            writer.write(name, array)
        writer.finish()


def random_once(config: ModelConfig, seed=0, layout="auto") -> Path:
    """The cache's .fbipack of a randomly initialized `config` (pack_random's), signs in `layout`: written on
    first use (atomically), reused after. Named by a hash of the config, the seed, the layout and the file
    format, so another shape or seed gets its own file."""
    layout = file_layout(layout)
    plan = json.dumps([config_to_json(config), seed, layout, VERSION, VERSION_NIB4], sort_keys=True)
    key = hashlib.sha1(plan.encode()).hexdigest()[:12]
    name = f"random-{config.num_hidden_layers}x{config.hidden_size}-seed{seed}-{key}.{layout}.fbipack"
    return made_once(cache_dir() / "random" / name, "drawing the random model",
                     lambda out: pack_random(config, out, seed, layout))


def relayout(src, out, layout: str) -> tuple[str, str]:
    """Rewrite a .fbipack with its signs in `layout` (file_layout's choice for auto), atomically, one
    tensor at a time from the mapped source: everything else (tokenizer, scales, zero lists) is copied as
    it is. Returns (the layout the source stores, the layout written)."""
    from kernels.nib4_blocked import blocked_from_nib4  # Numba: only when a packed file is rewritten
    layout = file_layout(layout)
    header, arrays = read_packed(src, load="map")
    have = sign_layout(header)
    plan = {}
    for name, t in header["tensors"].items():
        if t["kind"] == "signs":
            out_f = t.get("out_features", t["shape"][0])
            plan[name] = ("signs", np.uint8, signs_shape(out_f, t["in_features"], layout), t["in_features"], out_f)
        elif t["kind"] != "zeros":
            plan[name] = (t["kind"], np.dtype(t["dtype"]), t["shape"])
    zero_lists = config_from_json(header["config"], str(src), binarized_default=True).sign_of_zero == 0
    with atomic_open(out) as f:
        writer = PackedWriter(f, header["config"], plan, header.get("tokenizer"), zero_lists=zero_lists, layout=layout)
        for name, (kind, *_rest) in plan.items():
            array = arrays[name]
            if kind == "signs" and have != layout:
                out_f = plan[name][4]
                blocked = array if have == "blocked" else blocked_from_nib4(array, out_f)
                array = signs_in_layout(np.ascontiguousarray(blocked), layout)
            writer.write(name, array)
        for name, t in header["tensors"].items():
            if t["kind"] == "zeros":
                writer.write_zeros(name, arrays[name])
        writer.finish()
    return have, layout

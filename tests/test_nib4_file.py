"""A .fbipack whose signs are nib4 tiles: one copy of the bits for AVX2 int8 decode (v9) and prefill.

- blocked_from_nib4 (the per-call rewrite the batch kernels other than v7 read) gives the blocked bits packed
  straight from sign(W) (kernels.bitpack.pack_blocked_mask, not through nib4), for odd shapes, zeros as +1,
  and v7 on the tiles equals v7 on those bits;
- a model packed in each layout and loaded each way (read, map) gives the same logits bit for bit, prefill
  and decode: v9 and v5 / v13 sum the same integers (tests/test_lut4_kernel.py) and a prefill runs the
  same batch kernel on the same bits;
- the runner holds the file's one copy (tests/test_packed.py::test_runner_holds_one_copy_of_the_signs) and
  no array the size of the signs besides it, on the AVX2 path run natively or under TINYFBI_ISA=avx2;
- a file in the layout this CPU does not decode fastest is rewritten once into the cache, then reused;
  `pack IN.fbipack OUT --layout L` rewrites a file, and back again gives the same tensors;
- `pack --dtype float32` keeps alpha/beta in float32: the exact path lands on the authors' float model
  to float32 rounding where fp16 scales cannot.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from released import write_released

from kernels import bitpack
from kernels.dispatch import int8_decode_layout
from kernels.nib4_blocked import blocked_from_nib4
from kernels.simd import HAS_AVX2
from kernels.v7_maddubs_gemm_int8 import matmul_maddubs_int8
from tinyfbi import Model, ModelConfig, load_model, save_model
from tinyfbi.corpus.tokenizers import ByteTokenizer
from tinyfbi.formats.fbipack import read_header, read_packed, sign_layout
from tinyfbi.pack import main as pack_main
from tinyfbi.runtime.build_fbipack import pack_checkpoint
from tinyfbi.runtime.packed_runner import PackedRunner, load_packed

REPO = Path(__file__).resolve().parents[1]
# odd sizes: rows not a multiple of the 32-row tile, inputs not of the 256-input block, grouped-query attention
CFG = ModelConfig(vocab_size=256, hidden_size=72, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, intermediate_size=100, max_position_embeddings=48)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), out_f=st.integers(1, 100), in_f=st.integers(1, 800))
def test_blocked_from_nib4_gives_the_blocked_bits(seed, out_f, in_f):
    w = np.random.default_rng(seed).standard_normal((out_f, in_f)).astype(np.float32)
    w[np.random.default_rng(seed + 1).random(w.shape) < 0.05] = 0.0           # zeros are +1
    blocked = bitpack.pack_blocked_mask(w >= 0)                                 # straight from sign(W)
    nib = bitpack.nib4_from_blocked(blocked)
    assert np.array_equal(blocked_from_nib4(nib, out_f), blocked)


@pytest.mark.skipif(not HAS_AVX2, reason="v7 needs AVX2, which this CPU (or TINYFBI_ISA) lacks")
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), out_f=st.integers(1, 100), in_f=st.integers(1, 800), tokens=st.integers(1, 13))
def test_v7_on_nib4_tiles_equals_v7_on_blocked_bits(seed, out_f, in_f, tokens):
    """v7 reading the tiles (one 32-row tile rewritten at a time in a core's cache) sums the same int8
    products over the same signs as v7 on blocked bits packed straight from sign(W): equal bit for bit."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((out_f, in_f)).astype(np.float32)
    blocked = bitpack.pack_blocked_mask(w >= 0)
    alpha, beta = rng.random(in_f).astype(np.float32), (rng.standard_normal(in_f) * 0.1).astype(np.float32)
    x = rng.standard_normal((tokens, in_f)).astype(np.float32)
    want = matmul_maddubs_int8(bitpack.PackedSigns(out_f, in_f, blocked), alpha, beta, x)
    tiles = bitpack.PackedSigns(out_f, in_f, None, nib4=bitpack.nib4_from_blocked(blocked))
    assert np.array_equal(matmul_maddubs_int8(tiles, alpha, beta, x), want)


@pytest.mark.skipif(not HAS_AVX2, reason="v7 needs AVX2, which this CPU (or TINYFBI_ISA) lacks")
def test_v7_on_nib4_tiles_across_tile_groups_and_token_chunks():
    """300 x 4096 at 70 tokens: two groups of tiles (8 tiles of 16 KB fill GROUP_BYTES; the second holds
    2, the last one 12 rows), two chunks of tokens (64 tokens of 4096 int8 fill CHUNK_BYTES), and the
    next group prefetched: equal bit for bit to v7 on blocked bits."""
    from kernels.int8_loops import CHUNK_BYTES, GROUP_BYTES
    rng = np.random.default_rng(11)
    out_f, in_f, tokens = 300, 4096, 70
    assert GROUP_BYTES // (32 * in_f // 8) < -(-out_f // 32) and CHUNK_BYTES // in_f < tokens   # the case holds
    blocked = bitpack.pack_blocked_mask(rng.random((out_f, in_f)) < 0.5)
    alpha, beta = rng.random(in_f).astype(np.float32), (rng.standard_normal(in_f) * 0.1).astype(np.float32)
    x = rng.standard_normal((tokens, in_f)).astype(np.float32)
    want = matmul_maddubs_int8(bitpack.PackedSigns(out_f, in_f, blocked), alpha, beta, x)
    tiles = bitpack.PackedSigns(out_f, in_f, None, nib4=bitpack.nib4_from_blocked(blocked))
    assert np.array_equal(matmul_maddubs_int8(tiles, alpha, beta, x), want)


def test_blocked_from_nib4_refuses_a_wrong_shape():
    nib = np.zeros((2, 32, 32), np.uint8)
    with pytest.raises(ValueError, match="nib4 tiles of 80 rows"):
        blocked_from_nib4(nib, 80)


@pytest.fixture(scope="module")
def packed_files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nib4")
    save_model(Model(CFG, seed=7), tmp / "ckpt", tokenizer=ByteTokenizer())
    for layout in ("blocked", "nib4"):
        pack_checkpoint(tmp / "ckpt", tmp / f"{layout}.fbipack", layout=layout)
    return tmp


def logits(runner, tokens):
    """Prefill of all tokens (batch kernels), then the same tokens one at a time (stacked decode kernels)."""
    prefill = runner.forward(tokens, runner.new_cache())
    cache = runner.new_cache()
    steps = np.concatenate([runner.forward(tokens[:, t:t + 1], cache) for t in range(tokens.shape[1])], axis=1)
    return prefill, steps


def test_logits_equal_across_layouts_and_loads(packed_files):
    tokens = np.random.default_rng(0).integers(0, 256, (1, 12))
    results = {}
    for layout in ("blocked", "nib4"):
        assert sign_layout(read_header(packed_files / f"{layout}.fbipack")[0]) == layout
        for load in ("read", "map"):
            runner, _ = load_packed(packed_files / f"{layout}.fbipack", "int8", load=load, layout=layout)
            assert runner.describe()["layout"] == layout
            results[layout, load] = logits(runner, tokens)
    first = results["blocked", "read"]
    for key, (prefill, steps) in results.items():
        assert np.array_equal(prefill, first[0]) and np.array_equal(steps, first[1]), key
    # the exact kind reads blocked bits: a nib4 file is rewritten to them at load, same logits
    exact = [logits(load_packed(packed_files / f"{layout}.fbipack", "exact")[0], tokens) for layout in ("blocked", "nib4")]
    assert np.array_equal(exact[0][0], exact[1][0]) and np.array_equal(exact[0][1], exact[1][1])


def test_a_file_in_the_other_layout_is_rewritten_once_into_the_cache(packed_files, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TINYFBI_CACHE", str(tmp_path / "cache"))
    fastest = int8_decode_layout()
    other = "blocked" if fastest == "nib4" else "nib4"
    tokens = np.random.default_rng(1).integers(0, 256, (1, 6))
    runner, _ = load_packed(packed_files / f"{other}.fbipack", "int8")                   # auto: this CPU's layout
    assert runner.describe()["layout"] == fastest
    assert f"rewriting them once into {tmp_path / 'cache'}" in capsys.readouterr().err
    cached = list((tmp_path / "cache" / "layouts").glob(f"*.{fastest}.fbipack"))
    assert len(cached) == 1 and sign_layout(read_header(cached[0])[0]) == fastest
    mtime = cached[0].stat().st_mtime_ns
    again, _ = load_packed(packed_files / f"{other}.fbipack", "int8")
    assert capsys.readouterr().err == "" and cached[0].stat().st_mtime_ns == mtime       # reused, not rewritten
    as_is, _ = load_packed(packed_files / f"{other}.fbipack", "int8", layout=other)       # the file as it is
    assert as_is.describe()["layout"] == other
    want = logits(as_is, tokens)
    for got in (logits(runner, tokens), logits(again, tokens)):
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


def test_pack_rewrites_a_packed_file_and_back(packed_files, tmp_path, capsys):
    pack_main([str(packed_files / "blocked.fbipack"), str(tmp_path / "n.fbipack"), "--layout", "nib4"])
    assert "in nib4 (it stores blocked)" in capsys.readouterr().out
    pack_main([str(tmp_path / "n.fbipack"), str(tmp_path / "b.fbipack"), "--layout", "blocked"])
    head_a, a = read_packed(packed_files / "blocked.fbipack", "map")
    head_n, n = read_packed(tmp_path / "n.fbipack", "map")
    _, b = read_packed(tmp_path / "b.fbipack", "map")
    assert sign_layout(head_n) == "nib4" and head_n["tokenizer"] == head_a["tokenizer"]
    assert a.keys() == b.keys() == n.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    q = "model.layers.1.self_attn.q_proj.weight"
    assert np.array_equal(n[q], bitpack.nib4_from_blocked(np.asarray(a[q])))


def test_random_model_in_memory_holds_only_the_layout_it_runs():
    runner = PackedRunner.random(CFG, seed=0, kind="int8", layout="nib4")
    layer = runner.layers[0]
    assert all(getattr(layer, g).bits is None and getattr(layer, g).nib4 is not None
               for g in ("qkv", "o", "gate_up", "down"))
    signs = sum(getattr(lay, g).nib4.nbytes for lay in runner.layers for g in ("qkv", "o", "gate_up", "down"))
    tiles = sum(-(-o // 32) * 32 * 32 * -(-i // 256) for o, i in CFG.linear_shapes().values()) * CFG.num_hidden_layers
    assert signs == tiles                   # 1 bit per weight, rows padded to tiles of 32 per linear


@pytest.mark.skipif(not HAS_AVX2, reason="the AVX2 kernels need AVX2, which this CPU (or TINYFBI_ISA) lacks")
def test_avx2_path_runs_v9_on_the_files_one_copy(packed_files, tmp_path):
    """Under TINYFBI_ISA=avx2 (native on an AVX2-only CPU, forced on an AVX-512 one): auto runs a nib4 file
    as it is, with v9 decode and v7 prefill on its tiles; the process holds no array the size of the signs
    besides the file's buffer; logits equal the blocked file's on the same path."""
    code = f"""
import json, numpy as np
from tinyfbi.runtime.packed_runner import load_packed
tokens = np.random.default_rng(0).integers(0, 256, (1, 9))
out = {{}}
for layout in ("nib4", "blocked"):
    runner, _ = load_packed({str(packed_files)!r} + f"/{{layout}}.fbipack", "int8", layout="auto" if layout == "nib4" else layout)
    held = [a for layer in runner.layers for g in ("qkv", "o", "gate_up", "down")
            for a in (getattr(layer, g).bits, getattr(layer, g).nib4) if a is not None]
    out[layout] = dict(describe=runner.describe(), decode=runner.kernel_names(1), prefill=runner.kernel_names(9),
                       owned=sum(a.nbytes for a in held if a.flags.owndata), viewed=sum(a.nbytes for a in held),
                       logits=runner.forward(tokens, runner.new_cache()).tolist())
print(json.dumps(out))
"""
    env = dict(os.environ, PYTHONPATH=str(REPO), TINYFBI_ISA="avx2", TINYFBI_CACHE=str(tmp_path / "cache"))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    import json
    out = json.loads(run.stdout)
    nib4 = out["nib4"]
    assert nib4["describe"]["isa"] == "avx2" and nib4["describe"]["layout"] == "nib4"
    assert nib4["decode"]["linears"] == "stacked v9_lut4_int8"
    assert nib4["prefill"]["linears"] == "v7_maddubs_gemm_int8 on nib4 tiles"
    assert nib4["owned"] == 0 and nib4["viewed"] > 0         # every sign array a view of the file's buffer
    assert not (tmp_path / "cache").exists()                  # nothing rewritten: the file's layout is AVX2's
    assert out["blocked"]["decode"]["linears"] == "stacked v5_maddubs_int8"   # --layout blocked: what runs, said
    assert np.array_equal(np.array(nib4["logits"]), np.array(out["blocked"]["logits"]))


def test_float32_scales_land_on_the_authors_model_where_fp16_cannot(tmp_path):
    """Released layout, exact zeros, alpha/beta off the fp16 grid. Reference: the float model of the same
    folder (the authors' sign(0) = 0; test_interop ties it to transformers). --dtype float32 stores
    alpha/beta (and the dense tensors) in float32: what is left is float32 sums in another order, 1e-5 of
    the largest logit (with the head run in float32, --head f32). fp16 alpha/beta, embeddings and head
    (the default) round each by up to 2^-11 relative: the bound stated for the default is 1e-3
    (docs/runtime.md gives the measured value)."""
    cfg = CFG.replace(num_hidden_layers=2)
    model = Model(cfg, seed=5)
    rng = np.random.default_rng(3)
    for name, v in model.params.items():
        if name in model.binarized_names:
            v[rng.random(v.shape) < 0.2] = 0.0
        else:
            v += (rng.standard_normal(v.shape) * 0.05).astype(np.float32)      # off the fp16 grid
    folder = write_released(tmp_path / "FBI-LLM_zeros", model, "safetensors")
    tokens = np.random.default_rng(0).integers(0, 256, (1, 24))
    ref = load_model(folder).forward(tokens)
    scale = np.max(np.abs(ref))
    errors = {}
    for dtype in ("float32", "float16"):
        pack_main([str(folder), str(tmp_path / f"{dtype}.fbipack"), "--dtype", dtype])
        header = read_header(tmp_path / f"{dtype}.fbipack")[0]
        assert header["tensors"]["model.layers.0.mlp.up_proj.wscale"]["dtype"] == np.dtype(dtype).str
        runner, _ = load_packed(tmp_path / f"{dtype}.fbipack", "exact", head="f32" if dtype == "float32" else "f16")
        errors[dtype] = np.max(np.abs(runner.forward(tokens, runner.new_cache()) - ref)) / scale
    assert errors["float32"] <= 1e-5
    assert errors["float16"] <= 1e-3 and errors["float16"] > errors["float32"]

"""The packed runtime's kernels against independent references, and the instruction-set dispatch.

References and tolerances:
- stacked linears (kernels/stacked.py) and v8 (VNNI, or its generic-IR twin): v1_reference per
  segment in float64, held to the same bounds as tests/test_kernels.py (Higham's bound for exact,
  the int8 rounding bound for int8); the int8 ones also equal v5 bit for bit (same integers);
- lm_head kernels: float64 products of the values the head stores (fp16 or int8 * row scale), to
  Higham's bound 1.01 * n * u * sum |w x|; int8 rows are within s_r / 2 of the float weights;
- decode ops: tinyfbi.core.layers (the float model's own RMSNorm, RoPE, attention, SwiGLU) to
  1e-5 relative (float32 sums in another order over at most a few hundred terms); with an fp16
  cache, the same against the float model fed NumPy's fp16 rounding of its keys and values;
  SwiGLU's polynomial exp to 2 ulp of float64 exp, SwiGLU itself to 1e-6 relative (a few ulp).
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import bitpack, dispatch
from kernels.act_int8 import quantize_reference
from kernels.decode_ops import PARALLEL_MIN_WORK, _expf, attend, attend_fn, attend_parallel, rmsnorm_into, swiglu_into
from kernels.dense_head import DenseHead, quantize_rows_int8
from kernels.simd import HAS_AVX2, HAS_AVX512_VNNI, ISA, select_isa
from kernels.stacked import stack_linears, stacked_kernel_name, stacked_matvec
from kernels.v1_reference import fbi_linear_v1
from kernels.v5_maddubs_int8 import matvec_maddubs_int8
from kernels.v7_maddubs_gemm_int8 import matmul_maddubs_int8
from kernels.v8_vnni_int8 import matmul_vnni_int8, matvec_vnni_int8
from tinyfbi.core import layers as L

REPO = Path(__file__).resolve().parents[1]
U = 2.0 ** -24
FAST = settings(max_examples=15, deadline=None)
needs_avx2 = pytest.mark.skipif(not HAS_AVX2, reason="AVX2 kernel; this CPU (or TINYFBI_ISA) has no AVX2")
needs_vnni = pytest.mark.skipif(not HAS_AVX512_VNNI, reason="vpdpbusd needs AVX-512 VNNI + VL, which this CPU "
                                f"lacks (kernels.simd.ISA = {ISA!r}); its generic-IR twin is tested instead")
AVX512_TARGET = {"NUMBA_CPU_NAME": "icelake-server",
                 "NUMBA_CPU_FEATURES": "+avx,+avx2,+fma,+f16c,+avx512f,+avx512bw,+avx512vl,+avx512dq,+avx512vnni"}


def case(rng, out_f, in_f, batch=None):
    w = rng.standard_normal((out_f, in_f)).astype(np.float32)
    w[rng.random((out_f, in_f)) < 0.05] = 0.0                          # zeros count as +1
    alpha = rng.uniform(0.01, 2.0, in_f).astype(np.float32)           # (in,), per input column
    beta = (rng.standard_normal(in_f) * 0.1).astype(np.float32)
    x = rng.standard_normal((in_f,) if batch is None else (batch, in_f)).astype(np.float32)
    return w, alpha, beta, x


def exact_bound(alpha, beta, x):
    n = alpha.size + 4
    x2 = np.atleast_2d(x).astype(np.float64)
    mass = np.abs(x2 * alpha).sum(1) + np.abs(x2 * beta).sum(1)
    return (n * U / (1 - n * U) * mass)[:, None]                       # (B, 1)


def int8_bound(alpha, beta, x):
    """The hard int8 rounding bound per token (act_int8) plus float slack."""
    x2 = np.atleast_2d(x)
    scale = np.abs(x2 * alpha).max(1) / 127.0
    return (scale / 2 * alpha.size)[:, None] + exact_bound(alpha, beta, x) + 1e-6


# ---- stacked linears ----

@FAST
@given(seed=st.integers(0, 2**32 - 1), outs=st.lists(st.integers(1, 30), min_size=1, max_size=3),
       in_f=st.integers(1, 600), kind=st.sampled_from(["exact", "int8"]))
def test_stacked_equals_v1_per_segment(seed, outs, in_f, kind):
    rng = np.random.default_rng(seed)
    cases = [case(rng, o, in_f) for o in outs]
    x = cases[0][3]
    stacked = stack_linears([(bitpack.pack_signs(w), a, b) for w, a, b, _ in cases], lut=True)
    y = stacked_matvec(stacked, x, kind)
    assert y.shape == (stacked.rows,) and np.all(stacked.starts % 8 == 0)
    for s, (w, a, b, _) in enumerate(cases):
        ref = fbi_linear_v1(bitpack.pack_canonical(w), in_f, a, b, x)
        got = y[stacked.starts[s]: stacked.starts[s] + outs[s]]
        bound = exact_bound(a, b, x) if kind == "exact" else int8_bound(a, b, x)
        assert np.all(np.abs(got - ref) <= bound[0] + 4 * U * np.abs(ref)), (s, kind)
        if kind == "int8" and stacked_kernel_name(stacked, kind) == "v5_maddubs_int8":
            assert np.array_equal(got, matvec_maddubs_int8(bitpack.pack_signs(w), a, b, x))


def test_stacked_refuses_mixed_inputs():
    p = [bitpack.pack_signs(np.ones((4, n), np.float32)) for n in (10, 11)]
    with pytest.raises(ValueError, match="share in_features"):
        stack_linears([(p[0], np.ones(10), np.ones(10)), (p[1], np.ones(11), np.ones(11))], lut=False)


# ---- v8: vpdpbusd (real where the CPU has it, its generic-IR twin everywhere) ----

V8_PARAMS = [pytest.param(True, id="emulated"), pytest.param(False, id="vnni", marks=needs_vnni)]


@pytest.mark.parametrize("emulated", V8_PARAMS)
@FAST
@given(seed=st.integers(0, 2**32 - 1), out_f=st.integers(1, 40), in_f=st.integers(1, 700), batch=st.integers(1, 9))
def test_v8_equals_v1_and_v5(emulated, seed, out_f, in_f, batch):
    w, a, b, x = case(np.random.default_rng(seed), out_f, in_f, batch)
    packed, words = bitpack.pack_signs(w), bitpack.pack_canonical(w)
    y1 = matvec_vnni_int8(packed, a, b, x[0], emulated=emulated)
    yb = matmul_vnni_int8(packed, a, b, x, emulated=emulated)                  # (B, out)
    for t in range(batch):                                                     # v1 on the kernel's own activations
        q, scale = quantize_reference(a, x[t])
        deq = scale * q.astype(np.float64)
        ref = fbi_linear_v1(words, in_f, np.ones_like(a), np.zeros_like(b), deq) + x[t] @ b
        bound = exact_bound(np.zeros_like(a), b, x[t])[0] + 4 * U * (np.abs(deq).sum() + np.abs(ref))
        assert np.all(np.abs(yb[t] - ref) <= bound)
    if HAS_AVX2:                                                               # the same integers as maddubs
        assert np.array_equal(y1, matvec_maddubs_int8(packed, a, b, x[0]))
        assert np.array_equal(yb, matmul_maddubs_int8(packed, a, b, x))


def test_v8_assembles_to_vpdpbusd_for_an_avx512_target(tmp_path):
    """Compile (never run) the VNNI kernels for an AVX-512 CPU and read the instructions they execute."""
    code = """
from numba import types
import kernels.v8_vnni_int8 as v8
arr = lambda dt, nd: types.Array(dt, nd, "C")
sig1 = (arr(types.uint8, 2), arr(types.float32, 1), arr(types.float32, 1), arr(types.float32, 1), arr(types.float32, 1))
sig2 = sig1[:3] + (arr(types.float32, 2), arr(types.float32, 2))
for fn, sig in ((v8._matvec, sig1), (v8._matmul, sig2)):
    fn.compile(sig)
    asm = fn.inspect_asm(sig)
    print(fn.__name__, asm.count("vpdpbusd"), asm.count("vpmaddubsw"))
"""
    env = dict(os.environ, PYTHONPATH=str(REPO), NUMBA_CACHE_DIR=str(tmp_path), **AVX512_TARGET)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    counts = {line.split()[0]: tuple(map(int, line.split()[1:])) for line in out.stdout.splitlines()}
    assert counts["_matvec"][0] >= 8 and counts["_matvec"][1] == 0      # 8 planes per block, no AVX2 maddubs
    assert counts["_matmul"][0] >= 8 * 4 and counts["_matmul"][1] == 0  # and 4 tokens per pass


# ---- instruction-set selection and the TINYFBI_ISA switch ----

def test_select_isa_steps_down_only():
    avx512 = {"avx2", "avx512f", "avx512bw", "avx512vl", "avx512vnni"}
    assert select_isa(avx512) == "avx512" and select_isa(avx512, "avx2") == "avx2"
    assert select_isa(avx512 - {"avx512vnni"}) == "avx2"
    assert select_isa({"avx2"}, "avx512") == "avx2"                    # cannot claim what the CPU lacks
    assert select_isa(set()) == "portable" and select_isa(avx512, "portable") == "portable"
    with pytest.raises(ValueError, match="TINYFBI_ISA"):
        select_isa(avx512, "sse9")


def test_isa_follows_the_features_numba_compiles_for(tmp_path):
    """NUMBA_CPU_NAME alone changes LLVM's tuning, not the features (Numba keeps the host's), so the
    ISA stays the host's; NUMBA_CPU_NAME=generic compiles for no extensions, so the ISA is portable."""
    code = "import kernels.simd as s; print(s.ISA)"
    got = {}
    for name in ("znver4", "generic"):
        env = dict(os.environ, PYTHONPATH=str(REPO), NUMBA_CPU_NAME=name)
        env.pop("NUMBA_CPU_FEATURES", None)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-2000:]
        got[name] = out.stdout.strip()
    assert got == {"znver4": ISA, "generic": "portable"}


@pytest.mark.parametrize("forced, int8_b1, int8_batch, exact_b1", [
    pytest.param("avx2", "v5_maddubs_int8", "v7_maddubs_gemm_int8", "v3_lut3_f32", marks=needs_avx2),
    ("portable", "v4_popcount_int8", "v6_tiles_blas", "v2_masked_f32")])
def test_forced_isa_picks_its_kernels_and_agrees_with_v1(forced, int8_b1, int8_batch, exact_b1, tmp_path):
    code = """
import numpy as np
from kernels import bitpack, dispatch, simd
from kernels.stacked import stack_linears, stacked_kernel_name, stacked_matvec
from kernels.v1_reference import fbi_linear_v1
rng = np.random.default_rng(0)
w = rng.standard_normal((37, 300)).astype(np.float32); a = rng.uniform(0.1, 2, 300).astype(np.float32)
b = rng.standard_normal(300).astype(np.float32) * 0.1; x = rng.standard_normal((40, 300)).astype(np.float32)
p = bitpack.pack_signs(w, lut=True)
st = stack_linears([(p, a, b)], lut=True)
names = [dispatch.kernel_name(p, 1, "int8"), dispatch.kernel_name(p, 40, "int8"), dispatch.kernel_name(p, 1, "exact"),
         stacked_kernel_name(st, "int8"), stacked_kernel_name(st, "exact")]
ref = fbi_linear_v1(bitpack.pack_canonical(w), 300, a, b, x)
err = max(np.abs(dispatch.matvec(p, a, b, x[:1], kind) - ref[:1]).max() for kind in ("exact", "int8"))
err = max(err, np.abs(dispatch.matvec(p, a, b, x, "int8") - ref).max(), np.abs(stacked_matvec(st, x[0], "int8")[:37] - ref[0]).max())
print(simd.ISA, *names, err / np.abs(ref).max())
"""
    env = dict(os.environ, PYTHONPATH=str(REPO), TINYFBI_ISA=forced)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    isa, n1, nb, e1, s8, se, rel = out.stdout.split()
    assert (isa, n1, nb, e1, s8, se) == (forced, int8_b1, int8_batch, exact_b1, int8_b1, exact_b1)
    assert float(rel) < 0.05                                               # int8 on Gaussian activations


# ---- lm_head kernels ----

@pytest.mark.parametrize("kind", ["f16", "int8", "f32"])
@pytest.mark.parametrize("shape", [(50, 72), (300, 256)])
def test_dense_head_equals_float64_of_its_stored_values(kind, shape):
    rng = np.random.default_rng(1)
    w = (rng.standard_normal(shape) * 0.02).astype(np.float32)
    h = rng.standard_normal((9, shape[1])).astype(np.float32)               # 9 tokens: BLAS tiles
    head = DenseHead(w, kind)
    stored = head.dequantized().astype(np.float64)                              # (V, C)
    ref = h.astype(np.float64) @ stored.T
    n = shape[1] + 1
    bound = 1.01 * n * U * (np.abs(h.astype(np.float64)) @ np.abs(stored).T) + 1e-12
    assert np.all(np.abs(head(h) - ref) <= bound)
    assert np.all(np.abs(head(h[:3]) - ref[:3]) <= bound[:3])                 # 3 tokens: the row kernels
    if kind == "int8":                                                          # each weight within s_r / 2
        q, scale = quantize_rows_int8(w)
        assert np.all(np.abs(q.astype(np.float64) * scale[:, None] - w) <= scale[:, None] * (0.5 + 1e-6))
        q7, scale7 = quantize_rows_int8(w, rows=7)                              # block by block, same values
        assert np.array_equal(q7, q) and np.array_equal(scale7, scale)
    if kind == "f16":
        assert np.array_equal(stored, w.astype(np.float16).astype(np.float64))


def test_fp16_head_keeps_a_mapped_file_mapped(tmp_path):
    w = np.lib.format.open_memmap(tmp_path / "h.npy", mode="w+", dtype=np.float16, shape=(40, 64))
    w[:] = 0.5
    assert DenseHead(w, "f16").weight.base is not None                          # a view, not a padded copy


@needs_avx2
def test_fp16_head_widens_in_registers(tmp_path):
    """Compiled afresh (cached code cannot be inspected): the fp16 rows widen with vcvtph2ps (F16C)."""
    code = """
from numba import types
from kernels.dense_head import _head_f16
sig = (types.Array(types.uint16, 2, "C"), types.Array(types.float32, 2, "C"), types.Array(types.float32, 2, "C"))
_head_f16.compile(sig)
print(_head_f16.inspect_asm(sig).count("vcvtph2ps"))
"""
    env = dict(os.environ, PYTHONPATH=str(REPO), NUMBA_CACHE_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.split()[-1]) >= 4                                     # 4 vectors per unrolled step


# ---- decode ops ----

def test_rmsnorm_and_swiglu_match_the_float_model():
    rng = np.random.default_rng(2)
    x, w = rng.standard_normal(200).astype(np.float32), rng.standard_normal(200).astype(np.float32)
    out = np.empty(200, np.float32)
    rmsnorm_into(x, w, 1e-5, out)
    np.testing.assert_allclose(out, L.rmsnorm_forward(x, w, 1e-5)[0], rtol=1e-5, atol=1e-6)
    g, u = rng.standard_normal(300).astype(np.float32) * 3, rng.standard_normal(300).astype(np.float32)
    swiglu_into(g, u, out := np.empty(300, np.float32))
    np.testing.assert_allclose(out, L.swiglu_forward(g, u)[0], rtol=1e-5, atol=1e-6)


def test_swiglu_polynomial_exp_is_within_a_few_ulp():
    """_expf (range reduction + degree-7 polynomial, vectorizable) vs float64 exp: 2 ulp on its range,
    clamped (never inf, never denormal) outside; SwiGLU over +-100 vs the float model to 1e-6 relative:
    exp's 2 ulp plus four float32 roundings on each side, about 8 ulp (the sigmoid only shrinks exp's
    relative error); atol covers gates below -88, where exp(-g) overflows to inf in NumPy (silu 0)
    and is clamped here (|silu| < 1e-35)."""
    x = np.concatenate([np.linspace(-87.3, 88.3, 400_001), [0.0, -1e-30, 1e-30]]).astype(np.float32)
    got = np.array([_expf(v) for v in x[::97]] + [_expf(v) for v in x[-3:]], np.float64)
    ref = np.exp(np.concatenate([x[::97], x[-3:]]).astype(np.float64))
    assert np.all(np.abs(got - ref) <= 2 * np.spacing(ref.astype(np.float32)))
    assert _expf(np.float32(-1e4)) == _expf(np.float32(-87.33654)) > 0 and np.isfinite(_expf(np.float32(1e4)))
    rng = np.random.default_rng(4)
    g = np.concatenate([rng.uniform(-100, 100, 5000), rng.standard_normal(5000) * 3]).astype(np.float32)
    u = rng.standard_normal(g.size).astype(np.float32)
    swiglu_into(g, u, out := np.empty_like(g))
    with np.errstate(over="ignore"):
        ref = L.swiglu_forward(g, u)[0]
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-35)


@pytest.mark.parametrize("kv", ["f32", "f16"])
@pytest.mark.parametrize("fn", [attend, attend_parallel])
@pytest.mark.parametrize("start, T, D", [(0, 7, 16), (9, 1, 16), (5, 4, 16), (37, 1, 64), (3, 2, 24)])
def test_attention_matches_the_float_model(fn, start, T, D, kv):
    """Grouped-query (4 query heads on 2 kv heads): rope, cache append and causal softmax vs core.layers.
    kv 'f16': the cache holds fp16 bits (uint16); the reference is the float model fed NumPy's fp16
    rounding of its own keys and values, so only the sum order differs (same 1e-5)."""
    rng = np.random.default_rng(3)
    H, Hkv, max_len = 4, 2, 50
    dt = np.uint16 if kv == "f16" else np.float32
    rnd = (lambda a: a.astype(np.float16).astype(np.float32)) if kv == "f16" else (lambda a: a)
    cos, sin = L.rope_cos_sin(np.arange(max_len), D, 10000.0)                   # (P, D)
    past_k = rnd(rng.standard_normal((1, Hkv, start, D)).astype(np.float32))   # already roped, as cached
    past_v = rnd(rng.standard_normal((1, Hkv, start, D)).astype(np.float32))
    q = rng.standard_normal((T, H * D)).astype(np.float32)
    k, v = rng.standard_normal((2, T, Hkv * D)).astype(np.float32)
    kc, vc = np.zeros((Hkv, max_len, D), dt), np.zeros((Hkv, max_len, D), dt)
    if kv == "f16":
        kc[:, :start], vc[:, :start] = (a[0].astype(np.float16).view(np.uint16) for a in (past_k, past_v))
    else:
        kc[:, :start], vc[:, :start] = past_k[0], past_v[0]
    out = np.empty((T, H * D), np.float32)
    fn(q, k, v, cos[start:start + T], sin[start:start + T], kc, vc, start, out)
    # reference: the float runtime's own steps (runtime.inference.Runner.forward)
    c, s = cos[start:start + T], sin[start:start + T]
    qr, _ = L.rope_forward(q.reshape(1, T, H, D).transpose(0, 2, 1, 3), c, s)
    kr, _ = L.rope_forward(k.reshape(1, T, Hkv, D).transpose(0, 2, 1, 3), c, s)
    keys = np.concatenate([past_k, kr], axis=2)
    vals = np.concatenate([past_v, v.reshape(1, T, Hkv, D).transpose(0, 2, 1, 3)], axis=2)
    got_k, got_v = (a.view(np.float16).astype(np.float32) if kv == "f16" else a for a in (kc, vc))
    # fp16: our float32 rope may differ from NumPy's by an ulp, which can move the rounding one fp16 ulp
    np.testing.assert_allclose(got_k[:, :start + T], rnd(keys[0]), rtol=1e-6 if kv == "f32" else 2.0 ** -10, atol=1e-6)
    np.testing.assert_allclose(got_v[:, :start + T], rnd(vals[0]), rtol=0, atol=0)
    ref, _ = L.attention_forward(qr, rnd(keys) if kv == "f32" else got_k[None, :, :start + T], rnd(vals))  # (1, H, T, D)
    np.testing.assert_allclose(out, ref[0].transpose(1, 0, 2).reshape(T, H * D), rtol=1e-5, atol=1e-5)


def test_attention_runs_serially_below_the_work_threshold():
    assert attend_fn(8, 64, 32) is attend                                       # tiny model, short context: serial
    assert attend_fn(32, 160, 64) is attend_parallel and attend_fn(32, 160, 128) is attend_parallel
    assert attend_fn(1, PARALLEL_MIN_WORK, 1) is attend_parallel and attend_fn(1, PARALLEL_MIN_WORK - 1, 1) is attend


def fma_width_counts(asm: str) -> int:
    """Packed float32 FMAs at the widest register the compiler chose: zmm (16 lanes) where it used any,
    else ymm (8 lanes). LLVM picks by CPU tuning (Zen 4/5 prefer zmm, Ice Lake-era Intel ymm), so a
    check that counted ymm alone failed on an AVX-512 CPU that took zmm."""
    counts = {r: len(re.findall(r"vfmadd\w+ps\s+[^\n]*%" + r, asm)) for r in ("ymm", "zmm")}
    return counts["zmm"] or counts["ymm"]


@needs_avx2
@pytest.mark.parametrize("tuning", [pytest.param({}, id="host"),
                                    pytest.param({"NUMBA_CPU_NAME": "znver4"}, id="prefer-512-tuning")])
def test_decode_ops_vectorize(tmp_path, tuning):
    """Compiled afresh: the attention's dot products, weighted sums and exp, and SwiGLU, run on 8-lane
    (ymm) or 16-lane (zmm) FMAs, whichever width the compiler chose; SwiGLU calls no scalar libm exp;
    the fp16 cache widens with vcvtph2ps. 'prefer-512-tuning' compiles for the host's own features
    with Zen 4's tuning (LLVM prefers zmm there when the features include AVX-512; ymm otherwise), so
    both widths are checked on an AVX-512 machine whatever its own tuning."""
    code = """
import numpy as np
from kernels import decode_ops as K
z = lambda *s: np.zeros(s, np.float32)
K.attend(z(1, 256), z(1, 256), z(1, 256), z(1, 128), z(1, 128), z(2, 9, 128), z(2, 9, 128), 3, z(1, 256))
K.attend(z(1, 256), z(1, 256), z(1, 256), z(1, 128), z(1, 128), np.zeros((2, 9, 128), np.uint16), np.zeros((2, 9, 128), np.uint16), 3, z(1, 256))
K.swiglu_into(z(9), z(9), z(9))
for fn in (K.attend, K.swiglu_into):
    for sig in fn.signatures:
        print("@@@@")
        print(fn.inspect_asm(sig))
"""
    env = dict(os.environ, PYTHONPATH=str(REPO), NUMBA_CACHE_DIR=str(tmp_path), **tuning)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    f32_asm, f16_asm, sw_asm = out.stdout.split("@@@@\n")[1:]
    f32, f16, sw = map(fma_width_counts, (f32_asm, f16_asm, sw_asm))
    cvt, calls = f16_asm.count("vcvtph2ps"), len(re.findall(r"call\w*\s+\*?\S*expf", sw_asm))
    assert f32 >= 12 and f16 >= 12 and cvt >= 2                 # dot, weighted sum, exp polynomial (7)
    assert sw >= 7 and calls == 0


def test_dispatch_names_every_kernel_it_can_pick():
    p = bitpack.pack_signs(np.ones((8, 64), np.float32), lut=True)
    names = {dispatch.kernel_name(p, b, k) for b in (1, 4, 64) for k in ("exact", "int8")}
    assert names <= set(dispatch._BATCH1) | set(dispatch._BATCH)


@pytest.mark.parametrize("kind", ["exact", "int8"])
@pytest.mark.parametrize("batch", [1, 3, 4, 64])
def test_matvec_writes_into_the_callers_buffer(kind, batch):
    """matvec(out=buf) returns buf itself (batch kernels and the token-by-token ones alike), holding the
    same values bit for bit as without it (the same kernel on the same inputs): the runner's prefill
    reuses one buffer per linear across layers. A buffer of the wrong shape or type is refused."""
    rng = np.random.default_rng(batch)
    p = bitpack.pack_signs(rng.standard_normal((40, 300)).astype(np.float32), lut=True)
    alpha, beta = rng.random(300, dtype=np.float32), rng.standard_normal(300).astype(np.float32) * 0.01
    x = rng.standard_normal((batch, 300)).astype(np.float32)
    buf = np.full((batch, 40), np.nan, np.float32)
    y = dispatch.matvec(p, alpha, beta, x, kind, out=buf)
    assert y is buf and np.array_equal(buf, dispatch.matvec(p, alpha, beta, x, kind))
    for bad in (np.empty((batch, 41), np.float32), np.empty((batch, 40), np.float64)):
        with pytest.raises(ValueError, match="out must be"):
            dispatch.matvec(p, alpha, beta, x, kind, out=bad)

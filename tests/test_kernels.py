"""The bit-packed kernels against v1_reference, and the bit layouts against their inverses.

Tolerances:
- exact kernels (v2, v3, v6, matvec kind="exact") sum the same float32 terms as v1 in another
  order, so each output is within Higham's bound for any summation order,
  gamma_n * sum_j |term_j| with gamma_n = n*u / (1 - n*u), u = 2^-24, n = in_features + 4 (the
  alpha * x product, the beta term and the final adds): a wrong sign or a dropped term is off by
  2 * |term|, far outside it for the non-degenerate random inputs used here;
- int8 kernels (v4, v5) must equal v1 applied to their own dequantized activations scale * q to
  the same bound (the integer part is exact), and stay within the hard rounding bound
  scale / 2 * in_features of v1 on the original activations (kernels/act_int8.py);
- on Gaussian activations the int8 error is stated as max|y - v1| <= 5% of max|v1|.
Shapes are drawn by hypothesis: in-features not a multiple of 64 or 256, odd out-features, B 1-3.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import bitpack, dispatch
from kernels.act_int8 import quantize_int8, quantize_reference
from kernels.simd import HAS_AVX2
from kernels.v1_reference import fbi_linear_v1
from kernels.v2_masked_f32 import matvec_masked_f32
from kernels.v3_lut3_f32 import matvec_lut3_f32
from kernels.v4_popcount_int8 import matvec_popcount_int8
from kernels.v5_maddubs_int8 import matvec_maddubs_int8
from kernels.v6_tiles_blas import matmul_tiles_blas
from kernels.v7_maddubs_gemm_int8 import matmul_maddubs_int8

U = 2.0 ** -24
FAST = settings(max_examples=25, deadline=None)
needs_avx2 = pytest.mark.skipif(not HAS_AVX2, reason="AVX2 kernel")

shapes = st.tuples(st.integers(1, 40), st.integers(1, 700))          # (out, in)
seeds = st.integers(0, 2**32 - 1)


def make_case(seed, out_f, in_f, batch=None):
    """W with some exact zeros, alpha > 0, beta, x; all float32 as the model holds them."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((out_f, in_f)) * 0.02).astype(np.float32)
    w[rng.random((out_f, in_f)) < 0.05] = 0.0                         # zeros must count as +1
    alpha = rng.uniform(0.01, 2.0, (1, in_f)).astype(np.float32)      # (1, in), per input column
    beta = rng.standard_normal((1, in_f)).astype(np.float32) * 0.1
    shape = (in_f,) if batch is None else (batch, in_f)
    x = rng.standard_normal(shape).astype(np.float32)
    return w, alpha, beta, x


def float_bound(alpha, beta, x):
    """Higham's bound per output: gamma_n * (sum |alpha x| + sum |beta x|), broadcast over outputs."""
    n = alpha.size + 4
    gamma = n * U / (1 - n * U)
    x2 = np.atleast_2d(x).astype(np.float64)
    mass = np.abs(x2 * alpha.reshape(1, -1)).sum(1) + np.abs(x2 * beta.reshape(1, -1)).sum(1)
    b = gamma * mass[:, None] + 1e-30                                 # (B, 1)
    return b[0] if np.ndim(x) == 1 else b


def assert_within(y, ref, bound):
    err = np.abs(np.asarray(y, np.float64) - ref)
    assert np.all(err <= bound), f"max excess {np.max(err - bound):.3g}, max err {err.max():.3g}"


# ---- layouts ----

@FAST
@given(shape=shapes, seed=seeds)
def test_canonical_round_trip_and_bit_order(shape, seed):
    w, *_ = make_case(seed, *shape)
    words = bitpack.pack_canonical(w)                                 # (out, ceil(in/64))
    assert words.dtype == np.uint64 and words.shape == (shape[0], -(-shape[1] // 64))
    signs = np.where(w >= 0, 1.0, -1.0).astype(np.float32)
    assert np.array_equal(bitpack.unpack_canonical(words, shape[1]), signs)
    j = np.arange(shape[1])
    bit = (words[:, j // 64] >> (j % 64).astype(np.uint64)) & np.uint64(1)  # bit j%64 of word j//64
    assert np.array_equal(bit.astype(bool), w >= 0)
    pad = words[:, -1] >> np.uint64(shape[1] % 64) if shape[1] % 64 else np.zeros(1, np.uint64)
    assert not pad.any(), "padding bits must be 0"


@FAST
@given(shape=shapes, seed=seeds)
def test_fast_layouts_round_trip(shape, seed):
    w, *_ = make_case(seed, *shape)
    signs = np.where(w >= 0, 1.0, -1.0).astype(np.float32)
    packed = bitpack.pack_signs(w, lut=True)
    assert np.array_equal(bitpack.unpack_signs(packed), signs)
    lut_mask = bitpack.unpack_lut3_mask(packed.lut, *shape)
    assert np.array_equal(bitpack.mask_to_signs(lut_mask), signs)
    assert np.array_equal(packed.canonical(), bitpack.pack_canonical(w))
    again = bitpack.from_canonical(packed.canonical(), shape[1], lut=True)
    assert np.array_equal(again.bits, packed.bits) and np.array_equal(again.lut, packed.lut)


def test_zero_weights_pack_as_plus_one_and_documented_bit_positions():
    w = np.zeros((3, 300), np.float32)
    assert np.all(bitpack.unpack_signs(bitpack.pack_signs(w, lut=True)) == 1.0)
    words = bitpack.pack_canonical(w)                                 # 300 bits: 4 full words + 44
    assert np.all(words[:, :4] == np.uint64(2**64 - 1)) and np.all(words[:, 4] == np.uint64(2**44 - 1))
    for j, byte, value in [(257, 33, 1), (293, 37, 2), (31, 31, 1), (32, 0, 2)]:
        one = np.full((1, 300), -1.0, np.float32)
        one[0, j] = 1.0                                               # blocked: byte 32*blk + k, bit b
        bits = bitpack.pack_signs(one).bits[0]                        # for input 256*blk + 32*b + k
        assert np.flatnonzero(bits).tolist() == [byte] and bits[byte] == value
    one = np.full((1, 64), -1.0, np.float32)
    one[0, 40] = 1.0                                                  # lut3: 40 = 30*1 + 3*3 + 1
    lut = bitpack.pack_signs(one, lut=True).lut                       # word 1, lane 0, bit 3*3 + 1
    assert lut.shape == (1, 3, 8) and lut[0, 1, 0] == 1 << 10 and int(lut.sum()) == 1 << 10


# ---- exact kernels ----

@FAST
@given(shape=shapes, seed=seeds)
def test_masked_f32_equals_v1(shape, seed):
    w, alpha, beta, x = make_case(seed, *shape)
    ref = fbi_linear_v1(bitpack.pack_canonical(w), shape[1], alpha, beta, x)
    y = matvec_masked_f32(bitpack.pack_signs(w), alpha.ravel(), beta.ravel(), x)
    assert_within(y, ref, float_bound(alpha, beta, x))


@needs_avx2
@FAST
@given(shape=shapes, seed=seeds)
def test_lut3_f32_equals_v1(shape, seed):
    w, alpha, beta, x = make_case(seed, *shape)
    ref = fbi_linear_v1(bitpack.pack_canonical(w), shape[1], alpha, beta, x)
    y = matvec_lut3_f32(bitpack.pack_signs(w, lut=True), alpha.ravel(), beta.ravel(), x)
    assert y.shape == (shape[0],)
    assert_within(y, ref, float_bound(alpha, beta, x))


@FAST
@given(shape=shapes, seed=seeds, batch=st.integers(1, 3))
def test_tiles_blas_equals_v1(shape, seed, batch):
    w, alpha, beta, x = make_case(seed, *shape, batch=batch)
    ref = fbi_linear_v1(bitpack.pack_canonical(w), shape[1], alpha, beta, x)
    y = matmul_tiles_blas(bitpack.pack_signs(w), alpha, beta, x)
    assert y.shape == (batch, shape[0])
    assert_within(y, ref, float_bound(alpha, beta, x))


def test_tiles_blas_crosses_tile_boundaries(monkeypatch):
    import kernels.v6_tiles_blas as v6
    monkeypatch.setattr(v6, "TILE_BYTES", 8 * 4 * 512)               # 8-row tiles
    w, alpha, beta, x = make_case(7, 37, 300, batch=5)
    ref = fbi_linear_v1(bitpack.pack_canonical(w), 300, alpha, beta, x)
    assert_within(v6.matmul_tiles_blas(bitpack.pack_signs(w), alpha, beta, x), ref, float_bound(alpha, beta, x))


# ---- int8 kernels ----

INT8_KERNELS = [matvec_popcount_int8, pytest.param(matvec_maddubs_int8, marks=needs_avx2)]


@FAST
@given(shape=shapes, seed=seeds)
def test_quantize_int8_matches_numpy(shape, seed):
    _, alpha, beta, x = make_case(seed, *shape)
    q = np.empty(shape[1] + 5, np.int8)
    scale, qsum, bx = quantize_int8(alpha.ravel(), beta.ravel(), x, q)
    q_ref, scale_ref = quantize_reference(alpha, x)
    assert np.array_equal(q[: shape[1]], q_ref) and not q[shape[1]:].any()
    assert scale == scale_ref and qsum == q_ref.astype(np.int64).sum()
    assert np.all(np.abs(q_ref) <= 127)
    assert np.all(np.abs(alpha.ravel() * x - scale * q_ref.astype(np.float64)) <= scale * (0.5 + 1e-5))


@pytest.mark.parametrize("kernel", INT8_KERNELS)
@FAST
@given(shape=shapes, seed=seeds)
def test_int8_kernels_equal_v1_on_their_activations(kernel, shape, seed):
    w, alpha, beta, x = make_case(seed, *shape)
    words = bitpack.pack_canonical(w)
    y = kernel(bitpack.pack_signs(w), alpha.ravel(), beta.ravel(), x)
    q, scale = quantize_reference(alpha, x)
    deq = scale * q.astype(np.float64)                                # (in,) what the kernel multiplies
    ref_deq = fbi_linear_v1(words, shape[1], np.ones_like(alpha), np.zeros_like(beta), deq) + x @ beta.ravel()
    # integer dot is exact: only scale * dot, the beta term and one add round
    assert_within(y, ref_deq, float_bound(np.zeros_like(alpha), beta, x) + 4 * U * (np.abs(deq).sum() + np.abs(ref_deq)))
    ref = fbi_linear_v1(words, shape[1], alpha, beta, x)
    assert_within(y, ref, scale / 2 * shape[1] + float_bound(alpha, beta, x) + 4 * U * np.abs(ref))


@needs_avx2
@FAST
@given(shape=shapes, seed=seeds, batch=st.integers(1, 9))
def test_maddubs_gemm_int8_equals_v1_token_by_token(shape, seed, batch):
    w, alpha, beta, x = make_case(seed, *shape, batch=batch)
    words = bitpack.pack_canonical(w)
    y = matmul_maddubs_int8(bitpack.pack_signs(w), alpha, beta, x)   # (B, out)
    assert y.shape == (batch, shape[0])
    for t in range(batch):                                            # each token has its own scale
        q, scale = quantize_reference(alpha, x[t])
        deq = scale * q.astype(np.float64)
        ref_deq = fbi_linear_v1(words, shape[1], np.ones_like(alpha), np.zeros_like(beta), deq) + x[t] @ beta.ravel()
        assert_within(y[t], ref_deq, float_bound(np.zeros_like(alpha), beta, x[t])
                      + 4 * U * (np.abs(deq).sum() + np.abs(ref_deq)))


@pytest.mark.parametrize("kernel", INT8_KERNELS)
@pytest.mark.parametrize("shape", [(64, 256), (37, 300), (96, 1000), (8, 4096)])
def test_int8_relative_error_on_gaussian_activations(kernel, shape):
    for seed in range(5):
        w, alpha, beta, x = make_case(seed, *shape)
        ref = fbi_linear_v1(bitpack.pack_canonical(w), shape[1], alpha, beta, x)
        y = kernel(bitpack.pack_signs(w), alpha.ravel(), beta.ravel(), x)
        assert np.abs(y - ref).max() <= 0.05 * np.abs(ref).max()


# ---- the API ----

@FAST
@given(shape=shapes, seed=seeds, batch=st.sampled_from([None, 1, 3, dispatch.BATCH_MIN]),
       kind=st.sampled_from(["exact", "int8"]), lut=st.booleans())
def test_matvec_api(shape, seed, batch, kind, lut):
    w, alpha, beta, x = make_case(seed, *shape, batch=batch)
    ref = fbi_linear_v1(bitpack.pack_canonical(w), shape[1], alpha, beta, x)
    y = dispatch.matvec(bitpack.pack_signs(w, lut=lut), alpha, beta, x, kind=kind)
    assert y.shape == ref.shape and y.dtype == np.float32
    slack = 0.0 if kind == "exact" else np.abs(alpha * x).max() / 254 * shape[1]  # int8 bound, any token
    assert_within(y, ref, float_bound(alpha, beta, x) + U * 4 * np.abs(ref) + slack)


def test_matvec_rejects_bad_input():
    packed = bitpack.pack_signs(np.ones((4, 10), np.float32))
    a = np.ones(10, np.float32)
    with pytest.raises(ValueError, match="kind"):
        dispatch.matvec(packed, a, a, a, kind="fp8")
    with pytest.raises(ValueError, match="x must be"):
        dispatch.matvec(packed, a, a, np.ones(11, np.float32))
    with pytest.raises(ValueError, match="alpha and beta"):
        dispatch.matvec(packed, np.ones(9), a, a)
    with pytest.raises(ValueError, match="lut3"):
        matvec_lut3_f32(packed, a, a, a)

# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 04 · Bit-packing and popcount: a matrix-vector product with 1-bit weights
#
# An FBI-Linear computes $y = \mathrm{sign}(W)\,(\alpha\odot x) + (\beta\cdot x)$. Only the signs are
# per-weight, so they fit in **one bit each** (32x less memory than float32), and the product with
# ±1 weights needs no multiplications at all. This notebook lays out the bits, derives the popcount
# formula, checks the library's Numba kernels against the reference, and times them.

# %% tags=["parameters"]
import os

FAST = os.environ.get("TINYFBI_FAST") == "1"
SEED = 0
SHAPES = [(768, 768), (2048, 768)] if FAST else [(768, 768), (2048, 768), (4096, 4096), (11008, 4096)]

# %%
import matplotlib.pyplot as plt
import numpy as np

from kernels import bitpack, dispatch
from kernels.bitpack import pack_canonical, unpack_canonical
from kernels.v1_reference import fbi_linear_v1
from tinyfbi.bench.timing import call_times, median_ms
from tinyfbi.core.compare import cmp

rng = np.random.default_rng(SEED)



# %% [markdown]
# ## Step 1 · the canonical bit layout
# Bits run along the **input** dimension (the axis $\alpha, \beta$ run along): bit `j % 64` of word
# `j // 64` in a row is input column `j`, 1 for +1 (w >= 0), 0 for -1. Padding bits past `in` are 0.

# %%
W = rng.standard_normal((3, 70)).astype(np.float32)
W[0, 0] = 0.0                                             # zero binarizes to +1
words = pack_canonical(W)                                 # (3, 2) uint64
print(words.shape, words.dtype)
print("row 0, first 8 bits:", [(int(words[0, 0]) >> j) & 1 for j in range(8)],
      "signs:", np.where(W[0, :8] >= 0, 1, -1))
cmp("unpack(pack(W)) == sign(W)", unpack_canonical(words, 70), np.where(W >= 0, 1.0, -1.0), 0)

# %% [markdown]
# ## Step 2 · the popcount formula
# Quantize the scaled activations to int8 per token, $q = \mathrm{round}((\alpha\odot x)/s)$, and split
# them into bit planes $Q_b$ (two's complement: $q = \sum_{b<7} 2^b Q_b - 128\,Q_7$). With $P$ the
# +1-bit mask of a row of signs:
#
# $$\sum_j S_j q_j = 2\sum_{j\in P} q_j - \sum_j q_j = 2\sum_b c_b\,\mathrm{popcount}(P \,\&\, Q_b) - \sum_j q_j,
# \quad c_b = 2^b\ (b<7),\ c_7 = -128.$$
#
# Eight ANDs and popcounts per 64 weights replace 64 multiply-adds.

# %%
n = 256
S = np.where(rng.standard_normal(n) >= 0, 1, -1)
q = rng.integers(-127, 128, n).astype(np.int8)
P = np.packbits(S > 0, bitorder="little").view(np.uint64)                       # (n/64,)
planes = [np.packbits(((q.view(np.uint8) >> b) & 1).astype(bool), bitorder="little").view(np.uint64)
          for b in range(8)]
c = [2 ** b for b in range(7)] + [-128]
dot = 2 * sum(cb * int(np.bitwise_count(P & Qb).sum()) for cb, Qb in zip(c, planes)) - int(q.astype(int).sum())
cmp("popcount formula vs S . q", dot, int(S @ q.astype(int)), 0)

# %% [markdown]
# ## Step 3 · every kernel against the reference
# `dispatch.matvec` picks a kernel by batch size and CPU: exact float kernels (`v2` masked selects,
# `v3` T-MAC-style lookup tables), int8 kernels (`v4` popcount, `v5` AVX2 `maddubs`), and for batches
# `v6` (decode tiles of bits to ±1, then BLAS) and `v7`. Each is checked against `v1` before timing.

# %%
out_f, in_f = 301, 555                                    # odd sizes: padding must be harmless
W = rng.standard_normal((out_f, in_f)).astype(np.float32)
alpha = rng.random((1, in_f)).astype(np.float32) * 0.05
beta = rng.standard_normal((1, in_f)).astype(np.float32) * 0.01
packed = bitpack.pack_signs(W, lut=True)
for batch in (1, 64):
    x = rng.standard_normal((batch, in_f)).astype(np.float32)
    ref = fbi_linear_v1(pack_canonical(W), in_f, alpha, beta, x)
    for kind in ("exact", "int8"):
        y = dispatch.matvec(packed, alpha, beta, x, kind)
        rel = np.max(np.abs(y - ref)) / np.max(np.abs(ref))
        bound = 1e-5 if kind == "exact" else 3e-2          # int8: rounding of activations (act_int8.py)
        print(f"batch {batch:>3} {kind:<5} -> {dispatch.kernel_name(packed, batch, kind):<22} rel err {rel:.1e}")
        assert rel <= bound

# %% [markdown]
# ## Step 4 · how fast, against float32 on this CPU
# Median time of one matrix-vector product (batch 1), with the benchmarks' one timing helper.
# `python -m tinyfbi.bench.kernels` does this properly for every kernel and shape, torch included;
# this is the short version.

# %%
def time_ms(fn):
    return median_ms(call_times(lambda _: fn(), 5 if FAST else 20, warmup=1))


rows = []
for out_f, in_f in SHAPES:
    W = (rng.standard_normal((out_f, in_f)) * 0.02).astype(np.float32)
    alpha = np.abs(W).mean(0, keepdims=True)
    beta = W.mean(0, keepdims=True)
    x = rng.standard_normal(in_f).astype(np.float32)
    packed = bitpack.pack_signs(W, lut=True)
    W_tilde = alpha * np.where(W >= 0, 1, -1).astype(np.float32) + beta
    rows.append((f"{out_f}x{in_f}", time_ms(lambda: W_tilde @ x),
                 time_ms(lambda: dispatch.matvec(packed, alpha, beta, x, "exact")),
                 time_ms(lambda: dispatch.matvec(packed, alpha, beta, x, "int8"))))
    print(f"{rows[-1][0]:>11}: float32 {rows[-1][1]:.3f} ms, 1-bit exact {rows[-1][2]:.3f} ms, "
          f"1-bit int8 {rows[-1][3]:.3f} ms, weights {W.nbytes / packed.bits.nbytes:.0f}x smaller")

# %%
fig, ax = plt.subplots(figsize=(7, 4))
xs = np.arange(len(rows))
for i, label in enumerate(("numpy float32", "1-bit exact", "1-bit int8")):
    ax.bar(xs + (i - 1) * 0.27, [r[i + 1] for r in rows], width=0.27, label=label)
ax.set_xticks(xs, [r[0] for r in rows])
ax.set_ylabel("ms per matrix-vector product")
ax.set_yscale("log")
ax.legend()
plt.show()

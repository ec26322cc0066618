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
# [FBI-LLM](https://arxiv.org/abs/2407.07093), section 3.1, eq. (3), replaces every linear of the
# decoder blocks by an **FBI-Linear**: the latent weights $W$ are binarized and rescaled per input
# column $j$,
#
# $$\widetilde W_{\cdot j} = \alpha_j\,\mathrm{sign}(W)_{\cdot j} + \beta_j ,$$
#
# while the activations stay 16-bit (W1A16). Multiplying out $y = \widetilde W x$ gives the form every
# kernel here computes: $y = \mathrm{sign}(W)\,(\alpha\odot x) + (\beta\cdot x)$. Only the signs are
# per weight, so they fit in **one bit each** (32x less than float32), and a product with ±1 weights
# needs no multiplications. Step by step: the bit layout (1), the popcount identity (2), every
# kernel the dispatcher can pick checked against the reference, and which one it picks on *this*
# CPU and why (3), then how fast: measured against the machine's load and its own memory bandwidth,
# with the weights coming from DRAM as in a real model (4, 5).

# %% tags=["parameters"]
import os

FAST = os.environ.get("TINYFBI_FAST") == "1"
SEED = 0
THREADS = 1           # one thread for every kernel, BLAS and the bandwidth probe: one core's numbers
SHAPES = [(768, 768), (2048, 768)] if FAST else [(768, 768), (2048, 768), (4096, 4096), (11008, 4096)]
ROUNDS = 2 if FAST else 5            # timing rounds; within a round the series take turns
MIN_S = 0.05 if FAST else 0.3        # seconds of calls behind each median (at least 20 calls)

# %%
import importlib
import pkgutil

import matplotlib.pyplot as plt
import numpy as np

import kernels
from kernels import bitpack, dispatch, simd
from kernels.bitpack import pack_canonical, unpack_canonical
from kernels.threads import set_threads
from kernels.v1_reference import fbi_linear_v1
from tinyfbi.bench import bandwidth
from tinyfbi.bench.kernels import AVAILABLE, KERNELS
from tinyfbi.bench.machine import cpu_name
from tinyfbi.bench.timing import LoadMeter
from tinyfbi.core.compare import cmp

rng = np.random.default_rng(SEED)
set_threads(THREADS)
print(f"{cpu_name()}, {os.cpu_count()} CPUs, instruction set for the kernels: {simd.ISA}; "
      f"{THREADS} thread(s) for every kernel and for BLAS")

# %% [markdown]
# ## Step 1 · the canonical bit layout
# Bits run along the **input** dimension, the axis $\alpha$ and $\beta$ run along: bit `j % 64` of
# word `j // 64` in a row is input column `j`, 1 for +1 ($w \ge 0$: zero binarizes to +1, so one bit
# holds every weight), 0 for -1. Padding bits past `in` are 0.

# %%
W = rng.standard_normal((3, 70)).astype(np.float32)
W[0, 0] = 0.0                                             # zero binarizes to +1
words = pack_canonical(W)                                 # (3, 2) uint64: 70 bits need 2 words per row
assert words.shape == (3, 2) and words.dtype == np.uint64
first_bits = [(int(words[0, 0]) >> j) & 1 for j in range(8)]
print("row 0, first 8 bits:", first_bits, " signs:", np.where(W[0, :8] >= 0, 1, -1))
assert first_bits == [int(w >= 0) for w in W[0, :8]] and first_bits[0] == 1
err = cmp("unpack(pack(W)) == sign(W)", unpack_canonical(words, 70), np.where(W >= 0, 1.0, -1.0), 0)

# %% [markdown]
# ## Step 2 · the popcount identity
# Quantize the scaled activations to int8 per token, $q = \mathrm{round}((\alpha\odot x)/s)$, and
# split them into bit planes $Q_b$ (two's complement: $q = \sum_{b<7} 2^b Q_b - 128\,Q_7$). With $P$
# the set of +1 weights in a row of signs $S$:
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
err = cmp("popcount identity vs S . q", dot, int(S @ q.astype(int)), 0)

# %% [markdown]
# ## Step 3 · every kernel against the reference, and which one runs here
# `kernels.dispatch.matvec` picks a kernel from three things, printed below: the **instruction set**
# found at run time on the reader's CPU (`kernels.simd.ISA`), the **number of tokens** (from
# `BATCH_MIN_INT8` tokens on an int8 batch kernel, from `BATCH_MIN` an exact one, else a batch-1
# kernel), and the **layouts** the packed weights carry (the signs can be held in more than one
# order, each read fastest by some kernel; here the weights carry every layout the package builds,
# so the dispatcher's choice is free). `exact` kernels agree with float32 arithmetic; `int8` kernels
# round $\alpha\odot x$ to int8 per token (faster: Step 4 measures by how much). Each kernel is
# checked against `v1`, the NumPy reference, on odd sizes, where padding must be harmless; the
# table names the kernels as the dispatcher picks them on this CPU, with the first line of each
# kernel's own description.

# %%
def kernel_summary(name):
    """The first line of the docstring of the kernels/ module a kernel name comes from (v8_vnni_gemm_int8 -> v8_*)."""
    prefix = name.split("_")[0] + "_"
    module = next(m.name for m in pkgutil.iter_modules(kernels.__path__) if m.name.startswith(prefix))
    return importlib.import_module(f"kernels.{module}").__doc__.strip().splitlines()[0]


out_f, in_f = 301, 555                                    # odd sizes: padding must be harmless
W = rng.standard_normal((out_f, in_f)).astype(np.float32)
alpha = rng.random((1, in_f)).astype(np.float32) * 0.05
beta = rng.standard_normal((1, in_f)).astype(np.float32) * 0.01
packed = bitpack.pack_signs(W, lut=True).with_nib4()      # every layout the package builds
print(f"instruction set: {simd.ISA}; batch kernels from {dispatch.BATCH_MIN_INT8} tokens (int8) and "
      f"{dispatch.BATCH_MIN} tokens (exact)\n")
picked = {}
for batch in (1, 64):
    x = rng.standard_normal((batch, in_f)).astype(np.float32)
    ref = fbi_linear_v1(pack_canonical(W), in_f, alpha, beta, x)
    for kind in ("exact", "int8"):
        y = dispatch.matvec(packed, alpha, beta, x, kind)
        rel = np.max(np.abs(y - ref)) / np.max(np.abs(ref))
        bound = 1e-5 if kind == "exact" else 3e-2          # int8: rounding of the activations (act_int8.py)
        name = picked[batch, kind] = dispatch.kernel_name(packed, batch, kind)
        print(f"{batch:>3} token(s) {kind:<5} -> {name:<22} rel err {rel:.1e} (bound {bound:.0e})  "
              f"{kernel_summary(name)}")
        assert rel <= bound

# %% [markdown]
# Why these: for each instruction set, the rule names the kernel that `python -m tinyfbi.bench.kernels`
# measures fastest for that many tokens (the module docstring of `kernels/dispatch.py` lists them).
# Step 5 checks the batch-1 choice on this CPU: it times each batch-1 kernel that runs here and
# asserts that the one picked is the fastest (within the timing noise).
#
# ## Step 4 · how fast, and against what
# A batch-1 product reads each weight once and does two flops with it, so it is limited by how fast
# the weights arrive. Four things make a timing mean something:
#
# 1. **The load.** This machine may be shared; the numbers below are only as good as the load
#    printed with them (the OS's load average, and the share of the CPUs other processes took
#    *while* the timings ran).
# 2. **Cold weights.** Timing the same small matrix again and again measures the cache: it stays in
#    the L3. In a model's decode, each layer's weights were last used a whole token ago, behind
#    hundreds of MB of other layers, so they come from DRAM. Each timed call here takes the next of
#    many copies of the weights that together fill four L3s, so every call reads from DRAM.
# 3. **A yardstick.** Bytes read per second, against the DRAM read bandwidth measured here, in the
#    same rounds and so under the same load (`tinyfbi.bench.bandwidth`: one thread summing a buffer
#    four L3s large): a float32 product that reaches it is as fast as the memory allows; 1-bit
#    weights read 32x fewer bytes.
# 4. **The right clock.** On a shared machine the wall clock also counts the moments another process
#    held the core, and a call longer than the scheduler's time slice (a few ms) is almost always
#    paused: a busy machine makes long products look slower per byte than short ones. This process's
#    CPU time counts only the time its thread ran, waits for DRAM included. With one thread it is the
#    time a call takes on a free core, so the figures and the claims below use it; the wall-clock
#    median stands beside it (where the two differ, other processes held the core).
#
# Every series is timed in `ROUNDS` rounds, the series taking turns within a round (so a burst of
# load falls on all of them alike); each round's figure is the median of at least 20 calls and
# `MIN_S` seconds of them, and the spread over rounds is drawn as an error bar.

# %%
load_before = bandwidth.load_average()
meter = LoadMeter()
l3 = bandwidth.l3_bytes()
probe, probe_bytes = bandwidth.read_probe()              # one thread summing a buffer of four L3s, by chunks
print(f"L3 {'unknown (32 MiB assumed)' if l3 is None else f'{l3 / 2**20:.0f} MiB'}; the bandwidth probe reads "
      f"{probe_bytes / 2**20:.0f} MiB per call of a buffer four L3s large, timed in every round beside the products")

CLOCK = "cpu" if THREADS == 1 else "wall"       # CPU time is the time per call only with one thread
series = ("numpy float32", "1-bit exact", "1-bit int8")
rows, probe_gbs = [], []
for out_f, in_f in SHAPES:
    W = (rng.standard_normal((out_f, in_f)) * 0.02).astype(np.float32)
    beta = W.mean(0, keepdims=True)                                    # FBI's init (section 3.1): per column
    alpha = np.abs(W - beta).mean(0, keepdims=True)
    x = rng.standard_normal(in_f).astype(np.float32)
    packed = bitpack.pack_signs(W, lut=True).with_nib4()
    W_tilde = alpha * np.where(W >= 0, np.float32(1), np.float32(-1)) + beta       # (out, in) float32
    dense, packs = bandwidth.cold_copies(W_tilde, l3), bandwidth.cold_copies(packed, l3)   # each fills 4 L3s
    ms = bandwidth.alternated_ms({
        "numpy float32": lambda i, d=dense: d[i % len(d)] @ x,     # this shape's copies, bound now
        "1-bit exact": lambda i, p=packs: dispatch.matvec(p[i % len(p)], alpha, beta, x, "exact"),
        "1-bit int8": lambda i, p=packs: dispatch.matvec(p[i % len(p)], alpha, beta, x, "int8"),
        "DRAM read probe": probe}, ROUNDS, min_s=MIN_S)
    probe_gbs += [probe_bytes / t / 1e6 for t in ms["DRAM read probe"][CLOCK]]
    sign_bytes = packed.bits.nbytes + alpha.nbytes + beta.nbytes      # what a 1-bit kernel reads
    for s in series:
        nbytes = W_tilde.nbytes if s == "numpy float32" else sign_bytes
        t = ms[s][CLOCK]
        rows.append({"shape": f"{out_f}x{in_f}", "series": s, "ms": float(np.median(t)), "lo": min(t), "hi": max(t),
                     "wall_ms": float(np.median(ms[s]["wall"])), "bytes": nbytes,
                     "copies": len(dense if s == "numpy float32" else packs)})
        rows[-1]["gbs"] = nbytes / rows[-1]["ms"] / 1e6
    assert W_tilde.nbytes == 32 * packed.bits.nbytes        # in a multiple of 256: exactly 32x fewer bytes
    del dense, packs
other = meter.other_share()
load_after = bandwidth.load_average()
dram_gbs = float(np.median(probe_gbs))
print(f"DRAM read bandwidth, one thread ({CLOCK} time): {dram_gbs:.1f} GB/s (median of its {len(probe_gbs)} "
      f"timings, {min(probe_gbs):.1f}-{max(probe_gbs):.1f})")

print(f"\n{'shape':>11} {'series':<14} {CLOCK + ' ms: median (min-max of rounds)':>32} {'wall ms':>8} {'GB/s':>6} "
      f"{'of DRAM':>7} {'vs float32':>10} {'copies':>6}")
for r in rows:
    base = next(b for b in rows if b["shape"] == r["shape"] and b["series"] == "numpy float32")
    r["speedup"] = base["ms"] / r["ms"]
    print(f"{r['shape']:>11} {r['series']:<14} {r['ms']:>10.3f} ({r['lo']:>7.3f}-{r['hi']:>7.3f}){'':>4} "
          f"{r['wall_ms']:>8.3f} {r['gbs']:>6.1f} {r['gbs'] / dram_gbs:>7.0%} {r['speedup']:>9.1f}x {r['copies']:>6}")
print(f"\nload average (1 min) {load_before[0]:.2f} before and {load_after[0]:.2f} after, on {os.cpu_count()} CPUs; "
      f"other processes took {other:.0%} of all CPUs while these ran")

# %% [markdown]
# What the table shows, at the default size (asserted below; at the CI size, `TINYFBI_FAST=1`, only
# two small shapes are timed briefly on a shared machine, and nothing is asserted about time, as no
# test asserts on wall-clock time):
#
# - **float32 is bound by memory.** At the largest shape its weights stream at more than half the
#   DRAM bandwidth measured above: the product cannot go much faster while it reads 4 bytes per weight.
# - **1-bit is many times faster at the 7B shape (11008x4096).** It reads 32x fewer bytes; the int8
#   kernel is at least 8x faster than float32 there.
# - **Time grows with the bytes read**, so the axis below is linear: the 130M model's small layers
#   take a fraction of a millisecond in every series.

# %%
largest, smallest = (f"{o}x{i}" for o, i in (SHAPES[-1], SHAPES[0]))
by = {(r["shape"], r["series"]): r for r in rows}
f32_big, int8_big = by[largest, "numpy float32"], by[largest, "1-bit int8"]
print(f"{largest}: float32 streams {f32_big['gbs']:.1f} GB/s = {f32_big['gbs'] / dram_gbs:.0%} of the DRAM "
      f"bandwidth; int8 1-bit is {int8_big['speedup']:.1f}x faster; float32 takes "
      f"{f32_big['ms'] / by[smallest, 'numpy float32']['ms']:.0f}x longer than at {smallest}")
share = int8_big["gbs"] / dram_gbs
print(f"the int8 1-bit kernel reads its bits at {share:.0%} of the bandwidth: "
      + ("memory is its limit too" if share > 0.8 else "the arithmetic of one core, not DRAM, is its limit here"))
if not FAST:
    assert f32_big["gbs"] > 0.5 * dram_gbs, "float32 did not reach half the measured bandwidth"
    assert int8_big["speedup"] >= 8, f"int8 1-bit only {int8_big['speedup']:.1f}x faster than float32"
    assert f32_big["ms"] > 10 * by[smallest, "numpy float32"]["ms"]
    small = [f"{o}x{i}" for o, i in SHAPES if i == 768]                   # the 130M model's layers
    assert all(by[sh, s]["ms"] < 1 for sh in small for s in series)     # "a fraction of a millisecond"

# %%
fig, (ax_ms, ax_gbs) = plt.subplots(1, 2, figsize=(12, 4.5))
shapes = [f"{o}x{i}" for o, i in SHAPES]
xs = np.arange(len(shapes))
for k, (s, color, hatch) in enumerate(zip(series, ("tab:gray", "tab:blue", "tab:orange"), ("", "//", ".."))):
    rs = [by[sh, s] for sh in shapes]
    pos = xs + (k - 1) * 0.27
    err = [[r["ms"] - r["lo"] for r in rs], [r["hi"] - r["ms"] for r in rs]]
    ax_ms.bar(pos, [r["ms"] for r in rs], 0.27, yerr=err, capsize=3, color=color, hatch=hatch, label=s)
    ax_gbs.bar(pos, [r["gbs"] for r in rs], 0.27, color=color, hatch=hatch, label=s)
ax_gbs.axhline(dram_gbs, color="k", ls="--", label=f"DRAM read bandwidth measured here ({dram_gbs:.1f} GB/s)")
ax_gbs.set_ylim(0, 1.4 * max(dram_gbs, max(r["gbs"] for r in rows)))     # room for the legend
for ax in (ax_ms, ax_gbs):
    ax.set_xticks(xs, shapes)
    ax.set_xlabel("weight matrix (out x in)")
    ax.legend(fontsize=8, loc="upper left")
ax_ms.set_ylabel(f"{CLOCK} time per matrix-vector product (ms)")
ax_ms.set_title(f"Batch 1, cold weights, {THREADS} thread (median, min-max over {ROUNDS} rounds)")
ax_gbs.set_ylabel("weight bytes read per second (GB/s)")
ax_gbs.set_title("Bytes of weights read per second vs the bandwidth")
fig.suptitle(f"{cpu_name()}: other processes took {other:.0%} of the CPUs meanwhile", fontsize=9)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Step 5 · why the dispatcher picks what it picks (batch 1)
# At the largest shape, cold, every batch-1 kernel that runs on this CPU is timed the same way (the
# ones `tinyfbi.bench.kernels` lists for this instruction set, plus the dispatcher's own pick), the
# exact ones and the int8 ones apart. The pick should be the fastest of its kind here: that is the
# reason it is the pick. Asserted at the default size, within 15% (the noise of a shared machine).

# %%
out_f, in_f = SHAPES[-1]
W = (rng.standard_normal((out_f, in_f)) * 0.02).astype(np.float32)
beta = W.mean(0)
alpha = np.abs(W - beta).mean(0)
x = rng.standard_normal(in_f).astype(np.float32)
packed = bitpack.pack_signs(W, lut=True).with_nib4()
packs = bandwidth.cold_copies(packed, l3)
meter = LoadMeter()
for kind in ("exact", "int8"):
    pick = dispatch.kernel_name(packed, 1, kind)
    calls = {f"{pick} (picked)": lambda i, kind=kind: dispatch.matvec(packs[i % len(packs)], alpha, beta, x, kind)}
    for name, (fn, batch1_only, exact, needs, _) in KERNELS.items():
        if batch1_only and exact == (kind == "exact") and AVAILABLE[needs] and name != pick:
            calls[name] = lambda i, fn=fn: fn(packs[i % len(packs)], alpha, beta, x)
    ms = {name: float(np.median(t[CLOCK])) for name, t in bandwidth.alternated_ms(calls, ROUNDS, min_s=MIN_S).items()}
    fastest = min(ms.values())
    print(f"{kind}, {out_f}x{in_f}, batch 1, cold, {CLOCK} time: " + ", ".join(f"{k} {v:.3f} ms" for k, v in ms.items()))
    print(f"  the pick is {ms[f'{pick} (picked)'] / fastest:.2f}x the fastest time")
    if not FAST:
        assert ms[f"{pick} (picked)"] <= 1.15 * fastest, f"{pick} is not the fastest {kind} kernel here"
print(f"other processes took {meter.other_share():.0%} of the CPUs meanwhile")

# %% [markdown]
# ## Summary
# - One bit per weight holds sign(W) (zero binarizes to +1); bits run along the input axis, the axis
#   of FBI's $\alpha$ and $\beta$ (section 3.1, eq. (3)), so $y = \mathrm{sign}(W)(\alpha\odot x) + \beta\cdot x$
#   needs one sign product per linear.
# - The popcount identity turns a ±1 x int8 dot product into ANDs and popcounts of bit planes.
# - Every kernel the dispatcher picks on this CPU agrees with the reference (exact ones to float32
#   rounding, int8 ones within the activation rounding), and the table names them as picked here.
# - At the default size, timed so that the numbers mean something (the load reported, the weights
#   read from DRAM, one thread's CPU time, against the bandwidth measured alongside), a float32
#   product at the 7B shape streams its weights at more than half the bandwidth, and 1-bit weights,
#   32x fewer bytes, make it at least 8x faster; the batch-1 kernel the dispatcher picks is the
#   fastest of its kind here.
#
# ## Exercise
# BitNet b1.58, the ternary model FBI-LLM is compared with in its Table 2, stores weights in
# $\{-1, 0, +1\}$. Keep two bit masks per row, $P$ (the +1 weights) and $N$ (the -1 weights), and
# write $\sum_j w_j q_j$ with popcounts of $P \,\&\, Q_b$ and $N \,\&\, Q_b$ only (no $\sum_j q_j$
# term this time). Check it against `w @ q` on random ternary rows. A solution, checked against
# NumPy's integer dot product: `tests/test_exercises_04_06.py::test_04_ternary_popcount`.

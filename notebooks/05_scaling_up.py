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
# # 05 · Scaling up: parameters, bits and memory from 130M to 13B
#
# [FBI-LLM](https://arxiv.org/abs/2407.07093) trains 130M, 1.3B and 7B students (section 4.1,
# Table 1) with LLaMA-2-7B as the teacher for every size, and counts a packed model at "1.01 bits"
# per parameter. This notebook asks, from the model shapes alone: where do the parameters sit (1),
# which size the 1.01 bits describe (2), how much memory a model needs to run in float32, fp16 and
# packed (3), and what a training run needs per GPU, term by term (4). Everything is computed from
# `ModelConfig`, the packed format's storage plan and the torch backend's dry run, which builds the
# models on PyTorch's meta device (shapes, no memory).

# %% tags=["parameters"]
import os

FAST = os.environ.get("TINYFBI_FAST") == "1"
SIZES = ["130m", "1.3b", "7b", "13b"]
WORLD_SIZE = 8          # GPUs the training plan of Step 4 is made for

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import display

from tinyfbi import ModelConfig
from tinyfbi.runtime.build_fbipack import storage_plan
from tinyfbi.torch_backend.planner import bits_per_param, count_params
from tinyfbi.torch_backend.planner import plan as plan_run
from tinyfbi.training.spec import RunSpec

GiB = 2 ** 30

# %% [markdown]
# ## Step 1 · where the parameters are
# FBI-LLM binarizes every linear of the decoder blocks (q, k, v, o, gate, up, down; section 3.1);
# the embeddings, the lm_head and the RMSNorms stay in full precision. The embedding and the head
# are each vocabulary x hidden (32000 x C), whatever the depth, so their share falls as the model
# grows: at 130M they are more than a third of the model, at 7B and 13B under 5%.

# %%
paper = {"130m": 134e6, "1.3b": 1.364e9, "7b": 6.738e9, "13b": 13.02e9}   # Table 1 (13B: LLaMA-2-13B's shape)
counts = {s: count_params(ModelConfig.from_name(s)) for s in SIZES}
table = pd.DataFrame({s: {
    "layers x hidden / intermediate": (lambda c: f"{c.num_hidden_layers} x {c.hidden_size} / {c.intermediate_size}")(
        ModelConfig.from_name(s)),
    "parameters (B)": counts[s]["total"] / 1e9,
    "paper (B)": paper[s] / 1e9,
    "binarized latent weights": counts[s]["binarized"] / counts[s]["total"],
    "alpha, beta": counts[s]["scales"] / counts[s]["total"],
    "full precision (embeddings, head, norms)": counts[s]["full_precision"] / counts[s]["total"]} for s in SIZES})
shares = ["binarized latent weights", "alpha, beta", "full precision (embeddings, head, norms)"]
display(table.style.format("{:.3f}", subset=pd.IndexSlice[["parameters (B)", "paper (B)"], :])
        .format("{:.1%}", subset=pd.IndexSlice[shares, :]))
for s in SIZES:
    fp_count = ModelConfig.from_name(s, binarized=False).num_params()    # the same model without alpha, beta
    assert abs(fp_count - paper[s]) / paper[s] < 0.005                   # Table 1, within 0.5%
share = table.loc[shares].astype(float)
assert share.loc[shares[2], "130m"] > 1 / 3 and (share.loc[shares[2], ["7b", "13b"]] < 0.05).all()
assert 0.63 <= share.loc[shares[0], "130m"] < 0.64 and (share.loc[shares[0], ["7b", "13b"]].between(0.96, 0.98)).all()

# %% [markdown]
# ## Step 2 · which size the paper's "1.01 bits" describes
# One bit per sign, plus $\alpha_j$ and $\beta_j$ in fp16 for each input column $j$ of each matrix
# (section 3.1, eq. (3)). A matrix of out x in weights then costs $out \cdot in + 2 \cdot 16 \cdot in$
# bits, that is $1 + 32/out$ bits per weight: the more rows, the closer to 1. The "1.01" counts
# these binarized layers only (the embeddings and the head are left out; counted in fp16 too, they
# give the second column). By hand from the shapes, against the planner's `bits_per_param`:

# %%
bits = {}
for s in SIZES:
    cfg = ModelConfig.from_name(s)
    shapes = cfg.linear_shapes().values()                                 # (out, in) of q, k, v, o, gate, up, down
    by_hand = sum(o * i + 32 * i for o, i in shapes) / sum(o * i for o, i in shapes)
    bits[s] = bits_per_param(cfg, counts[s])
    assert abs(by_hand - bits[s]["binarized_layers"]) < 1e-12
    print(f"{s:>5}: {by_hand:.4f} bits per binarized weight (rounded: {by_hand:.2f}); "
          f"{bits[s]['whole_model']:.3f} over the whole model with the rest in fp16")
rounded = {s: round(bits[s]["binarized_layers"], 2) for s in SIZES}
assert [s for s in SIZES if rounded[s] == 1.01] == ["1.3b", "7b"]
assert rounded["130m"] == 1.03 and rounded["13b"] == 1.00
assert round(bits["1.3b"]["binarized_layers"], 3) == 1.011 and round(bits["7b"]["binarized_layers"], 3) == 1.006
assert bits["130m"]["whole_model"] > 6 and round(bits["7b"]["whole_model"], 1) == 1.6

# %% [markdown]
# So "1.01 bits" is the 1.3B and the 7B model, rounded to two decimals (1.011 and 1.006). The 130M
# model has narrower matrices (768 rows for q, k, v, o and down), so its alpha and beta cost more:
# 1.03 bits. Over the whole model, with the embeddings and the head in fp16, 130M needs more than 6
# bits per parameter, 7B about 1.6: the 1.01 is a property of the binarized layers, not of the file.
#
# ## Step 3 · memory to run the model: float32, fp16 and packed
# float32 holds the latent weights as trained (4 bytes each); fp16 is how full-precision LLMs are
# usually shipped (2 bytes). Packed is what `python -m tinyfbi.pack` writes, from the format's own
# storage plan (`runtime.build_fbipack.storage_plan`): signs as bits, alpha and beta in fp16, the
# embeddings, norms and head in fp16. The 1.01 bits decide the packed size only where the binarized
# layers dominate.

# %%
mem = {}
for s in SIZES:
    cfg, n = ModelConfig.from_name(s), counts[s]
    plan = storage_plan(cfg)                                              # name -> (kind, dtype, shape, ...)
    packed = sum(int(np.prod(shape)) * np.dtype(dtype).itemsize for _, dtype, shape, *_ in plan.values())
    # the same from the counts: 1 bit per binarized weight, 2 bytes per other parameter
    assert packed == n["binarized"] // 8 + 2 * (n["scales"] + n["full_precision"])
    mem[s] = {"float32": 4 * n["total"] / GiB, "fp16": 2 * n["total"] / GiB, "packed": packed / GiB}
mem = pd.DataFrame(mem)
ratios = pd.DataFrame({"fp16 / packed": mem.loc["fp16"] / mem.loc["packed"],
                       "float32 / packed": mem.loc["float32"] / mem.loc["packed"]}).T
display(pd.concat([mem.rename(index=lambda k: f"{k} (GiB)"), ratios]).style.format("{:.2f}"))

fig, ax = plt.subplots(figsize=(8, 4.5))
xs = np.arange(len(SIZES))
for k, (kind, color, hatch) in enumerate(zip(mem.index, ("tab:gray", "tab:green", "tab:orange"), ("", "//", ".."))):
    bars = ax.bar(xs + (k - 1) * 0.27, mem.loc[kind], 0.27, color=color, hatch=hatch, label=kind)
    ax.bar_label(bars, fmt="%.2f", fontsize=7)
ax.set_xticks(xs, SIZES)
ax.set_xlabel("model size (the paper's presets; 13B: LLaMA-2-13B's shape)")
ax.set_ylabel("weights in memory (GiB, log scale)")
ax.set_yscale("log")
ax.set_title("Memory to hold the model for inference")
ax.legend(title="stored as")
fig.tight_layout()
plt.show()
assert (ratios.loc["fp16 / packed", ["7b", "13b"]] > 9).all()             # the binarized layers dominate
assert (ratios.loc["float32 / packed", ["7b", "13b"]] > 18).all()
assert ratios.loc["fp16 / packed", "130m"] < 3                              # the fp16 embeddings dominate
assert 2 * counts["130m"]["full_precision"] / GiB > mem.loc["packed", "130m"] / 2    # most of the 130M file

# %% [markdown]
# At 7B and 13B the packed model is more than 9x smaller than fp16 (and twice that against
# float32). At 130M it is under 3x smaller than fp16: the embedding and the head, a third of the
# parameters, stay in fp16 and make most of the file.
#
# ## Step 4 · training memory per GPU: the torch backend's dry run
# `python -m tinyfbi.train --backend torch --size 7b --recipe paper --dry-run --world-size 8` plans
# the paper's own run (section 4.1: its batch of sequences of 2048 tokens, the LLaMA-2-7B teacher,
# bf16 autocast, activation checkpointing) on 8 GPUs of 80 GiB, choosing the largest micro-batch
# that fits. The same from Python, every size side by side, in GiB per GPU:

# %%
plans = {s: plan_run(RunSpec.build(backend="torch", size=s, recipe="paper", dry_run=True, world_size=WORLD_SIZE))
         for s in SIZES}
setup = pd.DataFrame({s: {"parallelism": p["parallel"].upper(), "global batch (sequences)": p["batch_size"],
                          "micro-batch per GPU": p["micro_batch_per_gpu"], "gradient accumulation": p["grad_accum"],
                          "fits 80 GiB with 10% free": p["fits_device"]} for s, p in plans.items()})
display(setup)
terms = {
    "weights": "fp32 master copy of the student, 4 B per parameter (divided by the GPUs under FSDP)",
    "gradients": "fp32, 4 B per parameter (divided under FSDP)",
    "optimizer": "AdamW's two fp32 moments, 8 B per parameter (divided under FSDP)",
    "fsdp_buffers": "FSDP only: embeddings + head gathered whole in bf16, two decoder layers gathered at a time, "
                    "one unit's fp32 gradient before its reduce-scatter",
    "teacher": "the LLaMA-2-7B teacher's weights in bf16 (divided under FSDP, plus its own gathered units)",
    "teacher_forward": "the teacher's no-grad forward: one layer's bf16 temporaries for the micro-batch",
    "activations": "what autograd keeps for the student's backward (with checkpointing: each layer's input, "
                   "plus one layer being recomputed)",
    "logits_and_loss": "one chunk of both models' logits, softmax and their gradient, the head's gradients",
    "total": "sum of the above; CUDA context and fragmentation not counted (10% of the GPU kept free)",
}


def explained(key, meanings):
    """The plans' `key` table (GiB per GPU by size), every row beside what it is; asserts none is unexplained."""
    table = pd.DataFrame({s: p[key] for s, p in plans.items()})
    assert set(table.index) == set(meanings), f"a row of the plan's {key} is not explained here"
    table = table.loc[list(meanings)]
    table["what it is"] = [meanings[k] for k in table.index]
    display(table.style.format({s: "{:.2f}" for s in SIZES}).set_properties(subset=["what it is"],
                                                                          **{"text-align": "left"}))


explained("memory_gib_per_gpu", terms)

# %% [markdown]
# The terms do not all peak at once: the teacher's forward is over before the student's starts, and
# AdamW's step comes after the backward. The plan also says when they coincide, by phases of one
# optimizer step (`phases_gib_per_gpu`); their peak, not the sum above, is what a GPU holds at most.

# %%
phase_terms = {
    "held": "held throughout the step: weights, gradients, AdamW moments, the teacher's shards",
    "teacher_forward": "the teacher's gathered layers and its forward's temporaries, while it runs",
    "forward_backward": "FSDP's gathered units and the student's activations, loss and backward temporaries",
    "optimizer_step": "AdamW's foreach temporaries (sqrt(v), 4 B per parameter) during the update",
    "peak": "held + the largest of the three phases: the most the GPU holds at once",
}
explained("phases_gib_per_gpu", phase_terms)
for s in SIZES:
    ph = plans[s]["phases_gib_per_gpu"]
    assert abs(ph["peak"] - ph["held"] - max(ph["teacher_forward"], ph["forward_backward"], ph["optimizer_step"])) < 1e-9
    assert ph["peak"] < plans[s]["memory_gib_per_gpu"]["total"]             # the sum overstates the peak

# %% [markdown]
# Each term by hand, for the 1.3B student under FSDP on 8 GPUs, against the plan: weights,
# gradients and moments are 4 + 4 + 8 bytes per parameter over 8 GPUs. The teacher's term is
# 2 bytes per teacher parameter over 8 GPUs, plus what FSDP gathers whole on every GPU: its
# embeddings and head (`root`) and two of its decoder layers, in bf16.

# %%
P, world = counts["1.3b"]["total"], WORLD_SIZE
t = count_params(ModelConfig.from_name("7b", binarized=False))             # the teacher: LLaMA-2-7B's shape
m = plans["1.3b"]["memory_gib_per_gpu"]
assert plans["1.3b"]["parallel"] == "fsdp" and plans["130m"]["parallel"] == "ddp"
for name, by_hand in (("weights", 4 * P / world), ("gradients", 4 * P / world), ("optimizer", 8 * P / world),
                      ("teacher", 2 * t["total"] / world + 2 * t["root"] + 2 * 2 * t["layer"])):
    print(f"1.3b {name:<10} by hand {by_hand / GiB:6.3f} GiB, plan {m[name]:6.3f} GiB")
    assert abs(by_hand / GiB - m[name]) < 1e-9
m130 = plans["130m"]["memory_gib_per_gpu"]
assert abs(m130["teacher"] - 2 * t["total"] / GiB) < 1e-9                  # DDP: the whole teacher on every GPU
assert round(m130["teacher"], 2) == 12.55
ratio = {s: plans[s]["memory_gib_per_gpu"]["teacher"] / plans[s]["memory_gib_per_gpu"]["weights"] for s in SIZES}
print("teacher term / the student's own weights term: " + ", ".join(f"{s} {r:.1f}x" for s, r in ratio.items()))
assert ratio["130m"] > 10 and ratio["1.3b"] > 1 and ratio["7b"] < 1 and ratio["13b"] < 0.5
assert max(ratio, key=ratio.get) == "130m"                                  # DDP: the most, no GPU shares it
assert round(t["total"] / counts["130m"]["total"]) == 50 and round(t["total"] / counts["1.3b"]["total"]) == 5
for s, p in plans.items():
    g = p["memory_gib_per_gpu"]
    assert abs(g["optimizer"] - 2 * g["weights"]) < 1e-9                   # two moments per weight
    assert g["activations"] + g["teacher_forward"] > g["total"] / 2         # not the weights: the batch

# %% [markdown]
# **Why the teacher term can be larger than the model's.** The teacher is LLaMA-2-7B for every
# student (section 4.1): 6.74B parameters, 50 times the 130M student's and 5 times the 1.3B's. It
# costs 2 bytes per parameter (bf16, no gradients or moments) where the student costs 4 for its
# weights, but there are many more of them. At 130M the plan is DDP (too small to shard), so every
# GPU holds the whole teacher (12.55 GiB in the table), more than 10 times the student's weights
# term; at 1.3B under FSDP the teacher's share and its gathered units still exceed the student's
# fp32 weights. From 7B on the student's weights term is the larger one (at 13B more than twice the
# teacher's).
#
# Other terms worth reading: the optimizer is always twice the weights (two moments); with the
# paper's global batch the activations and the teacher's forward, not the weights, are more than half
# of every plan's total, which is why the planner picks a micro-batch and accumulates gradients.
#
# ## Summary
# - The binarized layers are 63% of the 130M model and 96-98% of 7B and 13B; the embeddings and
#   head stay full precision.
# - 1 bit per sign + fp16 alpha and beta = $1 + 32/out$ bits per weight: 1.03 at 130M, **1.01 at 1.3B
#   and 7B** (the paper's figure), 1.00 at 13B, over the binarized layers only.
# - Packed, 7B and 13B models are more than 9x smaller than in fp16; at 130M the fp16 embeddings
#   keep the gain under 3x.
# - Training memory per GPU, term by term: the LLaMA-2-7B teacher costs more than the student's own
#   weights for students below 7B, and most under DDP, where no GPU shares it.
#
# ## Exercises
# 1. **Bits per parameter at 13B.** From the 13B shape alone (40 layers, hidden 5120, intermediate
#    13824, 40 heads, vocabulary 32000), compute the bits per binarized weight (signs + fp16 alpha and
#    beta) and the bits per parameter of the whole packed model (everything else in fp16).
# 2. **The teacher at 64 GPUs.** With the same formula as above, what is the 1.3B plan's teacher term
#    per GPU on 64 GPUs, and is it still larger than the student's weights term?
#
# Solutions, checked against the planner: `tests/test_exercises_04_06.py::test_05_bits_at_13b` and
# `::test_05_teacher_term_at_64_gpus`.

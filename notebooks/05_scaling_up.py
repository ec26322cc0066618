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
# FBI-LLM trains 130M, 1.3B and 7B students (arXiv 2407.07093, Table 1) with LLaMA-2-7B as the
# teacher. Where do the parameters sit, how many bits does a packed model need, and what does a
# training run need per GPU? Everything here is computed from `ModelConfig` and the torch backend's
# dry run, which builds the model on PyTorch's meta device (no memory allocated).

# %% tags=["parameters"]
import os

FAST = os.environ.get("TINYFBI_FAST") == "1"
SIZES = ["130m", "1.3b", "7b", "13b"]
WORLD_SIZE = 8

# %%
import json

import matplotlib.pyplot as plt

from tinyfbi import ModelConfig
from tinyfbi.torch_backend.planner import bits_per_param, count_params
from tinyfbi.torch_backend.planner import plan as plan_run
from tinyfbi.training.spec import RunSpec

# %% [markdown]
# ## Step 1 · where the parameters are
# The block linears (q, k, v, o, gate, up, down) are binarized; embeddings, lm_head and RMSNorms stay
# full precision. At 130M the 32000-word embedding and head are a third of the model, so the
# "1-bit" model is far from 1 bit per parameter overall; at 7B they are 4%.

# %%
paper = {"130m": 134e6, "1.3b": 1.364e9, "7b": 6.738e9, "13b": 13.02e9}
rows = {}
for size in SIZES:
    cfg = ModelConfig.from_name(size)
    counts = count_params(cfg)
    bits = bits_per_param(cfg, counts)
    rows[size] = (counts, bits)
    fp_count = ModelConfig.from_name(size, binarized=False).num_params()
    assert abs(fp_count - paper[size]) / paper[size] < 0.005          # the paper's Table 1, within 0.5%
    print(f"{size:>5}: {counts['total'] / 1e9:6.3f}B params, binarized {counts['binarized'] / counts['total']:6.1%}, "
          f"bits/param {bits['binarized_layers']:.4f} over binarized layers, {bits['whole_model']:.3f} overall")

# %% [markdown]
# ## Step 2 · the paper's "1.01 bits"
# One bit per sign plus fp16 $\alpha$ and $\beta$ per input column of each matrix:
# $1 + 32\cdot \text{in}/(\text{out}\cdot\text{in}) = 1 + 32/\text{out}$ bits per weight, so wide matrices
# approach 1 bit. The embeddings and lm_head are not counted in that figure.

# %%
cfg = ModelConfig.from_name("7b")
by_hand = 0
weights = 0
for out_f, in_f in cfg.linear_shapes().values():
    by_hand += out_f * in_f + 32 * in_f
    weights += out_f * in_f
assert abs(by_hand / weights - rows["7b"][1]["binarized_layers"]) < 1e-9
print(f"7B: {by_hand / weights:.4f} bits per binarized weight")

# %% [markdown]
# ## Step 3 · memory: float32 vs packed, for inference

# %%
fig, ax = plt.subplots(figsize=(7, 4))
fp32 = [rows[s][0]["total"] * 4 / 2**30 for s in SIZES]
packed = [(rows[s][0]["total"] - rows[s][0]["full_precision"]) * rows[s][1]["binarized_layers"] / 8 / 2**30
          + rows[s][0]["full_precision"] * 2 / 2**30 for s in SIZES]
ax.bar([i - 0.2 for i in range(len(SIZES))], fp32, width=0.4, label="float32")
ax.bar([i + 0.2 for i in range(len(SIZES))], packed, width=0.4, label="packed (1-bit + fp16 rest)")
ax.set_xticks(range(len(SIZES)), SIZES)
ax.set_ylabel("GiB")
ax.set_yscale("log")
ax.legend()
plt.show()
for s, f, p in zip(SIZES, fp32, packed):
    print(f"{s:>5}: float32 {f:6.2f} GiB -> packed {p:5.2f} GiB ({f / p:.1f}x)")

# %% [markdown]
# ## Step 4 · training memory per GPU: the torch backend's dry run
# `python -m tinyfbi.train --backend torch --size 7b --dry-run --world-size 8 --json` estimates
# weights, gradients, AdamW state, the bf16 teacher and activations per GPU under FSDP. The same plan
# from Python: a RunSpec (the run, described once) handed to the planner.

# %%
for size in (["7b"] if FAST else ["1.3b", "7b", "13b"]):
    plan = plan_run(RunSpec.build(backend="torch", size=size, dry_run=True, world_size=WORLD_SIZE))
    assert plan["params"]["total"] == rows[size][0]["total"]
    print(size, json.dumps({k: plan[k] for k in plan if "memory" in k}, indent=1)[:600])

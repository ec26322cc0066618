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
# # 03 · Autoregressive distillation
#
# FBI-LLM (arXiv 2407.07093, section 3.2) trains the binarized student from scratch, not on the
# next-token labels, but on the **teacher's whole next-token distribution at every position**:
#
# $$\mathcal L = -\frac1{N}\sum_{t}\sum_{v} p^{\text{teacher}}_t(v)\,\log p^{\text{student}}_t(v)$$
#
# (temperature 1; LLaMA-2-7B is the teacher for every student size). Here we derive its gradient,
# check it, and then train a tiny teacher and two binarized students, one with distillation and one
# with labels, on the same tokens.

# %% tags=["parameters"]
import os

FAST = os.environ.get("TINYFBI_FAST") == "1"
SEED = 0
STEPS = 40 if FAST else 400       # per model
BATCH, SEQ = (8, 64) if FAST else (16, 128)

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

from tinyfbi import Model, ModelConfig
from tinyfbi.core import layers as L
from tinyfbi.core.compare import cmp
from tinyfbi.core.optim import AdamW, OptimConfig, lr_at

rng = np.random.default_rng(SEED)

# %% [markdown]
# ## Step 1 · the gradient: softmax(student) minus teacher
# With $q = \mathrm{softmax}(z)$, $\partial \mathcal L/\partial z = (q \sum_v p(v) - p)/N = (q - p)/N$:
# the student's logits move toward the teacher's probabilities, for *every* token of the vocabulary,
# not only the one that came next. That is the extra signal a label (a one-hot $p$) cannot give.

# %%
z = rng.standard_normal((2, 3, 11))
p_teacher = L.softmax(rng.standard_normal((2, 3, 11)) * 2)
loss, cache = L.distill_forward(z, p_teacher)
ours = (L.softmax(z) - p_teacher) / 6
tz = torch.tensor(z, requires_grad=True)
t_loss = F.cross_entropy(tz.reshape(-1, 11), torch.from_numpy(p_teacher).reshape(-1, 11))
t_loss.backward()
cmp("loss vs torch soft-target CE", loss, t_loss.item(), 1e-12)
cmp("(q - p)/N vs torch", ours, tz.grad.numpy(), 1e-12)
cmp("(q - p)/N vs tinyfbi", ours, L.distill_backward(cache), 1e-15)

# %% [markdown]
# ## Step 2 · data: bytes of Python's own documentation
# `pydoc_data.topics` ships with Python: a real English corpus that needs no download.

# %%
import pydoc_data.topics

text = np.frombuffer("\n\n".join(pydoc_data.topics.topics.values()).encode(), dtype=np.uint8)
split = int(0.9 * len(text))
train_bytes, val_bytes = text[:split], text[split:]
print(f"{len(train_bytes):,} training bytes, {len(val_bytes):,} validation bytes")


def batch(tokens, step, seed=SEED):
    starts = np.random.default_rng((seed, step)).integers(0, len(tokens) - SEQ - 1, BATCH)
    w = np.stack([tokens[s:s + SEQ + 1] for s in starts]).astype(np.int64)
    return w[:, :-1], w[:, 1:]


def val_loss(model, n=8):
    losses = []
    for i in range(n):
        x, y = batch(val_bytes, i, seed=99)
        losses.append(L.cross_entropy_forward(model.forward(x), y)[0])
    return float(np.mean(losses))


# %% [markdown]
# ## Step 3 · train a full-precision teacher on labels, then two binarized students on the same batches

# %%
cfg = ModelConfig(vocab_size=256, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=4, intermediate_size=256, max_position_embeddings=SEQ)
opt_cfg = OptimConfig(lr=3e-3, min_lr=3e-4, warmup_steps=STEPS // 10, total_steps=STEPS)


def train(model, loss_kind, teacher=None):
    opt, curve = AdamW(model.params, opt_cfg), []
    for step in range(STEPS):
        x, y = batch(train_bytes, step)
        logits = model.forward(x)
        if loss_kind == "ce":
            loss, c = L.cross_entropy_forward(logits, y)
            d = L.cross_entropy_backward(c)
        else:
            loss, c = L.distill_forward(logits, L.softmax(teacher.forward(x)))
            d = L.distill_backward(c)
        opt.step(model.params, model.backward(d), lr_at(step, opt_cfg))
        curve.append(L.cross_entropy_forward(logits, y)[0])   # label CE of the same batch, for comparison
    return curve


teacher = Model(cfg.replace(binarized=False), seed=SEED)
curves = {"teacher (full precision, labels)": train(teacher, "ce")}
student_ad, student_ce = Model(cfg, seed=SEED), Model(cfg, seed=SEED)
curves["FBI student, distillation"] = train(student_ad, "ad", teacher)
curves["FBI student, labels"] = train(student_ce, "ce")
for (name, curve), model in zip(curves.items(), (teacher, student_ad, student_ce)):
    print(f"{name:<34} final train CE {np.mean(curve[-5:]):.3f}  validation CE {val_loss(model):.3f}")

# %%
fig, ax = plt.subplots(figsize=(7, 4))
for name, curve in curves.items():
    ax.plot(curve, label=name, lw=1)
ax.set_xlabel("step")
ax.set_ylabel("next-token cross-entropy (nats)")
ax.legend()
ax.set_title("same batches, same steps")
plt.show()

# %% [markdown]
# The distilled student never sees the labels, yet its label cross-entropy falls: the teacher's
# distribution carries the labels' information and more. At this toy scale the two students can
# land close together; `python -m tinyfbi.reproduce` runs the comparison at a larger budget and
# reports what it finds.

# %%
assert np.mean(curves["FBI student, distillation"][-5:]) < np.log(256)   # it learned something

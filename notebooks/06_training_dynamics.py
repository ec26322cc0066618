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
# # 06 · Training dynamics: the flip-flop ratio, from scratch and from trained weights
#
# A binarized weight only matters through its sign. [FBI-LLM](https://arxiv.org/abs/2407.07093),
# section 5, tracks the **flip-flop ratio**: after each optimizer step, the fraction of binarized
# latent weights whose sign changed. It compares training a binarized student from scratch with
# training one that starts from pretrained full-precision weights (its pretrained arm starts from
# TinyLlama-1.1B; both distill from LLaMA-2-7B), and reports that from scratch the flip-flop ratio
# and the gradient norm are the steadier of the two, so that **pretrained weights are not
# necessary** to train a binarized LLM. Here both arms train at a small scale with the training
# CLI's `--track-flips`, and the notebook draws its own verdict from what they show.

# %% tags=["parameters"]
import os

FAST = os.environ.get("TINYFBI_FAST") == "1"
STEPS = 30 if FAST else 300
SEED = 0

# %%
import contextlib
import io
import json
import pydoc_data.topics
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from tinyfbi.core.binarize import positive_mask
from tinyfbi.formats.checkpoint import load_model
from tinyfbi.train import train
from tinyfbi.training import dynamics
from tinyfbi.training.numpy_backend import flip_fractions
from tinyfbi.training.spec import RunSpec

work = Path("runs-notebook-06")
corpus = work / "topics.txt"
work.mkdir(exist_ok=True)
corpus.write_text("\n\n".join(pydoc_data.topics.topics.values()))     # Python's own docs: 0.47 MB, offline
# the runs, described once (the fields of `python -m tinyfbi.train`'s flags)
common = dict(data=str(corpus), data_dir=str(work / "data"), out=str(work), tokenizer="byte", steps=STEPS,
              batch_size=8, seq_len=64, eval_every=STEPS, save_every=STEPS, eval_batches=4, sample_tokens=0,
              seed=SEED, track_flips=True)

# %% [markdown]
# ## Step 1 · what one flip-flop measurement is
# Compare the sign masks before and after one update. Zero counts as +1, as in tinyfbi's one
# binarize (one bit holds every weight). The library's `flip_fractions` does this per layer.

# %%
w_before = np.array([[0.010, -0.002, 0.0], [0.003, -0.020, 0.001]])
w_after = w_before - np.array([[0, 0, 1e-4], [0.004, 0, 0]])          # two weights cross zero
frac = flip_fractions({"w": positive_mask(w_before)}, {"w": w_after})
print(frac)
assert abs(frac["all"] - 2 / 6) < 1e-12

# %% [markdown]
# ## Step 2 · the two arms
# Both students are the same FBI model (the `tiny` preset: 4 layers, hidden 256, a byte vocabulary),
# distilled from the same teacher (section 3.2, the AD loss) on the same batches in the same order, with
# the same schedule (AdamW, warmup then cosine to a tenth of the peak learning rate). They differ only
# in their **initial weights**:
#
# - **from scratch**: latent weights drawn from N(0, 0.02), alpha and beta by FBI's init (section 3.1);
# - **from trained weights**: the latent weights of a full-precision model of the same shape, trained
#   here for `STEPS` steps on next-token labels; alpha and beta by FBI's init from them. That model is
#   also the teacher both students distill from (`--teacher auto` trains it once and caches it), so this
#   arm starts from the very model it learns from: the most favourable start pretrained weights can give.
#
# The cell trains all three (teacher, then the two students) unless `runs-notebook-06/` already holds
# them.

# %%
def run(name, **extra):
    """Train one run unless it exists -> (its metrics rows, its summary). The training's report is
    printed; its progress bars (stderr) are left out of the notebook."""
    if not (work / name / "summary.json").exists():
        t0 = time.perf_counter()
        with contextlib.redirect_stderr(io.StringIO()):
            train(RunSpec.build(**common, name=name, **extra))
        print(f"-> {name}: trained in {time.perf_counter() - t0:.0f} s\n")
    else:
        print(f"-> {name}: reused from {work / name}\n")
    rows = [json.loads(line) for line in (work / name / "metrics.jsonl").read_text().splitlines()]
    return rows, json.loads((work / name / "summary.json").read_text())


scratch_rows, scratch = run("scratch")
teacher_ckpt = scratch["teacher"]
init_rows, init = run("from-trained", init=teacher_ckpt)

# %%
teacher = load_model(teacher_ckpt)
teacher_steps = len((Path(teacher_ckpt).parent / "metrics.jsonl").read_text().splitlines())
c = teacher.config
print(f"initial weights of the second arm: {teacher_ckpt}\n  a {'binarized' if c.binarized else 'full-precision'} "
      f"model, {c.num_hidden_layers} layers, hidden {c.hidden_size}, intermediate {c.intermediate_size}, vocabulary "
      f"{c.vocab_size}, {c.num_params():,} parameters, trained {teacher_steps} steps on labels; "
      f"validation perplexity {scratch['teacher_val_ppl']:.2f}")
student_shapes = {k: v for k, v in load_model(Path(work) / "scratch").config.param_shapes().items()
                  if not k.endswith((".wscale", ".wbias"))}
assert not c.binarized and teacher_steps == STEPS and c.param_shapes() == student_shapes   # same shape, fp
assert (c.num_hidden_layers, c.hidden_size, c.vocab_size) == (4, 256, 256)          # the tiny preset, bytes
assert init["teacher"] == scratch["teacher"] and init["init"] == teacher_ckpt        # one teacher, one init
lr = dynamics.series(scratch_rows, "lr")
assert np.array_equal(lr, dynamics.series(init_rows, "lr"))                        # the same schedule
assert abs(lr[-1] / lr.max() - 0.1) < 0.01 and lr.argmax() < STEPS // 5           # warmup, then cosine to 1/10
for rows in (scratch_rows, init_rows):                 # one record per optimizer step, fractions in [0, 1]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert all(0 <= r["flips"]["all"] <= 1 for r in rows)

# %% [markdown]
# ## Step 3 · flip-flop ratio, learning rate and gradient norm, step by step
# Each panel draws one arm's flip-flop ratio per layer (thin) and over all binarized weights (thick),
# with the learning rate on the right axis: a weight flips when an update carries it across zero, and
# AdamW's updates are about the learning rate in size, so the flip-flop ratio follows the schedule.
# Below, both arms' overall flip-flop ratio and gradient norm (before clipping to 1.0) side by side.

# %%
arms = (("from scratch", scratch_rows, "tab:blue"), ("from trained weights", init_rows, "tab:orange"))
steps = np.arange(1, STEPS + 1)
fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), sharey=True)
for ax, (title, rows, color) in zip(axes, arms):
    layers = [k for k in rows[0]["flips"] if k != "all"]
    for k in layers:
        ax.plot(steps, [100 * r["flips"][k] for r in rows], lw=0.5, alpha=0.35, color=color)
    ax.plot([], [], lw=0.5, color=color, label=f"one line per binarized linear ({len(layers)})")
    ax.plot(steps, 100 * dynamics.series(rows, "flips"), color="k", lw=2, label="all binarized weights")
    ax.set_yscale("log")
    ax.set_title(f"Flip-flop ratio, {title}")
    ax.set_xlabel("optimizer step")
    lr_ax = ax.twinx()
    lr_ax.plot(steps, dynamics.series(rows, "lr"), color="tab:red", ls="--", lw=1.5, label="learning rate")
    lr_ax.set_yscale("log")
    lr_ax.set_ylabel("learning rate (log scale)", color="tab:red")
    handles = ax.get_legend_handles_labels()[0] + lr_ax.get_legend_handles_labels()[0]
    ax.legend(handles=handles, fontsize=8, loc="lower left")
axes[0].set_ylabel("weights whose sign flipped this step (%, log scale)")
fig.tight_layout()
plt.show()

fig, (ax_f, ax_g) = plt.subplots(1, 2, figsize=(13, 4.5))
for title, rows, color in arms:
    ax_f.plot(steps, 100 * dynamics.series(rows, "flips"), color=color, label=title)
    ax_g.plot(steps, dynamics.series(rows, "grad_norm"), color=color, label=title, lw=1)
ax_g.axhline(1.0, color="k", ls=":", label="clipping threshold (1.0)")
ax_f.set_title("Flip-flop ratio, all binarized weights")
ax_f.set_ylabel("weights whose sign flipped this step (%)")
ax_g.set_title("Gradient norm before clipping")
ax_g.set_ylabel("global L2 norm of the gradient")
ax_g.set_yscale("log")
for ax in (ax_f, ax_g):
    ax.set_xlabel("optimizer step")
    ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Step 4 · the numbers behind the verdict
# Both curves follow the schedule, so their spread measures the schedule, not steadiness. What does:
# **jitter**, how much a typical step changes the value, the median of |value / previous value - 1|
# over the steps after warmup (`tinyfbi.training.dynamics`; the cosine schedule alone accounts for
# under 1% a step). **Spikes**: steps whose value is more than 3x the running median of the 9 steps
# around them. Beside them, where each arm ends: the flip-flop ratio over the last
# fifth of training and the validation perplexity.

# %%
first_after_warmup = RunSpec.build(**common).warmup_steps(STEPS)     # min(2000, steps / 10)
tail = max(1, STEPS // 5)
stats = {}
for title, rows, _ in arms:
    flips, grads = dynamics.series(rows, "flips"), dynamics.series(rows, "grad_norm")
    stats[title] = {"flip jitter": dynamics.jitter(flips, first_after_warmup),
                    "grad-norm jitter": dynamics.jitter(grads, first_after_warmup),
                    "grad-norm spikes": dynamics.spikes(grads, 3.0, first_after_warmup),
                    "flip spikes": dynamics.spikes(flips, 3.0, first_after_warmup),
                    "flips, first fifth (%)": 100 * flips[:tail].mean(),
                    "flips, last fifth (%)": 100 * flips[-tail:].mean(),
                    "peak flips (%)": 100 * flips.max(), "peak at step": int(flips.argmax()) + 1}
stats["from scratch"]["val ppl"], stats["from trained weights"]["val ppl"] = scratch["val_ppl"], init["val_ppl"]
for key in stats["from scratch"]:
    print(f"{key:<24}" + "".join(f"{str(round(v, 4)) if isinstance(v, float) else str(v):>28}"
                                  for v in (stats[t][key] for t, _, _ in arms)))
print(f"{'':<24}{'from scratch':>28}{'from trained weights':>28}   teacher: val ppl {scratch['teacher_val_ppl']:.2f}")
S, T = stats["from scratch"], stats["from trained weights"]
for title, _, _ in arms:       # both arms: the schedule drives the flip-flop ratio down by the end
    assert stats[title]["flips, last fifth (%)"] < stats[title]["flips, first fifth (%)"]
for title, _, _ in arms:       # the flip-flop ratio peaks where the learning rate does, at the end of warmup
    assert abs(stats[title]["peak at step"] - first_after_warmup) <= max(1, first_after_warmup // 5)

# %% [markdown]
# What these numbers say, at the default size (300 steps) and, where it differs, at the CI size
# (`TINYFBI_FAST=1`, 30 steps); each statement is asserted below on the values just computed.
#
# - **The flip-flop ratio follows the learning rate in both arms.** It rises through warmup, peaks
#   where the learning rate does (asserted above), and falls with the cosine to a small fraction of
#   its peak (over the last fifth of training, under a fifth of it). The arm that starts from trained weights flips fewer weights per step throughout, in the first
#   fifth of training and in the last.
# - **Step to step, which arm is steadier is not settled by one seed.** The two arms' jitters differ
#   by a tenth to a fifth of their size, and which one is lower changes from machine to machine: the
#   BLAS of an AVX-512 CPU rounds float32 sums differently from an AVX2 one, the two runs part after a
#   few steps, and a 2-core Zen 3 gave the gradient norm steadier from trained weights where the Zen 4
#   that executed this copy gives it steadier from scratch. The cell below prints which arm is steadier
#   on this machine, and the verdict takes its words from that line; the number of gradient-norm spikes
#   is printed beside it, and also changes with the machine.
# - **Perplexity: the arm from trained weights ends lower**, within 1% of the teacher it started from;
#   from scratch ends a few percent above it.

# %%
spikes_shared = sorted(set(S["grad-norm spikes"]) & set(T["grad-norm spikes"]))
print(f"flip jitter: from scratch {S['flip jitter']:.4f} vs from trained {T['flip jitter']:.4f}; "
      f"grad-norm jitter: {S['grad-norm jitter']:.4f} vs {T['grad-norm jitter']:.4f}; "
      f"grad-norm spikes: {S['grad-norm spikes']} vs {T['grad-norm spikes']}, shared {spikes_shared}")
print(f"validation perplexity: from scratch {S['val ppl']:.2f} ({S['val ppl'] / scratch['teacher_val_ppl'] - 1:+.1%} "
      f"vs the teacher), from trained {T['val ppl']:.2f} ({T['val ppl'] / scratch['teacher_val_ppl'] - 1:+.1%})")
for key in ("flips, first fifth (%)", "flips, last fifth (%)"):
    assert T[key] < S[key]
for st in (S, T):
    assert st["flips, last fifth (%)"] < st["peak flips (%)"] / 5
    assert st["peak flips (%)"] < (2 if FAST else 1)                       # the verdict's "small"
assert S["flips, last fifth (%)"] / T["flips, last fifth (%)"] < 2            # "within a factor of two"
steadier = {key: "from scratch" if S[key] < T[key] else "from trained weights" for key in ("flip jitter", "grad-norm jitter")}
for key, arm in steadier.items():
    low, high = sorted((S[key], T[key]))
    print(f"{key}: steadier {arm} ({low:.4f} against {high:.4f}, {high / low - 1:.0%} apart)")
assert T["val ppl"] < S["val ppl"] and abs(T["val ppl"] / scratch["teacher_val_ppl"] - 1) < 0.01
assert 0.01 < S["val ppl"] / scratch["teacher_val_ppl"] - 1 < 0.1

# %% [markdown]
# ## Step 5 · the spike
# Both arms draw the same batches in the same order, so a spike at the same step in both is the
# batch, not the weights. At the default size there is one: **step 282**. Its loss is well above the
# steps before it in both arms, the gradient norm jumps several times over its local trend (clipping
# then caps the update's gradient at norm 1.0), and in the arm from trained weights, whose gradients
# are otherwise small, the flip-flop ratio rises by more than a fifth for a step or two before it falls
# back: the kink near the end of its curve above. The loss stays far below the 3x of its running mean
# at which the training loop rolls back to its last checkpoint and skips the batch (the remedy the
# authors used for the spikes of binary training), so neither run rolled back. At the CI size no step
# spikes in both arms.

# %%
for step in spikes_shared:
    i = step - 1
    for title, rows, _ in arms:
        loss, grads, flips = (dynamics.series(rows, k) for k in ("loss", "grad_norm", "flips"))
        before = slice(i - 10, i)
        print(f"step {step}, {title:<21}: loss {loss[i]:.3f} (previous 10 steps {loss[before].mean():.3f}), "
              f"grad norm {grads[i]:.2f} ({grads[i] / np.median(grads[before]):.1f}x the previous 10), "
              f"flip-flop ratio {100 * flips[i]:.3f}% ({flips[i] / np.median(flips[before]):.2f}x)")
        assert loss[i] > 1.05 * loss[before].mean() and grads[i] > 3 * np.median(grads[before])
    flips_trained = dynamics.series(init_rows, "flips")
    assert flips_trained[i] > 1.2 * np.median(flips_trained[i - 10:i])
assert scratch["rollbacks"] == 0 and init["rollbacks"] == 0
assert (not FAST and spikes_shared == [282]) or (FAST and not spikes_shared)

# %% [markdown]
# ## Verdict
# Against section 5's statement, from this notebook's own numbers (one seed, a 2.8M-parameter model,
# 300 steps of 512 tokens; the paper's arms are 1.3B models trained on far more tokens, and its
# pretrained arm starts from another model, TinyLlama, not from its teacher):
#
# - *The flip-flop ratios are on similar scales and small*: **supported**. At the default size both
#   arms flip under 1% of the signs at every step (at the CI size up to 2%, around the end of its
#   3-step warmup), follow the same schedule, and end within a factor of two of each other.
# - *From scratch, the flip-flop ratio and the gradient norm are steadier*: **not decided by this
#   notebook.** One seed per arm, jitters that differ by a tenth to a fifth, and a direction that
#   changes with the CPU's rounding: the line above says which arm was steadier where this copy ran.
#   `python -m tinyfbi.reproduce` judges the statement next to it over 6 seeds at 4x the training: that
#   the two starts' flip-flop ratios and gradient norms are on similar scales (its claim c1,
#   docs/reproduction.md); how steady each one is, it does not measure either.
# - *Pretrained weights are not necessary*: **true but costly at this budget**. From scratch trains
#   without any rollback to a few percent of the teacher's perplexity, but the arm that starts from the
#   teacher's own weights ends lower, within 1% of the teacher. `python -m tinyfbi.reproduce` tests the
#   same claim over 6 seeds (docs/reproduction.md): the trained start's lead after 300 steps (its claim c)
#   shrinks to almost nothing after 4x the training (c2).
#
# ## Summary
# - The flip-flop ratio (section 5) is the fraction of signs that change per step; the training loop
#   logs it per layer with `--track-flips`.
# - It follows the learning rate: up through warmup, down with the cosine. A weight flips when an
#   update of about the learning rate's size carries it across zero.
# - Starting from a trained full-precision model of the same shape (here the teacher itself) flips
#   fewer weights and ends at lower perplexity than starting from scratch; which arm is steadier from
#   step to step, one seed cannot say.
# - A spike shared by both arms is a batch: the loss and gradient norm jump, clipping bounds the
#   update, and the flip-flop ratio settles back within a few steps.
#
# ## Exercise
# AdamW's early updates are about $\pm$ the learning rate per weight. If the latent weights are spread
# like $N(0, \sigma^2)$ and each moves by the learning rate $\eta$ in a random direction, what fraction
# of them flips in one step? (Only weights within $\eta$ of zero can cross it, and half of those move
# towards it.) Check your formula with a simulation measured by `flip_fractions`, and compare it with
# the learning rate and flip-flop ratio drawn above. A solution, checked by Monte Carlo:
# `tests/test_exercises_04_06.py::test_06_flip_ratio_of_one_step`.

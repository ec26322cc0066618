"""The whole NumPy model against the torch implementation with the same weights.

Logits, loss and every gradient by name. Tolerances:
- float64 in both: the same maths in a different order, so rtol 1e-8 / atol 1e-10;
- float32 in both (the training dtype): BLAS sums in another order over 4 layers; logit
  differences measured up to 2.2e-5 on logits of size ~1, so atol 1e-4 / rtol 1e-3 on logits,
  rtol 1e-5 on the loss, and gradients relative to each tensor's largest entry (1e-4 * max|g|).
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tinyfbi import Model, ModelConfig
from tinyfbi.core import layers as L
from tinyfbi.core.compare import assert_close
from tinyfbi.torch_backend.model import TorchModel

# grouped-query attention (4 heads, 2 kv heads) and odd sizes, small enough for float64
SMALL = ModelConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, intermediate_size=48, max_position_embeddings=16)


def run_both(config, dtype, seed=0, B=2, T=12):
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    model = Model(config, seed=seed, dtype=np_dtype)
    rng = np.random.default_rng(seed + 1)
    # move the scales off their init so every gradient term is exercised
    for name, p in model.params.items():
        if name.endswith((".wscale", ".wbias")) or "norm" in name:
            p += (rng.standard_normal(p.shape) * 0.05).astype(np_dtype)
    tokens = rng.integers(0, config.vocab_size, (B, T))
    teacher = L.softmax(rng.standard_normal((B, T, config.vocab_size)) * 2).astype(np_dtype)

    logits = model.forward(tokens)
    loss, cache = L.mixed_forward(logits, np.roll(tokens, -1, 1), teacher, 0.5)
    grads = model.backward(L.mixed_backward(cache))

    t_model = TorchModel.from_numpy(model, dtype)
    t_logits = t_model(torch.from_numpy(tokens))
    flat = t_logits.reshape(-1, config.vocab_size)
    t_loss = 0.5 * F.cross_entropy(flat, torch.from_numpy(np.roll(tokens, -1, 1)).reshape(-1)) + \
        0.5 * F.cross_entropy(flat, torch.from_numpy(teacher).reshape(-1, config.vocab_size))
    t_loss.backward()
    t_grads = {k: v.grad.numpy() for k, v in t_model.named_parameters()}
    return model, (logits, loss, grads), (t_logits.detach().numpy(), t_loss.item(), t_grads)


@pytest.mark.parametrize("binarized", [True, False])
@pytest.mark.parametrize("config", [SMALL, ModelConfig.from_name("tiny")], ids=["small-gqa", "tiny"])
def test_model_matches_torch_float64(config, binarized):
    config = config.replace(binarized=binarized)
    model, (logits, loss, grads), (t_logits, t_loss, t_grads) = run_both(config, torch.float64, T=10)
    assert set(grads) == set(model.params) == set(t_grads)
    assert_close(logits, t_logits, rtol=1e-8, atol=1e-10, name="logits")
    assert_close(loss, t_loss, rtol=1e-10, atol=0, name="loss")
    for name in model.params:
        scale = np.max(np.abs(t_grads[name]))
        assert_close(grads[name], t_grads[name], rtol=1e-6, atol=1e-9 * scale, name=name)


@pytest.mark.parametrize("binarized", [True, False])
def test_model_matches_torch_float32(binarized):
    config = ModelConfig.from_name("tiny").replace(binarized=binarized)
    model, (logits, loss, grads), (t_logits, t_loss, t_grads) = run_both(config, torch.float32, T=16)
    assert logits.dtype == np.float32
    assert_close(logits, t_logits, rtol=1e-3, atol=1e-4, name="logits")
    assert_close(loss, t_loss, rtol=1e-5, atol=0, name="loss")
    for name in model.params:
        assert grads[name].dtype == np.float32
        assert_close(grads[name], t_grads[name], rtol=0, atol=1e-4 * np.max(np.abs(t_grads[name])), name=name)


@pytest.mark.parametrize("scaling", ["row", "none", "ternary"])
def test_scaling_ablations_match_torch(scaling):
    config = SMALL.replace(scaling=scaling)
    model, (logits, loss, grads), (t_logits, t_loss, t_grads) = run_both(config, torch.float64, T=8)
    assert_close(logits, t_logits, rtol=1e-8, atol=1e-10, name="logits")
    assert set(model.params) == set(t_grads)
    assert any(k.endswith(".wscale") for k in model.params) == (scaling == "row")
    for name in model.params:
        assert_close(grads[name], t_grads[name], rtol=1e-6, atol=1e-9 * np.max(np.abs(t_grads[name])),
                     name=name)


def test_parameter_names_follow_hf_llama_and_fbi_layout():
    model = Model(SMALL)
    p = model.params
    assert p["model.embed_tokens.weight"].shape == (97, 32)
    assert p["lm_head.weight"].shape == (97, 32)
    assert p["model.layers.1.self_attn.k_proj.weight"].shape == (16, 32)     # 2 kv heads x 8
    assert p["model.layers.1.mlp.down_proj.weight"].shape == (32, 48)
    assert p["model.layers.1.mlp.down_proj.wscale"].shape == (1, 48)        # one per input column
    assert p["model.layers.0.input_layernorm.weight"].shape == (32,)
    assert sum("wscale" in k for k in p) == 7 * 2
    fp = Model(SMALL.replace(binarized=False))
    assert not any(k.endswith((".wscale", ".wbias")) for k in fp.params)


def test_same_seed_same_model_and_different_seed_different():
    a, b, c = Model(SMALL, seed=3), Model(SMALL, seed=3), Model(SMALL, seed=4)
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    assert not np.array_equal(a.params["lm_head.weight"], c.params["lm_head.weight"])


@pytest.mark.parametrize("binarized", [True, False])
def test_tiny_model_overfits_one_batch(binarized):
    # 4 x 16 random tokens over 64 ids: a uniform guess scores ln 64 = 4.16; memorising the batch
    # drives CE below 0.01 within 60 AdamW steps (measured at step 60: 6e-5 FP, 1e-4 binarized)
    from tinyfbi.core.optim import AdamW, OptimConfig
    config = ModelConfig(vocab_size=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=4, intermediate_size=128, max_position_embeddings=16,
                         binarized=binarized)
    model = Model(config, seed=0)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 64, (4, 17))
    x, y = tokens[:, :-1], tokens[:, 1:]
    opt = AdamW(model.params, OptimConfig(lr=1e-2, min_lr=1e-2, warmup_steps=10, weight_decay=0.0))
    losses = []
    for _ in range(60):
        loss, cache = L.cross_entropy_forward(model.forward(x), y)
        opt.step(model.params, model.backward(L.cross_entropy_backward(cache)))
        losses.append(loss)
    assert losses[0] > 3.5
    assert losses[-1] < 0.01, f"final loss {losses[-1]:.3g}"


@pytest.mark.parametrize("zero", [1, 0], ids=["sign0=+1", "sign0=0"])
def test_fused_fbi_linear_has_the_unfused_gradients_and_saves_less(zero):
    """FusedFBILinear against the plain autograd graph of the same model: same logits and gradients
    (float64, to rounding), and less kept for the backward (no sign(W) and W~ copies per linear)."""
    import torch
    config = ModelConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=48, max_position_embeddings=16, sign_of_zero=zero)
    model = Model(config, seed=3, dtype=np.float64)
    for name in model.binarized_names:   # exact zeros, so sign(0) is exercised
        model.params[name][:, :3] = 0.0
    tokens = torch.from_numpy(np.random.default_rng(0).integers(0, 64, (2, 12)))
    runs = {}
    for fused in (True, False):
        t_model = TorchModel.from_numpy(model, torch.float64).use_fused_linear(fused)
        saved, params = [], {p.data_ptr() for p in t_model.parameters()}

        def keep(t):  # bytes autograd keeps beyond the parameters themselves
            saved.append(0 if t.data_ptr() in params else t.numel() * t.element_size())
            return t
        with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
            logits = t_model(tokens)
        logits.square().mean().backward()
        runs[fused] = (logits.detach().numpy(), {n: p.grad.numpy() for n, p in t_model.named_parameters()},
                       sum(saved))
    np.testing.assert_allclose(runs[True][0], runs[False][0], rtol=1e-12, atol=1e-12)
    for name, grad in runs[False][1].items():
        np.testing.assert_allclose(runs[True][1][name], grad, rtol=1e-10, atol=1e-12, err_msg=name)
    linears = sum(np.prod(s) for n, s in config.param_shapes().items() if n in set(config.binarized_weight_names()))
    assert runs[False][2] - runs[True][2] >= 2 * 8 * linears   # at least sign(W) and W~, float64, per linear


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
def test_authors_sign_of_zero_matches_torch_float64(fused):
    """A released checkpoint's rule, sign(0) = 0, with exact-zero latent weights: the NumPy forward and
    hand-written backward (alpha's gradient sums dW~ * sign(W), so the zeros drop out) against torch
    autograd, fused and unfused, in float64."""
    config = SMALL.replace(sign_of_zero=0)
    model = Model(config, seed=4, dtype=np.float64)
    for name in model.binarized_names:
        model.params[name][:, ::3] = 0.0
    tokens = np.random.default_rng(5).integers(0, config.vocab_size, (2, 10))
    loss, cache = L.cross_entropy_forward(model.forward(tokens), np.roll(tokens, -1, 1))
    grads = model.backward(L.cross_entropy_backward(cache))
    t_model = TorchModel.from_numpy(model, torch.float64).use_fused_linear(fused)
    t_loss = F.cross_entropy(t_model(torch.from_numpy(tokens)).reshape(-1, config.vocab_size),
                             torch.from_numpy(np.roll(tokens, -1, 1)).reshape(-1))
    t_loss.backward()
    assert_close(loss, t_loss.item(), rtol=1e-10, atol=0, name="loss")
    for name, p in t_model.named_parameters():
        scale = np.max(np.abs(p.grad.numpy()))
        assert_close(grads[name], p.grad.numpy(), rtol=1e-6, atol=1e-9 * scale, name=name)

"""Every layer's backward against float64 central differences and against torch autograd.

Scalar probe: loss = sum(out * R) with a fixed random R, so dloss/dout = R. Tolerances:
- central differences in float64 with eps 1e-6 have truncation + rounding error ~1e-9 relative:
  rtol 1e-5, atol 1e-7 leaves room and still catches any wrong term (those are O(1) relative);
- torch autograd in float64 runs the same maths in another order: rtol 1e-9, atol 1e-11.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gradcheck import numerical_grad

from tinyfbi.core import layers as L
from tinyfbi.core.compare import assert_close
from tinyfbi.torch_backend.model import SignSTE, rope_cos_sin, rotate_half, ternary_ste

FD = dict(rtol=1e-5, atol=1e-7)
TORCH = dict(rtol=1e-9, atol=1e-11)


def rand(rng, *shape, scale=1.0):
    return rng.standard_normal(shape) * scale


def check_against_fd(forward, inputs, backward, rng):
    """forward(**inputs) -> (out, cache); backward(dout, cache) -> {name: grad} for inputs."""
    out, cache = forward(**inputs)
    probe = rand(rng, *np.shape(out))
    grads = backward(probe, cache)
    for name, grad in grads.items():
        num = numerical_grad(lambda: float(np.sum(forward(**inputs)[0] * probe)), inputs[name])
        assert_close(grad, num, name=name, **FD)
    return out, probe, grads


def torch_grads(fn, inputs, probe, names):
    tensors = {k: torch.tensor(v, requires_grad=k in names) if isinstance(v, np.ndarray) else v
               for k, v in inputs.items()}
    out = fn(**tensors)
    (out * torch.from_numpy(probe)).sum().backward()
    return out.detach().numpy(), {k: tensors[k].grad.numpy() for k in names}


def compare_torch(out, grads, t_out, t_grads):
    assert_close(out, t_out, name="out", **TORCH)
    for name in grads:
        assert_close(grads[name], t_grads[name], name=name, **TORCH)


def test_embedding():
    rng = np.random.default_rng(0)
    tokens = np.array([[3, 1, 3], [0, 3, 2]])  # repeated ids must accumulate
    inputs = {"weight": rand(rng, 5, 4), "tokens": tokens}
    out, probe, grads = check_against_fd(
        L.embedding_forward, inputs, lambda d, c: {"weight": L.embedding_backward(d, c)}, rng)
    t_out, t_grads = torch_grads(lambda weight, tokens: F.embedding(tokens, weight),
                                 inputs, probe, ["weight"])
    compare_torch(out, grads, t_out, t_grads)


def test_rmsnorm():
    rng = np.random.default_rng(1)
    inputs = {"x": rand(rng, 2, 3, 8), "weight": 1 + rand(rng, 8, scale=0.3), "eps": 1e-5}

    def backward(d, c):
        dx, dw = L.rmsnorm_backward(d, c)
        return {"x": dx, "weight": dw}

    out, probe, grads = check_against_fd(L.rmsnorm_forward, inputs, backward, rng)

    def t_rms(x, weight, eps):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight

    compare_torch(out, grads, *torch_grads(t_rms, inputs, probe, ["x", "weight"]))


def test_rope_matches_hf_convention_and_its_backward():
    rng = np.random.default_rng(2)
    T, D = 5, 8
    cos, sin = L.rope_cos_sin(np.arange(T), D, 10000.0, np.float64)
    t_cos, t_sin = rope_cos_sin(T, D, 10000.0, "cpu")
    assert_close(cos, t_cos.double().numpy(), rtol=1e-6, atol=1e-7, name="cos")  # torch table is float32
    inputs = {"x": rand(rng, 2, 3, T, D), "cos": cos, "sin": sin}
    out, probe, grads = check_against_fd(L.rope_forward, inputs,
                                         lambda d, c: {"x": L.rope_backward(d, c)}, rng)

    def t_rope(x, cos, sin):
        return x * cos + rotate_half(x) * sin

    compare_torch(out, grads, *torch_grads(t_rope, inputs, probe, ["x"]))
    # position 0 is the identity; rotation keeps each (x_i, x_{i+D/2}) pair's norm
    assert_close(out[:, :, 0], inputs["x"][:, :, 0], rtol=0, atol=1e-12, name="pos0")
    half = D // 2
    norms = lambda a: a[..., :half] ** 2 + a[..., half:] ** 2  # noqa: E731
    assert_close(norms(out), norms(inputs["x"]), rtol=1e-10, atol=1e-12, name="pair norms")


@pytest.mark.parametrize("H,Hkv", [(4, 4), (4, 2)])
def test_causal_attention(H, Hkv):
    rng = np.random.default_rng(3)
    B, T, D = 2, 5, 4
    inputs = {"q": rand(rng, B, H, T, D), "k": rand(rng, B, Hkv, T, D), "v": rand(rng, B, Hkv, T, D)}

    def backward(d, c):
        dq, dk, dv = L.attention_backward(d, c)
        return {"q": dq, "k": dk, "v": dv}

    out, probe, grads = check_against_fd(L.attention_forward, inputs, backward, rng)

    def t_att(q, k, v):
        k, v = k.repeat_interleave(H // Hkv, 1), v.repeat_interleave(H // Hkv, 1)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    compare_torch(out, grads, *torch_grads(t_att, inputs, probe, ["q", "k", "v"]))


def test_attention_is_causal():
    rng = np.random.default_rng(4)
    q, k, v = (rand(rng, 1, 2, 6, 4) for _ in range(3))
    out, _ = L.attention_forward(q, k, v)
    k2, v2 = k.copy(), v.copy()
    k2[:, :, 4:] += 10.0
    v2[:, :, 4:] -= 10.0
    out2, _ = L.attention_forward(q, k2, v2)
    assert np.array_equal(out[:, :, :4], out2[:, :, :4])  # the future never leaks into the past


def test_linear():
    rng = np.random.default_rng(5)
    inputs = {"x": rand(rng, 2, 3, 6), "weight": rand(rng, 5, 6)}

    def backward(d, c):
        dx, dw = L.linear_backward(d, c)
        return {"x": dx, "weight": dw}

    out, probe, grads = check_against_fd(L.linear_forward, inputs, backward, rng)
    compare_torch(out, grads, *torch_grads(lambda x, weight: F.linear(x, weight), inputs, probe,
                                           ["x", "weight"]))


def fbi_inputs(rng, scaling="column", out_f=5, in_f=7):
    weight = rand(rng, out_f, in_f)
    weight[0, 0] = 0.0  # an exact zero: binarizes to +1 everywhere
    wscale = wbias = None
    if scaling in ("column", "row"):
        wscale, wbias = L.init_scales(weight, scaling)
        # non-trivial scales: away from their init so every term of the gradient matters
        wscale = wscale + rand(rng, *wscale.shape, scale=0.1)
        wbias = wbias + rand(rng, *wbias.shape, scale=0.1)
    return {"x": rand(rng, 2, 3, in_f), "weight": weight, "wscale": wscale, "wbias": wbias,
            "scaling": scaling}


@pytest.mark.parametrize("scaling", ["column", "row"])
def test_fbi_linear_exact_grads_by_finite_differences(scaling):
    # sign() has zero derivative almost everywhere: x, alpha and beta are checked numerically,
    # the straight-through gradient of W against torch below
    rng = np.random.default_rng(6)
    inputs = fbi_inputs(rng, scaling)

    def backward(d, c):
        dx, _, dscale, dbias = L.fbi_linear_backward(d, c)
        return {"x": dx, "wscale": dscale, "wbias": dbias}

    check_against_fd(L.fbi_linear_forward, inputs, backward, rng)


@pytest.mark.parametrize("scaling", ["column", "row", "none", "ternary"])
def test_fbi_linear_against_torch_ste(scaling):
    rng = np.random.default_rng(7)
    inputs = fbi_inputs(rng, scaling)
    out, cache = L.fbi_linear_forward(**inputs)
    probe = rand(rng, *out.shape)
    dx, dw, dscale, dbias = L.fbi_linear_backward(probe, cache)

    def t_fbi(x, weight, wscale, wbias, scaling):
        if scaling == "ternary":
            w = ternary_ste(weight)
        elif scaling == "none":
            w = SignSTE.apply(weight)
        else:
            w = wscale * SignSTE.apply(weight) + wbias
        return F.linear(x, w)

    names = ["x", "weight"] + (["wscale", "wbias"] if scaling in ("column", "row") else [])
    t_out, t_grads = torch_grads(t_fbi, inputs, probe, names)
    compare_torch(out, {"x": dx, "weight": dw, "wscale": dscale, "wbias": dbias}
                  if scaling in ("column", "row") else {"x": dx, "weight": dw}, t_out, t_grads)


def test_fbi_linear_paper_definition():
    rng = np.random.default_rng(8)
    inputs = fbi_inputs(rng)
    w, a, b = inputs["weight"], inputs["wscale"], inputs["wbias"]
    signs = np.where(w >= 0, 1.0, -1.0)
    assert signs[0, 0] == 1.0
    out, _ = L.fbi_linear_forward(**inputs)
    # the kernels' form: y = sign(W) @ (alpha * x) + (beta . x), alpha/beta along input columns
    x = inputs["x"]
    assert_close(out, (x * a) @ signs.T + (x * b).sum(-1, keepdims=True), rtol=1e-12, atol=1e-12, name="y")
    # the paper's init: beta_j = mean_i W_ij, alpha_j = mean_i |W_ij - beta_j|
    a0, b0 = L.init_scales(w)
    assert a0.shape == b0.shape == (1, w.shape[1])
    assert_close(b0[0], w.mean(0), rtol=0, atol=1e-15, name="beta")
    assert_close(a0[0], np.abs(w - w.mean(0)).mean(0), rtol=0, atol=1e-15, name="alpha")


def test_clipped_ste_ablation_blocks_large_weights():
    rng = np.random.default_rng(9)
    inputs = fbi_inputs(rng)
    inputs["weight"][1, 2] = 3.0
    out, cache = L.fbi_linear_forward(**inputs)
    _, dw_identity, _, _ = L.fbi_linear_backward(np.ones_like(out), cache)
    _, dw_clipped, _, _ = L.fbi_linear_backward(np.ones_like(out), cache, clip_ste=True)
    assert dw_identity[1, 2] != 0 and dw_clipped[1, 2] == 0
    mask = np.abs(inputs["weight"]) <= 1
    assert np.array_equal(dw_clipped[mask], dw_identity[mask])


def test_swiglu():
    rng = np.random.default_rng(10)
    inputs = {"gate": rand(rng, 2, 3, 6, scale=2.0), "up": rand(rng, 2, 3, 6)}

    def backward(d, c):
        dg, du = L.swiglu_backward(d, c)
        return {"gate": dg, "up": du}

    out, probe, grads = check_against_fd(L.swiglu_forward, inputs, backward, rng)
    compare_torch(out, grads, *torch_grads(lambda gate, up: F.silu(gate) * up, inputs, probe,
                                           ["gate", "up"]))


def loss_inputs(rng, B=2, T=3, V=7):
    teacher = L.softmax(rand(rng, B, T, V, scale=2.0))
    return rand(rng, B, T, V, scale=2.0), rng.integers(0, V, (B, T)), teacher


def test_cross_entropy():
    rng = np.random.default_rng(11)
    logits, targets, _ = loss_inputs(rng)
    loss, cache = L.cross_entropy_forward(logits, targets)
    grad = L.cross_entropy_backward(cache)
    num = numerical_grad(lambda: L.cross_entropy_forward(logits, targets)[0], logits)
    assert_close(grad, num, name="dlogits", **FD)
    t_logits = torch.tensor(logits, requires_grad=True)
    t_loss = F.cross_entropy(t_logits.reshape(-1, 7), torch.from_numpy(targets).reshape(-1))
    t_loss.backward()
    assert_close(loss, t_loss.item(), name="loss", **TORCH)
    assert_close(grad, t_logits.grad.numpy(), name="dlogits", **TORCH)


def test_distillation_loss():
    rng = np.random.default_rng(12)
    logits, _, teacher = loss_inputs(rng)
    loss, cache = L.distill_forward(logits, teacher)
    grad = L.distill_backward(cache)
    num = numerical_grad(lambda: L.distill_forward(logits, teacher)[0], logits)
    assert_close(grad, num, name="dlogits", **FD)
    t_logits = torch.tensor(logits, requires_grad=True)
    # soft-target cross-entropy, temperature 1, mean over positions (torch's probability targets)
    t_loss = F.cross_entropy(t_logits.reshape(-1, 7), torch.from_numpy(teacher).reshape(-1, 7))
    t_loss.backward()
    assert_close(loss, t_loss.item(), name="loss", **TORCH)
    assert_close(grad, t_logits.grad.numpy(), name="dlogits", **TORCH)
    # a student equal to the teacher sits at the minimum: gradient zero, loss = teacher entropy
    loss_eq, cache_eq = L.distill_forward(np.log(teacher), teacher)
    assert_close(L.distill_backward(cache_eq), np.zeros_like(teacher), rtol=0, atol=1e-12, name="d at min")
    assert_close(loss_eq, -np.sum(teacher * np.log(teacher)) / 6, rtol=1e-12, atol=0, name="entropy")


def test_truncated_teacher_distillation_gradient():
    # top-K teacher probabilities do not sum to one: the gradient must still be exact
    rng = np.random.default_rng(13)
    logits, _, teacher = loss_inputs(rng)
    teacher = np.where(teacher >= np.sort(teacher, -1)[..., -3:-2], teacher, 0.0)
    _, cache = L.distill_forward(logits, teacher)
    num = numerical_grad(lambda: L.distill_forward(logits, teacher)[0], logits)
    assert_close(L.distill_backward(cache), num, name="dlogits", **FD)


@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0])
def test_mixed_loss(lam):
    rng = np.random.default_rng(14)
    logits, targets, teacher = loss_inputs(rng)
    loss, cache = L.mixed_forward(logits, targets, teacher, lam)
    ce = L.cross_entropy_forward(logits, targets)[0]
    ad = L.distill_forward(logits, teacher)[0]
    assert_close(loss, lam * ce + (1 - lam) * ad, rtol=1e-12, atol=0, name="loss")
    num = numerical_grad(lambda: L.mixed_forward(logits, targets, teacher, lam)[0], logits)
    assert_close(L.mixed_backward(cache), num, name="dlogits", **FD)


def test_float32_stays_float32():
    rng = np.random.default_rng(15)
    x = rand(rng, 2, 3, 8).astype(np.float32)
    w = rand(rng, 8).astype(np.float32)
    y, c = L.rmsnorm_forward(x, w, 1e-5)
    dx, dw = L.rmsnorm_backward(np.ones_like(y), c)
    assert y.dtype == dx.dtype == dw.dtype == np.float32


def test_attention_float32_stays_float32():
    # a float64 softmax scale once promoted scores and probabilities to float64 (2x slower GEMMs)
    rng = np.random.default_rng(16)
    q, k, v = (rand(rng, 2, 4, 8, 6).astype(np.float32) for _ in range(3))
    out, cache = L.attention_forward(q, k, v)
    grads = L.attention_backward(np.ones_like(out), cache)
    assert out.dtype == np.float32 and all(p.dtype == np.float32 for p in cache[3])
    assert all(g.dtype == np.float32 for g in grads)


@pytest.mark.parametrize("H,Hkv,Tk", [(4, 4, 5), (4, 2, 7)])
def test_chunked_attention_matches_one_block(monkeypatch, H, Hkv, Tk):
    # query blocks of 2 (some see fewer keys, a ragged last one) against all 5 queries in one block
    rng = np.random.default_rng(17)
    q, k, v, d = rand(rng, 2, H, 5, 4), rand(rng, 2, Hkv, Tk, 4), rand(rng, 2, Hkv, Tk, 4), rand(rng, 2, H, 5, 4)
    out, cache = L.attention_forward(q, k, v)
    grads = L.attention_backward(d, cache)
    monkeypatch.setattr(L, "ATTENTION_CHUNK", 2)
    out2, cache2 = L.attention_forward(q, k, v)
    assert_close(out2, out, rtol=1e-12, atol=1e-14, name="out")
    for name, g, g2 in zip("qkv", grads, L.attention_backward(d, cache2)):
        assert_close(g2, g, rtol=1e-12, atol=1e-14, name="d" + name)

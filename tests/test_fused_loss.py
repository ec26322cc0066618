"""The fused head + distillation loss (torch_backend.fused_loss) against the unfused path it replaces:
logits = h_s @ W_s.T, probs = softmax(h_t @ W_t.T), then learner.distill_loss, the oracle. Loss and the
gradients for h_s and W_s, every loss kind, chunks that do and do not divide N, float32 and bf16
autocast; and the loss's peak memory, unfused against fused."""
import pytest
import torch
import torch.nn.functional as F

from tinyfbi.bench.loss_memory import loss_peaks
from tinyfbi.core.config import ModelConfig
from tinyfbi.torch_backend.fused_loss import fused_distill_loss
from tinyfbi.torch_backend.learner import distill_loss
from tinyfbi.torch_backend.model import TorchModel

N, C, C_T, V = 37, 16, 24, 300          # 37 tokens: a prime, so chunks 8 and 5 leave a ragged last chunk
LAM = 0.3                               # not 0.5: a swapped lam and 1 - lam shows
SCALE = 0.37                            # the backward's incoming gradient (1 / grad_accum in the learner), not 1

# Tolerance, as max |fused - unfused| <= REL * max |unfused| over each tensor.
# float32: both paths compute the same float32 numbers, summed in another order (the W_s gradient
# over chunks, the loss over rows); measured worst 1.5e-6 of the largest entry, so 1e-5 leaves room.
# bf16 autocast: the logits are the same bf16 numbers (the loss agrees to 3e-7), but the gradients go
# through bf16 twice: dL/dlogits is rounded to bf16 before the two head matmuls (the unfused path
# rounds it after the incoming gradient's scale, the fused one before it), and each chunk's W_s
# gradient is rounded to bf16 before the float32 sum (unfused: one rounding of the whole sum). One
# bf16 rounding is 2^-9 relative; with the cancellation in softmax - target (each row sums to 0) the
# measured worst was 0.77% of the largest entry, so 2^-6 (1.6%, four bf16 steps at the top) is the bound.
REL = {"float32": 1e-5, "bf16": 2 ** -6}
LOSS_REL = 1e-5


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    h_s = torch.randn(N, C, generator=g)                   # (N, C) student's final-norm output
    w_s = torch.randn(V, C, generator=g) * 0.5             # (V, C) logits spread over several units
    h_t = torch.randn(N, C_T, generator=g)                 # (N, C_t)
    w_t = torch.randn(V, C_T, generator=g) * 0.5           # (V, C_t)
    y = torch.randint(0, V, (N,), generator=g)             # (N,)
    return h_s, w_s, h_t, w_t, y


def run(kind, precision, chunk=None, teacher="head", seed=0):
    """-> loss, dL/dh_s, dL/dW_s: unfused (chunk None) or fused."""
    h_s0, w_s0, h_t, w_t, y = inputs(seed)
    h_s, w_s = h_s0.clone().requires_grad_(), w_s0.clone().requires_grad_()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    with torch.no_grad(), autocast:
        probs = torch.softmax(F.linear(h_t, w_t).float(), dim=-1)                   # (N, V) as learner.targets
    if chunk is None:
        with autocast:
            logits = F.linear(h_s, w_s)                                              # (N, V) as lm_head
        loss = distill_loss(kind, logits[None], y[None], probs[None], LAM)
    else:
        teacher_args = dict(h_t=h_t, w_t=w_t) if teacher == "head" else dict(probs=probs)
        with autocast:
            loss = fused_distill_loss(kind, h_s, w_s, y, lam=LAM, chunk=chunk, **teacher_args)
    (loss * SCALE).backward()
    return loss.detach(), h_s.grad, w_s.grad


def assert_close(got, want, rel, what):
    err = (got - want).abs().max().item()
    assert err <= rel * want.abs().max().item(), f"{what}: max error {err:.3g}, largest entry {want.abs().max():.3g}"


@pytest.mark.parametrize("precision", ["float32", "bf16"])
@pytest.mark.parametrize("kind", ["ad", "ce", "mix"])
def test_fused_loss_and_gradients_equal_the_unfused_path(kind, precision):
    want = run(kind, precision)
    for chunk in (8, 1, 5, N, 64):        # ragged, one token, ragged, exactly N, more than N
        got = run(kind, precision, chunk)
        assert got[0].dtype == torch.float32 and got[1].dtype == got[2].dtype == torch.float32
        assert_close(got[0], want[0], LOSS_REL, f"{kind} {precision} chunk {chunk} loss")
        assert_close(got[1], want[1], REL[precision], f"{kind} {precision} chunk {chunk} dL/dh_s")
        assert_close(got[2], want[2], REL[precision], f"{kind} {precision} chunk {chunk} dL/dW_s")


@pytest.mark.parametrize("kind", ["ad", "mix"])
def test_teacher_probabilities_in_place_of_its_head(kind):
    """The top-K teacher cache hands over probabilities, not hidden states: the same loss and gradients."""
    want = run(kind, "float32")
    got = run(kind, "float32", chunk=8, teacher="probs")
    for g, w, what in zip(got, want, ("loss", "dL/dh_s", "dL/dW_s")):
        assert_close(g, w, REL["float32"], what)


def test_bf16_gradients_as_accurate_as_the_unfused_path():
    """Not just near the unfused bf16 result: as near the float64 truth as it (measured worst 2x)."""
    h_s0, w_s0, h_t, w_t, y = inputs(1)
    h = h_s0.double().requires_grad_()
    w = w_s0.double().requires_grad_()
    probs = torch.softmax(h_t.double() @ w_t.double().T, dim=-1)
    (distill_loss("mix", (h @ w.T)[None], y[None], probs[None], LAM) * SCALE).backward()
    unfused, fused = run("mix", "bf16", seed=1), run("mix", "bf16", chunk=8, seed=1)
    for i, truth in ((1, h.grad), (2, w.grad)):
        assert (fused[i].double() - truth).abs().max() <= 3 * (unfused[i].double() - truth).abs().max()


def test_no_graph_no_gradient_work_and_one_backward_only():
    h_s, w_s, h_t, w_t, y = inputs()
    with torch.no_grad():
        loss = fused_distill_loss("ad", h_s.requires_grad_(), w_s, y, h_t=h_t, w_t=w_t, chunk=8)
    assert not loss.requires_grad
    loss = fused_distill_loss("ce", h_s, w_s, y, chunk=8)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="one backward per graph"):
        loss.backward()
    with pytest.raises(ValueError, match="needs the teacher"):
        fused_distill_loss("ad", h_s, w_s, y)


def test_hidden_is_what_lm_head_reads():
    config = ModelConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2, intermediate_size=48, max_position_embeddings=16)
    model = TorchModel(config)
    model.init_weights(0)
    tokens = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    assert torch.equal(model.lm_head(model.hidden(tokens)), model(tokens))


def test_peak_memory_falls_at_least_4x(one_torch_thread):
    """A scaled-down 130m head (V 32000, C 128, 1024 tokens; the full 8 x 2048 x 768 case is
    `python -m tinyfbi.bench.loss_memory`): the unfused loss holds about five (N, V) float32 tensors
    at its peak, the fused one a few (64, V) chunks and the (V, C) gradient. Measured 13x."""
    r = loss_peaks("ad", tokens=1024, vocab=32000, hidden=128, teacher_hidden=128, chunk=64)
    assert r["fused_loss"] == pytest.approx(r["unfused_loss"], rel=LOSS_REL)
    assert r["unfused_bytes"] >= 4 * 1024 * 32000 * 4      # the accounting sees the (N, V) tensors
    assert r["ratio"] >= 4, r

"""AdamW, the warmup + cosine schedule and global-norm clipping against torch.

One AdamW step is elementwise float32 maths in the same order as torch's, so rtol 1e-6 holds.
"""
import numpy as np
import pytest
import torch

from tinyfbi.core.compare import assert_close
from tinyfbi.core.optim import AdamW, OptimConfig, clip_grads, lr_at


def params_and_grads(seed):
    rng = np.random.default_rng(seed)
    params = {"a": rng.standard_normal((5, 3)).astype(np.float32),
              "b": rng.standard_normal((1, 7)).astype(np.float32)}
    grads = [{k: rng.standard_normal(v.shape).astype(np.float32) for k, v in params.items()}
             for _ in range(3)]
    return params, grads


def test_adamw_steps_equal_torch():
    params, grads_seq = params_and_grads(0)
    cfg = OptimConfig(lr=1e-2, weight_decay=0.1, beta1=0.9, beta2=0.95, eps=1e-8, grad_clip=0.0)
    t_params = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    t_opt = torch.optim.AdamW(t_params.values(), lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    opt = AdamW(params, cfg)
    for grads in grads_seq:  # three steps: bias correction changes every step
        for k, p in t_params.items():
            p.grad = torch.tensor(grads[k])
        t_opt.step()
        opt.step(params, {k: g.copy() for k, g in grads.items()}, lr=1e-2)
        for k in params:
            assert_close(params[k], t_params[k].detach().numpy(), rtol=1e-6, atol=1e-7, name=k)


def test_clipping_equals_torch_clip_grad_norm():
    _, grads_seq = params_and_grads(1)
    grads = grads_seq[0]
    t_grads = [torch.tensor(g) for g in grads.values()]
    ps = [torch.zeros_like(g, requires_grad=True) for g in t_grads]
    for p, g in zip(ps, t_grads):
        p.grad = g.clone()
    t_norm = torch.nn.utils.clip_grad_norm_(ps, 1.0)
    norm = clip_grads(grads, 1.0)
    assert norm == pytest.approx(t_norm.item(), rel=1e-6)
    assert norm > 1.0  # the test must actually clip
    for g, p in zip(grads.values(), ps):
        assert_close(g, p.grad.numpy(), rtol=1e-6, atol=1e-7, name="clipped")


def test_schedule_warmup_cosine_floor():
    cfg = OptimConfig(lr=3e-4, min_lr=3e-5, warmup_steps=10, total_steps=110)
    assert lr_at(0, cfg) == pytest.approx(3e-5)        # warmup starts at lr / warmup
    assert lr_at(9, cfg) == pytest.approx(3e-4)        # and reaches the peak
    assert lr_at(60, cfg) == pytest.approx(0.5 * (3e-4 + 3e-5))  # cosine midpoint
    assert lr_at(110, cfg) == pytest.approx(3e-5)
    assert lr_at(10_000, cfg) == pytest.approx(3e-5)   # then stays at the floor
    lrs = [lr_at(s, cfg) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_paper_recipe_defaults():
    cfg = OptimConfig()
    assert (cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.weight_decay) == (3e-4, 3e-5, 2000, 0.1)
    assert (cfg.beta1, cfg.beta2, cfg.grad_clip) == (0.9, 0.95, 1.0)


def test_state_dict_round_trip_continues_identically():
    params, grads_seq = params_and_grads(2)
    a = AdamW(params, OptimConfig(grad_clip=0.0))
    pa = {k: v.copy() for k, v in params.items()}
    a.step(pa, {k: g.copy() for k, g in grads_seq[0].items()})
    b = AdamW(params)
    b.load_state_dict(a.state_dict())
    b.cfg = a.cfg
    pb = {k: v.copy() for k, v in pa.items()}
    a.step(pa, {k: g.copy() for k, g in grads_seq[1].items()})
    b.step(pb, {k: g.copy() for k, g in grads_seq[1].items()})
    assert all(np.array_equal(pa[k], pb[k]) for k in pa)

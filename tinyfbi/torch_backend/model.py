"""The same FBI transformer in PyTorch: the scaled backend and the NumPy core's test oracle.

Same ModelConfig, same parameter names (`model.layers.0.self_attn.q_proj.wscale`, ...), same
binarize (tinyfbi.core.binarize.positive_mask), same identity straight-through estimator.

    from tinyfbi.torch_backend.model import TorchModel
    model = TorchModel(config)                      # or TorchModel.from_numpy(numpy_model)
    logits = model(tokens)                          # (B, T) long -> (B, T, V)
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.binarize import positive_mask
from ..core.config import ModelConfig


class SignSTE(torch.autograd.Function):
    """sign with sign(0) = +1 (zero=0: torch.sign, the authors') forward; identity backward
    (FBI-LLM's straight-through estimator)."""

    @staticmethod
    def forward(ctx, w, zero=1):
        return torch.where(positive_mask(w), 1.0, -1.0).to(w.dtype) if zero == 1 else torch.sign(w)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def ternary_ste(w):
    # BitNet b1.58 absmean: round(W / mean|W|) in {-1, 0, 1} times mean|W|, identity gradient
    gamma = w.abs().mean() + 1e-8
    q = torch.clamp(torch.round(w / gamma), -1, 1) * gamma
    return w + (q - w).detach()


class FusedFBILinear(torch.autograd.Function):
    """y = x @ (alpha * sign(W) + beta).T with W~ formed on the fly in the forward and again in the
    backward: autograd keeps x, W, alpha, beta (which exist anyway), not a copy of sign(W) and of W~
    per linear. Gradients are the unfused path's: dx = dy W~, dW~ = dy^T x, dW = alpha * dW~ (the
    identity STE), dalpha = sum_rows dW~ * sign(W), dbeta = sum_rows dW~. Column scaling only."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, x, weight, wscale, wbias, zero=1):
        ctx.save_for_backward(x, weight, wscale, wbias)
        ctx.zero = zero
        w_tilde = wscale * SignSTE.forward(None, weight, zero) + wbias                # (out, in)
        return F.linear(x, w_tilde.to(x.dtype))

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, dy):
        x, weight, wscale, wbias = ctx.saved_tensors
        signs = SignSTE.forward(None, weight, ctx.zero)                              # (out, in)
        w_tilde = (wscale * signs + wbias).to(dy.dtype)
        dx = (dy @ w_tilde).to(x.dtype)                                              # (..., in)
        # dy may be bf16 and x float32 (autocast): the weight gradient in the weight's precision
        dy2, x2 = dy.reshape(-1, dy.shape[-1]), x.reshape(-1, x.shape[-1])
        dw_tilde = dy2.T.to(weight.dtype) @ x2.to(weight.dtype)                      # (out, in)
        return (dx, dw_tilde * wscale, (dw_tilde * signs).sum(0, keepdim=True), dw_tilde.sum(0, keepdim=True),
                None)


class FBILinear(nn.Module):
    """y = x @ W~.T, W~ = wscale * sign(W) + wbias; wscale/wbias (1, in): one per input column."""

    def __init__(self, in_features, out_features, scaling="column", sign_of_zero=1):
        super().__init__()
        self.scaling, self.sign_of_zero = scaling, sign_of_zero
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        if scaling in ("column", "row"):  # `none` and `ternary` have no learnable scales
            shape = (1, in_features) if scaling == "column" else (out_features, 1)
            self.wscale = nn.Parameter(torch.ones(shape))
            self.wbias = nn.Parameter(torch.zeros(shape))

    def effective_weight(self):
        if self.scaling == "ternary":
            return ternary_ste(self.weight)
        signs = SignSTE.apply(self.weight, self.sign_of_zero)
        if self.scaling == "none":
            return signs
        return self.wscale * signs + self.wbias

    fused = True   # FusedFBILinear for column scaling; False: the plain autograd graph (for comparison)

    def forward(self, x):
        if self.fused and self.scaling == "column":
            return FusedFBILinear.apply(x, self.weight, self.wscale, self.wbias, self.sign_of_zero)
        return F.linear(x, self.effective_weight().to(x.dtype))


def make_linear(config: ModelConfig, in_features, out_features):
    if config.binarized:
        return FBILinear(in_features, out_features, config.scaling, config.sign_of_zero)
    return nn.Linear(in_features, out_features, bias=False)


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # half-precision inputs are normalized in float32, as HF LLaMA does
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight * xf).to(x.dtype)


def rope_cos_sin(T, head_dim, theta, device, offset=0, dtype=torch.float32):
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64, device=device) / head_dim))
    angles = torch.outer(torch.arange(offset, offset + T, dtype=torch.float64, device=device), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)                                    # (T, D)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        C, D = config.hidden_size, config.head_dim
        self.H, self.Hkv, self.D = config.num_attention_heads, config.num_key_value_heads, D
        self.q_proj = make_linear(config, C, self.H * D)
        self.k_proj = make_linear(config, C, self.Hkv * D)
        self.v_proj = make_linear(config, C, self.Hkv * D)
        self.o_proj = make_linear(config, self.H * D, C)

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.H, self.D).transpose(1, 2)              # (B, H, T, D)
        k = self.k_proj(x).view(B, T, self.Hkv, self.D).transpose(1, 2)            # (B, Hkv, T, D)
        v = self.v_proj(x).view(B, T, self.Hkv, self.D).transpose(1, 2)
        q = (q * cos + rotate_half(q) * sin).to(v.dtype)
        k = (k * cos + rotate_half(k) * sin).to(v.dtype)
        if self.Hkv != self.H:  # grouped-query: kv head j serves query heads j*G .. j*G+G-1
            k = k.repeat_interleave(self.H // self.Hkv, dim=1)
            v = v.repeat_interleave(self.H // self.Hkv, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)             # (B, H, T, D)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, self.H * self.D))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        C, I = config.hidden_size, config.intermediate_size
        self.gate_proj = make_linear(config, C, I)
        self.up_proj = make_linear(config, C, I)
        self.down_proj = make_linear(config, I, C)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class TorchModel(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = Decoder(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.checkpoint_layers = False  # activation checkpointing per decoder layer

    def use_fused_linear(self, fused: bool = True):
        """FusedFBILinear (the default) or the unfused autograd graph, for every FBI-Linear."""
        for module in self.modules():
            if isinstance(module, FBILinear):
                module.fused = fused
        return self

    def forward(self, tokens, head=True):
        """Logits (B, T, V); head=False: the final norm's output (B, T, C), which the fused head + loss
        (fused_loss.py) multiplies by lm_head.weight chunk by chunk. One forward for both, so DDP's and
        FSDP's hooks run either way."""
        h = self.hidden(tokens)
        return self.lm_head(h) if head else h

    def hidden(self, tokens):
        """The final norm's output, what lm_head reads: the input of the fused head + loss (fused_loss.py)."""
        cfg = self.config
        x = self.model.embed_tokens(tokens)                                         # (B, T, C)
        cos, sin = rope_cos_sin(tokens.shape[1], cfg.head_dim, cfg.rope_theta, tokens.device, dtype=x.dtype)
        for layer in self.model.layers:
            if self.checkpoint_layers and self.training:
                x = torch.utils.checkpoint.checkpoint(layer, x, cos, sin, use_reentrant=False)
            else:
                x = layer(x, cos, sin)
        return self.model.norm(x)                                                   # (B, T, C)

    @torch.no_grad()
    def init_weights(self, seed=0):
        """std 0.02 normal for embeddings and linears, ones for norms, FBI scale/bias init."""
        gen = torch.Generator().manual_seed(seed)
        for name, p in self.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            elif name.endswith(".weight"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
        for module in self.modules():
            if isinstance(module, FBILinear) and module.scaling in ("column", "row"):
                axis = 0 if module.scaling == "column" else 1
                wbias = module.weight.mean(dim=axis, keepdim=True)
                module.wbias.copy_(wbias)
                module.wscale.copy_((module.weight - wbias).abs().mean(dim=axis, keepdim=True))

    def load_numpy_params(self, params: dict):
        state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in params.items()}
        self.load_state_dict(state, strict=True)
        return self

    @classmethod
    def from_numpy(cls, numpy_model, dtype=torch.float32):
        model = cls(numpy_model.config).to(dtype)
        return model.load_numpy_params({k: v.astype(np.float64 if dtype == torch.float64 else np.float32)
                                        for k, v in numpy_model.params.items()})


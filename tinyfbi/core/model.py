"""The NumPy FBI transformer: LLaMA blocks whose linears are FBI-Linear, hand-written backward.

    model = Model(ModelConfig.from_name("tiny"), seed=0)
    logits = model.forward(tokens)          # (B, T) int -> (B, T, V)
    grads = model.backward(dlogits)         # dict with exactly the keys of model.params

Parameters live in `model.params` under Hugging Face LLaMA names, plus `.wscale`/`.wbias` (1, in)
per binarized linear: the layout of the released FBI-LLM checkpoints (arXiv 2407.07093).
The backward is the forward in reverse, op by op, using the caches the forward kept.
File I/O lives in tinyfbi.formats: `tinyfbi.save_model(model, dir)`, `tinyfbi.load_model(dir)`.
"""
from __future__ import annotations

import numpy as np

from . import layers as L
from .config import ModelConfig
from .errors import TinyFBIError

INIT_STD = 0.02  # LLaMA / FBI-LLM initializer_range for embeddings and every linear


class Model:
    def __init__(self, config: ModelConfig, seed: int = 0, dtype=np.float32, params=None):
        self.config = config
        self.dtype = np.dtype(dtype)
        self.clip_ste = False  # ablation switch: hard-tanh STE instead of the paper's identity
        self.params = params if params is not None else self._init_params(seed)
        self._caches = None

    # ------------------------------------------------------------------ parameters

    def _init_params(self, seed):
        cfg, rng = self.config, np.random.default_rng(seed)
        params, params_order = {}, cfg.param_shapes()
        for name, shape in params_order.items():
            if name.endswith((".wscale", ".wbias")):
                continue  # filled from their latent weight below
            if "norm" in name:
                params[name] = np.ones(shape, dtype=self.dtype)
            else:
                params[name] = (rng.standard_normal(shape) * INIT_STD).astype(self.dtype)
            if name[:-len(".weight")] + ".wscale" in params_order:
                wscale, wbias = L.init_scales(params[name], cfg.scaling)
                params[name[:-len(".weight")] + ".wscale"] = wscale.astype(self.dtype)
                params[name[:-len(".weight")] + ".wbias"] = wbias.astype(self.dtype)
        return {name: params[name] for name in params_order}  # canonical order

    def num_params(self) -> int:
        return sum(p.size for p in self.params.values())

    @property
    def binarized_names(self) -> list[str]:
        """Latent weights of the binarized block linears (q, k, v, o, gate, up, down)."""
        return self.config.binarized_weight_names()

    # ------------------------------------------------------------------ forward

    def _weight(self, prefix):
        """The (out, in) matrix a block linear multiplies by: W~ if binarized, else W."""
        p = self.params
        if not self.config.binarized:
            return p[prefix + ".weight"]
        return L.effective_weight(p[prefix + ".weight"], p.get(prefix + ".wscale"),
                                  p.get(prefix + ".wbias"), self.config.scaling, self.config.sign_of_zero)

    def _stacked_weight(self, prefixes):
        """(sum out, in): the block linears' matrices one under the other, and the signs of each
        binarized one (kept for the backward's dalpha). W~ = alpha * sign(W) + beta is written
        straight into its rows of the stack: no per-linear W~ and no concatenated copy."""
        p, cfg = self.params, self.config
        if not cfg.binarized or not cfg.has_scales:
            weights = [self._weight(prefix) for prefix in prefixes]
            return (np.concatenate(weights) if len(weights) > 1 else weights[0]), [None] * len(prefixes)
        rows = [p[prefix + ".weight"].shape[0] for prefix in prefixes]
        first = p[prefixes[0] + ".weight"]
        stacked = np.empty((sum(rows), first.shape[1]), first.dtype)
        signs, start = [], 0
        for prefix, n in zip(prefixes, rows):
            s = L.binarize(p[prefix + ".weight"], cfg.sign_of_zero)                     # (out, in)
            w_tilde = stacked[start:start + n]
            np.multiply(p[prefix + ".wscale"], s, out=w_tilde)
            w_tilde += p[prefix + ".wbias"]
            signs.append(s)
            start += n
        return stacked, signs

    def _linears(self, prefixes, x):
        """Linears that share their input (q/k/v, gate/up) as one GEMM on stacked weights."""
        stacked, signs = self._stacked_weight(prefixes)                                 # (sum out, in)
        y, cache = L.linear_forward(x, stacked)
        splits = np.cumsum([self.params[prefix + ".weight"].shape[0] for prefix in prefixes])[:-1]
        return np.split(y, splits, axis=-1), (prefixes, splits, signs, cache)

    def _linears_backward(self, dout, cache, grads):
        """dout (..., sum out): the stacked outputs' gradient, already side by side."""
        prefixes, splits, signs, lin_cache = cache
        dx, dstacked = L.linear_backward(dout, lin_cache)
        for prefix, dw, s in zip(prefixes, np.split(dstacked, splits, axis=0), signs):
            if not self.config.binarized:
                grads[prefix + ".weight"] = dw
                continue
            dweight, dscale, dbias = L.effective_weight_backward(
                dw, self.params[prefix + ".weight"], self.params.get(prefix + ".wscale"),
                self.config.scaling, self.clip_ste, self.config.sign_of_zero, signs=s)
            grads[prefix + ".weight"] = dweight
            if self.config.has_scales:
                grads[prefix + ".wscale"], grads[prefix + ".wbias"] = dscale, dbias
        return dx

    def check_tokens(self, tokens):
        if not isinstance(tokens, np.ndarray) or tokens.dtype.kind not in "iu":
            raise TinyFBIError(f"tokens must be an integer numpy array, got "
                               f"{getattr(tokens, 'dtype', type(tokens).__name__)}")
        if tokens.ndim != 2:
            raise TinyFBIError(f"tokens must have shape (batch, time), got rank {tokens.ndim}")
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.config.vocab_size):
            raise TinyFBIError(f"token ids must lie in [0, {self.config.vocab_size}), got "
                               f"[{tokens.min()}, {tokens.max()}]")
        if tokens.shape[1] > self.config.max_position_embeddings:
            raise TinyFBIError(f"sequence length {tokens.shape[1]} exceeds max_position_embeddings "
                               f"{self.config.max_position_embeddings}")

    def forward(self, tokens):
        self.check_tokens(tokens)
        cfg, p = self.config, self.params
        B, T = tokens.shape
        H, Hkv, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        cos, sin = L.rope_cos_sin(np.arange(T), D, cfg.rope_theta, self.dtype)
        x, emb_cache = L.embedding_forward(p["model.embed_tokens.weight"], tokens)   # (B, T, C)
        blocks = []
        for i in range(cfg.num_hidden_layers):
            pre, c = f"model.layers.{i}.", {}
            h, c["ln1"] = L.rmsnorm_forward(x, p[pre + "input_layernorm.weight"], cfg.rms_norm_eps)
            (q, k, v), c["qkv"] = self._linears([pre + "self_attn.q_proj", pre + "self_attn.k_proj",
                                                  pre + "self_attn.v_proj"], h)    # (B, T, H*D), (B, T, Hkv*D) x2
            q = q.reshape(B, T, H, D).transpose(0, 2, 1, 3)                             # (B, H, T, D)
            k = k.reshape(B, T, Hkv, D).transpose(0, 2, 1, 3)                           # (B, Hkv, T, D)
            v = v.reshape(B, T, Hkv, D).transpose(0, 2, 1, 3)
            q, c["rq"] = L.rope_forward(q, cos, sin)
            k, c["rk"] = L.rope_forward(k, cos, sin)
            a, c["att"] = L.attention_forward(q, k, v)                                  # (B, H, T, D)
            a = a.transpose(0, 2, 1, 3).reshape(B, T, H * D)
            (o,), c["o"] = self._linears([pre + "self_attn.o_proj"], a)
            x = x + o                                                                   # residual
            h, c["ln2"] = L.rmsnorm_forward(x, p[pre + "post_attention_layernorm.weight"], cfg.rms_norm_eps)
            (g, u), c["gate_up"] = self._linears([pre + "mlp.gate_proj", pre + "mlp.up_proj"], h)  # (B, T, I) x2
            m, c["swiglu"] = L.swiglu_forward(g, u)
            (d,), c["down"] = self._linears([pre + "mlp.down_proj"], m)                 # (B, T, C)
            x = x + d
            blocks.append(c)
        h, norm_cache = L.rmsnorm_forward(x, p["model.norm.weight"], cfg.rms_norm_eps)
        logits, head_cache = L.linear_forward(h, p["lm_head.weight"])                   # (B, T, V)
        self._caches = (tokens.shape, emb_cache, blocks, norm_cache, head_cache)
        return logits

    # ------------------------------------------------------------------ backward

    def backward(self, dlogits):
        """Gradients of every parameter given dL/dlogits (B, T, V): the forward in reverse."""
        if self._caches is None:
            raise RuntimeError("backward() needs a forward() first")
        cfg = self.config
        (B, T), emb_cache, blocks, norm_cache, head_cache = self._caches
        H, Hkv, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        grads = {}
        dh, grads["lm_head.weight"] = L.linear_backward(dlogits, head_cache)
        dx, grads["model.norm.weight"] = L.rmsnorm_backward(dh, norm_cache)
        for i in reversed(range(cfg.num_hidden_layers)):
            pre, c = f"model.layers.{i}.", blocks[i]
            dm = self._linears_backward(dx, c["down"], grads)
            dgu = np.empty((B, T, 2 * cfg.intermediate_size), dm.dtype)                 # [dgate | dup]
            L.swiglu_backward(dm, c["swiglu"], out=dgu)
            dh = self._linears_backward(dgu, c["gate_up"], grads)
            dln2, grads[pre + "post_attention_layernorm.weight"] = L.rmsnorm_backward(dh, c["ln2"])
            dx = dx + dln2
            da = self._linears_backward(dx, c["o"], grads)
            da = da.reshape(B, T, H, D).transpose(0, 2, 1, 3)                           # (B, H, T, D)
            dq, dk, dv = L.attention_backward(da, c["att"])
            # the stacked q/k/v GEMM's output gradient, heads written straight into it: (B, T, H + 2Hkv, D)
            dqkv = np.empty((B, T, H + 2 * Hkv, D), dq.dtype)
            dqkv[:, :, :H] = L.rope_backward(dq, c["rq"]).transpose(0, 2, 1, 3)
            dqkv[:, :, H:H + Hkv] = L.rope_backward(dk, c["rk"]).transpose(0, 2, 1, 3)
            dqkv[:, :, H + Hkv:] = dv.transpose(0, 2, 1, 3)
            dh = self._linears_backward(dqkv.reshape(B, T, (H + 2 * Hkv) * D), c["qkv"], grads)
            dln1, grads[pre + "input_layernorm.weight"] = L.rmsnorm_backward(dh, c["ln1"])
            dx = dx + dln1
        grads["model.embed_tokens.weight"] = L.embedding_backward(dx, emb_cache)
        self._caches = None  # free activations
        return {name: grads[name].astype(self.dtype, copy=False) for name in self.params}

    def drop_caches(self):
        """Free the activations a forward keeps for its backward (after evaluation, or a skipped step)."""
        self._caches = None

    # ------------------------------------------------------------------ export

    def effective_weights(self):
        """Params with every binarized linear materialized as W~ (what a float runtime multiplies by)."""
        out = {}
        for name, value in self.params.items():
            if name.endswith((".wscale", ".wbias")):
                continue
            if name in self.binarized_names:
                prefix = name[:-len(".weight")]
                value = L.effective_weight(value, self.params.get(prefix + ".wscale"),
                                           self.params.get(prefix + ".wbias"), self.config.scaling,
                                           self.config.sign_of_zero)
            out[name] = value
        return out

"""Inference with a KV cache: prefill a prompt, then decode one token at a time.

The runner needs only the full-precision parameters (embeddings, norms, lm_head) and a
`linear(prefix, x) -> x @ W.T` for the block linears, so the same code serves the float model
(W~ materialized once) and the packed 1-bit runtime (runtime.packed_runner, bit kernels).

    runner = FloatRunner(load_model("runs/tiny"))
    ids = generate(runner, prompt_ids, max_new_tokens=100, temperature=0.8, top_k=40)
    session = Session(runner, greedy=True); session.feed(ids); more = session.continue_text(20)   # a chat turn
"""
from __future__ import annotations

import numpy as np

from ..core import layers as L
from ..core.config import ModelConfig


class KVCache:
    """Keys and values of every layer so far: (B, Hkv, max_len, D) each, filled up to `length`."""

    def __init__(self, config: ModelConfig, batch: int, max_len: int, dtype=np.float32):
        shape = (batch, config.num_key_value_heads, max_len, config.head_dim)
        self.k = [np.zeros(shape, dtype) for _ in range(config.num_hidden_layers)]
        self.v = [np.zeros(shape, dtype) for _ in range(config.num_hidden_layers)]
        self.length, self.max_len = 0, max_len


class Runner:
    """Forward over new tokens given a KV cache. Subclasses provide `linear(prefix, x)`."""

    def __init__(self, config: ModelConfig, params: dict):
        self.config = config
        self.params = params  # embed_tokens, norms and lm_head (full precision)

    def linear(self, prefix: str, x: np.ndarray) -> np.ndarray:  # x (N, in) -> (N, out)
        raise NotImplementedError

    def new_cache(self, batch=1, max_len=None) -> KVCache:
        return KVCache(self.config, batch, max_len or self.config.max_position_embeddings)

    def forward(self, tokens: np.ndarray, cache: KVCache, last_only: bool = False) -> np.ndarray:
        """tokens (B, T_new) continuing the cache -> logits (B, T_new, V), or (B, 1, V) if last_only;
        appends to the cache."""
        cfg, p = self.config, self.params
        B, T = tokens.shape
        H, Hkv, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        start, end = cache.length, cache.length + T
        if end > cache.max_len:
            raise ValueError(f"sequence of {end} tokens exceeds the cache ({cache.max_len})")
        cos, sin = L.rope_cos_sin(np.arange(start, end), D, cfg.rope_theta)
        x = p["model.embed_tokens.weight"][tokens].astype(np.float32)                # (B, T, C)
        for i in range(cfg.num_hidden_layers):
            pre = f"model.layers.{i}."
            h, _ = L.rmsnorm_forward(x, p[pre + "input_layernorm.weight"], cfg.rms_norm_eps)
            h2 = h.reshape(B * T, -1)
            q = self.linear(pre + "self_attn.q_proj", h2).reshape(B, T, H, D).transpose(0, 2, 1, 3)
            k = self.linear(pre + "self_attn.k_proj", h2).reshape(B, T, Hkv, D).transpose(0, 2, 1, 3)
            v = self.linear(pre + "self_attn.v_proj", h2).reshape(B, T, Hkv, D).transpose(0, 2, 1, 3)
            q, _ = L.rope_forward(q, cos, sin)
            k, _ = L.rope_forward(k, cos, sin)
            cache.k[i][:, :, start:end], cache.v[i][:, :, start:end] = k, v
            a, _ = L.attention_forward(q, cache.k[i][:, :, :end], cache.v[i][:, :, :end])  # (B, H, T, D)
            a = a.transpose(0, 2, 1, 3).reshape(B * T, H * D)
            x = x + self.linear(pre + "self_attn.o_proj", a).reshape(B, T, -1)
            h, _ = L.rmsnorm_forward(x, p[pre + "post_attention_layernorm.weight"], cfg.rms_norm_eps)
            h2 = h.reshape(B * T, -1)
            m, _ = L.swiglu_forward(self.linear(pre + "mlp.gate_proj", h2), self.linear(pre + "mlp.up_proj", h2))
            x = x + self.linear(pre + "mlp.down_proj", m).reshape(B, T, -1)
        cache.length = end
        h, _ = L.rmsnorm_forward(x[:, -1:] if last_only else x, p["model.norm.weight"], cfg.rms_norm_eps)
        return h @ p["lm_head.weight"].T                                              # (B, T | 1, V)


class FloatRunner(Runner):
    """The NumPy model for inference: each block linear's W~ (or W) materialized once."""

    def __init__(self, model):
        weights = {k: v.astype(np.float32) for k, v in model.effective_weights().items()}
        super().__init__(model.config, weights)

    def linear(self, prefix, x):
        return x @ self.params[prefix + ".weight"].T


def sample_next(logits: np.ndarray, rng, temperature=1.0, top_k=None, greedy=False) -> int:
    """One token id from the last position's logits (V,)."""
    if greedy or temperature <= 0:
        return int(np.argmax(logits))
    logits = logits.astype(np.float64) / temperature
    if top_k:
        cutoff = np.sort(logits)[-min(top_k, logits.size)]
        logits = np.where(logits < cutoff, -np.inf, logits)
    probs = L.softmax(logits)
    return int(rng.choice(logits.size, p=probs))


class Session:
    """One sequence and its KV cache, kept across calls: feed(ids) runs only the new tokens (appended to
    the cache), continue_text(n) samples n more, each fed back. What `generate` and a chat are made of.
    When the context is full, the most recent half window is re-read into a fresh cache."""

    def __init__(self, runner: Runner, temperature=1.0, top_k=None, greedy=False, seed=0):
        self.runner, self.temperature, self.top_k, self.greedy = runner, temperature, top_k, greedy
        self.max_len = runner.config.max_position_embeddings
        self.rng = np.random.default_rng(seed)
        self.reset()

    def reset(self):
        """Forget the sequence: an empty cache (the sampler's random state goes on)."""
        self.cache = self.runner.new_cache(1, self.max_len)
        self.ids, self.logits = [], None                  # logits (V,): the next token's, after self.ids

    @property
    def position(self) -> int:
        """Tokens in the KV cache: where the next one goes."""
        return self.cache.length

    def feed(self, ids):
        """Append ids to the sequence, running only them through the model (the cache holds the rest)."""
        ids = [int(i) for i in ids]
        if not ids:
            return
        if self.cache.length + len(ids) > self.max_len:   # context full: the most recent half window, afresh
            keep = (self.ids + ids)[-(self.max_len // 2):]
            self.reset()
            ids = keep
        self.logits = self.runner.forward(np.array([ids], dtype=np.int64), self.cache, last_only=True)[0, -1]
        self.ids += ids

    def continue_text(self, max_new_tokens: int, eos_id=None, on_token=None) -> list[int]:
        """Sample up to max_new_tokens ids after the sequence, each fed back; stops after eos (which is
        returned and passed to on_token, but not fed)."""
        if self.logits is None:
            raise ValueError("feed at least one token before sampling")
        new = []
        for _ in range(max_new_tokens):
            nxt = sample_next(self.logits, self.rng, self.temperature, self.top_k, self.greedy)
            new.append(nxt)
            if on_token is not None:
                on_token(nxt)
            if eos_id is not None and nxt == eos_id:
                break
            self.feed([nxt])
        return new


def generate(runner: Runner, prompt_ids, max_new_tokens=100, temperature=1.0, top_k=None,
             greedy=False, seed=0, eos_id=None, on_token=None) -> list[int]:
    """Prompt ids -> prompt + new ids, with a KV cache (prefill once, then one token per step)."""
    ids = (list(prompt_ids) or [0])[-runner.config.max_position_embeddings:]  # a long prompt keeps its end
    session = Session(runner, temperature, top_k, greedy, seed)
    session.feed(ids)
    return ids + session.continue_text(max_new_tokens, eos_id, on_token)

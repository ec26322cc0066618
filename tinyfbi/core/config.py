"""ModelConfig: the one description of a tinyfbi model, with the paper's presets by name.

Field names follow transformers' LlamaConfig so a checkpoint's config.json is a valid LlamaConfig.
Presets `130m`, `1.3b`, `7b`, `13b` are FBI-LLM's (arXiv 2407.07093, Table 1, LLaMA-2 vocab 32000);
`micro`, `mini`, `tiny` and `20m` are CPU-sized.

    >>> from tinyfbi import ModelConfig
    >>> ModelConfig.from_name("7b").num_params()   # 6.74e9
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .errors import TinyFBIError

# The block linears FBI-LLM binarizes; embeddings, RMSNorms and lm_head stay full precision.
ATTN_PROJ = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_PROJ = ("gate_proj", "up_proj", "down_proj")
# How binarized weights are scaled: FBI's per-input-column alpha/beta (default), and the
# ablations of the reproduction (none, per output row, BitNet b1.58 ternary absmean).
SCALINGS = ("column", "none", "row", "ternary")


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 4096               # a sentencepiece BPE trained on the corpus; 32000 for LLaMA-2's
    hidden_size: int = 256               # model width C
    num_hidden_layers: int = 4           # decoder blocks
    num_attention_heads: int = 4         # query heads; head_dim = hidden_size / heads
    num_key_value_heads: int = 4         # < heads gives grouped-query attention (LLaMA-2 7B uses = heads)
    intermediate_size: int = 512         # SwiGLU hidden width
    max_position_embeddings: int = 256   # longest sequence the RoPE table covers
    rms_norm_eps: float = 1e-5           # LLaMA-2's RMSNorm epsilon
    rope_theta: float = 10000.0          # RoPE base, HF rotate_half convention
    binarized: bool = True               # FBI-Linear in every block linear; False = full-precision teacher
    scaling: str = "column"              # see SCALINGS; only meaningful when binarized
    sign_of_zero: int = 1                # +1: one bit holds it; 0: the authors' torch.sign (released checkpoints)

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "intermediate_size", "max_position_embeddings"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise TinyFBIError(f"ModelConfig.{name} must be a positive integer, got {value!r}")
        for name in ("rms_norm_eps", "rope_theta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise TinyFBIError(f"ModelConfig.{name} must be a positive number, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise TinyFBIError(f"ModelConfig.hidden_size ({self.hidden_size}) must be divisible by "
                               f"num_attention_heads ({self.num_attention_heads})")
        if self.num_attention_heads % self.num_key_value_heads:
            raise TinyFBIError(f"ModelConfig.num_attention_heads ({self.num_attention_heads}) must be "
                               f"divisible by num_key_value_heads ({self.num_key_value_heads})")
        if self.head_dim % 2:
            raise TinyFBIError(f"ModelConfig.hidden_size / num_attention_heads = {self.head_dim} must be "
                               "even for RoPE")
        if not isinstance(self.binarized, bool):
            raise TinyFBIError(f"ModelConfig.binarized must be true or false, got {self.binarized!r}")
        if self.sign_of_zero not in (0, 1) or isinstance(self.sign_of_zero, bool):
            raise TinyFBIError(f"ModelConfig.sign_of_zero must be 0 or 1, got {self.sign_of_zero!r}")
        if self.scaling not in SCALINGS:
            raise TinyFBIError(f"ModelConfig.scaling must be one of {', '.join(SCALINGS)}, got {self.scaling!r}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_name(cls, name: str, **overrides) -> "ModelConfig":
        if name not in PRESETS:
            raise TinyFBIError(f"unknown model size {name!r}; choose one of {', '.join(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(out_features, in_features) of each block linear, keyed by its short name."""
        C, kv = self.hidden_size, self.num_key_value_heads * self.head_dim
        I = self.intermediate_size
        return {"q_proj": (C, C), "k_proj": (kv, C), "v_proj": (kv, C), "o_proj": (C, C),
                "gate_proj": (I, C), "up_proj": (I, C), "down_proj": (C, I)}

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter's name (Hugging Face LLaMA layout) and shape, in a fixed order."""
        C, V = self.hidden_size, self.vocab_size
        shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (V, C)}
        for i in range(self.num_hidden_layers):
            p = f"model.layers.{i}."
            shapes[p + "input_layernorm.weight"] = (C,)
            for short, (out_f, in_f) in self.linear_shapes().items():
                group = "self_attn" if short in ATTN_PROJ else "mlp"
                name = f"{p}{group}.{short}"
                shapes[name + ".weight"] = (out_f, in_f)
                if self.has_scales:
                    shapes[name + ".wscale"] = self.scale_shape(out_f, in_f)
                    shapes[name + ".wbias"] = self.scale_shape(out_f, in_f)
            shapes[p + "post_attention_layernorm.weight"] = (C,)
        shapes["model.norm.weight"] = (C,)
        shapes["lm_head.weight"] = (V, C)
        return shapes

    @property
    def has_scales(self) -> bool:
        """Binarized linears carry learnable wscale/wbias (FBI `column`, or the `row` ablation)."""
        return self.binarized and self.scaling in ("column", "row")

    def scale_shape(self, out_f: int, in_f: int) -> tuple[int, int]:
        """alpha/beta run along the input columns (1, in) for FBI; along rows (out, 1) for `row`."""
        return (out_f, 1) if self.scaling == "row" else (1, in_f)

    def binarized_weight_names(self) -> list[str]:
        return [n for n in self.param_shapes() if n.endswith(".weight") and
                n.rsplit(".", 2)[-2] in ATTN_PROJ + MLP_PROJ] if self.binarized else []

    def num_params(self) -> int:
        total = 0
        for shape in self.param_shapes().values():
            n = 1
            for d in shape:
                n *= d
            total += n
        return total


PRESETS: dict[str, ModelConfig] = {
    # about 0.6M parameters at vocabulary 4096 (0.24M at 1024, the reproduction's students), mostly embedding and head
    "micro": ModelConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                         intermediate_size=192),
    # about 1.9M parameters at vocabulary 4096 (1.12M at 1024: the reproduction's larger student, claim e)
    "mini": ModelConfig(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                        intermediate_size=384),
    # about 4.7M parameters: trains on a laptop CPU in minutes
    "tiny": ModelConfig(),
    # about 20M parameters: the second benchmark point of the NumPy-vs-torch training speed
    "20m": ModelConfig(hidden_size=512, num_hidden_layers=6, num_attention_heads=8,
                       num_key_value_heads=8, intermediate_size=1024, max_position_embeddings=512),
    # FBI-LLM's configs (arXiv 2407.07093 Table 1), LLaMA-2 tokenizer, sequence length 2048
    "130m": ModelConfig(vocab_size=32000, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                        num_key_value_heads=12, intermediate_size=2048, max_position_embeddings=2048),
    "1.3b": ModelConfig(vocab_size=32000, hidden_size=2048, num_hidden_layers=24, num_attention_heads=32,
                        num_key_value_heads=32, intermediate_size=5632, max_position_embeddings=2048),
    "7b": ModelConfig(vocab_size=32000, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32, intermediate_size=11008, max_position_embeddings=2048),
    "13b": ModelConfig(vocab_size=32000, hidden_size=5120, num_hidden_layers=40, num_attention_heads=40,
                       num_key_value_heads=40, intermediate_size=13824, max_position_embeddings=2048),
}

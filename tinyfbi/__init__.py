"""tinyfbi: fully binarized LLaMA-style language models (FBI-LLM, arXiv 2407.07093) from scratch.

    from tinyfbi import ModelConfig, Model
    model = Model(ModelConfig.from_name("tiny"), seed=0)
"""
from .config import PRESETS, ModelConfig
from .errors import TinyFBIError
from .model import Model

__all__ = ["ModelConfig", "Model", "PRESETS", "TinyFBIError"]

"""tinyfbi: fully binarized LLaMA-style language models (FBI-LLM, arXiv 2407.07093) from scratch.

    from tinyfbi import ModelConfig, Model, load_model, save_model
    model = Model(ModelConfig.from_name("tiny"), seed=0)
    save_model(model, "runs/demo"); model = load_model("runs/demo")

The package, by concern (imports run one way, top to bottom; tests/test_architecture.py holds it):
    core/           NumPy only, no file I/O: config, binarize, layers, model, optim, compare
    formats/        the one atomic write; checkpoints, run state, HF folders in and out, .fbipack
    corpus/         sources, tokenizers, token files, batches
    runtime/        KV-cache inference, packing, the packed 1-bit runner (kernels/ behind it)
    training/       run planning, the one training loop, the NumPy learner, teacher cache
    torch_backend/  the torch model and learner, distributed, the --dry-run planner
    evaluation/     perplexity, lm-eval model
    train.py generate.py pack.py ...  the command-line entry points (thin)
"""
from .core.config import PRESETS, ModelConfig
from .core.errors import TinyFBIError
from .core.model import Model
from .formats.checkpoint import load_model, save_model

__all__ = ["ModelConfig", "Model", "PRESETS", "TinyFBIError", "load_model", "save_model"]

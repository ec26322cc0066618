"""tinyfbi: fully binarized LLaMA-style language models (FBI-LLM, arXiv 2407.07093) from scratch.

    from tinyfbi import ModelConfig, Model, load_model, save_model
    model = Model(ModelConfig.from_name("tiny"), seed=0)
    save_model(model, "runs/demo"); model = load_model("runs/demo")

The package, by concern (imports run one way, top to bottom; tests/test_architecture.py holds it):
    core/           NumPy only, no file I/O: config, binarize, layers, model, optim, compare
    formats/        the one atomic write; checkpoints (save and load), config.json, run state, HF folders
                    in and out, .fbipack
    corpus/         sources, tokenizers, token files; streams -> shard writer -> shards; batches, their order
    runtime/        KV-cache inference, building a .fbipack, the packed 1-bit runner (kernels/ behind it)
    training/       run planning, the one training loop, the NumPy backend, teacher cache
    torch_backend/  the torch model and learner, distributed, the --dry-run planner
    evaluation/     perplexity, lm-eval model
    reproduction/   the claims' plan, statistics and report (`python -m tinyfbi.reproduce`)
    bench/          every benchmark, one timing helper, one machine description
    train.py generate.py pack.py ...  the command-line entry points (thin)
"""
from .core.config import PRESETS, ModelConfig
from .core.errors import TinyFBIError
from .core.model import Model
from .formats.checkpoint import load_model, save_model

__all__ = ["ModelConfig", "Model", "PRESETS", "TinyFBIError", "load_model", "save_model"]

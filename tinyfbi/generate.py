"""`python -m tinyfbi.generate`: sample text from a checkpoint or a packed 1-bit file, with a KV cache.

    python -m tinyfbi.generate --ckpt runs/tiny-ad --prompt "ROMEO:" --max-new-tokens 80
    python -m tinyfbi.generate --ckpt tiny.fbipack --prompt "ROMEO:" --greedy     # bit kernels
    python -m tinyfbi.generate --random-init 7b --packed --bench                   # 7B-shaped speed
"""
from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

from .cli import CLIParser, run_cli
from .core.config import ModelConfig
from .core.errors import TinyFBIError
from .core.model import Model
from .corpus.tokenizers import load_tokenizer
from .formats.loading import load_model
from .formats.run_checkpoint import resolve_checkpoint
from .runtime.inference import FloatRunner, generate


def build_parser():
    ap = CLIParser("python -m tinyfbi.generate", __doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", help="a checkpoint folder, a run folder (runs/NAME), or a packed file")
    ap.add_argument("--prompt", default="", help="text to continue")
    ap.add_argument("--max-new-tokens", type=int, default=100)
    ap.add_argument("--temperature", type=float, default=0.8, help="softmax temperature (0 = greedy)")
    ap.add_argument("--top-k", type=int, default=40, help="sample among the K most likely tokens (0 = all)")
    ap.add_argument("--greedy", action="store_true", help="always take the most likely token")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kind", choices=["exact", "int8"], default="exact",
                    help="packed files: exact float kernels, or int8 activations (faster, ~1%% error)")
    ap.add_argument("--random-init", metavar="SIZE", help="no checkpoint: a randomly initialized model of a preset")
    ap.add_argument("--packed", action="store_true", help="with --random-init: build it packed (1-bit kernels)")
    ap.add_argument("--bench", action="store_true",
                    help="print one JSON line with prefill/decode tokens/s and peak memory instead of text")
    ap.add_argument("--threads", type=int, default=None, help="numba threads for the kernels (default: all cores)")
    return ap


def load_runner(path, kind="exact"):
    """(runner, tokenizer) for a packed file, a checkpoint folder or a run folder."""
    if Path(path).is_file():
        from .runtime.packed import (
            load_packed,  # compiles the Numba kernels: only for packed files
        )
        return load_packed(path, kind)
    ckpt = resolve_checkpoint(path)
    return FloatRunner(load_model(ckpt, dtype=np.float32)), load_tokenizer(ckpt)


def random_runner(size, packed, kind, seed):
    config = ModelConfig.from_name(size)
    if packed:
        from .runtime.packed import (
            PackedRunner,  # compiles the Numba kernels: only for --packed
        )
        return PackedRunner.random(config, seed, kind)
    return FloatRunner(Model(config, seed=seed))


def bench(runner, prompt_len, new_tokens, seed):
    """Prefill a random prompt, decode greedily; one JSON line with speed and peak RSS."""
    rng = np.random.default_rng(seed)
    prompt = rng.integers(0, runner.config.vocab_size, (1, prompt_len))
    cache = runner.new_cache(1, prompt_len + new_tokens + 1)
    runner.forward(prompt[:, :2], runner.new_cache(1, 4))          # compile / warm up the kernels
    t0 = time.perf_counter()
    logits = runner.forward(prompt, cache)[0, -1]
    t1 = time.perf_counter()
    for _ in range(new_tokens):
        logits = runner.forward(np.array([[int(np.argmax(logits))]]), cache)[0, -1]
    t2 = time.perf_counter()
    row = {"params": runner.config.num_params(), "layers": runner.config.num_hidden_layers,
           "hidden": runner.config.hidden_size, "runtime": type(runner).__name__,
           "kind": getattr(runner, "kind", "float32"), "prompt_tokens": prompt_len,
           "prefill_tok_s": round(prompt_len / (t1 - t0), 2), "decode_tokens": new_tokens,
           "decode_tok_s": round(new_tokens / (t2 - t1), 2),
           "weight_mb": round(runner.weight_bytes() / 2**20, 1) if hasattr(runner, "weight_bytes") else None,
           "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    print(json.dumps(row))
    return row


def main(argv=None):
    run_cli(sample, build_parser().parse_args(argv))


def sample(args):
    if bool(args.ckpt) == bool(args.random_init):
        raise TinyFBIError("give --ckpt (a checkpoint folder, runs/NAME or a .fbipack file) or --random-init SIZE")
    if args.max_new_tokens < 0 or args.top_k < 0 or args.temperature < 0:
        raise TinyFBIError("--max-new-tokens, --top-k and --temperature must be >= 0")
    if args.threads is not None:
        import numba
        numba.set_num_threads(args.threads)
    if args.random_init:
        runner, tokenizer = random_runner(args.random_init, args.packed, args.kind, args.seed), None
    else:
        runner, tokenizer = load_runner(args.ckpt, args.kind)
    if args.bench:
        bench(runner, 16, min(args.max_new_tokens, 16), args.seed)
        return
    if tokenizer is None:
        raise TinyFBIError("this model has no tokenizer: use --bench, or a checkpoint with one")
    prompt = tokenizer.encode(args.prompt) if args.prompt else []
    if not prompt:  # nothing to condition on: start from BOS, or a newline for byte-level models
        prompt = [tokenizer.bos_id] if tokenizer.bos_id is not None else tokenizer.encode("\n")
    sys.stdout.write(args.prompt)
    ids = generate(runner, prompt, args.max_new_tokens, args.temperature, args.top_k or None,
                   args.greedy, args.seed, eos_id=tokenizer.eos_id)
    # decode the whole continuation at once: a multi-byte character may span tokens
    print(tokenizer.decode(ids[len(prompt):]))


if __name__ == "__main__":
    main()

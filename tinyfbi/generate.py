"""`python -m tinyfbi.generate`: sample text from a checkpoint or a packed 1-bit file, with a KV cache.

    python -m tinyfbi.generate --ckpt runs/tiny-ad --prompt "ROMEO:" --max-new-tokens 80
    python -m tinyfbi.generate --ckpt tiny.fbipack --prompt "ROMEO:" --greedy     # bit kernels
    python -m tinyfbi.generate --random-init 7b --packed --bench --kind int8       # 7B-shaped speed
    python -m tinyfbi.generate --random-init 1.3b --packed --bench --json --head int8
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from .bench.end_to_end import format_report, run_benchmark
from .cli import CLIParser, run_cli
from .core.config import ModelConfig
from .core.errors import TinyFBIError
from .core.model import Model
from .corpus.tokenizers import load_tokenizer
from .formats.checkpoint import load_model
from .formats.run_checkpoint import resolve_checkpoint
from .runtime.inference import FloatRunner, generate


def build_parser():
    ap = CLIParser("python -m tinyfbi.generate", __doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", help="a checkpoint folder, a run folder (runs/NAME), or a packed file")
    ap.add_argument("--prompt", default="", help="text to continue")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default 100; 32 with --bench")
    ap.add_argument("--temperature", type=float, default=0.8, help="softmax temperature (0 = greedy)")
    ap.add_argument("--top-k", type=int, default=40, help="sample among the K most likely tokens (0 = all)")
    ap.add_argument("--greedy", action="store_true", help="always take the most likely token")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kind", choices=["exact", "int8"], default="exact",
                    help="packed files: exact float kernels, or int8 activations (faster, ~1%% error)")
    ap.add_argument("--random-init", metavar="SIZE", help="no checkpoint: a randomly initialized model of a preset")
    ap.add_argument("--packed", action="store_true", help="with --random-init: build it packed (1-bit kernels)")
    ap.add_argument("--head", choices=["f16", "int8", "f32"], default="f16",
                    help="packed: lm_head storage (fp16 kernel, int8 per row, or float32 BLAS)")
    ap.add_argument("--kv", choices=["auto", "f16", "f32"], default="auto",
                    help="packed: KV cache storage (auto: fp16 with --kind int8, float32 with exact)")
    ap.add_argument("--bench", action="store_true",
                    help="warm every kernel, then report prefill and decode tokens/s, a per-part breakdown, "
                         "peak memory and the instruction set, instead of sampling text")
    ap.add_argument("--prompt-tokens", type=int, default=128, help="--bench: random prompt length")
    ap.add_argument("--json", action="store_true", help="--bench: one JSON object instead of text")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for the kernels and NumPy's BLAS (default: all cores)")
    return ap


def load_runner(path, kind="exact", head="f16", kv="auto"):
    """(runner, tokenizer) for a packed file, a checkpoint folder or a run folder."""
    if Path(path).is_file():
        from .runtime.packed_runner import (
            load_packed,  # compiles the Numba kernels: only for packed files
        )
        return load_packed(path, kind, head, kv)
    ckpt = resolve_checkpoint(path)
    return FloatRunner(load_model(ckpt, dtype=np.float32)), load_tokenizer(ckpt)


def random_runner(size, packed, kind, seed, head="f16", kv="auto"):
    config = ModelConfig.from_name(size)
    if packed:
        from .runtime.packed_runner import (
            PackedRunner,  # compiles the Numba kernels: only for --packed
        )
        return PackedRunner.random(config, seed, kind, head, kv)
    return FloatRunner(Model(config, seed=seed))


def main(argv=None):
    run_cli(sample, build_parser().parse_args(argv))


def sample(args):
    if bool(args.ckpt) == bool(args.random_init):
        raise TinyFBIError("give --ckpt (a checkpoint folder, runs/NAME or a .fbipack file) or --random-init SIZE")
    new_tokens = args.max_new_tokens if args.max_new_tokens is not None else (32 if args.bench else 100)
    if new_tokens < 0 or args.top_k < 0 or args.temperature < 0:
        raise TinyFBIError("--max-new-tokens, --top-k and --temperature must be >= 0")
    if args.threads is not None:  # the kernels' threads and NumPy's OpenBLAS threads (prefill, f32 head)
        from kernels.threads import set_threads
        set_threads(args.threads)
    if args.random_init:
        runner, tokenizer = random_runner(args.random_init, args.packed, args.kind, args.seed, args.head, args.kv), None
    else:
        runner, tokenizer = load_runner(args.ckpt, args.kind, args.head, args.kv)
    if args.bench:
        try:
            row = run_benchmark(runner, args.prompt_tokens, new_tokens, args.seed)
        except ValueError as e:
            raise TinyFBIError(str(e)) from None
        print(json.dumps(row) if args.json else format_report(row))
        return
    if tokenizer is None:
        raise TinyFBIError("this model has no tokenizer: use --bench, or a checkpoint with one")
    prompt = tokenizer.encode(args.prompt) if args.prompt else []
    if not prompt:  # nothing to condition on: start from BOS, or a newline for byte-level models
        prompt = [tokenizer.bos_id] if tokenizer.bos_id is not None else tokenizer.encode("\n")
    sys.stdout.write(args.prompt)
    ids = generate(runner, prompt, new_tokens, args.temperature, args.top_k or None,
                   args.greedy, args.seed, eos_id=tokenizer.eos_id)
    # decode the whole continuation at once: a multi-byte character may span tokens
    print(tokenizer.decode(ids[len(prompt):]))


if __name__ == "__main__":
    main()

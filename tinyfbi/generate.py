"""`python -m tinyfbi.generate`: sample text from a checkpoint, with a KV cache.

    python -m tinyfbi.generate --ckpt runs/tiny-ad --prompt "ROMEO:" --max-new-tokens 80
    python -m tinyfbi.generate --ckpt runs/tiny-ad --prompt "ROMEO:" --greedy
"""
from __future__ import annotations

import argparse
import sys

from .errors import CLIParser, TinyFBIError


def build_parser():
    ap = CLIParser(prog="python -m tinyfbi.generate", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    ap.add_argument("--ckpt", help="a checkpoint folder, a run folder (runs/NAME), or a packed file")
    ap.add_argument("--prompt", default="", help="text to continue")
    ap.add_argument("--max-new-tokens", type=int, default=100)
    ap.add_argument("--temperature", type=float, default=0.8, help="softmax temperature (0 = greedy)")
    ap.add_argument("--top-k", type=int, default=40, help="sample among the K most likely tokens (0 = all)")
    ap.add_argument("--greedy", action="store_true", help="always take the most likely token")
    ap.add_argument("--seed", type=int, default=0)
    return ap


def load_runner(path):
    """(runner, tokenizer) for a checkpoint or run folder."""
    from .inference import FloatRunner
    from .model import Model
    from .run_state import resolve_checkpoint
    from .tokenizers import load_tokenizer
    ckpt = resolve_checkpoint(path)
    return FloatRunner(Model.load(ckpt)), load_tokenizer(ckpt)


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        if not args.ckpt:
            raise TinyFBIError("--ckpt is required: a checkpoint folder or runs/NAME")
        if args.max_new_tokens < 0 or args.top_k < 0 or args.temperature < 0:
            raise TinyFBIError("--max-new-tokens, --top-k and --temperature must be >= 0")
        from .inference import generate
        runner, tokenizer = load_runner(args.ckpt)
        prompt = tokenizer.encode(args.prompt) if args.prompt else []
        if not prompt:  # nothing to condition on: start from BOS, or a newline for byte-level models
            prompt = [tokenizer.bos_id] if tokenizer.bos_id is not None else tokenizer.encode("\n")
        sys.stdout.write(args.prompt)
        ids = generate(runner, prompt, args.max_new_tokens, args.temperature, args.top_k or None,
                       args.greedy, args.seed, eos_id=tokenizer.eos_id)
        # decode the whole continuation at once: a multi-byte character may span tokens
        print(tokenizer.decode(ids[len(prompt):]))
    except TinyFBIError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

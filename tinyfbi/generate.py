"""`python -m tinyfbi.generate`: sample text from a checkpoint or a packed 1-bit file, with a KV cache.

    python -m tinyfbi.generate --ckpt runs/tiny-ad --prompt "ROMEO:" --max-new-tokens 80
    python -m tinyfbi.generate --ckpt tiny.fbipack --prompt "ROMEO:" --greedy     # bit kernels
    python -m tinyfbi.generate --ckpt LiqunMa/FBI-LLM_1.3B --chat                  # from the HF cache, packed once
    python -m tinyfbi.generate --random-init 7b --packed --bench --kind int8       # 7B-shaped speed
    python -m tinyfbi.generate --random-init 1.3b --packed --bench --json --head int8
"""
from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import numpy as np

from .bench.end_to_end import format_report, run_benchmark
from .bench.machine import seconds_since_start
from .cli import CLIParser, run_cli
from .core.config import ModelConfig
from .core.errors import TinyFBIError
from .core.model import Model
from .corpus.tokenizers import load_tokenizer
from .formats.checkpoint import load_model
from .formats.hf_hub import cached_snapshot, is_hub_name
from .formats.run_checkpoint import resolve_checkpoint
from .runtime.build_fbipack import CACHE_ENV, packed_once
from .runtime.inference import FloatRunner, Session, generate


def build_parser():
    ap = CLIParser("python -m tinyfbi.generate", __doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", help="a checkpoint folder, a run folder (runs/NAME), a packed .fbipack file, or a "
                    "Hugging Face name (owner/name, e.g. LiqunMa/FBI-LLM_1.3B) already in the local Hugging Face "
                    f"cache (HF_HUB_CACHE): packed on first use into ${CACHE_ENV} (default ~/.cache/tinyfbi), "
                    "then reused; nothing is downloaded")
    ap.add_argument("--prompt", default="", help="text to continue (with --chat: the first turn)")
    ap.add_argument("--chat", action="store_true",
                    help="interactive: read a line from stdin, stream its continuation to stdout token by token, "
                         "read the next line, and so on. The KV cache is kept across turns: each new line is "
                         "appended to the text (after a newline) and only its tokens run through the model. An "
                         "empty line continues the text where it stopped; /reset starts over with an empty cache; "
                         "end of input (Ctrl-D) quits")
    ap.add_argument("--verbose", action="store_true", help="--chat: after each turn, print the KV cache's length "
                    "(tokens held) to stderr")
    ap.add_argument("--max-new-tokens", type=int, default=None,
                    help="default 100 (per turn with --chat); 32 with --bench")
    ap.add_argument("--temperature", type=float, default=0.8, help="softmax temperature (0 = greedy)")
    ap.add_argument("--top-k", type=int, default=40, help="sample among the K most likely tokens (0 = all)")
    ap.add_argument("--greedy", action="store_true", help="always take the most likely token")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kind", choices=["exact", "int8"], default="exact",
                    help="packed files: exact float kernels, or int8 activations (faster, ~1%% error)")
    ap.add_argument("--random-init", metavar="SIZE", help="no checkpoint: a randomly initialized model of a preset")
    ap.add_argument("--packed", action="store_true", help="with --random-init: run it packed (1-bit kernels), as a file is run: the model "
                    f"is drawn once into ${CACHE_ENV} as a .fbipack (1.3 GB at 7B) and reused after")
    ap.add_argument("--head", choices=["f16", "int8", "f32"], default="f16",
                    help="packed: lm_head storage (fp16 kernel, int8 per row, or float32 BLAS)")
    ap.add_argument("--kv", choices=["auto", "f16", "f32"], default="auto",
                    help="packed: KV cache storage (auto: fp16 with --kind int8, float32 with exact)")
    ap.add_argument("--layout", choices=["auto", "blocked", "nib4"], default="auto",
                    help="packed int8: the sign layout decode reads. blocked: v13 with AVX-512 VNNI (the fastest "
                         "there), v5 with AVX2 alone; nib4: v9 (the fastest with AVX2 alone). auto: this CPU's "
                         "fastest; a file that stores the other layout is rewritten once into the cache "
                         "($TINYFBI_CACHE, default ~/.cache/tinyfbi) and run from there. Naming the file's own "
                         "layout runs it as it is; naming the other builds it at load (both copies held)")
    ap.add_argument("--load", choices=["read", "map"], default="read",
                    help="packed files: read the signs and head into huge-page memory (faster decode) and the "
                         "embedding a row at a time as tokens need it, or map the whole file (nothing read up "
                         "front, pages shared between processes)")
    ap.add_argument("--bench", action="store_true",
                    help="warm every kernel, then report prefill and decode tokens/s, a per-part breakdown, "
                         "peak memory and the instruction set, instead of sampling text")
    ap.add_argument("--prompt-tokens", type=int, default=128, help="--bench: random prompt length")
    ap.add_argument("--json", action="store_true", help="--bench: one JSON object instead of text")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for the kernels and NumPy's BLAS (default: all cores)")
    return ap


def load_runner(path, kind="exact", head="f16", kv="auto", layout="auto", load="read"):
    """(runner, tokenizer) for a packed file, a checkpoint folder, a run folder, or a Hugging Face name
    in the local cache (packed on first use)."""
    if is_hub_name(str(path)):
        folder, commit = cached_snapshot(str(path))
        path = packed_once(folder, f"{str(path).replace('/', '--')}-{commit}")
    if Path(path).is_file():
        from .runtime.packed_runner import (
            load_packed,  # compiles the Numba kernels: only for packed files
        )
        return load_packed(path, kind, head, kv, layout, load)
    ckpt = resolve_checkpoint(path)
    return FloatRunner(load_model(ckpt, dtype=np.float32)), load_tokenizer(ckpt)


def random_runner(size, packed, kind, seed, head="f16", kv="auto", layout="auto", load="read"):
    config = ModelConfig.from_name(size)
    if packed:
        from .runtime.packed_runner import (
            load_random,  # compiles the Numba kernels: only for --packed
        )
        return load_random(config, seed, kind, head, kv, layout, load)
    return FloatRunner(Model(config, seed=seed))


def main(argv=None):
    run_cli(sample, build_parser().parse_args(argv))


def sample(args):
    if bool(args.ckpt) == bool(args.random_init):
        raise TinyFBIError("give --ckpt (a checkpoint folder, runs/NAME, a .fbipack file or a Hugging Face name) "
                           "or --random-init SIZE")
    new_tokens = args.max_new_tokens if args.max_new_tokens is not None else (32 if args.bench else 100)
    if new_tokens < 0 or args.top_k < 0 or args.temperature < 0:
        raise TinyFBIError("--max-new-tokens, --top-k and --temperature must be >= 0")
    if args.threads is not None:  # the kernels' threads and NumPy's OpenBLAS threads (prefill, f32 head)
        from kernels.threads import set_threads
        set_threads(args.threads)
    if args.random_init:
        runner = random_runner(args.random_init, args.packed, args.kind, args.seed, args.head, args.kv, args.layout,
                               args.load)
        tokenizer = None
    else:
        runner, tokenizer = load_runner(args.ckpt, args.kind, args.head, args.kv, args.layout, args.load)
    if args.bench:
        try:
            row = run_benchmark(runner, args.prompt_tokens, new_tokens, args.seed, load_s=seconds_since_start())
        except ValueError as e:
            raise TinyFBIError(str(e)) from None
        print(json.dumps(row) if args.json else format_report(row))
        return
    if tokenizer is None:
        raise TinyFBIError("this model has no tokenizer: use --bench, or a checkpoint with one")
    if args.chat:
        session = Session(runner, args.temperature, args.top_k or None, args.greedy, args.seed)
        first = [args.prompt] if args.prompt else []
        chat(session, tokenizer, itertools.chain(first, typed_lines(sys.stdin)), sys.stdout, new_tokens,
             sys.stderr if args.verbose else None)
        return
    prompt = tokenizer.encode(args.prompt) if args.prompt else []
    prompt = prompt or start_ids(tokenizer)
    sys.stdout.write(args.prompt)
    ids = generate(runner, prompt, new_tokens, args.temperature, args.top_k or None,
                   args.greedy, args.seed, eos_id=tokenizer.eos_id)
    # decode the whole continuation at once: a multi-byte character may span tokens
    print(tokenizer.decode(ids[len(prompt):]))


def start_ids(tokenizer) -> list[int]:
    """Nothing to condition on: start from BOS, or a newline for byte-level models."""
    return [tokenizer.bos_id] if tokenizer.bos_id is not None else tokenizer.encode("\n")


def chat(session: Session, tokenizer, lines, out, max_new_tokens: int, log=None):
    """The --chat loop: each line of `lines` is appended to the session (only its tokens run through
    the model), then its continuation is written to `out` token by token. Empty line: continue;
    /reset: an empty cache; the end of `lines`: return. log: where to report the cache's length."""
    for line in lines:
        text = line.rstrip("\r\n")
        if text == "/reset":
            session.reset()
        else:
            if not session.ids:                                  # the first turn: as a --prompt
                session.feed(tokenizer.encode(text) if text else start_ids(tokenizer))
            elif text:                                           # a later one: on a new line
                session.feed(tokenizer.encode("\n" + text))
            stream_continuation(session, tokenizer, out, max_new_tokens)
        if log is not None:
            print(f"[kv cache: {session.position} tokens]", file=log, flush=True)


def typed_lines(stream, prompt="> "):
    """The lines of `stream`, a prompt on stderr before each when a person types them."""
    while True:
        if stream.isatty():
            sys.stderr.write(prompt)
            sys.stderr.flush()
        line = stream.readline()
        if not line:
            return
        yield line


def stream_continuation(session: Session, tokenizer, out, max_new_tokens: int):
    """Sample the continuation, writing each token's text as it comes. Text is decoded after the
    sequence's last token (so a word keeps its leading space) and held back while it ends in a cut
    multi-byte character."""
    anchor = session.ids[-1:]
    before, shown = tokenizer.decode(anchor), 0
    new = []

    def show(token):
        nonlocal shown
        new.append(token)
        text = tokenizer.decode(anchor + new)[len(before):]
        if not text.endswith("\ufffd"):
            out.write(text[shown:])
            out.flush()
            shown = len(text)

    session.continue_text(max_new_tokens, tokenizer.eos_id, show)
    out.write(tokenizer.decode(anchor + new)[len(before):][shown:] + "\n")   # what was held back, if anything
    out.flush()


if __name__ == "__main__":
    main()

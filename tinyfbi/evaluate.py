"""`python -m tinyfbi.evaluate`: perplexity the way FBI-LLM's Table 2 measures it.

GPTQ-style, as the authors' eval.py (after SparseGPT): a test split is joined into one text,
tokenized once with a BOS in front (if the tokenizer has one), and cut into non-overlapping
windows of --seq-len (2048) tokens; each window predicts its tokens 2..L from those before them,
and ppl = exp(mean NLL over all predicted tokens). The tail shorter than a window is dropped.
--stride S < L slides the window instead: after the first window each token is predicted once,
with at least L - S tokens of context (HF's perplexity recipe; usually lower than the paper's).

  wikitext2  Salesforce/wikitext, wikitext-2-raw-v1, test split, rows joined with "\\n\\n"
  ptb        ptb_text_only penn_treebank, test split, sentences joined with " "; datasets >= 4 no
             longer serves it: `ptb:PATH` reads a local ptb.test.txt the same way
  c4         allenai/c4 en/c4-validation.00000-of-00008.json.gz, first 1100 documents joined
             with " ", cut to 256 windows (256 x seq_len tokens), as GPTQ
  PATH       a local UTF-8 text file (no hub needed)

    python -m tinyfbi.evaluate --ckpt runs/tiny-ad --ppl README.md --seq-len 256
    python -m tinyfbi.evaluate --ckpt FBI-LLM_1.3B --ppl wikitext2,ptb,c4 --backend torch --device cuda --json

--backend numpy (default) runs tinyfbi's NumPy inference path (each W~ materialized once);
--backend torch runs the torch model (tinyfbi.torch_backend), much faster for the paper's sizes (--device cuda).
A packed file (`python -m tinyfbi.pack`) runs on the 1-bit runtime, so each of its speed-ups can be
priced in perplexity:

    python -m tinyfbi.evaluate --ckpt tiny.fbipack --ppl data.txt --kind int8 --head int8
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .cli import CLIParser, run_cli
from .core.errors import TinyFBIError
from .corpus.tokenizers import load_tokenizer
from .evaluation.perplexity import load_nll_fn, perplexity, runner_nll_fn
from .evaluation.texts import eval_text, eval_tokens
from .formats.hf_folder import config_from_hf
from .formats.run_checkpoint import resolve_checkpoint


def build_parser():
    ap = CLIParser("python -m tinyfbi.evaluate", __doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", help="tinyfbi checkpoint, run folder, or HF LLaMA folder (released FBI-LLM)")
    ap.add_argument("--ppl", help="comma-separated: wikitext2, ptb (or ptb:PATH to ptb.test.txt), c4, or paths to text files")
    ap.add_argument("--seq-len", type=int, default=2048, help="window length (clamped to the model's)")
    ap.add_argument("--stride", type=int, default=None, help="window step (default: --seq-len, no overlap)")
    ap.add_argument("--max-windows", type=int, default=None, help="evaluate at most N windows per text")
    ap.add_argument("--batch-size", type=int, default=1, help="windows per forward pass")
    ap.add_argument("--backend", choices=("numpy", "torch"), default="numpy")
    ap.add_argument("--device", default="cpu", help="torch device for --backend torch")
    ap.add_argument("--tokenizer", default=None, help="tokenizer file (default: the checkpoint's)")
    ap.add_argument("--kind", choices=("exact", "int8"), default=None,
                    help="a packed .fbipack --ckpt: exact float kernels (default) or int8 activations")
    ap.add_argument("--head", choices=("f16", "int8", "f32"), default=None,
                    help="a packed .fbipack --ckpt: lm_head as fp16 (default), int8 per row, or float32")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    return ap


def check_args(args):
    if not args.ckpt:
        raise TinyFBIError("--ckpt is required: a checkpoint folder, runs/NAME or an HF LLaMA folder")
    if not args.ppl:
        raise TinyFBIError("--ppl is required: wikitext2, ptb, c4 or a text file (comma-separated)")
    for flag in ("seq_len", "stride", "max_windows", "batch_size"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            raise TinyFBIError(f"--{flag.replace('_', '-')} must be a positive integer, got {value}")
    if args.stride is not None and args.stride > args.seq_len:
        raise TinyFBIError(f"--stride {args.stride} > --seq-len {args.seq_len} would skip tokens")


def note(msg):
    print(f"note: {msg}", file=sys.stderr)


def main(argv=None):
    run_cli(evaluate, build_parser().parse_args(argv))


def load_packed_runner(args):
    """(runner, config, tokenizer) for a .fbipack --ckpt, on the 1-bit runtime."""
    if args.backend != "numpy":
        raise TinyFBIError("a packed .fbipack file runs on the 1-bit runtime: drop --backend torch")
    from .runtime.packed_runner import load_packed  # compiles the Numba kernels: only for packed files
    runner, tokenizer = load_packed(args.ckpt, args.kind or "exact", args.head or "f16")
    if args.tokenizer:
        tokenizer = load_tokenizer(args.tokenizer)
    if tokenizer is None:
        raise TinyFBIError(f"{args.ckpt} holds no tokenizer: pass --tokenizer PATH")
    return runner, runner.config, tokenizer


def load_checkpoint(args):
    """(checkpoint path, config, tokenizer) for a checkpoint, run or HF folder."""
    if args.kind or args.head:
        raise TinyFBIError("--kind and --head apply to a packed .fbipack --ckpt (python -m tinyfbi.pack)")
    ckpt = resolve_checkpoint(args.ckpt)
    config = config_from_hf(ckpt)
    try:
        tokenizer = load_tokenizer(args.tokenizer or ckpt)
    except TinyFBIError as e:
        if args.tokenizer:
            raise
        raise TinyFBIError(f"{e}; pass --tokenizer PATH (LLaMA-2's tokenizer.model for FBI-LLM)") from None
    return ckpt, config, tokenizer


def evaluate(args):
    check_args(args)
    packed = Path(args.ckpt).is_file()
    if packed:
        runner, config, tokenizer = load_packed_runner(args)
    else:
        ckpt, config, tokenizer = load_checkpoint(args)
    if tokenizer.vocab_size > config.vocab_size:
        raise TinyFBIError(f"tokenizer has {tokenizer.vocab_size} tokens but the model only {config.vocab_size}")
    seq_len = args.seq_len
    if seq_len > config.max_position_embeddings:
        seq_len = config.max_position_embeddings
        note(f"--seq-len {args.seq_len} clamped to the model's max_position_embeddings {seq_len}")
    stride = min(args.stride or seq_len, seq_len)
    names = [n.strip() for n in args.ppl.split(",") if n.strip()]
    tokens = {}
    for name in names:  # every text before the model: a missing dataset fails in seconds
        tokens[name] = eval_tokens(name, eval_text(name), tokenizer, seq_len)
        if len(tokens[name]) < 2:
            raise TinyFBIError(f"--ppl {name}: fewer than 2 tokens")
    nll_fn = runner_nll_fn(runner) if packed else load_nll_fn(ckpt, args.backend, args.device)
    results = {}
    for name in names:
        L = seq_len
        if len(tokens[name]) < L:
            L = len(tokens[name])
            note(f"{name} has only {L} tokens: one window of {L}")
        results[name] = perplexity(nll_fn, tokens[name], L, min(stride, L), args.max_windows,
                                   args.batch_size)
    if args.json:
        runtime = {"backend": "packed", **runner.describe()} if packed else {"backend": args.backend}
        print(json.dumps({"ckpt": str(args.ckpt), **runtime, "results": results}))
    else:
        for name, r in results.items():
            print(f"{name}: ppl {r['ppl']:.3f} (nll {r['nll']:.4f}, {r['tokens']} tokens in "
                  f"{r['windows']} windows of {r['seq_len']}, stride {r['stride']})")


if __name__ == "__main__":
    main()

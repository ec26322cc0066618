"""`python -m tinyfbi.evaluate`: perplexity the way FBI-LLM's Table 2 measures it.

GPTQ-style, as the authors' eval.py (after SparseGPT): a test split is joined into one text,
tokenized once with a BOS in front (if the tokenizer has one), and cut into non-overlapping
windows of --seq-len (2048) tokens; each window predicts its tokens 2..L from those before them,
and ppl = exp(mean NLL over all predicted tokens). The tail shorter than a window is dropped.
--stride S < L slides the window instead: after the first window each token is predicted once,
with at least L - S tokens of context (HF's perplexity recipe; usually lower than the paper's).

  wikitext2  Salesforce/wikitext, wikitext-2-raw-v1, test split, rows joined with "\\n\\n"
  c4         allenai/c4 en/c4-validation.00000-of-00008.json.gz, first 1100 documents joined
             with " ", cut to 256 windows (256 x seq_len tokens), as GPTQ
  PATH       a local UTF-8 text file (no hub needed)

    python -m tinyfbi.evaluate --ckpt runs/tiny-ad --ppl README.md --seq-len 256
    python -m tinyfbi.evaluate --ckpt FBI-LLM_1.3B --ppl wikitext2,c4 --backend torch --device cuda --json

--backend numpy (default) runs tinyfbi's NumPy inference path (each W~ materialized once);
--backend torch runs tinyfbi.torch_model, much faster for the paper's sizes (--device cuda).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import numpy as np

from .errors import CLIParser, TinyFBIError

C4_SHARD = "en/c4-validation.00000-of-00008.json.gz"
C4_DOCS, C4_WINDOWS = 1100, 256   # GPTQ's c4 evaluation set
DATASETS = {"wikitext2": "Salesforce/wikitext wikitext-2-raw-v1 (test)", "c4": f"allenai/c4 {C4_SHARD}"}


def build_parser():
    ap = CLIParser(prog="python -m tinyfbi.evaluate", description=__doc__.split("\n\n")[0],
                   formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    ap.add_argument("--ckpt", help="tinyfbi checkpoint, run folder, or HF LLaMA folder (released FBI-LLM)")
    ap.add_argument("--ppl", help="comma-separated: wikitext2, c4, or paths to text files")
    ap.add_argument("--seq-len", type=int, default=2048, help="window length (clamped to the model's)")
    ap.add_argument("--stride", type=int, default=None, help="window step (default: --seq-len, no overlap)")
    ap.add_argument("--max-windows", type=int, default=None, help="evaluate at most N windows per text")
    ap.add_argument("--batch-size", type=int, default=1, help="windows per forward pass")
    ap.add_argument("--backend", choices=("numpy", "torch"), default="numpy")
    ap.add_argument("--device", default="cpu", help="torch device for --backend torch")
    ap.add_argument("--tokenizer", default=None, help="tokenizer file (default: the checkpoint's)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    return ap


# ----------------------------------------------------------------------------- texts


def eval_text(name: str) -> str:
    """The text a --ppl name stands for: a dataset through `datasets`, or a local file."""
    if name not in DATASETS:
        path = Path(name)
        if not path.is_file():
            raise TinyFBIError(f"--ppl {name}: not {', '.join(DATASETS)} nor a text file")
        from .data import _read_text
        return _read_text(path)
    try:
        import datasets
    except ImportError:
        raise TinyFBIError(f"--ppl {name} needs the datasets package (pip install datasets); "
                           "a local text file works without it") from None
    if not _offline():
        _check_hub(name)
    try:
        if name == "wikitext2":
            return "\n\n".join(datasets.load_dataset("Salesforce/wikitext", "wikitext-2-raw-v1", split="test")["text"])
        rows = datasets.load_dataset("allenai/c4", data_files={"validation": C4_SHARD}, split="validation")
        return " ".join(rows[:C4_DOCS]["text"])
    except Exception as e:  # datasets raises many types (offline, no such file, network)
        from .tokenizers import _first_line
        raise TinyFBIError(f"could not load {name} ({DATASETS[name]}) with datasets ({type(e).__name__}: "
                           f"{_first_line(e)}); the first load needs internet, a local file always works") from None


def _offline() -> bool:
    return any(os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _check_hub(name: str, timeout: float = 3.0):
    """Fail in seconds when the hub cannot be reached, instead of datasets' retries (about 25 s)."""
    import urllib.error
    import urllib.request
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return  # the hub answered
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise TinyFBIError(f"--ppl {name}: cannot reach {endpoint} ({reason}); the first load of "
                           f"{DATASETS[name]} needs internet (with a cached copy set HF_DATASETS_OFFLINE=1), "
                           "a local text file always works") from None


def eval_tokens(name: str, text: str, tokenizer, seq_len: int) -> np.ndarray:
    """BOS + the whole text's ids, as one sequence (c4: only its first 256 windows)."""
    ids = tokenizer.encode(text)
    if tokenizer.bos_id is not None:
        ids = [tokenizer.bos_id] + ids
    if name == "c4":
        ids = ids[:C4_WINDOWS * seq_len]
    return np.asarray(ids, dtype=np.int64)


# ----------------------------------------------------------------------------- perplexity


def window_plan(num_tokens: int, seq_len: int, stride: int) -> list[tuple[int, int]]:
    """(begin, skip) per window tokens[begin:begin+seq_len]; its predictions of positions
    begin+skip .. begin+seq_len-1 count. Non-overlapping (stride = seq_len): skip = 1, as GPTQ.
    Sliding: skip leaves out the targets an earlier window already predicted."""
    plan, prev_end = [], 0
    for begin in range(0, num_tokens - seq_len + 1, stride):
        plan.append((begin, max(1, prev_end - begin)))
        prev_end = begin + seq_len
    return plan


def perplexity(nll_fn, tokens: np.ndarray, seq_len: int, stride: int | None = None,
               max_windows: int | None = None, batch_size: int = 1) -> dict:
    """exp(mean NLL) over the plan's predicted tokens. nll_fn: x (B, L) int64 -> (B, L-1) NLL of
    x[:, 1:] given what comes before, float64."""
    stride = stride or seq_len
    plan = window_plan(len(tokens), seq_len, stride)[:max_windows]
    total, count = 0.0, 0
    for first in range(0, len(plan), batch_size):
        batch = plan[first:first + batch_size]
        x = np.stack([tokens[b:b + seq_len] for b, _ in batch])                 # (B, L)
        nll = nll_fn(x)                                                          # (B, L-1)
        for row, (_, skip) in zip(nll, batch):
            total += float(np.sum(row[skip - 1:], dtype=np.float64))
            count += seq_len - skip
    mean = total / count
    return {"ppl": math.exp(mean), "nll": mean, "tokens": count, "windows": len(plan),
            "seq_len": seq_len, "stride": stride}


def token_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    # logits (B, T, V), targets (B, T) -> (B, T) float64: logsumexp(z) - z[target]
    m = logits.max(axis=-1, keepdims=True)
    lse = np.log(np.sum(np.exp(logits - m), axis=-1)) + m[..., 0]
    picked = np.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return (lse - picked).astype(np.float64)


def numpy_nll_fn(model):
    """NLL through the KV-cache inference path (no activations kept for a backward)."""
    from .inference import FloatRunner
    runner = FloatRunner(model)

    def nll(x):
        logits = runner.forward(x, runner.new_cache(x.shape[0], x.shape[1]))  # (B, L, V)
        return token_nll(logits[:, :-1], x[:, 1:])
    return nll


def torch_nll_fn(model, device):
    import torch
    import torch.nn.functional as F

    def nll(x):
        xt = torch.from_numpy(x).to(device)
        with torch.inference_mode():
            logits = model(xt)[:, :-1].float()                                   # (B, L-1, V)
            out = F.cross_entropy(logits.flatten(0, 1), xt[:, 1:].flatten(), reduction="none")
        return out.view(x.shape[0], -1).double().cpu().numpy()
    return nll


# ----------------------------------------------------------------------------- CLI


def check_args(args):
    if not args.ckpt:
        raise TinyFBIError("--ckpt is required: a checkpoint folder, runs/NAME or an HF LLaMA folder")
    if not args.ppl:
        raise TinyFBIError("--ppl is required: wikitext2, c4 or a text file (comma-separated)")
    for flag in ("seq_len", "stride", "max_windows", "batch_size"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            raise TinyFBIError(f"--{flag.replace('_', '-')} must be a positive integer, got {value}")
    if args.stride is not None and args.stride > args.seq_len:
        raise TinyFBIError(f"--stride {args.stride} > --seq-len {args.seq_len} would skip tokens")


def note(msg):
    print(f"note: {msg}", file=sys.stderr)


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        check_args(args)
        from .interop import config_from_hf
        from .run_state import resolve_checkpoint
        from .tokenizers import load_tokenizer
        ckpt = resolve_checkpoint(args.ckpt)
        config = config_from_hf(ckpt)
        try:
            tokenizer = load_tokenizer(args.tokenizer or ckpt)
        except TinyFBIError as e:
            if args.tokenizer:
                raise
            raise TinyFBIError(f"{e}; pass --tokenizer PATH (LLaMA-2's tokenizer.model for FBI-LLM)") from None
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
        nll_fn = load_nll_fn(ckpt, args.backend, args.device)
        results = {}
        for name in names:
            L = seq_len
            if len(tokens[name]) < L:
                L = len(tokens[name])
                note(f"{name} has only {L} tokens: one window of {L}")
            results[name] = perplexity(nll_fn, tokens[name], L, min(stride, L), args.max_windows,
                                       args.batch_size)
        if args.json:
            print(json.dumps({"ckpt": str(args.ckpt), "backend": args.backend, "results": results}))
        else:
            for name, r in results.items():
                print(f"{name}: ppl {r['ppl']:.3f} (nll {r['nll']:.4f}, {r['tokens']} tokens in "
                      f"{r['windows']} windows of {r['seq_len']}, stride {r['stride']})")
    except TinyFBIError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def load_nll_fn(ckpt, backend, device):
    if backend == "torch":
        import torch

        from .interop import load_torch_model
        try:
            dev = torch.device(device)
        except RuntimeError:
            raise TinyFBIError(f"--device {device!r} is not a torch device") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise TinyFBIError(f"--device {device}: no CUDA GPU is available")
        return torch_nll_fn(load_torch_model(ckpt, device=dev).eval(), dev)
    from .interop import load_model
    return numpy_nll_fn(load_model(ckpt))


if __name__ == "__main__":
    main()

"""`python -m tinyfbi.export --hf CKPT OUT`: a dequantized checkpoint that stock transformers loads.

Each binarized linear's W~ = wscale * sign(W) + wbias (FBI-LLM, arXiv 2407.07093, section 3.1) is
materialized as that linear's `.weight`, and wscale/wbias are dropped: what is left is a plain
full-precision LLaMA, so `transformers.LlamaForCausalLM.from_pretrained(OUT)` gives tinyfbi's logits
(and lm-eval's `--model hf`, vLLM, ... run it). CKPT is a tinyfbi checkpoint, a run folder, or an
HF LLaMA folder (a released FBI-LLM checkpoint; a full-precision one is copied as it is).

    python -m tinyfbi.export --hf runs/tiny-ad exports/tiny-ad
    python -m tinyfbi.export --hf FBI-LLM_7B exports/FBI-LLM_7B --dtype float16 --tokenizer llama2/tokenizer.model

OUT is written to a temporary folder beside it and renamed into place, so it is complete or absent;
an existing OUT is replaced only with --force. Weights above --shard-gb go into HF-style shards
(model-0000x-of-0000y.safetensors + index), written one at a time to bound memory.
A sentencepiece tokenizer is copied with a tokenizer_config.json for transformers' LlamaTokenizer
(transformers 5 converts tokenizer.model only with `protobuf` installed, and tokenizes text that
starts with a space differently from sentencepiece; tinyfbi reads the same file with sentencepiece).
"""
from __future__ import annotations

from .cli import CLIParser, run_cli
from .core.errors import TinyFBIError
from .corpus.tokenizers import load_tokenizer
from .formats.hf_export import DTYPES, SHARD_GB, export_hf
from .formats.run_checkpoint import resolve_checkpoint


def build_parser():
    ap = CLIParser("python -m tinyfbi.export", __doc__.split("\n\n")[0])
    ap.add_argument("ckpt", metavar="CKPT", help="tinyfbi checkpoint, run folder, or HF LLaMA folder")
    ap.add_argument("out", metavar="OUT", help="folder to write")
    ap.add_argument("--hf", action="store_true", help="write a Hugging Face LLaMA folder (the one format)")
    ap.add_argument("--force", action="store_true", help="replace OUT if it exists")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="dtype of the written weights")
    ap.add_argument("--tokenizer", default=None,
                    help="tokenizer to ship (default: the checkpoint's own, if it has one)")
    ap.add_argument("--shard-gb", type=float, default=SHARD_GB, help="largest weights file, in GB")
    return ap


def tokenizer_to_ship(args):
    """--tokenizer, else the checkpoint's own; a released checkpoint may come without one."""
    if args.tokenizer is not None:
        return load_tokenizer(args.tokenizer)
    try:
        return load_tokenizer(resolve_checkpoint(args.ckpt))
    except TinyFBIError:
        return None


def export(args):
    if not args.hf:
        raise TinyFBIError("choose the output format: --hf (a Hugging Face LLaMA folder)")
    info = export_hf(args.ckpt, args.out, args.force, args.dtype, tokenizer_to_ship(args), args.shard_gb)
    what = (f"{info['dequantized']} binarized linears dequantized" if info["binarized"]
            else "full-precision weights copied")
    tok = f"tokenizer: {info['tokenizer']}" if info["tokenizer"] else "no tokenizer (pass --tokenizer)"
    print(f"wrote {info['out']}: {len(info['files'])} weights file(s), {info['bytes'] / 1e6:.1f} MB "
          f"{args.dtype}, {what}; {tok}")


def main(argv=None):
    run_cli(export, build_parser().parse_args(argv))


if __name__ == "__main__":
    main()

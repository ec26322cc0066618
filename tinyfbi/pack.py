"""`python -m tinyfbi.pack CKPT_DIR OUT`: a checkpoint as a packed 1-bit file (`.fbipack`).

Binarized linears keep only sign(W) as bits, in the layout this CPU's int8 decode reads fastest (nib4
with AVX2 alone, blocked with AVX-512 VNNI; --layout chooses; kernels/bitpack.py) plus fp16
alpha/beta per input column; embeddings, norms and lm_head are stored in fp16 (--dtype float32 stores
them and alpha/beta in float32). A .fbipack given as CKPT is rewritten in --layout. Works on our checkpoints and on released FBI-LLM checkpoints (same HF layout:
safetensors or `.bin`, single or sharded), read tensor by tensor: the memory held is about one
tensor, whatever the model's size (a 1.3B's 5.46 GB of fp32: 0.64 GB peak RSS).
A released checkpoint's exact-zero latent weights (the authors' sign(0) = 0) are stored as +1 bits
with a list of their positions, which the packed runner corrects.
The file format: tinyfbi/formats/fbipack.py; building one: tinyfbi/runtime/build_fbipack.py; running one:
tinyfbi/runtime/packed_runner.py.

    python -m tinyfbi.pack runs/tiny-ad tiny.fbipack
    python -m tinyfbi.pack --random-init 7b random-7b.fbipack     # random signs: a 7B file to benchmark
    python -m tinyfbi.pack model.fbipack model-nib4.fbipack --layout nib4   # the same model, signs in nib4
"""
from __future__ import annotations

from pathlib import Path

from .cli import CLIParser, run_cli
from .core.config import PRESETS, ModelConfig
from .core.errors import TinyFBIError
from .runtime.build_fbipack import file_layout, pack_checkpoint, pack_random, relayout


def build_parser():
    ap = CLIParser(prog="python -m tinyfbi.pack", description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="+", metavar="CKPT OUT",
                    help="checkpoint folder or run folder (ours, or a released FBI-LLM checkpoint: safetensors or "
                         ".bin, single or sharded), then the packed file to write (e.g. model.fbipack); with "
                         "--random-init, OUT alone")
    ap.add_argument("--random-init", metavar="SIZE", choices=list(PRESETS),
                    help="no checkpoint: write a randomly initialized model of this preset (benchmarks)")
    ap.add_argument("--seed", type=int, default=0, help="--random-init: the random signs' seed")
    ap.add_argument("--dtype", choices=["float16", "float32"], default="float16",
                    help="storage of embeddings, norms and lm_head; float32 also stores alpha/beta in float32 "
                         "(the packed model then matches the float one to float32 rounding, not fp16's)")
    ap.add_argument("--layout", choices=["auto", "blocked", "nib4"], default="auto",
                    help="the signs' layout: nib4 (v9, the fastest int8 decode with AVX2 alone) or blocked "
                         "(v13 with AVX-512 VNNI); auto: the one this CPU decodes fastest. Any layout runs "
                         "anywhere; a runner on a CPU that prefers the other rewrites the file once into its cache")
    ap.add_argument("--force", action="store_true", help="replace OUT if it exists")
    return ap


def pack(args):
    want = 1 if args.random_init else 2
    if len(args.paths) != want:
        raise TinyFBIError("give CKPT OUT, or --random-init SIZE OUT")
    out = args.paths[-1]
    if Path(out).exists() and not args.force:
        raise TinyFBIError(f"{out} exists; pass --force to replace it")
    if args.random_init:
        layout = file_layout(args.layout)
        pack_random(ModelConfig.from_name(args.random_init), out, args.seed, layout)
        print(f"wrote {out}: a randomly initialized {args.random_init} model, signs in {layout}, "
              f"{Path(out).stat().st_size / 2**20:,.1f} MiB")
        return
    if Path(args.paths[0]).is_file():                         # a packed file: rewrite its signs' layout
        have, layout = relayout(args.paths[0], out, args.layout)
        print(f"wrote {out}: {args.paths[0]}'s signs in {layout} (it stores {have}), "
              f"{Path(out).stat().st_size / 2**20:,.1f} MiB")
        return
    s = pack_checkpoint(args.paths[0], out, args.dtype, on_file=lambda path: print(f"reading {path.name}", flush=True),
                        layout=args.layout)
    print(f"wrote {out}: {s['file_bytes'] / 2**20:.2f} MiB ({s['float32_bytes'] / s['file_bytes']:.1f}x "
          f"smaller than float32), signs in {s['layout']}")
    scales = "fp16 alpha/beta; the paper's 1.01" if args.dtype == "float16" else "float32 alpha/beta"
    print(f"  binarized linears: {s['binarized_params']:,} weights at {s['bits_per_binarized_param']:.3f} "
          f"bits each (signs + {scales})")
    print(f"  whole file: {s['bits_per_param']:.2f} bits per parameter (embeddings, norms, lm_head in {args.dtype})")
    if s["exact_zeros"] and s["sign_of_zero"] == 0:
        print(f"  {s['exact_zeros']:,} latent weights are exactly 0 (the authors' sign(0) = 0, W~ = beta there): "
              f"stored as +1 bits with their positions ({s['zero_lists']} linears), which the runner corrects")


def main(argv=None):
    run_cli(pack, build_parser().parse_args(argv))


if __name__ == "__main__":
    main()

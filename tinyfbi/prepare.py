"""`python -m tinyfbi.prepare SOURCE --out DIR`: a corpus of any size -> token shards + a manifest.

Streams SOURCE (never read whole), tokenizes it on --workers processes into shards of about
--shard-mb, holds out every --val-every-th document for validation, and writes DIR/manifest.json
last. A killed prepare, rerun with the same flags, resumes; `--data DIR` trains on the result.

    python -m tinyfbi.prepare corpus.txt --out data/corpus-sp4096 --workers 2
    python -m tinyfbi.prepare books/ --out data/books-byte --tokenizer byte
    python -m tinyfbi.prepare amber/ --out data/amber --vocab-size 32000        # Amber's token_ids rows, as is
    python -m tinyfbi.prepare amber/ --out data/amber --tokenizer Llama-2-7b-hf/tokenizer.model
    python -m tinyfbi.prepare hf:roneneldan/TinyStories --out data/tinystories
    python -m tinyfbi.prepare --verify data/amber                              # every shard's sha256
"""
from __future__ import annotations

import os

from .cli import CLIParser, run_cli
from .core.errors import TinyFBIError
from .corpus.shard_writer import prepare, verify


def build_parser() -> CLIParser:
    ap = CLIParser("python -m tinyfbi.prepare", __doc__.split("\n\n")[0])
    ap.add_argument("source", nargs="?", help="a .txt file or folder; .jsonl / .jsonl.gz / .parquet files "
                    "(or a folder of them) with a 'text' or 'token_ids' field; or hf:NAME[:CONFIG]")
    ap.add_argument("--out", help="the folder to prepare (new or empty, or a killed preparation to resume)")
    ap.add_argument("--tokenizer", default=None,
                    help="byte, sentencepiece (BPE trained on the first 8M characters), tiktoken, or "
                         "PATH/tokenizer.model; None: sentencepiece for text, no tokenizer for token_ids rows")
    ap.add_argument("--vocab-size", type=int, default=None,
                    help="vocabulary of a tokenizer trained here (None: 4096); for token_ids rows without "
                         "--tokenizer, the vocabulary their ids must lie in (32000 for Amber)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="tokenizing processes")
    ap.add_argument("--shard-mb", type=int, default=64,
                    help="input per shard, MB (text, or jsonl rows: Amber's 14 KB lines give 4.6k rows, 19 MB of "
                         "ids); memory holds about 2 x --workers pieces")
    ap.add_argument("--val-every", type=int, default=100,
                    help="hold out every N-th document (file, row) for validation; of one .txt file, its last 1/N")
    ap.add_argument("--val-max-mb", type=int, default=64, help="stop holding out documents past this much input")
    ap.add_argument("--force", action="store_true",
                    help="replace the preparation in --out (another one, or this one: start over)")
    ap.add_argument("--verify", metavar="DIR", help="check every shard of a prepared folder against its manifest")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    return ap


def main_prepare(args):
    if args.verify:
        manifest = verify(args.verify)
        shards = len(manifest["train"]) + len(manifest["val"])
        print(f"{args.verify}: {shards} shards match the manifest ({manifest['tokens']['train']:,} train / "
              f"{manifest['tokens']['val']:,} val tokens)")
        return manifest
    if not args.source or not args.out:
        raise TinyFBIError("give SOURCE and --out DIR (or --verify DIR)")
    return prepare(args.source, args.out, args.tokenizer, args.vocab_size, args.workers, args.shard_mb,
                   args.val_every, args.val_max_mb, args.force, progress=not args.no_progress)


def main(argv=None):
    return run_cli(main_prepare, build_parser().parse_args(argv),
                   interrupted="interrupted: finished shards are kept; rerun the same command to resume")


if __name__ == "__main__":
    main()

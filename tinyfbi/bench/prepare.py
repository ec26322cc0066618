"""`python -m tinyfbi.bench.prepare`: how fast `tinyfbi.prepare` and the batch path are, on this machine.

Generates a text of --mb MB (paragraphs of Python's pydoc topics in a seeded random order) and an
Amber-layout jsonl of --rows rows of 2049 random ids, prepares the text with the byte tokenizer,
its first --sp-mb MB with a 4096-token sentencepiece BPE (once training it on the first 8M
characters, once given the trained tokenizer.model: encoding alone), and the rows as they are,
each in a fresh process (peak RSS:
the main process's VmHWM and the largest worker's), then times global batches read from the
Amber shards: one rank's share of the paper's 130m batch (32 x 2049 at world size 32) and the whole
1024 x 2049 batch. A benchmark, not a test: timings move with whatever else runs on the machine.

    python -m tinyfbi.bench.prepare --mb 1024 --sp-mb 64 --rows 20000 --workers 2 --out /tmp/bench
"""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from pydoc_data.topics import topics

import numpy as np

from ..cli import CLIParser, run_cli
from ..corpus.batches import BatchSampler
from ..corpus.shards import open_prepared
from .machine import describe
from .timing import call_times, median_ms

MB = 1 << 20
PAPER_130M = dict(batch=1024, seq=2048, world=32)   # the figure: 32 rows per rank at world size 32

MEASURE = """
import json, re, resource, sys, time
from tinyfbi.corpus.shard_writer import prepare
start = time.perf_counter()
m = prepare(sys.argv[1], sys.argv[2], None if sys.argv[3] == "none" else sys.argv[3],
            None if sys.argv[4] == "0" else int(sys.argv[4]), workers=int(sys.argv[5]), shard_mb=int(sys.argv[6]),
            progress=False, force=True, log=lambda *a: None)
seconds = time.perf_counter() - start
hwm = int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
print(json.dumps({"seconds": seconds, "tokens": m["tokens"]["train"] + m["tokens"]["val"],
                  "main_rss_mb": hwm / 1024,
                  "worker_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def write_text(path: Path, mb: int, seed=0) -> int:
    paragraphs = [p for text in topics.values() for p in text.split("\n\n") if p.strip()]
    rng = random.Random(seed)
    with open(path, "w") as f:
        while f.tell() < mb * MB:
            f.write("\n\n".join(rng.choices(paragraphs, k=2000)) + "\n\n")
    return path.stat().st_size


def write_rows(path: Path, rows: int, row_len=2049, vocab=32000, seed=0) -> int:
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for first in range(0, rows, 1000):
            block = rng.integers(0, vocab, size=(min(1000, rows - first), row_len))
            f.write("".join('{"token_ids": [' + ", ".join(map(str, r)) + ']}\n' for r in block.tolist()))
    return path.stat().st_size


def prepare_in_process(source, out, tokenizer, vocab, workers, shard_mb) -> dict:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    done = subprocess.run([sys.executable, "-c", MEASURE, str(source), str(out), tokenizer, str(vocab), str(workers),
                           str(shard_mb)],
                          capture_output=True, text=True, env=env)
    if done.returncode:
        sys.exit(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def fetch_ms(folder, batch, rows, steps=50) -> float:
    """Median ms to read `rows` of global batch k (k = 0..steps-1) from the prepared shards."""
    sampler = BatchSampler(open_prepared(folder, checksums=False).train, batch, 2048, seed=0, rows=rows)
    return median_ms(call_times(sampler.batch, steps))


def bench(args):
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text, sp_text, rows = out / "text.txt", out / "text-sp.txt", out / "rows.jsonl"
    if not text.is_file() or text.stat().st_size < args.mb * MB:
        write_text(text, args.mb)
    with open(text, "rb") as f, open(sp_text, "wb") as g:
        g.write(f.read(args.sp_mb * MB))
        g.write(f.readline())
    rows_bytes = write_rows(rows, args.rows)
    machine = describe()
    print(f"{machine['cpu']}, {machine['cores']} cores, --workers {args.workers}, --shard-mb {args.shard_mb}; text "
          f"{text.stat().st_size / MB:.0f} MB (sentencepiece: its first {sp_text.stat().st_size / MB:.0f} MB), "
          f"rows {args.rows} x 2049 ({rows_bytes / MB:.0f} MB of jsonl)")
    results = {}
    runs = (("byte", "byte", text, "byte", 0),
            ("sp-train", "sentencepiece 4096, trained", sp_text, "sentencepiece", 4096),
            ("sp", "sentencepiece 4096, given", sp_text, str(out / "sp-train" / "tokenizer.model"), 0),
            ("amber", "amber rows", rows, "none", 32000))
    for key, name, source, tok, vocab in runs:
        if key in args.skip:
            continue
        shutil.rmtree(out / key, ignore_errors=True)       # a fresh preparation, not a reuse
        r = prepare_in_process(source, out / key, tok, vocab, args.workers, args.shard_mb)
        size = source.stat().st_size
        r.update(mb=size / MB, mb_s=size / MB / r["seconds"], tok_s=r["tokens"] / r["seconds"],
                 rows_s=args.rows / r["seconds"])
        results[name] = r
        extra = f", {r['rows_s']:,.0f} rows/s" if source == rows else ""
        print(f"  prepare {name:28s} {size / MB:6.0f} MB {r['seconds']:7.1f} s  {r['mb_s']:6.2f} MB/s  "
              f"{r['tok_s'] / 1e6:6.2f} M tokens/s{extra}  peak RSS main {r['main_rss_mb']:.0f} MB, "
              f"worker {r['worker_rss_mb']:.0f} MB", flush=True)
    per_rank = PAPER_130M["batch"] // PAPER_130M["world"]
    for label, batch, sel in ((f"{per_rank} x 2049 (one rank of {PAPER_130M['world']})", PAPER_130M["batch"],
                               slice(0, per_rank)), ("1024 x 2049 (the whole batch)", PAPER_130M["batch"], slice(None))):
        ms = fetch_ms(out / "amber", batch, sel)
        results[f"fetch {label}"] = ms
        print(f"  fetch {label:38s} {ms:8.2f} ms (median of 50 steps, shards in the page cache)")
    (out / "results.json").write_text(json.dumps(results, indent=1))
    return results


def main(argv=None):
    ap = CLIParser("python -m tinyfbi.bench.prepare", __doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=int, default=1024, help="size of the generated text")
    ap.add_argument("--sp-mb", type=int, default=64, help="how much of the text the sentencepiece run prepares")
    ap.add_argument("--shard-mb", type=int, default=16, help="prepare's --shard-mb")
    ap.add_argument("--skip", nargs="*", default=[], choices=["byte", "sp-train", "sp", "amber"],
                    help="preparations not to rerun (the fetch times need amber)")
    ap.add_argument("--rows", type=int, default=20000, help="rows of 2049 ids in the generated Amber jsonl")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="prepare's --workers")
    ap.add_argument("--out", default="/tmp/tinyfbi-bench-prepare", help="scratch folder (several GB for 1 GB)")
    return run_cli(bench, ap.parse_args(argv))


if __name__ == "__main__":
    main()

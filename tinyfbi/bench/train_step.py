"""Training-step speed: the NumPy model against the same model in torch eager on the CPU.

One step = forward + cross-entropy + backward + clipping + AdamW, same config, batch, sequence
length and thread count. Each backend runs in its own subprocess (torch's OpenMP workers spin
after each op and would steal the cores from NumPy's BLAS if they shared a process); the two
alternate, and each reports the median of its timed steps.

    python -m tinyfbi.bench.train_step --size tiny --size 20m --threads 2
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

from ..cli import CLIParser, run_cli
from ..core import layers as L
from ..core.config import ModelConfig
from ..core.errors import TinyFBIError
from ..core.model import Model
from ..core.optim import AdamW
from .timing import call_times, median_ms


def worker(backend, size, batch, seq_len, steps, binarized):
    cfg = ModelConfig.from_name(size, binarized=binarized, max_position_embeddings=max(seq_len, 16))
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.vocab_size, (batch, seq_len + 1))
    x, y = tokens[:, :-1], tokens[:, 1:]
    if backend == "numpy":
        model = Model(cfg, seed=0)
        opt = AdamW(model.params)

        def step():
            loss, cache = L.cross_entropy_forward(model.forward(x), y)
            opt.step(model.params, model.backward(L.cross_entropy_backward(cache)))
    else:
        import torch  # the torch worker only: the NumPy worker runs without it

        from ..torch_backend.model import TorchModel
        model = TorchModel(cfg)
        model.init_weights(0)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)
        tx, ty = torch.from_numpy(x), torch.from_numpy(y)

        def step():
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(tx).flatten(0, 1), ty.flatten())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
    return call_times(lambda _: step(), steps, warmup=1)            # warm-up: allocations, thread pools


def run_backend(backend, args, size, threads):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "tinyfbi.bench.train_step", "--worker", backend, "--size", size,
           "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len), "--steps",
           str(args.steps)] + (["--full-precision"] if args.full_precision else [])
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode:
        raise TinyFBIError(f"{backend} worker failed: {out.stderr.strip().splitlines()[-1]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = CLIParser("python -m tinyfbi.bench.train_step", __doc__.split("\n\n")[0])
    ap.add_argument("--size", action="append", help="preset name; repeat for several (default: tiny, 20m)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=3, help="alternating numpy/torch rounds")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--full-precision", action="store_true", help="benchmark the teacher, not the FBI student")
    ap.add_argument("--json", action="store_true", help="one JSON object per size")
    ap.add_argument("--worker", choices=["numpy", "torch"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        if args.worker == "torch":
            import torch
            torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        print(json.dumps(worker(args.worker, args.size[0], args.batch_size, args.seq_len, args.steps,
                                not args.full_precision)))
        return
    run_cli(compare, args)


def compare(args):
    for size in args.size or ["tiny", "20m"]:
        times = {"numpy": [], "torch": []}
        for _ in range(args.rounds):
            for backend in times:
                times[backend] += run_backend(backend, args, size, args.threads)
        tokens = args.batch_size * args.seq_len
        row = {"size": size, "binarized": not args.full_precision, "batch": args.batch_size,
               "seq_len": args.seq_len, "threads": args.threads}
        for backend, ts in times.items():
            row[f"{backend}_ms"] = round(median_ms(ts), 1)
            row[f"{backend}_tok_s"] = round(1e3 * tokens / median_ms(ts))
        row["numpy_vs_torch"] = round(row["numpy_tok_s"] / row["torch_tok_s"], 2)
        if args.json:
            print(json.dumps(row))
        else:
            print(f"{size:>5} ({'FBI' if row['binarized'] else 'FP'}) B={args.batch_size} T={args.seq_len} "
                  f"threads={args.threads}: numpy {row['numpy_tok_s']} tok/s ({row['numpy_ms']} ms/step), "
                  f"torch eager {row['torch_tok_s']} tok/s ({row['torch_ms']} ms/step), "
                  f"ratio {row['numpy_vs_torch']}x")


if __name__ == "__main__":
    main()

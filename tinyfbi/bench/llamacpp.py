"""`python -m tinyfbi.bench.llamacpp`: tinyfbi's packed runtime beside llama.cpp, same shapes, same run.

Writes random-weight LLaMA GGUF models in the shapes of tinyfbi's presets (linears in each llama.cpp
type asked for, lm_head and embeddings F16 as tinyfbi keeps them, norms F32, a dummy 32000-token
vocabulary), runs llama-bench on them (prefill of --prompt tokens; decode of --new tokens at a
context depth of --prompt, as tinyfbi's benchmark decodes after its prompt), then tinyfbi's own
benchmark (int8 activations, fp16 and int8 heads), alternating engines per size, and prints one table.

    # llama.cpp from the llama-cpp-python 0.3.36 sdist (vendor/llama.cpp), CPU only:
    #   cmake -B build -DGGML_NATIVE=ON -DLLAMA_CURL=OFF && cmake --build build --target llama-bench
    python -m tinyfbi.bench.llamacpp --llama-bench PATH/llama-bench --size 1.3b --size 7b

Tensors whose rows a type cannot hold (TQ2_0 needs multiples of 256; 1.3B's ffn_down has 5504) are
written as Q4_0, as llama-quantize falls back. GGUF files are written with the `gguf` package.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q

from kernels.simd import ISA
from kernels.threads import set_threads

from ..cli import CLIParser, run_cli
from ..core.config import ModelConfig
from ..core.errors import TinyFBIError
from ..formats.atomic import atomic_path
from ..runtime.packed_runner import PackedRunner
from .end_to_end import run_benchmark
from .machine import cpu_name

TYPES = ("Q4_0", "TQ2_0", "Q1_0")
Q1_0_BLOCK = (128, 18)       # llama.cpp's block_q1_0: an fp16 scale and 128 sign bits
SAMPLE_ROWS = 64             # rows quantized per linear, then tiled: valid blocks, written in seconds


def write_gguf(path: Path, config: ModelConfig, qtype: str, seed: int = 0) -> None:
    """A random-weight LLaMA GGUF of this config, linears in qtype (written atomically)."""
    C, I, V = config.hidden_size, config.intermediate_size, config.vocab_size
    rng = np.random.default_rng(seed)
    shapes = config.linear_shapes()
    names = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
             "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
    with atomic_path(path) as tmp:
        w = gguf.GGUFWriter(str(tmp), "llama")
        w.add_context_length(config.max_position_embeddings)
        w.add_embedding_length(C)
        w.add_block_count(config.num_hidden_layers)
        w.add_feed_forward_length(I)
        w.add_head_count(config.num_attention_heads)
        w.add_head_count_kv(config.num_key_value_heads)
        w.add_rope_dimension_count(config.head_dim)
        w.add_layer_norm_rms_eps(config.rms_norm_eps)
        w.add_tokenizer_model("llama")
        tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
        tokens += [f"t{i}" for i in range(V - len(tokens))]
        w.add_token_list(tokens)
        w.add_token_scores([0.0] * V)
        w.add_token_types([2, 3, 3] + [6] * 256 + [1] * (V - 259))      # unknown, control, byte, normal
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_tensor("token_embd.weight", (rng.standard_normal((V, C)) * 0.02).astype(np.float16))
        w.add_tensor("output_norm.weight", np.ones(C, np.float32))
        w.add_tensor("output.weight", (rng.standard_normal((V, C)) * 0.02).astype(np.float16))
        for i in range(config.num_hidden_layers):
            w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(C, np.float32))
            w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(C, np.float32))
            for ours, theirs in names.items():
                out_f, in_f = shapes[ours]
                t = Q[qtype] if in_f % gguf.GGML_QUANT_SIZES[Q[qtype]][0] == 0 else Q.Q4_0
                sample = _sample_rows(rng, min(SAMPLE_ROWS, out_f), in_f, t)
                data = np.tile(sample, (-(-out_f // sample.shape[0]), 1))[:out_f]   # (out, bytes per row)
                w.add_tensor(f"blk.{i}.{theirs}.weight", data, raw_dtype=t)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()


def _sample_rows(rng, rows: int, in_f: int, t) -> np.ndarray:
    """(rows, bytes per row) uint8 of valid type-t blocks for N(0, 0.02) weights."""
    if t == Q.Q1_0:                  # gguf-py has no Q1_0 quantizer: random signs, scale 0.02
        blocks = in_f // Q1_0_BLOCK[0]
        raw = rng.integers(0, 256, (rows, blocks, Q1_0_BLOCK[1]), dtype=np.uint8)
        raw[:, :, :2] = np.frombuffer(np.float16(0.02).tobytes(), np.uint8)
        return raw.reshape(rows, -1)
    return gguf.quants.quantize((rng.standard_normal((rows, in_f)) * 0.02).astype(np.float32), t)


def llama_bench(binary: str, model: Path, threads: int, prompt: int, new: int) -> dict:
    """llama-bench's tokens/s: {'prefill': pp<prompt>, 'decode': tg<new> at depth <prompt>}."""
    out = {}
    for key, args in (("prefill", ["-p", str(prompt), "-n", "0"]),
                      ("decode", ["-p", "0", "-n", str(new), "-d", str(prompt)])):
        run = subprocess.run([binary, "-m", str(model), "-t", str(threads), "-r", "3", "-o", "json", *args],
                             capture_output=True, text=True)
        if run.returncode != 0:
            raise TinyFBIError(f"llama-bench failed on {model.name}: {run.stderr.strip().splitlines()[-1:]}")
        out[key] = json.loads(run.stdout)[0]["avg_ts"]
    return out


def build_parser():
    ap = CLIParser("python -m tinyfbi.bench.llamacpp", __doc__.split("\n\n")[0])
    ap.add_argument("--llama-bench", required=True, help="path to llama.cpp's llama-bench binary")
    ap.add_argument("--size", action="append", choices=("tiny", "130m", "1.3b", "7b"),
                    help="tinyfbi preset (repeatable; default 1.3b)")
    ap.add_argument("--types", default=",".join(TYPES), help="llama.cpp weight types, comma-separated")
    ap.add_argument("--out", default="runs/llamacpp", help="folder for the GGUF files (reused if present)")
    ap.add_argument("--threads", type=int, default=2, help="threads for both engines")
    ap.add_argument("--prompt", type=int, default=128, help="prompt tokens (prefill), and decode depth")
    ap.add_argument("--new", type=int, default=32, help="decoded tokens")
    return ap


def compare(args):
    if not Path(args.llama_bench).is_file():
        raise TinyFBIError(f"--llama-bench {args.llama_bench}: no such file (build llama.cpp first)")
    set_threads(args.threads)
    types = [t.strip().upper() for t in args.types.split(",") if t.strip()]
    print(f"# cpu={cpu_name()}, tinyfbi isa={ISA}, threads={args.threads}, prompt={args.prompt}, new={args.new}")
    print(f"| model | engine | weights | decode tok/s (after {args.prompt}) | prefill tok/s ({args.prompt}) |")
    print("|---|---|---|---|---|")
    for size in args.size or ["1.3b"]:
        config = ModelConfig.from_name(size)
        for qtype in types:
            path = Path(args.out) / f"{size}-{qtype.lower()}.gguf"
            if not path.is_file():
                write_gguf(path, config, qtype)
            r = llama_bench(args.llama_bench, path, args.threads, args.prompt, args.new)
            print(f"| {size} | llama.cpp | {qtype}, F16 head | {r['decode']:.2f} | {r['prefill']:.2f} |", flush=True)
        for kind, head in (("int8", "f16"), ("int8", "int8"), ("exact", "f16")):
            row = run_benchmark(PackedRunner.random(config, 0, kind, head), args.prompt, args.new)
            label = "int8 act." if kind == "int8" else "exact float32"
            print(f"| {size} | tinyfbi | 1-bit, {label}, {head} head | {row['decode_tok_s']:.2f} | "
                  f"{row['prefill_tok_s']:.2f} |", flush=True)


def main(argv=None):
    run_cli(compare, build_parser().parse_args(argv))


if __name__ == "__main__":
    main()

"""One honest end-to-end benchmark of a runner: prefill a prompt, then decode, every kernel warmed first.

Measures what llama-bench measures (-p PROMPT -n 0 for prefill, -p 0 -n NEW for decode, but decode here
continues after the prompt, the harder case): prefill tokens/s (logits for the last position only),
decode tokens/s over NEW greedy steps after PROMPT tokens of context, each part's share of a decode
step (from the runner's own timers), peak RSS, and the kernels / instruction set that ran.

    python -m tinyfbi.generate --random-init 7b --packed --bench --kind int8          # text
    python -m tinyfbi.generate --random-init 1.3b --packed --bench --json             # one JSON object
"""
from __future__ import annotations

import resource

import numpy as np

from .machine import describe, seconds_since_start
from .timing import call_times, median_ms

PARTS = ("embed", "norm", "qkv", "attention", "o", "gate_up", "swiglu", "down", "head")


def _forward(runner, tokens, cache, last_only):
    if hasattr(runner, "times"):
        return runner.forward(tokens, cache, last_only=last_only)
    return runner.forward(tokens, cache)                          # the float runner computes every position


def run_benchmark(runner, prompt_len=128, new_tokens=32, seed=0, load_s=None) -> dict:
    """-> a dict of the figures (see format_report); warms every kernel on a scratch cache first.
    load_s: seconds from the process's start until `runner` was ready (generate passes it); then the
    first token of a one-token prompt is timed from the process's start too: what a user waits for
    before any output (kernels compiled, or loaded from Numba's cache)."""
    cfg = runner.config
    if prompt_len < 1 or new_tokens < 1 or prompt_len + new_tokens > cfg.max_position_embeddings:
        raise ValueError(f"need 1 <= prompt ({prompt_len}), 1 <= new tokens ({new_tokens}) and their sum "
                         f"<= max_position_embeddings ({cfg.max_position_embeddings})")
    rng = np.random.default_rng(seed)
    prompt = rng.integers(0, cfg.vocab_size, (1, prompt_len))
    # warm-up: the same shapes as the measured run, so every kernel is compiled and every page touched
    first_token_s = None
    if load_s is not None:   # a user's first token: a one-token prompt, kernels compiled or loaded from the cache
        _forward(runner, prompt[:, :1], runner.new_cache(1, 2), True)
        first_token_s = seconds_since_start()
    warm = runner.new_cache(1, prompt_len + 3)
    logits = _forward(runner, prompt, warm, True)[0, -1]
    for _ in range(2):
        logits = _forward(runner, np.array([[int(np.argmax(logits))]]), warm, True)[0, -1]
    del warm
    times = getattr(runner, "times", {})
    cache = runner.new_cache(1, prompt_len + new_tokens + 1)
    last = {}                                                     # the latest logits, greedy's next input

    def prefill(_):
        last["logits"] = _forward(runner, prompt, cache, True)[0, -1]

    def decode(_):
        last["logits"] = _forward(runner, np.array([[int(np.argmax(last["logits"]))]]), cache, True)[0, -1]

    times.clear()
    prefill_s = call_times(prefill, 1)[0]
    prefill_parts = dict(times)
    times.clear()
    steps = call_times(decode, new_tokens)
    decode_s = sum(steps)
    per_token = {p: 1e3 * times.get(p, 0.0) / new_tokens for p in PARTS if p in times}
    if per_token:
        per_token["other"] = 1e3 * decode_s / new_tokens - sum(per_token.values())
    ran = runner.describe() if hasattr(runner, "describe") else {"runtime": type(runner).__name__, "isa": "numpy",
                                                                 "threads": None}
    return {
        **describe(), **ran,
        "params": cfg.num_params(), "layers": cfg.num_hidden_layers, "hidden": cfg.hidden_size,
        "weight_mb": round(runner.weight_bytes() / 2**20, 1) if hasattr(runner, "weight_bytes") else None,
        "prompt_tokens": prompt_len, "prefill_s": round(prefill_s, 4),
        "prefill_tok_s": round(prompt_len / prefill_s, 2),
        "decode_tokens": new_tokens, "decode_tok_s": round(new_tokens / decode_s, 2),
        "decode_ms_median": round(median_ms(steps), 3),
        "decode_ms_per_part": {k: round(v, 3) for k, v in per_token.items()},
        "prefill_ms_per_part": {k: round(1e3 * v, 1) for k, v in prefill_parts.items()},
        "kernels_decode": runner.kernel_names(1) if hasattr(runner, "kernel_names") else None,
        "kernels_prefill": runner.kernel_names(prompt_len) if hasattr(runner, "kernel_names") else None,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "load_s": None if load_s is None else round(load_s, 3),
        "first_token_s": None if first_token_s is None else round(first_token_s, 3),
    }


def format_report(row: dict) -> str:
    """The benchmark's figures as a few lines of text."""
    lines = [f"cpu: {row['cpu']} ({row['cores']} cores), instruction set: {row['isa']}, threads: {row['threads']}",
             f"model: {row['params'] / 1e9:.2f}B params, {row['layers']} layers, hidden {row['hidden']}; "
             f"runtime {row['runtime']}, activations {row.get('kind', 'float32')}, head {row.get('head', 'f32')}, "
             f"KV cache {row.get('kv', 'f32')}, " + (f"signs {row['layout']}, " if row.get("layout") else "") +
             (f"file {row['load']}, " if row.get("load") in ("read", "map") else "") +
             f"weights {row['weight_mb']} MB, peak RSS {row['peak_rss_mb']} MB"]
    if row.get("load_s") is not None:
        lines.append(f"start: model ready {row['load_s']:.2f} s, first token of a one-token prompt "
                     f"{row['first_token_s']:.2f} s after the process started")
    if row.get("kernels_decode"):
        lines.append(f"kernels: decode {row['kernels_decode']}, prefill {row['kernels_prefill']}")
    lines.append(f"prefill: {row['prompt_tokens']} tokens in {row['prefill_s']:.3f} s = {row['prefill_tok_s']} tok/s")
    lines.append(f"decode: {row['decode_tokens']} tokens after {row['prompt_tokens']} = {row['decode_tok_s']} tok/s "
                 f"(median step {row['decode_ms_median']} ms)")
    if row["decode_ms_per_part"]:
        total = sum(row["decode_ms_per_part"].values())
        lines.append("decode step, ms per part: " + ", ".join(
            f"{k} {v:.2f} ({100 * v / total:.0f}%)" for k, v in row["decode_ms_per_part"].items()))
        lines.append("prefill, ms per part: " + ", ".join(f"{k} {v:.0f}" for k, v in row["prefill_ms_per_part"].items()))
    return "\n".join(lines)

"""`python -m tinyfbi.reproduce`: the paper's claims, tested at a scale a laptop can run.

Every arm trains the same `tiny` shape on Shakespeare (4096-token BPE) with the same seed, batch,
sequence length and number of steps, so each sees the same tokens:
  (a) the FBI student with autoregressive distillation vs next-token labels vs the 0.5/0.5 mix;
  (b) FBI's per-column alpha/beta vs no scaling vs per-row scaling vs BitNet b1.58 ternary (absmean);
  (c) from scratch vs initialized from the trained full-precision teacher's weights (flip-flop curves);
  (d) the full-precision model of the same shape (it is also the teacher of every distilled arm).
Writes runs/reproduce/{results.md, results.json, ppl.png, flips.png, loss.png}. Finished arms are
reused on a rerun (delete runs/reproduce/<arm> to redo one).

    python -m tinyfbi.reproduce            # ~25 minutes on 2 cores (8 arms x 150 steps; 100 steps took 18 min)
    python -m tinyfbi.reproduce --fast     # ~4 minutes: fewer, shorter steps
"""
from __future__ import annotations

import json
from pathlib import Path

from .cli import CLIParser, run_cli
from .core.errors import TinyFBIError
from .train import build_parser as train_parser
from .train import train
from .training.loop import read_metrics

# arm name -> (question, extra train flags); the teacher arm is trained by --teacher auto
ARMS = {
    "fbi-ad":       ("(a)(b)(c) FBI student, distillation (the paper's recipe)", []),
    "fbi-ce":       ("(a) FBI student, label loss", ["--loss", "ce", "--teacher", "none"]),
    "fbi-mix":      ("(a) FBI student, 0.5 label + 0.5 distillation", ["--loss", "mix"]),
    "noscale-ad":   ("(b) sign(W) only, no alpha/beta", ["--scaling", "none"]),
    "rowscale-ad":  ("(b) alpha/beta per output row", ["--scaling", "row"]),
    "ternary-ad":   ("(b) BitNet b1.58 ternary absmean", ["--scaling", "ternary"]),
    "fbi-init-ad":  ("(c) FBI student initialized from the teacher's weights", ["--init", "TEACHER"]),
}


def build_parser():
    ap = CLIParser("python -m tinyfbi.reproduce", __doc__.split("\n\n")[0])
    ap.add_argument("--fast", action="store_true", help="short arms (CI, a first look)")
    ap.add_argument("--steps", type=int, default=None, help="steps per arm (default 150, --fast 50)")
    ap.add_argument("--out", default="runs/reproduce", help="where arms, table and plots go")
    ap.add_argument("--data", default=None, help="corpus (default: Shakespeare)")
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--tokenizer", default="sentencepiece")
    ap.add_argument("--seed", type=int, default=0)
    return ap


def common_flags(args, steps):
    seq, batch = (64, 8) if args.fast else (128, 16)
    flags = ["--size", "tiny", "--steps", steps, "--batch-size", batch, "--seq-len", seq, "--seed", args.seed,
             "--out", args.out, "--data-dir", args.data_dir, "--tokenizer", args.tokenizer,
             "--eval-every", max(steps // 5, 1), "--save-every", steps, "--eval-batches", 8 if args.fast else 16,
             "--sample-tokens", 30]
    if args.data:
        flags += ["--data", args.data]
    return [str(f) for f in flags]


def run_arm(name, flags, out):
    summary_path = Path(out) / name / "summary.json"
    if summary_path.is_file():
        print(f"== {name}: reusing {summary_path}")
        return json.loads(summary_path.read_text())
    print(f"\n== {name}: {ARMS[name][0] if name in ARMS else 'full-precision reference'}")
    return train(train_parser().parse_args(flags + ["--name", name]))


def flip_curve(run_dir):
    rows = read_metrics(Path(run_dir) / "metrics.jsonl")
    return [r["step"] for r in rows if "flips" in r], [r["flips"]["all"] for r in rows if "flips" in r]


def plots(out, results):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(results)
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar(names, [results[n]["val_ppl"] for n in names],
           color=["tab:gray" if n == "fp-reference" else "tab:blue" for n in names])
    ax.set_ylabel("validation perplexity")
    ax.tick_params(axis="x", rotation=30)
    ax.set_title("same shape, same tokens: validation perplexity per arm")
    fig.tight_layout()
    fig.savefig(Path(out) / "ppl.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    for name in ("fbi-ad", "fbi-init-ad"):
        steps, flips = flip_curve(Path(out) / name)
        ax.plot(steps, [100 * f for f in flips], label=name, lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("flip-flop ratio (%)")
    ax.set_title("signs that change per step: from scratch vs from the teacher's weights")
    ax.legend()
    fig.tight_layout()
    fig.savefig(Path(out) / "flips.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    for name in names:
        rows = [r for r in read_metrics(Path(results[name]["run"]) / "metrics.jsonl") if "val_loss" in r]
        ax.plot([r["step"] for r in rows], [r["val_loss"] for r in rows], "o-", label=name, ms=3)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("validation loss (nats/token)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(Path(out) / "loss.png", dpi=110)
    plt.close(fig)


def verdicts(r):
    """Which of the paper's claims the numbers support, stated from the measured perplexities."""
    p = {k: v["val_ppl"] for k, v in r.items()}
    lines = []
    def claim(text, ok, detail):
        lines.append(f"- {'supported' if ok else 'NOT supported'}: {text} ({detail})")
    claim("distillation trains a better binarized student than the label loss (paper section 3.2)",
          p["fbi-ad"] < p["fbi-ce"], f"ad {p['fbi-ad']:.1f} vs ce {p['fbi-ce']:.1f}")
    claim("pure distillation is at least as good as the 0.5/0.5 mix (the released recipe uses ad alone)",
          p["fbi-ad"] <= p["fbi-mix"], f"ad {p['fbi-ad']:.1f} vs mix {p['fbi-mix']:.1f}")
    claim("FBI's learnable column scale and bias beat sign(W) alone",
          p["fbi-ad"] < p["noscale-ad"], f"column {p['fbi-ad']:.1f} vs none {p['noscale-ad']:.1f}")
    claim("per-column alpha/beta are at least as good as per-row",
          p["fbi-ad"] <= p["rowscale-ad"], f"column {p['fbi-ad']:.1f} vs row {p['rowscale-ad']:.1f}")
    claim("1-bit FBI is competitive with BitNet b1.58 ternary at the same size (paper Table 2: FBI 1.3B "
          "beats BitNet b1.58 1.3B on perplexity)", p["fbi-ad"] <= p["ternary-ad"],
          f"FBI {p['fbi-ad']:.1f} vs ternary {p['ternary-ad']:.1f}")
    gap = abs(p["fbi-init-ad"] - p["fbi-ad"]) / p["fbi-ad"]
    claim("training from scratch is about as good as starting from the teacher's weights (section 5, "
          "flip-flop analysis; 'about' = within 10%)", gap <= 0.10,
          f"scratch {p['fbi-ad']:.1f} vs init {p['fbi-init-ad']:.1f}, {100 * gap:.0f}% apart")
    claim("binarization costs perplexity against the full-precision model of the same shape",
          p["fp-reference"] < p["fbi-ad"], f"FP {p['fp-reference']:.1f} vs FBI {p['fbi-ad']:.1f}")
    return lines


def main(argv=None):
    return run_cli(reproduce, build_parser().parse_args(argv))


def reproduce(args):
    steps = args.steps or (50 if args.fast else 150)
    if steps <= 0:
        raise TinyFBIError(f"--steps must be positive, got {steps}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    flags = common_flags(args, steps)
    results = {}
    results["fbi-ad"] = run_arm("fbi-ad", flags + ["--track-flips"], out)
    teacher = results["fbi-ad"]["teacher"]
    results["fp-reference"] = {"run": str(Path(teacher).parent), "val_ppl": results["fbi-ad"]["teacher_val_ppl"],
                               "val_loss": results["fbi-ad"]["teacher_val_loss"]}
    for name, (_, extra) in ARMS.items():
        if name == "fbi-ad":
            continue
        extra = [teacher if f == "TEACHER" else f for f in extra]
        results[name] = run_arm(name, flags + extra + (["--track-flips"] if "init" in name else []), out)
    tokens = results["fbi-ad"]["tokens_seen"]
    table = ["| arm | question | val loss | val ppl |", "|---|---|---|---|"]
    for name, r in results.items():
        question = ARMS[name][0] if name in ARMS else "(d) full precision, same shape (the teacher)"
        table.append(f"| {name} | {question} | {r['val_loss']:.3f} | {r['val_ppl']:.1f} |")
    s_flips, i_flips = flip_curve(out / "fbi-ad")[1], flip_curve(out / "fbi-init-ad")[1]
    tail = max(1, len(s_flips) // 5)
    flips_line = (f"Mean flip-flop ratio over the last 20% of steps: from scratch "
                  f"{100 * sum(s_flips[-tail:]) / tail:.3f}%, from the teacher's weights "
                  f"{100 * sum(i_flips[-tail:]) / tail:.3f}%.")
    report = "\n".join([
        f"# tinyfbi reproduction ({'fast' if args.fast else 'full'})", "",
        f"`python -m tinyfbi.reproduce{' --fast' if args.fast else ''}`: `tiny` shape "
        f"({results['fbi-ad']['params'] / 1e6:.2f}M parameters), {steps} steps x "
        f"{tokens // steps} tokens = {tokens:,} tokens per arm, seed {args.seed}, "
        f"data {results['fbi-ad']['data']}, tokenizer {results['fbi-ad']['tokenizer']}.", "",
        *table, "", flips_line, "", "What the numbers say about the paper's claims:", *verdicts(results), "",
        "![perplexity](ppl.png) ![flip-flop](flips.png) ![validation loss](loss.png)", ""])
    (out / "results.md").write_text(report)
    (out / "results.json").write_text(json.dumps({"steps": steps, "tokens_per_arm": tokens,
                                                  "fast": args.fast, "arms": results}, indent=2))
    plots(out, results)
    print("\n" + report)
    print(f"wrote {out}/results.md, results.json, ppl.png, flips.png, loss.png")
    return results


if __name__ == "__main__":
    main()

"""`tinyfbi.reproduce` runs every arm on the same budget and writes the table, verdicts and plots."""
import json

from tinyfbi.reproduce import ARMS, main


def test_reproduce_writes_table_and_plots(tmp_path):
    import pydoc_data.topics
    corpus = tmp_path / "topics.txt"
    corpus.write_text("\n\n".join(pydoc_data.topics.topics.values())[:200_000])
    out = tmp_path / "rep"
    main(["--fast", "--steps", "4", "--data", str(corpus), "--tokenizer", "byte", "--out", str(out),
          "--data-dir", str(tmp_path / "data")])
    results = json.loads((out / "results.json").read_text())
    assert set(results["arms"]) == set(ARMS) | {"fp-reference"}
    budgets = {r["tokens_seen"] for name, r in results["arms"].items() if name != "fp-reference"}
    assert budgets == {4 * 8 * 64}  # every arm saw the same number of tokens
    report = (out / "results.md").read_text()
    assert "| fbi-init-ad |" in report
    # each claim gets exactly one verdict, and the verdict follows from the perplexities in results.json
    verdicts = [line for line in report.splitlines() if line.startswith(("- supported:", "- NOT supported:"))]
    p = {name: r["val_ppl"] for name, r in results["arms"].items()}
    expected = [p["fbi-ad"] < p["fbi-ce"], p["fbi-ad"] <= p["fbi-mix"], p["fbi-ad"] < p["noscale-ad"],
                p["fbi-ad"] <= p["rowscale-ad"], p["fbi-ad"] <= p["ternary-ad"],
                abs(p["fbi-init-ad"] - p["fbi-ad"]) / p["fbi-ad"] <= 0.10, p["fp-reference"] < p["fbi-ad"]]
    assert [line.startswith("- supported:") for line in verdicts] == expected, verdicts
    for plot in ("ppl.png", "flips.png", "loss.png"):
        assert (out / plot).stat().st_size > 1000
    flips = [json.loads(line) for line in (out / "fbi-init-ad" / "metrics.jsonl").read_text().splitlines()]
    assert all(0 <= r["flips"]["all"] <= 1 for r in flips)

"""Perplexity (tinyfbi.evaluate) and the lm-eval adapter (tinyfbi.lm_eval_adapter), offline.

Oracles: the training forward `Model.forward` (not the KV-cache inference path the evaluators use)
and a direct cross-entropy. Same float32 weights; the two paths sum in another order, so rtol 1e-5
on perplexities and atol 1e-4 on summed log-likelihoods of a few dozen tokens.
"""
import json
import math
import time

import numpy as np
import pytest
import torch

from tinyfbi import Model, ModelConfig, save_model
from tinyfbi.core import layers as L
from tinyfbi.corpus.tokenizers import ByteTokenizer
from tinyfbi.evaluate import main as evaluate_main
from tinyfbi.evaluation.perplexity import window_plan

# byte-level, so the oracle tokenizes by hand: ids = UTF-8 bytes, no BOS
CFG = ModelConfig(vocab_size=256, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, intermediate_size=48, max_position_embeddings=64)
TEXT = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, "
        "must be in want of a wife.\n\nHowever little known the feelings or views of such a man may be "
        "on his first entering a neighbourhood, this truth is so well fixed in the minds of the "
        "surrounding families, that he is considered as the rightful property of some one or other "
        "of their daughters.\n")


def log_softmax(logits):
    """The oracle: torch's log_softmax in float64 (independent of tinyfbi's)."""
    return torch.log_softmax(torch.from_numpy(np.asarray(logits, np.float64)), dim=-1).numpy()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    model = Model(CFG, seed=0)
    save_model(model, folder, tokenizer=ByteTokenizer())
    return folder, model


def run_ok(capsys, argv):
    evaluate_main(argv)
    out = capsys.readouterr()
    return out.out, out.err


def run_cli(capsys, argv):
    with pytest.raises(SystemExit) as e:
        evaluate_main(argv)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


# ----------------------------------------------------------------------------- windows


def test_window_plan_gptq_and_sliding():
    # non-overlapping: N // L windows at i*L, each predicting its last L-1 tokens (GPTQ)
    assert window_plan(100, 16, 16) == [(i * 16, 1) for i in range(6)]
    # sliding: every position from 1 to the last window's end is predicted exactly once
    for n, seq, stride in [(100, 16, 4), (100, 16, 15), (37, 8, 3)]:
        plan = window_plan(n, seq, stride)
        scored = [b + j for b, skip in plan for j in range(skip, seq)]
        assert scored == list(range(1, plan[-1][0] + seq)), (n, seq, stride)
        assert all(skip == seq - stride for _, skip in plan[1:])


# ----------------------------------------------------------------------------- perplexity


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_ppl_of_local_file_is_exp_mean_ce(tmp_path, ckpt, capsys, backend):
    folder, model = ckpt
    path = tmp_path / "text.txt"
    path.write_text(TEXT)
    seq = 32
    out, _ = run_ok(capsys, ["--ckpt", str(folder), "--ppl", str(path), "--seq-len", str(seq),
                             "--batch-size", "3", "--backend", backend, "--json"])
    result = json.loads(out)["results"][str(path)]

    ids = np.frombuffer(TEXT.encode(), dtype=np.uint8).astype(np.int64)
    windows = ids[:len(ids) // seq * seq].reshape(-1, seq)                     # (N // L, L)
    ce, _ = L.cross_entropy_forward(model.forward(windows)[:, :-1], windows[:, 1:])
    assert result["windows"] == len(windows) and result["tokens"] == windows.size - len(windows)
    assert result["ppl"] == pytest.approx(math.exp(ce), rel=1e-5)


def test_ppl_clamps_seq_len_and_limits_windows(tmp_path, ckpt, capsys):
    folder, model = ckpt
    path = tmp_path / "text.txt"
    path.write_text(TEXT)
    out, err = run_ok(capsys, ["--ckpt", str(folder), "--ppl", str(path), "--seq-len", "2048",
                                "--max-windows", "2", "--stride", "48", "--json"])
    assert "clamped to the model's max_position_embeddings 64" in err
    r = json.loads(out)["results"][str(path)]
    assert (r["seq_len"], r["stride"], r["windows"], r["tokens"]) == (64, 48, 2, 63 + 48)
    ids = np.frombuffer(TEXT.encode(), dtype=np.uint8).astype(np.int64)
    x = np.stack([ids[0:64], ids[48:112]])
    logp = log_softmax(model.forward(x)[:, :-1])
    nll = -np.take_along_axis(logp, x[:, 1:, None], axis=-1)[..., 0]           # (2, 63)
    expected = np.concatenate([nll[0], nll[1, 63 - 48:]]).mean()              # window 2 scores its last 48
    assert r["ppl"] == pytest.approx(math.exp(expected), rel=1e-5)


def test_ptb_from_a_local_file_is_read_as_the_authors_get_ptb_does(tmp_path, ckpt, capsys):
    # ptb.test.txt: one sentence a line, each starting with a space; get_ptb joins them with " "
    folder, _ = ckpt
    lines = [" no it was n't black monday ", " but while the new york stock exchange did n't fall apart ",
             " some circuit breakers installed after the october N crash failed their first test "] * 8
    ptb = tmp_path / "ptb.test.txt"
    ptb.write_text("\n".join(lines) + "\n\n")
    joined = tmp_path / "joined.txt"
    joined.write_text(" ".join(line.strip() for line in lines))      # the oracle text, written out by hand
    out, _ = run_ok(capsys, ["--ckpt", str(folder), "--ppl", f"ptb:{ptb},{joined}", "--seq-len", "32", "--json"])
    results = json.loads(out)["results"]
    assert results[f"ptb:{ptb}"] == results[str(joined)]
    code, _, err = run_cli(capsys, ["--ckpt", str(folder), "--ppl", "ptb", "--seq-len", "32"])
    assert code == 2 and err.count("\n") == 1 and "could not load ptb" in err and "ptb:PATH" in err, err


def test_ppl_errors_offline_and_bad_input(tmp_path, ckpt, capsys, monkeypatch):
    folder, _ = ckpt
    # the hub dataset with HF_DATASETS_OFFLINE=1 (set by conftest): one line, in seconds
    start = time.time()
    code, out, err = run_cli(capsys, ["--ckpt", str(folder), "--ppl", "wikitext2", "--seq-len", "32"])
    assert code == 2 and err.count("\n") == 1 and "could not load wikitext2" in err, err
    assert time.time() - start < 20
    # not marked offline but no hub reachable: a probe fails at once instead of datasets' retries
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    code, out, err = run_cli(capsys, ["--ckpt", str(folder), "--ppl", "c4", "--seq-len", "64"])
    assert code == 2 and err.count("\n") == 1 and "cannot reach http://127.0.0.1:9" in err, err
    # without the datasets package
    monkeypatch.setitem(__import__("sys").modules, "datasets", None)
    code, out, err = run_cli(capsys, ["--ckpt", str(folder), "--ppl", "wikitext2"])
    assert code == 2 and "needs the datasets package" in err
    for argv, match in [(["--ppl", "x"], "--ckpt is required"),
                        (["--ckpt", str(folder), "--ppl", str(tmp_path / "nope.txt")], "nor a text file"),
                        (["--ckpt", str(folder), "--ppl", "wikitext2", "--stride", "0"], "--stride must be"),
                        (["--ckpt", str(tmp_path / "nothing"), "--ppl", "c4"], "does not exist")]:
        code, out, err = run_cli(capsys, argv + ["--seq-len", "64"])
        assert code == 2 and err.count("\n") == 1 and match in err, (argv, err)


# ----------------------------------------------------------------------------- lm-eval adapter

MC = [{"question": "The sky is", "choices": [" blue", " green", " loud"], "answer": 0},
      {"question": "Two plus two is", "choices": [" four", " five"], "answer": 0},
      {"question": "Water is", "choices": [" wet", " dry", " sharp"], "answer": 1}]
TASKS = {
    "mc.yaml": """task: tfbi_mc
dataset_path: json
dataset_kwargs: {data_files: {test: mc.jsonl}}
test_split: test
output_type: multiple_choice
doc_to_text: "{{question}}"
doc_to_choice: "{{choices}}"
doc_to_target: "{{answer}}"
metric_list: [{metric: acc}]
""",
    "gen.yaml": """task: tfbi_gen
dataset_path: json
dataset_kwargs: {data_files: {test: gen.jsonl}}
test_split: test
output_type: generate_until
doc_to_text: "{{prompt}}"
doc_to_target: "{{target}}"
generation_kwargs: {until: [STOP], max_gen_toks: 12, do_sample: false}
metric_list: [{metric: exact_match}]
""",
    "roll.yaml": """task: tfbi_roll
dataset_path: json
dataset_kwargs: {data_files: {test: roll.jsonl}}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{text}}"
metric_list: [{metric: word_perplexity}]
""",
}


def oracle_logprob(model, context_ids, cont_ids):
    """sum log p(cont | context) from the training forward, one sequence."""
    x = np.asarray([context_ids + cont_ids], dtype=np.int64)
    logp = log_softmax(model.forward(x[:, :-1])[0])
    rows = logp[len(context_ids) - 1:]
    return float(rows[np.arange(len(cont_ids)), cont_ids].sum())


def oracle_greedy(model, prompt, n):
    ids = list(prompt.encode())
    for _ in range(n):
        ids.append(int(np.argmax(model.forward(np.asarray([ids]))[0, -1])))
    return bytes(ids[len(prompt.encode()):]).decode("utf-8", errors="replace")


def test_lm_eval_adapter_offline_tasks(tmp_path, ckpt, monkeypatch):
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.api.registry import get_model
    from lm_eval.tasks import TaskManager

    from tinyfbi.lm_eval_adapter import TinyFBILM
    assert get_model("tinyfbi") is TinyFBILM
    folder, model = ckpt

    # a stop string that the greedy continuation reaches after a few characters
    prompts = ["Once upon a", "Hello"]
    free = [oracle_greedy(model, p, 12) for p in prompts]
    k = next(i for i in range(2, 10) if free[0][i].isascii() and free[0][i] not in free[0][:i])
    stop = free[0][k]
    long_text = TEXT * 2                                                         # > max_length: 5 windows
    monkeypatch.chdir(tmp_path)                                                  # data_files are relative
    (tmp_path / "tasks").mkdir()
    for name, yaml in TASKS.items():
        (tmp_path / "tasks" / name).write_text(yaml.replace("STOP", json.dumps(stop)))
    for name, rows in [("mc", MC), ("gen", [{"prompt": p, "target": " time"} for p in prompts]),
                       ("roll", [{"text": "Water is wet."}, {"text": long_text}])]:
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    res = lm_eval.simple_evaluate(model="tinyfbi", model_args=f"ckpt={folder},batch_size=2",
                                  tasks=["tfbi_mc", "tfbi_gen", "tfbi_roll"], bootstrap_iters=0,
                                  task_manager=TaskManager(include_path="tasks", include_defaults=False),
                                  log_samples=True, verbosity="ERROR")
    samples = res["samples"]

    # loglikelihood: every (context, continuation) against the training forward
    correct = 0
    for doc, sample in zip(MC, sorted(samples["tfbi_mc"], key=lambda s: s["doc_id"])):
        scores = []
        for (context, continuation), ((logprob, greedy),) in zip(sample["arguments"], sample["resps"]):
            expected = oracle_logprob(model, list(context.encode()), list(continuation.encode()))
            assert logprob == pytest.approx(expected, abs=1e-4)
            scores.append(expected)
        correct += int(np.argmax(scores) == doc["answer"])
    assert res["results"]["tfbi_mc"]["acc,none"] == pytest.approx(correct / len(MC))

    # generate_until: KV-cache greedy = full-forward greedy, cut before the stop string
    gen = sorted(samples["tfbi_gen"], key=lambda s: s["doc_id"])
    assert [s["resps"][0][0] for s in gen] == [f.split(stop)[0] for f in free]
    assert gen[0]["resps"][0][0] == free[0][:k]

    # loglikelihood_rolling: log p(text | "\n") over the whole text (several windows for the long one)
    roll = sorted(samples["tfbi_roll"], key=lambda s: s["doc_id"])
    short = list("Water is wet.".encode())
    assert roll[0]["resps"][0][0] == pytest.approx(oracle_logprob(model, [10], short), abs=1e-4)
    from lm_eval import utils
    ids = list(long_text.encode())
    windows = [utils.make_disjoint_window(w) for w in
               utils.get_rolling_token_windows(ids, prefix_token=10, max_seq_len=64, context_len=1)]
    assert len(windows) == math.ceil(len(ids) / 64)
    expected = sum(oracle_logprob(model, c, t) for c, t in windows)
    assert roll[1]["resps"][0][0] == pytest.approx(expected, abs=1e-3)


def byte_tokenizer_for_transformers():
    """tinyfbi's byte tokenizer (id = UTF-8 byte) as a transformers tokenizer, built with `tokenizers`:
    a BPE without merges over the 256 byte symbols of the ByteLevel alphabet, so ids are byte values."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    byte_of = {ch: b for b, ch in enumerate(sorted(alphabet, key=lambda c: bytes_to_unicode_inverse(c)))}
    tok = Tokenizer(models.BPE(vocab=byte_of, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    newline = next(ch for ch, b in byte_of.items() if b == 10)   # what both condition an empty context on
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=newline)


def bytes_to_unicode_inverse(ch):
    """GPT-2's byte -> printable character table, inverted (what ByteLevel maps byte b to)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[chr(b)] = b
        else:
            table[chr(256 + extra)] = b
            extra += 1
    return table[ch]


def test_exported_checkpoint_scores_in_lm_evals_hf_model_what_the_adapter_scores(tmp_path, ckpt, monkeypatch):
    lm_eval = pytest.importorskip("lm_eval")
    pytest.importorskip("accelerate")   # lm-eval's hf model needs it: it is in requirements.txt
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from tinyfbi.export import main as export_main
    from tinyfbi.lm_eval_adapter import TinyFBILM  # noqa: F401  (registers the adapter as `tinyfbi`)
    folder, _ = ckpt
    tok = byte_tokenizer_for_transformers()
    assert tok("The sky is blue")["input_ids"] == list(b"The sky is blue")       # the same ids as tinyfbi's
    export_main(["--hf", str(folder), str(tmp_path / "hf")])
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "mc.yaml").write_text(TASKS["mc.yaml"])
    (tmp_path / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in MC))
    scores = {}
    for name, model in (("adapter", "tinyfbi"),
                        ("hf", HFLM(pretrained=str(tmp_path / "hf"), tokenizer=tok, batch_size=2, device="cpu",
                                    dtype="float32", add_bos_token=False))):
        res = lm_eval.simple_evaluate(model=model, model_args=f"ckpt={folder}" if name == "adapter" else None,
                                      tasks=["tfbi_mc"], bootstrap_iters=0, log_samples=True, verbosity="ERROR",
                                      task_manager=TaskManager(include_path="tasks", include_defaults=False))
        scores[name] = ([r[0][0] for s in sorted(res["samples"]["tfbi_mc"], key=lambda s: s["doc_id"])
                         for r in s["resps"]], res["results"]["tfbi_mc"]["acc,none"])
    # the same float32 model in two runtimes (tinyfbi's NumPy inference, transformers' torch): sums in
    # another order, log-probabilities of a few bytes each
    np.testing.assert_allclose(scores["hf"][0], scores["adapter"][0], atol=1e-4)
    assert scores["hf"][1] == scores["adapter"][1]

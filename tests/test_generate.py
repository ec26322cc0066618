"""`python -m tinyfbi.generate` as a person uses it: a Hugging Face name from the local cache (packed on
first use, reused after, a one-line error when absent) and --chat (a KV cache kept across turns)."""
import hashlib
import io
import os
import subprocess
import sys

import numpy as np
import pytest
from huggingface_hub import constants
from released import write_released

from tinyfbi import Model, ModelConfig
from tinyfbi.corpus.tokenizers import ByteTokenizer, SentencePieceTokenizer
from tinyfbi.generate import chat
from tinyfbi.generate import main as generate_main
from tinyfbi.runtime.inference import FloatRunner, Session, generate

REPO, COMMIT = "tinyfbi-tests/FBI-LLM_tiny", "0123456789abcdef0123456789abcdef01234567"


def tiny_released(folder, vocab_size, seed=0):
    """A released-layout FBI-LLM (fp32 latent weights, some exactly 0, wscale/wbias) of `vocab_size` tokens."""
    cfg = ModelConfig(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4, intermediate_size=96, max_position_embeddings=64)
    model = Model(cfg, seed=seed)
    for name in model.binarized_names:
        model.params[name][np.random.default_rng(seed).random(model.params[name].shape) < 0.05] = 0.0
    return write_released(folder, model, "safetensors-sharded")


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """$HF_HUB_CACHE as huggingface_hub lays it out: models--owner--name/{refs/main, blobs/<sha256>,
    snapshots/<commit>/<file> -> ../../blobs/<sha256>}, holding a released-layout checkpoint and its
    LLaMA-style sentencepiece tokenizer.model; and $TINYFBI_CACHE for the packed copy."""
    import pydoc_data.topics
    src = tiny_released(tmp_path / "src", 400)
    SentencePieceTokenizer.train("\n".join(pydoc_data.topics.topics.values())[:60000], 400).save(src)
    repo = tmp_path / "hub" / f"models--{REPO.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    (repo / "blobs").mkdir()
    (repo / "snapshots" / COMMIT).mkdir(parents=True)
    for f in src.iterdir():
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (repo / "snapshots" / COMMIT / f.name).symlink_to(os.path.relpath(blob, repo / "snapshots" / COMMIT))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))    # read by huggingface_hub per call
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))                 # for a child process
    monkeypatch.setenv("TINYFBI_CACHE", str(tmp_path / "packed"))
    return tmp_path


def test_hub_name_packs_once_then_chats_with_a_kept_cache(hub_cache, monkeypatch, capsys):
    # the command as a person runs it, two lines piped in: packs into $TINYFBI_CACHE, answers each line
    run = subprocess.run([sys.executable, "-m", "tinyfbi.generate", "--ckpt", REPO, "--chat", "--verbose", "--greedy",
                          "--max-new-tokens", "6"], input="The class\nfor example\n", capture_output=True, text=True,
                         timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stderr
    packed = hub_cache / "packed" / f"{REPO.replace('/', '--')}-{COMMIT}.fbipack"
    assert packed.is_file() and "packing" in run.stderr
    tok = SentencePieceTokenizer.from_file(hub_cache / "src" / "tokenizer.model")
    positions = [int(line.split()[2]) for line in run.stderr.splitlines() if line.startswith("[kv cache:")]
    # turn 1: its tokens and 6 sampled; turn 2 appends only its own tokens (with the newline) and 6 more
    assert positions == [len(tok.encode("The class")) + 6, len(tok.encode("The class")) + 12 + len(tok.encode("\nfor example"))]
    assert len(run.stdout.splitlines()) == 2

    # again, in this process: the packed file is reused, the answer the same
    mtime = packed.stat().st_mtime_ns
    monkeypatch.setattr(sys, "stdin", io.StringIO("The class\nfor example\n"))
    generate_main(["--ckpt", REPO, "--chat", "--greedy", "--max-new-tokens", "6"])
    out = capsys.readouterr()
    assert out.out == run.stdout and "packing" not in out.err and packed.stat().st_mtime_ns == mtime

    # not in the cache: one line naming the repo, the folder searched and how to get it
    with pytest.raises(SystemExit):
        generate_main(["--ckpt", "nobody/FBI-LLM_missing", "--prompt", "x"])
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nobody/FBI-LLM_missing" in err and "models--nobody--FBI-LLM_missing" in err
    assert "hf download nobody/FBI-LLM_missing" in err


def test_chat_appends_each_turn_to_the_kv_cache():
    """Each turn runs only its new tokens (counted at the model) and continues as if the whole text had
    been given at once (greedy, float runner: the same tokens); an empty line continues, /reset empties
    the cache, the end of input returns."""
    model = Model(ModelConfig(vocab_size=256, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2, intermediate_size=48, max_position_embeddings=64), seed=1)
    runner, tok = FloatRunner(model), ByteTokenizer()
    fed = []
    forward = runner.forward
    runner.forward = lambda tokens, cache, last_only=False: fed.append(tokens.shape[1]) or forward(tokens, cache, last_only)
    session, out, log = Session(runner, greedy=True), io.StringIO(), io.StringIO()
    chat(session, tok, io.StringIO("ROMEO:\nJuliet\n"), out, 4, log)
    # turn 2: its 7 tokens ("\nJuliet") in one call, then one per sampled token; never the history again
    assert fed == [6, 1, 1, 1, 1, 7, 1, 1, 1, 1]
    first = generate(runner, tok.encode("ROMEO:"), 4, greedy=True)
    whole = generate(runner, first + tok.encode("\nJuliet"), 4, greedy=True)
    assert session.ids == whole and len(out.getvalue().splitlines()) == 2
    chat(session, tok, io.StringIO("\n/reset\nab\n"), out, 4, log)
    assert session.ids == generate(runner, tok.encode("ab"), 4, greedy=True)
    positions = [int(line.split()[2]) for line in log.getvalue().splitlines()]
    assert positions == [6 + 4, 10 + 7 + 4, 21 + 4, 0, 2 + 4]

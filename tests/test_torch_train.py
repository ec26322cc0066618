"""The torch backend (tinyfbi.torch_backend) against the NumPy one: same batches, same loss curves,
checkpoints that move between them, a Hugging Face LLaMA folder as teacher, and the --dry-run plan.

Tolerances, float32 on a CPU (measured):
- step 1 (same init, same batch, no update yet): the losses differ by ~1e-7 relative; bound 1e-6.
- 20 steps of a binarized student at lr 1e-3: the two BLAS libraries sum in different orders, and
  AdamW's first steps move a weight by a full lr in the direction of its gradient's sign, so a
  latent weight near zero can flip sign in one backend and not the other. Measured max over the 20
  steps, across seeds 0-3, batches 4 and 8 and losses ce/mix/ad: 1e-7 to 2e-4; bound 1e-3. A
  full-precision model agrees to 2e-7. (At the tiny preset's default lr 2e-3 the binarized curves
  drifted up to 1.4e-3 apart around step 17: the bound is for lr 1e-3.)
- a trained checkpoint's logits and gradients: as tests/test_model.py (atol 1e-4 on logits,
  1e-4 x the largest entry on each gradient).
"""
import json
import shutil

import numpy as np
import pytest
import torch
from conftest import metrics, poison_batch

from tinyfbi import Model, ModelConfig, load_model, save_model
from tinyfbi.core import layers as L
from tinyfbi.core.compare import assert_close
from tinyfbi.formats import run_checkpoint
from tinyfbi.train import main

SMALL_RUN = ["--tokenizer", "byte", "--batch-size", "4", "--seq-len", "64", "--eval-every", "10",
             "--eval-batches", "2", "--sample-tokens", "4", "--lr", "1e-3", "--save-every", "10"]


def run(*argv):
    return main([str(a) for a in argv])


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def rel(a, b):
    return abs(a - b) / abs(b)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A small full-precision byte-level teacher checkpoint (random weights: the curves, not the
    quality, are under test)."""
    from tinyfbi.corpus.tokenizers import ByteTokenizer
    path = tmp_path_factory.mktemp("teacher") / "t"
    config = ModelConfig(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=4, intermediate_size=128, max_position_embeddings=128, binarized=False)
    save_model(Model(config, seed=5), path, tokenizer=ByteTokenizer())
    return path


@pytest.fixture(scope="module")
def runs(corpus, teacher, tmp_path_factory):
    """20 steps in each backend, same flags; each run's step-10 checkpoint is kept aside."""
    out = tmp_path_factory.mktemp("runs")
    real = run_checkpoint.RunCheckpointWriter.finish

    def finish_and_keep_step_10(writer, trainer_state, optimizer_step):
        final = real(writer, trainer_state, optimizer_step)
        if trainer_state["step"] == 10:
            shutil.copytree(final, out / "step10" / writer.run_dir.name)
        return final

    summaries = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(run_checkpoint.RunCheckpointWriter, "finish", finish_and_keep_step_10)
        for backend in ("numpy", "torch"):
            summaries[backend] = run("--backend", backend, "--name", backend, "--data", corpus, "--data-dir",
                                     out / "data", "--out", out, "--steps", 20, "--loss", "mix", "--teacher",
                                     teacher, *SMALL_RUN)
    return out, summaries


def test_numpy_and_torch_see_the_same_batches_and_trace_the_same_curve(runs):
    out, summaries = runs
    a, b = metrics(out / "numpy" / "metrics.jsonl"), metrics(out / "torch" / "metrics.jsonl")
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, 21))
    assert set(a[0]) == set(b[0]) and set(a[-1]) == set(b[-1])          # the same metrics fields
    assert rel(b[0]["loss"], a[0]["loss"]) < 1e-6                        # same init, same first batch
    assert max(rel(y["loss"], x["loss"]) for x, y in zip(a, b)) < 1e-3
    assert max(rel(y["lr"], x["lr"]) for x, y in zip(a, b)) < 1e-12      # the same schedule
    assert rel(summaries["torch"]["val_loss"], summaries["numpy"]["val_loss"]) < 1e-3
    assert rel(summaries["torch"]["teacher_val_loss"], summaries["numpy"]["teacher_val_loss"]) < 1e-6
    assert summaries["torch"]["backend"] == "torch" and summaries["torch"]["rollbacks"] == 0
    for name in ("loss.png", "summary.json", "checkpoint/optimizer.safetensors", "checkpoint/trainer.json"):
        assert (out / "torch" / name).is_file(), name
    np_state = json.loads((out / "numpy" / "checkpoint" / "trainer.json").read_text())
    torch_state = json.loads((out / "torch" / "checkpoint" / "trainer.json").read_text())
    assert set(np_state) == set(torch_state) and torch_state["optimizer_step"] == np_state["optimizer_step"] == 20


@pytest.mark.parametrize("src,dst", [("numpy", "torch"), ("torch", "numpy")])
def test_checkpoint_resumes_in_the_other_backend(runs, teacher, corpus, src, dst):
    out, _ = runs
    run_dir = out / f"{src}-to-{dst}"
    shutil.copytree(out / "step10" / src, run_dir / "checkpoint")
    shutil.copy(out / src / "metrics.jsonl", run_dir / "metrics.jsonl")
    run("--backend", dst, "--resume", "--name", run_dir.name, "--data", corpus, "--data-dir", out / "data",
        "--out", out, "--steps", 20, "--loss", "mix", "--teacher", teacher, *SMALL_RUN)
    resumed, whole = metrics(run_dir / "metrics.jsonl"), metrics(out / src / "metrics.jsonl")
    assert [r["step"] for r in resumed] == list(range(1, 21))
    assert resumed[:10] == whole[:10]                                    # the log up to the checkpoint is kept
    assert rel(resumed[10]["loss"], whole[10]["loss"]) < 1e-5            # same state, same batch: one step of noise
    assert max(rel(x["loss"], y["loss"]) for x, y in zip(resumed[10:], whole[10:])) < 1e-3


def test_trained_checkpoint_gives_the_same_logits_and_gradients_in_both_backends(runs):
    from tinyfbi.formats.checkpoint import load_checkpoint
    from tinyfbi.torch_backend.model import TorchModel
    out, _ = runs
    model = load_model(out / "torch")                 # a checkpoint the torch backend wrote
    config, params, _ = load_checkpoint(out / "torch" / "checkpoint")
    t_model = TorchModel(config).load_numpy_params(params)
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, (2, 16))
    loss, cache = L.cross_entropy_forward(model.forward(tokens[:, :-1]), tokens[:, 1:])
    grads = model.backward(L.cross_entropy_backward(cache))
    t_logits = t_model(torch.from_numpy(tokens[:, :-1]))
    t_loss = torch.nn.functional.cross_entropy(t_logits.flatten(0, 1), torch.from_numpy(tokens[:, 1:]).flatten())
    t_loss.backward()
    assert_close(loss, t_loss.item(), rtol=1e-5, atol=0, name="loss")
    assert_close(model.forward(tokens[:, :-1]), t_logits.detach().numpy(), rtol=1e-3, atol=1e-4, name="logits")
    for name, p in t_model.named_parameters():
        assert_close(grads[name], p.grad.numpy(), rtol=0, atol=1e-4 * np.abs(p.grad.numpy()).max(), name=name)


def test_nan_loss_rolls_back_and_skips_the_batch(corpus, tmp_path, monkeypatch, capsys):
    from tinyfbi.torch_backend.learner import TorchLearner
    poison_batch(monkeypatch, TorchLearner, data_step=7)
    summary = run("--backend", "torch", "--data", corpus, "--data-dir", tmp_path / "data", "--out", tmp_path,
                  "--steps", 12, "--loss", "ce", "--teacher", "none", *SMALL_RUN, "--save-every", 5,
                  "--batch-size", 4, "--seq-len", 32)
    assert summary["rollbacks"] == 1 and np.isfinite(summary["val_loss"])
    assert "rolled back to the checkpoint at step 5 and skipped batch 7" in capsys.readouterr().out
    assert [r["step"] for r in metrics(tmp_path / "tiny-ce" / "metrics.jsonl")] == list(range(1, 13))
    state = json.loads((tmp_path / "tiny-ce" / "checkpoint" / "trainer.json").read_text())
    assert state["skipped"] == [7] and state["data_step"] == 13


# --------------------------------------------------------------------------- Hugging Face teacher


def write_hf_llama(folder, config: ModelConfig, params: dict, tokenizer):
    """A folder laid out like meta-llama/Llama-2-7b-hf: LlamaConfig json, fp16 weights in two .bin
    shards with an index (and the rotary_emb.inv_freq buffers old transformers saved), tokenizer.model."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size, "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads, "num_key_value_heads": config.num_key_value_heads,
        "max_position_embeddings": config.max_position_embeddings, "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False, "torch_dtype": "float16", "bos_token_id": 1, "eos_token_id": 2}))
    state = {k: torch.from_numpy(v.astype(np.float16)) for k, v in params.items()}
    for i in range(config.num_hidden_layers):
        state[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = torch.ones(config.head_dim // 2)
    names = list(state)
    shards = {"pytorch_model-00001-of-00002.bin": names[:len(names) // 2],
              "pytorch_model-00002-of-00002.bin": names[len(names) // 2:]}
    for file, keys in shards.items():
        torch.save({k: state[k] for k in keys}, folder / file)
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: f for f, keys in shards.items() for k in keys}}))
    tokenizer.save(folder)


@pytest.fixture(scope="module")
def hf_teacher(corpus, tmp_path_factory):
    from tinyfbi.corpus.tokenizers import SentencePieceTokenizer
    tok = SentencePieceTokenizer.train(corpus.read_text(), 400)
    config = ModelConfig(vocab_size=400, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=96, max_position_embeddings=256, binarized=False)
    params = Model(config, seed=3).params
    folder = tmp_path_factory.mktemp("hf") / "Llama-tiny-hf"
    write_hf_llama(folder, config, params, tok)
    return folder, config, {k: v.astype(np.float16).astype(np.float32) for k, v in params.items()}


def test_hf_llama_folder_teaches_the_student_with_its_own_tokenizer(hf_teacher, corpus, tmp_path):
    from tinyfbi.corpus.batches import BatchSampler
    from tinyfbi.corpus.sources import load_corpus
    from tinyfbi.corpus.token_files import tokenize_corpus
    from tinyfbi.corpus.tokenizers import load_tokenizer
    from tinyfbi.torch_backend.backend import load_teacher_torch
    from tinyfbi.torch_backend.distributed import Dist
    folder, config, params = hf_teacher
    reference = Model(config, params=params)           # the fp16 weights, widened, in NumPy
    teacher = load_teacher_torch(folder, Dist(), sharded=False)
    x = np.random.default_rng(1).integers(0, 400, (2, 24))
    assert_close(teacher(torch.from_numpy(x)).numpy(), reference.forward(x), rtol=1e-3, atol=1e-4, name="logits")

    summary = run("--backend", "torch", "--teacher", folder, "--loss", "ad", "--data", corpus, "--data-dir",
                  tmp_path / "data", "--out", tmp_path, "--steps", 3, "--batch-size", 4, "--seq-len", 32,
                  "--eval-every", 3, "--eval-batches", 1, "--sample-tokens", 2)
    cfg = json.loads((tmp_path / "tiny-ad" / "checkpoint" / "config.json").read_text())
    assert cfg["vocab_size"] == 400 and cfg["fbi"]["tokenizer"]["kind"] == "sentencepiece"
    assert (tmp_path / "tiny-ad" / "checkpoint" / "tokenizer.model").is_file()
    # step 1 is the distillation loss of the seed-0 student against this teacher on batch 0
    tok = load_tokenizer(folder)
    train_tokens, _ = tokenize_corpus(load_corpus(str(corpus), tmp_path / "data"), tok, tmp_path / "data")
    xb, _ = BatchSampler(train_tokens, 4, 32, seed=0).batch(0)
    student = Model(ModelConfig.from_name("tiny", vocab_size=400), seed=0)
    expected, _ = L.distill_forward(student.forward(xb), L.softmax(reference.forward(xb)))
    assert rel(metrics(tmp_path / "tiny-ad" / "metrics.jsonl")[0]["loss"], expected) < 1e-5
    assert summary["teacher"] == str(folder)


def test_teacher_with_another_vocabulary_is_one_line_error(hf_teacher, corpus, tmp_path, capsys):
    folder, _, _ = hf_teacher
    other = tmp_path / "other-hf"
    shutil.copytree(folder, other)
    cfg = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**cfg, "vocab_size": 300}))
    with pytest.raises(SystemExit) as e:
        run("--backend", "torch", "--teacher", other, "--data", corpus, "--data-dir", tmp_path / "data",
            "--out", tmp_path, "--steps", 2, "--batch-size", 4, "--seq-len", 32)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and "vocabulary 300" in err, err


@pytest.mark.parametrize("flags,message", [
    (["--batch-size", "6", "--grad-accum", "4"], "must be divisible"),
    (["--size", "1.3b", "--teacher", "auto"], "give --teacher PATH"),
    pytest.param(["--cpu-offload"], "needs CUDA",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="offload runs on a GPU")),
])
def test_bad_torch_flags_are_one_line_errors(flags, message, tmp_path, capsys, corpus):
    with pytest.raises(SystemExit) as e:
        run("--backend", "torch", "--data", corpus, "--data-dir", tmp_path, "--out", tmp_path, "--tokenizer",
            "byte", *flags)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and message in err, err


# --------------------------------------------------------------------------- --dry-run


@pytest.mark.parametrize("size,world", [("7b", 8), ("13b", 16)])
def test_dry_run_counts_bits_and_memory(size, world, capsys):
    import time
    t0 = time.perf_counter()
    p = run("--backend", "torch", "--size", size, "--dry-run", "--world-size", world, "--json")
    assert time.perf_counter() - t0 < 10                                 # meta device: no storage, seconds
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(p))   # one JSON object
    config = ModelConfig.from_name(size)
    n = p["params"]
    assert n["total"] == config.num_params() == n["binarized"] + n["scales"] + n["full_precision"]
    assert n["binarized"] == config.num_hidden_layers * sum(o * i for o, i in config.linear_shapes().values())
    assert n["scales"] == config.num_hidden_layers * 2 * sum(i for _, i in config.linear_shapes().values())
    assert 1.0 < p["bits_per_param"]["binarized_layers"] < 1.01          # the paper's "1.01 bits"
    assert 1.2 < p["bits_per_param"]["whole_model"] < 1.7                # + fp16 embeddings and lm_head
    m = p["memory_gib_per_gpu"]
    assert p["parallel"] == "fsdp" and p["activation_checkpointing"] and p["seq_len"] == 2048
    assert m["weights"] == pytest.approx(4 * n["total"] / world / 2**30)
    assert m["optimizer"] == pytest.approx(2 * m["weights"]) and m["gradients"] == pytest.approx(m["weights"])
    assert m["teacher"] >= 2 * 6.738e9 / world / 2**30                  # LLaMA-2-7B in bf16, sharded
    assert m["total"] == pytest.approx(sum(v for k, v in m.items() if k != "total"))
    assert p["activations_gib"]["with_checkpointing"] < p["activations_gib"]["without_checkpointing"] / 5


def test_dry_run_text_and_cpu_offload(capsys):
    p = run("--backend", "torch", "--size", "7b", "--dry-run", "--world-size", "1", "--cpu-offload")
    text = capsys.readouterr().out
    assert "bits per parameter: 1.0056 over the binarized layers" in text and "6,740,692,992" in text
    assert p["memory_gib_per_gpu"]["weights"] == 0 and p["host_gib"]["per_process_offload"] > 100


@pytest.mark.parametrize("fsdp", [False, True])
def test_activation_estimate_matches_what_autograd_saves(fsdp):
    """The plan's bytes per layer against the tensors autograd really keeps for the backward
    (CPU bf16 autocast; float32 master weights for DDP, bf16 weights as FSDP's mixed precision gives)."""
    from tinyfbi.torch_backend.model import TorchModel
    from tinyfbi.torch_backend.planner import count_params, memory_per_gpu

    def saved_bytes(config, fused):
        model = TorchModel(config).to(torch.bfloat16 if fsdp else torch.float32).use_fused_linear(fused)
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        seen = {}

        def pack(t):
            if t.untyped_storage().data_ptr() not in params:
                seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", torch.bfloat16):
            model(torch.zeros(2, 64, dtype=torch.long))
        return sum(seen.values())

    config = ModelConfig(vocab_size=64, hidden_size=96, num_hidden_layers=1, num_attention_heads=4,
                         num_key_value_heads=4, intermediate_size=160, max_position_embeddings=64)
    for fused in (True, False):
        measured = saved_bytes(config.replace(num_hidden_layers=3), fused) - saved_bytes(config, fused)  # two layers
        planned = memory_per_gpu(config, count_params(config), None, 1, fsdp, False, 2, 64, False, False, fused)
        assert measured == pytest.approx(2 * planned["activations_without_checkpointing"], rel=0.02), fused


def test_gpu_check_runs_its_cases_and_refuses_without_a_gpu(tmp_path, capsys):
    """The GPU check's logic at CPU sizes (the figures need a GPU; none is lent to CI)."""
    from tinyfbi.bench.gpu import main as bench_gpu
    out = tmp_path / "bench.json"
    bench_gpu(["--device", "cpu", "--sizes", "tiny", "--teacher-size", "tiny", "--seq-len", "32",
               "--micro-batch", "2", "--fbi-linear", "both", "--head-loss", "both", "--compile", "off",
               "--out", str(out)])
    rows = json.loads(out.read_text())["results"]
    assert [(r["fbi_linear"], r["head_loss"]) for r in rows] == [("fused", "fused"), ("fused", "unfused"),
                                                                  ("unfused", "fused"), ("unfused", "unfused")]
    assert all(r["tok_s"] > 0 and np.isfinite(r["loss"]) and r["planned_memory_gib"] > 0 for r in rows)
    # the same model, data and steps: the two FBI-Linears and the two head losses differ only in where bf16 rounds
    assert all(abs(r["loss"] - rows[0]["loss"]) / rows[0]["loss"] < 1e-2 for r in rows)
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit) as e:
            bench_gpu(["--out", str(tmp_path / "x.json")])
        assert e.value.code == 2 and "no CUDA GPU is visible" in capsys.readouterr().err


def test_a_run_that_cannot_fit_rank_0s_host_memory_is_refused_before_allocating(corpus, tmp_path, capsys,
                                                                               monkeypatch):
    from tinyfbi.torch_backend import backend
    monkeypatch.setattr(backend, "available_host_bytes", lambda: 16 << 30)   # a 16 GiB machine
    with pytest.raises(SystemExit) as e:
        run("--backend", "torch", "--size", "7b", "--teacher", "none", "--loss", "ce", "--data", corpus,
            "--tokenizer", "byte", "--out", tmp_path)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1, err
    assert "rank 0 needs about 31.1 GiB of host memory" in err and "16.0 GiB available" in err
    assert not (tmp_path / "7b-ce").exists()

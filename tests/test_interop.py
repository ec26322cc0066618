"""Released FBI-LLM / Hugging Face LLaMA folders in (tinyfbi.formats.checkpoint, hf_folder), dequantized HF folders out
(tinyfbi.export).

The released checkpoints are imitated exactly (tests/released.py). Tolerances: the NumPy model from a folder must give
bit-identical logits to the model the folder was written from (same float32 maths); torch and
transformers compute in another order, so atol 1e-5 / rtol 1e-5 on logits of size ~1 (measured
differences are about 1e-7).
"""
import json
import os

import numpy as np
import pytest
import torch
from released import released_config, write_released

from tinyfbi import Model, ModelConfig, TinyFBIError, load_model, save_model
from tinyfbi.export import main as export_main
from tinyfbi.formats.hf_folder import config_from_hf, load_hf_state_dict
from tinyfbi.torch_backend.backend import load_torch_model

CFG = ModelConfig(vocab_size=512, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=4, intermediate_size=48, max_position_embeddings=32)
TOKENS = np.random.default_rng(1).integers(0, CFG.vocab_size, (2, 12))


def source_model(cfg=CFG, seed=0):
    model = Model(cfg, seed=seed)
    rng = np.random.default_rng(seed + 7)
    for name, p in model.params.items():  # scales and norms off their init values
        if name.endswith((".wscale", ".wbias")) or "norm" in name:
            p += (rng.standard_normal(p.shape) * 0.05).astype(p.dtype)
    return model


def torch_logits(tmodel, tokens=TOKENS):
    with torch.no_grad():
        return tmodel(torch.from_numpy(tokens)).numpy()


@pytest.mark.parametrize("layout", ["bin", "bin-sharded", "safetensors", "safetensors-sharded"])
def test_released_layout_loads_into_both_backends(tmp_path, layout):
    model = source_model()
    folder = write_released(tmp_path / "FBI-LLM_test", model, layout)
    expected = model.forward(TOKENS)

    config = config_from_hf(folder)
    assert config == CFG.replace(sign_of_zero=0)  # binarized, column scaling and the authors' sign(0) = 0 inferred
    state = load_hf_state_dict(folder)
    assert not any("inv_freq" in k for k in state) and set(state) == set(model.params)

    np.testing.assert_array_equal(load_model(folder).forward(TOKENS), expected)
    np.testing.assert_allclose(torch_logits(load_torch_model(folder)), expected, atol=1e-5, rtol=1e-5)


def test_plain_llama_teacher_fp16_and_bf16(tmp_path):
    """A full-precision LLaMA folder (as Llama-2-7b-hf: fp16 .bin shards) is a teacher: no wscale,
    so not binarized; widened to float32. bf16 safetensors (which NumPy cannot hold) read too."""
    teacher = source_model(CFG.replace(binarized=False))
    fp16 = write_released(tmp_path / "llama-fp16", teacher, "bin-sharded", torch.float16)
    bf16 = write_released(tmp_path / "llama-bf16", teacher, "safetensors", torch.bfloat16)
    for folder, dtype in ((fp16, torch.float16), (bf16, torch.bfloat16)):
        assert config_from_hf(folder).binarized is False
        model = load_model(folder)
        rounded = {k: torch.from_numpy(v).to(dtype).float().numpy() for k, v in teacher.params.items()}
        for name, value in model.params.items():
            assert value.dtype == np.float32
            np.testing.assert_array_equal(value, rounded[name], err_msg=name)
        np.testing.assert_allclose(torch_logits(load_torch_model(folder)), model.forward(TOKENS),
                                   atol=1e-5, rtol=1e-5)


def test_interop_errors_are_one_line(tmp_path):
    model = source_model()
    folder = write_released(tmp_path / "ok", model, "safetensors-sharded")

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps(released_config(CFG)))
    with pytest.raises(TinyFBIError, match="no weights in"):
        load_model(empty)

    shard = folder / "model-00002-of-00002.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[:len(data) // 2])
    with pytest.raises(TinyFBIError, match="truncated or corrupted"):
        load_model(folder)
    shard.unlink()
    with pytest.raises(TinyFBIError, match="names shard model-00002-of-00002.safetensors"):
        load_model(folder)

    broken = write_released(tmp_path / "bin", model, "bin")
    (broken / "pytorch_model.bin").write_bytes(b"not a zip file")
    with pytest.raises(TinyFBIError, match="truncated, corrupted or not a state dict"):
        load_model(broken)

    missing = Model(CFG, params={k: v for k, v in model.params.items()
                                 if k != "model.layers.1.mlp.down_proj.wscale"})
    write_released(tmp_path / "missing", missing, "safetensors")
    with pytest.raises(TinyFBIError, match="lacks tensor 'model.layers.1.mlp.down_proj.wscale'"):
        load_model(tmp_path / "missing")

    scaled = write_released(tmp_path / "scaled", model, "safetensors")
    cfg = json.loads((scaled / "config.json").read_text())
    (scaled / "config.json").write_text(json.dumps({**cfg, "rope_scaling": {"type": "linear", "factor": 2.0}}))
    with pytest.raises(TinyFBIError, match="rope_scaling"):
        load_model(scaled)

    extra = Model(CFG, params={**model.params, "model.layers.0.self_attn.q_proj.bias": np.zeros(32, np.float32)})
    write_released(tmp_path / "extra", extra, "bin")
    with pytest.raises(TinyFBIError, match="does not describe.*q_proj.bias"):
        load_model(tmp_path / "extra")


# ----------------------------------------------------------------------------- export


@pytest.fixture(scope="module")
def sp_tokenizer(tmp_path_factory):
    import pydoc_data.topics

    from tinyfbi.corpus.tokenizers import SentencePieceTokenizer
    tok = SentencePieceTokenizer.train("\n".join(pydoc_data.topics.topics.values()), 500)
    folder = tmp_path_factory.mktemp("tok")
    tok.save(folder)
    return folder / "tokenizer.model"


def hf_logits(folder, tokens=TOKENS):
    from transformers import LlamaForCausalLM
    hf = LlamaForCausalLM.from_pretrained(folder, local_files_only=True)
    assert hf.dtype == torch.float32
    return torch_logits(lambda t: hf(t).logits, tokens)


def test_export_released_checkpoint_matches_transformers(tmp_path, sp_tokenizer, capsys):
    """A released-layout checkpoint (grouped-query here, to check HF's kv-head layout is ours)
    exported with a tokenizer: stock transformers gives tinyfbi's logits; tinyfbi reads the export
    back as a full-precision model with the same logits."""
    cfg = CFG.replace(num_key_value_heads=2)
    model = source_model(cfg)
    src = write_released(tmp_path / "FBI-LLM_test", model, "bin-sharded")
    out = tmp_path / "exports" / "hf"
    export_main(["--hf", str(src), str(out), "--tokenizer", str(sp_tokenizer)])
    assert "14 binarized linears dequantized" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors",
                                                    "tokenizer.model", "tokenizer_config.json"]
    assert [p.name for p in out.parent.iterdir()] == ["hf"]  # no temp folder left beside it

    expected = model.forward(TOKENS)
    np.testing.assert_allclose(hf_logits(out), expected, atol=1e-5, rtol=1e-5)
    back = load_model(out)
    assert back.config == cfg.replace(binarized=False) and not any(k.endswith("wscale") for k in back.params)
    np.testing.assert_allclose(back.forward(TOKENS), expected, atol=1e-6, rtol=1e-6)

    # transformers 5 converts tokenizer.model only with protobuf; then its ids match sentencepiece
    # (text starting with a space aside, a known transformers 5 difference)
    pytest.importorskip("google.protobuf")
    from transformers import AutoTokenizer

    from tinyfbi.corpus.tokenizers import load_tokenizer
    ours, theirs = load_tokenizer(out), AutoTokenizer.from_pretrained(out, local_files_only=True)
    for text in ["Hello world", "x = 12345 + 6\nnext line", "unicode: naïve"]:
        assert theirs(text)["input_ids"] == [ours.bos_id] + ours.encode(text)


def test_export_sharded_force_and_refusals(tmp_path, capsys):
    model = source_model()
    ckpt = tmp_path / "ckpt"
    save_model(model, ckpt)
    out = tmp_path / "out"
    export_main(["--hf", str(ckpt), str(out), "--shard-gb", "0.00005"])  # 50 kB shards
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert len(shards) > 2 and (out / "model.safetensors.index.json").is_file()
    np.testing.assert_allclose(hf_logits(out), model.forward(TOKENS), atol=1e-5, rtol=1e-5)
    assert oct(os.stat(out / shards[0]).st_mode & 0o777) == oct(0o666 & ~_umask())
    capsys.readouterr()

    def refused(argv, match):
        with pytest.raises(SystemExit) as e:
            export_main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1 and match in err, err

    refused(["--hf", str(ckpt), str(out)], "exists: pass --force")
    refused(["--hf", str(ckpt), str(ckpt), "--force"], "would replace the checkpoint")
    refused([str(ckpt), str(tmp_path / "x")], "--hf")
    refused(["--hf", str(tmp_path / "nothing"), str(tmp_path / "y")], "does not exist")

    other = source_model(seed=3)
    save_model(other, ckpt)
    export_main(["--hf", str(ckpt), str(out), "--force"])  # replaces the sharded export whole
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "out"]
    np.testing.assert_allclose(hf_logits(out), other.forward(TOKENS), atol=1e-5, rtol=1e-5)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def authors_logits(folder, tokens=TOKENS):
    """The oracle, written from the authors' semantics and not from tinyfbi's modules: their
    BinaryLinearWscales computes W~ = wscale * torch.sign(W) + wbias (sign(0) = 0); here in float32
    (their eval casts the model to fp16), run by stock transformers' LLaMA."""
    from safetensors.torch import load_file
    from transformers import LlamaConfig, LlamaForCausalLM
    raw = {k: v.float() for k, v in load_file(str(folder / "model.safetensors")).items() if "inv_freq" not in k}
    state = {}
    for name, value in raw.items():
        if name.endswith((".wscale", ".wbias")):
            continue
        prefix = name.removesuffix(".weight")
        if prefix + ".wscale" in raw:
            value = raw[prefix + ".wscale"] * torch.sign(value) + raw[prefix + ".wbias"]
        state[name] = value
    config = {k: v for k, v in released_config(CFG).items() if k not in ("torch_dtype", "transformers_version")}
    model = LlamaForCausalLM(LlamaConfig(**config)).eval()
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        return model(torch.from_numpy(tokens)).logits.float().numpy()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
def test_released_checkpoint_with_exact_zeros_gives_the_authors_logits(tmp_path, dtype):
    model = source_model()
    rng = np.random.default_rng(3)
    for name in model.binarized_names:  # a fifth of the latent weights exactly 0
        model.params[name][rng.random(model.params[name].shape) < 0.2] = 0.0
    folder = write_released(tmp_path / "FBI-LLM_zeros", model, "safetensors", dtype)
    expected = authors_logits(folder)
    # tolerance: float32 sums in another order (NumPy BLAS, torch, transformers), logits of size ~1
    np.testing.assert_allclose(load_model(folder).forward(TOKENS), expected, atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(torch_logits(load_torch_model(folder)), expected, atol=2e-5, rtol=1e-5)
    plus_one = load_model(folder)
    plus_one.config = plus_one.config.replace(sign_of_zero=1)      # tinyfbi's training rule instead
    assert np.abs(plus_one.forward(TOKENS) - expected).max() > 1e-2  # the zeros matter: the test can fail
    out = tmp_path / "export"
    assert export_main(["--hf", str(folder), str(out)]) is None
    np.testing.assert_allclose(authors_logits_of_export(out), expected, atol=2e-5, rtol=1e-5)


def authors_logits_of_export(folder, tokens=TOKENS):
    from transformers import LlamaForCausalLM
    model = LlamaForCausalLM.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.from_numpy(tokens)).logits.float().numpy()

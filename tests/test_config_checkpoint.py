"""ModelConfig presets and validation; checkpoint round trips and clear errors on bad input."""
import json

import numpy as np
import pytest

from tinyfbi import Model, ModelConfig, TinyFBIError, load_model, save_model
from tinyfbi.formats.config_json import config_to_json


@pytest.mark.parametrize("name,expected", [("130m", 134e6), ("1.3b", 1.364e9), ("7b", 6.738e9),
                                           ("13b", 13.02e9)])
def test_paper_parameter_counts_within_half_a_percent(name, expected):
    # the paper's figures count the model as released (with wscale/wbias); both variants are checked
    for binarized in (True, False):
        n = ModelConfig.from_name(name, binarized=binarized).num_params()
        assert abs(n - expected) / expected < 0.005, f"{name}: {n}"


def test_tiny_preset_is_a_cpu_demo():
    assert 1e6 <= ModelConfig.from_name("tiny").num_params() <= 5e6
    assert 18e6 <= ModelConfig.from_name("20m").num_params() <= 22e6


@pytest.mark.parametrize("kwargs,field", [
    ({"hidden_size": 100, "num_attention_heads": 3}, "hidden_size"),
    ({"num_hidden_layers": 0}, "num_hidden_layers"),
    ({"vocab_size": -5}, "vocab_size"),
    ({"num_key_value_heads": 3}, "num_attention_heads"),
    ({"rms_norm_eps": 0.0}, "rms_norm_eps"),
    ({"scaling": "diagonal"}, "scaling"),
])
def test_contradictory_configs_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        ModelConfig(**kwargs)


def test_unknown_preset():
    with pytest.raises(TinyFBIError, match="unknown model size"):
        ModelConfig.from_name("3b")


SMALL = ModelConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                    num_key_value_heads=1, intermediate_size=24, max_position_embeddings=8)


@pytest.mark.parametrize("config", [SMALL, SMALL.replace(binarized=False), SMALL.replace(scaling="row")])
def test_save_load_round_trips_bit_exactly(tmp_path, config):
    model = Model(config, seed=5)
    from tinyfbi.corpus.tokenizers import ByteTokenizer
    save_model(model, tmp_path / "ckpt", tokenizer=ByteTokenizer())
    loaded = load_model(tmp_path / "ckpt")
    assert loaded.config == config
    assert list(loaded.params) == list(model.params)
    for k in model.params:
        assert loaded.params[k].dtype == model.params[k].dtype
        assert np.array_equal(loaded.params[k], model.params[k]), k
    tokens = np.arange(8).reshape(1, 8)
    assert np.array_equal(loaded.forward(tokens), model.forward(tokens))
    saved = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert saved["model_type"] == "llama" and saved["fbi"]["tokenizer"]["kind"] == "byte"
    assert not list((tmp_path / "ckpt").glob("*.tmp"))  # atomic writes leave no temp files


def test_config_json_is_a_valid_transformers_llama_config():
    transformers = pytest.importorskip("transformers")
    obj = config_to_json(SMALL)
    cfg = transformers.LlamaConfig(**{k: v for k, v in obj.items() if k != "fbi"})
    assert cfg.num_key_value_heads == 1 and cfg.intermediate_size == 24


def test_missing_config_field_is_named(tmp_path):
    save_model(Model(SMALL), tmp_path)
    obj = json.loads((tmp_path / "config.json").read_text())
    del obj["intermediate_size"]
    (tmp_path / "config.json").write_text(json.dumps(obj))
    with pytest.raises(TinyFBIError, match="missing field 'intermediate_size'"):
        load_model(tmp_path)


def test_truncated_weights_are_refused(tmp_path):
    save_model(Model(SMALL), tmp_path)
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(TinyFBIError, match="truncated or corrupted"):
        load_model(tmp_path)


def test_shape_mismatch_and_missing_folder(tmp_path):
    save_model(Model(SMALL), tmp_path / "a")
    obj = json.loads((tmp_path / "a" / "config.json").read_text())
    obj["vocab_size"] = 51
    (tmp_path / "a" / "config.json").write_text(json.dumps(obj))
    with pytest.raises(TinyFBIError, match="embed_tokens.weight has shape"):
        load_model(tmp_path / "a")
    with pytest.raises(TinyFBIError, match="does not exist"):
        load_model(tmp_path / "nowhere")


@pytest.mark.parametrize("tokens,message", [
    (np.array([[1, 2, 50]]), r"token ids must lie in \[0, 50\)"),
    (np.array([[1, -1]]), "token ids must lie"),
    (np.array([[1.0, 2.0]]), "integer numpy array"),
    (np.array([1, 2, 3]), "rank 1"),
    ([[1, 2]], "integer numpy array"),
    (np.zeros((1, 9), dtype=np.int64), "exceeds max_position_embeddings"),
])
def test_bad_tokens_raise_clear_errors(tokens, message):
    with pytest.raises(TinyFBIError, match=message):
        Model(SMALL).forward(tokens)

"""Released FBI-LLM folders imitated for the tests (tests/test_interop.py, test_packed.py, test_pack_memory.py,
test_generate.py): a plain LlamaConfig like the authors' FBI-LLM_configs/*.json (no `fbi` block), FP32
latent weights plus wscale/wbias (1, in), a rotary_emb.inv_freq buffer per layer, written by torch.save
(.bin, single and sharded + index) or safetensors (single and sharded + index), shards split by bytes
as transformers' save_pretrained splits them.
"""
import json

import numpy as np
import torch
from safetensors.torch import save_file as torch_save_safetensors

from tinyfbi import ModelConfig


def released_config(cfg: ModelConfig) -> dict:
    """config.json as the authors ship it: a plain LlamaConfig of transformers 4.32."""
    return {"_name_or_path": "FBI-LLM_llama2_test", "architectures": ["LlamaForCausalLM"],
            "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "hidden_size": cfg.hidden_size,
            "initializer_range": 0.02, "intermediate_size": cfg.intermediate_size,
            "max_position_embeddings": cfg.max_position_embeddings,
            "max_sequence_length": cfg.max_position_embeddings, "model_type": "llama",
            "num_attention_heads": cfg.num_attention_heads, "num_hidden_layers": cfg.num_hidden_layers,
            "num_key_value_heads": cfg.num_key_value_heads, "pad_token_id": 0, "pretraining_tp": 1,
            "rms_norm_eps": 1e-5, "rope_scaling": None, "tie_word_embeddings": False,
            "torch_dtype": "float16", "transformers_version": "4.32.1", "use_cache": True,
            "vocab_size": cfg.vocab_size}


def write_released(folder, model, layout, dtype=torch.float32, shards=2):
    """model's params (anything with .config and .params) in the released layout: HF names, inv_freq
    buffers, .bin or safetensors; `layout` 'bin', 'bin-sharded', 'safetensors' or 'safetensors-sharded'."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    state = {k: torch.from_numpy(np.require(v, requirements="CW")).to(dtype) for k, v in model.params.items()}
    inv_freq = 1.0 / (10000 ** (torch.arange(0, cfg.head_dim, 2).float() / cfg.head_dim))
    for i in range(cfg.num_hidden_layers):
        state[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = inv_freq.clone()
    (folder / "config.json").write_text(json.dumps(released_config(cfg)))
    ext, base = (".bin", "pytorch_model") if layout.startswith("bin") else (".safetensors", "model")
    save = torch.save if ext == ".bin" else (lambda sd, path: torch_save_safetensors(sd, str(path)))
    if not layout.endswith("sharded"):
        save(state, folder / f"{base}{ext}")
        return folder
    total, sizes = sum(t.nbytes for t in state.values()), np.cumsum([t.nbytes for t in state.values()])
    shard_of = np.minimum((sizes - 1) * shards // total, shards - 1)      # (tensors,) by bytes, in order
    weight_map = {}
    for k in range(shards):
        names = [n for n, s in zip(state, shard_of) if s == k]
        file = f"{base}-{k + 1:05d}-of-{shards:05d}{ext}"
        save({n: state[n] for n in names}, folder / file)
        weight_map.update({n: file for n in names})
    (folder / f"{base}{ext}.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder

"""`python -m tinyfbi.pack` streams a released checkpoint in bounded memory and writes what packing it
in memory writes, byte for byte (runtime.build_fbipack, formats.hf_folder.iter_hf_tensors,
formats.fbipack.PackedWriter).

The checkpoint is FBI-LLM 1.3B's layout at its full width (hidden 2048, intermediate 5632, vocab 32000,
fp32 latent weights with exact zeros, wscale/wbias, inv_freq buffers) but 2 of its 24 layers, in 3
`.bin` shards + index as transformers writes them: 0.94 GB of fp32, the largest shard 0.35 GB. The
peak is the child's own ru_maxrss less its value after importing what packing imports. Measured by
hand on all 24 layers (5.46 GB of fp32 in 3 shards of 1.8 GB): peak RSS 0.64 GB, was 6.13 GB.
"""
import filecmp
import shutil
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from released import write_released

from tinyfbi import ModelConfig
from tinyfbi.formats.checkpoint import load_checkpoint
from tinyfbi.formats.fbipack import read_packed
from tinyfbi.runtime.build_fbipack import pack_checkpoint, pack_tensors

WIDE = ModelConfig.from_name("1.3b").replace(num_hidden_layers=2)
# the child measures its own high-water mark after importing what packing imports, then packs
MEASURE = """
import resource, sys
import numpy, torch, kernels.bitpack
from tinyfbi.pack import main
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
main(sys.argv[1:])
print("maxrss_kb", base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def wide_params(cfg, seed=0):
    """Every parameter, fp32: a random block tiled over each tensor (quick to make at 0.94 GB), the
    scales positive, one latent weight in 997 exactly zero (the authors' sign(0) = 0 applies)."""
    block = np.random.default_rng(seed).standard_normal(1 << 21, dtype=np.float32) * 0.02
    binarized = set(cfg.binarized_weight_names())
    params = {}
    for i, (name, shape) in enumerate(cfg.param_shapes().items()):
        v = np.resize(block[7919 * i % (1 << 20):], shape)                      # each tensor its own phase
        if name in binarized:
            v.reshape(-1)[::997] = 0.0
        elif name.endswith((".wscale", ".wbias", "norm.weight")):
            v = np.abs(v) + 0.01
        params[name] = v
    return params


@pytest.fixture(scope="module")
def wide_release(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wide") / "FBI-LLM_1.3B-2layers"
    write_released(folder, SimpleNamespace(config=WIDE, params=wide_params(WIDE)), "bin-sharded", shards=3)
    yield folder
    shutil.rmtree(folder)                                   # 0.94 GB: not kept among pytest's last runs


def test_pack_streams_a_sharded_release_in_bounded_memory(wide_release, tmp_path):
    out = tmp_path / "stream.fbipack"
    run = subprocess.run([sys.executable, "-c", MEASURE, str(wide_release), str(out)], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    base_kb, peak_kb = map(int, run.stdout.split("maxrss_kb")[1].split())
    assert len(list(wide_release.glob("pytorch_model-*.bin"))) == 3
    largest_tensor = 4 * WIDE.vocab_size * WIDE.hidden_size                      # embed / lm_head, fp32
    # held at once: one tensor as read (its mapped pages, given back before the next) and its stored
    # copy (fp16: half as big), so at most twice the largest tensor, whatever the depth (measured 1.57x
    # here, the same with all 24 layers); in memory it was every shard at once, 0.94 GB here
    grown = (peak_kb - base_kb) * 1024
    assert grown <= 2 * largest_tensor, grown
    assert grown < 4 * WIDE.num_params() / 2
    assert "exactly 0" in run.stdout and "which the runner corrects" in run.stdout

    # the oracle: the whole checkpoint loaded in memory (formats.checkpoint), in canonical order, packed
    config, params, raw = load_checkpoint(wide_release)
    stats = pack_tensors(tmp_path / "memory.fbipack", config, raw, params.items(), folder=wide_release)
    assert filecmp.cmp(out, tmp_path / "memory.fbipack", shallow=False)
    header, arrays = read_packed(out)
    zeros = arrays["model.layers.1.mlp.down_proj.zeros"]                          # (n, 2) rows of (row, col)
    w = params["model.layers.1.mlp.down_proj.weight"]
    assert np.array_equal(zeros, np.argwhere(w == 0)) and stats["exact_zeros"] == sum(
        np.count_nonzero(params[n] == 0) for n in config.binarized_weight_names())
    del header, arrays, zeros
    for f in (out, tmp_path / "memory.fbipack"):
        f.unlink()


def test_every_layout_packs_to_the_same_bytes(tmp_path):
    """Single or sharded, safetensors or .bin: one model, one .fbipack (tensors land where the plan puts
    them, whatever order the files hold them in)."""
    cfg = ModelConfig(vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=96, max_position_embeddings=32)
    model = SimpleNamespace(config=cfg, params=wide_params(cfg, seed=1))
    packed = []
    for layout in ("bin", "bin-sharded", "safetensors", "safetensors-sharded", "bin-legacy"):
        folder = write_released(tmp_path / layout, model, layout.removesuffix("-legacy"), shards=3)
        if layout == "bin-legacy":   # torch < 1.6's pickle format: read whole, not mapped (no page release)
            state = torch.load(folder / "pytorch_model.bin", weights_only=True)
            torch.save(state, folder / "pytorch_model.bin", _use_new_zipfile_serialization=False)
        pack_checkpoint(folder, tmp_path / f"{layout}.fbipack")
        packed.append((tmp_path / f"{layout}.fbipack").read_bytes())
    assert all(p == packed[0] for p in packed)

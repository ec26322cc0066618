"""tinyfbi.bench.llamacpp writes GGUF models llama.cpp can read: checked with gguf's own reader (an
independent parser of the format), not with the writer; and its command line fails in one line."""
import gguf
import numpy as np
import pytest

from tinyfbi.bench.llamacpp import main, write_gguf
from tinyfbi.core.config import ModelConfig

# in-features 256 (TQ2_0 rows) and 320 (not a multiple of 256: ffn_down falls back to Q4_0)
CFG = ModelConfig(vocab_size=300, hidden_size=256, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, intermediate_size=320, max_position_embeddings=64)


def test_gguf_holds_the_config_types_and_shapes(tmp_path):
    path = tmp_path / "m.gguf"
    write_gguf(path, CFG, "TQ2_0")
    reader = gguf.GGUFReader(str(path))
    field = lambda key: reader.fields[key].parts[reader.fields[key].data[0]]       # noqa: E731
    assert bytes(field("general.architecture")).decode() == "llama"
    assert int(field("llama.block_count")[0]) == 2 and int(field("llama.attention.head_count_kv")[0]) == 2
    tensors = {t.name: t for t in reader.tensors}
    assert len(tensors) == 3 + 2 * 9                                         # embed, norm, head; 9 per layer
    Q = gguf.GGMLQuantizationType
    q, down = tensors["blk.1.attn_q.weight"], tensors["blk.1.ffn_down.weight"]
    k = tensors["blk.0.attn_k.weight"]
    assert q.tensor_type == Q.TQ2_0 and down.tensor_type == Q.Q4_0 and tensors["output.weight"].tensor_type == Q.F16
    assert list(q.shape) == [256, 256] and list(k.shape) == [256, 128] and list(down.shape) == [320, 256]  # (in, out)
    w = gguf.quants.dequantize(down.data, Q.Q4_0)                             # (out, in): N(0, 0.02) in 4 bits
    assert w.shape == (256, 320) and 0.01 < np.std(w) < 0.04


def test_q1_0_blocks_hold_signs_and_the_scale(tmp_path):
    path = tmp_path / "q1.gguf"
    write_gguf(path, CFG, "Q1_0")
    t = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}["blk.0.ffn_gate.weight"]
    assert t.tensor_type == gguf.GGMLQuantizationType.Q1_0 and list(t.shape) == [256, 320]
    blocks = np.asarray(t.data).reshape(320, 2, 18)                           # 2 blocks of 128 per row
    assert np.all(blocks[:, :, :2].copy().view(np.float16) == np.float16(0.02))


def test_cli_refuses_a_missing_llama_bench(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--llama-bench", str(tmp_path / "nope"), "--size", "tiny"])
    assert "no such file" in capsys.readouterr().err

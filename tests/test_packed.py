"""Packed file format and the packed 1-bit runtime against the float model."""
import json
import mmap

import numpy as np
import pytest
from released import write_released

from tinyfbi import Model, ModelConfig, TinyFBIError, load_model, save_model
from tinyfbi.corpus.tokenizers import ByteTokenizer
from tinyfbi.formats.fbipack import FileRows, drop_mapped_pages, read_header, read_packed, sign_layout
from tinyfbi.pack import main as pack_main
from tinyfbi.runtime.build_fbipack import pack_checkpoint
from tinyfbi.runtime.inference import FloatRunner, generate
from tinyfbi.runtime.packed_runner import PackedRunner, load_packed

# odd sizes: in-features not a multiple of 64 or 256, out-features odd, grouped-query attention
CFG = ModelConfig(vocab_size=256, hidden_size=72, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, intermediate_size=100, max_position_embeddings=48)


@pytest.fixture
def checkpoint(tmp_path):
    model = Model(CFG, seed=3)
    # store fp16-representable values so that packing (alpha/beta in fp16) loses nothing and any
    # difference left comes from the kernels alone
    for k, v in model.params.items():
        if not model.config.binarized or k not in model.binarized_names:
            v[...] = v.astype(np.float16).astype(np.float32)
    save_model(model, tmp_path / "ckpt", tokenizer=ByteTokenizer())
    return model, tmp_path


@pytest.mark.parametrize("layout", ["blocked", "nib4"])
def test_pack_round_trips_signs_and_scales(checkpoint, layout):
    model, tmp = checkpoint
    stats = pack_checkpoint(tmp / "ckpt", tmp / "m.fbipack", layout=layout)
    header, arrays = read_packed(tmp / "m.fbipack")
    assert sign_layout(header) == layout and arrays["model.layers.0.mlp.up_proj.weight"].ndim == {"blocked": 2, "nib4": 3}[layout]
    runner, tokenizer = load_packed(tmp / "m.fbipack")
    from kernels.bitpack import unpack_signs
    for name in model.binarized_names:
        prefix = name.removesuffix(".weight")
        packed, alpha, beta = runner.linears[prefix]
        assert np.array_equal(unpack_signs(packed), np.where(model.params[name] >= 0, 1.0, -1.0)), name
        assert np.array_equal(alpha, model.params[prefix + ".wscale"].reshape(-1))
        assert np.array_equal(beta, model.params[prefix + ".wbias"].reshape(-1))
    assert header["config"]["hidden_size"] == 72 and tokenizer.vocab_size == 256
    # signs: in padded to 256 per row (nib4: rows padded to tiles of 32); alpha/beta: 2 x 16 bits per input column
    rows = (lambda o: o) if layout == "blocked" else (lambda o: 32 * -(-o // 32))
    expected_bytes = sum(rows(o) * 32 * -(-i // 256) + 4 * i for o, i in CFG.linear_shapes().values()) * CFG.num_hidden_layers
    assert stats["binarized_bytes"] == expected_bytes
    assert stats["file_bytes"] < stats["float32_bytes"] / 3


@pytest.mark.parametrize("kind, head", [("exact", "f16"), ("int8", "f16"), ("exact", "int8"), ("exact", "f32")])
def test_packed_logits_match_float(checkpoint, kind, head):
    model, tmp = checkpoint
    pack_checkpoint(tmp / "ckpt", tmp / "m.fbipack")
    runner, _ = load_packed(tmp / "m.fbipack", kind, head)
    tokens = np.random.default_rng(0).integers(0, 256, (1, 40))
    ref = FloatRunner(model).forward(tokens, FloatRunner(model).new_cache())
    got = runner.forward(tokens, runner.new_cache())                    # prefill: the batch kernels (v6 / v7)
    scale = np.max(np.abs(ref))
    # exact kernels: float32 sums in another order (1e-4 of the logit range; the fixture's head is
    # fp16-representable, so the fp16 head adds nothing); int8 activations: per-token rounding to 8
    # bits, a few percent after 2 layers; int8 head rows: each weight within max|row| / 254
    tol = {("exact", "f16"): 1e-4, ("exact", "f32"): 1e-4, ("int8", "f16"): 5e-2, ("exact", "int8"): 2e-2}[kind, head]
    assert np.max(np.abs(got - ref)) <= tol * scale
    # the decode path (one token at a time, compiled step) gives the prefill path's logits
    cache = runner.new_cache()
    steps = np.concatenate([runner.forward(tokens[:, t:t + 1], cache) for t in range(40)], axis=1)
    assert np.max(np.abs(steps - got)) <= (1e-4 if kind == "exact" else 5e-2) * scale
    last = runner.forward(tokens, runner.new_cache(), last_only=True)
    assert last.shape == (1, 1, 256) and np.max(np.abs(last[0, 0] - got[0, -1])) <= 1e-6 * scale  # BLAS: 1 row vs 40


def test_released_checkpoint_with_exact_zeros_packs_to_the_authors_logits(tmp_path, capsys):
    """The authors' sign(0) = 0 gives W~ = beta at an exact-zero latent weight; the bits say +1, so the file
    keeps each zero's position and the runner takes alpha_j * x_j back. Reference: the float model of
    the same folder (formats' loader: sign_of_zero = 0, tested against the authors' transformers model
    in test_interop). Scales, norms, embeddings and head are fp16-representable, so what is left is
    float32 sums in another order: 1e-5 of the largest logit (measured 2.5e-6)."""
    model = Model(CFG, seed=5)
    rng = np.random.default_rng(3)
    for name, v in model.params.items():
        if name in model.binarized_names:                        # a fifth of the latent weights exactly 0
            v[rng.random(v.shape) < 0.2] = 0.0
        else:
            v += (rng.standard_normal(v.shape) * 0.05).astype(np.float32)   # scales and norms off their init
            v[...] = v.astype(np.float16).astype(np.float32)
    folder = write_released(tmp_path / "FBI-LLM_zeros", model, "bin-sharded")
    pack_main([str(folder), str(tmp_path / "z.fbipack")])
    assert "which the runner corrects" in capsys.readouterr().out
    tokens = np.random.default_rng(0).integers(0, 256, (1, 40))
    ref = load_model(folder).forward(tokens)
    scale = np.max(np.abs(ref))
    for kind, tol in (("exact", 1e-5), ("int8", 5e-2)):              # int8: activations rounded to 8 bits
        runner, _ = load_packed(tmp_path / "z.fbipack", kind)
        assert len(runner.zeros) == 7 * CFG.num_hidden_layers
        prefill = runner.forward(tokens, runner.new_cache())                       # batch kernels
        cache = runner.new_cache()                                                 # stacked kernels, 5 tokens
        steps = [runner.forward(tokens[:, :5], cache)] + [runner.forward(tokens[:, t:t + 1], cache) for t in range(5, 12)]
        assert np.max(np.abs(prefill - ref)) <= tol * scale, kind                  # then one at a time
        assert np.max(np.abs(np.concatenate(steps, axis=1) - ref[:, :12])) <= tol * scale, kind
    exact, _ = load_packed(tmp_path / "z.fbipack", "exact")
    x = rng.standard_normal((3, CFG.hidden_size)).astype(np.float32)
    w = load_model(folder).effective_weights()["model.layers.1.mlp.up_proj.weight"]     # (I, C), 0 -> beta
    assert np.max(np.abs(exact.linear("model.layers.1.mlp.up_proj", x) - x @ w.T)) <= 1e-5 * np.max(np.abs(x @ w.T))
    # without the zero lists, the +1 bits alone are far off: the correction is what the test measures
    _, arrays = read_packed(tmp_path / "z.fbipack")
    plus_one = PackedRunner.from_arrays(exact.config, {k: v for k, v in arrays.items() if not k.endswith(".zeros")})
    assert np.max(np.abs(plus_one.forward(tokens, plus_one.new_cache()) - ref)) > 1e-2 * scale


def first_base(a: np.ndarray):
    """The array a view chain ends in (the file's mapping, or the buffer the tensors were read into)."""
    while getattr(a, "base", None) is not None and not isinstance(a, np.memmap):
        a = a.base                          # through ndarray views and as_strided's DummyArray
    return a.obj if isinstance(a, memoryview) else a


@pytest.mark.parametrize("load", ["map", "read"])
@pytest.mark.parametrize("kind, layout", [("exact", "blocked"), ("int8", "blocked"), ("int8", "nib4")])
def test_runner_holds_one_copy_of_the_signs(tmp_path, load, kind, layout):
    """A layer's q/k/v (and gate/up) signs lie back to back in the file: the runner's stacked signs (blocked
    bits, or nib4 tiles for int8 on a nib4 file) are one view of the file's mapping (load="map") or of the
    one buffer the file was read into ("read"), never a copy per linear (widths a multiple of 32 rows, as
    every paper size), and no other layout is held beside them; the embedding is mapped by load="map" and
    read a row at a time by "read" (FileRows), and both loads give the same tensors."""
    cfg = CFG.replace(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96)
    save_model(Model(cfg, seed=1), tmp_path / "ckpt", tokenizer=ByteTokenizer())
    pack_checkpoint(tmp_path / "ckpt", tmp_path / "m.fbipack", layout=layout)
    runner, _ = load_packed(tmp_path / "m.fbipack", kind=kind, load=load, layout=layout if kind == "int8" else "auto")
    held, other = ("nib4", "bits") if layout == "nib4" else ("bits", "nib4")
    bases = set()
    for i, layer in enumerate(runner.layers):
        for group in ("qkv", "o", "gate_up", "down"):
            signs = getattr(getattr(layer, group), held)
            assert getattr(getattr(layer, group), other) is None, (i, group)
            assert not signs.flags.writeable and not signs.flags.owndata, (i, group)
            base = first_base(signs)
            if load == "map":
                assert str(base.filename) == str((tmp_path / "m.fbipack").resolve()), (i, group)
            else:
                assert isinstance(base, mmap.mmap), (i, group)     # the anonymous buffer read_packed filled
                bases.add(id(base))
    assert len(bases) == (1 if load == "read" else 0)       # one buffer for every linear's signs
    assert runner.describe()["layout"] == (layout if kind == "int8" else None)
    embed = runner.params["model.embed_tokens.weight"]
    assert isinstance(embed, FileRows) if load == "read" else isinstance(first_base(embed), np.memmap)
    _, read = read_packed(tmp_path / "m.fbipack", load)
    _, mapped = read_packed(tmp_path / "m.fbipack", "map")
    assert isinstance(first_base(read["model.embed_tokens.weight"]), np.memmap)
    assert read.keys() == mapped.keys() and all(np.array_equal(read[k], mapped[k]) for k in read)


def test_file_rows_read_the_rows_a_mapping_holds(checkpoint):
    """FileRows (the runner's embedding under load="read") returns, for any integer index array, exactly
    the rows of the file's mapped tensor (bit for bit: the same bytes), in the index's shape; refuses a
    row past the table and a non-integer index in one line."""
    _, tmp = checkpoint
    pack_checkpoint(tmp / "ckpt", tmp / "m.fbipack")
    header, data_start = read_header(tmp / "m.fbipack")
    _, mapped = read_packed(tmp / "m.fbipack", "map")
    table = mapped["model.embed_tokens.weight"]                     # (256, 72) fp16, mapped
    t = header["tensors"]["model.embed_tokens.weight"]
    rows = FileRows(tmp / "m.fbipack", data_start + t["offset"], t["shape"], t["dtype"])
    assert rows.shape == table.shape and rows.dtype == table.dtype and rows.nbytes == table.nbytes
    index = np.random.default_rng(0).integers(0, table.shape[0], (3, 5))
    for idx in (index, index[0], np.int64(7), np.array([255, 0, 255]), np.zeros((0,), np.int64)):
        got = rows[idx]
        assert got.shape == table[idx].shape and np.array_equal(got.view(np.uint16), table[idx].view(np.uint16))
    with pytest.raises(IndexError, match="out of range"):
        rows[np.array([256])]
    with pytest.raises(TypeError, match="integer index"):
        rows[np.array([1.0])]
    rows.close()


@pytest.mark.parametrize("head", ["int8", "f32"])
def test_converted_head_is_read_from_the_mapping_and_its_pages_dropped(tmp_path, head):
    """A head converted at load (int8 per row, float32) is left mapped by load="read" rather than read
    into the buffer, and its file pages are unmapped once converted; the logits equal load="map"'s, and
    the dropped range reads back the file's bytes (the page cache maps them again)."""
    cfg = CFG.replace(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96)
    save_model(Model(cfg, seed=2), tmp_path / "ckpt", tokenizer=ByteTokenizer())
    pack_checkpoint(tmp_path / "ckpt", tmp_path / "m.fbipack")
    _, arrays = read_packed(tmp_path / "m.fbipack", "read", mapped=("lm_head.weight",))
    assert isinstance(first_base(arrays["lm_head.weight"]), np.memmap)
    before = np.array(arrays["lm_head.weight"])
    drop_mapped_pages(arrays["lm_head.weight"])
    assert np.array_equal(arrays["lm_head.weight"], before)
    resident = arrays["model.layers.0.self_attn.q_proj.weight"]
    kept = np.array(resident)
    drop_mapped_pages(resident)                             # the private buffer: left alone, not zeroed
    assert np.array_equal(resident, kept)
    tokens = np.array([[3, 1, 4, 1, 5, 9]])
    logits = []
    for load in ("read", "map"):
        runner, _ = load_packed(tmp_path / "m.fbipack", kind="exact", head=head, load=load)
        logits.append(runner.forward(tokens, runner.new_cache(1, 8)))
    assert np.array_equal(logits[0], logits[1])


def test_packed_greedy_generation_equals_float(checkpoint):
    model, tmp = checkpoint
    pack_checkpoint(tmp / "ckpt", tmp / "m.fbipack")
    runner, _ = load_packed(tmp / "m.fbipack", "exact")
    prompt = [10, 20, 30, 40]              # prefill by the stacked batch-1 kernels token by token, then decode
    assert generate(runner, prompt, 30, greedy=True) == generate(FloatRunner(model), prompt, 30, greedy=True)


def test_pack_cli_reports_bits_and_refuses_bad_files(checkpoint, capsys):
    _, tmp = checkpoint
    pack_main([str(tmp / "ckpt"), str(tmp / "m.fbipack")])
    out = capsys.readouterr().out
    assert "bits each" in out and "bits per parameter" in out
    with pytest.raises(SystemExit):  # no silent overwrite
        pack_main([str(tmp / "ckpt"), str(tmp / "m.fbipack")])
    assert "exists" in capsys.readouterr().err
    data = (tmp / "m.fbipack").read_bytes()
    (tmp / "cut.fbipack").write_bytes(data[:-100])
    with pytest.raises(TinyFBIError, match="truncated"):
        read_packed(tmp / "cut.fbipack")
    other = bytearray(data)
    other[8:12] = (4).to_bytes(4, "little")
    (tmp / "v3.fbipack").write_bytes(bytes(other))
    with pytest.raises(TinyFBIError, match="version 4"):
        read_packed(tmp / "v3.fbipack")
    other[8:12] = (1).to_bytes(4, "little")      # version 1: the same layout without zero lists, still read
    (tmp / "v1.fbipack").write_bytes(bytes(other))
    assert read_packed(tmp / "v1.fbipack")[0] == read_packed(tmp / "m.fbipack")[0]
    (tmp / "junk.fbipack").write_bytes(b"hello")
    with pytest.raises(TinyFBIError, match="not a tinyfbi packed file"):
        read_packed(tmp / "junk.fbipack")


def test_full_precision_checkpoint_is_refused(tmp_path):
    save_model(Model(CFG.replace(binarized=False)), tmp_path / "fp")
    with pytest.raises(TinyFBIError, match="nothing to pack"):
        pack_checkpoint(tmp_path / "fp", tmp_path / "x.fbipack")


def test_random_packed_model_decodes(capsys):
    from tinyfbi.generate import main as generate_main
    cfg = CFG.replace(vocab_size=300)
    runner = PackedRunner.random(cfg, seed=0, kind="int8")
    logits = runner.forward(np.array([[1, 2, 3]]), runner.new_cache())
    assert logits.shape == (1, 3, 300) and np.all(np.isfinite(logits))
    generate_main(["--random-init", "tiny", "--packed", "--bench", "--json", "--prompt-tokens", "8",
                   "--max-new-tokens", "2"])
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["runtime"] == "PackedRunner" and row["decode_tok_s"] > 0 and row["peak_rss_mb"] > 0


def test_random_init_packs_a_file_that_runs_the_same_model(tmp_path, capsys):
    """pack --random-init writes what PackedRunner.random runs (same signs, scales and dense weights),
    and --bench on the file says when the model was ready and when its first token came."""
    from tinyfbi.generate import main as generate_main
    pack_main(["--random-init", "micro", str(tmp_path / "r.fbipack")])
    from_file, _ = load_packed(tmp_path / "r.fbipack", kind="exact")
    in_memory = PackedRunner.random(ModelConfig.from_name("micro"), seed=0, kind="exact")
    tokens = np.array([[5, 6, 7, 8]])
    np.testing.assert_array_equal(from_file.forward(tokens, from_file.new_cache()),
                                  in_memory.forward(tokens, in_memory.new_cache()))
    capsys.readouterr()
    for load in ("read", "map"):
        generate_main(["--ckpt", str(tmp_path / "r.fbipack"), "--bench", "--json", "--prompt-tokens", "8",
                       "--max-new-tokens", "2", "--load", load])
        row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert 0 < row["load_s"] <= row["first_token_s"] and row["load"] == load
    with pytest.raises(SystemExit) as e:
        pack_main(["--random-init", "micro"])
    assert e.value.code == 2


def test_random_init_packed_runs_from_a_file_drawn_once(tmp_path, monkeypatch, capsys):
    """--random-init SIZE --packed runs the model pack --random-init writes, from a file drawn once into
    the cache and reused (so it holds what a file's runner holds: the embedding read a row at a time);
    its logits equal the in-memory build's bit for bit (the same draws, the same kernels). Where the cache
    cannot be written it builds the model in memory instead and says so on stderr."""
    from tinyfbi.generate import random_runner
    monkeypatch.setenv("TINYFBI_CACHE", str(tmp_path / "cache"))
    tokens = np.array([[5, 6, 7, 8]])
    in_memory = PackedRunner.random(ModelConfig.from_name("micro"), seed=3, kind="int8")
    expected = in_memory.forward(tokens, in_memory.new_cache())
    runner = random_runner("micro", True, "int8", 3)
    assert "drawing the random model once" in capsys.readouterr().err
    assert isinstance(runner.params["model.embed_tokens.weight"], FileRows)
    np.testing.assert_array_equal(runner.forward(tokens, runner.new_cache()), expected)
    (drawn,) = (tmp_path / "cache" / "random").iterdir()
    mtime = drawn.stat().st_mtime_ns
    again = random_runner("micro", True, "int8", 3, load="map")
    assert capsys.readouterr().err == "" and drawn.stat().st_mtime_ns == mtime      # reused, not drawn again
    np.testing.assert_array_equal(again.forward(tokens, again.new_cache()), expected)
    random_runner("micro", True, "int8", 4)                                         # another seed: its own file
    assert len(list((tmp_path / "cache" / "random").iterdir())) == 2
    (tmp_path / "not-a-folder").write_text("")
    monkeypatch.setenv("TINYFBI_CACHE", str(tmp_path / "not-a-folder" / "cache"))
    fallback = random_runner("micro", True, "int8", 3)
    assert "building it in memory instead" in capsys.readouterr().err
    np.testing.assert_array_equal(fallback.forward(tokens, fallback.new_cache()), expected)


def test_evaluate_prices_each_speed_up_in_perplexity(checkpoint, tmp_path, capsys):
    """tinyfbi.evaluate on a packed file: exact kernels give the float model's perplexity (float32 sums in
    another order, 1e-4 relative), int8 activations / an int8 head within 5% (the logit tolerances above)."""
    from tinyfbi.evaluate import main as evaluate_main
    _, tmp = checkpoint
    pack_checkpoint(tmp / "ckpt", tmp / "m.fbipack")
    text = tmp_path / "t.txt"
    text.write_text("It is a truth universally acknowledged, that a single man in possession of a good fortune, "
                    "must be in want of a wife. " * 3)

    def ppl(*extra, ckpt=tmp / "m.fbipack"):
        evaluate_main(["--ckpt", str(ckpt), "--ppl", str(text), "--seq-len", "48", "--json", *extra])
        row = json.loads(capsys.readouterr().out)
        return row["results"][str(text)]["ppl"], row

    ref, row = ppl(ckpt=tmp / "ckpt")
    exact, row = ppl()
    assert row["backend"] == "packed" and row["kind"] == "exact" and row["head"] == "f16"
    assert abs(exact / ref - 1) <= 1e-4
    for extra in (["--kind", "int8"], ["--head", "int8"], ["--kind", "int8", "--head", "int8"]):
        assert abs(ppl(*extra)[0] / ref - 1) <= 5e-2, extra
    for argv, msg in ((["--ckpt", str(tmp / "ckpt"), "--kind", "int8"], "apply to a packed"),
                      (["--ckpt", str(tmp / "m.fbipack"), "--backend", "torch"], "drop --backend torch")):
        with pytest.raises(SystemExit):
            evaluate_main([*argv, "--ppl", str(text)])
        assert msg in capsys.readouterr().err

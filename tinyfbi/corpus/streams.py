"""Sources read as streams, never whole: what `python -m tinyfbi.prepare SOURCE` accepts.

    FILE.txt                 read in 1 MB blocks cut at line ends; its last 1/N bytes (from a line start) are validation
    FOLDER                   its *.txt files (each a document), or its *.jsonl[.gz] / *.parquet files
    FILE.jsonl[.gz]          one JSON object a line: a `text` field, or `token_ids` (the Amber layout:
                             2049 LLaMA-2 ids a row, stored as they are)
    FILE.parquet             a `text` or `token_ids` column, read with `datasets` (streaming)
    hf:NAME[:CONFIG]         the train split of a hub dataset, streamed with `datasets`

Documents (files, rows) are held out for validation: every N-th one (N = --val-every), until the
held-out input reaches --val-max-mb. A unit is (split, kind, data, origin): kind "text" (UTF-8
bytes), "jsonl" (one raw line, parsed by a worker) or "ids" (int64 bytes of one row).
"""
from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..core.errors import TinyFBIError, first_line
from .sources import DOC_SEP

BLOCK = 1 << 20                  # text is read in blocks of about this many bytes, cut at line ends
TEXT_SUFFIXES = (".txt",)
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")
PARQUET_SUFFIXES = (".parquet",)


@dataclass(frozen=True)
class Unit:
    split: str                   # train | val
    kind: str                    # text | jsonl | ids
    data: bytes
    origin: str                  # where it came from, for error messages: FILE@OFFSET or FILE:LINE


class Source:
    """A source: its name, layout (text | token_ids), row length (token_ids), size in bytes if known."""
    name: str
    layout: str = "text"
    row_len: int | None = None
    total_bytes: int | None = None

    def __init__(self, val_every: int, val_max_bytes: int):
        self.val_every, self.val_max_bytes, self.val_bytes = val_every, val_max_bytes, 0

    def held_out(self, doc: int, size: int) -> bool:
        """Document number `doc` goes to validation: every val_every-th, until the budget is spent."""
        if doc % self.val_every == self.val_every - 1 and self.val_bytes < self.val_max_bytes:
            self.val_bytes += size
            return True
        return False

    def units(self) -> Iterator[Unit]:
        raise NotImplementedError

    def sample_text(self, max_chars: int) -> str:
        """The first max_chars characters of the training documents (a tokenizer learns from them)."""
        parts, size = [], 0
        for unit in self.units():
            if unit.split != "train":
                continue
            text = unit_text(unit)
            parts.append(text)
            size += len(text)
            if size >= max_chars:
                break
        return "".join(parts)[:max_chars]


def unit_text(unit: Unit) -> str:
    """The text of a text or jsonl unit (DOC_SEP ends each jsonl document)."""
    if unit.kind == "jsonl":
        return json_row(unit.data, unit.origin, "text") + DOC_SEP
    try:
        return unit.data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TinyFBIError(f"{unit.origin} is not UTF-8: byte 0x{unit.data[e.start]:02x} at offset "
                           f"{e.start} of this block ({e.reason})") from None


def json_row(line: bytes, origin: str, field: str):
    try:
        row = json.loads(line)
    except ValueError as e:
        raise TinyFBIError(f"{origin} is not valid JSON ({first_line(e)})") from None
    if not isinstance(row, dict) or field not in row:
        raise TinyFBIError(f"{origin} has no {field!r} field")
    value = row[field]
    if field == "text" and not isinstance(value, str):
        raise TinyFBIError(f"{origin}: 'text' is not a string")
    return value


# ---- text files -----------------------------------------------------------------------------

def _blocks(f) -> Iterator[bytes]:
    """Blocks of about BLOCK bytes, each ending at a line end (or at the end of the file)."""
    while True:
        block = f.read(BLOCK)
        if not block:
            return
        block += f.readline()           # never cut a line (nor a UTF-8 character, nor a CRLF)
        yield block


def _clean(block: bytes, first: bool) -> bytes:
    """As sources._decode: a BOM dropped, CRLF -> LF."""
    if first and block.startswith(b"\xef\xbb\xbf"):
        block = block[3:]
    return block.replace(b"\r\n", b"\n") if b"\r" in block else block     # the scan is cheaper than a copy


class TextFile(Source):
    def __init__(self, path: Path, val_every: int, val_max_bytes: int):
        super().__init__(val_every, val_max_bytes)
        self.path, self.name = path, f"file:{path.resolve()}"
        self.total_bytes = path.stat().st_size
        self.val_start = self._line_start(max(self.total_bytes - min(self.total_bytes // val_every, val_max_bytes), 0))

    def _line_start(self, offset: int) -> int:
        """The first line start at or after offset."""
        if offset == 0:
            return 0
        with open(self.path, "rb") as f:
            f.seek(offset - 1)
            f.readline()
            return f.tell()

    def units(self):
        with open(self.path, "rb") as f:
            offset = 0
            for block in _blocks(f):
                cut = min(max(self.val_start - offset, 0), len(block))
                for split, part, at in (("train", block[:cut], offset), ("val", block[cut:], offset + cut)):
                    if part:
                        yield Unit(split, "text", _clean(part, at == 0), f"{self.path}@{at}")
                offset += len(block)


class TextFolder(Source):
    def __init__(self, folder: Path, files: list[Path], val_every: int, val_max_bytes: int):
        super().__init__(val_every, val_max_bytes)
        self.folder, self.files, self.name = folder, files, f"dir:{folder.resolve()}"
        self.total_bytes = sum(p.stat().st_size for p in files)

    def units(self):
        self.val_bytes = 0
        for doc, path in enumerate(self.files):
            split = "val" if self.held_out(doc, path.stat().st_size) else "train"
            with open(path, "rb") as f:
                offset = 0
                for block in _blocks(f):
                    yield Unit(split, "text", _clean(block, offset == 0), f"{path}@{offset}")
                    offset += len(block)
            yield Unit(split, "text", DOC_SEP.encode(), f"{path}@end")


# ---- jsonl ----------------------------------------------------------------------------------

def _open_lines(path: Path):
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


class JsonlFiles(Source):
    """Rows of .jsonl / .jsonl.gz files; the first row says the layout: `token_ids` or `text`."""

    def __init__(self, files: list[Path], name: str, val_every: int, val_max_bytes: int):
        super().__init__(val_every, val_max_bytes)
        self.files, self.name = files, name
        gz = any(p.name.endswith(".gz") for p in files)            # progress counts uncompressed bytes
        self.total_bytes = None if gz else sum(p.stat().st_size for p in files)
        first, origin = self._first_row()
        if "token_ids" in first:
            ids = first["token_ids"]
            if not isinstance(ids, list) or not ids:
                raise TinyFBIError(f"{origin}: 'token_ids' is not a non-empty list of ids")
            self.layout, self.row_len = "token_ids", len(ids)
        elif "text" in first:
            self.layout = "text"
        else:
            raise TinyFBIError(f"{origin} has neither a 'text' nor a 'token_ids' field (fields: "
                               f"{', '.join(map(str, first)) or 'none'})")

    def _first_row(self) -> tuple[dict, str]:
        for path in self.files:
            try:
                with _open_lines(path) as f:
                    for n, line in enumerate(f, 1):
                        if line.strip():
                            row = json.loads(line)
                            if not isinstance(row, dict):
                                raise TinyFBIError(f"{path}:{n} is not a JSON object")
                            return row, f"{path}:{n}"
            except TinyFBIError:
                raise
            except (OSError, EOFError) as e:
                raise TinyFBIError(f"{path} is unreadable ({first_line(e)})") from None
            except ValueError as e:
                raise TinyFBIError(f"{path}:{n} is not valid JSON ({first_line(e)})") from None
        raise TinyFBIError(f"corpus is empty: {self.name} holds no rows")

    def units(self):
        self.val_bytes, doc = 0, 0
        for path in self.files:
            try:
                with _open_lines(path) as f:
                    for n, line in enumerate(f, 1):
                        if not line or line.isspace():
                            continue
                        split = "val" if self.held_out(doc, len(line)) else "train"
                        doc += 1
                        yield Unit(split, "jsonl", line, f"{path}:{n}")
            except (OSError, EOFError) as e:   # a truncated .gz, a read error
                raise TinyFBIError(f"{path} is unreadable ({first_line(e)})") from None


# ---- datasets: parquet files and the hub ----------------------------------------------------

class DatasetRows(Source):
    """Rows streamed by `datasets` (parquet files, or hf:NAME[:CONFIG]'s train split)."""

    def __init__(self, spec: str, val_every: int, val_max_bytes: int, files: list[Path] | None = None):
        super().__init__(val_every, val_max_bytes)
        self.spec, self.files = spec, files
        self.name = spec if files is None else f"parquet:{', '.join(str(p.resolve()) for p in files)}"
        self.total_bytes = None if files is None else sum(p.stat().st_size for p in files)
        self.rows = self._load()
        first = next(iter(self.rows.take(1)), None) if hasattr(self.rows, "take") else None
        if first is None:
            raise TinyFBIError(f"corpus is empty: {self.spec} holds no rows")
        if "token_ids" in first:
            self.layout, self.row_len = "token_ids", len(first["token_ids"])
        elif "text" not in first:
            raise TinyFBIError(f"{self.spec} has neither a 'text' nor a 'token_ids' column "
                               f"(columns: {', '.join(first)})")

    def _load(self):
        try:
            import datasets
        except ImportError:
            raise TinyFBIError(f"{self.spec} is read with the datasets package: pip install datasets") from None
        try:
            if self.files is not None:
                return datasets.load_dataset("parquet", data_files=[str(p) for p in self.files], split="train",
                                             streaming=True)
            name, _, config = self.spec[len("hf:"):].partition(":")
            if not name:
                raise TinyFBIError(f"{self.spec}: expected hf:NAME[:CONFIG], e.g. hf:roneneldan/TinyStories")
            return datasets.load_dataset(name, config or None, split="train", streaming=True)
        except TinyFBIError:
            raise
        except Exception as e:  # datasets raises many types (offline, unknown name, bad config, bad file)
            raise TinyFBIError(f"could not open {self.spec} with datasets ({type(e).__name__}: {first_line(e)})"
                               + ("; the hub needs internet" if self.files is None else "")) from None

    def units(self):
        self.val_bytes = 0
        rows = iter(self.rows)
        doc = 0
        while True:
            try:
                row = next(rows)
            except StopIteration:
                return
            except Exception as e:  # a broken file or connection mid-stream
                raise TinyFBIError(f"reading {self.spec} failed at row {doc} ({type(e).__name__}: "
                                   f"{first_line(e)})") from None
            origin = f"{self.spec} row {doc}"
            if self.layout == "token_ids":
                data = np.asarray(row["token_ids"], dtype=np.int64).tobytes()
                kind = "ids"
            else:
                text = row["text"]
                if not isinstance(text, str):
                    raise TinyFBIError(f"{origin}: 'text' is not a string")
                if not text:
                    doc += 1
                    continue
                data, kind = (text if text.endswith("\n") else text + DOC_SEP).encode("utf-8"), "text"
            split = "val" if self.held_out(doc, len(data)) else "train"
            doc += 1
            yield Unit(split, kind, data, origin)


# ---- which reader -----------------------------------------------------------------------------

def _has_suffix(path: Path, suffixes) -> bool:
    return any(path.name.endswith(s) for s in suffixes)


def open_source(spec: str, val_every: int, val_max_bytes: int) -> Source:
    if spec.startswith("hf:"):
        return DatasetRows(spec, val_every, val_max_bytes)
    path = Path(spec).expanduser()
    if not path.exists():
        raise TinyFBIError(f"source not found: {spec}")
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    kinds = {kind: [p for p in files if _has_suffix(p, suffixes)]
             for kind, suffixes in (("text", TEXT_SUFFIXES), ("jsonl", JSONL_SUFFIXES), ("parquet", PARQUET_SUFFIXES))}
    found = [k for k, v in kinds.items() if v]
    if not found:
        raise TinyFBIError(f"{spec}: no .txt, .jsonl, .jsonl.gz or .parquet " + ("files in this folder" if path.is_dir()
                                                                              else "file (by its name)"))
    if len(found) > 1:
        raise TinyFBIError(f"{spec} mixes {' and '.join(found)} files: prepare one kind per folder")
    files = kinds[found[0]]
    if sum(p.stat().st_size for p in files) == 0:
        raise TinyFBIError(f"corpus is empty: {spec}")
    if found[0] == "jsonl":
        return JsonlFiles(files, f"jsonl:{path.resolve()}", val_every, val_max_bytes)
    if found[0] == "parquet":
        return DatasetRows(str(spec), val_every, val_max_bytes, files)
    if path.is_dir():
        return TextFolder(path, files, val_every, val_max_bytes)
    return TextFile(path, val_every, val_max_bytes)

"""The packed 1-bit file (`.fbipack`, version 2 or 3): the container runtime.build_fbipack writes and
runtime.packed_runner reads. Binarized linears are stored as sign bits in one of the kernels' layouts
(kernels/bitpack.py): `blocked` (what AVX-512 int8 decode and every batch kernel read) or `nib4` (what
AVX2 int8 decode reads), said by the header's "sign_layout" (absent: blocked), with fp16 alpha/beta
(float32 where packed with --dtype float32); embeddings, norms and lm_head as dense arrays; and, for a
released checkpoint whose latent weights hold exact zeros (the authors' sign(0) = 0, a third value
one bit cannot hold), the positions of those zeros per linear, so that the runner can take back the
+1 their bits say (kind "zeros": int32 (n, 2) rows of (output row, input column)).

File layout, all little-endian:
    8 bytes   magic b"TFBIPACK"
    4 bytes   format version (uint32): 3 for a nib4 file, 2 for a blocked one (so that readers that
              know only blocked signs open it); version 1 files (no zero lists) are read the same way
    8 bytes   header length H (uint64)
    H bytes   JSON header: config.json, tokenizer spec, file size, sign layout, and a table
              name -> {kind, dtype, shape, offset, nbytes, [in_features]} of every tensor,
              padded with spaces (see PackedWriter for how long)
    ...       tensor data, each at a 64-byte aligned offset: every tensor in table order, then
              the zero lists in the order of their linears
The header states the whole file's size, so a truncated file is refused before any tensor is read.

Loading (read_packed): the embeddings always stay memory-mapped, never read whole (a 7B's table is 262
MB); the packed runner reads their rows with pread instead (FileRows: a row read from the mapping can
keep up to 2 MB of it resident). Everything else is either mapped too (load="map": nothing read
up front, pages shared with other processes) or read into one anonymous buffer advised for 2 MB huge
pages (load="read", the default): one copy either way, but a decode step streams every sign and the
head once, and through 4 KB file pages that ran 20-30% slower than through huge pages (docs/runtime.md).
"""
from __future__ import annotations

import json
import mmap
import os
import struct
import tempfile
from pathlib import Path

import numpy as np

from ..core.errors import TinyFBIError

MAGIC = b"TFBIPACK"
VERSION = 2              # 2 added the zero lists
VERSION_NIB4 = 3         # 3 added "sign_layout": a file whose signs are nib4 tiles
READABLE = (1, 2, 3)
SIGN_LAYOUTS = ("blocked", "nib4")
ALIGN = 64
PREFIX = struct.Struct("<8sIQ")          # magic, version, header length
ZEROS_DTYPE = np.dtype("<i4")            # (row, column) pairs of one linear's exact-zero weights
COPY_CHUNK = 64 << 20                    # bytes moved at a time from the zero lists' spill file
ALWAYS_MAPPED = ("model.embed_tokens.weight",)   # read a row at a time: never loaded whole
LOADS = ("read", "map")


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def plan_spans(plan: dict) -> tuple[dict, int]:
    """({name: (offset, nbytes)}, end of the data) for a plan (name -> (kind, dtype, shape, ...)), each
    tensor 64-byte aligned in plan order, as the file lays them out: a group stored back to back in the
    plan is back to back in any buffer laid out alike (PackedRunner.random's)."""
    spans, end = {}, 0
    for name, (_, dtype, shape, *_rest) in plan.items():
        offset = _align(end)
        spans[name] = (offset, int(np.dtype(dtype).itemsize * np.prod(shape, dtype=np.int64)))
        end = offset + spans[name][1]
    return spans, end


def sign_layout(header: dict) -> str:
    """The layout a file's signs are stored in: 'blocked' (every version-1/2 file) or 'nib4'."""
    return header.get("sign_layout", "blocked")


def zeros_name(weight_name: str) -> str:
    """The zero list of a binarized linear: `model.layers.0.mlp.up_proj.weight` -> `....up_proj.zeros`."""
    return weight_name.removesuffix(".weight") + ".zeros"


class PackedWriter:
    """A .fbipack written tensor by tensor, in whatever order the checkpoint's files hold them, one
    tensor in memory at a time: every tensor's place in the file is fixed by the plan before any
    weight is read.

    plan: name -> (kind, dtype, shape[, in_features, out_features]) of every tensor, in file order. A zero list's
    length is known only once its weight is read, so they are spilled to a temporary file beside the
    output and copied after the planned tensors by finish(). With zero_lists, the header is padded
    to the length it would have if every weight of every binarized linear were zero: its length, and
    so every planned offset, depends on names and shapes alone. Without, no room is kept for them.

        with atomic_open(out) as f:
            w = PackedWriter(f, config_json, plan, tokenizer, zero_lists=True)
            for name, array in tensors: w.write(name, array)        # any order
            w.write_zeros("model.layers.0.mlp.up_proj.zeros", positions)
            w.finish()
    """

    def __init__(self, f, config_json: dict, plan: dict, tokenizer: dict | None = None, zero_lists: bool = False,
                 layout: str = "blocked"):
        if layout not in SIGN_LAYOUTS:
            raise ValueError(f"sign layout must be one of {SIGN_LAYOUTS}, got {layout!r}")
        self.f, self.config_json, self.tokenizer, self.layout = f, config_json, tokenizer, layout
        self.table = {}
        spans, offset = plan_spans(plan)
        for name, (kind, dtype, shape, *rest) in plan.items():
            self.table[name] = {"kind": kind, "dtype": np.dtype(dtype).str, "shape": [int(n) for n in shape],
                                "offset": spans[name][0], "nbytes": spans[name][1]}
            if rest:                                         # signs: the linear's (in, out) features
                self.table[name]["in_features"] = int(rest[0])
                self.table[name]["out_features"] = int(rest[1]) if len(rest) > 1 else int(shape[0])
        self.planned_end = offset = _align(offset)
        # the longest zero lists there could be: every weight of every binarized linear
        self.most_zeros = {zeros_name(name): e["out_features"] * e["in_features"]
                           for name, e in self.table.items() if zero_lists and e["kind"] == "signs"}
        widest = dict(self.table)
        for name, n in self.most_zeros.items():
            widest[name] = self._zeros_entry(n, offset)
            offset = _align(offset + widest[name]["nbytes"])
        self.data_start = self._data_start(widest, offset)
        self.written, self.zeros = set(), {}                 # zeros: name -> (offset in the spill, count)
        self.spill = tempfile.TemporaryFile(dir=Path(f.name).parent) if self.most_zeros else None

    @staticmethod
    def _zeros_entry(count: int, offset: int) -> dict:
        return {"kind": "zeros", "dtype": ZEROS_DTYPE.str, "shape": [count, 2], "offset": offset,
                "nbytes": count * 2 * ZEROS_DTYPE.itemsize}

    def _header(self, table: dict, file_size=None) -> dict:
        header = {"config": self.config_json, "tokenizer": self.tokenizer, "tensors": table}
        if self.layout != "blocked":
            header["sign_layout"] = self.layout
        if file_size is not None:
            header["file_size"] = file_size
        return header

    def _data_start(self, table: dict, data_bytes: int) -> int:
        """Where the data starts after a header holding `table`: the header records the file's size,
        which depends on the header's own length, so iterate once (32 bytes of slack absorb the rest)."""
        data_start = _align(PREFIX.size + len(json.dumps(self._header(table)).encode()) + 32)
        header = self._header(table, data_start + data_bytes)
        return _align(PREFIX.size + len(json.dumps(header).encode()) + 32)

    def write(self, name: str, array: np.ndarray):
        entry = self.table.get(name)
        if entry is None or name in self.written:
            raise TinyFBIError(f"tensor {name!r} is not in the plan, or written twice")
        array = np.ascontiguousarray(array)
        if array.dtype.str != entry["dtype"] or list(array.shape) != entry["shape"]:
            raise TinyFBIError(f"tensor {name!r} is {array.dtype.str} {list(array.shape)}, "
                               f"the plan says {entry['dtype']} {entry['shape']}")
        self.f.seek(self.data_start + entry["offset"])
        self.f.write(array.data.cast("B") if array.size else b"")
        self.written.add(name)

    def write_zeros(self, name: str, positions: np.ndarray):
        """positions (n, 2): (row, column) of each exact-zero weight of one linear; none: nothing stored."""
        if name not in self.most_zeros or name in self.zeros:
            raise TinyFBIError(f"{name!r} is not a zero list this file has room for, or written twice")
        positions = np.ascontiguousarray(positions, ZEROS_DTYPE).reshape(-1, 2)
        if len(positions):
            self.zeros[name] = (self.spill.tell(), len(positions))
            self.spill.write(positions.data.cast("B"))

    def finish(self):
        """Copy the zero lists after the planned tensors, write the header; the file is complete."""
        missing = [name for name in self.table if name not in self.written]
        if missing:
            raise TinyFBIError(f"tensor {missing[0]!r} was planned but never written")
        table, offset = dict(self.table), self.planned_end
        for name in self.most_zeros:                         # in the order of their linears
            if name not in self.zeros:
                continue
            spilled, count = self.zeros[name]
            table[name] = self._zeros_entry(count, offset)
            self.spill.seek(spilled)
            self.f.seek(self.data_start + offset)
            left = table[name]["nbytes"]
            while left:
                chunk = self.spill.read(min(left, COPY_CHUNK))
                self.f.write(chunk)
                left -= len(chunk)
            offset = _align(offset + table[name]["nbytes"])
        if self.spill is not None:
            self.spill.close()
        file_size = self.data_start + offset
        header = json.dumps(self._header(table, file_size)).encode()
        if PREFIX.size + len(header) > self.data_start:      # cannot happen: the room was for the widest header
            raise AssertionError("the .fbipack header outgrew the room planned for it")
        self.f.seek(0)
        version = VERSION if self.layout == "blocked" else VERSION_NIB4
        self.f.write(PREFIX.pack(MAGIC, version, self.data_start - PREFIX.size))
        self.f.write(header.ljust(self.data_start - PREFIX.size))
        self.f.truncate(file_size)


def read_packed(path, load: str = "read", mapped: tuple = ()):
    """-> (header dict, {name: array}); refuses other versions and truncated files. load="map": every
    tensor a view into one read-only mapping of the file; "read": the embeddings and the tensors named in
    `mapped` so (a head that is converted at load), the rest read into one huge-page buffer (module
    docstring)."""
    header, data_start = read_header(path)
    return header, load_tensors(path, header, data_start, load, mapped)


def read_header(path) -> tuple[dict, int]:
    """-> (header dict, where the tensor data starts); refuses other versions and truncated files."""
    path = Path(path)
    if not path.is_file():
        raise TinyFBIError(f"{path} does not exist")
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(PREFIX.size)
        if len(prefix) < PREFIX.size or prefix[:8] != MAGIC:
            raise TinyFBIError(f"{path} is not a tinyfbi packed file")
        _, version, header_len = PREFIX.unpack(prefix)
        if version not in READABLE:
            raise TinyFBIError(f"{path} is packed format version {version}; this tinyfbi reads versions "
                               f"{', '.join(map(str, READABLE))} (repack it with this version's `python -m tinyfbi.pack`)")
        raw = f.read(header_len)
    try:
        header = json.loads(raw.decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise TinyFBIError(f"{path} has a corrupted header (truncated file?)") from None
    if size != header.get("file_size"):
        raise TinyFBIError(f"{path} is truncated or padded: {size} bytes, the header says {header.get('file_size')}")
    return header, PREFIX.size + header_len


def load_tensors(path, header: dict, data_start: int, load: str = "read", mapped: tuple = ()) -> dict:
    """{name: array} of the file read_header described (read_packed's load and mapped)."""
    if load not in LOADS:
        raise ValueError(f"load must be one of {LOADS}, got {load!r}")
    # one read-only mapping of the whole file, every tensor a view into it: nothing is read until used,
    # and tensors stored back to back (a layer's q/k/v signs) can be viewed as one array
    mapping = np.memmap(path, dtype=np.uint8, mode="r")
    tensors = header["tensors"]
    where = {name: (mapping, data_start + t["offset"]) for name, t in tensors.items()}
    if load == "read":
        where.update(_read_resident(path, data_start, tensors, ALWAYS_MAPPED + tuple(mapped)))
    arrays = {}
    for name, t in tensors.items():
        source, start = where[name]
        arrays[name] = (source[start:start + t["nbytes"]].view(np.dtype(t["dtype"])).reshape(t["shape"])
                        if t["nbytes"] else np.zeros(t["shape"], t["dtype"]))
    return arrays


def _read_resident(path, data_start: int, tensors: dict, mapped: tuple) -> dict:
    """Every tensor but those in `mapped` read into one anonymous buffer -> {name: (buffer, offset in it)}.
    Each tensor keeps its place relative to its file neighbours (a mapped tensor's span is left out), so
    tensors stored back to back (a layer's q/k/v signs) stay back to back and 64-byte aligned."""
    spans = sorted((t["offset"], name) for name, t in tensors.items() if t["nbytes"])
    runs, where, size = [], {}, 0          # runs: (file offset, buffer offset, bytes) read in one call
    for i, (offset, name) in enumerate(spans):
        end = spans[i + 1][0] if i + 1 < len(spans) else offset + tensors[name]["nbytes"]
        if name in mapped:
            continue
        if runs and runs[-1][0] + runs[-1][2] == offset:
            runs[-1] = (runs[-1][0], runs[-1][1], runs[-1][2] + end - offset)
        else:
            runs.append((offset, size, end - offset))
        where[name] = size
        size += end - offset
    if not size:
        return {}
    private = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0)
    # private anonymous memory (Python's default for -1 is shared, which Linux backs with shmem pages
    # that are not huge); zero pages until written
    buf = mmap.mmap(-1, size, flags=private) if private else mmap.mmap(-1, size)
    if hasattr(mmap, "MADV_HUGEPAGE"):                        # Linux: 2 MB pages where the kernel allows
        buf.madvise(mmap.MADV_HUGEPAGE)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        for file_offset, buf_offset, nbytes in runs:
            f.seek(data_start + file_offset)
            done = 0
            while done < nbytes:                              # readinto may return less than asked
                got = f.readinto(view[buf_offset + done: buf_offset + nbytes])
                if not got:
                    raise TinyFBIError(f"{path} ended while reading its tensors (truncated while loading?)")
                done += got
    resident = np.frombuffer(buf, np.uint8)
    resident.flags.writeable = False
    return {name: (resident, offset) for name, offset in where.items()}


class FileRows:
    """A 2-D tensor of a file looked up a row at a time with pread (the runner's embedding table), never
    mapped. Rows read from a mapping stay mapped, and each counts in the process's resident memory with
    the page-cache folio around it: up to 2 MB per row where the kernel caches the file in large folios
    (Linux 6.18 here: 128 random rows of a 7B's 250 MB fp16 table mapped 108 MB). A row read by pread
    costs one system call and leaves nothing mapped. Holds the file open: a file replaced meanwhile
    (atomically, by another name) is still read as it was."""

    def __init__(self, path, offset: int, shape, dtype):
        self.shape, self.dtype = tuple(int(n) for n in shape), np.dtype(dtype)
        if len(self.shape) != 2:
            raise ValueError(f"FileRows reads a 2-D tensor, got shape {self.shape}")
        self.offset, self.row_bytes = int(offset), self.shape[1] * self.dtype.itemsize
        self._fd = os.open(path, os.O_RDONLY)

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.row_bytes

    def __getitem__(self, index) -> np.ndarray:
        """int or integer array (any shape) -> rows (index.shape + (columns,)), a fresh array."""
        idx = np.asarray(index)
        if idx.dtype.kind not in "iu":
            raise TypeError(f"rows are looked up by integer index, got {idx.dtype}")
        flat = idx.reshape(-1).astype(np.int64)
        if flat.size and (flat.min() < 0 or flat.max() >= self.shape[0]):
            raise IndexError(f"row index out of range for {self.shape[0]} rows")
        out = np.empty((flat.size, self.shape[1]), self.dtype)
        rows = out.view(np.uint8).reshape(flat.size, self.row_bytes)
        for i, r in enumerate(flat):
            if os.preadv(self._fd, [rows[i]], self.offset + int(r) * self.row_bytes) != self.row_bytes:
                raise TinyFBIError("the packed file ended while reading its embedding rows (truncated?)")
        return out.reshape(idx.shape + (self.shape[1],))

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self):
        self.close()


def drop_mapped_pages(array: np.ndarray):
    """Unmap the file pages under `array` (a view of read_packed's mapping) from this process once it has
    been converted and is no longer read: they leave its resident memory (the page cache keeps them, and
    a later read maps them again). A no-op for anything else, or where madvise is missing."""
    root = array
    while root is not None and not isinstance(getattr(root, "base", None), mmap.mmap):
        root = getattr(root, "base", None)
    if not isinstance(root, np.memmap) or not hasattr(mmap, "MADV_DONTNEED") or array.nbytes == 0:
        return                             # never the private buffer: MADV_DONTNEED would zero its pages
    start = array.__array_interface__["data"][0] - root.__array_interface__["data"][0]
    first = start // mmap.PAGESIZE * mmap.PAGESIZE                # madvise wants whole pages
    root.base.madvise(mmap.MADV_DONTNEED, first, start + array.nbytes - first)

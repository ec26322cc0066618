"""Hugging Face names in: `owner/name` (e.g. LiqunMa/FBI-LLM_1.3B) resolved to a snapshot folder of the
local Hugging Face cache, laid out as huggingface_hub lays it out, never downloaded here:

    $HF_HUB_CACHE (default ~/.cache/huggingface/hub, or $HF_HOME/hub)
      models--LiqunMa--FBI-LLM_1.3B/refs/main                 the commit `main` points at
      models--LiqunMa--FBI-LLM_1.3B/snapshots/<commit>/...    config.json, weights, tokenizer.model

    python -m tinyfbi.generate --ckpt LiqunMa/FBI-LLM_1.3B --chat    # packs it once (runtime.build_fbipack)
"""
from __future__ import annotations

import re
from pathlib import Path

from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError

from ..core.errors import TinyFBIError

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")   # owner/name, as the Hub spells them


def is_hub_name(text: str) -> bool:
    """An `owner/name` that is not a path on this machine."""
    return bool(REPO_ID.match(text)) and not Path(text).exists()


def cached_snapshot(repo: str, revision: str = "main") -> tuple[Path, str]:
    """-> (snapshot folder, its commit) of a model in the local Hugging Face cache; uncached, a one-line
    error naming the folder searched and the command that fills it."""
    try:
        folder = Path(snapshot_download(repo, revision=revision, local_files_only=True))
    except LocalEntryNotFoundError:
        searched = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
        raise TinyFBIError(f"{repo} ({revision}) is not in the Hugging Face cache (searched {searched}): on a "
                           f"connected machine run `hf download {repo}` (huggingface_hub < 1.0: `huggingface-cli "
                           f"download {repo}`), then copy the cache here or point HF_HUB_CACHE at it") from None
    return folder, folder.name

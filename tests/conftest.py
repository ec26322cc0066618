import json
import os
from pathlib import Path

import pytest

# no hub is reachable from CI: make any hub access fail at once instead of retrying
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TINYFBI_FAST", "1")


def metrics(path):
    """Rows of a run's metrics.jsonl."""
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


@pytest.fixture(scope="module")
def one_torch_thread():
    # torch's OpenMP workers spin between ops: on 2 shared cores, 2 threads ran these runs 8x slower
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

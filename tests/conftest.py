import json
import os
import tempfile
from pathlib import Path

import pytest

# no hub is reachable from CI: make any hub access fail at once instead of retrying
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TINYFBI_FAST", "1")
# packed copies a test makes (a file rewritten in another sign layout, a model packed on first use) go to
# a folder of this session, never the user's ~/.cache/tinyfbi
os.environ.setdefault("TINYFBI_CACHE", tempfile.mkdtemp(prefix="tinyfbi-test-cache-"))


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


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """A small real corpus without any download: Python's pydoc topics (0.47 MB of text)."""
    import pydoc_data.topics
    path = tmp_path_factory.mktemp("corpus") / "topics.txt"
    path.write_text("\n".join(pydoc_data.topics.topics.values()))
    return path


def poison_batch(monkeypatch, learner_class, data_step):
    """Make the learner's loss NaN on the given data step (the (data_step + 1)-th batch drawn)."""
    original, calls = learner_class.forward_backward, []

    def poisoned(self, x, y, windows):
        calls.append(1)
        loss = original(self, x, y, windows)
        return float("nan") if len(calls) == data_step + 1 else loss

    monkeypatch.setattr(learner_class, "forward_backward", poisoned)

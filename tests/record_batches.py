"""`python tests/record_batches.py TRAIN_FLAGS`: tinyfbi.train, recording which sequences each
process reads. Rows of the test's prepared folder carry their own index (ids 0 and 1: i % 256,
i // 256); every batch a process reads appends {"rank", "step", "rows", "index"} to
$RECORD_DIR/rank<R>.jsonl (flushed at once, so a SIGKILL loses at most a partial last line)."""
import json
import os
import sys
from pathlib import Path

from tinyfbi.corpus.batches import BatchSampler
from tinyfbi.train import main


def install(record_dir):
    read = BatchSampler.batch

    def recorded(self, step):
        x, y = read(self, step)
        rows = range(self.batch_size)[self.rows]
        index = [int(x[r, 0]) + 256 * int(x[r, 1]) for r in rows]
        path = Path(record_dir) / f"rank{os.environ.get('RANK', '0')}.jsonl"
        with open(path, "a") as f:
            f.write(json.dumps({"step": int(step), "rows": [rows.start, rows.stop], "index": index}) + "\n")
        return x, y

    BatchSampler.batch = recorded


if __name__ == "__main__":
    install(os.environ["RECORD_DIR"])
    main(sys.argv[1:])

"""Text to batches: sources -> tokenizers -> token files -> batches (a corpus that fits in memory), or
streams -> prepare -> shards -> batches (any size: python -m tinyfbi.prepare); order: the epoch order."""

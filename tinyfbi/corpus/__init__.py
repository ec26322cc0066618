"""Text to batches: sources -> tokenizers -> token files -> batches."""

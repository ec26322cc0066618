"""Evaluation: perplexity as the paper measures it, and tinyfbi as an lm-eval model."""

"""Evaluation helpers for xopd: synthetic speech, ASR/LLM scoring and reasoning-gap benchmarks."""

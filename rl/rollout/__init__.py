"""Rollouts: engines (Hugging Face, vLLM), chat formatting, the multi-turn episode loop, the worker pool."""

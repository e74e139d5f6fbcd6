"""Tiny models without downloads.

A byte-level BPE tokenizer (the kind Qwen uses) is trained on the task's own text
and a small Qwen2-shaped model is initialised from a config; both are saved as a
normal Hugging Face directory, which the rest of the code loads with
`AutoTokenizer` / `AutoModelForCausalLM` exactly as it loads a real model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from rl.config import TinyModelConfig

EOS = "<|endoftext|>"


def train_tokenizer(texts: list[str], cfg: TinyModelConfig) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet() if cfg.byte_alphabet else []
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size, special_tokens=[EOS], initial_alphabet=alphabet, show_progress=False
    )
    tok.train_from_iterator(texts, trainer)
    tok.add_tokens(cfg.single_tokens)  # matched before the byte-level split, so each is one token wherever it occurs
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS)


def build_tiny_model(out_dir: str | Path, texts: list[str], cfg: TinyModelConfig, seed: int) -> Path:
    """Train a tokenizer on `texts`, initialise a Qwen2-style model with `seed`, save both to `out_dir`."""
    out_dir = Path(out_dir)
    tokenizer = train_tokenizer(texts, cfg)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden,
        intermediate_size=cfg.intermediate,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.kv_heads,
        max_position_embeddings=cfg.max_positions,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng():  # keep the caller's global RNG untouched
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir

"""Tiny models are normal Hugging Face directories: AutoTokenizer/AutoModelForCausalLM load them."""

import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rl.config import TinyModelConfig
from rl.run.tiny import build_tiny_model


def test_tokenizer_round_trip_through_autotokenizer(tiny_model_dir):
    assert json.loads((tiny_model_dir / "config.json").read_text())["model_type"] == "qwen2"
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    # The transformers-5 trap: a word-level tokenizer.json would load here as an empty Qwen2 tokenizer.
    assert len(tok) > 100
    for text in ["what is kalu red .", " no , try again : blue .", "hello world, try again !", "unseen ünïcode ✓ text"]:
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.unk_token_id not in ids
        assert tok.decode(ids) == text
    assert tok.eos_token == "<|endoftext|>" and tok.eos_token_id is not None


def test_model_loads_and_runs(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert model.config.vocab_size == len(tok)
    logits = model(torch.tensor([tok.encode("what is kalu")])).logits
    assert logits.shape[-1] == len(tok) and torch.isfinite(logits).all()


def test_whole_strings_are_one_token_each_after_a_reload(tmp_path):
    tags = ["<search>", "</search>", "<judge>", "</judge>"]
    text = (
        "Question: Where was Boma Dabelo born?\n<search> Boma Dabelo </search>\n\n"
        "<judge>No</judge><search> Dabelo </search>"
    )
    build_tiny_model(tmp_path, [text] * 10, TinyModelConfig(vocab_size=300, single_tokens=tags), seed=0)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    ids = tok.encode(text, add_special_tokens=False)
    assert (
        tok.decode(ids) == text and tok.decode(ids, skip_special_tokens=True) == text
    )  # kept in the text rollouts decode
    pieces = [tok.decode([i]) for i in ids]
    assert pieces.count("<search>") == 2 and all(pieces.count(t) >= 1 for t in tags)
    assert [tok.decode([i]) for i in tok.encode("<judge>Yes</judge>", add_special_tokens=False)][0] == "<judge>"

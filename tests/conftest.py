"""Shared fixtures: a tiny model built once per session, through the same code path as a real one."""

import json

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from envs.base import Trajectory, Turn
from envs.lookup import LookupParams, load_tasks, sample_text
from rl.config import TinyModelConfig
from rl.run.tiny import build_tiny_model

LOOKUP_TINY = TinyModelConfig(
    layers=2, hidden=64, intermediate=128, heads=4, kv_heads=2, vocab_size=128, byte_alphabet=False
)
# A chat template in the style of ChatML, using the tiny tokenizer's EOS as the end-of-turn token.
CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }}<|endoftext|>\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant> {% endif %}"
)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A 2-layer Qwen2-style model and a byte-level BPE covering all bytes, trained on lookup text."""
    out = tmp_path_factory.mktemp("tiny")
    texts = sample_text(LookupParams()) + ["<user> <assistant> <system> hello world, try again !"]
    return build_tiny_model(out, texts, TinyModelConfig(vocab_size=256), seed=0)


@pytest.fixture(scope="session")
def tiny(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture
def lookup_experts(tmp_path):
    """An SFT file of the right answer to every key of the lookup table: a tiny model learns them in tens of steps."""
    path = tmp_path / "experts.jsonl"
    path.write_text(
        "".join(
            json.dumps(Trajectory(task, [Turn(f" {task.metadata['answer']}", "", {"score": 1.0})]).to_dict()) + "\n"
            for task in load_tasks(LookupParams(), "train")
        )
    )
    return path

"""Inference engines: token ids in, token ids and their sampling logprobs out.

`Engine` is the interface the rollout talks to; `HFEngine` implements it with
Hugging Face `transformers` on CPU or GPU (vLLM plugs in behind the same
interface). Every request carries its own seed, so a sequence's samples do not
depend on which other sequences share its batch.

Logprob convention: the logprob recorded for a sampled token is its log
probability under softmax(logits / temperature), before top-p/top-k truncation;
the learner computes exactly this quantity, so before any update the PPO ratio is
1. (With top-p/top-k < full vocabulary, sampling is from the truncated
distribution, a known small bias shared with every peer system.)
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Protocol

import torch
from transformers import DynamicCache


@dataclass
class SamplingParams:
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 means no top-k
    stop: list[str] = field(default_factory=list)  # generation ends right after the first of these strings


@dataclass
class Request:
    prompt_ids: list[int]
    max_new_tokens: int
    seed: int


@dataclass
class Generation:
    token_ids: list[int]  # sampled ids, including the stop string or EOS that ended them
    logprobs: list[float]  # one per sampled id
    finish_reason: str  # "stop" (a stop string), "eos", or "length"


class Engine(Protocol):
    def generate(self, requests: list[Request], params: SamplingParams) -> list[Generation]: ...

    def update_weights(self, weights: dict[str, torch.Tensor]) -> None: ...

    def probe_logprobs(self, sequences: list[list[int]]) -> list[list[float]]: ...


def sample_tokens(logits: torch.Tensor, params: SamplingParams, uniforms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row. logits: [B, V] float32; uniforms: [B] in [0, 1).

    Returns (token ids [B], logprobs [B] under softmax(logits / temperature)).
    Inverse-CDF sampling with one uniform per row keeps rows independent of each other.
    """
    if params.temperature == 0:
        tokens = logits.argmax(-1)
        return tokens, logits.log_softmax(-1).gather(-1, tokens[:, None])[:, 0]
    logprobs = (logits / params.temperature).log_softmax(-1)  # [B, V]
    probs = logprobs.exp()
    if params.top_k > 0:
        kth = probs.topk(min(params.top_k, probs.shape[-1]), dim=-1).values[:, -1:]
        probs = probs.masked_fill(probs < kth, 0.0)
    if params.top_p < 1.0:
        sorted_probs, order = probs.sort(-1, descending=True)
        mass_before = sorted_probs.cumsum(-1) - sorted_probs
        sorted_probs = sorted_probs.masked_fill(mass_before >= params.top_p * sorted_probs.sum(-1, keepdim=True), 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    cdf = probs.cumsum(-1)  # [B, V]
    targets = uniforms.to(cdf.device, cdf.dtype)[:, None] * cdf[:, -1:]
    tokens = torch.searchsorted(cdf, targets)[:, 0].clamp_(max=probs.shape[-1] - 1)
    return tokens, logprobs.gather(-1, tokens[:, None])[:, 0]


class HFEngine:
    """Batched sampling with a `transformers` causal LM and a KV cache."""

    def __init__(self, model, tokenizer, device: str | torch.device = "cpu"):
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.eos_ids = set(_eos_ids(model, tokenizer))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_ids)
        self._enders: dict[tuple[str, ...], set[int]] = {}  # see _stop_enders
        # transformers renamed `past_key_values` to `cache` during 5.x; take whichever this version has.
        self.cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    @torch.no_grad()
    def update_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Copy parameters in place; `weights` may be one bucket of them (syncs send several)."""
        params = dict(self.model.named_parameters())
        unknown = set(weights) - set(params)
        if unknown:
            raise ValueError(f"update_weights: unknown parameters, e.g. {sorted(unknown)[:3]}")
        for name, tensor in weights.items():
            params[name].copy_(tensor)

    @torch.no_grad()
    def probe_logprobs(self, sequences: list[list[int]]) -> list[list[float]]:
        """Logprob of every token after the first of each sequence (the check after a weight sync).

        One right-padded forward: attention is causal, so padding never reaches a real token.
        """
        width = max(len(ids) for ids in sequences)
        ids = torch.tensor([seq + [self.pad_id] * (width - len(seq)) for seq in sequences], device=self.device)
        logprobs = self.model(input_ids=ids, use_cache=False).logits.float()[:, :-1].log_softmax(-1)
        picked = logprobs.gather(-1, ids[:, 1:, None])[..., 0].cpu()  # [B, width - 1]
        return [picked[i, : len(seq) - 1].tolist() for i, seq in enumerate(sequences)]

    @torch.no_grad()
    def generate(self, requests: list[Request], params: SamplingParams) -> list[Generation]:
        if not requests:
            return []
        batch = len(requests)
        prompt_len = max(len(r.prompt_ids) for r in requests)
        # Left-pad so every row's next token sits in the last column.
        input_ids = torch.full((batch, prompt_len), self.pad_id, dtype=torch.long)
        attention = torch.zeros((batch, prompt_len), dtype=torch.long)
        for i, r in enumerate(requests):
            input_ids[i, prompt_len - len(r.prompt_ids) :] = torch.tensor(r.prompt_ids)
            attention[i, prompt_len - len(r.prompt_ids) :] = 1
        input_ids, attention = input_ids.to(self.device), attention.to(self.device)
        positions = (attention.cumsum(-1) - 1).clamp_(min=0)
        # Each request draws all its uniforms from its own seed up front, as many as it may
        # use (so they depend on nothing else in the batch); padded to [B, max_steps].
        max_steps = max(r.max_new_tokens for r in requests)
        uniforms = torch.zeros(batch, max_steps)
        for i, r in enumerate(requests):
            uniforms[i, : r.max_new_tokens] = torch.rand(r.max_new_tokens, generator=torch.Generator().manual_seed(r.seed))
        stop_window = max((len(s.encode()) for s in params.stop), default=0) + 1  # tokens that can hold a stop string

        out_ids: list[list[int]] = [[] for _ in requests]
        out_logprobs: list[list[float]] = [[] for _ in requests]
        finish: list[str | None] = [None] * batch
        cache = DynamicCache()
        logits = self._forward(input_ids, attention, positions, cache)
        for step in range(max_steps):
            tokens, logprobs = sample_tokens(logits, params, uniforms[:, step])
            tokens_list, logprobs_list = tokens.tolist(), logprobs.tolist()
            for i, r in enumerate(requests):
                if finish[i] is not None:
                    continue
                out_ids[i].append(tokens_list[i])
                out_logprobs[i].append(logprobs_list[i])
                finish[i] = self._finished(out_ids[i], r.max_new_tokens, params.stop, stop_window)
            if all(f is not None for f in finish):
                break
            attention = torch.cat([attention, attention.new_ones((batch, 1))], dim=1)
            positions = positions[:, -1:] + 1
            logits = self._forward(tokens[:, None], attention, positions, cache)
        return [Generation(ids, lps, f or "length") for ids, lps, f in zip(out_ids, out_logprobs, finish)]

    def _forward(self, input_ids, attention, positions, cache) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention, position_ids=positions, use_cache=True, **{self.cache_arg: cache})
        return out.logits[:, -1, :].float()  # [B, V]

    def _stop_enders(self, stop: tuple[str, ...]) -> set[int]:
        """Token ids that can complete one of `stop`: their text holds a stop string's last character
        (or is a partial UTF-8 byte). Only after such a token is the tail decoded; computed once."""
        if stop not in self._enders:
            last = {s[-1] for s in stop}
            texts = self.tokenizer.batch_decode([[i] for i in range(len(self.tokenizer))])
            self._enders[stop] = {i for i, t in enumerate(texts) if "\ufffd" in t or any(c in t for c in last)}
        return self._enders[stop]

    def _finished(self, ids: list[int], max_new: int, stop: list[str], window: int) -> str | None:
        if ids[-1] in self.eos_ids:
            return "eos"
        if stop and ids[-1] in self._stop_enders(tuple(stop)):
            tail = self.tokenizer.decode(ids[-window:])
            if any(s in tail for s in stop):
                return "stop"
        if len(ids) >= max_new:
            return "length"
        return None


def _eos_ids(model, tokenizer) -> list[int]:
    ids = model.generation_config.eos_token_id if model.generation_config is not None else None
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    if not ids:
        raise ValueError("the model has no EOS token id: set eos_token_id in its generation_config.json")
    return ids

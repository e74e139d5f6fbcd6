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

from dataclasses import dataclass, field
from typing import Protocol

import torch
from transformers import DynamicCache

from rl.tensors import distinct_rows, forward_args


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

    def update_weights(self, weights: dict[str, torch.Tensor]) -> None: ...  # one bucket of a sync

    def finish_sync(self) -> None: ...  # the sync's last bucket has arrived

    def probe_logprobs(self, sequences: list[list[int]]) -> list[list[float]]: ...

    def describe(self) -> str: ...  # engine, version, device, dtype


def sample_tokens(
    logits: torch.Tensor, params: SamplingParams, uniforms: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
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
    """Batched sampling with a `transformers` causal LM and a KV cache.

    A GRPO group's shared prompt is prefilled once. The cache of the last call is kept until the next
    call or a weight update: a request that extends one of its rows (the next turn of the same episode)
    runs only its new tokens on top of it, the observation instead of the whole history.
    """

    def __init__(self, model, tokenizer, device: str | torch.device = "cpu"):
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.eos_ids = set(_eos_ids(model, tokenizer))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_ids)
        self._tables: dict[tuple[str, ...], torch.Tensor] = {}  # see _token_table
        # (cache, tokens each row holds, first column of each row) of the last generate: the next turn of
        # the same episodes continues from it. Dropped by a weight update.
        self._previous = None
        args = forward_args(model)
        self.cache_arg = args.cache
        # Only the last position's logits are sampled from: skip the LM head on the rest of the prompt.
        self.last_logits_only = {"logits_to_keep": 1} if args.logits_to_keep else {}

    @torch.no_grad()
    def update_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Copy parameters in place; `weights` may be one bucket of them (syncs send several)."""
        params = dict(self.model.named_parameters())
        unknown = set(weights) - set(params)
        if unknown:
            raise ValueError(f"update_weights: unknown parameters, e.g. {sorted(unknown)[:3]}")
        for name, tensor in weights.items():
            params[name].copy_(tensor)
        self._previous = None

    def finish_sync(self) -> None:
        """Nothing left to do: each bucket was written in place as it came."""

    def describe(self) -> str:
        import transformers

        return f"hf {transformers.__version__} {self.device.type} {str(self.model.dtype).removeprefix('torch.')}"

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
        # Each request draws all its uniforms from its own seed up front, as many as it may
        # use (so they depend on nothing else in the batch); padded to [B, max_steps].
        max_steps = max(r.max_new_tokens for r in requests)
        uniforms = torch.zeros(batch, max_steps)
        for i, r in enumerate(requests):
            uniforms[i, : r.max_new_tokens] = torch.rand(
                r.max_new_tokens, generator=torch.Generator().manual_seed(r.seed)
            )
        stop_window = max((len(s.encode()) for s in params.stop), default=0) + 1  # tokens that can hold a stop string
        # Token t of row i (prompt, then sampled tokens) sits in cache column first_column[i] + t.
        logits, cache, attention, positions, first_column = self._continue_previous(requests) or self._prefill(requests)

        # Finished rows are found with tensor lookups; only a row whose last token can end a stop
        # string has its tail decoded. Rows go on being sampled until all are done (one batch).
        vocab = logits.shape[-1]
        is_eos = self._token_table(("eos",), vocab, lambda: self.eos_ids)
        can_stop = (
            self._token_table(("stop", *params.stop), vocab, lambda: self._stop_enders(params.stop))
            if params.stop
            else None
        )
        limits = torch.tensor([r.max_new_tokens for r in requests])
        sampled = torch.zeros((batch, max_steps), dtype=torch.long)
        sampled_logprobs = torch.zeros((batch, max_steps))
        running = torch.ones(batch, dtype=torch.bool)
        length = [max_steps] * batch
        finish: list[str | None] = [None] * batch
        step = 0
        for step in range(max_steps):
            tokens, logprobs = sample_tokens(logits, params, uniforms[:, step])
            tokens_cpu = tokens.cpu()
            sampled[:, step], sampled_logprobs[:, step] = tokens_cpu, logprobs.cpu()
            eos = running & is_eos[tokens_cpu]
            stopped = torch.zeros_like(eos)
            if can_stop is not None:
                for i in (running & ~eos & can_stop[tokens_cpu]).nonzero()[:, 0].tolist():
                    tail = self.tokenizer.decode(sampled[i, max(0, step + 1 - stop_window) : step + 1].tolist())
                    stopped[i] = any(stop in tail for stop in params.stop)
            at_limit = running & ~eos & ~stopped & (limits <= step + 1)
            for reason, rows in (("eos", eos), ("stop", stopped), ("length", at_limit)):
                for i in rows.nonzero()[:, 0].tolist():
                    finish[i], length[i] = reason, step + 1
            running &= ~(eos | stopped | at_limit)
            if not running.any():
                break
            if attention is not None:
                attention = torch.cat([attention, attention.new_ones((batch, 1))], dim=1)
            positions = positions[:, -1:] + 1
            logits = self._forward(tokens[:, None], attention, positions, cache)
        # The last sampled token of the loop was never fed back: the cache holds `step` sampled tokens per row.
        in_cache = [
            r.prompt_ids + sampled[i, : min(n, step)].tolist() for i, (r, n) in enumerate(zip(requests, length))
        ]
        self._previous = (cache, in_cache, first_column)
        return [
            Generation(sampled[i, :n].tolist(), sampled_logprobs[i, :n].tolist(), f or "length")
            for i, (n, f) in enumerate(zip(length, finish))
        ]

    def _prefill(self, requests: list[Request]):
        """A fresh KV cache for the prompts:
        (last logits [B, V], cache, attention mask or None, positions, first columns)."""
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
        first_column = [prompt_len - len(r.prompt_ids) for r in requests]
        if bool(attention.all()):
            attention = None  # no row is padded: plain causal attention, and no mask to build at every step
        cache = DynamicCache()
        # A GRPO group repeats one prompt: prefill each distinct prompt once, then give every row its copy.
        distinct, copy_of = distinct_rows([tuple(r.prompt_ids) for r in requests])
        if len(distinct) < batch:
            expand = torch.tensor(copy_of, device=self.device)
            logits = self._forward(
                input_ids[distinct], attention if attention is None else attention[distinct], positions[distinct], cache
            )[expand]
            cache.reorder_cache(expand)
        else:
            logits = self._forward(input_ids, attention, positions, cache)
        return logits, cache, attention, positions, first_column

    def _continue_previous(self, requests: list[Request]):
        """Like _prefill, reusing the previous call's KV cache when every request extends one of its rows
        (the next turn of the same episodes): only the tokens after the cached ones (the observation,
        a chat template's wrapping) are run. None when some request extends none."""
        if self._previous is None:
            return None
        old_cache, old_rows, old_first = self._previous
        self._previous = None  # used once: the rows it matches are now this call's
        by_length: dict[int, dict[tuple[int, ...], int]] = {}
        for row, tokens in enumerate(old_rows):
            by_length.setdefault(len(tokens), {})[tuple(tokens)] = row
        longest_first = sorted(by_length.items(), reverse=True)
        source, cached = [], []
        for r in requests:
            ids = tuple(r.prompt_ids)
            match = next(((rows[ids[:n]], n) for n, rows in longest_first if n <= len(ids) and ids[:n] in rows), None)
            if match is None:
                return None
            source.append(match[0])
            cached.append(min(match[1], len(ids) - 1))  # at least one token runs, for the next-token logits
        total = torch.tensor([len(r.prompt_ids) for r in requests])
        width = int(total.max())
        new = max(
            len(r.prompt_ids) - n for r, n in zip(requests, cached)
        )  # columns to run; the rest come from the cache
        token_index = torch.arange(width)[None, :] - (width - total)[:, None]  # [B, width]: < 0 on left padding
        tokens = torch.full((len(requests), width), self.pad_id, dtype=torch.long)
        for i, r in enumerate(requests):
            tokens[i, width - len(r.prompt_ids) :] = torch.tensor(r.prompt_ids)
        # Column c of row i takes old column old_first[source i] + token index: the same token, the same position.
        rows = torch.tensor(source)
        columns = (torch.tensor(old_first)[rows][:, None] + token_index[:, : width - new]).clamp_(min=0).to(self.device)
        rows = rows.to(self.device)
        cache = DynamicCache()
        for layer, old in enumerate(old_cache.layers):
            keys, values = old.keys.index_select(0, rows), old.values.index_select(0, rows)
            pick = columns[:, None, :, None].expand(-1, keys.shape[1], -1, keys.shape[3])
            cache.update(keys.gather(2, pick), values.gather(2, pick), layer)
        attention = (token_index >= 0).long().to(self.device)
        positions = token_index.clamp(min=0).to(self.device)
        logits = self._forward(tokens[:, width - new :].to(self.device), attention, positions[:, width - new :], cache)
        return logits, cache, attention, positions, (width - total).tolist()

    def _forward(self, input_ids, attention, positions, cache) -> torch.Tensor:
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention,
            position_ids=positions,
            use_cache=True,
            **{self.cache_arg: cache},
            **self.last_logits_only,
        )
        return out.logits[:, -1, :].float()  # [B, V]

    def _stop_enders(self, stop: list[str]) -> list[int]:
        """Token ids that can complete one of `stop`: their text holds a stop string's last character
        (or is a partial UTF-8 byte). Only after such a token is the tail decoded."""
        last = {s[-1] for s in stop}
        texts = self.tokenizer.batch_decode([[i] for i in range(len(self.tokenizer))])
        return [i for i, t in enumerate(texts) if "\ufffd" in t or any(c in t for c in last)]

    def _token_table(self, key: tuple[str, ...], vocab: int, ids) -> torch.Tensor:
        """[vocab] bool, True on the token ids `ids()` gives; computed once per key."""
        if key not in self._tables:
            table = torch.zeros(vocab, dtype=torch.bool)
            table[[i for i in ids() if i < vocab]] = True
            self._tables[key] = table
        return self._tables[key]


def _eos_ids(model, tokenizer) -> list[int]:
    ids = model.generation_config.eos_token_id if model.generation_config is not None else None
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    if not ids:
        raise ValueError("the model has no EOS token id: set eos_token_id in its generation_config.json")
    return ids

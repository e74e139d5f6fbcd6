"""Inference engines: token ids in, token ids and their sampling logprobs out.

`Engine` is the interface the rollout talks to: requests are added one at a time, whenever an
episode needs its next action, and `step()` advances every request in flight by one token
(continuous batching), returning the ones that finished. `HFEngine` implements it with Hugging Face
`transformers` on CPU or GPU; `VLLMEngine` (rl/rollout/vllm_engine.py) with vLLM's own scheduler.
Every request carries its own seed, so a sequence's samples do not depend on which other sequences
share its batch.

Logprob convention: the logprob recorded for a sampled token is its log
probability under softmax(logits / temperature), before top-p/top-k truncation;
the learner computes exactly this quantity, so before any update the PPO ratio is
1. (With top-p/top-k < full vocabulary, sampling is from the truncated
distribution, a known small bias shared with every peer system.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable, Protocol

import torch
from transformers import DynamicCache

from rl.tensors import distinct_rows, forward_args


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 means no top-k
    stop: tuple[str, ...] = ()  # generation ends right after the first of these strings

    def __post_init__(self):
        object.__setattr__(self, "stop", tuple(self.stop))  # hashable, whatever sequence was given


@dataclass
class Request:
    prompt_ids: list[int]
    max_new_tokens: int
    seed: int
    # the episode the request belongs to: its next turn continues from this one's keys and values
    session: Hashable | None = None


@dataclass
class Generation:
    token_ids: list[int]  # sampled ids, including the stop string or EOS that ended them
    logprobs: list[float]  # one per sampled id
    finish_reason: str  # "stop" (a stop string), "eos", or "length"
    versions: list[int]  # one per sampled id: the weight version (`finish_sync`) that sampled it


class Engine(Protocol):
    #: prompt tokens of the requests admitted so far, and how many of them came from a cache
    prompt_tokens: int
    cached_tokens: int
    #: the weight version it samples with: the one its last `finish_sync` named (0 before any)
    version: int

    def add(self, key: Hashable, request: Request, params: SamplingParams) -> None: ...

    def step(self) -> list[tuple[Hashable, Generation]]: ...  # one token for every request in flight; the finished

    def end_session(self, session: Hashable) -> None: ...  # the episode is over: its cache may go

    def in_flight(self) -> int: ...  # requests added and not finished

    def generate(self, requests: list[Request], params: SamplingParams) -> list[Generation]: ...

    def update_weights(self, weights: dict[str, torch.Tensor]) -> None: ...  # one bucket of a sync

    # The sync's last bucket has arrived: sample with `version` from now on, the requests in flight included.
    def finish_sync(self, version: int) -> None: ...

    def probe_logprobs(self, sequences: list[list[int]]) -> list[list[float]]: ...

    def describe(self) -> str: ...  # engine, version, device, dtype


def generate_all(engine: Engine, requests: list[Request], params: SamplingParams) -> list[Generation]:
    """Every request at once, stepped until all are done: a batch call on a continuously batching engine."""
    for i, r in enumerate(requests):
        engine.add((i,), r, params)
    done: dict[Hashable, Generation] = {}
    while len(done) < len(requests):
        done.update(engine.step())
    return [done[(i,)] for i in range(len(requests))]


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


@dataclass
class _Row:
    """A request in the running batch."""

    key: Hashable
    request: Request
    params: SamplingParams
    uniforms: list[float]  # drawn from the request's seed: one per token it may sample
    sampled: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)


class HFEngine:
    """Continuous batching with a `transformers` causal LM and one KV cache for the running batch.

    Rows are left-padded so that every row's next token sits in the last column. At each `step` the
    requests added since the last one are prefilled and join the batch (a GRPO group's shared prompt
    runs once), every row samples one token, finished rows leave, and the rest run their new token.
    A finished request's keys and values are kept for its session (the episode): its next turn runs
    only the tokens after them, the observation instead of the whole history. A weight sync drops
    the kept ones, and requests still running go on with the new weights: their prompt and the tokens
    they sampled so far are prefilled again (the keys and values of the old weights would mix two
    policies in one logprob), and each token records the version that sampled it.
    """

    def __init__(self, model, tokenizer, device: str | torch.device = "cpu"):
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.eos_ids = set(_eos_ids(model, tokenizer))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_ids)
        self._stop_enders: dict[tuple[str, ...], set[int]] = {}  # stop strings -> token ids that can end one
        args = forward_args(model)
        self.cache_arg = args.cache
        # Only the last position's logits are sampled from: skip the LM head on the rest of the prompt.
        self.last_logits_only = {"logits_to_keep": 1} if args.logits_to_keep else {}
        self._waiting: list[_Row] = []  # added, not yet in the batch
        self._rows: list[_Row] = []  # the running batch, in cache row order
        self._cache: DynamicCache | None = None  # [rows, heads, width, head dim] per layer
        self._attention = torch.zeros((0, 0), dtype=torch.long, device=self.device)  # [rows, width]: 0 on left padding
        self._logits = torch.zeros((0, 0))  # [rows, V]: what each row samples its next token from
        # session -> (the tokens in its cache, per layer (keys, values) [heads, tokens, head dim])
        self._sessions: dict[Hashable, tuple[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]]] = {}
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.version = 0

    # ------------------------------------------------------------------ the Engine interface

    def add(self, key: Hashable, request: Request, params: SamplingParams) -> None:
        n = max(1, request.max_new_tokens)  # like vLLM, at least one token
        uniforms = torch.rand(n, generator=torch.Generator().manual_seed(request.seed)).tolist()
        self._waiting.append(_Row(key, Request(request.prompt_ids, n, request.seed, request.session), params, uniforms))

    def in_flight(self) -> int:
        return len(self._waiting) + len(self._rows)

    def end_session(self, session: Hashable) -> None:
        self._sessions.pop(session, None)

    def generate(self, requests: list[Request], params: SamplingParams) -> list[Generation]:
        return generate_all(self, requests, params)

    @torch.no_grad()
    def step(self) -> list[tuple[Hashable, Generation]]:
        if self._waiting:
            self._admit()
        if not self._rows:
            return []
        tokens = torch.zeros(len(self._rows), dtype=torch.long)
        logprobs = torch.zeros(len(self._rows))
        by_params: dict[SamplingParams, list[int]] = {}
        for i, row in enumerate(self._rows):
            by_params.setdefault(row.params, []).append(i)
        for params, rows in by_params.items():
            uniforms = torch.tensor([self._rows[i].uniforms[len(self._rows[i].sampled)] for i in rows])
            picked, picked_logprobs = sample_tokens(self._logits[rows], params, uniforms)
            tokens[rows], logprobs[rows] = picked.cpu(), picked_logprobs.cpu()
        finished, keep = [], []
        for i, (row, token, logprob) in enumerate(zip(self._rows, tokens.tolist(), logprobs.tolist())):
            row.sampled.append(token)
            row.logprobs.append(logprob)
            row.versions.append(self.version)
            reason = "eos" if token in self.eos_ids else "stop" if self._stopped(row) else None
            if reason is None and len(row.sampled) >= row.request.max_new_tokens:
                reason = "length"
            if reason is None:
                keep.append(i)
            else:
                finished.append((row.key, Generation(row.sampled, row.logprobs, reason, row.versions)))
                self._keep_session(i)
        if len(keep) < len(self._rows):
            self._keep(keep)
        if self._rows:
            self._attention = torch.cat([self._attention, self._attention.new_ones((len(keep), 1))], dim=1)
            positions = self._attention.sum(-1, keepdim=True) - 1  # [rows, 1]: each row's real tokens so far
            self._logits = self._run(tokens[keep][:, None], self._attention, positions, self._cache)
        return finished

    # ------------------------------------------------------------------ weights

    @torch.no_grad()
    def update_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Copy parameters in place; `weights` may be one bucket of them (syncs send several)."""
        params = dict(self.model.named_parameters())
        unknown = set(weights) - set(params)
        if unknown:
            raise ValueError(f"update_weights: unknown parameters, e.g. {sorted(unknown)[:3]}")
        for name, tensor in weights.items():
            params[name].copy_(tensor)
        self._sessions.clear()  # keys and values of the old weights

    def finish_sync(self, version: int) -> None:
        """Each bucket was written in place as it came; the running requests are prefilled again with the new
        weights (their prompt and the tokens sampled so far) and go on from there."""
        self.version = version
        if self._rows:
            self._waiting = self._rows + self._waiting
            self._rows, self._cache = [], None
            self._attention, self._logits = self._attention[:0, :0], self._logits[:0]

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

    # ------------------------------------------------------------------ the running batch

    def _admit(self) -> None:
        """Prefill the waiting requests and add them to the running batch.

        A request whose session holds the keys and values of a prefix of its prompt runs only the tokens after
        that prefix: column c of row i holds token c - (width - len(prompt i)) of its prompt, and the columns
        before the last `new` ones come from the session.
        """
        rows, self._waiting = self._waiting, []
        prompts = [r.request.prompt_ids + r.sampled for r in rows]  # sampled: a request resumed after a sync
        reused = []  # per row: the session's (keys, values) per layer and how many tokens of them to use
        for r, prompt in zip(rows, prompts):
            kept = self._sessions.pop(r.request.session, None) if r.request.session is not None else None
            if kept is not None and tuple(prompt[: len(kept[0])]) == kept[0]:
                # at least one token runs, for the next-token logits
                reused.append((kept[1], min(len(kept[0]), len(prompt) - 1)))
            else:
                reused.append(None)
        lengths = torch.tensor([len(p) for p in prompts])
        width = int(lengths.max())
        new = max(len(p) - (u[1] if u else 0) for p, u in zip(prompts, reused))  # columns to run
        token_index = torch.arange(width)[None, :] - (width - lengths)[:, None]  # [B, width]: < 0 on left padding
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.tensor(p)
        attention = (token_index >= 0).long().to(self.device)  # kept on the device for the whole generation
        positions = token_index.clamp(min=0)
        cache = DynamicCache()
        if any(reused):
            for layer in range(len(next(u for u in reused if u)[0])):
                keys = values = None
                for i, u in enumerate(reused):
                    if u is None:
                        continue
                    k, v = u[0][layer]  # [heads, tokens, head dim]
                    if keys is None:
                        shape = (len(rows), k.shape[0], width - new, k.shape[2])
                        keys, values = k.new_zeros(shape), v.new_zeros(shape)
                    first = width - len(prompts[i])  # the column of the row's first token
                    if first < width - new:  # else a longer prompt runs more columns than this row has
                        keys[i, :, first : width - new] = k[:, : width - new - first]
                        values[i, :, first : width - new] = v[:, : width - new - first]
                cache.update(keys, values, layer)
            self.cached_tokens += sum(max(len(p) - new, 0) for p, u in zip(prompts, reused) if u)
            logits = self._run(ids[:, width - new :], attention, positions[:, width - new :], cache)
        else:
            # A GRPO group repeats one prompt: prefill each distinct prompt once, then give every row its copy.
            distinct, copy_of = distinct_rows([tuple(p) for p in prompts])
            expand = torch.tensor(copy_of, device=self.device)
            logits = self._run(ids[distinct], attention[distinct], positions[distinct], cache)[expand]
            if len(distinct) < len(rows):
                cache.reorder_cache(expand)
        self.prompt_tokens += int(lengths.sum())
        self._join(rows, cache, attention, logits)

    def _join(self, rows: list[_Row], cache: DynamicCache, attention: torch.Tensor, logits: torch.Tensor) -> None:
        """Put newly prefilled rows after the running ones, left-padding the narrower side to the wider."""
        if not self._rows:
            self._rows, self._cache, self._attention, self._logits = rows, cache, attention, logits
            return
        width = max(self._attention.shape[1], attention.shape[1])
        joined = DynamicCache()
        for layer, (old, added) in enumerate(zip(self._cache.layers, cache.layers)):
            joined.update(
                torch.cat([_left_pad(old.keys, width), _left_pad(added.keys, width)]),
                torch.cat([_left_pad(old.values, width), _left_pad(added.values, width)]),
                layer,
            )
        self._attention = torch.cat([_left_pad(self._attention, width, dim=1), _left_pad(attention, width, dim=1)])
        self._rows, self._cache = self._rows + rows, joined
        self._logits = torch.cat([self._logits, logits])

    def _keep(self, keep: list[int]) -> None:
        """Keep only these rows of the running batch, and drop the columns that are now padding in every row."""
        self._rows = [self._rows[i] for i in keep]
        if not keep:
            self._cache, self._attention, self._logits = None, self._attention[:0, :0], self._logits[:0]
            return
        index = torch.tensor(keep, device=self.device)
        attention = self._attention[index]
        start = int(attention.any(0).long().argmax())  # the first column some row uses
        kept = DynamicCache()
        for layer, old in enumerate(self._cache.layers):
            kept.update(
                old.keys.index_select(0, index)[:, :, start:], old.values.index_select(0, index)[:, :, start:], layer
            )
        self._cache, self._attention, self._logits = kept, attention[:, start:], self._logits[index]

    def _keep_session(self, i: int) -> None:
        """Keep a finished row's keys and values for its episode's next turn."""
        row = self._rows[i]
        if row.request.session is None:
            return
        held = int(self._attention[i].sum())  # the prompt and every sampled token but the last (never run)
        start = self._attention.shape[1] - held
        tokens = tuple(row.request.prompt_ids + row.sampled[:-1])
        layers = [(c.keys[i, :, start:].clone(), c.values[i, :, start:].clone()) for c in self._cache.layers]
        self._sessions[row.request.session] = (tokens, layers)

    def _stopped(self, row: _Row) -> bool:
        """Whether the row's text now ends with one of its stop strings. Only a token that can complete a stop
        string has the tail decoded."""
        stop = row.params.stop
        if not stop:
            return False
        if stop not in self._stop_enders:
            self._stop_enders[stop] = self._enders(stop)
        if row.sampled[-1] not in self._stop_enders[stop]:
            return False
        window = max(len(s.encode()) for s in stop) + 1  # tokens that can hold a stop string
        tail = self.tokenizer.decode(row.sampled[-window:])
        return any(s in tail for s in stop)

    def _run(self, input_ids, attention, positions, cache) -> torch.Tensor:
        out = self.model(
            input_ids=input_ids.to(self.device),
            attention_mask=attention,
            position_ids=positions.to(self.device),
            use_cache=True,
            **{self.cache_arg: cache},
            **self.last_logits_only,
        )
        return out.logits[:, -1, :].float()  # [B, V]

    def _enders(self, stop: tuple[str, ...]) -> set[int]:
        """Token ids that can complete one of `stop`: their text holds a stop string's last character
        (or is a partial UTF-8 byte)."""
        last = {s[-1] for s in stop}
        texts = self.tokenizer.batch_decode([[i] for i in range(len(self.tokenizer))])
        return {i for i, t in enumerate(texts) if "\ufffd" in t or any(c in t for c in last)}


def _left_pad(t: torch.Tensor, width: int, dim: int = 2) -> torch.Tensor:
    """Zeros before `t` along `dim` up to `width` (cache tensors: dim 2; attention masks: dim 1)."""
    missing = width - t.shape[dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def _eos_ids(model, tokenizer) -> list[int]:
    ids = model.generation_config.eos_token_id if model.generation_config is not None else None
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    if not ids:
        raise ValueError("the model has no EOS token id: set eos_token_id in its generation_config.json")
    return ids

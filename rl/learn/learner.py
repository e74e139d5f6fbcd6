"""The learner: recomputes logprobs on the training sequences and takes policy-gradient steps on rl/learn/losses.py's loss.

One optimizer step per mini-batch, each split into micro-batches whose gradients
accumulate; the loss is normalized by the token/sequence counts of the whole
mini-batch, so micro-batch size changes speed and memory, never the result.
Master weights stay float32; on CUDA the forward pass runs under bf16 autocast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch
from transformers import DynamicCache

from rl.learn import algos, lora, losses
from rl.config import AlgoConfig, LearnerConfig
from rl.episode import Episode
from rl.learn.losses import LossInputs
from rl.model import load_model, resolve_device
from rl.tensors import autocast, distinct_rows, forward_args, pad
from rl.learn.value import ValueHead
from rl.weights import bucketed


def minibatch_counts(episodes: list[Episode], algo: AlgoConfig) -> dict[str, float]:
    """The mini-batch's policy tokens and sequences, which every loss term divides by."""
    num_seqs = sum(1 in ep.loss_mask for ep in episodes) if algo.seq_mean_skips_empty else len(episodes)
    return {"num_tokens": float(sum(sum(ep.loss_mask) for ep in episodes)), "num_seqs": float(num_seqs)}


def first_turn_mask(ep: Episode) -> list[float]:
    """1 on the policy tokens of the first turn (turn id 0), else 0: what `algo.kl_turns=first` pulls to the reference."""
    return [float(m == 1 and turn == 0) for m, turn in zip(ep.loss_mask, ep.turn_ids)]


class Learner:
    def __init__(self, model_path, cfg: LearnerConfig, algo: AlgoConfig, temperature: float, ref_path=None):
        self.cfg, self.algo = cfg, algo
        self.temperature = temperature
        self.device = resolve_device(cfg.device)
        # With LoRA the adapters sit on the base model, whatever `model_path` holds (a checkpoint's merged weights).
        model = load_model(ref_path or model_path if cfg.lora_rank else model_path, self.device)
        # Logits (the LM head and its softmax) are needed only from the first policy token on.
        args = forward_args(model)
        self.can_skip_logits, self.cache_arg = args.logits_to_keep, args.cache
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        if cfg.lora_rank:
            model = lora.add_adapters(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets, cfg.lora_modules_to_save)
        self.model = self._prepare(model.train())
        self.ref_model = None
        if algo.kl_coef > 0:
            # LoRA: the reference is the base model itself, run with the adapters off.
            self.ref_model = lora.AdaptersOff(self.model) if cfg.lora_rank else self._prepare(load_model(ref_path or model_path, self.device).eval().requires_grad_(False))
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.trainable_params = sum(p.numel() for p in trainable)
        # One fused kernel for all parameters (CPU and CUDA have one): on a small model the per-tensor loop costs 5x more.
        self.fused_adam = {"fused": True} if self.device.type in ("cpu", "cuda") else {}
        self.optimizer = torch.optim.AdamW(
            trainable, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.weight_decay, **self.fused_adam
        )
        warmup = cfg.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
        self.value_head = self.critic_model = self.critic_optimizer = None
        if algo.advantage == "gae" or algo.judge_advantage == "gae":
            if algo.critic == "separate":
                self.critic_model = self._prepare(load_model(ref_path or model_path, self.device).train())
            self.value_head = self._prepare(ValueHead(model.config.hidden_size).to(self.device))
            params = list(self.value_head.parameters()) + (list(self.critic_model.parameters()) if self.critic_model else [])
            self.critic_optimizer = torch.optim.AdamW(
                params, lr=algo.critic_lr or cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.weight_decay, **self.fused_adam
            )

    def _prepare(self, module: torch.nn.Module) -> torch.nn.Module:
        """Each model the learner holds passes here once; a rank of the sharded learner shards it."""
        return module

    def _on_all_ranks(self, ok: bool) -> bool:
        """Whether `ok` holds on every rank (here: the only one); ranks must agree on how many forward passes they run."""
        return ok

    # ------------------------------------------------------------ batches

    def _forward_logprobs(self, model, token_ids: torch.Tensor, bf16: bool | None = None, temperature: float | None = None,
                          hidden: bool = False, start: int = 1):
        """[B, T] float32 logprobs of right-padded `token_ids` (padding only follows real tokens,
        and attention is causal, so no real token ever sees padding: no attention mask is needed).
        Columns before `start` (prompt tokens no loss reads) are 0, and their logits are not computed.
        hidden=True: also the last hidden states [B, T, H] (for the value head)."""
        start = max(1, start) if self.can_skip_logits and model is self.model else 1
        keep = {"logits_to_keep": token_ids.shape[1] - start + 1} if start > 1 else {}
        with autocast(self.device, self.cfg.bf16 if bf16 is None else bf16):
            out = model(input_ids=token_ids, use_cache=False, output_hidden_states=hidden, **keep)
        # out.logits covers positions start-1 .. T-1: the logits that predict tokens start .. T-1 (and one past the end).
        lp = algos.token_logprobs(out.logits, token_ids[:, start - 1 :], self.temperature if temperature is None else temperature)
        lp = torch.nn.functional.pad(lp, (start - 1, 0))  # [B, T]
        return (lp, out.hidden_states[-1]) if hidden else lp

    def _shared_prompt_logprobs(self, part: list[Episode], width: int) -> torch.Tensor | None:
        """[b, width] logprobs of the episodes' tokens, as _forward_logprobs gives them (0 on prompt columns),
        computing each distinct prompt once; None when no prompt repeats in `part`.

        A GRPO group's episodes share their prompt. The prompt runs once, left-padded, with its
        keys/values kept in the autograd graph; they are copied to every episode of its group and
        the rest of each episode runs on top of them, so the gradients of all copies add up in the
        one prompt pass. Same logprobs and gradients as the full forward, with fewer tokens.
        """
        prompt_len = [ep.loss_mask.index(1) if 1 in ep.loss_mask else 0 for ep in part]
        distinct, copy_of = distinct_rows([tuple(ep.token_ids[:n]) for ep, n in zip(part, prompt_len)])
        shared = min(prompt_len) >= 1 and len(distinct) < len(part)
        if not self._on_all_ranks(shared and not self.cfg.gradient_checkpointing):  # checkpointed layers run without a KV cache
            return None
        expand = torch.tensor(copy_of, device=self.device)  # [b] -> its prompt's row
        longest = max(prompt_len)
        prompt_ids = torch.zeros((len(distinct), longest), dtype=torch.long)
        prompt_attention = torch.zeros((len(distinct), longest), dtype=torch.long)
        for k, row in enumerate(distinct):
            n = prompt_len[row]
            prompt_ids[k, longest - n :] = torch.tensor(part[row].token_ids[:n])
            prompt_attention[k, longest - n :] = 1
        prompt_ids, prompt_attention = prompt_ids.to(self.device), prompt_attention.to(self.device)
        rest_ids = pad([ep.token_ids[n:] for ep, n in zip(part, prompt_len)], 0, torch.long, self.device)  # [b, C], right-padded
        offsets = torch.tensor(prompt_len, device=self.device)[:, None]  # [b, 1]
        rest_positions = offsets + torch.arange(rest_ids.shape[1], device=self.device)  # [b, C]
        cache = DynamicCache()
        keep_last = {"logits_to_keep": 1} if self.can_skip_logits else {}
        with autocast(self.device, self.cfg.bf16):
            prompt_out = self.model(input_ids=prompt_ids, attention_mask=prompt_attention, position_ids=(prompt_attention.cumsum(-1) - 1).clamp(min=0),
                                    use_cache=True, **{self.cache_arg: cache}, **keep_last)
            cache.reorder_cache(expand)  # index_select: differentiable, so the copies' gradients sum into the prompt
            attention = torch.cat([prompt_attention[expand], torch.ones_like(rest_ids)], dim=1)  # right padding follows real tokens only
            rest_logits = self.model(input_ids=rest_ids, attention_mask=attention, position_ids=rest_positions, use_cache=True, **{self.cache_arg: cache}).logits
        # The prompt's last logits predict each rest's first token; rest logits j predict rest token j + 1.
        logits = torch.cat([prompt_out.logits[:, -1:][expand], rest_logits[:, :-1]], dim=1).float()  # [b, C, V]
        if self.temperature not in (0.0, 1.0):
            logits = logits / self.temperature
        rest_logp = logits.gather(-1, rest_ids[..., None])[..., 0] - logits.logsumexp(-1)  # [b, C]
        column = torch.arange(width, device=self.device) - offsets  # [b, width]: index into rest, < 0 on the prompt
        return rest_logp.gather(1, column.clamp(0, rest_ids.shape[1] - 1)) * (column >= 0)

    def _values(self, token_ids: torch.Tensor, policy_hidden: torch.Tensor | None = None) -> torch.Tensor:
        """[B, T] critic values; `policy_hidden`: the policy's last hidden states when the head shares its backbone."""
        if self.critic_model is not None:
            with autocast(self.device, self.cfg.bf16):
                policy_hidden = self.critic_model(input_ids=token_ids, use_cache=False, output_hidden_states=True).hidden_states[-1]
        return self.value_head(policy_hidden)

    @torch.no_grad()
    def sampling_values(self, sequences: list[list[int]]) -> list[torch.Tensor] | None:
        """The critic's value at every token of every sequence (the values at sampling time), on CPU; None without a critic."""
        if self.value_head is None:
            return None
        out = []
        for start in range(0, len(sequences), self.cfg.micro_batch_size):
            rows = sequences[start : start + self.cfg.micro_batch_size]
            ids = pad(rows, 0, torch.long, self.device)
            hidden = self._forward_logprobs(self.model, ids, hidden=True)[1] if self.critic_model is None else None
            v = self._values(ids, hidden).cpu()
            out += [v[i, : len(r)] for i, r in enumerate(rows)]
        return out

    @torch.no_grad()
    def kl_to_reference(self, sequences: list[list[int]]) -> list[torch.Tensor] | None:
        """Per-token KL penalty (`algo.kl_estimator`) of the current policy to the reference on every sequence, on CPU;
        None without a reference model (`algo.kl_coef` 0)."""
        if self.ref_model is None:
            return None
        policy, reference = self.logprobs(sequences), self.logprobs(sequences, self.ref_model)
        return [algos.kl_penalty(lp, ref, self.algo.kl_estimator) for lp, ref in zip(policy, reference)]

    @torch.no_grad()
    def logprobs(self, sequences: list[list[int]], model=None) -> list[torch.Tensor]:
        """Logprob of every token of every sequence under the current (or given) model, on CPU."""
        model = model or self.model
        out = []
        for start in range(0, len(sequences), self.cfg.micro_batch_size):
            rows = sequences[start : start + self.cfg.micro_batch_size]
            lp = self._forward_logprobs(model, pad(rows, 0, torch.long, self.device)).cpu()
            out += [lp[i, : len(r)] for i, r in enumerate(rows)]
        return out

    @torch.no_grad()
    def probe_logprobs(self, sequences: list[list[int]]) -> list[torch.Tensor]:
        """Float32 logprobs (no autocast, temperature 1) of each sequence, in one right-padded forward:
        the reference an engine must match after a weight sync, computed as the engines' `probe_logprobs` do."""
        lp = self._forward_logprobs(self.model, pad(sequences, 0, torch.long, self.device), bf16=False, temperature=1.0).cpu()
        return [lp[i, : len(ids)] for i, ids in enumerate(sequences)]

    # ------------------------------------------------------------ update

    def update(
        self, episodes: list[Episode], advantages: list[torch.Tensor], returns: list[torch.Tensor] | None = None, old_values: list[torch.Tensor] | None = None
    ) -> dict[str, float]:
        """Policy-gradient steps on `episodes`; advantages[i] is per token of episode i.
        With a critic, returns[i] / old_values[i] are its per-token targets and values at sampling time."""
        cfg = self.cfg
        sequences = [ep.token_ids for ep in episodes]
        # With one optimizer step on fresh samples, the "old" policy is the current one:
        # its logprobs are the detached current ones and no extra forward pass is needed.
        old = self.logprobs(sequences) if cfg.optim_steps_per_batch * cfg.epochs > 1 else None
        ref = self.logprobs(sequences, self.ref_model) if self.ref_model is not None and not self.algo.kl_in_reward else None

        n_mini = max(1, min(cfg.optim_steps_per_batch, len(episodes)))
        minibatches = [list(range(k, len(episodes), n_mini)) for k in range(n_mini)]
        pick = lambda xs, mini: [xs[i] for i in mini] if xs is not None else None  # noqa: E731
        history: list[dict[str, torch.Tensor]] = []
        seen: list[tuple[Episode, torch.Tensor]] = []  # the learner's logprobs of the sampled tokens, before any step
        for epoch in range(cfg.epochs):
            for m, mini in enumerate(minibatches):
                stats = self.accumulate(
                    [episodes[i] for i in mini],
                    [advantages[i] for i in mini],
                    old=pick(old, mini),
                    ref=pick(ref, mini),
                    fresh=epoch == 0 and m == 0,
                    returns=pick(returns, mini),
                    old_values=pick(old_values, mini),
                    seen=seen,
                )
                stats.update(self._optimizer_step())
                history.append(stats)
        # Read the GPU values once, after every optimizer step has been queued.
        for ep, logp in seen:
            ep.learner_logprobs = logp.tolist()
        metrics = {k: float(sum(h[k] for h in history if k in h)) / sum(k in h for h in history) for k in history[0]}
        metrics["lr"] = self.scheduler.get_last_lr()[0]
        metrics["trainable_params"] = float(self.trainable_params)
        return metrics

    def accumulate(
        self, episodes: list[Episode], advantages: list[torch.Tensor], old=None, ref=None, fresh=False, returns=None, old_values=None, seen=None,
        counts: dict[str, float] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Forward and backward over one mini-batch in micro-batches; gradients add up in `.grad`.

        Per episode: `old`/`ref` logprobs (None: old = current detached, no KL term), the critic's
        `returns`/`old_values` (None: no value term). `fresh`: the model is still the sampling policy,
        so the engine/learner mismatch is measured and (episode, learner logprobs) pairs go to `seen`.
        `counts`: what to normalize by when `episodes` are one rank's share of a mini-batch (minibatch_counts).
        Returns 0-d tensors on the device, so nothing waits for the GPU here.
        """
        critic = returns is not None and self.value_head is not None
        per_episode = {"advantages": advantages, "mask": [ep.loss_mask for ep in episodes], "old_logprobs": old, "ref_logprobs": ref,
                       "sampler_logprobs": [ep.logprobs for ep in episodes] if self.algo.tis_cap > 0 or fresh else None,
                       "returns": returns if critic else None, "old_values": old_values if critic else None,
                       "kl_mask": [first_turn_mask(ep) for ep in episodes] if ref is not None and self.algo.kl_turns == "first" else None}
        counts = counts or minibatch_counts(episodes, self.algo)
        totals: dict[str, torch.Tensor] = {}
        for rows in self._micro_batches(episodes):
            part = [episodes[i] for i in rows]
            logp, values = self._forward(part, critic)
            inputs = self._loss_inputs(rows, per_episode, counts, logp, values)
            loss, metrics = losses.total_loss(inputs, self.algo)
            loss.backward()
            if fresh:
                metrics |= losses.mismatch_metrics(inputs)
                if seen is not None:
                    seen += [(ep, (logp[j, : len(ep.token_ids)].detach() * inputs.mask[j, : len(ep.token_ids)]).cpu()) for j, ep in enumerate(part)]
            totals = losses.add_metrics(totals, metrics)
        return totals

    def _micro_batches(self, episodes: list[Episode]) -> list[list[int]]:
        """Indices of `episodes`, micro_batch_size at a time, sorted by length.

        Episodes of similar length share a micro-batch, so little compute goes to padding (search episodes
        run from one search to several: padded to the longest, two thirds of a batch was padding). The
        loss is normalized by the mini-batch's totals, so the grouping changes no gradient.
        """
        by_length = sorted(range(len(episodes)), key=lambda i: len(episodes[i].token_ids))
        return [by_length[start : start + self.cfg.micro_batch_size] for start in range(0, len(episodes), self.cfg.micro_batch_size)]

    def _forward(self, part: list[Episode], critic: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logprobs [b, T], the critic's values [b, T] or None) of a micro-batch, with autograd.

        The head critic reads the policy's hidden states, so it takes the plain forward; otherwise
        a prompt shared by several episodes runs once.
        """
        ids = pad([ep.token_ids for ep in part], 0, torch.long, self.device)  # [b, T]
        first_policy_token = min((ep.loss_mask.index(1) for ep in part if 1 in ep.loss_mask), default=1)
        if critic and self.critic_model is None:
            logp, hidden = self._forward_logprobs(self.model, ids, hidden=True, start=first_policy_token)
            return logp, self._values(ids, hidden)
        logp = self._shared_prompt_logprobs(part, ids.shape[1])
        if logp is None:
            logp = self._forward_logprobs(self.model, ids, start=first_policy_token)
        return logp, (self._values(ids) if critic else None)

    def _loss_inputs(self, rows: list[int], per_episode: dict, counts: dict[str, float], logp: torch.Tensor, values: torch.Tensor | None) -> LossInputs:
        """The micro-batch `rows`: each list of `per_episode` (LossInputs' field -> one entry per episode of the
        mini-batch, or None) cut to these rows and padded to [b, T] on the device."""
        padded = {k: pad([v[i] for i in rows], 0.0, torch.float32, self.device) for k, v in per_episode.items() if v is not None}
        padded.setdefault("old_logprobs", logp.detach())  # one optimizer step on fresh samples: the old policy is the current one
        return LossInputs(logprobs=logp, values=values, **padded, **counts)

    def _optimizer_step(self) -> dict[str, torch.Tensor]:
        out = {"grad_norm": self._step(self.model.parameters(), self.optimizer)}
        self.scheduler.step()
        if self.critic_optimizer is not None:
            out["critic_grad_norm"] = self._step([p for g in self.critic_optimizer.param_groups for p in g["params"]], self.critic_optimizer)
        return out

    def _step(self, parameters, optimizer) -> torch.Tensor:
        params = [p for p in parameters if p.grad is not None]
        if not params:
            return torch.zeros((), device=self.device)
        # Sharded gradients (DTensors): the norm is the global one, computed with a collective.
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        if self.cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grads_with_norm_(params, self.cfg.max_grad_norm, grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return whole(grad_norm.detach())

    # ------------------------------------------------------------ weights and state

    def named_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """The policy's whole weights under the base model's names (LoRA: adapters merged), one tensor at a time.

        Sharded weights are gathered one by one (a collective: every rank runs this in the same order)."""
        if self.cfg.lora_rank:
            yield from lora.merged_weights(self.model, whole)
        else:
            for name, p in self.model.named_parameters():
                yield name, whole(p.detach())

    def weight_buckets(self, bucket_mb: float) -> Iterator[dict[str, torch.Tensor]]:
        """The weights for a sync, in buckets of about `bucket_mb` MB."""
        return bucketed(self.named_weights(), bucket_mb)

    def save_model(self, path: Path) -> None:
        """The policy as a Hugging Face model directory (LoRA: merged into the base model)."""
        if self.cfg.lora_rank:
            self.model.get_base_model().save_pretrained(path, state_dict=dict(self.named_weights()))
        else:
            self.model.save_pretrained(path)

    def save_state(self, directory: Path) -> dict:
        """What a checkpoint needs besides the model directory, as a dict for the trainer's state file."""
        return self.state_dict()

    def load_state(self, state: dict, directory: Path) -> None:
        if state.get("world_size", 1) != 1:
            raise ValueError(f"resume: {directory} was written by learner.world_size={state['world_size']}; resume it with that world size, not 1")
        self.load_state_dict(state)

    def state_dict(self) -> dict:
        state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}
        if self.cfg.lora_rank:  # the model directory holds merged weights: the adapters are saved here
            state["adapters"] = {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}
        if self.value_head is not None:
            # The critic is not part of the saved policy model: its weights travel with the optimizer state.
            state["critic"] = {"head": self.value_head.state_dict(), "optimizer": self.critic_optimizer.state_dict()}
            if self.critic_model is not None:
                state["critic"]["model"] = self.critic_model.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.cfg.lora_rank:
            self.model.load_state_dict(state["adapters"], strict=False)
        if self.value_head is not None:
            self.value_head.load_state_dict(state["critic"]["head"])
            if self.critic_model is not None:
                self.critic_model.load_state_dict(state["critic"]["model"])
            self.critic_optimizer.load_state_dict(state["critic"]["optimizer"])


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """A sharded tensor (a DTensor: it has full_tensor) gathered whole, a collective; any other tensor as it is."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor

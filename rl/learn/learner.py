"""The learner: recomputes logprobs on the training sequences
and takes policy-gradient steps on rl/learn/losses.py's loss.

One update loop (`UpdateLoop.update`) for a world of one and for N ranks: the reference's and the
critic's passes, credit assignment (rl/learn/credit.py), then one optimizer step per mini-batch,
each split into micro-batches whose gradients accumulate. The loss is normalized by the token and
sequence counts of the whole mini-batch, so micro-batch size (and the number of ranks) changes
speed and memory, never the result. `Learner` runs it in this process; rl/learn/sharding.py's
`ShardedLearner` runs the same loop with each mini-batch split between FSDP2 ranks, each rank a
`Learner` whose models are sharded. Master weights stay float32; on CUDA the forward pass runs
under bf16 autocast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch
from transformers import DynamicCache

from rl import nodes
from rl.batch import Batch
from rl.config import AlgoConfig, LearnerConfig
from rl.learn import algos, credit, lora, losses
from rl.learn.losses import LossInputs
from rl.learn.value import ValueHead
from rl.model import load_model, resolve_device
from rl.tensors import autocast, distinct_rows, forward_args, pad
from rl.weights import WeightGroup, bucketed


class UpdateLoop:
    """The update of both learners. A learner provides the passes (`logprobs`, `reference_logprobs`,
    `sampling_values`: [B, T] on the CPU, or None), `train_minibatch` and `lr`; this loop is the rest."""

    cfg: LearnerConfig
    algo: AlgoConfig
    trainable_params: int

    def update(self, batch: Batch) -> dict[str, float]:
        """Assign credit on `batch` and take `learner.optim_steps_per_batch` x `learner.epochs` optimizer steps.

        Fills the batch's ref_logprobs, critic_values, advantages, returns and learner_logprobs; returns the metrics.
        """
        cfg, algo = self.cfg, self.algo
        # With one optimizer step on fresh samples, the "old" policy is the current one: its logprobs are each
        # micro-batch's detached current ones and no extra pass is needed.
        several_steps = cfg.optim_steps_per_batch * cfg.epochs > 1
        ref = self.reference_logprobs(batch)
        kl_in_reward = ref is not None and algo.kl_in_reward
        policy = self.logprobs(batch) if several_steps or kl_in_reward else None
        kl = algo.kl_coef * algos.kl_penalty(policy, ref, algo.kl_estimator).double() if kl_in_reward else None
        batch.critic_values = self.sampling_values(batch)
        batch.advantages, batch.returns = credit.advantages(batch, algo, kl)
        batch.old_logprobs = policy if several_steps else None
        batch.ref_logprobs = None if kl_in_reward else ref

        batch.learner_logprobs = torch.full(batch.token_ids.shape, float("nan"))
        history: list[dict] = []
        for epoch in range(cfg.epochs):
            for m, rows in enumerate(batch.minibatches(cfg.optim_steps_per_batch)):
                mini = batch.select(rows)
                fresh = epoch == 0 and m == 0  # the policy still samples as the engine did
                stats, seen = self.train_minibatch(mini, mini.counts(algo.seq_mean_skips_empty), fresh)
                history.append(stats)
                if seen is not None:
                    batch.learner_logprobs[rows, : seen.shape[1]] = seen
        # Sum the metrics once, after every optimizer step has been queued: nothing waited for the GPU before.
        metrics = {k: float(sum(h[k] for h in history if k in h)) / sum(k in h for h in history) for k in history[0]}
        metrics["lr"] = self.lr()
        metrics["trainable_params"] = float(self.trainable_params)
        return metrics

    def close(self) -> None:
        """Let go of what the learner holds beyond this process (ranks, placement): nothing, in a world of one."""


class Learner(UpdateLoop):
    """The learner of a world of one, and each rank of a sharded one (whose `_prepare` shards every model)."""

    def __init__(self, model_path, cfg: LearnerConfig, algo: AlgoConfig, temperature: float, ref_path=None):
        self.cfg, self.algo = cfg, algo
        self.temperature = temperature
        self.device = resolve_device(cfg.device)
        self.weight_group: WeightGroup | None = None  # with workers.weight_transport=broadcast, once formed
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
            self.ref_model = (
                lora.AdaptersOff(self.model)
                if cfg.lora_rank
                else self._prepare(load_model(ref_path or model_path, self.device).eval().requires_grad_(False))
            )
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.trainable_params = sum(p.numel() for p in trainable)
        # One fused kernel for all parameters (CPU and CUDA have one):
        # on a small model the per-tensor loop costs 5x more.
        self.fused_adam = {"fused": True} if self.device.type in ("cpu", "cuda") else {}
        self.optimizer = torch.optim.AdamW(
            trainable,
            lr=cfg.lr,
            betas=(cfg.adam_beta1, cfg.adam_beta2),
            weight_decay=cfg.weight_decay,
            **self.fused_adam,
        )
        warmup = cfg.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0
        )
        self.value_head = self.critic_model = self.critic_optimizer = None
        if any(
            name and credit.ESTIMATORS.declares(name, "needs_values") for name in (algo.advantage, algo.judge_advantage)
        ):
            if algo.critic == "separate":
                self.critic_model = self._prepare(load_model(ref_path or model_path, self.device).train())
            self.value_head = self._prepare(ValueHead(model.config.hidden_size).to(self.device))
            params = list(self.value_head.parameters()) + (
                list(self.critic_model.parameters()) if self.critic_model else []
            )
            self.critic_optimizer = torch.optim.AdamW(
                params,
                lr=algo.critic_lr or cfg.lr,
                betas=(cfg.adam_beta1, cfg.adam_beta2),
                weight_decay=cfg.weight_decay,
                **self.fused_adam,
            )

    def _prepare(self, module: torch.nn.Module) -> torch.nn.Module:
        """Each model the learner holds passes here once; a rank of the sharded learner shards it."""
        return module

    def _on_all_ranks(self, ok: bool) -> bool:
        """Whether `ok` holds on every rank (here: the only one);
        ranks must agree on how many forward passes they run."""
        return ok

    # ------------------------------------------------------------ batches

    def _forward_logprobs(
        self,
        model,
        token_ids: torch.Tensor,
        bf16: bool | None = None,
        temperature: float | None = None,
        hidden: bool = False,
        start: int = 1,
        entropy: bool = False,
    ):
        """([B, T] float32 logprobs of right-padded `token_ids`, the last hidden states [B, T, H] when `hidden`
        (for the value head), the entropy [B, T] of each token's distribution when `entropy`; else None).

        Padding only follows real tokens, and attention is causal, so no real token ever sees padding: no
        attention mask is needed. Columns before `start` (prompt tokens no loss reads) are 0, and their logits
        are not computed."""
        start = max(1, start) if self.can_skip_logits and model is self.model else 1
        keep = {"logits_to_keep": token_ids.shape[1] - start + 1} if start > 1 else {}
        temperature = self.temperature if temperature is None else temperature
        with autocast(self.device, self.cfg.bf16 if bf16 is None else bf16):
            out = model(input_ids=token_ids, use_cache=False, output_hidden_states=hidden, **keep)
        # out.logits covers positions start-1 .. T-1: the logits that predict tokens start .. T-1
        # (and one past the end).
        lp = torch.nn.functional.pad(
            algos.token_logprobs(out.logits, token_ids[:, start - 1 :], temperature), (start - 1, 0)
        )  # [B, T]
        ent = torch.nn.functional.pad(algos.token_entropy(out.logits, temperature), (start - 1, 0)) if entropy else None
        return lp, (out.hidden_states[-1] if hidden else None), ent

    def _shared_prompt_logprobs(self, part: Batch, entropy: bool) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """([b, T] logprobs of the micro-batch's tokens, and with `entropy` their distributions' entropy, as
        _forward_logprobs gives them, 0 on prompt columns), computing each distinct prompt once; None when no
        prompt repeats in `part`.

        A GRPO group's episodes share their prompt. The prompt runs once, left-padded, with its
        keys/values kept in the autograd graph; they are copied to every episode of its group and
        the rest of each episode runs on top of them, so the gradients of all copies add up in the
        one prompt pass. Same logprobs and gradients as the full forward, with fewer tokens.
        """
        has_policy = part.loss_mask.any(-1)
        prompt_len = torch.where(
            has_policy, part.loss_mask.argmax(-1), 0
        ).tolist()  # the first policy token of each row
        tokens = [part.row(part.token_ids, i) for i in range(len(part))]
        distinct, copy_of = distinct_rows([tuple(ids[:n]) for ids, n in zip(tokens, prompt_len)])
        shared = min(prompt_len) >= 1 and len(distinct) < len(part)
        if not self._on_all_ranks(
            shared and not self.cfg.gradient_checkpointing
        ):  # checkpointed layers run without a KV cache
            return None
        expand = torch.tensor(copy_of, device=self.device)  # [b] -> its prompt's row
        longest = max(prompt_len)
        prompt_ids = torch.zeros((len(distinct), longest), dtype=torch.long)
        prompt_attention = torch.zeros((len(distinct), longest), dtype=torch.long)
        for k, row in enumerate(distinct):
            n = prompt_len[row]
            prompt_ids[k, longest - n :] = torch.tensor(tokens[row][:n])
            prompt_attention[k, longest - n :] = 1
        prompt_ids, prompt_attention = prompt_ids.to(self.device), prompt_attention.to(self.device)
        rest_ids = pad(
            [ids[n:] for ids, n in zip(tokens, prompt_len)], 0, torch.long, self.device
        )  # [b, C], right-padded
        offsets = torch.tensor(prompt_len, device=self.device)[:, None]  # [b, 1]
        rest_positions = offsets + torch.arange(rest_ids.shape[1], device=self.device)  # [b, C]
        cache = DynamicCache()
        keep_last = {"logits_to_keep": 1} if self.can_skip_logits else {}
        with autocast(self.device, self.cfg.bf16):
            prompt_out = self.model(
                input_ids=prompt_ids,
                attention_mask=prompt_attention,
                position_ids=(prompt_attention.cumsum(-1) - 1).clamp(min=0),
                use_cache=True,
                **{self.cache_arg: cache},
                **keep_last,
            )
            cache.reorder_cache(expand)  # index_select: differentiable, so the copies' gradients sum into the prompt
            attention = torch.cat(
                [prompt_attention[expand], torch.ones_like(rest_ids)], dim=1
            )  # right padding follows real tokens only
            rest_logits = self.model(
                input_ids=rest_ids,
                attention_mask=attention,
                position_ids=rest_positions,
                use_cache=True,
                **{self.cache_arg: cache},
            ).logits
        # The prompt's last logits predict each rest's first token; rest logits j predict rest token j + 1.
        logits = torch.cat([prompt_out.logits[:, -1:][expand], rest_logits[:, :-1]], dim=1).float()  # [b, C, V]
        if self.temperature not in (0.0, 1.0):
            logits = logits / self.temperature
        rest_logp = logits.gather(-1, rest_ids[..., None])[..., 0] - logits.logsumexp(-1)  # [b, C]
        column = torch.arange(part.width, device=self.device) - offsets  # [b, T]: index into rest, < 0 on the prompt
        to_columns = lambda x: x.gather(1, column.clamp(0, rest_ids.shape[1] - 1)) * (column >= 0)  # noqa: E731  [b, C] -> [b, T]
        # token_entropy drops its input's last position and puts 0 first: give it one position more,
        # as token_logprobs' logits.
        ent = algos.token_entropy(torch.cat([logits, logits[:, -1:]], dim=1))[:, 1:] if entropy else None
        return to_columns(rest_logp), (to_columns(ent) if entropy else None)

    def _values(self, token_ids: torch.Tensor, policy_hidden: torch.Tensor | None = None) -> torch.Tensor:
        """[B, T] critic values; `policy_hidden`: the policy's last hidden states when the head shares its backbone."""
        if self.critic_model is not None:
            with autocast(self.device, self.cfg.bf16):
                policy_hidden = self.critic_model(
                    input_ids=token_ids, use_cache=False, output_hidden_states=True
                ).hidden_states[-1]
        return self.value_head(policy_hidden)

    # ------------------------------------------------------------ passes without gradient

    def _per_chunk(self, batch: Batch, run) -> torch.Tensor:
        """[B, T] float32 on the CPU: `run(token_ids [b, t])` -> [b, t] on `micro_batch_size` episodes at a time,
        in order."""
        out = torch.zeros(batch.token_ids.shape)
        for start in range(0, len(batch), self.cfg.micro_batch_size):
            rows = slice(start, start + self.cfg.micro_batch_size)
            width = int(batch.lengths[rows].max())
            chunk = run(batch.token_ids[rows, :width].to(self.device)).cpu()
            out[rows, :width] = chunk * (torch.arange(width) < batch.lengths[rows, None])
        return out

    @torch.no_grad()
    def logprobs(self, batch: Batch, model=None) -> torch.Tensor:
        """[B, T] logprob of every token under the current (or given) model, on the CPU."""
        return self._per_chunk(batch, lambda ids: self._forward_logprobs(model or self.model, ids)[0])

    @torch.no_grad()
    def reference_logprobs(self, batch: Batch) -> torch.Tensor | None:
        """[B, T] logprobs under the reference model; None without one (`algo.kl_coef` 0)."""
        return None if self.ref_model is None else self.logprobs(batch, self.ref_model)

    @torch.no_grad()
    def sampling_values(self, batch: Batch) -> torch.Tensor | None:
        """[B, T] the critic's value at every token before the update (the values at sampling time);
        None without a critic."""
        if self.value_head is None:
            return None

        def values(ids):
            # head: the policy's
            hidden = self._forward_logprobs(self.model, ids, hidden=True)[1] if self.critic_model is None else None
            return self._values(ids, hidden).float()

        return self._per_chunk(batch, values)

    @torch.no_grad()
    def probe_logprobs(self, sequences: list[list[int]]) -> list[torch.Tensor]:
        """Float32 logprobs (no autocast, temperature 1) of each sequence, in one right-padded forward:
        the reference an engine must match after a weight sync, computed as the engines' `probe_logprobs` do."""
        lp = self._forward_logprobs(
            self.model, pad(sequences, 0, torch.long, self.device), bf16=False, temperature=1.0
        )[0].cpu()
        return [lp[i, : len(ids)] for i, ids in enumerate(sequences)]

    # ------------------------------------------------------------ one mini-batch

    def train_minibatch(
        self, mini: Batch, counts: tuple[float, float], fresh: bool
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """Forward and backward over `mini` in micro-batches (gradients add up in `.grad`), then the optimizer step.

        `counts`: the whole mini-batch's (policy tokens, sequences), which the loss divides by (a rank holds a share
        of it). `fresh`: the model is still the sampling policy, so the engine/learner mismatch is measured and the
        learner's logprobs of the sampled tokens come back ([b, T] on the CPU; else None).
        Metrics are 0-d tensors on the device, so nothing waits for the GPU here.
        """
        stats = self.accumulate(mini, counts, fresh)
        seen = stats.pop("learner_logprobs", None)
        return stats | self._optimizer_step(), seen

    def accumulate(self, mini: Batch, counts: tuple[float, float], fresh: bool = False) -> dict[str, torch.Tensor]:
        """Forward and backward over `mini` in micro-batches; gradients add up in `.grad` (see train_minibatch).
        With `fresh`, "learner_logprobs" holds the learner's [b, T] logprobs of the policy tokens, on the CPU."""
        critic = mini.returns is not None and self.value_head is not None
        totals: dict[str, torch.Tensor] = {}
        seen = torch.zeros(mini.token_ids.shape) if fresh else None
        for rows in mini.micro_batches(self.cfg.micro_batch_size):
            part = mini.select(rows)
            logp, values, entropy = self._forward(part, critic, entropy=fresh)
            inputs = self._loss_inputs(part, counts, logp, values if critic else None, fresh)
            loss, metrics = losses.total_loss(inputs, self.algo)
            loss.backward()
            if fresh:
                metrics |= losses.mismatch_metrics(inputs) | {"entropy": losses.policy_token_mean(entropy, inputs)}
                seen[rows, : part.width] = (logp.detach() * inputs.loss_mask).cpu()
            totals = losses.add_metrics(totals, metrics)
        return totals | ({"learner_logprobs": seen} if fresh else {})

    def _forward(
        self, part: Batch, critic: bool, entropy: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(logprobs [b, T], the critic's values [b, T] or None, with `entropy` the policy's entropy [b, T] or None)
        of a micro-batch, with autograd (the entropy has none).

        The head critic reads the policy's hidden states, so it takes the plain forward; otherwise
        a prompt shared by several episodes runs once.
        """
        ids = part.token_ids.to(self.device)  # [b, T]
        has_policy = part.loss_mask.any(-1)
        first_policy_token = int(part.loss_mask.argmax(-1)[has_policy].min()) if has_policy.any() else 1
        if critic and self.critic_model is None:
            logp, hidden, ent = self._forward_logprobs(
                self.model, ids, hidden=True, start=first_policy_token, entropy=entropy
            )
            return logp, self._values(ids, hidden), ent
        shared = self._shared_prompt_logprobs(part, entropy)
        logp, _, ent = (
            self._forward_logprobs(self.model, ids, start=first_policy_token, entropy=entropy)
            if shared is None
            else (shared[0], None, shared[1])
        )
        return logp, (self._values(ids) if critic else None), ent

    def _loss_inputs(
        self, part: Batch, counts: tuple[float, float], logp: torch.Tensor, values: torch.Tensor | None, fresh: bool
    ) -> LossInputs:
        """The micro-batch `part` on the device, as the loss reads it."""
        algo = self.algo
        on_device = lambda x: None if x is None else x.to(self.device, torch.float32)  # noqa: E731
        kl_first = part.ref_logprobs is not None and algo.kl_turns == "first"
        return LossInputs(
            policy_logprobs=logp,
            old_logprobs=on_device(part.old_logprobs) if part.old_logprobs is not None else logp.detach(),
            advantages=on_device(part.advantages),
            loss_mask=on_device(part.loss_mask),
            num_tokens=counts[0],
            num_seqs=counts[1],
            sampler_logprobs=on_device(part.sampler_logprobs) if algo.tis_cap > 0 or fresh else None,
            ref_logprobs=on_device(part.ref_logprobs),
            values=values,
            critic_values=on_device(part.critic_values) if values is not None else None,
            returns=on_device(part.returns) if values is not None else None,
            kl_mask=on_device(part.first_turn_mask()) if kl_first else None,
        )

    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def _optimizer_step(self) -> dict[str, torch.Tensor]:
        out = {"grad_norm": self._step(self.model.parameters(), self.optimizer)}
        self.scheduler.step()
        if self.critic_optimizer is not None:
            out["critic_grad_norm"] = self._step(
                [p for g in self.critic_optimizer.param_groups for p in g["params"]], self.critic_optimizer
            )
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
        return gathered(grad_norm.detach())

    # ------------------------------------------------------------ weights and state

    def named_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """The policy's whole weights under the base model's names (LoRA: adapters merged), one tensor at a time.

        Sharded weights are gathered one by one (a collective: every rank runs this in the same order)."""
        if self.cfg.lora_rank:
            yield from lora.merged_weights(self.model, gathered)
        else:
            for name, p in self.model.named_parameters():
                yield name, gathered(p.detach())

    def weight_buckets(self, bucket_mb: float) -> Iterator[dict[str, torch.Tensor]]:
        """The weights for a sync, in buckets of about `bucket_mb` MB."""
        return bucketed(self.named_weights(), bucket_mb)

    def set_algo(self, algo: AlgoConfig) -> None:
        """Train with `algo` from the next update on (a new stage): the models, optimizer and its state stay."""
        self.algo = algo

    # Syncs by broadcast (workers.weight_transport=broadcast): this process is rank 0 of the weight group.

    def weight_group_address(self) -> tuple[str, int]:
        """Where the rollout workers join this learner's weight group: its node's address and a free port."""
        ip = nodes.node_ip()
        return ip, nodes.free_port(ip)

    def join_weight_group(self, host: str, port: int, size: int, device: str, timeout_s: float) -> str:
        """Form the weight group with the workers (they join at the same time), ending the one before; "" or why
        that failed."""
        if self.weight_group is not None:
            self.weight_group.close()
            self.weight_group = None
        try:
            self.weight_group = WeightGroup(host, port, 0, size, torch.device(device), timeout_s)
        except RuntimeError as e:  # a worker that died before joining: the store's wait runs out
            return " ".join(str(e).split())[:300]
        return ""

    def broadcast_weights(self, bucket_mb: float) -> str:
        """Send the weights to the group's workers; "" or why that failed."""
        return self.weight_group.send(self.weight_buckets(bucket_mb))

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
            raise ValueError(
                f"resume: {directory} was written by learner.world_size={state['world_size']}"
                "; resume it with that world size, not 1"
            )
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


def gathered(tensor: torch.Tensor) -> torch.Tensor:
    """A sharded tensor (a DTensor: it has full_tensor) gathered whole, a collective; any other tensor as it is."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor

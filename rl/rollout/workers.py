"""Rollout workers: an engine and its environments, in this process or as Ray actors.

A `RolloutWorker` is plain Python; `LocalPool` runs one in this process (what
runs where Ray is absent) and `RayPool` runs several as Ray actors. Both pools
take the same calls and run them in order (a Ray actor runs its calls in the
order they were sent; the local pool keeps a queue), so a weight sync sent
after a rollout applies after that rollout ends: this is what makes one-step-off
asynchronous training correct in both modes. Only Ray workers overlap rollouts
with the learner in time: the local pool runs its queue when a result is asked
for, on the caller's thread, because torch ops from two threads of one process
share one thread pool and would make results depend on timing.

Every call returns a future (`.result()`), every episode carries its own
sampling seed, and results come back in the order of the items given, so the
same seed gives the same episodes whichever pool runs them.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import math
import os
from collections import deque
from typing import Any, Callable, Hashable, Iterable

import numpy as np
import torch

from rl import nodes
from rl.config import EnvConfig, RolloutConfig, WorkersConfig
from rl.episode import Episode, Item
from rl.model import load_model
from rl.rollout.chat import TurnFormatter
from rl.rollout.engine import HFEngine
from rl.rollout.loop import Player, rollout
from rl.rollout.timing import Rollout, RolloutTimes
from rl.weights import WeightGroup, to_numpy

log = logging.getLogger(__name__)


def check_engine_installed(cfg: WorkersConfig) -> None:
    """Fail before any model is built when the chosen engine cannot run here.

    Workers on a cluster joined by `address` may have packages this machine lacks, so that case is left to them."""
    if cfg.engine == "vllm" and not (cfg.ray and cfg.address) and importlib.util.find_spec("vllm") is None:
        raise ImportError(
            "workers.engine=vllm needs vLLM, which is not installed: on a CUDA machine `pip install -e '.[vllm]'`; "
            "on a CPU-only machine `make test` installs its CPU build, or see docs/vllm.md"
        )


class RolloutWorker:
    """An engine and a way to make environments; the same class runs locally or as a Ray actor."""

    def __init__(
        self,
        model_path: str,
        env: EnvConfig,
        rollout_cfg: RolloutConfig,
        workers_cfg: WorkersConfig,
        device: str,
        version: int = 0,  # the learner's updates behind the weights at model_path (a checkpoint's step)
    ):
        from transformers import AutoTokenizer

        spec, params = env.resolve()
        self.make_env = lambda: spec.make_env(params)
        self.cfg = rollout_cfg
        self.device = device
        self.weight_group: WeightGroup | None = None  # workers.weight_transport=broadcast
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        if workers_cfg.engine == "vllm":
            from rl.rollout.vllm_engine import VLLMEngine  # only now: vLLM is an optional extra

            self.engine = VLLMEngine(
                model_path,
                tokenizer,
                dtype=workers_cfg.vllm_dtype,
                gpu_memory_utilization=workers_cfg.vllm_gpu_memory_utilization,
                kv_cache_memory_bytes=int(workers_cfg.vllm_kv_cache_mb * 2**20) or None,
                enable_sleep_mode=workers_cfg.vllm_sleep_mode,
            )
        else:
            self.engine = HFEngine(load_model(model_path, torch.device(device)).eval(), tokenizer, device)
        self.formatter = TurnFormatter(tokenizer, rollout_cfg.observation_role)
        if version:
            self.engine.finish_sync(version)

    def rollout(self, items: list[Item], greedy: bool = False) -> Rollout:
        return rollout(self.engine, self.formatter, self.make_env, items, self.cfg, greedy)

    def update_weights(self, bucket: dict) -> None:
        # Ray hands numpy arrays over zero-copy from the object store; wrap them without a copy.
        self.engine.update_weights(
            {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in bucket.items()}
        )

    def finish_sync(self, version: int) -> None:
        self.engine.finish_sync(version)

    def join_weight_group(self, join: tuple) -> None:
        """Join the learner's weight group: (host, port, this worker's rank, size, timeout_s)."""
        if self.weight_group is not None:
            self.weight_group.close()
            self.weight_group = None
        host, port, rank, size, timeout_s = join
        self.weight_group = WeightGroup(host, port, rank, size, torch.device(self.device), timeout_s)

    def receive_weights(self, version: int, join: tuple | None = None) -> None:
        """A sync by broadcast: the buckets as the learner sends them, each loaded as it comes (after joining the
        group first, when `join` is given)."""
        if join is not None:
            self.join_weight_group(join)
        for bucket in self.weight_group.receive():
            self.engine.update_weights(bucket)
        self.engine.finish_sync(version)

    def probe_logprobs(self, sequences: list[list[int]], version: int) -> list[list[float]]:
        """The check after the sync to `version` (calls run in order, so that sync came first)."""
        if self.engine.version != version:
            raise RuntimeError(
                f"weight sync check failed: the probe after the sync to version {version} found the engine at"
                f" version {self.engine.version}: that sync never arrived"
            )
        return self.engine.probe_logprobs(sequences)

    def engine_name(self) -> str:
        """What generates: the engine, its version and where it runs, e.g. "vllm 0.32.0 cpu float32"."""
        return self.engine.describe()

    def sleep(self) -> None:
        self.engine.sleep()

    def wake_up(self) -> None:
        self.engine.wake_up()

    def pid(self) -> int:
        return os.getpid()

    def node(self) -> str:
        """The address of the Ray node this worker runs on."""
        return nodes.node_ip()


class StreamWorker:
    """A rollout worker for fully asynchronous training (`workers.partial_rollouts`): a Ray actor whose calls run
    on one asyncio loop, so GRPO groups added while others play join the same engine batch.

    A sync is one call that fetches every bucket, then loads them all between two engine steps (the engine
    steps inside the loop, and a call runs only when the loop is free): no step ever sees half of a sync. (An
    async actor starts calls whose arguments are ready first, so a sync in several calls could end before
    its buckets came.) The generations in flight then go on with the new weights, and their tokens record
    both versions.
    """

    def __init__(self, *args):
        self.worker = w = RolloutWorker(*args)
        # asyncio objects bind to the loop that first uses them: the actor's, though made here
        self.player = Player(w.engine, w.formatter, w.make_env, w.cfg)
        self.synced = asyncio.Condition()  # notified when a sync has finished
        self.receiving = asyncio.Lock()  # held by a sync by broadcast

    async def _holding(self, version: int) -> None:
        """Return once the engine holds weights of `version` or later."""
        async with self.synced:
            await self.synced.wait_for(lambda: self.worker.engine.version >= version)

    async def play(self, items: list[Item], version: int) -> Rollout:
        """One GRPO group (or several), started once the engine holds weights of `version` or later."""
        await self._holding(version)
        return await self.player.play_all(items)

    async def rollout(self, items: list[Item], greedy: bool = False) -> Rollout:
        return await self.player.play_all(items, greedy)

    async def sync(self, buckets: list, version: int) -> None:
        """Load a sync's buckets (Ray object refs) and sample with `version` from the next engine step on."""
        await self._load([await bucket for bucket in buckets], version)

    async def receive_weights(self, version: int, join: tuple | None = None) -> None:
        """A sync by broadcast: every bucket received (on a thread: the episodes go on playing meanwhile), then
        loaded like `sync`'s. One at a time: two syncs' collectives must not interleave."""

        def receive() -> list[dict]:
            if join is not None:
                self.worker.join_weight_group(join)
            return list(self.worker.weight_group.receive())

        async with self.receiving:
            await self._load(await asyncio.to_thread(receive), version)

    async def _load(self, buckets: list[dict], version: int) -> None:
        for bucket in buckets:  # no await in between: no engine step sees half of them
            self.worker.update_weights(bucket)
        self.worker.finish_sync(version)
        async with self.synced:
            self.synced.notify_all()

    async def times(self) -> RolloutTimes:
        """Where this worker's time went since it started (`worker_s`: while any episode was live)."""
        return self.player.times_now()

    async def probe_logprobs(self, sequences: list[list[int]], version: int) -> list[list[float]]:
        """The check after the sync to `version`, once it has landed (an async actor may start this call first)."""
        await self._holding(version)
        return self.worker.probe_logprobs(sequences, version)

    async def engine_name(self) -> str:
        return self.worker.engine_name()

    async def pid(self) -> int:
        return os.getpid()

    async def node(self) -> str:
        return self.worker.node()


def split_by_group(items: list[Item], n: int) -> list[list[int]]:
    """Indices of `items` in n shards of whole groups (a group's episodes stay on one worker)."""
    groups = sorted({group for _, group, _ in items})
    shard_of = {g: k * n // len(groups) for k, g in enumerate(groups)}
    return [[i for i, (_, g, _) in enumerate(items) if shard_of[g] == s] for s in range(n)]


class Queued:
    """A call waiting in a `LocalPool`; `.result()` runs the pool's queue up to and including it."""

    def __init__(self, pool: "LocalPool", fn: Callable[[], Any]):
        self.pool, self.fn = pool, fn
        self.finished, self.value, self.error = False, None, None

    def result(self) -> Any:
        self.pool.run_until(self)
        if self.error is not None:
            raise self.error
        return self.value


class LocalPool:
    """One worker in this process; calls run in the order they were made, when a result is needed."""

    def __init__(
        self,
        cfg: WorkersConfig,
        model_path: str,
        env: EnvConfig,
        rollout_cfg: RolloutConfig,
        device: str,
        version: int = 0,  # the learner's updates behind the weights at model_path
    ):
        self.worker = RolloutWorker(model_path, env, rollout_cfg, cfg, device, version)
        self.queue: deque[Queued] = deque()
        self.restarts = 0

    def _submit(self, fn: Callable[[], Any]) -> Queued:
        call = Queued(self, fn)
        self.queue.append(call)
        return call

    def run_until(self, call: Queued) -> None:
        while not call.finished:
            head = self.queue.popleft()
            try:
                head.value = head.fn()
            except Exception as e:  # raised by that call's own .result()
                head.error = e
            head.finished = True

    def rollout(self, items: list[Item], greedy: bool = False) -> Queued:
        return self._submit(lambda: self.worker.rollout(items, greedy))

    def sync(self, weight_buckets: Iterable, version: int) -> Queued:
        """Load the learner's weights (`version`: its updates so far), given bucket by bucket: dicts of tensors,
        or Ray object refs to them (the sharded learner's rank 0 puts each bucket in the object store)."""
        # A snapshot: the learner goes on changing its tensors while this call waits its turn.
        parts = [_fetched(b) for b in weight_buckets]

        def load():
            for bucket in parts:
                self.worker.update_weights(bucket)
            self.worker.finish_sync(version)

        return self._submit(load)

    def probe(self, sequences: list[list[int]], version: int) -> Queued:
        """Probe logprobs of each worker (here: one) after the sync to `version`, as a list of per-worker results."""
        return self._submit(lambda: [self.worker.probe_logprobs(sequences, version)])

    def engine_names(self) -> Queued:
        return self._submit(lambda: [self.worker.engine_name()])

    def nodes(self) -> Queued:
        return self._submit(lambda: ["the trainer's process"])

    def sleep(self) -> Queued:
        return self._submit(self.worker.sleep)

    def wake_up(self) -> Queued:
        return self._submit(self.worker.wake_up)

    def close(self) -> None:
        self.queue.clear()


def _fetched(bucket) -> dict:
    if isinstance(bucket, dict):
        return {k: v.detach().clone() for k, v in bucket.items()}
    import ray

    return ray.get(bucket)


class Later:
    """A result computed when first asked for (`.result()`): Ray object refs, or a value already there.

    Kept once computed: gathering a rollout consumes its Ray calls, and a checkpoint reads the
    rollouts in flight before the step that trains on them reads them again.
    """

    def __init__(self, get: Callable[[], Any]):
        self.get = get
        self.done, self.value = False, None

    def result(self) -> Any:
        if not self.done:
            self.value, self.done = self.get(), True
        return self.value


def start_ray(cfg: WorkersConfig, learner_cpus: float = 0.0) -> None:
    """Start or join this process's Ray cluster (once). A new local cluster by default ("local": not one that
    RAY_ADDRESS or a `ray start` on this machine points to, so two runs never share one by accident); `address`
    joins an existing one. A local cluster counts at least the CPUs the rollout workers and learner ranks reserve:
    they share the machine's cores, as one process's threads would."""
    import ray

    if ray.is_initialized():
        return
    reserved = learner_cpus + (cfg.num_workers * cfg.cpus_per_worker if cfg.ray else 0.0)
    cpus = None if cfg.address else max(os.cpu_count() or 1, math.ceil(reserved))
    ray.init(address=cfg.address or "local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)


class RayPool:
    """Several workers as Ray actors; replaces a worker that dies and re-runs its unfinished episodes.

    With `workers.partial_rollouts` the workers are `StreamWorker`s and take GRPO groups one at a time
    (`submit_group`, `finished_groups`), besides the calls every pool takes."""

    def __init__(
        self,
        cfg: WorkersConfig,
        model_path: str,
        env: EnvConfig,
        rollout_cfg: RolloutConfig,
        version: int = 0,  # the learner's updates behind the weights at model_path
    ):
        import ray

        self.ray = ray
        start_ray(cfg)
        device = "cuda" if cfg.gpus_per_worker > 0 else "cpu"
        worker_class = StreamWorker if cfg.partial_rollouts else RolloutWorker
        self.actor = ray.remote(num_cpus=cfg.cpus_per_worker, num_gpus=cfg.gpus_per_worker)(worker_class)
        self.args = (model_path, env, rollout_cfg, cfg, device, version)
        self.cfg = cfg
        self.weight_refs: list = []  # the latest synced buckets, for workers started later
        self.version = version  # their version
        self.device = device
        self.source = None  # the learner that last sent weights by broadcast (replacements fetch from it)
        self.grouped = False  # whether the workers and the learner form a weight group (broadcast)
        self.node_of: dict[int, str] = {}  # worker k -> the Ray node id it was placed on (placement=spread)
        self.workers = [self._start(k) for k in range(cfg.num_workers)]
        self.restarts = 0
        self.dead_worker = (
            ray.exceptions.RayActorError,
            ray.exceptions.WorkerCrashedError,
            ray.exceptions.ActorUnschedulableError,
        )
        # groups in flight (partial_rollouts): their call -> (key, items, version, worker, the worker's handle)
        self.groups: dict[Any, tuple] = {}
        self.group_deaths = 0  # worker deaths since a group last came back
        self.times_seen = [RolloutTimes() for _ in self.workers]  # each worker's `times()` when last asked

    def _start(self, k: int):
        """Start worker k (placement=spread: on the live node with the fewest of the pool's workers, another than
        the one worker k was on before, where there is one)."""
        options = {}
        if self.cfg.placement == "spread":
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            node = self._emptiest_node(k)
            if node is not None:  # pinned (Ray's soft affinity and SPREAD are best effort): a worker whose node
                # is gone before it starts cannot be placed, and is replaced like a dead one
                options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=False)
                self.node_of[k] = node
        worker = self.actor.options(**options).remote(*self.args)
        if self.weight_refs or self.source is not None:  # a replacement starts from the latest weights
            self._load_through_store(worker)
        self.grouped = False  # a new member: the weight group forms again at the next sync by broadcast
        return worker

    def _emptiest_node(self, k: int) -> str | None:
        """The live node that can hold a worker and holds the fewest of this pool's others (worker k's last node
        counts as full: it may be the one that was lost)."""
        need = {"CPU": self.cfg.cpus_per_worker, "GPU": self.cfg.gpus_per_worker}
        nodes_alive = sorted(
            (n for n in self.ray.nodes() if n["Alive"] and all(n["Resources"].get(r, 0) >= v for r, v in need.items())),
            key=lambda n: n["NodeManagerAddress"],
        )
        load = {n["NodeID"]: 0 for n in nodes_alive}
        for j, node in self.node_of.items():
            if j != k and node in load:
                load[node] += 1
        if self.node_of.get(k) in load and len(load) > 1:
            load[self.node_of[k]] = len(self.node_of) + 1
        return min(load, key=load.get) if load else None

    def _replace(self, k: int, dead, error: Exception, deaths: int, then: str) -> None:
        """Start a new worker k (from the latest weights) after its `deaths`-th death in one call; nothing when
        worker k is no longer `dead` (another call found the death first and replaced it)."""
        if self.workers[k] is not dead:
            return
        if deaths > self.cfg.max_restarts:
            raise RuntimeError(f"rollout workers died {deaths} times in one call; giving up") from error
        log.warning("rollout worker %d died (%s); starting a new one and %s", k, type(error).__name__, then)
        self.restarts += 1
        self.workers[k] = self._start(k)
        self.times_seen[k] = RolloutTimes()

    def rollout(self, items: list[Item], greedy: bool = False) -> Later:
        shards = [s for s in split_by_group(items, len(self.workers)) if s]
        calls = {
            self.workers[k].rollout.remote([items[i] for i in shard], greedy): (k, shard, self.workers[k])
            for k, shard in enumerate(shards)
        }
        return Later(lambda: self._gather(items, calls, greedy))

    def _gather(self, items: list[Item], calls: dict, greedy: bool) -> Rollout:
        ray = self.ray
        results: list[Episode | None] = [None] * len(items)
        times = RolloutTimes()
        restarts_here = 0
        while calls:
            ready, _ = ray.wait(list(calls), num_returns=1)
            k, shard, handle = calls.pop(ready[0])
            try:
                shard_rollout = ray.get(ready[0])
            except self.dead_worker as e:
                restarts_here += 1
                self._replace(k, handle, e, restarts_here, f"re-running its {len(shard)} episodes")
                calls[self.workers[k].rollout.remote([items[i] for i in shard], greedy)] = (k, shard, self.workers[k])
                continue
            for i, episode in zip(shard, shard_rollout.episodes):
                results[i] = episode
            times = times.add(shard_rollout.times)
        return Rollout(results, times)

    def sync(self, weight_buckets: Iterable, version: int) -> Later:
        """Send the learner's weights (`version`: its updates so far), bucket by bucket (dicts of tensors, or Ray
        object refs to them), to every worker."""
        # Each bucket goes into the object store once and every worker reads it from there (`_put`). Each is
        # sent to the workers as soon as it exists; a worker runs its calls in order (a StreamWorker, whose
        # calls may start out of order, takes the whole sync in one call).
        self.weight_refs, self.version, calls = [], version, []
        for b in weight_buckets:
            ref = self._put(b)
            self.weight_refs.append(ref)
            if not self.cfg.partial_rollouts:
                calls += [w.update_weights.remote(ref) for w in self.workers]
        if self.cfg.partial_rollouts:  # one call per worker, once every bucket is there (see StreamWorker)
            calls = [w.sync.remote(self.weight_refs, version) for w in self.workers]
        else:  # runs after its worker's last bucket (actor calls run in order)
            calls += [w.finish_sync.remote(version) for w in self.workers]
        return Later(lambda: self._synced(calls))

    def broadcast(self, learner, version: int) -> Later:
        """Send the learner's weights (`version`: its updates so far) to every worker by broadcast
        (`workers.weight_transport=broadcast`); returns once they are sent.

        The weight group (the learner's rank 0 and the workers) forms at the first sync and again after a worker
        is replaced. When a member fails, the sender ends the group (the others' collectives fail at once), the
        surviving workers load this sync through the object store instead, and the group forms anew next time."""
        self.source, self.version, self.weight_refs = learner, version, []
        joins = [None] * len(self.workers)  # worker k's (host, port, rank, size, timeout_s) when the group forms
        if not self.grouped:
            host, port = learner.weight_group_address()
            size, timeout = len(self.workers) + 1, learner.cfg.timeout_s
            joins = [(host, port, k + 1, size, timeout) for k in range(len(self.workers))]
        calls = [w.receive_weights.remote(version, joins[k]) for k, w in enumerate(self.workers)]
        failed = "" if self.grouped else learner.join_weight_group(host, port, size, self.device, timeout)
        failed = failed or learner.broadcast_weights(self.cfg.bucket_mb)
        self.grouped = not failed
        if failed:  # the workers' calls end at once (the sender ended the group); reload before any later call
            log.warning("weight broadcast failed (%s); this sync goes through the object store", failed)
            self._synced(calls, resend=True)
            return Later(lambda: None)
        return Later(lambda: self._synced(calls))

    def _synced(self, calls: list, resend: bool = False) -> None:
        """Wait for a sync's calls. A worker that died is left to the probe that follows, which replaces it;
        with `resend`, a worker whose call failed otherwise (a broadcast that broke) loads the weights through
        the object store."""
        for k, call in enumerate(calls):
            try:
                self.ray.get(call)
            except self.dead_worker:
                pass
            except self.ray.exceptions.RayTaskError:
                if not resend:
                    raise
                self._load_through_store(self.workers[k])  # before the probe that follows (calls run in order)

    def _load_through_store(self, worker) -> None:
        """Hand `worker` the latest weights through the object store (fetched from the learner under broadcast)."""
        if not self.weight_refs and self.source is not None:
            self.weight_refs = [self._put(b) for b in self.source.weight_buckets(self.cfg.bucket_mb)]
        if self.cfg.partial_rollouts:
            worker.sync.remote(self.weight_refs, self.version)
            return
        for ref in self.weight_refs:
            worker.update_weights.remote(ref)
        worker.finish_sync.remote(self.version)

    def _put(self, bucket):
        """A bucket in the object store: once, as numpy arrays (zero-copy reads; a torch tensor would be pickled
        and copied again on every worker). One already there (a sharded learner's rank 0 put it) passes as is."""
        return self.ray.put({k: to_numpy(v) for k, v in bucket.items()}) if isinstance(bucket, dict) else bucket

    def probe(self, sequences: list[list[int]], version: int) -> Later:
        """Probe logprobs of each worker after the sync to `version`, as a list of per-worker results."""
        calls = [(w, w.probe_logprobs.remote(sequences, version)) for w in self.workers]
        return Later(lambda: [self._probe_one(k, w, ref, sequences, version) for k, (w, ref) in enumerate(calls)])

    def _probe_one(self, k: int, worker, ref, sequences: list[list[int]], version: int) -> list[list[float]]:
        # A worker that died after its rollout (during the update or the sync) is found here, the
        # first call after a sync that the trainer waits for; its replacement loads the synced weights.
        deaths = 0
        while True:
            try:
                return self.ray.get(ref)
            except self.dead_worker as e:
                deaths += 1
                self._replace(k, worker, e, deaths, "probing it again")
                worker = self.workers[k]
                ref = worker.probe_logprobs.remote(sequences, version)

    # ------------------------------------------------------------------ one group at a time (partial_rollouts)

    def submit_group(self, key: Hashable, items: list[Item], version: int) -> None:
        """Start one GRPO group on the worker with the fewest groups in flight, once it holds `version`."""
        load = [0] * len(self.workers)
        for _, _, _, k, _ in self.groups.values():
            load[k] += 1
        self._submit(load.index(min(load)), key, items, version)

    def _submit(self, k: int, key: Hashable, items: list[Item], version: int) -> None:
        self.groups[self.workers[k].play.remote(items, version)] = (key, items, version, k, self.workers[k])

    def finished_groups(self, block: bool) -> list[tuple[Hashable, Rollout]]:
        """The groups that have finished, as (key, rollout); `block`: wait for at least one.
        A dead worker is replaced and its groups in flight start again on the new one."""
        out = []
        while self.groups and not out:
            ready, _ = self.ray.wait(list(self.groups), num_returns=len(self.groups), timeout=0)
            if not ready and block:
                ready, _ = self.ray.wait(list(self.groups), num_returns=1)
            for ref in ready:
                key, items, version, k, handle = self.groups.pop(ref)
                try:
                    out.append((key, self.ray.get(ref)))
                    self.group_deaths = 0
                except self.dead_worker as e:
                    if self.workers[k] is handle:  # the first of its calls to say so
                        self.group_deaths += 1
                    self._replace(k, handle, e, self.group_deaths, "re-running its groups in flight")
                    self._submit(k, key, items, max(version, self.version))
            if not block:
                break
        return out

    def times(self) -> RolloutTimes:
        """The workers' times since the last call, summed (partial_rollouts); a worker that just died adds none."""
        total = RolloutTimes()
        for k, call in enumerate([w.times.remote() for w in self.workers]):
            try:
                now = self.ray.get(call)
            except self.dead_worker:
                continue
            total, self.times_seen[k] = total.add(now.since(self.times_seen[k])), now
        return total

    def engine_names(self) -> Later:
        calls = [w.engine_name.remote() for w in self.workers]
        return Later(lambda: self.ray.get(calls))

    def nodes(self) -> Later:
        """The address of each worker's node."""
        calls = [w.node.remote() for w in self.workers]
        return Later(lambda: self.ray.get(calls))

    def sleep(self) -> Later:
        calls = [w.sleep.remote() for w in self.workers]
        return Later(lambda: self.ray.get(calls))

    def wake_up(self) -> Later:
        calls = [w.wake_up.remote() for w in self.workers]
        return Later(lambda: self.ray.get(calls))

    def pids(self) -> list[int]:
        return self.ray.get([w.pid.remote() for w in self.workers])

    def close(self) -> None:
        for w in self.workers:
            self.ray.kill(w)


def check_probe(
    engine_logprobs: list[list[list[float]]], learner_logprobs: list[torch.Tensor], tolerance: float
) -> float:
    """Largest |engine - learner| logprob over every worker's probe; raise when above `tolerance`.

    A weight sync that silently did not happen (a known failure of peer systems) shows here.
    """
    worst = 0.0
    for per_worker in engine_logprobs:
        for got, want in zip(per_worker, learner_logprobs):
            worst = max(worst, float((torch.tensor(got) - want[1:]).abs().max()))
    if worst > tolerance:
        raise RuntimeError(
            f"weight sync check failed: engine and learner logprobs differ by {worst:.3g} on the probe batch "
            f"(tolerance {tolerance:g}); the engines are not running the learner's weights"
        )
    return worst

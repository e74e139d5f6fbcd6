"""The sharded learner: `learner.world_size` ranks, each a Ray actor holding one FSDP2 shard of every model.

    trainer process                       Ray actors (one placement group)
    ShardedLearner  --- shares ------->   LearnerRank 0 .. N-1: an FSDPLearner (a Learner whose models
      (driver)      <-- metrics, buckets   are sharded with torch's fully_shard over one process group:
                                           gloo on the CPU, NCCL on CUDA)

The driver runs the update loop of the in-process learner (`UpdateLoop`): only its passes and
its mini-batch step deal the batch's rows to the ranks (`Batch.shares`) and put the results back
in place. Each rank runs the ordinary `Learner` code on its share of every mini-batch. The loss is
normalized by the mini-batch's global token and sequence counts, which the driver computes
and sends, and FSDP2 sums the gradients over ranks (its default averages them), so N ranks
take the step one learner takes on the whole batch. FSDP2 all-gathers and reduce-scatters
in every forward and backward, so all ranks must run the same passes: shares are cut so that
every rank has the same number of micro-batches (a rank short of one runs an empty,
zero-weight one), and ranks agree before a micro-batch takes the shared-prompt path.

A weight sync gathers the whole weights one bucket at a time (`DTensor.full_tensor()` on
every rank); rank 0 puts each bucket in Ray's object store and the rollout workers read it
from there. A rank that dies or a collective that hangs fails the step within
`learner.timeout_s` with a one-line `LearnerRankError`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from datetime import timedelta
from pathlib import Path
from typing import Iterator

import torch
import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from rl import nodes
from rl.batch import Batch, unshared
from rl.config import AlgoConfig, LearnerConfig, import_user_modules
from rl.learn.learner import Learner, UpdateLoop
from rl.weights import to_numpy

# Ray learns that a node is lost from its missed health checks, seconds after the ranks' collectives fail:
# a rank failure waits this long for another rank's death to be known, to name the rank that caused it.
DEATH_NOTICE_S = 30.0


class LearnerRankError(RuntimeError):
    """A learner rank died, failed, or did not answer in time."""


def combine(per_rank: list[dict[str, float]]) -> dict[str, float]:
    """One mini-batch's metrics from every rank's.

    Each rank's sums run over its share, normalized by the global counts, so they add up;
    maxima take the largest; the gradient norms are global already (the same on every rank)."""
    out = {}
    for key in per_rank[0]:
        values = [m[key] for m in per_rank]
        out[key] = max(values) if key.endswith("_max_abs") else values[0] if key.endswith("grad_norm") else sum(values)
    return out


# ---------------------------------------------------------------- the ranks


class FSDPLearner(Learner):
    """A Learner whose models are sharded over the default process group with FSDP2."""

    def __init__(self, mesh, *args, **kwargs):
        self.mesh = mesh
        super().__init__(*args, **kwargs)

    def _prepare(self, module: torch.nn.Module) -> torch.nn.Module:
        # One FSDP unit per transformer block (the classes the model names as never to be split), then the rest.
        base = module.get_base_model() if hasattr(module, "get_base_model") else module
        blocks = set(getattr(base, "_no_split_modules", None) or [])
        policy = MixedPrecisionPolicy()
        if blocks and self.cfg.bf16 and self.device.type == "cuda":
            # bf16 compute, float32 master weights and gradient reductions.
            policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for sub in module.modules():
            if type(sub).__name__ in blocks:
                fully_shard(sub, mesh=self.mesh, mp_policy=policy)
        fully_shard(module, mesh=self.mesh, mp_policy=policy)
        for sub in module.modules():
            if isinstance(sub, FSDPModule):
                # The loss is normalized by global counts: the ranks' gradients must add up, not average
                # (as a plain sum: gloo has no pre-scaled sum).
                sub.set_gradient_divide_factor(1.0)
                sub.set_force_sum_reduction_for_comms(True)
        return module

    def _on_all_ranks(self, ok: bool) -> bool:
        flag = torch.tensor([int(ok)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def critic_modules(self) -> torch.nn.Module:
        """The critic's modules in one container, to checkpoint them with their optimizer."""
        parts = {"head": self.value_head} | ({"model": self.critic_model} if self.critic_model is not None else {})
        return torch.nn.ModuleDict(parts)


class LearnerRank:
    """One rank, as a Ray actor. Every method is a step all ranks take together (collectives inside)."""

    def listen(self) -> tuple[str, int, int]:
        """This rank's node address, a port there the others check they can reach, and (rank 0's) a free port
        for the process group's rendezvous."""
        ip = nodes.node_ip()
        self.listener = nodes.listen(ip)
        return ip, self.listener.getsockname()[1], nodes.free_port(ip)

    def unreachable(self, peers: list[tuple[str, int]], timeout: float) -> list[str]:
        """The other ranks' addresses this rank cannot reach (the ranks try all at once, each holding its own
        `listen` socket open)."""
        return nodes.unreachable(peers, timeout)

    def setup(
        self,
        rank: int,
        world_size: int,
        address: str,
        port: int,
        model_path: str,
        cfg: LearnerConfig,
        algo: AlgoConfig,
        temperature: float,
        ref_path: str | None,
        imports: list[str],
    ) -> dict:
        from torch.distributed.device_mesh import init_device_mesh

        import_user_modules(imports)  # the config's own modules: the estimators and losses they register run here too

        self.rank, self.world_size, self.cfg = rank, world_size, cfg
        self.listener.close()
        nodes.bind_collectives(nodes.node_ip(), cfg.socket_ifname)
        cuda = cfg.device == "cuda"
        if cuda:
            torch.cuda.set_device(0)  # Ray shows each rank only its own GPU
        dist.init_process_group(
            "nccl" if cuda else "gloo",
            init_method=f"tcp://{address}:{port}",
            rank=rank,
            world_size=world_size,
            timeout=timedelta(seconds=cfg.timeout_s),
        )
        mesh = init_device_mesh("cuda" if cuda else "cpu", (world_size,))
        self.learner = FSDPLearner(mesh, model_path, cfg, algo, temperature, ref_path)
        return {
            "trainable_params": self.learner.trainable_params,
            "reference": self.learner.ref_model is not None,
            "critic": self.learner.value_head is not None,
        }

    def logprobs(self, share: Batch, reference: bool) -> torch.Tensor:
        return self.learner.logprobs(share, self.learner.ref_model if reference else None)

    def sampling_values(self, share: Batch) -> torch.Tensor:
        return self.learner.sampling_values(share)

    def probe_logprobs(self, sequences: list[list[int]]) -> list[torch.Tensor] | None:
        out = self.learner.probe_logprobs(sequences)
        return out if self.rank == 0 else None

    def train_minibatch(
        self, share: Batch, counts: tuple[float, float], fresh: bool
    ) -> tuple[dict[str, float], torch.Tensor | None, float]:
        """`Learner.train_minibatch` on this rank's share; also the learning rate after the step."""
        stats, seen = self.learner.train_minibatch(share, counts, fresh)
        return {k: float(v) for k, v in stats.items()}, seen, self.learner.lr()

    def start_sync(self, bucket_mb: float) -> None:
        self.buckets = self.learner.weight_buckets(bucket_mb)

    def next_bucket(self) -> tuple[dict | None, bool]:
        """The next bucket of whole weights (rank 0 returns it, into the object store; the others only gather)
        and whether there was one."""
        bucket = next(self.buckets, None)
        if bucket is None or self.rank != 0:
            return None, bucket is not None
        return {k: to_numpy(v) for k, v in bucket.items()}, True

    def set_algo(self, algo: AlgoConfig) -> None:
        self.learner.set_algo(algo)

    def weight_group_address(self) -> tuple[str, int]:
        return self.learner.weight_group_address()

    def join_weight_group(self, host: str, port: int, size: int, device: str, timeout_s: float) -> str:
        return self.learner.join_weight_group(host, port, size, device, timeout_s)  # rank 0 only

    def broadcast_weights(self, bucket_mb: float) -> str:
        """Every rank gathers each bucket; rank 0 broadcasts it to the weight group. "" or why that failed."""
        if self.rank == 0:
            return self.learner.broadcast_weights(bucket_mb)
        for _ in self.learner.weight_buckets(bucket_mb):
            pass
        return ""

    def save_model(self, path: str, bucket_mb: float) -> None:
        """The policy as a Hugging Face directory, written by rank 0 one gathered bucket per safetensors file."""
        from safetensors.torch import save_file

        path = Path(path)
        weight_map: dict[str, str] = {}
        total = 0
        for k, bucket in enumerate(self.learner.weight_buckets(bucket_mb)):
            if self.rank == 0:
                name = f"model-{k + 1:05d}.safetensors"
                path.mkdir(parents=True, exist_ok=True)
                save_file(
                    {n: t.detach().cpu().contiguous() for n, t in bucket.items()},
                    path / name,
                    metadata={"format": "pt"},
                )
                weight_map |= dict.fromkeys(bucket, name)
                total += sum(t.numel() * t.element_size() for t in bucket.values())
        if self.rank == 0:
            (path / "model.safetensors.index.json").write_text(
                json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1)
            )
            model = self.learner.model
            base = model.get_base_model() if hasattr(model, "get_base_model") else model
            base.config.save_pretrained(path)
            if base.generation_config is not None:
                base.generation_config.save_pretrained(path)

    def _checkpoint_state(self) -> dict:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        learner = self.learner
        model, optimizer = get_state_dict(learner.model, learner.optimizer)
        state = {"model": model, "optimizer": optimizer}
        if learner.value_head is not None:
            state["critic"], state["critic_optimizer"] = get_state_dict(
                learner.critic_modules(), learner.critic_optimizer
            )
        return state

    def save_state(self, directory: str) -> dict | None:
        """Every rank writes its shards of the models and optimizer states (torch.distributed.checkpoint)."""
        import torch.distributed.checkpoint as dcp

        dcp.save(self._checkpoint_state(), checkpoint_id=directory)
        return self.learner.scheduler.state_dict() if self.rank == 0 else None

    def load_state(self, directory: str, scheduler: dict) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_state_dict

        learner = self.learner
        state = self._checkpoint_state()
        dcp.load(state, checkpoint_id=directory)
        set_state_dict(
            learner.model, learner.optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"]
        )
        if learner.value_head is not None:
            set_state_dict(
                learner.critic_modules(),
                learner.critic_optimizer,
                model_state_dict=state["critic"],
                optim_state_dict=state["critic_optimizer"],
            )
        learner.scheduler.load_state_dict(scheduler)


# ---------------------------------------------------------------- the driver


class ShardedLearner(UpdateLoop):
    """The learner of the trainer when `learner.world_size` > 1: the calls of `Learner`, run by N rank actors."""

    def __init__(
        self,
        model_path,
        cfg: LearnerConfig,
        algo: AlgoConfig,
        temperature: float,
        ref_path=None,
        imports: list[str] = (),
    ):
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self.ray, self.cfg, self.algo = ray, cfg, algo
        n = cfg.world_size
        gpus = cfg.gpus_per_rank > 0
        self.device = torch.device("cuda" if gpus else "cpu")
        bundle = {"CPU": cfg.cpus_per_rank} | ({"GPU": cfg.gpus_per_rank} if gpus else {})
        self.ranks: list = []
        self.placement = None
        room = _room(ray.nodes(), bundle)
        if sum(room.values()) < n:
            raise LearnerRankError(
                f"learner.world_size={n} ranks of {bundle} do not fit this cluster: its live nodes hold "
                + ", ".join(f"{ip}: {k}" for ip, k in room.items())
                + " (ranks of that size, counting all of each node's resources)"
            )
        self.placement = placement_group([bundle] * n, strategy="PACK")
        try:
            ray.get(self.placement.ready(), timeout=cfg.timeout_s)
        except ray.exceptions.GetTimeoutError:
            self.close()
            raise LearnerRankError(
                f"the Ray cluster could not place {n} learner ranks of "
                f"{bundle} within learner.timeout_s={cfg.timeout_s:g}s (its nodes have room for "
                f"{sum(room.values())}, but others hold their resources)"
            ) from None
        actor = ray.remote(LearnerRank)
        self.ranks = [
            actor.options(
                num_cpus=cfg.cpus_per_rank,
                num_gpus=cfg.gpus_per_rank,
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.placement, placement_group_bundle_index=r),
            ).remote()
            for r in range(n)
        ]
        rank_cfg = dataclasses.replace(cfg, device=self.device.type)
        ref = str(ref_path) if ref_path else None
        try:
            listening = self._wait([r.listen.remote() for r in self.ranks], "start")
            self.nodes = [ip for ip, _, _ in listening]  # each rank's node address
            self._check_reach([(ip, port) for ip, port, _ in listening])
            address, port = self.nodes[0], listening[0][2]
            info = self._wait(
                [
                    r.setup.remote(
                        k, n, address, port, str(model_path), rank_cfg, algo, temperature, ref, list(imports)
                    )
                    for k, r in enumerate(self.ranks)
                ],
                "start",
            )[0]
        except LearnerRankError:
            self.close()  # no trainer exists yet to do it
            raise
        self.trainable_params = info["trainable_params"]
        self.has_reference, self.has_critic = info["reference"], info["critic"]

    def _check_reach(self, peers: list[tuple[str, int]]) -> None:
        """Every rank opens a TCP connection to every other's node address before the process group starts:
        a rank that cannot fails the start within learner.connect_timeout_s, naming the addresses."""
        timeout = self.cfg.connect_timeout_s
        failed = self._wait(
            [
                r.unreachable.remote([p for j, p in enumerate(peers) if j != k], timeout)
                for k, r in enumerate(self.ranks)
            ],
            "start",
        )
        if any(failed):
            raise LearnerRankError(nodes.unreachable_report(self.nodes, failed, "learner.connect_timeout_s", timeout))

    def _wait(self, calls: list, what: str) -> list:
        """Results of one call per rank; the first rank that dies or fails, or silence past learner.timeout_s,
        ends it."""
        ray = self.ray
        pending, deadline = list(calls), time.monotonic() + self.cfg.timeout_s
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                raise LearnerRankError(
                    f"learner ranks did not finish the {what} within "
                    f"learner.timeout_s={self.cfg.timeout_s:g}s (a rank or a collective hangs)"
                )
            try:
                ray.get(ready[0])
            except ray.exceptions.RayActorError:
                raise self._died(calls.index(ready[0]), what) from None
            except ray.exceptions.RayTaskError as e:
                # A collective fails on every rank when one rank's process or node is gone: name that one.
                dead = self._dead_among(calls, pending, min(DEATH_NOTICE_S, max(0.0, deadline - time.monotonic())))
                if dead is not None:
                    raise self._died(dead, what) from None
                cause = " ".join(str(e.cause).split())[:300]
                raise LearnerRankError(
                    f"learner rank {calls.index(ready[0])}{self._on(calls.index(ready[0]))} failed during the "
                    f"{what}: {type(e.cause).__name__}: {cause}"
                ) from None
        return ray.get(calls)

    def _dead_among(self, calls: list, pending: list, timeout: float) -> int | None:
        """The first rank among `pending` calls found dead within `timeout` seconds (None if none)."""
        ray, deadline = self.ray, time.monotonic() + timeout
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                return None
            try:
                ray.get(ready[0])
            except ray.exceptions.RayActorError:
                return calls.index(ready[0])
            except ray.exceptions.RayTaskError:
                pass
        return None

    def _on(self, rank: int) -> str:
        nodes_known = getattr(self, "nodes", None)
        return f" (node {nodes_known[rank]})" if nodes_known else ""

    def _died(self, rank: int, what: str) -> LearnerRankError:
        return LearnerRankError(
            f"learner rank {rank}{self._on(rank)} died during the {what}; resume=RUN_DIR continues from the last "
            "checkpoint"
        )

    # ------------------------------------------------------------ passes and steps, each rank on its share

    def _on_shares(self, method: str, batch: Batch, **kwargs) -> torch.Tensor:
        """[B, T]: `method` run by every rank on its share of `batch`, each row back in its place."""
        shares = batch.shares(len(self.ranks), self.cfg.micro_batch_size)
        results = self._wait(
            [getattr(r, method).remote(batch.select(share), **kwargs) for r, share in zip(self.ranks, shares)], method
        )
        return unshared(shares, results, batch.token_ids.shape)

    def logprobs(self, batch: Batch) -> torch.Tensor:
        return self._on_shares("logprobs", batch, reference=False)

    def reference_logprobs(self, batch: Batch) -> torch.Tensor | None:
        return self._on_shares("logprobs", batch, reference=True) if self.has_reference else None

    def sampling_values(self, batch: Batch) -> torch.Tensor | None:
        return self._on_shares("sampling_values", batch) if self.has_critic else None

    def probe_logprobs(self, sequences: list[list[int]]) -> list[torch.Tensor]:
        return self._wait([r.probe_logprobs.remote(sequences) for r in self.ranks], "probe")[0]

    def train_minibatch(
        self, mini: Batch, counts: tuple[float, float], fresh: bool
    ) -> tuple[dict[str, float], torch.Tensor | None]:
        """`Learner.train_minibatch`, sharded: the mini-batch is split between the ranks, which step together."""
        shares = mini.shares(len(self.ranks), self.cfg.micro_batch_size)
        results = self._wait(
            [r.train_minibatch.remote(mini.select(share), counts, fresh) for r, share in zip(self.ranks, shares)],
            "update",
        )
        self.last_lr = results[0][2]
        seen = unshared(shares, [part for _, part, _ in results], mini.token_ids.shape) if fresh else None
        return combine([stats for stats, _, _ in results]), seen

    def lr(self) -> float:
        return self.last_lr

    # ------------------------------------------------------------ weights and state

    def weight_buckets(self, bucket_mb: float) -> Iterator:
        """Ray object refs to the whole weights, one bucket each, gathered from the shards bucket by bucket."""
        self._wait([r.start_sync.remote(bucket_mb) for r in self.ranks], "weight sync")
        while True:
            calls = [r.next_bucket.options(num_returns=2).remote() for r in self.ranks]
            more = self._wait([more for _, more in calls], "weight sync")
            if not more[0]:
                return
            yield calls[0][0]

    def set_algo(self, algo: AlgoConfig) -> None:
        self.algo = algo
        self._wait([r.set_algo.remote(algo) for r in self.ranks], "new stage")

    def weight_group_address(self) -> tuple[str, int]:
        return self._wait([self.ranks[0].weight_group_address.remote()], "weight sync")[0]

    def join_weight_group(self, host: str, port: int, size: int, device: str, timeout_s: float) -> str:
        """Rank 0 forms the weight group with the rollout workers (workers.weight_transport=broadcast)."""
        call = self.ranks[0].join_weight_group.remote(host, port, size, device, timeout_s)
        return self._wait([call], "weight sync")[0]

    def broadcast_weights(self, bucket_mb: float) -> str:
        return self._wait([r.broadcast_weights.remote(bucket_mb) for r in self.ranks], "weight sync")[0]

    def save_model(self, path: Path) -> None:
        self._wait([r.save_model.remote(str(path), 64.0) for r in self.ranks], "checkpoint")

    def save_state(self, directory: Path) -> dict:
        """Each rank writes its shards to DIRECTORY/dcp;
        the trainer's state file keeps the world size and the scheduler."""
        scheduler = self._wait([r.save_state.remote(str(directory / "dcp")) for r in self.ranks], "checkpoint")[0]
        return {"world_size": len(self.ranks), "scheduler": scheduler}

    def load_state(self, state: dict, directory: Path) -> None:
        saved = state.get("world_size", 1)
        if saved != len(self.ranks):
            raise ValueError(
                f"resume: {directory} was written by learner.world_size={saved}; "
                f"resume it with learner.world_size={saved}, not {len(self.ranks)}"
            )
        self._wait([r.load_state.remote(str(directory / "dcp"), state["scheduler"]) for r in self.ranks], "resume")

    def close(self) -> None:
        for r in self.ranks:
            self.ray.kill(r)
        if self.placement is not None:
            self.ray.util.remove_placement_group(self.placement)


def _room(cluster_nodes: list[dict], bundle: dict[str, float]) -> dict[str, int]:
    """How many bundles of `bundle` each live node of `ray.nodes()` holds, by its whole resources."""
    room = {}
    for node in cluster_nodes:
        if node["Alive"]:
            have = node["Resources"]
            fits = [int(have.get(k, 0) // v) for k, v in bundle.items() if v > 0]
            room[node["NodeManagerAddress"]] = min(fits) if fits else 1 << 30
    return room

"""The sharded learner: memory per rank, update and weight-sync time at world_size 1 and 2, and LoRA.

Run from the repository root:

    python benchmarks/distributed.py                  # a ~100M-parameter Qwen2-shaped model (built from a config)
    python benchmarks/distributed.py --hidden 256 --layers 2 --steps 1   # a quick look
    python benchmarks/distributed.py --across-nodes   # weight sync between two nodes (as root: network namespaces)

Every learner runs in its own Ray actor(s) with one CPU each, so each process's peak RSS is its own:
world_size 1 is a plain `Learner` in one actor, world_size 2 a `ShardedLearner` (FSDP2 over gloo).

Tables:
  memory       per rank: the model state (parameters + gradients + AdamW's two moments, counted from the
               tensors each rank holds after a step) and the process's peak RSS; the goal is a per-rank
               model state of at most 0.55x one rank's at world_size 2
  update       seconds per update (median of --steps, after one untimed) and the share of it the ranks
               spend inside collectives (gloo all-gathers and reduce-scatters, from torch.profiler)
  weight sync  seconds to send the whole weights to one Ray rollout worker and load them (64 MB buckets)
  LoRA         trainable parameters, model state, peak RSS and update time against full fine-tuning

--across-nodes: one table instead, weight sync from the trainer's learner (world_size 1) on one node to a
rollout worker on another, through Ray's object store and by broadcast (workers.weight_transport), for a tiny
model and the ~100M one: seconds (median of 3 after one untimed) and GB/s of weights. The two nodes are network
namespaces on this machine (tests/netns_cluster.py): a veth pair, no wire; the head offers no CPU, so the
worker lands on the other node.
"""

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import ray
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM
from transformers.utils import logging as hf_logging

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a checkout without `pip install -e .`
from envs.base import Task, Trajectory
from envs.lookup import LookupParams, sample_text
from rewards.base import Reward
from rl import nodes
from rl.batch import Batch
from rl.config import AlgoConfig, EnvConfig, LearnerConfig, RolloutConfig, TinyModelConfig, WorkersConfig
from rl.episode import Episode
from rl.learn.learner import Learner
from rl.learn.sharding import ShardedLearner
from rl.rollout.workers import RayPool
from rl.run.tiny import train_tokenizer

hf_logging.disable_progress_bar()
ROOT = Path(__file__).resolve().parents[1]


def build_model(out: Path, hidden: int, layers: int) -> Path:
    """A Qwen2-shaped model of the given size, initialised from a config (no download), and a small tokenizer."""
    tokenizer = train_tokenizer(sample_text(LookupParams()), TinyModelConfig(vocab_size=512))
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 11 // 4,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=max(1, hidden // 256),
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def batch(n: int, length: int, vocab: int) -> Batch:
    """n episodes of `length` tokens, the second half sampled by the policy, in GRPO groups of 4,
    with random rewards."""
    gen = torch.Generator().manual_seed(0)
    episodes = []
    for i in range(n):
        mask = [0] * (length // 2) + [1] * (length - length // 2)
        ids = torch.randint(1, vocab, (length,), generator=gen).tolist()
        reward = Reward(process=[], outcome=float(torch.randn((), generator=gen)))
        episodes.append(
            Episode(
                Trajectory(Task(f"t{i}", "")),
                group=i // 4,
                seed=i,
                token_ids=ids,
                loss_mask=mask,
                logprobs=[0.0] * length,
                reward=reward,
            )
        )
    return Batch.from_episodes(episodes)


def model_state_bytes(learner) -> int:
    """Bytes of the parameters, gradients and optimizer state this process holds (its shards, when sharded)."""

    def local(t):
        return t.to_local() if hasattr(t, "to_local") else t

    params = [p for p in learner.model.parameters()]
    total = sum(local(p).numel() * local(p).element_size() for p in params)
    total += sum(
        local(p).numel() * local(p).element_size() for p in params if p.requires_grad
    )  # a gradient each, between steps
    for state in learner.optimizer.state.values():
        total += sum(
            local(v).numel() * local(v).element_size() for v in state.values() if torch.is_tensor(v) and v.dim() > 0
        )
    return total


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


COLLECTIVES = ("c10d::", "gloo:", "nccl:")


def collective_seconds(prof) -> float:
    return sum(e.cpu_time_total for e in prof.key_averages() if e.key.startswith(COLLECTIVES)) / 1e6


@ray.remote(num_cpus=2, max_calls=1)  # a fresh process each: its peak RSS is its own
def one_rank(model_dir: str, cfg: LearnerConfig, batch: Batch, steps: int) -> dict:
    """world_size 1: a plain Learner in a fresh process."""
    learner = Learner(model_dir, cfg, AlgoConfig(), temperature=1.0)
    times = []
    for k in range(steps + 1):
        start = time.perf_counter()
        learner.update(batch)
        times.append(time.perf_counter() - start)
    return {
        "update_s": statistics.median(times[1:]),
        "state": model_state_bytes(learner),
        "rss": peak_rss(),
        "trainable": learner.trainable_params,
    }


def sharded(model_dir: str, cfg: LearnerConfig, batch: Batch, steps: int) -> dict:
    """world_size 2: a ShardedLearner; memory and collectives read inside each rank actor."""
    learner = ShardedLearner(model_dir, cfg, AlgoConfig(), temperature=1.0)
    times, comm = [], []
    for k in range(steps + 1):
        ray.get([r.__ray_call__.remote(start_profile) for r in learner.ranks])
        start = time.perf_counter()
        learner.update(batch)
        times.append(time.perf_counter() - start)
        comm.append(max(ray.get([r.__ray_call__.remote(stop_profile) for r in learner.ranks])))
    inside = ray.get(
        [r.__ray_call__.remote(lambda rank: (model_state_bytes(rank.learner), peak_rss())) for r in learner.ranks]
    )
    return {
        "update_s": statistics.median(times[1:]),
        "collective_share": statistics.median(c / t for c, t in zip(comm[1:], times[1:])),
        "state": max(s for s, _ in inside),
        "rss": max(r for _, r in inside),
        "trainable": learner.trainable_params,
        "learner": learner,
    }


def start_profile(rank) -> None:
    rank.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
    rank.profiler.__enter__()


def stop_profile(rank) -> float:
    rank.profiler.__exit__(None, None, None)
    return collective_seconds(rank.profiler)


def sync_seconds(model_dir: str, learner, bucket_mb: float = 64.0) -> float:
    """One weight sync into one Ray rollout worker (the same path as training: object store, then load)."""
    pool = RayPool(WorkersConfig(ray=True, num_workers=1), model_dir, EnvConfig("lookup"), RolloutConfig())
    try:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            pool.sync(learner.weight_buckets(bucket_mb), 1).result()
            times.append(time.perf_counter() - start)
        return statistics.median(times[1:])
    finally:
        pool.close()


def sync_across(address: str, hidden: int, layers: int) -> dict:
    """On the head node of a cluster: sync seconds to a worker on another node, by object store and by broadcast."""
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:  # on the filesystem every node sees
        model_dir = str(build_model(Path(tmp) / "model", hidden, layers))
        learner = Learner(model_dir, LearnerConfig(device="cpu"), AlgoConfig(), temperature=1.0)
        cfg = WorkersConfig(ray=True, address=address, num_workers=1, weight_transport="broadcast")
        pool = RayPool(cfg, model_dir, EnvConfig("lookup"), RolloutConfig())
        try:
            out = {
                "params": sum(p.numel() for p in learner.model.parameters()),
                "bytes": sum(p.numel() * p.element_size() for p in learner.model.parameters()),
                "learner_node": nodes.node_ip(),
                "worker_node": pool.nodes().result()[0],
            }
            for name, sync in (
                ("object_store", lambda v: pool.sync(learner.weight_buckets(64.0), v)),
                ("broadcast", lambda v: pool.broadcast(learner, v)),
            ):
                times = []
                for v in range(4):
                    start = time.perf_counter()
                    sync(v + 1).result()
                    times.append(time.perf_counter() - start)
                out[name] = statistics.median(times[1:])
            return out
        finally:
            pool.close()


def across_nodes(sizes: list[tuple[int, int]]) -> None:
    """Start a two-node cluster of network namespaces and time the syncs from its head, one model size at a time."""
    from tests.netns_cluster import Cluster, available

    why = available()
    if why:
        sys.exit(f"--across-nodes needs a cluster of network namespaces: {why}")
    rows = []
    with Cluster(nodes=2, cpus=[0, 2]) as cluster:
        for hidden, layers in sizes:
            command = [sys.executable, __file__, "--sync-on", cluster.address, "--hidden", str(hidden)]
            done = cluster.run([*command, "--layers", str(layers)])
            if done.returncode:
                sys.exit(f"the sync on the cluster failed:\n{done.stderr[-3000:]}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(
        f"\nweight sync across two nodes (network namespaces on one machine): the learner on {rows[0]['learner_node']},"
        f" 1 rollout worker on {rows[0]['worker_node']}"
    )
    print(f"{'model':<10}{'weights':>10}{'object store s':>16}{'GB/s':>7}{'broadcast s':>13}{'GB/s':>7}")
    for r in rows:
        gbps = [r["bytes"] / r[k] / 1e9 for k in ("object_store", "broadcast")]
        print(
            f"{r['params'] / 1e6:>8.1f}M {mb(r['bytes']):>10}{r['object_store']:>16.3f}{gbps[0]:>7.2f}"
            f"{r['broadcast']:>13.3f}{gbps[1]:>7.2f}"
        )


def mb(n: float) -> str:
    return f"{n / 2**20:,.0f} MB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--sequences", type=int, default=8, help="episodes per update")
    parser.add_argument("--length", type=int, default=64, help="tokens per episode")
    parser.add_argument("--steps", type=int, default=2, help="timed updates per configuration (after one untimed)")
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--across-nodes", action="store_true", help="weight sync between two nodes (see above)")
    parser.add_argument("--sync-on", default="", help=argparse.SUPPRESS)  # run inside the cluster by --across-nodes
    args = parser.parse_args()
    if args.sync_on:
        print(json.dumps(sync_across(args.sync_on, args.hidden, args.layers)))
        return
    if args.across_nodes:
        across_nodes([(256, 2), (args.hidden, args.layers)])
        return

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(build_model(Path(tmp) / "model", args.hidden, args.layers))
        model = Qwen2ForCausalLM.from_pretrained(model_dir)
        n_params, vocab = sum(p.numel() for p in model.parameters()), model.config.vocab_size
        del model
        updates = batch(args.sequences, args.length, vocab)
        base = LearnerConfig(device="cpu", lr=1e-5, micro_batch_size=2)
        print(
            f"model: {n_params / 1e6:.1f}M parameters (hidden {args.hidden}, "
            f"{args.layers} layers); update: {args.sequences} x {args.length} tokens, "
            f"micro-batches of {base.micro_batch_size}, AdamW float32, CPU"
        )

        one = ray.get(one_rank.remote(model_dir, base, updates, args.steps))
        two = sharded(model_dir, LearnerConfig(**{**base.__dict__, "world_size": 2}), updates, args.steps)
        sync_two = sync_seconds(model_dir, two["learner"])
        two["learner"].close()
        local = Learner(model_dir, base, AlgoConfig(), temperature=1.0)  # in this process, as the trainer holds it
        sync_one = sync_seconds(model_dir, local)
        del local
        lora_cfg = LearnerConfig(**{**base.__dict__, "lora_rank": args.lora_rank, "lora_alpha": 2.0 * args.lora_rank})
        lora = ray.get(one_rank.remote(model_dir, lora_cfg, updates, args.steps))

    print("\nmemory per rank (model state = parameters + gradients + AdamW moments)")
    print(f"{'world_size':<12}{'model state':>14}{'x one rank':>12}{'peak RSS':>12}")
    print(f"{1:<12}{mb(one['state']):>14}{1.0:>12.2f}{mb(one['rss']):>12}")
    print(f"{2:<12}{mb(two['state']):>14}{two['state'] / one['state']:>12.2f}{mb(two['rss']):>12}")
    print("\nupdate (seconds per step)")
    print(f"{'world_size':<12}{'update s':>10}{'x one rank':>12}{'in collectives':>16}")
    print(f"{1:<12}{one['update_s']:>10.2f}{1.0:>12.2f}{'-':>16}")
    print(f"{2:<12}{two['update_s']:>10.2f}{two['update_s'] / one['update_s']:>12.2f}{two['collective_share']:>15.0%}")
    print("\nweight sync to one Ray rollout worker (64 MB buckets)")
    print(f"{'world_size':<12}{'sync s':>10}")
    print(f"{1:<12}{sync_one:>10.2f}")
    print(f"{2:<12}{sync_two:>10.2f}")
    print(f"\nLoRA rank {args.lora_rank} (attention and MLP projections) against full fine-tuning, world_size 1")
    print(f"{'':<16}{'trainable':>14}{'model state':>14}{'peak RSS':>12}{'update s':>10}")
    print(f"{'full':<16}{one['trainable']:>14,}{mb(one['state']):>14}{mb(one['rss']):>12}{one['update_s']:>10.2f}")
    print(f"{'LoRA':<16}{lora['trainable']:>14,}{mb(lora['state']):>14}{mb(lora['rss']):>12}{lora['update_s']:>10.2f}")
    ray.shutdown()


if __name__ == "__main__":
    main()

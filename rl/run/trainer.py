"""The training loop: sample tasks, roll out G episodes each, score, compute advantages, update, sync weights, log.

Rollouts run on a worker pool (`rl/rollout/workers.py`): one worker in this process, or
Ray actors. `workers.max_staleness=K` lets rollouts run ahead of the learner: no trained
token was sampled more than K updates before the update that trains on it. Without
partial rollouts the rollouts of steps k+1..k+K run while the learner does step k (K=1:
one-step-off); with them (`workers.partial_rollouts`, rl/run/stream.py) groups start as
the bound admits them and go on across weight syncs. Each token keeps its sampling
logprob and the version that sampled it, so the learner can correct for the lag
(`algo.tis_cap`, `algo.tis_mode`). After each weight sync the engines' logprobs on a
fixed probe batch must match the learner's.

Run directory layout:
    config.yaml            the resolved config
    metrics.jsonl          one line of metrics per step (and per evaluation)
    log.txt                what the run reported: failed episodes with the traceback of the env or reward that
                           raised, restarts
    tb/                    TensorBoard events
    episodes/step_N.jsonl  every episode: turns as text with info, tokens, masks, logprobs, rewards
    base_model/            the tiny model built for this run (when model.path is empty)
    sft/model/             the SFT warm start RL begins from (when sft.steps > 0);
                           sft/sft_metrics.json, sft/sft_checks.json
    reward.png, eval.png   reward (total and per component) and the eval metrics against steps
    timings.json           seconds per stage in the last invocation: model build, SFT, rollout, learner,
                           weight sync, eval
    checkpoints/step_N/    model/ (a Hugging Face directory) and state.pt (optimizer, scheduler,
                           task order, RNG, step, and with max_staleness > 0 the rollouts already
                           made for later steps, those in flight played to their end first); with
                           learner.world_size > 1 the optimizer and model states are in dcp/, one
                           shard file per rank (torch.distributed.checkpoint);
                           `resume=RUN_DIR` continues from the latest, `resume=RUN_DIR@STEP` from
                           an earlier one (the later steps' files move to abandoned/from_step_N/)
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from transformers import AutoTokenizer

from envs.jsonl import read_jsonl
from rewards import build_reward
from rl import logs, nodes
from rl.batch import Batch
from rl.config import Config, stage_at, stage_config, to_dict
from rl.episode import Episode, Item
from rl.learn import algos, credit
from rl.learn.learner import Learner
from rl.rollout.chat import TurnFormatter
from rl.rollout.timing import Rollout
from rl.rollout.workers import Later, LocalPool, RayPool, check_engine_installed, check_probe, start_ray
from rl.run.scoring import (
    env_metrics,
    episode_metrics,
    episode_seed,
    eval_items,
    report_failures,
    reward_episodes,
    staleness_metrics,
)
from rl.run.start import starting_model
from rl.run.stream import Group, GroupStream
from rl.run_dir import abandon_after, load_failed, plan_run, start_over
from rl.view.plots import plot_run

log = logging.getLogger(__name__)


class TaskOrder:
    """Tasks in a fresh seeded shuffle each epoch; its whole state is (epoch, position)."""

    def __init__(self, n_tasks: int, seed: int):
        if n_tasks == 0:
            raise ValueError("the env provided no training tasks")
        self.n, self.seed = n_tasks, seed
        self.epoch, self.pos = 0, 0

    def _order(self) -> list[int]:
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.n).tolist()

    def take(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            order = self._order()
            take = min(k - len(out), self.n - self.pos)
            out += order[self.pos : self.pos + take]
            self.pos += take
            if self.pos == self.n:
                self.epoch, self.pos = self.epoch + 1, 0
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos = state["epoch"], state["pos"]


@dataclass
class Submission:
    """The rollouts of one training step, possibly still running."""

    step: int
    items: list[Item]  # one per episode
    rollout: Any  # .result() -> Rollout (a pool's future)


class Trainer:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.run_dir, checkpoint = plan_run(cfg.run_dir, cfg.resume, cfg.overwrite)
        random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)

        self.spec, self.env_params = cfg.env.resolve()
        self.train_tasks = self.spec.load_tasks(self.env_params, "train")
        self.eval_tasks = self.spec.load_tasks(self.env_params, "eval")
        # the algo and reward of each stage (one stage: the config's own)
        self.stage_cfgs = [stage_config(cfg, k) for k in range(len(cfg.stages))] or [cfg]
        self.reward_fns = [build_reward(c.reward) for c in self.stage_cfgs]
        check_engine_installed(cfg.workers)
        if (
            cfg.overwrite
        ):  # only now that the env's data and the rewards are known to load: a run that fails them writes nothing
            start_over(self.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)

        # The model RL starts from: the given or a freshly built tiny one, after the SFT stage if there is one.
        base, self.timings = starting_model(cfg, self.run_dir)
        policy = checkpoint / "model" if checkpoint else base
        state = None
        if checkpoint:
            try:
                state = torch.load(checkpoint / "state.pt", weights_only=False)
            except Exception as e:  # truncated or damaged: say which file, and which checkpoints there are besides
                raise load_failed(checkpoint / "state.pt", e) from None
        self.stage = stage_at(cfg, state["step"] + 1 if state else 1)  # the stage of the next step runs now
        self.algo, self.reward_fn = self.stage_cfgs[self.stage].algo, self.reward_fns[self.stage]

        if cfg.learner.world_size > 1:
            from rl.learn.sharding import ShardedLearner  # Ray and torch.distributed only when sharded

            start_ray(cfg.workers, learner_cpus=cfg.learner.world_size * cfg.learner.cpus_per_rank)
            self.learner = ShardedLearner(
                policy, cfg.learner, self.algo, cfg.rollout.temperature, ref_path=base, imports=cfg.imports
            )
        else:
            self.learner = Learner(policy, cfg.learner, self.algo, cfg.rollout.temperature, ref_path=base)
        self.tokenizer = AutoTokenizer.from_pretrained(policy)
        version = state["step"] if state else 0  # the updates behind the weights the engines load
        if cfg.workers.ray:
            self.pool = RayPool(cfg.workers, str(policy), cfg.env, cfg.rollout, version)
        else:
            self.pool = LocalPool(cfg.workers, str(policy), cfg.env, cfg.rollout, str(self.learner.device), version)
        self.engine = ", ".join(sorted(set(self.pool.engine_names().result())))  # e.g. "vllm 0.32.0 cpu float32"
        self.placement = {  # which node each process runs on: in the log and in metrics.jsonl's first line
            "rollout_workers": self.pool.nodes().result(),
            "learner_ranks": getattr(self.learner, "nodes", [f"{nodes.node_ip()} (the trainer's process)"])
            if cfg.workers.ray
            else ["the trainer's process"],
        }
        formatter = TurnFormatter(self.tokenizer, cfg.rollout.observation_role)
        self.probe_batch = [formatter.prompt_ids(t.prompt) for t in self.train_tasks[:4]]
        self.task_order = TaskOrder(len(self.train_tasks), cfg.seed)
        self.step = 0
        # set (by Ctrl-C in the CLI) to end `train` after the current step, with a checkpoint
        self.stop_requested = False
        self.pending: deque[Submission] = deque()
        self.stream = None
        if cfg.workers.partial_rollouts:
            total = cfg.steps * cfg.rollout.tasks_per_step
            self.stream = GroupStream(self.pool, cfg.workers.max_staleness, cfg.rollout.tasks_per_step, total)
        self.step_end = time.perf_counter()  # when the last step ended: a step's wall time counts from there
        self.unchecked = None  # the last sync, until its probe is checked: (its call, the probe's, the learner's)
        if state:
            self.learner.load_state(state["learner"], checkpoint)
            self.task_order.load_state_dict(state["task_order"])
            torch.set_rng_state(state["torch_rng"])
            self.step = state["step"]
            for step, items, rolled in state["pending"]:
                self.pending.append(Submission(step, items, Later(lambda rolled=rolled: rolled)))
            if self.stream is not None:
                admitted, groups = state["stream"]
                self.stream.restore(admitted, [Group(*g) for g in groups])
        self._open_logs()
        if checkpoint:
            abandon_after(
                self.run_dir, self.step
            )  # an earlier checkpoint: the later steps' files go aside (said in log.txt)
        lora = (
            f", LoRA rank {cfg.learner.lora_rank} on {', '.join(cfg.learner.lora_targets)}"
            if cfg.learner.lora_rank
            else ""
        )
        if cfg.learner.lora_rank and cfg.learner.lora_modules_to_save:
            lora += f", trained whole: {', '.join(cfg.learner.lora_modules_to_save)}"
        log.info(
            f"learner: {cfg.learner.world_size} rank(s), {self.learner.trainable_params:,} trainable parameters{lora}"
        )
        log.info(
            "placement: rollout workers on %s; learner ranks on %s",
            ", ".join(self.placement["rollout_workers"]),
            ", ".join(self.placement["learner_ranks"]),
        )

    # ------------------------------------------------------------ logging

    def _open_logs(self) -> None:
        from torch.utils.tensorboard import SummaryWriter

        (self.run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(self.cfg), sort_keys=False))
        self.log_file = logs.to_file(self.run_dir / "log.txt")
        metrics_path = self.run_dir / "metrics.jsonl"
        if metrics_path.exists():  # on resume, forget what came after the checkpoint
            kept = [row for row in read_jsonl(metrics_path) if row["step"] <= self.step]
            metrics_path.write_text("".join(json.dumps(row) + "\n" for row in kept))
        self.metrics_file = metrics_path.open("a")
        self.tb = SummaryWriter(self.run_dir / "tb", purge_step=self.step + 1)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        row = {"step": step, "engine": self.engine, **metrics}
        if self.placement is not None:  # the first line this process writes
            row["placement"], self.placement = self.placement, None
        self.metrics_file.write(json.dumps(row) + "\n")
        self.metrics_file.flush()
        for k, v in metrics.items():
            self.tb.add_scalar(k, v, step)

    def _write_episodes(self, step: int, episodes: list[Episode], rows: dict[int, int], batch: Batch | None) -> None:
        """One line per episode; "advantage" is the mean over its policy tokens, "token_advantages" one per token,
        "learner_logprobs" the learner's logprob of each token before its update (the first mini-batch's episodes).
        `rows`: the batch row of each episode that trained (failed ones did not)."""
        out = self.run_dir / "episodes" / f"step_{step:06d}.jsonl"
        out.parent.mkdir(exist_ok=True)
        with out.open("w") as f:
            for i, ep in enumerate(episodes):
                adv = batch.row(batch.advantages, rows[i]) if i in rows else None
                learner = batch.row(batch.learner_logprobs, rows[i]) if i in rows else []
                mean = sum(adv) / max(sum(ep.loss_mask), 1) if adv is not None else None
                learner = [] if learner and math.isnan(learner[0]) else learner  # NaN: not in the first mini-batch
                line = {
                    "step": step,
                    **ep.to_dict(),
                    "learner_logprobs": learner,
                    "advantage": mean,
                    "token_advantages": adv,
                }
                f.write(json.dumps(line) + "\n")

    # ------------------------------------------------------------ one step

    def submit(self, step: int) -> Submission:
        """Start the rollouts of `step` on the pool; they run behind whatever the pool is doing."""
        G = self.cfg.rollout.group_size
        tasks = [self.train_tasks[i] for i in self.task_order.take(self.cfg.rollout.tasks_per_step)]
        items = [
            Item(task, g, episode_seed(self.cfg.seed, step, g * G + j))
            for g, task in enumerate(tasks)
            for j in range(G)
        ]
        return Submission(step, items, self.pool.rollout(items))

    def group_items(self, n: int) -> list[Item]:
        """The episodes of the stream's n-th group: the task and seeds of `submit`'s (n % N)-th group of step
        n // N + 1."""
        G, N = self.cfg.rollout.group_size, self.cfg.rollout.tasks_per_step
        step, g = n // N + 1, n % N
        task = self.train_tasks[self.task_order.take(1)[0]]
        return [Item(task, g, episode_seed(self.cfg.seed, step, g * G + j)) for j in range(G)]

    def next_rollout(self) -> tuple[int, Rollout, dict[str, float]]:
        """The rollouts the next step trains on: (its step, them, metrics of where they came from). Starts
        the rollouts the staleness bound allows beside them."""
        cfg = self.cfg
        if self.stream is None:
            # Keep the rollouts of the next `max_staleness` steps running while the learner works.
            next_step = self.pending[-1].step + 1 if self.pending else self.step + 1
            while next_step <= cfg.steps and len(self.pending) <= cfg.workers.max_staleness:
                self.pending.append(self.submit(next_step))
                next_step += 1
            sub = self.pending.popleft()
            rolled = sub.rollout.result()
            return sub.step, rolled, {"time/rollout_idle_share": self.rollout_idle(rolled.times.worker_s)}
        self.stream.admit(self.step, self.group_items)
        self.stream.collect()
        ready, playing = self.stream.counts()
        groups = self.stream.take(self.step + 1)
        episodes = []
        for i, group in enumerate(groups):  # group ids: the GRPO groups of this batch
            for ep in group.rollout.episodes:
                ep.group = i
                episodes.append(ep)
        times = self.pool.times()  # the workers' since the last step
        times.episodes, times.last_episode_s = len(episodes), time.perf_counter() - self.step_end
        metrics = {
            "queue/ready_groups": float(ready),
            "queue/playing_groups": float(playing),
            "time/rollout_idle_share": self.rollout_idle(times.worker_s),
        }
        return self.step + 1, Rollout(episodes, times), metrics

    def rollout_idle(self, busy_s: float) -> float:
        """The share of the time since the last step ended that the workers had no episode to play."""
        workers = self.cfg.workers.num_workers if self.cfg.workers.ray else 1
        return max(0.0, 1.0 - busy_s / max(workers * (time.perf_counter() - self.step_end), 1e-9))

    def enter_stage(self, k: int) -> None:
        """Run stage k's algo and reward from now on (`stages`); the learner keeps its weights and optimizer."""
        if k == self.stage:
            return
        self.stage, self.algo, self.reward_fn = k, self.stage_cfgs[k].algo, self.reward_fns[k]
        self.learner.set_algo(self.algo)
        log.info("stage %d (%s) from step %d", k + 1, self.cfg.stages[k].name or f"stage_{k + 1}", self.step + 1)

    def train_step(self) -> dict[str, float]:
        cfg = self.cfg
        self.enter_stage(stage_at(cfg, self.step + 1))
        t0 = time.perf_counter()
        step, rolled, metrics = self.next_rollout()
        waited = time.perf_counter() - t0
        episodes = rolled.episodes
        reward_episodes(episodes, self.reward_fn)
        t1 = time.perf_counter()

        trained = episodes
        if self.algo.dynamic_sampling:  # before the engines sleep: it may sample more groups
            trained = self.dynamic_sampling(step, episodes, metrics)
        sleeping = self.cfg.workers.vllm_sleep_mode
        if sleeping:  # give the GPU memory of the engine to the learner while it updates
            self.pool.sleep().result()
        valid = [i for i, ep in enumerate(trained) if not ep.failed]
        batch = None
        if valid:
            batch = self.make_batch([trained[i] for i in valid])
            metrics.update({f"learner/{k}": v for k, v in self.learner.update(batch).items()})
        t2 = time.perf_counter()
        metrics.update(self.sync(version=step))
        if sleeping:
            self.pool.wake_up().result()
        t3 = time.perf_counter()

        self.step = step
        metrics.update(episode_metrics(episodes))
        # Acc@t1, EM, recovery ... of the step's own samples
        metrics.update({f"train/{k}": v for k, v in env_metrics(self.spec, episodes).items()})
        metrics.update(staleness_metrics(trained, step))
        policy_tokens = sum(sum(ep.loss_mask) for ep in episodes)
        if cfg.stages:
            metrics["stage"] = float(self.stage + 1)
        metrics.update(
            {
                "workers/restarts": float(self.pool.restarts),
                "time/rollout_wait": t1 - t0,
                "time/update": t2 - t1,
                "time/sync": t3 - t2,
                "time/trainer_idle_share": waited / max(t3 - self.step_end, 1e-9),
                "throughput/policy_tokens_per_s": policy_tokens / max(t3 - t0, 1e-9),
                **rolled.times.metrics(),  # where the rollout's own time went: engine, envs, the last episode
            }
        )
        self.step_end = t3
        report_failures(episodes, f"step {step}")
        if cfg.log_episodes:
            self._write_episodes(step, trained, dict(zip(valid, range(len(valid)))), batch)
        return metrics

    def make_batch(self, episodes: list[Episode]) -> Batch:
        """The scored episodes as the learner takes them
        (with the judge spans when `algo.judge_advantage` credits them apart)."""
        algo = self.algo
        judge = (
            [credit.judge_mask(ep, self.tokenizer, algo.judge_tag) for ep in episodes] if algo.judge_advantage else None
        )
        return Batch.from_episodes(episodes, judge)

    def dynamic_sampling(self, step: int, episodes: list[Episode], metrics: dict[str, float]) -> list[Episode]:
        """DAPO: drop groups whose rewards are all equal (no signal) and sample replacement groups, at most
        `algo.max_refill_rounds` extra rounds, until `rollout.tasks_per_step` groups are informative.

        Replacement seeds come from (step, index past this step's first batch), so a run is reproducible.
        Returns the episodes to train on: the informative groups, or all of them when none was found.
        """
        G, want = self.cfg.rollout.group_size, self.cfg.rollout.tasks_per_step
        kept: list[Episode] = []
        sampled_now, sampled = episodes, 0
        for round_ in range(self.algo.max_refill_rounds + 1):
            if round_:
                tasks = [self.train_tasks[i] for i in self.task_order.take(want - len(kept) // G)]
                base = round_ * want  # group ids and seed indices no earlier round of this step used
                items = [
                    Item(task, base + g, episode_seed(self.cfg.seed, step, (base + g) * G + j))
                    for g, task in enumerate(tasks)
                    for j in range(G)
                ]
                sampled_now = self.pool.rollout(items).result().episodes
                reward_episodes(sampled_now, self.reward_fn)
            ok = [ep for ep in sampled_now if not ep.failed]
            sampled += len({ep.group for ep in sampled_now})
            if ok:
                flat = algos.zero_variance_groups(
                    torch.tensor([ep.reward.total for ep in ok]), torch.tensor([ep.group for ep in ok])
                )
                informative = {ep.group for ep, z in zip(ok, flat.tolist()) if not z}
                for g in sorted(informative)[: want - len(kept) // G]:
                    kept += [ep for ep in sampled_now if ep.group == g]
            if len(kept) // G >= want:
                break
        metrics["dapo/sampled_groups"] = float(sampled)
        metrics["dapo/kept_groups"] = float(len({ep.group for ep in kept}))
        return kept or episodes

    def sync(self, version: int) -> dict[str, float]:
        """Send the learner's weights (`version`: its updates so far) to every engine, then check them on the
        probe batch. With partial rollouts the trainer does not wait for the workers to load them: the check
        runs before the next sync or evaluation, and its metric goes with the step that ran it."""
        checked = self.check_sync()
        if self.cfg.workers.weight_transport == "broadcast":
            sent = self.pool.broadcast(self.learner, version)
        else:
            sent = self.pool.sync(self.learner.weight_buckets(self.cfg.workers.bucket_mb), version)
        self.unchecked = (
            sent,
            self.pool.probe(self.probe_batch, version),
            self.learner.probe_logprobs(self.probe_batch),
        )
        return checked if self.stream is not None else self.check_sync()

    def check_sync(self) -> dict[str, float]:
        """The check of the last sync, if not yet made: {"sync/probe_max_abs": the largest |engine - learner|}."""
        if self.unchecked is None:
            return {}
        (sent, probe, expected), self.unchecked = self.unchecked, None
        sent.result()
        return {"sync/probe_max_abs": check_probe(probe.result(), expected, self.cfg.workers.probe_tolerance)}

    # ------------------------------------------------------------ evaluation and checkpoints

    def evaluate(self) -> dict[str, float]:
        checked = self.check_sync()  # the engines evaluate the learner's latest weights
        episodes = self.pool.rollout(eval_items(self.eval_tasks, self.cfg.seed), greedy=True).result().episodes
        reward_episodes(episodes, self.reward_fn)
        report_failures(episodes, f"evaluation at step {self.step}")
        metrics = {**episode_metrics(episodes), **env_metrics(self.spec, episodes)}
        return {**checked, **{f"eval/{k}": v for k, v in metrics.items()}}

    def save(self) -> Path:
        final = self.run_dir / "checkpoints" / f"step_{self.step:06d}"
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        self.learner.save_model(tmp / "model")
        self.tokenizer.save_pretrained(tmp / "model")
        state = {
            "step": self.step,
            "learner": self.learner.save_state(tmp),
            "task_order": self.task_order.state_dict(),
            "torch_rng": torch.get_rng_state(),
            # Rollouts already made for later steps (max_staleness > 0), so a resumed run trains on the same ones.
            "pending": [(p.step, p.items, p.rollout.result()) for p in self.pending],
        }
        if self.stream is not None:  # the groups in flight are played to their end: nothing is lost or played twice
            groups = self.stream.drain()
            queued = [(g.number, g.items, g.version, g.rollout, g.finished) for g in groups]
            state["stream"] = (self.stream.admitted, queued)
        torch.save(state, tmp / "state.pt")
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)  # a checkpoint directory is complete or absent
        return final

    def train(self, progress: bool = True) -> dict[str, float]:
        from tqdm import tqdm

        cfg = self.cfg
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not progress, unit="step")
        last: dict[str, float] = {}
        self.step_end = time.perf_counter()
        while self.step < cfg.steps and not self.stop_requested:
            last = self.train_step()
            for stage, key in (("rollout", "time/rollout_wait"), ("learner", "time/update"), ("sync", "time/sync")):
                self.timings[stage] = self.timings.get(stage, 0.0) + last[key]
            if cfg.eval_every and self.step % cfg.eval_every == 0:
                last.update(self._timed_evaluate())
            self.log(self.step, last)
            if (cfg.save_every and self.step % cfg.save_every == 0) or self.step == cfg.steps or self.stop_requested:
                self.save()
                plot_run(self.run_dir)
            bar.update(1)
            bar.set_postfix(
                reward=f"{last.get('reward/mean', float('nan')):.3f}",
                tok_s=f"{last['throughput/policy_tokens_per_s']:.0f}",
            )
        bar.close()
        if self.stop_requested:
            return last  # stopped early: the final evaluation belongs to the end of the run
        if not cfg.eval_every or self.step % cfg.eval_every:
            final_eval = self._timed_evaluate()
            self.log(self.step, final_eval)
            last.update(final_eval)
        plot_run(self.run_dir)
        (self.run_dir / "timings.json").write_text(json.dumps(self.timings, indent=1))
        return last

    def _timed_evaluate(self) -> dict[str, float]:
        t0 = time.perf_counter()
        metrics = self.evaluate()
        self.timings["eval"] = self.timings.get("eval", 0.0) + time.perf_counter() - t0
        return metrics

    def close(self) -> None:
        self.pool.close()
        self.learner.close()
        self.metrics_file.close()
        self.tb.close()
        logs.detach(self.log_file)

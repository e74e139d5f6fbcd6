"""The agent loop: episodes on their own, env calls concurrent and bounded, a seed fixing the episodes."""

import asyncio
import copy
import random
import threading
import time

import pytest

from envs.base import StepResult, Task
from envs.code.checks import parse_check
from envs.code.sandbox import Sandbox, SandboxConfig, evaluate
from envs.lookup import LookupEnv, LookupParams, load_tasks
from envs.search.bm25 import BM25Index
from envs.search.env import SearchEnv
from envs.search.retrieval import Batcher, RetrievalClient, TokenBucket
from envs.search.server import RetrievalServer
from envs.search.world import WorldConfig, write_world
from rl.config import RolloutConfig
from rl.rollout.chat import TurnFormatter
from rl.rollout.engine import HFEngine
from rl.rollout.loop import rollout
from tests.scripted_engine import ScriptedEngine


def engine_for(tiny):
    model, tok = tiny
    return HFEngine(copy.deepcopy(model), tok), TurnFormatter(tok)


class JitteryLookup(LookupEnv):
    """The lookup env, answering each step after a random pause: episodes finish their turns in a random order."""

    def step(self, action):
        time.sleep(random.uniform(0, 0.02))
        return super().step(action)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_seed_fixes_every_bit_whatever_order_episodes_finish_in(tiny, temperature):
    params = LookupParams(max_turns=4)
    tasks = load_tasks(params, "train")[:4]
    items = [(t, g, 7 * g + k) for g, t in enumerate(tasks) for k in range(3)]
    cfg = RolloutConfig(max_turn_tokens=6, max_turns=4, temperature=temperature)
    runs = []
    for _ in range(3):
        engine, formatter = engine_for(tiny)
        runs.append(rollout(engine, formatter, lambda: JitteryLookup(params), items, cfg).episodes)
    for a, b, c in zip(*runs):
        assert a.token_ids == b.token_ids == c.token_ids and a.logprobs == b.logprobs == c.logprobs
        assert [t.action for t in a.trajectory.turns] == [t.action for t in c.trajectory.turns]
    assert any(len(ep.trajectory.turns) > 1 for ep in runs[0])


@pytest.mark.parametrize("schedule", ["reproducible", "overlap", "lockstep"])
def test_every_schedule_plays_the_same_greedy_episodes(tiny, schedule):
    # Greedy tokens: the schedules differ only in which requests share an engine step.
    params = LookupParams(max_turns=3)
    items = [(t, g, g) for g, t in enumerate(load_tasks(params, "train")[:6])]
    episodes = {}
    for name in ("lockstep", schedule):
        engine, formatter = engine_for(tiny)
        cfg = RolloutConfig(max_turn_tokens=6, max_turns=3, temperature=0.0, schedule=name)
        episodes[name] = rollout(engine, formatter, lambda: JitteryLookup(params), items, cfg).episodes
    for a, b in zip(episodes["lockstep"], episodes[schedule]):
        assert a.token_ids == b.token_ids and a.logprobs == pytest.approx(b.logprobs, abs=1e-5)


class HangingEnv:
    """Three quick turns; the episode of task "hang" hangs in its second step (a tool that never answers)."""

    stop_strings = ["."]

    def reset(self, task):
        self.task, self.t = task, 0
        return task.prompt

    def step(self, action):
        self.t += 1
        if self.task.id == "hang" and self.t == 2:
            threading.Event().wait()  # forever: only the budget ends it
        return StepResult("go on", self.t >= 3, {"score": 1.0})


@pytest.mark.parametrize("schedule", ["reproducible", "overlap"])
@pytest.mark.parametrize("budget", ["env_timeout_s", "episode_env_s"])
def test_a_hung_env_step_fails_only_its_episode(tiny, schedule, budget):
    engine, formatter = engine_for(tiny)
    tasks = [Task("ok1", "what is kalu"), Task("hang", "what is kalu"), Task("ok2", "what is sone")]
    limits = {"env_timeout_s": 0.0, "episode_env_s": 0.0} | {budget: 1.0}
    cfg = RolloutConfig(max_turn_tokens=4, max_turns=3, schedule=schedule, **limits)
    ok1, hung, ok2 = rollout(engine, formatter, HangingEnv, [(t, i, i) for i, t in enumerate(tasks)], cfg).episodes
    for ep in (ok1, ok2):
        assert ep.finish == "done" and len(ep.trajectory.turns) == 3
    assert hung.failed and ("no answer within 1s" in hung.error or "ran past 1s" in hung.error)
    assert len(hung.trajectory.turns) == 2  # what it collected before stays, and the action that hung
    assert engine.in_flight() == 0


def test_concurrent_search_episodes_share_retrieval_requests(tiny, tmp_path):
    """N episodes searching at once reach a real retrieval server in fewer than N requests, every query answered."""
    out = write_world(WorldConfig(seed=0, people=20, questions=20), tmp_path / "world")
    server = RetrievalServer(BM25Index(out / "corpus.jsonl", tmp_path / "cache"), port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    n = 8
    try:
        client = RetrievalClient(f"http://127.0.0.1:{server.server_address[1]}")
        # A wide window that closes as soon as all n searches are in, however slowly their threads start.
        retriever = Batcher(client, wait_s=30.0, max_queries=n)
        tasks = [Task(f"q{i}", f"question {i}", {"answers": ["x"], "gold_doc_ids": []}) for i in range(n)]
        policy = ScriptedEngine(tiny[1], ["<search>who wrote the novel</search>", "<answer>x</answer>"])
        cfg = RolloutConfig(max_turns=2, max_turn_tokens=64, max_total_tokens=4096)
        items = [(t, i, i) for i, t in enumerate(tasks)]
        episodes = rollout(policy, TurnFormatter(tiny[1]), lambda: SearchEnv(retriever), items, cfg).episodes
    finally:
        server.shutdown()
        server.server_close()
    assert all(ep.finish == "done" for ep in episodes)
    assert all("Doc 1" in ep.trajectory.turns[0].observation for ep in episodes)
    assert server.queries == n and server.requests < n


def test_the_live_sandbox_cap_holds_for_concurrent_callers():
    """Six callers at once on a pool of two jails: never more than two programs alive, counted from their clocks."""
    program = (
        "import time\ndef f():\n    print(time.monotonic())\n    time.sleep(0.3)\n"
        "    print(time.monotonic())\n    return 1\n"
    )
    with Sandbox(SandboxConfig(timeout_s=5, memory_mb=256, workers=2)) as sandbox:
        verdicts = [None] * 6

        def call(i):
            verdicts[i] = evaluate(sandbox, [(program, "", [parse_check("assert f() == 1")], "")])[0][0]

        threads = [threading.Thread(target=call, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert all(v.status == "passed" for v in verdicts)
    spans = [tuple(map(float, v.output.split())) for v in verdicts]
    most_alive = max(sum(start <= at < end for start, end in spans) for at, _ in spans)
    assert 1 <= most_alive <= 2 and sandbox.most_busy <= 2


def test_the_rate_limit_holds():
    """A token bucket lets through at most burst + rate * t calls in t seconds, whatever asks (counted on a clock)."""
    now = [0.0]
    bucket = TokenBucket(rate=10.0, burst=5.0, clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))
    for _ in range(105):
        bucket.take()
    assert now[0] == pytest.approx(10.0)  # 5 at once, then 100 at 10 per second


def test_the_client_rate_limit_holds_against_a_real_server(tmp_path):
    out = write_world(WorldConfig(seed=0, people=20, questions=20), tmp_path / "world")
    server = RetrievalServer(BM25Index(out / "corpus.jsonl", tmp_path / "cache"), port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = RetrievalClient(f"http://127.0.0.1:{server.server_address[1]}", rate_per_s=20.0)
        start = time.monotonic()
        threads = [threading.Thread(target=client.search, args=([f"q{i}"],)) for i in range(30)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - start
    finally:
        server.shutdown()
        server.server_close()
    assert server.requests == 30
    assert server.requests <= 20.0 + 20.0 * elapsed  # burst + rate * time: a slower machine only loosens it
    assert elapsed >= (30 - 20) / 20.0 * 0.99  # the ten past the burst waited for their tokens


class AsyncEnv:
    """An env whose step awaits (a remote tool): three turns; task "hang" never answers its second step."""

    stop_strings = ["."]

    async def reset(self, task):
        self.task, self.t = task, 0
        return task.prompt

    async def step(self, action):
        self.t += 1
        if self.task.id == "hang" and self.t == 2:
            await asyncio.Event().wait()
        await asyncio.sleep(0.01)
        return StepResult(f"turn {self.t}", self.t >= 3, {"score": 1.0})


def test_an_async_env_is_awaited_and_cut_off_by_its_timeout(tiny):
    engine, formatter = engine_for(tiny)
    tasks = [Task("ok", "what is kalu"), Task("hang", "what is kalu")]
    cfg = RolloutConfig(max_turn_tokens=4, max_turns=3, env_timeout_s=1.0)
    ok, hung = rollout(engine, formatter, AsyncEnv, [(t, i, i) for i, t in enumerate(tasks)], cfg).episodes
    assert ok.finish == "done" and [t.observation for t in ok.trajectory.turns] == ["turn 1", "turn 2", "turn 3"]
    assert hung.failed and "no answer within 1s" in hung.error and len(hung.trajectory.turns) == 2

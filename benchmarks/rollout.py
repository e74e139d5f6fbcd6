"""The agent loop against lock-step: episodes per second and the engine's busy share, same requests, same engine.

Run from the repository root:

    python benchmarks/rollout.py                # HF engine on the tiny model, vLLM's CPU engine on ~100M parameters
    python benchmarks/rollout.py --engines hf   # the HF engine only

Each workload runs one batch of episodes three ways on one engine, in one process:
  lock-step     schedule=lockstep, one env call at a time, one retrieval request per search: the classic loop
  reproducible  the agent loop as it runs by default (a seed fixes every bit)
  overlap       the agent loop with the engine never waiting for envs

Workloads (a random model's text is neither Python nor a search, so each env turns it into one):
  (a) code      the code world with the real sandbox: every action runs, as a comment after the problem's
                reference program, through the problem's tests (3 turns, the sandbox's default jails)
  (b) search    the search world against a retrieval server on loopback that adds 20 ms per request (a
                dense retriever's latency): every action is searched for (4 turns)
  (c) long tail an instant env; at each turn one episode in ten generates eight times more tokens (5 turns)

Columns: episodes/s over the batch, the share of the rollout's wall time the engine spent in its steps, and the
share of prompt tokens the engine found in its cache (an episode's earlier turns; vLLM: also shared prompts).
The last line is the speedup of the default agent loop (reproducible) over lock-step on (b) and (c), the
smaller of the two, over the engines run.
"""

import argparse
import dataclasses
import sys
import tempfile
import threading
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a checkout without `pip install -e .`
from envs.base import StepResult, Task
from envs.code import CodeParams, problems, sandbox_config, to_task
from envs.code.env import CodeEnv
from envs.search.bm25 import BM25Index
from envs.search.env import SearchEnv
from envs.search.retrieval import Batcher, RetrievalClient
from envs.search.server import RetrievalServer
from envs.search.world import WorldConfig, write_world
from rl.config import RolloutConfig, TinyModelConfig
from rl.rollout.chat import TurnFormatter
from rl.rollout.engine import HFEngine
from rl.rollout.loop import rollout
from rl.run.tiny import build_tiny_model

hf_logging.disable_progress_bar()
LOADS = ("(a) code", "(b) search", "(c) long tail")
SCHEDULES = {
    "lock-step": {"schedule": "lockstep", "env_workers": 1},
    "reproducible": {"schedule": "reproducible"},
    "overlap": {"schedule": "overlap"},
}


class CodeTurns(CodeEnv):
    """Every action runs in the sandbox: the problem's reference program with the action as a comment after it."""

    stop_strings: list[str] = []

    def reset(self, task):
        self.program = task.metadata["program"]
        return super().reset(task)

    def step(self, action):
        comment = "\n".join("# " + line for line in action.splitlines())
        return super().step(f"```python\n{self.program}\n{comment}\n```")


class SearchTurns(SearchEnv):
    """Every action is a search for its own text."""

    stop_strings: list[str] = []

    def step(self, action):
        query = " ".join(action.split()[:12]).replace("<", " ") or "query"
        return super().step(f"<search>{query}</search>")


class LongTail:
    """An instant env of `turns` turns; its engine side (`Lengths`) makes the lengths."""

    stop_strings: list[str] = []

    def __init__(self, turns: int):
        self.turns, self.t = turns, 0

    def reset(self, task):
        self.t = 0
        return task.prompt

    def step(self, action):
        self.t += 1
        return StepResult("next", self.t >= self.turns, {})


class Lengths:
    """The engine, with each request's token budget set by the workload: at each turn one episode in ten
    (a different one each turn) may generate `long` tokens, the others `short`."""

    def __init__(self, engine, short: int, long: int):
        self.engine, self.short, self.long = engine, short, long

    def add(self, key, request, params):
        episode, turn = key
        budget = self.long if (episode + turn) % 10 == 0 else self.short
        self.engine.add(key, dataclasses.replace(request, max_new_tokens=budget), params)

    def __getattr__(self, name):
        return getattr(self.engine, name)


def run(engine, formatter, make_env, items, cfg: RolloutConfig) -> tuple[float, float, float, list]:
    rolled = rollout(engine, formatter, make_env, items, cfg)
    failed = [ep.error for ep in rolled.episodes if ep.failed]
    if failed:
        raise RuntimeError(f"{len(failed)} episodes failed, e.g. {failed[0]}")
    t = rolled.times
    hit_rate = t.cached_tokens / max(t.prompt_tokens, 1)
    return t.episodes / t.last_episode_s, t.engine_s / t.worker_s, hit_rate, [ep.token_ids for ep in rolled.episodes]


def workloads(tmp: Path, episodes: int, short: int, long: int):
    """(name, make_env per schedule, items, rollout limits, engine wrapper)."""
    code_params = CodeParams(synthetic_problems=max(episodes, 8), max_turns=3, stop_when_correct=False)
    tasks = [to_task(q) for q in problems(code_params, "train")[:episodes]]
    for task, q in zip(tasks, problems(code_params, "train")):
        task.metadata["program"] = q.reference
    sandbox = sandbox_config(code_params)

    def code_env(_):
        return CodeTurns(3, "tests", False, sandbox, cache_verdicts=False)

    code = ("(a) code", code_env, [(t, i, i) for i, t in enumerate(tasks)], dict(max_turns=3, max_turn_tokens=short))

    world = write_world(WorldConfig(seed=0, people=60, questions=50), tmp / "world")
    server = RetrievalServer(BM25Index(world / "corpus.jsonl", tmp / "cache"), port=0, delay_s=0.020)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    plain, batched = RetrievalClient(url), Batcher(RetrievalClient(url))

    def search_env(schedule):
        return SearchTurns(plain if schedule == "lock-step" else batched, max_searches=8)

    questions = [Task(f"q{i}", f"Question: who is person {i}?", {"answers": ["x"]}) for i in range(episodes)]
    search = (
        "(b) search",
        search_env,
        [(t, i, i) for i, t in enumerate(questions)],
        dict(max_turns=4, max_turn_tokens=short),
    )

    prompts = [Task(f"p{i}", f"tell a story number {i}") for i in range(episodes)]
    tail = (
        "(c) long tail",
        lambda _: LongTail(5),
        [(t, i, i) for i, t in enumerate(prompts)],
        dict(max_turns=5, max_turn_tokens=long),
    )
    return [code, search, tail], server


def bench(name: str, engine, formatter, tmp: Path, episodes: int, short: int, long: int) -> dict:
    loads, server = workloads(tmp, episodes, short, long)
    results = {}
    try:
        for load, make_env, items, limits in loads:
            wrapped = Lengths(engine, short, long) if load.startswith("(c)") else engine
            cfg_base = dict(max_total_tokens=4096, max_obs_tokens=64, env_timeout_s=0, **limits)
            run(wrapped, formatter, lambda: make_env("reproducible"), items[:4], RolloutConfig(**cfg_base))  # warm-up
            tokens = {}
            for schedule, setting in SCHEDULES.items():
                cfg = RolloutConfig(**cfg_base, **setting)
                rate, busy, hits, tokens[schedule] = run(wrapped, formatter, lambda s=schedule: make_env(s), items, cfg)
                results[load, schedule] = (rate, busy)
                print(f"{name:<14} {load:<14} {schedule:<13} {rate:>10.2f} {busy:>12.0%} {hits:>11.0%}", flush=True)
            same = sum(a == b for a, b in zip(tokens["lock-step"], tokens["reproducible"]))
            moved = sum(x != y for a, b in zip(tokens["reproducible"], tokens["overlap"]) for x, y in zip(a, b))
            total = sum(len(a) for a in tokens["reproducible"])
            print(
                f"{'':<14} {load:<14} episodes as lock-step's: {same}/{len(items)}; "
                f"overlap's tokens unlike reproducible's: {moved}/{total}",
                flush=True,
            )
    finally:
        server.shutdown()
        server.server_close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engines", default="hf,vllm", help="comma-separated: hf, vllm")
    parser.add_argument("--episodes", type=int, default=40)
    args = parser.parse_args()
    torch.manual_seed(0)
    speedups = []
    print(f"{'engine':<14} {'workload':<14} {'loop':<13} {'episodes/s':>10} {'engine busy':>12} {'cache hits':>11}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        texts = [f"tell a story number {i} about a search and some code" for i in range(200)]
        for name in args.engines.split(","):
            if name == "hf":
                path = build_tiny_model(tmp / "tiny", texts, TinyModelConfig(), seed=0)
                tok = AutoTokenizer.from_pretrained(path)
                engine = HFEngine(AutoModelForCausalLM.from_pretrained(path).eval(), tok)
                label, short, long = "hf tiny", 16, 128
            else:
                from rl.rollout.vllm_engine import VLLMEngine

                cfg = TinyModelConfig(layers=12, hidden=768, intermediate=3072, heads=12, kv_heads=4, vocab_size=512)
                path = build_tiny_model(tmp / "m100", texts, cfg, seed=0)
                tok = AutoTokenizer.from_pretrained(path)
                engine = VLLMEngine(str(path), tok, kv_cache_memory_bytes=2**30)  # room for every episode's turns
                params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(path).parameters())
                label, short, long = f"vllm {params / 1e6:.0f}M", 8, 64
            results = bench(label, engine, TurnFormatter(tok), tmp / name, args.episodes, short, long)
            ratios = [results[load, "reproducible"][0] / results[load, "lock-step"][0] for load in LOADS]
            print(f"{label}: agent-loop/lock-step {' '.join(f'{r:.2f}' for r in ratios)} on (a) (b) (c)\n", flush=True)
            speedups += ratios[1:]
    print(f"speedup agent-loop/lock-step on (b) and (c), the smaller of the two: {min(speedups):.2f}")


if __name__ == "__main__":
    main()

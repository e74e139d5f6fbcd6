"""Code-correction episodes (CoCoS) on HumanEval, MBPP or small synthetic tasks, run in a sandbox.

    env: {name: code, params: {dataset: mbpp, max_turns: 2}}

Modules: `sandbox` (isolated execution; read its docstring for what it guarantees),
`forkserver` (its worker), `checks` (tests split between sandbox and trusted judge),
`data` (HumanEval and MBPP loaders), `synthetic` (tiny learnable tasks), `env` (the
episode), `demos` (keep and fix pairs for an SFT warm start).
`python -m envs.code evaluate ...` scores any model's programs.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from envs.base import Task
from envs.code import data, demos, synthetic
from envs.code.env import DONE, PROMPTS, CodeEnv, first_prompt, retry_request
from envs.code.metrics import metrics_from_trajectories
from envs.code.sandbox import SandboxConfig
from envs.registry import EnvSpec


@dataclass
class CodeParams:
    #: synthetic, mbpp, mbpp-sanitized, humaneval, or a path to a file in one of their schemas
    dataset: str = "synthetic"
    #: problems for evaluation (same choices); empty = the eval split of `dataset`
    eval_dataset: str = ""
    #: keep only the first N problems of each split (0 = all)
    max_problems: int = 0
    #: synthetic tasks per split
    synthetic_problems: int = 32
    #: seed of the synthetic tasks
    seed: int = 0
    #: keep only synthetic tasks whose number is at most this (0 = all), e.g. SFT demos on small numbers
    synthetic_max_k: int = 0
    #: attempts per episode (CoCoS trains with 2)
    max_turns: int = 2
    #: "cocos": CoCoS's MBPP prompt and rewrite request; "short": the task alone and a one-line request (tiny models)
    prompt: Literal["cocos", "short"] = "cocos"
    #: "none": CoCoS, no execution feedback; "tests": failing asserts and errors shown before each retry
    feedback: Literal["none", "tests"] = "none"
    #: end the episode once every test passes (CoCoS always plays every turn)
    stop_when_correct: bool = False
    #: wall-clock limit per test (CoCoS: 3 s)
    timeout_s: float = 3.0
    #: wall-clock limit of one program's run through all its tests
    program_timeout_s: float = 10.0
    #: memory limit of each sandboxed process (and of a program in all, where a cgroup binds)
    memory_mb: int = 512
    #: processes and threads a program may run at once
    max_processes: int = 8
    #: sandbox worker processes, shared by all envs of the process (0 = one per CPU core)
    workers: int = 0
    #: a program already run on a task's tests reuses its verdicts (deterministic tests); False runs each attempt
    cache_verdicts: bool = True
    #: SFT fix demos also start from a miscopied function name (a NameError: a tiny model's commonest mistake)
    demo_wrong_names: bool = False


def sandbox_config(p: CodeParams) -> SandboxConfig:
    return SandboxConfig(
        timeout_s=p.timeout_s,
        program_timeout_s=p.program_timeout_s,
        memory_mb=p.memory_mb,
        max_processes=p.max_processes,
        workers=p.workers,
    )


def make_env(p: CodeParams) -> CodeEnv:
    return CodeEnv(p.max_turns, p.feedback, p.stop_when_correct, sandbox_config(p), p.prompt, p.cache_verdicts)


@lru_cache(maxsize=8)
def _problems(dataset: str, split: str, synthetic_problems: int, seed: int) -> tuple:
    if dataset == "synthetic":
        both = synthetic.generate(2 * synthetic_problems, seed)  # disjoint train and eval tasks
        return tuple(both[:synthetic_problems] if split == "train" else both[synthetic_problems:])
    # MBPP's published split: train on 601-974, evaluate on 11-510; HumanEval has no split (all 164 both ways).
    return tuple(data.split(data.load_problems(dataset), "train" if split == "train" else "test"))


def problems(p: CodeParams, split: str) -> list[data.Problem]:
    dataset = p.eval_dataset if split == "eval" and p.eval_dataset else p.dataset
    found = list(_problems(dataset, split, p.synthetic_problems, p.seed))
    if dataset == "synthetic" and p.synthetic_max_k:
        found = [
            q for q in found if synthetic.number(q) <= p.synthetic_max_k
        ]  # the split stays the same: a subset of it
    return found[: p.max_problems] if p.max_problems else found


def to_task(q: data.Problem, prompt: str = "cocos") -> Task:
    task_id = q.task_id if "/" in q.task_id else f"{q.source}/{q.task_id}"
    metadata = {"tests": q.tests, "setup": q.setup, "names": q.names}
    if q.helpers:  # the tests call the prompt's helpers: the reference answers them
        metadata |= {"helpers": q.helpers, "reference": q.reference}
    return Task(task_id, first_prompt(q.text, q.tests, prompt), metadata)


def load_tasks(p: CodeParams, split: str) -> list[Task]:
    if p.prompt not in PROMPTS:  # reject it now (the trainer loads tasks first), not in every episode's make_env
        raise ValueError(f"code env: prompt must be one of {PROMPTS}, got {p.prompt!r}")
    return [to_task(q, p.prompt) for q in problems(p, split)]


def sample_text(p: CodeParams) -> list[str]:
    """Prompts, reference programs as answers, and the env's requests: what a tiny tokenizer should know."""
    out = []
    for q in problems(p, "train") + problems(p, "eval"):
        out.append(
            first_prompt(q.text, q.tests, p.prompt)
            + q.reference.strip()
            + "\n"
            + DONE
            + retry_request("", p.prompt)
            + q.reference.strip()
            + "\n"
            + DONE
        )
    out.append(
        retry_request("Running the code above on the tests gave:\n# failed: returned\n# error: NameError", p.prompt)
    )
    return out


def demonstrations(p: CodeParams, n: int, seed: int, keep_share: float, hesitation: float) -> list:
    """Keep and fix pairs on the train problems (envs/code/demos.py). `hesitation` has no separate
    shape here: every keep pair already overrules the env's doubt."""
    problems_and_references = [(to_task(q, p.prompt), q.reference.strip()) for q in problems(p, "train")]
    return demos.demonstrations(
        make_env(p), problems_and_references, p.max_turns, n, seed, keep_share, p.demo_wrong_names
    )


ENV_SPEC = EnvSpec(
    CodeParams,
    make_env,
    load_tasks,
    sample_text,
    demonstrations,
    metrics=metrics_from_trajectories,
    headline=(
        "acc_t1",
        "acc_tT",
        "delta",
        "delta_i_to_c",
        "delta_c_to_i",
        "identical",
        "confidence",
        "critique",
        "reward/mean",
    ),
)

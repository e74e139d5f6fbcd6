"""The code-correction episode (CoCoS): write a program, then check and rewrite it, with or without feedback.

Turn 1: the task, its asserts, then `[BEGIN]` (CoCoS's prompt). The agent writes a
program and ends with `[DONE]` (the stop string). Turns 2..T: the env asks the fixed
question CoCoS (and SCoRe) use, "There might be an error in the code above ... [CORRECT]",
without saying whether the code passed: no execution feedback. The trainer never
re-renders history, so each turn sees the task and all earlier attempts in its context,
the latest one just before the request (for T = 2 this is exactly CoCoS's turn-2 prompt).
With `feedback="tests"` the request is preceded by the failing asserts and errors instead.

Code is taken from the action up to `[DONE]`: the first fenced block if there is one,
else the text after the last `[BEGIN]`/`[CORRECT]` marker. An action with no code or
code that does not parse is a failed attempt (all tests "error", `info["invalid"]`),
never a crash. Every turn's test results go into `info` (JSON, what the rewards read):
score (the fraction passed), n_passed, n_tests, tests (a status per test), messages,
and the extracted code.

A program the policy writes again (a GRPO group's repeated samples, a rewrite that keeps
the first attempt: about half of a tiny model's attempts) is not run again: its verdicts
are kept per process, keyed by the program, the task's tests and the sandbox limits.
Tests are assumed deterministic; `cache_verdicts=False` runs every attempt.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict

from envs.base import StepResult, Task
from envs.code.checks import Check, TestResult, parse_check, syntax_error
from envs.code.sandbox import SandboxConfig, evaluate, shared_sandbox

DONE = "[DONE]"
REQUEST = (
    "There might be an error in the code above because of lack of understanding of the question. "
    "Please correct the error, if any, and rewrite the solution. Only output the final correct Python program!"
)
FEEDBACK_CHARS = 1500  # longest feedback block shown before the request
VERDICTS_KEPT = 100_000  # programs whose verdicts a process keeps (least recently used dropped first)
_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)(?:```|\Z)", re.S | re.I)


SHORT_REQUEST = "There might be an error. Rewrite the solution."  # the same request in few tokens, for tiny models
PROMPTS = ("cocos", "short")


def first_prompt(text: str, tests: list[str], style: str = "cocos") -> str:
    """CoCoS's turn-1 prompt (MBPP format), or for tiny models ("short") only the task."""
    if style == "short":
        return f"Task: {text}\n[BEGIN]\n"
    return (
        f"You are an expert Python programmer, and here is your task: {text} Your code should pass these tests:\n\n"
        + "\n".join(tests)
        + "\n\n[BEGIN]\n"
    )


def retry_request(feedback: str = "", style: str = "cocos") -> str:
    """What the env says after an attempt: the fixed request, preceded by test feedback when there is any."""
    if style == "short":
        return "\n" + (feedback + "\n" if feedback else "") + SHORT_REQUEST + "\n[CORRECT]\n"
    return "\n\n" + (feedback + "\n\n" if feedback else "") + REQUEST + "\n\n[CORRECT]\n"


def extract_code(action: str) -> str:
    """The program in an action: up to [DONE], the first fenced block, else after the last [BEGIN]/[CORRECT]."""
    text = action.split(DONE)[0]
    fenced = _FENCE.search(text)
    if fenced:
        return fenced.group(1).strip()
    for marker in ("[BEGIN]", "[CORRECT]"):
        text = text.split(marker)[-1]
    return text.strip()


def describe_failures(checks: list[Check], results: list[TestResult]) -> str:
    """The failing tests and why, for the feedback variant; cut to FEEDBACK_CHARS."""
    lines = [f"{c.source}\n# {r.status}: {r.message}" for c, r in zip(checks, results) if r.status != "passed"]
    text = "Running the code above on the tests gave:\n" + "\n".join(lines)
    return text if len(text) <= FEEDBACK_CHARS else text[: FEEDBACK_CHARS - 4] + " ..."


_verdicts: OrderedDict[tuple, list[TestResult]] = OrderedDict()
_verdicts_lock = threading.Lock()  # envs of one process step in several threads


def run_tests(
    sandbox_cfg: SandboxConfig, code: str, setup: str, checks: list[Check], reference: str, key: tuple | None
) -> list[TestResult]:
    """The verdict of each check on `code`; with a `key` (the task's tests),
    a program already run on them is not run again."""
    if key is not None:
        key = (sandbox_cfg, code, setup, key)
        with _verdicts_lock:
            if key in _verdicts:
                _verdicts.move_to_end(key)
                return _verdicts[key]
    results = evaluate(shared_sandbox(sandbox_cfg), [(code, setup, checks, reference)])[0]
    if key is not None:
        with _verdicts_lock:
            _verdicts[key] = results
            if len(_verdicts) > VERDICTS_KEPT:
                _verdicts.popitem(last=False)
    return results


class CodeEnv:
    stop_strings = [DONE]

    def __init__(
        self,
        max_turns: int,
        feedback: str,
        stop_when_correct: bool,
        sandbox_cfg: SandboxConfig,
        prompt: str = "cocos",
        cache_verdicts: bool = True,
    ):
        if feedback not in ("none", "tests"):
            raise ValueError(f"code env: feedback must be 'none' or 'tests', got {feedback!r}")
        if prompt not in PROMPTS:
            raise ValueError(f"code env: prompt must be one of {PROMPTS}, got {prompt!r}")
        self.max_turns, self.feedback, self.stop_when_correct, self.prompt = (
            max_turns,
            feedback,
            stop_when_correct,
            prompt,
        )
        self.sandbox_cfg = sandbox_cfg  # the pool itself is shared and started on first use
        self.cache_verdicts = cache_verdicts
        self.turn = 0

    def reset(self, task: Task) -> str:
        m = task.metadata
        shadowed, helpers = frozenset(m.get("names", [])), frozenset(m.get("helpers", []))
        self.checks = [parse_check(t, shadowed, helpers) for t in m["tests"]]
        self.reference = m.get("reference", "")
        self.tests_key = (tuple(m["tests"]), shadowed) if self.cache_verdicts else None
        self.setup = m.get("setup", "")
        self.turn = 0
        return task.prompt

    def step(self, action: str) -> StepResult:
        self.turn += 1
        code = extract_code(action)
        malformed = syntax_error(code) if code else "no code in the answer"
        if malformed:  # a failed attempt, not run at all
            results = [TestResult("error", malformed) for _ in self.checks]
        else:
            results = run_tests(self.sandbox_cfg, code, self.setup, self.checks, self.reference, self.tests_key)
        n_passed = sum(r.status == "passed" for r in results)
        info = {
            "score": n_passed / len(results),
            "n_passed": n_passed,
            "n_tests": len(results),
            "tests": [r.status for r in results],
            "messages": [r.message for r in results],
            "code": code,
            "invalid": bool(malformed),
        }
        done = self.turn >= self.max_turns or (self.stop_when_correct and n_passed == len(results))
        if done:
            return StepResult("", True, info)
        feedback = (
            describe_failures(self.checks, results) if self.feedback == "tests" and n_passed < len(results) else ""
        )
        return StepResult(retry_request(feedback, self.prompt), False, info)

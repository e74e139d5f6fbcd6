"""Small function-writing tasks with asserts, seeded: what a tiny model can learn (tests, the demo).

Each task is one template (arithmetic, list or string) with a parameter drawn from the
seed, e.g. "Write a function add_7(x) that returns x plus 7." with three asserts on
seeded inputs, and a one-line reference solution. The expected values are computed by
the template's own Python function, never by running generated code.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Callable

from envs.code.data import Problem, defined_names


@dataclass(frozen=True)
class Template:
    name: str  # function name, with {k} for the parameter
    text: str  # the task in words
    body: str  # the reference function's return expression
    arg: str  # "int", "list" or "str": what inputs the asserts use
    fn: Callable  # (input, k) -> expected value
    ks: range = range(2, 10)  # parameters it takes: wide where any k makes a sensible task, else single digits


TEMPLATES = [
    Template("add_{k}", "returns x plus {k}", "x + {k}", "int", lambda x, k: x + k, range(2, 100)),
    Template("sub_{k}", "returns x minus {k}", "x - {k}", "int", lambda x, k: x - k, range(2, 100)),
    Template("times_{k}", "returns x times {k}", "x * {k}", "int", lambda x, k: x * k, range(2, 100)),
    Template(
        "mod_{k}", "returns the remainder of x divided by {k}", "x % {k}", "int", lambda x, k: x % k, range(2, 21)
    ),
    Template(
        "count_{k}", "returns how many times {k} appears in the list x", "x.count({k})", "list", lambda x, k: x.count(k)
    ),
    Template(
        "above_{k}",
        "returns the items of the list x that are greater than {k}",
        "[v for v in x if v > {k}]",
        "list",
        lambda x, k: [v for v in x if v > k],
    ),
    Template(
        "plus_{k}_all",
        "returns the list x with {k} added to every item",
        "[v + {k} for v in x]",
        "list",
        lambda x, k: [v + k for v in x],
        range(2, 100),
    ),
    Template("first_{k}", "returns the first {k} items of the list x", "x[:{k}]", "list", lambda x, k: x[:k]),
    Template("repeat_{k}", "returns the string x repeated {k} times", "x * {k}", "str", lambda x, k: x * k),
    Template("tail_{k}", "returns the last {k} characters of the string x", "x[-{k}:]", "str", lambda x, k: x[-k:]),
    Template("drop_{k}", "returns the string x without its first {k} characters", "x[{k}:]", "str", lambda x, k: x[k:]),
    Template("pad_{k}", "returns the string x followed by {k} dots", "x + '.' * {k}", "str", lambda x, k: x + "." * k),
]
WORDS = ["cat", "dog", "sun", "tree", "blue", "code", "star", "fish", "moon", "rain"]


def _input(kind: str, rng: random.Random):
    if kind == "int":
        return rng.randint(0, 20)
    if kind == "list":
        return [rng.randint(0, 9) for _ in range(rng.randint(2, 5))]
    return rng.choice(WORDS)


def make_problem(t: Template, k: int, rng: random.Random) -> Problem:
    name = t.name.format(k=k)
    reference = f"def {name}(x):\n    return {t.body.format(k=k)}\n"
    inputs: list = []
    while len(inputs) < 3:  # three distinct inputs
        x = _input(t.arg, rng)
        if x not in inputs:
            inputs.append(x)
    tests = [f"assert {name}({x!r}) == {t.fn(x, k)!r}" for x in inputs]
    text = f"Write a function {name}(x) that {t.text.format(k=k)}."
    return Problem(f"synthetic/{name}", text, tests, "", reference, name, "synthetic", defined_names(reference))


def number(problem: Problem) -> int:
    """The parameter k of a synthetic task: every template's name carries it ("add_7", "plus_7_all")."""
    return int(re.search(r"_(\d+)", problem.entry_point).group(1))


def generate(n: int, seed: int) -> list[Problem]:
    """`n` distinct tasks (at most the number of (template, k) pairs: 467), the same for the same seed."""
    rng = random.Random(seed)
    pairs = [(t, k) for t in TEMPLATES for k in t.ks]
    if n > len(pairs):
        raise ValueError(f"synthetic: at most {len(pairs)} distinct tasks, asked for {n}")
    return [make_problem(t, k, rng) for t, k in rng.sample(pairs, n)]

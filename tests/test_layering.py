"""envs/ knows nothing of rl/ or rewards/; rewards/ nothing of rl/; the core never imports vLLM at module level."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(package: str) -> set[str]:
    found = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize(
    "package, forbidden", [("envs", {"rl", "rewards", "torch", "transformers"}), ("rewards", {"rl"})]
)
def test_layers_do_not_import_upwards(package, forbidden):
    assert not imported_modules(package) & forbidden


def test_no_module_level_vllm_import():
    for package in ("envs", "rewards", "rl"):
        for path in (ROOT / package).rglob("*.py"):
            tree = ast.parse(path.read_text())
            top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
            names = {a.name for n in top for a in n.names} | {n.module for n in top if isinstance(n, ast.ImportFrom)}
            assert not any(str(x).startswith("vllm") for x in names), path


def module_imports(package: str) -> dict[str, set[str]]:
    """Each module of `package` -> the modules of `package` it imports, at module level or inside functions."""
    graph = {}
    for path in (ROOT / package).rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from rl.run import sft` imports rl.run.sft; `from rl.config import Config` imports rl.config
                found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        graph[name] = {m for m in found if m != name and (m == package or m.startswith(package + "."))}
    return {name: {m for m in deps if m in graph} for name, deps in graph.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of `graph`: every strongly connected component with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_cycle_through_a_function_level_import():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("package", ["rl", "rewards", "envs"])
def test_no_import_cycles(package):
    graph = module_imports(package)
    assert len(graph) > 5  # the parse found the package's modules
    assert cycles(graph) == []


def test_the_config_is_a_leaf_that_loads_without_torch():
    """Checking a config costs no torch or transformers import, and no module of rl/ but the config itself."""
    assert module_imports("rl")["rl.config"] == set()
    code = (
        "import sys; from rl.config import load_config; load_config('configs/lookup.yaml', ['algo.advantage=gae']); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'rl')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['rl', 'rl.config']"


def test_learning_and_rollouts_import_nothing_of_each_other():
    """rl/learn (the math and the learner) and rl/rollout (engines and episodes) meet only in rl/run,
    through the Batch."""
    graph = module_imports("rl")
    for source, target in (("rl.learn", "rl.rollout"), ("rl.rollout", "rl.learn")):
        crossing = {(m, d) for m, deps in graph.items() if m.startswith(source) for d in deps if d.startswith(target)}
        assert crossing == set(), crossing


def names_tested(path: Path) -> list[tuple[int, str]]:
    """(line, value) of every string a module's code compares with or looks up: `x == "gae"`, `"turn" in (a, b)`,
    `ESTIMATORS["gae"]`, a `case "gae":`. Docstrings, messages and labels are not tests of a name."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare):
            parts = [node.left, *node.comparators]
        elif isinstance(node, ast.Subscript):
            parts = [node.slice]
        elif isinstance(node, ast.MatchValue):
            parts = [node.value]
        else:
            continue
        found += [
            (n.lineno, n.value)
            for part in parts
            for n in ast.walk(part)
            if isinstance(n, ast.Constant) and isinstance(n.value, str)
        ]
    return found


def test_no_estimator_or_loss_is_recognized_by_its_name():
    """What an estimator or a loss needs (a critic, a token sum, its own aggregation) is declared where it is
    registered; no code of rl/ names one, so a function a user registers can need what a built-in does."""
    from rl.config import ESTIMATORS, POLICY_LOSSES

    names = set(ESTIMATORS) | set(POLICY_LOSSES)
    assert {"grpo", "gae", "turn", "ppo", "gspo"} <= names  # read from the registrations themselves
    found = [
        (str(path.relative_to(ROOT)), line, value)
        for path in (ROOT / "rl").rglob("*.py")
        for line, value in names_tested(path)
        if value in names
    ]
    assert found == []


def test_the_name_check_sees_a_name_in_code(tmp_path):
    path = tmp_path / "probe.py"
    path.write_text(
        'def f(algo, registry):\n    """grpo in a docstring is fine."""\n    print("turn")\n'
        '    return algo.advantage == "gae" or "turn" in (algo.advantage,) or registry["gspo"]\n'
    )
    assert names_tested(path) == [(4, "gae"), (4, "turn"), (4, "gspo")]

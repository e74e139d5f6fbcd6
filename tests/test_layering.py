"""envs/ knows nothing of rl/ or rewards/; rewards/ nothing of rl/; the core never imports vLLM at module level."""

import ast
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


@pytest.mark.parametrize("package, forbidden", [("envs", {"rl", "rewards", "torch", "transformers"}), ("rewards", {"rl"})])
def test_layers_do_not_import_upwards(package, forbidden):
    assert not imported_modules(package) & forbidden


def test_no_module_level_vllm_import():
    for package in ("envs", "rewards", "rl"):
        for path in (ROOT / package).rglob("*.py"):
            tree = ast.parse(path.read_text())
            top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
            names = {a.name for n in top for a in n.names} | {n.module for n in top if isinstance(n, ast.ImportFrom)}
            assert not any(str(x).startswith("vllm") for x in names), path

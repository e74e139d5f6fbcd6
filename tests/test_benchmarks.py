"""The TRL comparison runs end to end and does the same work on both sides (counts, not timings)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def table_rows(output: str) -> dict[str, list[str]]:
    """The three rows of the printed table, as their columns after the name (TRL's version dropped)."""
    rows = {}
    for line in output.splitlines():
        for name in ("selfcorrect", "TRL GRPOTrainer", "ratio ours/TRL"):
            if line.startswith(name):
                cells = line[len(name) :].split()
                rows[name] = cells[1:] if name == "TRL GRPOTrainer" else cells
    return rows


@pytest.mark.parametrize("mode", [["--task", "code"], ["--multi-turn"]])
def test_vs_trl_does_the_same_work_on_both_sides(mode):
    cmd = [
        sys.executable,
        "benchmarks/vs_trl.py",
        *mode,
        "--runs",
        "1",
        "--steps",
        "2",
        "--tasks",
        "2",
        "--group",
        "2",
        "--new-tokens",
        "8",
    ]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = table_rows(out.stdout)
    assert set(rows) == {"selfcorrect", "TRL GRPOTrainer", "ratio ours/TRL"}, out.stdout
    ours, trl, ratio = rows["selfcorrect"], rows["TRL GRPOTrainer"], rows["ratio ours/TRL"]
    # Columns: step, CPU, tok/s, RSS, gen tokens, [env turns,] opt steps, timed steps.
    assert ours[-2] == trl[-2] == "2"  # optimizer steps
    assert ours[-1] == trl[-1] == "1"  # timed steps
    assert int(ours[4]) > 0 and int(trl[4]) > 0  # both generated and counted their tokens ...
    assert 0.8 < float(ratio[4]) < 1.25  # ... about as many (different samplers, the same limits)
    if "--multi-turn" in mode:
        assert (
            ours[5] == trl[5] == str(2 * 2 * 2 * 2)
        )  # 2 steps x 2 prompts x 2 completions x 2 turns: every turn played
    assert float(ratio[0]) > 0

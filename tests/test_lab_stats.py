"""Reward lab statistics and scoring, checked against hand-computed values on a small episode file."""

import itertools
import json
import math
import random

import numpy as np
import pytest

from rewards import lab
from rewards.__main__ import main
from rewards.base import RewardSpec


def brute_force_tau(x, y):
    """Kendall tau-b straight from its definition, over all pairs."""
    nc = nd = tx = ty = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
        nc += dx * dy > 0
        nd += dx * dy < 0
        tx += dx == 0
        ty += dy == 0
    n0 = len(x) * (len(x) - 1) // 2
    return (nc - nd) / math.sqrt((n0 - tx) * (n0 - ty))


def test_kendall_tau_by_hand():
    # one swapped pair out of 6: (5 - 1) / 6
    assert lab.kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    # ties: pair (0,1) tied in x, pair (1,2) tied in y, the other 4 concordant: 4 / sqrt(5 * 5)
    assert lab.kendall_tau([1, 1, 2, 3], [1, 2, 2, 3]) == pytest.approx(0.8)
    assert lab.kendall_tau([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(lab.kendall_tau([1, 1, 1], [1, 2, 3]))


def test_kendall_tau_matches_definition_with_many_ties():
    rng = random.Random(0)
    for _ in range(5):
        x = np.array([rng.randint(0, 5) for _ in range(120)], float)
        y = np.array([rng.choice([-1.0, 0.0, 0.5, 1.0]) + 0.1 * xi for xi in x])
        assert lab.kendall_tau(x, y) == pytest.approx(brute_force_tau(x, y))


def test_pearson_and_summary_by_hand():
    # dx = (-1, 0, 1), dy = (-5/3, -2/3, 7/3): 4 / sqrt(2 * 78/9)
    assert lab.pearson([0, 1, 2], [0, 1, 4]) == pytest.approx(4 / math.sqrt(2 * 78 / 9))
    assert math.isnan(lab.pearson([1, 1, 1], [0, 1, 2]))
    assert lab.summary(np.array([1.0, 1.0, -1.0, 0.0])) == {
        "n": 4,
        "mean": 0.25,
        "std": pytest.approx(math.sqrt(0.6875)),
        "min": -1.0,
        "max": 1.0,
    }


def test_parse_spec_forms():
    assert lab.parse_spec("outcome") == [RewardSpec("outcome")]
    assert lab.parse_spec("{name: outcome, weight: 2, params: {binary: true}}") == [
        RewardSpec("outcome", 2, {"binary": True})
    ]
    assert lab.parse_spec('[{"name": "outcome"}, {"name": "format", "weight": 0.5}]') == [
        RewardSpec("outcome"),
        RewardSpec("format", 0.5),
    ]
    assert lab.parse_spec("outcome:binary=true,threshold=0.5 + 0.5*format:penalty=2") == [
        RewardSpec("outcome", 1.0, {"binary": True, "threshold": 0.5}),
        RewardSpec("format", 0.5, {"penalty": 2}),
    ]
    with pytest.raises(ValueError, match="key=value"):
        lab.parse_spec("format:penalty")


def turn(score, invalid=False, action=None):
    info = {"score": score, "invalid": invalid}
    if action:
        info["action"] = action
    return {"action": "a", "observation": "o", "info": info}


# (turns) per episode; task outcome = last score: 1, 1, 0, 0; turns 2, 1, 2, 1; searches 1, 0, 2, 0
EPISODES = [
    [turn(0.0, action="search"), turn(1.0)],
    [turn(1.0)],
    [turn(0.0, invalid=True, action="search"), turn(0.0, action="search")],
    [turn(0.0)],
]


@pytest.fixture
def episode_file(tmp_path):
    """A trainer-style episode file, plus one failed rollout that must be skipped."""
    path = tmp_path / "episodes" / "step_000001.jsonl"
    path.parent.mkdir()
    with path.open("w") as f:
        for i, turns in enumerate(EPISODES):
            traj = {"task": {"id": f"t{i}", "prompt": "p", "metadata": {}}, "turns": turns}
            f.write(json.dumps({"step": 1, "trajectory": traj, "group": 0, "error": "", "reward": {}}) + "\n")
        f.write(
            json.dumps(
                {"step": 1, "trajectory": {"task": {"id": "x", "prompt": "p"}, "turns": []}, "error": "engine died"}
            )
            + "\n"
        )
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')  # a run directory's other JSONL is not episodes
    return tmp_path


def test_report_by_hand(episode_file):
    trajs = lab.load_trajectories(episode_file)
    assert len(trajs) == 4
    a = lab.score(trajs, "A", lab.parse_spec("outcome"))
    b = lab.score(trajs, "B", lab.parse_spec("turn_score + 0.5*format:penalty=2"))
    rep = lab.report(lab.Episodes.of(trajs), [a, b])
    # A: totals 1, 1, 0, 0. B: process (0,1), (1), (-1,0), (0) -> totals 1, 1, -1, 0
    assert rep["specs"]["A"]["total"]["mean"] == 0.5 and rep["specs"]["A"]["total"]["std"] == 0.5
    sb = rep["specs"]["B"]
    assert sb["total"]["mean"] == 0.25 and sb["total"]["std"] == pytest.approx(math.sqrt(2.75 / 4))
    assert sb["components"]["turn_score"]["mean"] == 0.5 and sb["components"]["format"]["mean"] == -0.25
    assert [p["mean"] for p in sb["per_turn"]] == [0.0, 0.5] and [p["n"] for p in sb["per_turn"]] == [4, 2]
    assert rep["specs"]["A"]["corr_task_outcome"] == pytest.approx(1.0)
    assert sb["corr_task_outcome"] == pytest.approx(1.5 / math.sqrt(2.75))
    assert sb["farming"]["corr_turns"] == pytest.approx(-0.5 / math.sqrt(2.75))
    assert sb["farming"]["corr_searches"] == pytest.approx(-1.75 / 2.75)
    assert sb["farming"]["mean_by_turns"] == {1: 0.5, 2: 0.0}
    assert sb["farming"]["mean_by_searches"] == {0: 0.5, 1: 1.0, 2: -1.0}
    # pairs (0,1) tied in both, (2,3) tied in A only, the other 4 concordant: 4 / sqrt((6-2)(6-1))
    assert rep["kendall_tau"]["A | B"] == pytest.approx(4 / math.sqrt(20))


def test_cli_writes_table_json_and_plots(episode_file, tmp_path, capsys):
    out = tmp_path / "lab"
    main(
        ["score", str(episode_file), "--reward", "outcome", "--reward", "{name: outcome, weight: 2}", "--out", str(out)]
    )
    printed = capsys.readouterr().out
    assert "Kendall tau  outcome | {name: outcome, weight: 2}: 1.0000" in printed
    assert "r(search)" in printed.splitlines()[1]  # these episodes search (info action), so the column applies
    rep = json.loads((out / "report.json").read_text())
    assert rep["episodes"] == 4 and rep["specs"]["{name: outcome, weight: 2}"]["total"]["mean"] == 1.0
    pytest.importorskip("matplotlib")
    assert all((out / f).stat().st_size > 1000 for f in ("totals.png", "per_turn.png", "farming_turns.png"))


def test_parallel_scoring_in_byte_ranges_matches_one_pass(episode_file, tmp_path):
    # many copies of the hand-made episodes: every chunk boundary lands somewhere inside a line
    lines = (episode_file / "episodes" / "step_000001.jsonl").read_text().splitlines(keepends=True)
    big = tmp_path / "big.jsonl"
    big.write_text("".join(lines * 25))
    texts = ["outcome", "turn_score + 0.5*format:penalty=2"]
    ep1, one = lab.score_files(big, texts, workers=1)
    ep2, two = lab.score_files(big, texts, workers=2)
    assert len(ep1.task) == len(ep2.task) == 100 and (ep1.turns == ep2.turns).all()
    for a, b in zip(one, two):
        assert (a.total == b.total).all() and a.process == b.process
    assert list(one[1].total[:4]) == [1.0, 1.0, -1.0, 0.0]
    with pytest.raises(ValueError, match="did you mean 'outcome'"):
        lab.score_files(big, ["outcom"])

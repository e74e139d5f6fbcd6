"""Training on a real two-node Ray cluster: nodes are network namespaces with their own addresses
(tests/netns_cluster.py), started with the README's own commands, each node offering 2 CPUs.

- the README's command: two learner ranks forced onto the two nodes by their CPUs, probe check every step;
- rollout workers spread over both nodes, weights by broadcast, and a node lost mid-run: its worker starts
  again on the head and the run ends;
- a learner rank's node lost: the step fails with a clear error, the resume says why the ranks do not fit
  on the node left, and fits with smaller ranks.
"""

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from rl.run_dir import checkpoints
from tests.netns_cluster import PYTHON, RAY, ROOT, Cluster, available

WHY = available()
pytestmark = pytest.mark.skipif(bool(WHY), reason=f"a cluster of network namespaces: {WHY}")


def readme_blocks() -> list[str]:
    """The bash blocks of the README's "On a cluster": the head's commands, a node's, the training command."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### On a cluster") :]
    section = section[: section.index("\n## ")]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.DOTALL)
    assert len(blocks) == 3, "README's 'On a cluster' has the head's, a node's and the training command"
    return blocks


def readme_commands(cluster: Cluster, k: int) -> str:
    """The README's commands for node k, at the cluster's addresses, with its token and Ray's own temp dir
    for each node (the namespaces share one filesystem, unlike machines)."""
    head, node, _ = readme_blocks()
    script = head if k == 0 else node
    script = script.replace("10.0.0.1", cluster.ips[0]).replace("10.0.0.2", cluster.ips[k])
    if k:
        token = (cluster.dir / ".ray" / "auth_token").read_text().strip()
        script = script.replace("TOKEN_FROM_THE_HEAD", token)
    script = script.replace("ray ", f"{RAY} ").replace("--num-cpus=2", f"--num-cpus=2 --temp-dir={cluster.temp_dir(k)}")
    if k == 0:
        script = script.replace("--port=6379", "--port=6379 --include-dashboard=false")
    return script


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(nodes=2, cpus=2, commands=readme_commands)
    c.env.pop("RAY_AUTH_TOKEN")  # the head generates its own (README); the driver finds it in ~/.ray
    with c:
        yield c


def train_command(cluster: Cluster, *overrides: str) -> list[str]:
    """The README's training command on this cluster, with `overrides` after it."""
    args = readme_blocks()[2].replace("\\\n", " ").replace("10.0.0.1", cluster.ips[0]).split()
    assert args[:3] == ["python", "-m", "rl"]
    return [PYTHON, *args[1:], *overrides]


def metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def run_until_killed(cluster: Cluster, command: list[str], run_dir: Path, node: int, after_step: int):
    """Start `command` on the head; once it has logged `after_step`, kill every process of `node`. Returns the
    finished command's (return code, stderr)."""
    proc = cluster.popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while not any(r["step"] >= after_step for r in metrics(run_dir) if "reward/mean" in r):
            assert proc.poll() is None, f"the run ended before step {after_step}: {proc.stderr.read()[-3000:]}"
            time.sleep(0.2)
        assert cluster.kill_node(node), f"node {node} had no process to kill"
        _, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, err


def test_the_readme_command_trains_with_learner_ranks_on_two_nodes(cluster, tmp_path):
    run_dir = tmp_path / "run"
    done = cluster.run(train_command(cluster, f"run_dir={run_dir}"))
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [r for r in metrics(run_dir) if "reward/mean" in r]
    assert [r["step"] for r in rows] == [1, 2, 3]
    # each rank needs a whole node's 2 CPUs: one rank on each node
    assert sorted(rows[0]["placement"]["learner_ranks"]) == sorted(cluster.ips)
    assert set(rows[0]["placement"]["rollout_workers"]) <= set(cluster.ips)
    assert all(r["sync/probe_max_abs"] < 1e-4 for r in rows)
    assert "placement: rollout workers on" in (run_dir / "log.txt").read_text()


def test_workers_on_both_nodes_take_weights_by_broadcast_and_survive_losing_a_node(cluster, tmp_path):
    run_dir = tmp_path / "run"
    command = train_command(
        cluster,
        f"run_dir={run_dir}",
        "learner.world_size=1",
        "workers.placement=spread",
        "workers.weight_transport=broadcast",
        "learner.timeout_s=60",
        "steps=8",
        "eval_every=0",
    )
    try:
        code, err = run_until_killed(cluster, command, run_dir, node=1, after_step=3)
    finally:
        cluster.start_node(1)
        cluster.wait_for_nodes(2)
    assert code == 0, err[-3000:]
    rows = [r for r in metrics(run_dir) if "reward/mean" in r]
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert sorted(rows[0]["placement"]["rollout_workers"]) == sorted(cluster.ips)  # one on the other node
    assert rows[-1]["workers/restarts"] >= 1  # the lost node's worker, started again on the head
    assert all(r["sync/probe_max_abs"] < 1e-4 for r in rows)  # by broadcast, and after the loss


def test_a_learner_rank_on_a_lost_node_fails_the_step_and_the_run_resumes_on_the_node_left(cluster, tmp_path):
    run_dir = tmp_path / "run"
    command = train_command(
        cluster, f"run_dir={run_dir}", "steps=8", "save_every=2", "learner.timeout_s=60", "eval_every=0"
    )
    try:
        code, err = run_until_killed(cluster, command, run_dir, node=1, after_step=3)
        assert code == 1
        lost = metrics(run_dir)[0]["placement"]["learner_ranks"].index(cluster.ips[1])
        assert f"error: learner rank {lost} (node {cluster.ips[1]}) died during the" in err, err[-3000:]
        steps = [r["step"] for r in metrics(run_dir) if "reward/mean" in r]
        saved = max(checkpoints(run_dir))  # complete ones: a kill while one is written leaves it as .tmp
        assert saved >= 2 and saved % 2 == 0 and max(steps) >= 3

        # The same ranks do not fit on the one node left: it says so at once, naming what the cluster holds.
        again = cluster.run(train_command(cluster, f"resume={run_dir}", "steps=8"))
        assert again.returncode == 1
        assert f"do not fit this cluster: its live nodes hold {cluster.ips[0]}: 1" in again.stderr, again.stderr[-3000:]

        # Smaller ranks fit: the run continues from its last checkpoint to the end, on the head alone.
        resumed = cluster.run(train_command(cluster, f"resume={run_dir}", "steps=8", "learner.cpus_per_rank=1"))
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        rows = [r for r in metrics(run_dir) if "reward/mean" in r]
        assert [r["step"] for r in rows] == list(range(1, 9))
        after = [r for r in metrics(run_dir) if "placement" in r][-1]
        assert after["step"] == saved + 1 and after["placement"]["learner_ranks"] == [cluster.ips[0]] * 2
        assert all(r["sync/probe_max_abs"] < 1e-4 for r in rows)
    finally:
        cluster.start_node(1)

"""The chaos soak, short: rollout workers killed mid-rollout and before a weight sync, env steps that
hang, on the suite's own Ray cluster; training goes on and no episode is lost."""

import pytest

from benchmarks.soak import soak
from tests import ray_cluster as ray_cluster_of_our_own


@pytest.fixture(scope="module")
def ray_cluster():
    temp_dir = ray_cluster_of_our_own.start(num_cpus=2)
    yield temp_dir
    ray_cluster_of_our_own.stop(temp_dir)


def test_short_soak_survives_kills_and_hangs_without_losing_an_episode(tmp_path, ray_cluster, capsys):
    # A kill every step: step 1's victim dies during its rollout, step 2's after it (found by the probe after the sync).
    # hang_prob 0.02 with seed 0: the 36th and 41st env.step of each worker process hang.
    r = soak(steps=2, kill_every=1, seed=0, hang_prob=0.02, env_timeout_s=0.5, run_dir=str(tmp_path))
    assert r["steps"] == 2 and r["kills"] == 2 and r["restarts"] == 2
    assert r["submitted"] == 2 * 64 and r["lost"] == 0
    assert r["timeouts"] >= 1 and r["failed"] == r["timeouts"]
    assert r["returned"] + r["failed"] == r["submitted"]
    out = capsys.readouterr().out
    assert "re-running its 32 episodes" in out and "probing it again" in out  # both kinds of death were met

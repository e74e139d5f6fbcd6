"""The chaos soak, short: on the suite's own Ray cluster a rollout worker is killed after its rollout
(found by the probe after the weight sync) and env steps hang; training goes on and no episode is lost.
(`tests/test_workers.py` kills a worker during its rollout.)"""

import pytest

from benchmarks.soak import soak
from tests import ray_cluster as ray_cluster_of_our_own


@pytest.fixture(scope="module")
def ray_cluster():
    temp_dir = ray_cluster_of_our_own.start(num_cpus=2)
    yield temp_dir
    ray_cluster_of_our_own.stop(temp_dir)


def test_short_soak_survives_a_kill_and_hangs_without_losing_an_episode(tmp_path, ray_cluster, caplog):
    # hang_prob 0.02 with seed 0: the 36th and 41st env.step of each worker process hang, within its first two rollouts.
    r = soak(steps=2, kill_every=2, seed=0, hang_prob=0.02, env_timeout_s=0.5, run_dir=str(tmp_path))
    assert r["steps"] == 2 and r["kills"] == 1 and r["restarts"] == 1
    assert r["submitted"] == 2 * 64 and r["lost"] == 0
    assert r["timeouts"] >= 1 and r["failed"] == r["timeouts"]
    assert r["returned"] + r["failed"] == r["submitted"]
    assert "probing it again" in caplog.text  # the dead worker was met at the probe, and replaced (logged as such)

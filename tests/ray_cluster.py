"""A local Ray cluster of the test suite's own: its own temp dir, ports and namespace.

Two copies of the suite on one machine, or a user's own cluster next to it, then share
nothing: `address="local"` starts a new cluster even where RAY_ADDRESS names another,
the temp dir holds its sockets, session and port cache (Ray's default, /tmp/ray, is
shared by every cluster of the machine), the GCS and the workers take free ports, and
the namespace keeps its named actors apart.

    python tests/ray_cluster.py    # starts one, runs a task, prints what it is made of (used by a test)
"""

import json
import os
import shutil
import socket
import sys
import tempfile
import uuid
from pathlib import Path

import ray

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(num_cpus: int = 2) -> str:
    """Start this process's own local cluster; returns its temp dir (removed by `stop`)."""
    # Short on purpose: Ray's unix sockets live under it, and a socket path is at most 107 bytes.
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    ray.init(
        address="local",
        num_cpus=num_cpus,
        namespace=f"selfcorrect-tests-{uuid.uuid4().hex[:8]}",
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}},
        _temp_dir=temp_dir,
        _metrics_export_port=free_port(),
    )
    return temp_dir


def stop(temp_dir: str) -> None:
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


def describe() -> dict:
    """What makes this cluster distinct, as seen from inside a task of it."""
    ctx = ray.get_runtime_context()
    node = ray._private.worker.global_worker.node
    return {
        "gcs": ctx.gcs_address,
        "namespace": ctx.namespace,
        "session_dir": node.get_session_dir_path(),
        "pid": os.getpid(),
    }


if __name__ == "__main__":
    temp_dir = start(num_cpus=1)
    try:
        remote = ray.get(ray.remote(lambda: ray.get_runtime_context().namespace).remote())
        print(json.dumps({**describe(), "task_namespace": remote}))
    finally:
        stop(temp_dir)
    sys.exit(0)

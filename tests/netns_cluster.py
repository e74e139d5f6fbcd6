"""A real multi-node Ray cluster on one machine: each node a network namespace with its own address.

    bridge scNNNNbr (no address: the host takes no part, and no traffic leaves the bridge)
      ├── veth ── namespace scNNNNn0  10.R.S.1   ray start --head    (the driver runs here too)
      ├── veth ── namespace scNNNNn1  10.R.S.2   ray start --address=10.R.S.1:6379
      └── ...

A namespace has its own interfaces, addresses, ports and routes, and nothing else of its own: the nodes
share the filesystem (as nodes on a shared filesystem do), so each gets its own Ray temp dir. The subnet
is drawn at random from 10.64.0.0/10 and lives only on the bridge, so two clusters at once (two copies of
the suite) do not meet. Each `ray start` runs with a token of the cluster's own (`RAY_AUTH_TOKEN`; the
user's ~/.ray/auth_token is never read or written) and health checks fast enough that a node killed in a
test is declared dead in seconds.

Cleanup ends only the processes inside the cluster's namespaces, by pid (`ip netns pids`), never by name
(Ray's own stop command would end every Ray process on the machine, other runs' too), then removes the
namespaces, links and dirs.

Needs root and `ip netns` (iproute2); `available()` says why not where they are missing.

    python tests/netns_cluster.py 2     # start a two-node cluster, print its nodes, remove it
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
RAY = str(Path(sys.executable).with_name("ray"))


def available() -> str:
    """Why a cluster cannot be made here ("" when it can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    probe = f"scp{os.getpid() % 100000}"
    steps = [
        ["netns", "add", probe],
        ["link", "add", f"{probe}b", "type", "bridge"],
        ["link", "add", f"{probe}v", "type", "veth", "peer", "name", f"{probe}i"],
        ["link", "set", f"{probe}i", "netns", probe],
    ]
    why = ""
    for step in steps:
        done = subprocess.run(["ip", *step], capture_output=True, text=True)
        if done.returncode:
            why = f"`ip {' '.join(step)}` failed: {done.stderr.strip()}"
            break
    for undo in (["link", "del", f"{probe}v"], ["link", "del", f"{probe}b"], ["netns", "del", probe]):
        subprocess.run(["ip", *undo], capture_output=True)
    return why


def ray_start(cluster: "Cluster", k: int) -> str:
    """The plain `ray start` of node k (the token is in the cluster's environment)."""
    where = f"--node-ip-address={cluster.ips[k]} --num-cpus={cluster.cpus[k]} --temp-dir={cluster.temp_dir(k)}"
    if k == 0:
        return f"{RAY} start --head --port=6379 --include-dashboard=false {where}"
    return f"{RAY} start --address={cluster.address} {where}"


def _ip(*args: str, ns: str | None = None) -> None:
    cmd = ["ip", "netns", "exec", ns, "ip", *args] if ns else ["ip", *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()}")


class Cluster:
    """`nodes` namespaces joined by a bridge, a Ray node in each with `cpus` CPUs (or cpus[k] for node k); node 0
    is the head."""

    def __init__(
        self, nodes: int = 2, cpus: int | list[int] = 2, commands: Callable[["Cluster", int], str] | None = None
    ):
        self.tag = f"sc{os.getpid() % 10000:04d}{secrets.token_hex(1)}"  # names of at most 15 bytes
        net = random.Random().randrange(64 * 256, 128 * 256)  # a /24 inside 10.64.0.0/10
        self.subnet = f"10.{net // 256}.{net % 256}"
        self.names = [f"{self.tag}n{k}" for k in range(nodes)]
        self.ips = [f"{self.subnet}.{k + 1}" for k in range(nodes)]
        self.cpus = cpus if isinstance(cpus, list) else [cpus] * nodes  # each node's
        self.dir = Path(tempfile.mkdtemp(prefix="rc-", dir="/tmp"))  # short: Ray's socket paths are <= 107 bytes
        self.commands = commands or ray_start
        self.env = {
            **os.environ,
            "HOME": str(self.dir),  # ~/.ray (the token a head generates) is the cluster's own
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": secrets.token_hex(32),
            "PYTHONPATH": str(ROOT),  # the tests' own envs, on every node
            # a node whose processes are killed is declared dead within about 3 s
            "RAY_health_check_period_ms": "1000",
            "RAY_health_check_timeout_ms": "1000",
            "RAY_health_check_failure_threshold": "3",
            "RAY_USAGE_STATS_ENABLED": "0",
        }
        self.env.pop("RAY_ADDRESS", None)
        self.bridge = f"{self.tag}br"
        self.made: list[str] = []  # namespaces made so far, for close()

    @property
    def address(self) -> str:
        return f"{self.ips[0]}:6379"

    def start(self) -> "Cluster":
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("link", "set", self.bridge, "up")
            for k, (name, ip) in enumerate(zip(self.names, self.ips)):
                _ip("netns", "add", name)
                self.made.append(name)
                outside, inside = f"{self.tag}v{k}", f"{self.tag}i{k}"
                _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
                _ip("link", "set", inside, "netns", name)
                _ip("link", "set", outside, "master", self.bridge)
                _ip("link", "set", outside, "up")
                _ip("addr", "add", f"{ip}/24", "dev", inside, ns=name)
                _ip("link", "set", inside, "up", ns=name)
                _ip("link", "set", "lo", "up", ns=name)
            for k in range(len(self.names)):
                self.start_node(k)
            self.wait_for_nodes(len(self.names))
        except BaseException:
            self.close()
            raise
        return self

    def start_node(self, k: int) -> None:
        """Start node k's Ray (again, after `kill_node(k)`): the script `commands(self, k)` in its namespace."""
        shutil.rmtree(self.temp_dir(k), ignore_errors=True)
        done = self.run(["bash", "-ec", self.commands(self, k)], node=k, timeout=120)
        if done.returncode:
            raise RuntimeError(f"starting Ray on node {k} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")

    def temp_dir(self, k: int) -> Path:
        """Node k's own Ray temp dir: the namespaces share one filesystem, and /tmp/ray would be every node's."""
        return self.dir / f"n{k}"

    def run(self, cmd: list[str], node: int = 0, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
        """`cmd` in node `node`'s namespace, from the repository root, with the cluster's token."""
        return subprocess.run(
            ["ip", "netns", "exec", self.names[node], *cmd],
            cwd=ROOT,
            env=kwargs.pop("env", self.env),
            capture_output=True,
            text=True,
            timeout=timeout,
            **kwargs,
        )

    def popen(self, cmd: list[str], node: int = 0, **kwargs) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.names[node], *cmd], cwd=ROOT, env=self.env, **kwargs)

    def nodes(self) -> list[dict]:
        """The cluster's live nodes as Ray sees them: address and CPUs."""
        script = (
            "import json, ray; ray.init(address='auto', log_to_driver=False);"
            "print(json.dumps([{'ip': n['NodeManagerAddress'], 'cpus': n['Resources'].get('CPU', 0)}"
            " for n in ray.nodes() if n['Alive']]))"
        )
        env = {**self.env, "RAY_ADDRESS": self.address}
        done = self.run([PYTHON, "-c", script], env=env, timeout=120)
        if done.returncode:
            raise RuntimeError(f"listing the nodes failed: {done.stderr[-2000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    def wait_for_nodes(self, n: int, timeout: float = 60) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            live = self.nodes()
            if len(live) == n or time.monotonic() > deadline:
                if len(live) != n:
                    raise RuntimeError(f"the cluster has {len(live)} live nodes after {timeout:g}s, not {n}")
                return live
            time.sleep(0.5)

    def pids(self, k: int) -> list[int]:
        """Every process in node k's namespace."""
        done = subprocess.run(["ip", "netns", "pids", self.names[k]], capture_output=True, text=True)
        return [int(p) for p in done.stdout.split()]

    def kill_node(self, k: int) -> list[int]:
        """Kill every process of node k (SIGKILL, by pid): the node is lost as a machine is lost."""
        pids = self.pids(k)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return pids

    def close(self) -> None:
        for k in range(len(self.made)):
            for _ in range(3):  # processes that fork while being killed are caught the next time round
                if not self.kill_node(k):
                    break
                time.sleep(0.2)
        for name in self.made:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        for k in range(len(self.names)):  # a veth whose peer moved into a deleted namespace went with it
            subprocess.run(["ip", "link", "del", f"{self.tag}v{k}"], capture_output=True)
        self.made = []
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "Cluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


if __name__ == "__main__":
    why = available()
    if why:
        sys.exit(f"cannot make a cluster here: {why}")
    with Cluster(nodes=int(sys.argv[1]) if len(sys.argv) > 1 else 2) as cluster:
        print(json.dumps({"nodes": cluster.nodes(), "namespaces": cluster.names, "address": cluster.address}))

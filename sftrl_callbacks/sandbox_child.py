"""The sandboxed side of `sandbox.py`: run as `python -I -S -B sandbox_child.py`, standard library only.

It locks itself in before it reads a line of model code, then serves calls of one function over its pipes:

1. resource limits (address space, CPU time, file size, open files, no core dumps, no new processes);
2. root drops to `nobody` where the interpreter's files stay readable to it;
3. new user and network namespaces, where the kernel allows them (no network device at all inside);
4. Landlock: reading only the standard library and the system's shared libraries (not site-packages, where data
   and canonical solutions live, nor anything else), no
   writing anywhere, no TCP bind / connect (ABI 4+), no signals or abstract sockets outside (ABI 6+);
5. a seccomp filter (x86_64): no sockets, no new processes or threads, no exec, no signals, no ptrace, no
   namespace, mount, rlimit, session, permission or ownership changes, no io_uring, bpf or kernel keys.

The parent sends one JSON line (`program`, `entry_point`, `limits`, `isolation`) and then one line per call; each
reply is one line on a descriptor of its own (the program's stdout and stderr go to /dev/null). The values that
cross are plain data (`encode` / `decode`, shared with the parent); nothing the program says counts as a verdict.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import sys

MAX_DEPTH = 100
MAX_ITEMS = 1_000_000


class Unencodable(ValueError):
    """A value that is not plain data (or too deep, or too large) to cross the boundary."""


# -- plain data across the boundary ---------------------------------------------------------------------------------
# JSON, with every JSON object a one-key tag: tuple "t", set "s", frozenset "fs", dict "d" (as key-value pairs),
# float that JSON lacks "f" ("nan", "inf", "-inf"), complex "c", bytes "y" (latin-1 text). Only the exact types are
# taken: a subclass (an int whose __eq__ always says True) is refused, not converted.
def encode(value: object) -> object:
    count = [0]

    def walk(x: object, depth: int) -> object:
        count[0] += 1
        if depth > MAX_DEPTH or count[0] > MAX_ITEMS:
            raise Unencodable("too deep or too large")
        t = type(x)
        if x is None or t is bool or t is int or t is str:
            return x
        if t is float:
            return x if math.isfinite(x) else {"f": repr(x)}
        if t is list:
            return [walk(v, depth + 1) for v in x]
        if t is tuple:
            return {"t": [walk(v, depth + 1) for v in x]}
        if t is set or t is frozenset:
            return {"s" if t is set else "fs": [walk(v, depth + 1) for v in x]}
        if t is dict:
            return {"d": [[walk(k, depth + 1), walk(v, depth + 1)] for k, v in x.items()]}
        if t is complex:
            return {"c": [walk(x.real, depth + 1), walk(x.imag, depth + 1)]}
        if t is bytes:
            return {"y": x.decode("latin-1")}
        raise Unencodable(f"a {t.__name__} is not plain data")

    return walk(value, 0)


def decode(data: object) -> object:
    def walk(x: object, depth: int) -> object:
        if depth > MAX_DEPTH:
            raise Unencodable("too deep")
        t = type(x)
        if x is None or t in (bool, int, float, str):
            return x
        if t is list:
            return [walk(v, depth + 1) for v in x]
        if t is dict and len(x) == 1:
            ((tag, v),) = x.items()
            if tag == "t" and type(v) is list:
                return tuple(walk(e, depth + 1) for e in v)
            if tag in ("s", "fs") and type(v) is list:
                items = [walk(e, depth + 1) for e in v]
                try:
                    return set(items) if tag == "s" else frozenset(items)
                except TypeError as err:
                    raise Unencodable(str(err)) from None
            if tag == "d" and type(v) is list and all(type(p) is list and len(p) == 2 for p in v):
                try:
                    return {walk(k, depth + 1): walk(e, depth + 1) for k, e in v}
                except TypeError as err:
                    raise Unencodable(str(err)) from None
            if tag == "f" and v in ("nan", "inf", "-inf"):
                return float(v)
            if tag == "c" and type(v) is list and len(v) == 2:
                return complex(float(v[0]), float(v[1]))
            if tag == "y" and type(v) is str:
                return v.encode("latin-1")
        raise Unencodable(f"not plain data: {type(x).__name__}")

    return walk(data, 0)


# -- the layers -----------------------------------------------------------------------------------------------------
libc = ctypes.CDLL(None, use_errno=True)

SYSCALLS_X86_64 = {
    "socket": 41, "socketpair": 53, "connect": 42, "bind": 49, "listen": 50, "accept": 43, "accept4": 288,
    "clone": 56, "clone3": 435, "fork": 57, "vfork": 58, "execve": 59, "execveat": 322,
    "kill": 62, "tkill": 200, "tgkill": 234, "pidfd_open": 434, "pidfd_send_signal": 424, "pidfd_getfd": 438,
    "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311,
    "unshare": 272, "setns": 308, "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161,
    "setsid": 112, "setpgid": 109, "setrlimit": 160, "prlimit64": 302,
    "chmod": 90, "fchmod": 91, "fchmodat": 268, "fchmodat2": 452, "chown": 92, "fchown": 93, "lchown": 94,
    "fchownat": 260, "setxattr": 188, "lsetxattr": 189, "fsetxattr": 190, "removexattr": 197, "lremovexattr": 198,
    "fremovexattr": 199, "utime": 132, "utimes": 235, "utimensat": 280, "futimesat": 261, "mknod": 133,
    "mknodat": 259, "bpf": 321, "perf_event_open": 298, "userfaultfd": 323, "io_uring_setup": 425,
    "io_uring_enter": 426, "io_uring_register": 427, "keyctl": 250, "add_key": 248, "request_key": 249,
    "init_module": 175, "finit_module": 313, "delete_module": 176, "kexec_load": 246, "reboot": 169,
    "swapon": 167, "swapoff": 168, "sethostname": 170, "setdomainname": 171, "acct": 163, "personality": 135,
    "setuid": 105, "setgid": 106, "setreuid": 113, "setregid": 114, "setresuid": 117, "setresgid": 119,
    "setgroups": 116, "capset": 126,
}  # fmt: skip


def _limit(name: str, value: int) -> None:
    import resource

    resource.setrlimit(getattr(resource, name), (value, value))


def apply_limits(limits: dict) -> list[str]:
    _limit("RLIMIT_AS", int(limits["memory_mb"]) * 2**20)
    _limit("RLIMIT_CPU", int(limits["cpu_s"]))
    _limit("RLIMIT_FSIZE", 0)  # nothing to write to files (Landlock forbids it too)
    _limit("RLIMIT_NOFILE", 64)
    _limit("RLIMIT_CORE", 0)
    _limit("RLIMIT_NPROC", 0)  # no new process for a non-root user (root is held by seccomp instead)
    return ["rlimits"]


def drop_root() -> list[str]:
    """Root becomes `nobody`, where every directory above the standard library lets others in."""
    if os.getuid() != 0:
        return []
    import sysconfig

    path = sysconfig.get_paths()["stdlib"]
    while True:
        if not os.stat(path).st_mode & 0o001:
            return []  # e.g. an interpreter under /root: nobody could not import; seccomp and Landlock hold root
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
    return ["uid-nobody"]


def enter_namespaces() -> list[str]:
    CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0:
        return ["user+net namespaces"]
    return []  # e.g. in a default Docker container: seccomp already refuses sockets


def landlock(readable: list[str]) -> list[str]:
    """Read-only access beneath `readable`, nothing else on the file system; TCP and scopes where the ABI has them."""
    abi = libc.syscall(444, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    if abi < 1:
        raise OSError(f"Landlock is not available (errno {ctypes.get_errno()})")
    fs = (1 << 13) - 1
    fs |= (1 << 13) if abi >= 2 else 0  # REFER
    fs |= (1 << 14) if abi >= 3 else 0  # TRUNCATE
    fs |= (1 << 15) if abi >= 5 else 0  # IOCTL_DEV
    net = 0b11 if abi >= 4 else 0  # BIND_TCP, CONNECT_TCP
    scoped = 0b11 if abi >= 6 else 0  # abstract unix sockets, signals

    class Ruleset(ctypes.Structure):
        _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]

    class PathBeneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

    attr = Ruleset(fs, net, scoped)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    ruleset = libc.syscall(444, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        raise OSError(f"landlock_create_ruleset failed (errno {ctypes.get_errno()})")
    read = (1 << 2) | (1 << 3)  # READ_FILE, READ_DIR
    for path in readable:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        try:
            rule = PathBeneath(read if os.path.isdir(path) else 1 << 2, fd)
            if libc.syscall(445, ruleset, 1, ctypes.byref(rule), ctypes.c_uint32(0)) != 0:
                raise OSError(f"landlock_add_rule {path} failed (errno {ctypes.get_errno()})")
        finally:
            os.close(fd)
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        raise OSError("prctl(PR_SET_NO_NEW_PRIVS) failed")
    if libc.syscall(446, ruleset, ctypes.c_uint32(0)) != 0:
        raise OSError(f"landlock_restrict_self failed (errno {ctypes.get_errno()})")
    os.close(ruleset)
    return [f"landlock ABI {abi}: read-only stdlib" + (", no TCP" if net else "") + (", scoped" if scoped else "")]


def stdlib_paths() -> list[str]:
    """What the program may read: the standard library, without the site-packages folders inside it, and the system's
    shared libraries."""
    import sysconfig

    out = []
    for key in ("stdlib", "platstdlib"):
        root = sysconfig.get_paths()[key]
        for entry in sorted(os.listdir(root)):
            if entry not in ("site-packages", "dist-packages") and os.path.join(root, entry) not in out:
                out.append(os.path.join(root, entry))
    # The shared libraries standard modules load (zlib's libz, hashlib's libcrypto): system library folders and
    # the loader's cache, which hold code, not data.
    arch = sysconfig.get_config_var("MULTIARCH") or ""
    if arch:
        out += [f"/lib/{arch}", f"/usr/lib/{arch}"]
    out += ["/lib64", "/usr/lib64", "/etc/ld.so.cache"]
    return [p for p in dict.fromkeys(out) if os.path.exists(p)]


def seccomp() -> list[str]:
    import platform

    if platform.machine() != "x86_64":
        raise OSError(f"the seccomp filter knows x86_64's system call numbers only, not {platform.machine()}'s")

    class Filter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint32)]

    class Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Filter))]

    load, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06
    allow, kill, eperm = 0x7FFF0000, 0x80000000, 0x00050000 | 1
    code = [
        (load, 0, 0, 4),  # arch
        (jeq, 1, 0, 0xC000003E),  # AUDIT_ARCH_X86_64
        (ret, 0, 0, kill),
        (load, 0, 0, 0),  # syscall number
        (jge, 0, 1, 0x40000000),  # the x32 ABI
        (ret, 0, 0, kill),
    ]
    for number in sorted(set(SYSCALLS_X86_64.values())):
        code += [(jeq, 0, 1, number), (ret, 0, 0, eperm)]
    code.append((ret, 0, 0, allow))
    array = (Filter * len(code))(*[Filter(*c) for c in code])
    program = Program(len(code), array)
    if libc.prctl(38, 1, 0, 0, 0) != 0:
        raise OSError("prctl(PR_SET_NO_NEW_PRIVS) failed")
    if libc.prctl(22, 2, ctypes.byref(program), 0, 0) != 0:  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
        raise OSError(f"seccomp filter refused (errno {ctypes.get_errno()})")
    return [f"seccomp ({len(SYSCALLS_X86_64)} system calls refused)"]


def isolate(isolation: str, limits: dict) -> list[str]:
    layers = ["fresh interpreter, empty environment"]
    layers += apply_limits(limits)
    readable = stdlib_paths()  # listed while the folders are still readable
    if isolation == "strict":
        layers += drop_root()
        layers += enter_namespaces()
        layers += landlock(readable)
    layers += seccomp()
    return layers


# -- serving --------------------------------------------------------------------------------------------------------
def main() -> None:
    reply = os.fdopen(os.dup(1), "w", encoding="utf-8")
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    requests = sys.stdin

    def send(message: dict) -> None:
        reply.write(json.dumps(message) + "\n")
        reply.flush()

    setup = json.loads(requests.readline())
    try:
        layers = isolate(setup["isolation"], setup["limits"])
    except OSError as err:
        send({"error": f"isolation: {err}"})
        return
    try:
        code = compile(setup["program"], "<candidate>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError, MemoryError, RecursionError) as err:
        send({"error": f"does not parse: {type(err).__name__}: {err}"[:300], "layers": layers})
        return
    namespace = {"__name__": "__candidate__"}
    try:
        exec(code, namespace)
        function = namespace[setup["entry_point"]]
    except BaseException as err:  # noqa: BLE001 - anything the program does at load is its failure
        send({"error": f"load: {type(err).__name__}: {err}"[:300], "layers": layers})
        return
    send({"ready": True, "layers": layers})
    for line in requests:
        call = json.loads(line)
        try:
            args = decode(call["args"])
            value = function(*args)
        except BaseException as err:  # noqa: BLE001
            send({"id": call["id"], "raised": type(err).__name__, "message": str(err)[:200]})
            continue
        try:
            send({"id": call["id"], "value": encode(value)})
        except Unencodable as err:
            send({"id": call["id"], "error": f"returned {err}"})


if __name__ == "__main__":
    main()

"""Sandboxed code execution: a completion's Python code run against a row's test cases in a throw-away process.

Each completion runs in its own subprocess (``python -I -S``: no user site, no environment-driven imports, no
``.pth`` hooks, site-packages still importable) with a clean environment (PATH, HOME, LANG: nothing of the reward
actor's), stdin, stdout and stderr on /dev/null, and reports its result on a pipe of its own. Limits (``Limits``),
set by the harness on itself before the code runs:

- ``cpu_s`` CPU seconds (RLIMIT_CPU: killed); ``wall_s`` wall clock (the process group is killed, and with it the
  PID namespace); ``memory_mb`` address space (RLIMIT_AS: MemoryError); ``file_mb`` the size of one file
  (RLIMIT_FSIZE: EFBIG); ``processes`` (RLIMIT_NPROC: fork fails). RLIMIT_NPROC counts every process of the code's
  user on the machine, not of one sandbox: parallel sandboxes (all ``nobody``) share it, so a fork bomb in one can
  make a fork fail in another running at the same time (as a non-root user: the trainer's own processes count too).

**The private sandbox**, where the kernel allows it (``unshare -n -m -i -p -f --mount-proc``, ``-r`` added for a
non-root user, ``-n`` left out for ``isolate_network="off"``; checked once by a canary, ``private_namespaces``): the
harness starts as root of private network, mount, IPC and PID namespaces and, before the code runs,

- mounts a tmpfs of its own over /tmp, /var/tmp, /dev/shm and /run/lock (the world-writable places), each at most
  2 x ``file_mb`` and 4096 files, in memory (outside ``memory_mb``), gone with the namespace; the code works in
  /tmp/work (also its HOME);
- binds the interpreter's prefix and the site-packages folders read-only under /tmp/.sandbox and imports from
  there: ``nobody`` can read them wherever they really are (a pyenv Python under /root, which is 0700);
- as root, drops to ``nobody`` (uid 65534, no groups); as a non-root user, enters one more user namespace, so that
  the code cannot undo the mounts (it runs as that user all the same).

The code then has no network (unless ``isolate_network="off"``; not even the host's loopback or abstract sockets),
sees only its own processes (its own /proc; ``os.getppid()`` is 0: nothing outside can be signalled or read, the
reward actor's environment included), and when the harness, the namespace's PID 1, exits, the kernel kills whatever
is left (children that left the process group too). As ``nobody`` it writes only into the private tmpfs (the
host's /tmp, Ray's sockets under /tmp/ray included, is hidden); the rest of the file system is the host's, which
``nobody`` reads where anyone can (world-readable files such as the project's code) and writes where anyone can
(world-writable files or folders elsewhere: none on a usual system). As a non-root user the code can write, outside
the private tmpfs, wherever that user can (its home, a venv it owns): run the trainer as root (the code then runs
as ``nobody``) or in a container for that.

**Without a mount namespace** (warned): a network namespace only (``unshare -n``, ``-rn`` for a non-root user)
where the kernel gives one, else the host's network (warned; ``isolate_network="require"`` refuses); the code works
in a temporary folder on the host, sees the host's /tmp (Ray's sockets), /dev/shm and /proc, can write where its
user can, leaves SysV IPC objects behind, and a child that calls setsid() outlives the kill. As root the code runs
as ``nobody`` only where ``nobody`` can read the interpreter; with a Python under /root it cannot, and the code runs
as root (warned): the process-count limit does not bind (the kernel exempts root: a fork bomb is not contained), and
it can write anywhere, read the reward actor's environment (/proc/<pid>/environ) and kill it.

This contains what code does to the machine; it does not stop a completion that reads the harness from gaming its
own score (the result is reported from inside the sandboxed process).
"""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass
from functools import cache

HARNESS = r"""
import os, resource, sys
literal = lambda text: eval(text, {"__builtins__": {}})  # a repr() the parent wrote (no json: 20 ms of import)
cfg = literal(sys.argv[1])
code, tests = open("solution.py").read(), literal(open("tests.txt").read())  # read before /tmp is covered
path = cfg["path"]
if cfg["private"]:  # root in private mount, PID and IPC namespaces (unshare): the code gets a world of its own
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
    def mount(source, target, fstype=None, flags=0, data=None):
        if libc.mount(source.encode(), target.encode(), fstype and fstype.encode(), flags, data and data.encode()):
            errno = ctypes.get_errno()
            raise OSError(errno, f"mount {source} on {target}: {os.strerror(errno)}")
    MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
    mount("none", "/", flags=MS_REC | MS_PRIVATE)  # nothing mounted here reaches the host (unshare's default too)
    binds = cfg["binds"]  # (a folder of the interpreter, where the code sees it)
    fds = [os.open(real, os.O_PATH | os.O_DIRECTORY) for real, _ in binds]  # still reachable once /tmp is covered
    for d in cfg["tmpfs"]:  # /tmp, /var/tmp, ...: in memory, size-limited, gone with the namespace
        mount("tmpfs", d, "tmpfs", MS_NOSUID | MS_NODEV, cfg["tmpfs_options"])
    for fd, (real, seen) in zip(fds, binds):  # readable by nobody there (the real path may not be: /root/.pyenv)
        os.makedirs(seen)
        mount(f"/proc/self/fd/{fd}", seen, flags=MS_BIND | MS_REC)
        if cfg["drop_to"] is not None:  # (in a user namespace the remount may not clear the source's locked flags)
            mount("none", seen, flags=MS_REMOUNT | MS_BIND | MS_RDONLY)
        os.close(fd)
    def seen_at(p):
        for real, seen in binds:
            if p == real or p.startswith(real + "/"):
                return seen + p[len(real):]
        return p
    sys.path[:] = map(seen_at, sys.path)
    for module in list(sys.modules.values()):  # packages imported already (encodings, ctypes) import on there
        if isinstance(getattr(module, "__path__", None), list):
            module.__path__[:] = map(seen_at, module.__path__)
    sys.executable, path = seen_at(os.path.realpath(sys.executable)), [seen_at(p) for p in path]
    os.mkdir(cfg["work"], 0o700)
    if cfg["drop_to"] is not None:
        os.chown(cfg["work"], cfg["drop_to"], cfg["drop_to"])
    os.chdir(cfg["work"])
    with open("solution.py", "w") as f:
        f.write(code)
    with open("tests.txt", "w") as f:
        f.write(repr(tests))
    if cfg["drop_to"] is None and libc.unshare(0x10000000):  # (unshare -r) CLONE_NEWUSER: a user namespace with
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWUSER)")  # no power over these mounts (no umount /tmp)
sys.path.extend(path)
for name, value in (("RLIMIT_CPU", cfg["cpu_s"]), ("RLIMIT_AS", cfg["memory_mb"] << 20),
                    ("RLIMIT_FSIZE", cfg["file_mb"] << 20), ("RLIMIT_NPROC", cfg["processes"])):
    resource.setrlimit(getattr(resource, name), (value, value))
if os.geteuid() == 0 and cfg["drop_to"] is not None:
    os.setgroups([]); os.setgid(cfg["drop_to"]); os.setuid(cfg["drop_to"])
out = os.fdopen(cfg["fd"], "w")
namespace = {"__name__": "__main__"}
passed = 0
try:
    exec(compile(code, "solution.py", "exec"), namespace)
    for test in tests:
        try:
            exec(compile(test, "test", "exec"), namespace)
            passed += 1
        except Exception:
            pass
except BaseException:
    pass
out.write(f"{passed}/{len(tests)}"); out.flush()
"""


@dataclass(frozen=True)
class Limits:
    cpu_s: int = 2
    wall_s: float = 5.0
    memory_mb: int = 512
    file_mb: int = 16
    processes: int = 16


@cache
def network_isolation() -> list[str] | None:
    """The command prefix that gives the code a private network namespace here, or None where the kernel refuses."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    prefix = [unshare, "-n"] if os.geteuid() == 0 else [unshare, "-rn"]
    try:
        ok = subprocess.run([*prefix, "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    return prefix if ok else None


@cache
def site_dirs() -> tuple[str, ...]:
    """This interpreter's site-packages folders: the code can import what is installed there (numpy, ...). The
    harness runs with ``-S`` and puts them on ``sys.path`` itself, so their ``.pth`` files do not run: a start
    several times faster (11 ms against 37 ms on the development machine, where an editable install's import hook
    costs more than the rest of the start), with nothing loaded but the standard library and the code's imports."""
    import site

    return tuple(d for d in site.getsitepackages() if os.path.isdir(d))


@cache
def unprivileged_uid() -> int | None:
    """As root: ``nobody``'s uid if the interpreter and its standard library are readable by it (the code imports
    from them after the drop), else None (warned: the process-count limit then does not bind, the kernel exempts
    root). Not root: None (the code runs as this user, whose limits bind)."""
    if os.geteuid() != 0:
        return None
    probe = "import os; os.setgroups([]); os.setgid(65534); os.setuid(65534); import decimal, socket, json"
    try:
        ok = subprocess.run([sys.executable, "-I", "-c", probe], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    if not ok:
        warnings.warn(
            f"code_tests: running as root and {sys.executable}'s library is not readable by nobody: the "
            "code runs as root, without the process-count limit",
            stacklevel=2,
        )
    return 65534 if ok else None


# The private sandbox's file system: the world-writable places, each a tmpfs of its own (2 x file_mb, TMPFS_INODES
# files and folders); the code's working folder and HOME; where it sees the interpreter's folders, read-only.
PRIVATE_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
TMPFS_INODES = 4096
WORK = "/tmp/work"
BIND_ROOT = "/tmp/.sandbox"


@dataclass(frozen=True)
class Box:
    """How the harness starts here: under ``prefix`` (``unshare ...``, or nothing), in private mount, PID and IPC
    namespaces or not (``private``), the code running as ``drop_to`` (None: as this process's user)."""

    prefix: tuple[str, ...]
    private: bool
    drop_to: int | None


@cache
def private_dirs() -> tuple[str, ...]:
    return tuple(d for d in dict.fromkeys(map(os.path.realpath, PRIVATE_DIRS)) if os.path.isdir(d))


@cache
def interpreter_binds() -> tuple[tuple[str, str], ...]:
    """(a folder the code imports from, where the private sandbox shows it): the interpreter's prefix and the
    site-packages folders outside it, each bound read-only under /tmp/.sandbox. There ``nobody`` can read them
    wherever they really are (a Python under /root, whose 0700 ``nobody`` cannot cross), and a venv under /tmp
    stays importable once /tmp is covered."""
    out: list[tuple[str, str]] = []
    for d in (sys.base_prefix, sys.base_exec_prefix, *site_dirs()):
        if d != "/" and os.path.isdir(d) and not any(d == r or d.startswith(r + "/") for r, _ in out):
            out.append((d, f"{BIND_ROOT}/{len(out)}"))
    return tuple(out)


@cache
def private_namespaces(network: bool = True) -> Box | None:
    """The private sandbox, where this kernel allows it, else None (warned once): ``unshare -n -m -i -p -f
    --mount-proc`` (``-r`` added for a non-root user; no ``-n`` for ``network=False``), checked once by running a
    canary as the code would run (as root: as ``nobody``, importing json, decimal and socket from the bound
    interpreter, with a private /tmp)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    root = os.geteuid() == 0
    prefix = (
        unshare,
        *(() if root else ("-r",)),
        *(("-n",) if network else ()),
        "-m",
        "-i",
        "-p",
        "-f",
        "--mount-proc",
    )
    box = Box(prefix, private=True, drop_to=65534 if root else None)
    canary = "import decimal, json, os, socket\nuid, tmp = os.getuid(), sorted(os.listdir('/tmp'))"
    listing = sorted(os.path.basename(d) for d in (BIND_ROOT, WORK))
    checks = [f"assert tmp == {listing!r}"] + (["assert uid == 65534"] if root else [])
    with tempfile.TemporaryFile() as err:
        try:
            ok = _run(canary, checks, Limits(cpu_s=10, wall_s=30), box, stderr=err) == 1.0
        except OSError:
            ok = False
        err.seek(0)
        why = err.read().decode(errors="replace").strip().splitlines()[-1:]
    if not ok:
        warnings.warn(
            f"code_tests: no private sandbox here ({' '.join(prefix)}: {why[0] if why else 'failed'}); "
            "falling back to fewer protections: see reward_workers/sandbox.py",
            stacklevel=3,
        )
    return box if ok else None


def extract_code(completion: str) -> str:
    """The last fenced code block (```python ... ``` or ``` ... ```), else the whole completion."""
    if "```" not in completion:
        return completion
    blocks = completion.split("```")[1::2]
    if not blocks:
        return completion
    block = blocks[-1]
    first, _, rest = block.partition("\n")
    return rest if first.strip().isalpha() or not first.strip() else block


def _wait(proc: subprocess.Popen, timeout: float) -> None:
    """Wait until ``proc`` exits or ``timeout`` seconds pass. On a pidfd (Linux 5.3+) the wait ends when the process
    does; ``Popen.wait(timeout)`` polls with doubling sleeps, which adds up to as much again to a 30 ms run."""
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # no pidfd here (another OS, an old kernel)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        return
    try:
        select.select([fd], [], [], timeout)  # readable once the process has exited (it is not reaped yet)
    finally:
        os.close(fd)


def run_tests(code: str, tests: list[str], limits: Limits = Limits(), isolate_network: str = "auto") -> float | None:
    """The fraction of ``tests`` (Python statements, e.g. ``assert f(2) == 4``) that pass after ``code`` runs; None
    for a row without tests (nothing to score)."""
    if not tests:
        return None
    network = isolate_network != "off"
    box = private_namespaces(network) or _fallback(network, isolate_network == "require")
    return _run(code, tests, limits, box)


def _fallback(network: bool, require: bool) -> Box:
    """Where the kernel gives no private mount namespace: today's sandbox, a network namespace only (warned)."""
    prefix = network_isolation() if network else []
    if prefix is None:
        if require:
            raise RuntimeError(
                "code_tests: isolate_network='require' but this kernel gives no private network "
                "namespace (unshare -n failed); use 'auto' to run without it"
            )
        warnings.warn(
            "code_tests: no private network namespace here (unshare -n failed): code runs with the host's network",
            stacklevel=3,
        )
        prefix = []
    warnings.warn(
        "code_tests: no private mount namespace here: the code sees the host's /tmp, /dev/shm and /proc, "
        "can write where its user can and signal its user's processes",
        stacklevel=3,
    )
    return Box(tuple(prefix), private=False, drop_to=unprivileged_uid())


def _run(code: str, tests: list[str], limits: Limits, box: Box, stderr=subprocess.DEVNULL) -> float:
    """One run of the harness in ``box``: the fraction of ``tests`` passed, 0.0 where it did not report."""
    with tempfile.TemporaryDirectory(prefix="relay-rl-sandbox-") as work:
        with open(os.path.join(work, "solution.py"), "w") as f:
            f.write(code)
        with open(os.path.join(work, "tests.txt"), "w") as f:
            f.write(repr([str(t) for t in tests]))  # a list of str literals: what the harness reads back
        if box.drop_to is not None and not box.private:
            os.chmod(work, 0o777)  # the dropped user writes its own files here, nothing else
        read, write = os.pipe()  # the harness reports on this pipe: prints of the code cannot mix in
        cfg = {
            "cpu_s": limits.cpu_s,
            "memory_mb": limits.memory_mb,
            "file_mb": limits.file_mb,
            "processes": limits.processes,
            "drop_to": box.drop_to,
            "fd": write,
            "path": site_dirs(),
            "private": box.private,
        }
        if box.private:
            cfg.update(
                tmpfs=private_dirs(),
                binds=interpreter_binds(),
                work=WORK,
                tmpfs_options=f"mode=1777,size={2 * limits.file_mb}m,nr_inodes={TMPFS_INODES}",
            )
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": WORK if box.private else work,
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        try:
            proc = subprocess.Popen(
                [*box.prefix, sys.executable, "-I", "-S", "-c", HARNESS, repr(cfg)],
                cwd=work,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                pass_fds=(write,),
                start_new_session=True,
            )
        finally:
            os.close(write)
        _wait(proc, limits.wall_s)
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # unshare, the harness and the code's children in its group
        except ProcessLookupError:
            pass
        proc.wait()  # unshare exits after the harness, the PID namespace's init: the kernel has killed the rest
        os.set_blocking(read, False)  # a child that left the process group may still hold the pipe open
        try:
            text = os.read(read, 1 << 16).decode(errors="replace")
        except BlockingIOError:
            text = ""
        finally:
            os.close(read)
    report = re.fullmatch(r"(\d+)/(\d+)", text)  # "passed/total"
    if report is None:
        return 0.0  # killed (time, memory) before it could report, or more than one report: nothing passed
    return int(report[1]) / int(report[2])

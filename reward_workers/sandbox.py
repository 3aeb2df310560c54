"""Sandboxed code execution: a completion's Python code run against a row's test cases in a throw-away process.

Each completion runs in its own subprocess (``python -I -S``: no user site, no environment-driven imports, no
``.pth`` hooks, site-packages still importable) in a fresh temporary directory, with a clean environment, under limits
set by the harness on itself before the code runs: CPU seconds, address space, file size, process count; a
wall-clock timeout kills the whole process group. The network is cut with a private network namespace (``unshare
-n``; ``unshare -rn`` for a non-root user) where the kernel allows it; where it does not, ``isolate_network="auto"``
runs without (warned once) and ``"require"`` refuses to run. As root the harness also drops to ``nobody`` so the
process-count limit applies (the kernel exempts root), where ``nobody`` can read the interpreter; else it runs as
root without that limit (warned). The code can write where its user can (its working directory; as ``nobody``,
/tmp), within the file-size limit: no private mount namespace yet.

This contains what code does to the machine; it does not stop a completion that reads the harness from gaming its
own score (the result is reported from inside the sandboxed process).
"""
from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass
from functools import lru_cache

HARNESS = r"""
import json, os, resource, sys
cfg = json.loads(sys.argv[1])
sys.path.extend(cfg["path"])
for name, value in (("RLIMIT_CPU", cfg["cpu_s"]), ("RLIMIT_AS", cfg["memory_mb"] << 20),
                    ("RLIMIT_FSIZE", cfg["file_mb"] << 20), ("RLIMIT_NPROC", cfg["processes"])):
    resource.setrlimit(getattr(resource, name), (value, value))
if os.geteuid() == 0 and cfg["drop_to"] is not None:
    os.setgroups([]); os.setgid(cfg["drop_to"]); os.setuid(cfg["drop_to"])
out = os.fdopen(cfg["fd"], "w")
code, tests = open("solution.py").read(), json.load(open("tests.json"))
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
out.write(json.dumps({"passed": passed, "total": len(tests)})); out.flush()
"""


@dataclass(frozen=True)
class Limits:
    cpu_s: int = 2
    wall_s: float = 5.0
    memory_mb: int = 512
    file_mb: int = 16
    processes: int = 16


@lru_cache(maxsize=None)
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


@lru_cache(maxsize=None)
def site_dirs() -> tuple[str, ...]:
    """This interpreter's site-packages folders: the code can import what is installed there (numpy, ...). The
    harness runs with ``-S`` and puts them on ``sys.path`` itself, so their ``.pth`` files do not run: a start
    several times faster (11 ms against 37 ms on the development machine, where an editable install's import hook
    costs more than the rest of the start), with nothing loaded but the standard library and the code's imports."""
    import site
    return tuple(d for d in site.getsitepackages() if os.path.isdir(d))


@lru_cache(maxsize=None)
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
        warnings.warn(f"code_tests: running as root and {sys.executable}'s library is not readable by nobody: the "
                      "code runs as root, without the process-count limit", stacklevel=2)
    return 65534 if ok else None


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
    prefix = network_isolation() if isolate_network != "off" else []
    if prefix is None:
        if isolate_network == "require":
            raise RuntimeError("code_tests: isolate_network='require' but this kernel gives no private network "
                               "namespace (unshare -n failed); use 'auto' to run without it")
        warnings.warn("code_tests: no private network namespace here (unshare -n failed): code runs with the "
                      "host's network", stacklevel=2)
        prefix = []
    drop_to = unprivileged_uid()
    with tempfile.TemporaryDirectory(prefix="relay-rl-sandbox-") as work:
        with open(os.path.join(work, "solution.py"), "w") as f:
            f.write(code)
        with open(os.path.join(work, "tests.json"), "w") as f:
            json.dump(tests, f)
        if drop_to is not None:
            os.chmod(work, 0o777)  # the dropped user writes its own files here, nothing else
        read, write = os.pipe()  # the harness reports on this pipe: prints of the code cannot mix in
        cfg = json.dumps({"cpu_s": limits.cpu_s, "memory_mb": limits.memory_mb, "file_mb": limits.file_mb,
                          "processes": limits.processes, "drop_to": drop_to, "fd": write, "path": site_dirs()})
        env = {"PATH": "/usr/bin:/bin", "HOME": work, "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
        try:
            proc = subprocess.Popen([*prefix, sys.executable, "-I", "-S", "-c", HARNESS, cfg], cwd=work, env=env,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    pass_fds=(write,), start_new_session=True)
        finally:
            os.close(write)
        _wait(proc, limits.wall_s)
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the code's own children too
        except ProcessLookupError:
            pass
        proc.wait()
        os.set_blocking(read, False)  # a child that left the process group may still hold the pipe open
        try:
            text = os.read(read, 1 << 16).decode(errors="replace")
        except BlockingIOError:
            text = ""
        finally:
            os.close(read)
    try:
        result = json.loads(text)
    except ValueError:
        return 0.0  # killed (time, memory) before it could report: nothing passed
    return result["passed"] / result["total"]

"""The code-execution reward's sandbox, on real subprocesses: scores, and each limit holding against code that tries
to break it (CPU, wall time, memory, file size, process count, network, environment, the result channel, the file
system, the reward actor), one by one and as a hostile batch scored by a real reward actor."""

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
import warnings

import pytest
import torch

from relay_rl.batch import Batch
from relay_rl.reward_workers.registry import resolve
from relay_rl.reward_workers.sandbox import (
    Limits,
    extract_code,
    network_isolation,
    private_namespaces,
    run_tests,
    unprivileged_uid,
)

TESTS = ["assert f(1) == 2", "assert f(2) == 3", "assert f(0) == 1"]


def test_scores_fraction_and_all():
    _, fraction = resolve("code_tests", None)
    _, strict = resolve({"name": "code_tests", "kwargs": {"mode": "all", "parallel": 2}}, None)
    completions = [
        "```python\ndef f(x):\n    return x + 1\n```",
        "def f(x):\n    return 2 * x if x else 1",
        [{"role": "assistant", "content": "no code here"}],
        "def f(x): return x + 1",
    ]
    tests = [TESTS, TESTS, TESTS, []]
    assert fraction(completions=completions, tests=tests) == [1.0, pytest.approx(2 / 3), 0.0, None]
    assert strict(completions=completions, tests=tests) == [1.0, 0.0, 0.0, None]
    with pytest.raises(ValueError, match="mode must be"):
        resolve({"name": "code_tests", "kwargs": {"mode": "some"}}, None)


def test_extract_code_takes_the_last_fenced_block():
    assert extract_code("x\n```python\na = 1\n```\ntext\n```\nb = 2\n```") == "b = 2\n"
    assert extract_code("plain = 1") == "plain = 1"


@pytest.mark.parametrize(
    "code, limits",
    [
        ("while True:\n    pass", Limits(cpu_s=1, wall_s=10)),  # CPU seconds
        ("import time\ntime.sleep(60)", Limits(wall_s=1)),  # wall clock
        ("x = bytearray(4 << 30)", Limits()),  # address space
        ("open('big', 'w').write('x' * (64 << 20))", Limits(file_mb=16)),  # file size
    ],
)
def test_limits_hold(code, limits):
    t0 = time.time()
    assert run_tests(code + "\ndef f(x):\n    return x + 1\n", TESTS, limits) == 0.0
    assert time.time() - t0 < limits.wall_s + 5


def test_no_network_no_environment_and_an_honest_result_channel(monkeypatch):
    assert network_isolation() is not None, "this kernel should allow a private network namespace (unshare -n)"
    import socket

    with socket.create_server(("127.0.0.1", 0)) as server:  # reachable from any process on the host's network
        port = server.getsockname()[1]
        net = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
        assert run_tests(net + "ok = 1", ["assert ok == 1"], isolate_network="off") == 1.0  # the probe works
        assert run_tests(net + "ok = 1", ["assert ok == 1"]) == 0.0  # the sandbox has no route to it
    monkeypatch.setenv("RELAY_RL_SECRET", "s3cret")
    assert run_tests("import os\nleak = os.environ.get('RELAY_RL_SECRET')", ["assert leak is None"]) == 1.0
    assert (
        run_tests(
            "import os\nhome = os.getcwd()",
            [
                "import os\nassert os.listdir(home) == ['solution.py', "
                "'tests.txt'] or sorted(os.listdir(home)) == "
                "['solution.py', 'tests.txt']"
            ],
        )
        == 1.0
    )
    fake = 'print("9/1")'  # stdout is not where the harness reports (its format: passed/total)
    assert run_tests(fake, ["assert False"]) == 0.0
    if os.geteuid() == 0 and (private_namespaces() or unprivileged_uid()):  # as root the code runs as nobody (in
        # the private sandbox whatever the interpreter; else where nobody can read it)
        assert run_tests("import os\nuid = os.getuid()", ["assert uid == 65534"]) == 1.0


def sleepers(marker: str) -> str:
    """The processes still running ``sleep <marker>``, anyone's."""
    return subprocess.run(["pgrep", "-a", "-f", f"sleep {marker}"], capture_output=True, text=True).stdout


def test_process_count_limit_binds_and_nothing_outlives_the_run():
    """The kernel exempts root from RLIMIT_NPROC: as root the code runs as nobody, in the private sandbox even with
    a Python under /root (its folders are bound where nobody can read them). The children it started, one that left
    the process group included, are gone when the run is."""
    assert private_namespaces() is not None, "this kernel should allow private mount and PID namespaces (unshare)"
    marker = f"{time.time() % 1000 + 1000:.6f}"
    fork_bomb = f"import subprocess\nps = [subprocess.Popen(['sleep', '{marker}']) for _ in range(64)]\nok = 1"
    assert run_tests(fork_bomb, ["assert ok == 1"], Limits(processes=16)) == 0.0
    escapee = (
        f"import os\nif os.fork() == 0:\n    os.setsid()\n    os.execv('/bin/sleep', ['sleep', '{marker}'])\n"
        "import time\ntime.sleep(0.5)\nok = 1"
    )
    assert run_tests(escapee, ["assert ok == 1"]) == 1.0
    assert sleepers(marker) == ""  # the PID namespace's end killed the setsid() child too


def test_without_a_mount_namespace_it_runs_as_before_and_says_what_it_lacks(monkeypatch):
    """Where the kernel gives no private mount namespace: a temporary folder on the host, the network namespace
    alone, and a warning naming what is not contained (as root with a Python nobody cannot read: runs as root)."""
    import relay_rl.reward_workers.sandbox as sandbox

    monkeypatch.setattr(sandbox, "private_namespaces", lambda network=True: None)
    unprivileged_uid.cache_clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        probe = "import os\nuid, home = os.getuid(), os.environ['HOME']"
        assert run_tests(probe, ["assert not home.startswith('/tmp/work')"]) == 1.0  # on the host's /tmp
        said = " ".join(str(w.message) for w in caught)
        assert "no private mount namespace here" in said
        if os.geteuid() == 0 and unprivileged_uid() is None:  # a Python under /root (pyenv): the code runs as root
            assert "without the process-count limit" in said
            assert run_tests(probe, ["assert uid == 0"]) == 1.0
    unprivileged_uid.cache_clear()


NON_ROOT_CHECK = """
import os, socket, sys, warnings
warnings.simplefilter("error")  # a failed canary is an error here
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sandbox import Limits, private_namespaces, run_tests
box = private_namespaces()
assert box is not None and "-r" in box.prefix and box.drop_to is None, box
assert run_tests("def f(x): return x + 1", ["assert f(1) == 2"]) == 1.0
fork_bomb = "import subprocess\\nps = [subprocess.Popen(['sleep', '3']) for _ in range(64)]\\nok = 1"
assert run_tests(fork_bomb, ["assert ok == 1"], Limits(processes=16)) == 0.0
with socket.create_server(("127.0.0.1", 0)) as server:
    net = f"import socket\\nsocket.create_connection(('127.0.0.1', {server.getsockname()[1]}), timeout=2)\\nok = 1"
    assert run_tests(net, ["assert ok == 1"]) == 0.0
locked = ("import ctypes, os\\nlibc = ctypes.CDLL(None)\\n"
          "ok = libc.umount2(b'/tmp', 2) != 0 and sorted(os.listdir('/tmp')) == ['.sandbox', 'work']")
assert run_tests(locked, ["assert ok"]) == 1.0  # the private /tmp cannot be unmounted to see the host's
print("non-root sandbox ok")
"""


def test_a_non_root_user_gets_the_private_sandbox_too():
    """``unshare -r``: the same namespaces, the code running as the user (its limits bind) in a user namespace of
    its own that cannot undo the private mounts. Checked as nobody, with a Python nobody can read."""
    python = shutil.which("python3", path="/usr/bin:/bin")
    if os.geteuid() != 0 or python is None:
        pytest.skip("needs root (to start a check as nobody) and a system python3")
    as_nobody = {"user": 65534, "group": 65534, "extra_groups": [], "capture_output": True, "text": True}
    if subprocess.run([python, "-I", "-c", "import json"], **as_nobody, cwd="/").returncode != 0:
        pytest.skip(f"nobody cannot run {python}")
    folder = tempfile.mkdtemp(prefix="relay-rl-nonroot-")
    try:
        os.chmod(folder, 0o755)
        shutil.copy(os.path.join(os.path.dirname(__file__), "..", "..", "reward_workers", "sandbox.py"), folder)
        with open(os.path.join(folder, "check.py"), "w") as f:
            f.write(NON_ROOT_CHECK)
        for name in ("sandbox.py", "check.py"):
            os.chmod(os.path.join(folder, name), 0o644)
        r = subprocess.run([python, "-I", os.path.join(folder, "check.py")], **as_nobody, cwd=folder, timeout=300)
    finally:
        shutil.rmtree(folder)
    assert r.returncode == 0 and "non-root sandbox ok" in r.stdout, r.stdout + r.stderr


def test_templates_place_the_code_and_a_string_of_tests_is_one_script():
    _, body = resolve({"name": "code_tests", "kwargs": {"template": "def f(x):\n    return {code}\n"}}, None)
    assert body(completions=["x + 1", "2 * x", "x +"], tests=[TESTS] * 3) == [1.0, pytest.approx(1 / 3), 0.0]
    _, per_row = resolve({"name": "code_tests", "kwargs": {"template_column": "template", "mode": "all"}}, None)
    assert per_row.columns == ("tests", "template")  # checked against the data before the run
    templates = ["def f(x):\n    return {code}\n", "def f(x):\n    {code}\n", "{code}"]
    assert per_row(
        completions=["x + 1", "return x + 1", "def f(x): return x"], tests=[TESTS] * 3, template=templates
    ) == [1.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="a template is a string containing"):
        per_row(completions=["1"], tests=[TESTS], template=["return 1"])
    with pytest.raises(ValueError, match="must contain"):
        resolve({"name": "code_tests", "kwargs": {"template": "x = 1"}}, None)
    _, fraction = resolve("code_tests", None)
    script = "assert f(1) == 2\nassert f(2) == 3"  # one test: a whole script, not one test per character
    assert fraction(completions=["def f(x): return x + 1", "def f(x): return 2"], tests=[script, script]) == [1.0, 0.0]


def test_identical_programs_run_once_unless_dedupe_is_off(monkeypatch):
    import relay_rl.reward_workers.sandbox as sandbox

    runs = []
    real = sandbox.run_tests
    monkeypatch.setattr(sandbox, "run_tests", lambda code, tests, *a: runs.append(code) or real(code, tests, *a))
    _, fn = resolve("code_tests", None)
    _, every = resolve({"name": "code_tests", "kwargs": {"dedupe": False}}, None)
    completions = ["def f(x): return x + 1"] * 3 + ["def f(x): return x"]
    assert fn(completions=completions, tests=[TESTS] * 4) == [1.0, 1.0, 1.0, 0.0] and len(runs) == 2
    runs.clear()
    assert fn(completions=completions[:2], tests=[TESTS, TESTS[:1]]) == [1.0, 1.0] and len(runs) == 2  # other tests
    runs.clear()
    assert every(completions=completions, tests=[TESTS] * 4) == [1.0, 1.0, 1.0, 0.0] and len(runs) == 4


def test_installed_packages_stay_importable_without_their_pth_hooks():
    assert run_tests("import numpy\nok = numpy.int64(2) + 1", ["assert ok == 3"]) == 1.0  # site-packages on the path
    assert run_tests("import sys\nflags = sys.flags", ["assert flags.no_site and flags.isolated"]) == 1.0


HONEST = "def f(x):\n    return x + 1\n"
FORK_BOMB = """import os
def sleeper():
    try:
        os.execv('/bin/sleep', ['sleep', 'MARKER'])
    finally:
        os._exit(1)
if os.fork() == 0:
    os.setsid()  # out of the process group: the kill of the group misses it, the end of the PID namespace does not
    sleeper()
while True:
    if os.fork() == 0:
        sleeper()
"""
READ_SECRETS = """import os
def environ(pid):
    try:
        with open(f'/proc/{pid}/environ', 'rb') as fh:
            return fh.read()
    except OSError:
        return b''
found = [pid for pid in os.listdir('/proc') if pid.isdigit() and b'SECRET' in environ(pid)]
secret = found or os.environ['RELAY_RL_SECRET']  # KeyError where neither holds it
"""
KILL_PARENT = """import os, signal
os.kill(os.getppid(), signal.SIGKILL)
os.killpg(os.getpgid(os.getppid()), signal.SIGKILL)
for pid in os.listdir('/proc'):
    if pid.isdigit() and int(pid) != os.getpid():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except OSError:
            pass
"""


def hostile_corpus(port: int, marker: str, name: str, secret: str) -> list[tuple[str, str, list[str], float]]:
    """(what it tries, code, tests, the score it must get), with the limit that stops it. Each hostile program
    defines a right ``f`` only after its attack, so it scores 1.0 only if the attack ran to its end."""
    private = [f"/tmp/{name}", f"/var/tmp/{name}", f"/dev/shm/{name}", f"/run/lock/{name}"]
    return [
        ("honest", HONEST, TESTS, 1.0),
        # cpu_s (RLIMIT_CPU, 1 s): killed; wall_s behind it
        ("infinite loop", "while True:\n    pass\n" + HONEST, TESTS, 0.0),
        # wall_s (3 s): the process group is killed, and with the harness (PID 1) its PID namespace
        ("sleeps forever", "import time\ntime.sleep(3600)\n" + HONEST, TESTS, 0.0),
        # processes (RLIMIT_NPROC 16, uid nobody): fork raises BlockingIOError; the children die with the namespace
        ("fork bomb", FORK_BOMB.replace("MARKER", marker) + HONEST, TESTS, 0.0),
        (
            "popen bomb",
            f"import subprocess\nps = [subprocess.Popen(['sleep', '{marker}']) for _ in range(1000)]\n" + HONEST,
            TESTS,
            0.0,
        ),
        # memory_mb (RLIMIT_AS 512 MiB): MemoryError
        ("memory bomb", "blocks = []\nwhile True:\n    blocks.append(bytearray(64 << 20))\n" + HONEST, TESTS, 0.0),
        # file_mb (RLIMIT_FSIZE 16 MiB): the 17th MiB raises EFBIG
        (
            "10 GB file",
            "with open('big', 'wb') as fh:\n    for _ in range(10 << 10):\n        fh.write(bytes(1 << 20))\n" + HONEST,
            TESTS,
            0.0,
        ),
        # the private /tmp's size (2 x file_mb): ENOSPC
        (
            "10 GB in files",
            "for i in range(10 << 10):\n    with open(f'part{i}', 'wb') as fh:\n"
            "        fh.write(bytes(1 << 20))\n" + HONEST,
            TESTS,
            0.0,
        ),
        # the private /tmp's files (TMPFS_INODES, 4096): ENOSPC
        ("a million files", "for i in range(1 << 20):\n    open(f'empty{i}', 'w').close()\n" + HONEST, TESTS, 0.0),
        # the private network namespace: no route to the host's listening socket
        (
            "network",
            f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'hi')\n" + HONEST,
            TESTS,
            0.0,
        ),
        # allowed, into the private tmpfs: the program reads its writes back, the host never sees them
        (
            "writes to /tmp, /var/tmp, /dev/shm, /run/lock",
            "".join(f"open({p!r}, 'w').write('x')\n" for p in private) + HONEST,
            TESTS + [f"assert open({p!r}).read() == 'x'" for p in private],
            1.0,
        ),
        # nobody: EACCES (the host's file system, as any user sees it)
        ("writes to /etc", f"open('/etc/{name}', 'w').write('x')\n" + HONEST, TESTS, 0.0),
        ("writes to /root", f"open('/root/{name}', 'w').write('x')\n" + HONEST, TESTS, 0.0),
        ("writes out of the work folder", f"open('../../../etc/{name}', 'w').write('x')\n" + HONEST, TESTS, 0.0),
        # a clean environment, and a /proc of the PID namespace's own: the secret is in neither
        ("reads the host's environment", READ_SECRETS.replace("SECRET", secret) + HONEST, TESTS, 0.0),
        # the PID namespace: the parent has no pid there (getppid() is 0), kill(0) hits the sandbox's own group,
        # whose PID 1 (the harness) ignores it; /proc lists only the sandbox's processes: the program runs on
        ("kills the parent", KILL_PARENT + HONEST, TESTS, 1.0),
        # the harness catches SystemExit: no test ran
        ("sys.exit(0)", HONEST + "import sys\nsys.exit(0)\n", TESTS, 0.0),
        # no report on the result pipe
        ("os._exit(0)", HONEST + "import os\nos._exit(0)\n", TESTS, 0.0),
        # stdout and stderr are /dev/null: 16 MiB of prints (and a fake result) change nothing
        (
            "prints megabytes",
            "import sys\nsys.stdout.write('x' * (8 << 20))\nsys.stderr.write('y' * (8 << 20))\nprint('3/3')\n" + HONEST,
            TESTS,
            1.0,
        ),
    ]


def code_batch(completions: list[str], tests: list[list[str]]) -> Batch:
    n = len(completions)
    return Batch(
        prompt_ids=torch.ones(n, 3, dtype=torch.long),
        prompt_mask=torch.ones(n, 3, dtype=torch.long),
        completion_ids=torch.full((n, 2), 5),
        completion_mask=torch.ones(n, 2),
        behaviour_logprobs=torch.zeros(n, 2),
        policy_version=torch.zeros(n, dtype=torch.long),
        group_id=torch.arange(n),
        truncated=torch.zeros(n, dtype=torch.bool),
        prompts=["write f"] * n,
        completions=completions,
        columns={"tests": tests},
    )


def test_a_hostile_batch_is_contained_and_scored_by_a_live_reward_actor(ray_cluster, kit):
    """One batch of hostile programs and an honest one, scored by a real reward actor: each gets its score, the
    host is untouched (no file, no connection, no process left, no secret read), and the actor scores on."""
    import ray

    from relay_rl.reward_workers.actor import RewardWorker

    assert private_namespaces() is not None, (
        "this kernel gives no private mount and PID namespaces (unshare -m -p "
        "-i failed): the corpus would not be contained"
    )
    name, secret = f"relay-rl-hostile-{uuid.uuid4().hex}", f"s3cret-{uuid.uuid4().hex}"
    marker = f"{time.time() % 1000 + 2000:.6f}"  # sleep's argument: the hostile sleepers are recognisable
    spec = {
        "name": "code_tests",
        "kwargs": {
            "cpu_s": 1,
            "wall_s": 3,
            "memory_mb": 512,
            "file_mb": 16,
            "processes": 16,
            "parallel": 4,
            "dedupe": False,
        },
    }
    actor = ray.remote(RewardWorker).options(num_cpus=0.25, runtime_env={"env_vars": {"RELAY_RL_SECRET": secret}})
    w = actor.remote([spec], kit["warm_start"], timeout_s=120.0)
    assert ray.get(w.ping.remote(), timeout=120)
    assert ray.get(w.__ray_call__.remote(lambda self: os.environ.get("RELAY_RL_SECRET"))) == secret  # it is there
    with socket.create_server(("127.0.0.1", 0)) as server:
        corpus = hostile_corpus(server.getsockname()[1], marker, name, secret)
        t0 = time.time()
        out = ray.get(
            w.score.remote(code_batch([c for _, c, _, _ in corpus], [t for _, _, t, _ in corpus])), timeout=120
        )
        took = time.time() - t0
        server.setblocking(False)
        with pytest.raises(BlockingIOError):
            server.accept()  # nothing connected
    assert out.info["reward_errors"] == {}
    scores = dict(zip([what for what, *_ in corpus], out.rewards[:, 0].tolist()))
    assert scores == {what: expected for what, _, _, expected in corpus}
    assert took < 60, f"the hostile batch took {took:.0f}s"  # 19 programs, 4 at a time, none past wall_s (3 s)
    leftovers = [
        p
        for d in ("/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/etc", "/root")
        if os.path.exists(p := os.path.join(d, name))
    ]
    assert leftovers == []
    assert sleepers(marker) == ""  # the fork bombs' children, the setsid() one included, are gone
    assert ray.get(w.ping.remote(), timeout=30)  # the actor lives on, and scores the next batch
    again = ray.get(w.score.remote(code_batch([HONEST, "def f(x):\n    return x\n"], [TESTS, TESTS])), timeout=60)
    assert again.rewards[:, 0].tolist() == [1.0, 0.0] and again.info["reward_errors"] == {}
    ray.kill(w)

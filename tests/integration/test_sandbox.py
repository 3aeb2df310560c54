"""The code-execution reward's sandbox, on real subprocesses: scores, and each limit holding against code that tries
to break it (CPU, wall time, memory, file size, process count, network, environment, the result channel)."""
import os
import time

import pytest

from reward_workers.registry import resolve
from reward_workers.sandbox import Limits, extract_code, network_isolation, run_tests, unprivileged_uid

TESTS = ["assert f(1) == 2", "assert f(2) == 3", "assert f(0) == 1"]


def test_scores_fraction_and_all():
    _, fraction = resolve("code_tests", None)
    _, strict = resolve({"name": "code_tests", "kwargs": {"mode": "all", "parallel": 2}}, None)
    completions = ["```python\ndef f(x):\n    return x + 1\n```", "def f(x):\n    return 2 * x if x else 1",
                   [{"role": "assistant", "content": "no code here"}], "def f(x): return x + 1"]
    tests = [TESTS, TESTS, TESTS, []]
    assert fraction(completions=completions, tests=tests) == [1.0, pytest.approx(2 / 3), 0.0, None]
    assert strict(completions=completions, tests=tests) == [1.0, 0.0, 0.0, None]
    with pytest.raises(ValueError, match="mode must be"):
        resolve({"name": "code_tests", "kwargs": {"mode": "some"}}, None)


def test_extract_code_takes_the_last_fenced_block():
    assert extract_code("x\n```python\na = 1\n```\ntext\n```\nb = 2\n```") == "b = 2\n"
    assert extract_code("plain = 1") == "plain = 1"


@pytest.mark.parametrize("code, limits", [
    ("while True:\n    pass", Limits(cpu_s=1, wall_s=10)),                     # CPU seconds
    ("import time\ntime.sleep(60)", Limits(wall_s=1)),                        # wall clock
    ("x = bytearray(4 << 30)", Limits()),                                      # address space
    ("open('big', 'w').write('x' * (64 << 20))", Limits(file_mb=16)),         # file size
])
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
    assert run_tests("import os\nhome = os.getcwd()", ["import os\nassert os.listdir(home) == ['solution.py', "
                                                       "'tests.json'] or sorted(os.listdir(home)) == "
                                                       "['solution.py', 'tests.json']"]) == 1.0
    fake = 'print(\'{"passed": 9, "total": 1}\')'  # stdout is not where the harness reports
    assert run_tests(fake, ["assert False"]) == 0.0
    if unprivileged_uid() is not None:  # as root the code runs as nobody
        assert run_tests("import os\nuid = os.getuid()", ["assert uid == 65534"]) == 1.0


def test_process_count_limit_or_the_warning_that_it_does_not_bind():
    """The kernel exempts root from RLIMIT_NPROC: as root the code runs as nobody where nobody can read the
    interpreter; where it cannot (a Python under /root), the sandbox says so and runs the code as root."""
    fork_bomb = "import subprocess\nps = [subprocess.Popen(['sleep', '3']) for _ in range(64)]\nok = 1"
    if os.geteuid() != 0 or unprivileged_uid() is not None:
        assert run_tests(fork_bomb, ["assert ok == 1"], Limits(processes=16)) == 0.0
    else:
        unprivileged_uid.cache_clear()
        with pytest.warns(UserWarning, match="without the process-count limit"):
            assert unprivileged_uid() is None


def test_templates_place_the_code_and_a_string_of_tests_is_one_script():
    _, body = resolve({"name": "code_tests", "kwargs": {"template": "def f(x):\n    return {code}\n"}}, None)
    assert body(completions=["x + 1", "2 * x", "x +"], tests=[TESTS] * 3) == [1.0, pytest.approx(1 / 3), 0.0]
    _, per_row = resolve({"name": "code_tests", "kwargs": {"template_column": "template", "mode": "all"}}, None)
    assert per_row.columns == ("tests", "template")  # checked against the data before the run
    templates = ["def f(x):\n    return {code}\n", "def f(x):\n    {code}\n", "{code}"]
    assert per_row(completions=["x + 1", "return x + 1", "def f(x): return x"], tests=[TESTS] * 3,
                   template=templates) == [1.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="a template is a string containing"):
        per_row(completions=["1"], tests=[TESTS], template=["return 1"])
    with pytest.raises(ValueError, match="must contain"):
        resolve({"name": "code_tests", "kwargs": {"template": "x = 1"}}, None)
    _, fraction = resolve("code_tests", None)
    script = "assert f(1) == 2\nassert f(2) == 3"  # one test: a whole script, not one test per character
    assert fraction(completions=["def f(x): return x + 1", "def f(x): return 2"], tests=[script, script]) == [1.0, 0.0]


def test_identical_programs_run_once_unless_dedupe_is_off(monkeypatch):
    import reward_workers.sandbox as sandbox
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

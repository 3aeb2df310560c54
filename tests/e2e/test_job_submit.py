"""`ray job submit` against a head node that the test starts (`ray start --head`) and stops.

The job runs the README's command, ``python -m cluster.launch deploy/recipes/quickstart.yaml``, shortened by
overrides; it must succeed and write its metrics. While it runs, the Ray dashboard, opened in a real headless Chromium,
shows the run's actors (a screenshot is saved in ``test-artifacts/``), and the cluster's state API lists the pools as
named actors.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import ROOT

ARTIFACTS = ROOT / "test-artifacts"


def chromium() -> str:
    """Debian's Chromium, which ``.ci/run`` installs."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    pytest.fail(
        "the dashboard test needs Chromium: `sudo apt-get install -y chromium` (Debian/Ubuntu), as .ci/run does"
    )


def open_in_chromium(url: str, screenshot: Path | None = None) -> str:
    """The page's DOM after its scripts ran (``--dump-dom``), or a PNG of it; a real headless browser."""
    args = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--window-size=1600,1000",
        "--virtual-time-budget=15000",
    ]
    args += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    res = subprocess.run([*args, url], capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def head(tmp_path, kit):
    with ray_head("127.0.0.1") as h:
        yield h


@contextmanager
def ray_head(dashboard_host: str):
    """A head node of its own (GCS, dashboard, agents on free ports), auth disabled, stopped on exit."""
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    env.pop("RAY_ADDRESS", None)
    gcs, dash = free_port(), free_port()
    # --block keeps `ray start` in the foreground; terminating it stops exactly this head's processes (`ray stop`
    # would stop every Ray cluster on the machine, the test session's own included)
    # its own agent ports too: the test session's cluster may hold the defaults
    ports = [
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
    ]
    head = subprocess.Popen(
        [
            "ray",
            "start",
            "--head",
            "--block",
            f"--port={gcs}",
            f"--dashboard-host={dashboard_host}",
            f"--dashboard-port={dash}",
            "--num-cpus=4",
            "--disable-usage-stats",
            *ports,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 120
        while (
            subprocess.run(
                ["ray", "job", "list", "--address", f"http://127.0.0.1:{dash}"],
                env=env,
                capture_output=True,
                timeout=60,
            ).returncode
            != 0
        ):
            assert head.poll() is None and time.time() < deadline, "the head did not come up"
            time.sleep(2)
        yield {"env": env, "address": f"http://127.0.0.1:{dash}", "gcs": f"127.0.0.1:{gcs}"}
    finally:
        head.terminate()
        try:
            head.wait(timeout=120)
        except subprocess.TimeoutExpired:
            head.kill()


def test_ray_job_submit_runs_the_quickstart(head, tmp_path):
    env, address = head["env"], head["address"]
    out = tmp_path / "job-run"
    runtime_env = {
        "env_vars": {
            k: os.environ[k] for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "RELAY_RL_CACHE") if k in os.environ
        }
    }
    cmd = [
        "ray",
        "job",
        "submit",
        "--address",
        address,
        "--working-dir",
        str(ROOT),
        "--no-wait",
        "--submission-id",
        "jobtest",
        "--runtime-env-json",
        json.dumps(runtime_env),
        "--",
        "python",
        "-m",
        "cluster.launch",
        "deploy/recipes/quickstart.yaml",
        "train.max_steps=4",
        "train.eval_steps=2",
        "cluster.learner.replicas=2",
        "name=jobtest",
        "--output",
        str(out),
    ]
    t0 = time.time()
    while True:  # a fresh head takes a few seconds to register its job agent
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        log = res.stdout + res.stderr
        if "No available agent to submit job" not in log or time.time() - t0 > 120:
            break
        time.sleep(3)
    assert res.returncode == 0, log[-4000:]

    # the operator's view while the run goes on: the dashboard's Actors page, rendered by a real browser
    while not (out / "run.json").exists():  # written once the pools are up
        assert time.time() - t0 < 400, _job_logs(env, address)
        time.sleep(0.5)
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard_actors.png"
    open_in_chromium(f"{address}/#/actors", screenshot=shot)
    dom = open_in_chromium(f"{address}/#/actors")
    for pool in ("rollout-0", "reward-0", "learner-0", "learner-1"):
        assert f"/{pool}" in dom, (pool, dom[-3000:])
    assert "RolloutWorker" in dom and "LearnerRank" in dom and "ALIVE" in dom
    assert shot.stat().st_size > 20_000, "the screenshot is blank"

    from ray.job_submission import JobStatus, JobSubmissionClient

    jobs = JobSubmissionClient(address)
    while not (status := jobs.get_job_status("jobtest")).is_terminal():
        assert time.time() - t0 < 600, status
        time.sleep(2)
    assert status == JobStatus.SUCCEEDED, _job_logs(env, address)

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert [r["step"] for r in rows if "eval/accuracy" in r] == [0, 2, 4]
    assert (out / "final" / "model.safetensors").is_file() and (out / "reward_curve.png").is_file()

    # the dashboard's state API lists the run's pools as named actors
    listed = subprocess.run(
        ["ray", "list", "actors", "--address", address, "--detail", "--format", "json", "--limit", "1000"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert listed.returncode == 0, listed.stderr
    names = {a.get("name") for a in json.loads(listed.stdout)}
    for pool in ("rollout-0", "reward-0", "learner-0", "learner-1"):
        assert any(n and n.startswith("jobtest-") and n.endswith(f"/{pool}") for n in names), (pool, names)
    assert time.time() - t0 < 600


def test_joining_a_cluster_with_an_open_dashboard_and_no_token_auth_is_refused():
    """A head whose dashboard (and job API) listens on every interface, auth disabled: relay-rl refuses to run on it
    before any actor starts, and says what to do; cluster.allow_unauthenticated lets it join."""
    with ray_head("0.0.0.0") as h:
        probe = (
            "import sys\n"
            "from relay_rl.cluster.runtime import init_ray\n"
            "from relay_rl.errors import ConfigError\n"
            "allow = sys.argv[2] == 'allow'\n"
            "try:\n"
            "    init_ray(sys.argv[1], 'probe', allow_unauthenticated=allow)\n"
            "except ConfigError as e:\n"
            "    print('REFUSED', e); sys.exit(3)\n"
            "import ray\n"
            "print('JOINED', ray.is_initialized(), len(ray.util.list_named_actors()))\n"
        )
        env = {**h["env"], "PYTHONPATH": str(ROOT)}
        refused = subprocess.run(
            [sys.executable, "-c", probe, h["gcs"], "deny"], env=env, capture_output=True, text=True, timeout=180
        )
        assert refused.returncode == 3, refused.stdout + refused.stderr[-3000:]
        assert "beyond loopback" in refused.stdout and "RAY_AUTH_MODE=token" in refused.stdout
        assert "cluster.allow_unauthenticated" in refused.stdout
        joined = subprocess.run(
            [sys.executable, "-c", probe, h["gcs"], "allow"], env=env, capture_output=True, text=True, timeout=180
        )
        assert joined.returncode == 0 and "JOINED True" in joined.stdout, joined.stdout + joined.stderr[-3000:]


def _job_logs(env, address) -> str:
    res = subprocess.run(
        ["ray", "job", "logs", "--address", address, "jobtest"], env=env, capture_output=True, text=True, timeout=120
    )
    return (res.stdout + res.stderr)[-4000:]
